//! The control-socket protocol between sald and its clients: applications
//! (through the socket shim), the service controller, and operators.
//!
//! Transport: a Unix stream socket (default [`DEFAULT_CONTROL_PATH`]). Every
//! message is a frame: a 4-byte big-endian length, then that many bytes of
//! JSON. A client opens with [`Request::Hello`]; sald answers with its own
//! version and refuses any other (versions are compared for equality).
//! Requests are answered in order, one [`Response`] each. Responses that hand
//! the client a stream or datagram socket (`Accepted`, `Connected`,
//! `Listening` for datagrams, `DatagramOpened`) carry exactly one file
//! descriptor as `SCM_RIGHTS` ancillary data on the first byte of the frame.
//! [`Request::Subscribe`] is answered with `Ok`, after which the connection
//! only carries [`Response::Event`]s. Two requests carry a descriptor
//! the other way: [`Request::Relay`] and [`Request::Adopt`] hand sald the
//! program's UDP socket, as `SCM_RIGHTS` on the first byte of their frame
//! (sald takes a descriptor there on any request and closes it unless the
//! request wants one).
//! [`Request::Connector`] is answered
//! with `Ok`, after which the connection carries only `Connect` requests,
//! any number at once, each answered as soon as its handshake ends, in
//! whatever order, by a [`Response::Completed`] that names the request.
//!
//! Lifetimes: a flow or unbound datagram socket that was handed over lives as
//! long as its file descriptor, independently of the control connection that
//! created it. Listeners (and their datagram sockets) belong to the control
//! connection: closing it unbinds them. A blocking `Accept` is withdrawn by
//! the client's next request, or end of file: sald answers the accept with
//! an `InvalidRequest` error, then reads that request (left unread while the
//! accept waited) and answers it as usual. A listener's flows can instead
//! be delivered ([`Request::Deliver`]): sald pushes each one, as an
//! [`AcceptNotice`] with its descriptor, into an accept queue the client
//! reads like a kernel listening socket (one message per flow, no round
//! trip).
//!
//! Long lists: a frame holds at most [`MAX_FRAME`] bytes, about 2,000
//! flows or 5,000 rules, and hosts hold far more. So sald may answer
//! `ListFlows` and `ListRules` with any number of [`Response::FlowsPart`] or
//! [`Response::RulesPart`] frames, then the `Flows` or `Rules` answer
//! itself; the list is the parts' items and then the answer's, in order.
//! [`Parts`] puts them together (the socket shim's clients do, so their
//! callers see one answer).
//!
//! Datagram sends through a socket's fd are best effort, like UDP: a datagram
//! that cannot be sent (no route, over [`sal::proto::MAX_DATAGRAM`] bytes)
//! is dropped and not reported to the sender. No route counts among the
//! table's drops (`servalctl stats`); an oversized one shows only in
//! sald's debug log.
//!
//! Stream flows are handed over as one end of an `AF_UNIX` `SOCK_STREAM`
//! socketpair: bytes written to it go to the peer, end of file is the peer's
//! half-close. A socketpair carries no error, so each end tells the other
//! what a bare end of file or hang-up cannot with a *mark*: an abstract
//! name it binds, which the other end's `getpeername` shows from then on
//! (also once the marking end is closed). sald marks its end before it
//! hangs the application's end up: [`ENDED_MARK`] once the peer's end of
//! stream was delivered (whatever ends the flow after it), [`RESET_MARK`]
//! for a reset with none before it. The application marks its end
//! ([`ABORT_MARK`]) before it shuts it down both ways to abort the flow
//! (a socket shim's `connect(AF_UNSPEC)`, as TCP's `tcp_disconnect`):
//! sald then resets the flow where a bare end of file would finish it.
//! Datagram sockets are `SOCK_SEQPACKET` socketpairs whose messages are
//! [`DatagramFrame`]s (unconnected sockets) or bare payloads (connected
//! datagram flows).
//!
//! sald bounds its clients: a connection beyond a user's share is answered
//! with an `Exhausted` error (in place of the `Hello`) and closed; hello,
//! the rest of a started frame, and taking a response each have a time limit
//! (`TimedOut`, then the connection closes), and so does an ordinary user's
//! connection that holds no listener and sends nothing. An event subscriber
//! that falls behind sald's bounded event queue gets
//! [`ControlEvent::Lagged`].
//!
//! This module is pure: types, framing and codecs, no I/O.

#![warn(missing_docs)]

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use sal::id::{FlowId, ServiceId, ServicePrefix};
use sal::locator::Locator;
use sal::proto::{
    DatagramPeer, FlowCounters, FlowExport, FlowInfo, FlowState, HostStats, LocalInterface, Role,
};
use sal::table::{ListenerId, Rule, RuleOrigin, TableStats, Target, TargetKey};
use sal::wire::TransportProtocol;

/// Version of this protocol. A client and sald must speak the same one:
/// sald answers a `Hello` of any other with `VersionMismatch`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Where sald listens unless told otherwise (`--control`, `SERVAL_CONTROL`).
pub const DEFAULT_CONTROL_PATH: &str = "/run/serval/sald.sock";
/// Environment variable that overrides the control socket path for clients.
pub const CONTROL_PATH_ENV: &str = "SERVAL_CONTROL";
/// Largest frame either side accepts; larger ones close the connection.
pub const MAX_FRAME: usize = 1 << 20;
/// The most bytes a flow export's buffers (unsent and unread together)
/// may hold for a [`Request::Adopt`] to fit a frame whatever they hold:
/// each byte takes at most 4 bytes of JSON (`255,`), and 16 KiB are left
/// for the rest of the export (its other fields and 63 advertised
/// locators take under 4 KiB). 258,048 bytes; a flow with sald's default
/// buffers (1 MiB each way) full does not fit.
pub const MAX_ADOPT_BUFFERED: usize = (MAX_FRAME - (16 << 10)) / 4;

/// How sald's end of a stream flow's socketpair is named (after the
/// abstract name's leading NUL) once it delivered the peer's end of stream
/// (see the module docs); the rest of the name, 128 random bits, makes it
/// sald's own (nobody can take it first). Any name but a [`RESET_MARK`]
/// reads as this one.
pub const ENDED_MARK: &[u8] = b"sald-ended-";
/// How sald's end of a stream flow's socketpair is named once the flow was
/// reset, or its peer given up on, with no end of stream delivered before
/// (see the module docs). An end left unnamed as it hangs up (sald
/// stopped, or an older sald) reads as reset while the application still
/// sends, as before these marks.
pub const RESET_MARK: &[u8] = b"sald-reset-";
/// How an application's end of a stream flow's socketpair is named before
/// the application shuts it down both ways to abort the flow (see the
/// module docs): sald resets the flow at that end of file. sald takes any
/// name there for this one (the application falls back to a name the
/// kernel picks when its own is taken).
pub const ABORT_MARK: &[u8] = b"serval-abort-";

/// The control socket path a client should use: `SERVAL_CONTROL` or the default.
pub fn control_path() -> std::path::PathBuf {
    std::env::var_os(CONTROL_PATH_ENV)
        .map(Into::into)
        .unwrap_or_else(|| DEFAULT_CONTROL_PATH.into())
}

/// What a client asks of sald.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// First message of every connection.
    Hello {
        /// The client's `PROTOCOL_VERSION`; sald answers any other with
        /// `VersionMismatch`.
        version: u32,
        /// Free-form name of the client program (e.g. `servalctl`); sald does
        /// not act on it.
        client: String,
    },

    // --- applications ---
    /// Bind a service prefix (registers it: a DEMUX rule). Datagram listeners
    /// get a SOCK_SEQPACKET fd on which unconnected datagrams arrive.
    /// `backlog` bounds the flows (stream or connected datagram) that may be
    /// half-open or waiting for `Accept` at once.
    Listen {
        /// The service prefix to claim. Ordinary users are held to the bind policy
        /// (`min_bind_prefix`, `[[allow]]`, others' bindings, operators' rules).
        prefix: ServicePrefix,
        /// Stream (TCP) flows, or datagrams: connected flows plus a socket for
        /// unconnected ones.
        protocol: TransportProtocol,
        /// Most flows half-open or waiting to be accepted at once; sald clamps
        /// it to 1..=65535, and an ordinary user's listeners' backlogs to add
        /// up to at most its `flows_per_uid` (each keeps at least one).
        backlog: u32,
    },
    /// Bind a service prefix for a program that drives its own SAL host
    /// over UDP (`docs/in-process-sal.md`): its SYNs and unconnected
    /// datagrams are forwarded to the program's host at `locator`, as a
    /// service router forwards them, instead of served by sald; the
    /// program's host answers its clients directly from there. The
    /// program's UDP socket, bound to that locator's port, rides on the
    /// frame's first byte as `SCM_RIGHTS` (what proves the port is the
    /// caller's: another user's socket cannot be passed), and sald keeps
    /// it while the binding lasts (nobody else can bind the port
    /// meanwhile: the socket must not have `SO_REUSEADDR` set, with which
    /// Linux lets any user bind a UDP port too). Otherwise a bind like `Listen`'s: the same bind policy
    /// and per-user limits, announced (`Registered`, `Unregistered`), shown
    /// by `ListRules` (its DEMUX target's origin is
    /// [`RuleOrigin::Relay`]), ended by `CloseListener`, `Drain` or the
    /// connection's end. It has no accept queue: `Accept`, `Deliver`,
    /// `SetBacklog` and `StopListening` refuse it. Answered with
    /// `Relaying`; a sald older than this request answers
    /// `InvalidRequest`.
    ///
    /// Errors: `InvalidRequest` when no descriptor came, when it is no
    /// bound IPv4 UDP socket or has `SO_REUSEADDR` set, when `locator` is
    /// not a UDP locator or is sald's own, or when sald does not carry the
    /// SAL over UDP; `PermissionDenied` when `locator` is not where that
    /// socket receives (another port or address, or an address not of
    /// this host), when another user's socket also receives on its port
    /// (co-bound through `SO_REUSEADDR`), or the bind policy refuses the
    /// prefix; `Internal` when sald cannot list the host's UDP sockets;
    /// `AddressInUse` and `Exhausted` as for `Listen`.
    Relay {
        /// The service prefix to claim, held to the bind policy as for
        /// `Listen`.
        prefix: ServicePrefix,
        /// Where sald forwards the prefix's first packets: a `udp:` locator
        /// on one of this host's addresses at the socket's port. `None`:
        /// the socket's own address, or, for a socket bound to any
        /// address, sald's own address (the first of its interfaces) at
        /// the socket's port.
        #[serde(default)]
        locator: Option<Locator>,
    },
    /// Take over an established stream flow that a program drove in its
    /// own SAL host over UDP (`docs/in-process-sal.md`: what a program
    /// under the in-process mode does before `fork` or `exec`): sald
    /// imports the flow's state (`sal::proto::Host::import_flow`), moves
    /// it to its own locator with an RSYN, and serves it from then on as
    /// a flow the caller had connected or accepted through sald: answered
    /// with `Adopted` and the application's end of a socketpair (as for
    /// `Connected`), on which the bytes the export held unread come
    /// first; the bytes it held unsent go out first, in order. The
    /// program must have exported the flow from its host
    /// (`Host::export_flow`) and must not drive it any longer.
    ///
    /// Who may: the flow's owner. The program's UDP socket, bound where
    /// the export's `local` locator says, rides on the frame's first byte
    /// as `SCM_RIGHTS`, as for `Relay` (another user's socket cannot be
    /// passed), and must be in sald's network namespace. The flow counts
    /// as one of the caller's (`flows_per_uid`) and its buffers against
    /// the caller's buffer budget group, as a `Connect`'s would. Only
    /// with relays on (UDP mode's default), since only programs that relay have
    /// hosts of their own.
    ///
    /// Size: the export travels inside the JSON frame, its buffers as
    /// arrays of numbers (up to 4 bytes of JSON per buffered byte), and a
    /// frame is at most [`MAX_FRAME`] bytes: an export whose buffers hold
    /// together at most [`MAX_ADOPT_BUFFERED`] bytes always fits, a
    /// larger one may not (`encode_frame` refuses it with
    /// [`FrameError::TooLarge`]; sald closes a connection that announces
    /// a longer frame). A program drains or shrinks its buffers first.
    ///
    /// Errors: `PermissionDenied` when no descriptor came, when it is no
    /// bound IPv4 UDP socket in sald's namespace, or when it is not bound
    /// where the export's `local` says; `InvalidRequest` for relays off,
    /// sald in native mode, or an export that does not hold together or
    /// does not fit sald's limits (version, buffers beyond sald's maxima,
    /// sequence numbers, windows, unusable locators); `AddressInUse` when
    /// sald has a flow of that ID (flow IDs are per host: the program
    /// picked one sald uses) or exported one of that ID lately;
    /// `Exhausted` when the caller holds `flows_per_uid` flows already,
    /// sald's flow table is full, or the buffers do not fit sald's buffer
    /// budget or the caller's group's (or either is under pressure).
    Adopt {
        /// The flow's state, as `Host::export_flow` gave it.
        export: Box<FlowExport>,
    },
    /// How sald would route a first packet (a SYN) to `service`, for a
    /// program that drives its own SAL host over UDP and would otherwise
    /// send every SYN to sald (`docs/in-process-sal.md`, stage 2,
    /// "cached resolution"): the program installs the answer in its
    /// host, as a FORWARD rule of the answer's prefix, and sends its next
    /// SYNs to that service straight to the next hops until the answer's
    /// lifetime runs out, as a resolver caches a DNS answer. Answered
    /// with [`Response::Resolved`]; a sald older than this request
    /// answers `InvalidRequest` (and goes on serving the connection), with
    /// which a program keeps sending its SYNs to sald.
    ///
    /// Not a boundary: a program with its own UDP socket can send any
    /// packet anywhere already; the answer only saves it sald's hop. It
    /// tells the matched rule's prefix and every next hop of its active
    /// group (standbys included) with its weight, more than one flow's
    /// SYN-ACK would (one server's locator), and no more than an ordinary
    /// user may list (`ListRules`). A relay's answer lasts a second at
    /// most (its port may change hands once the relay is dropped). Cost: one longest-prefix match and a
    /// look at the matched rule (never a walk of the table), metered as
    /// any request of an ordinary user (see the module docs: the control
    /// connection's limits).
    Resolve {
        /// The service a program connects to.
        service: ServiceId,
    },
    /// Take the next established flow of a listener; waits for one unless
    /// `nonblocking`. Answered with `Accepted` and the flow's fd.
    Accept {
        /// The listener, which must be one this connection created.
        listener: ListenerId,
        /// Answer `WouldBlock` at once when no flow is ready, instead of waiting.
        #[serde(default)]
        nonblocking: bool,
    },
    /// Have sald hand a stream listener's flows straight to the
    /// application, in place of one `Accept` round trip per flow. Answered
    /// with `Delivering` and the application's end of a `SOCK_SEQPACKET`
    /// accept queue: sald puts one [`AcceptNotice`] into it per established
    /// flow, the flow's fd attached, while the queue has room (the rest wait
    /// in the listener's backlog). `poll`/`epoll` readiness of that end is
    /// readiness to accept, and any number of threads or forked processes
    /// may take from it. sald stops feeding when every copy of the
    /// application's end is closed; the listener itself still belongs to
    /// this control connection.
    ///
    /// With `flow_info`, each notice is a [`FlowNotice`] instead: the same
    /// fixed part, then the flow's whole [`FlowInfo`] snapshot (what an
    /// `Accepted` answer carries), still fixed-size and binary. Off by
    /// default, so a reader that only wants the service and the peer (the
    /// C preload's `accept`) gets the short notice and sald does no more
    /// work for it than before.
    Deliver {
        /// The listener, which must be one this connection created.
        listener: ListenerId,
        /// Send a [`FlowNotice`] per flow rather than the short [`AcceptNotice`].
        #[serde(default)]
        flow_info: bool,
    },
    /// Change how many flows a listener may hold half-open or waiting to be
    /// accepted, as a second `listen(2)` does (the socket shim binds at
    /// `bind` and learns the program's backlog only at `listen`). Clamped as
    /// `Listen`'s; flows already queued beyond a smaller backlog stay. As
    /// `listen(2)` on a bound socket, it makes a listener that stopped
    /// ([`Request::StopListening`]) listen again. Answered with `Ok`.
    SetBacklog {
        /// The listener, which must be one this connection created.
        listener: ListenerId,
        /// The new backlog.
        backlog: u32,
    },
    /// Unbind a listener (unregisters the service). Closing the control
    /// connection does the same for every listener it created.
    CloseListener {
        /// The listener, which must be one this connection created.
        listener: ListenerId,
    },
    /// Stop a stream listener listening while it stays bound, as
    /// `connect(AF_UNSPEC)` stops a TCP listener (`tcp_disconnect`): its
    /// service stays registered (another `Listen` of its prefix is still
    /// `AddressInUse`), but SYNs to it are refused, as by a bound socket
    /// that does not listen; the flows it held half-open or established
    /// and not handed over are reset; a blocking `Accept` waiting on it
    /// fails (`NotFound`); and its `Deliver` queue is fed no more and ends
    /// (the application's end hangs up once it took what was in it, which
    /// a socket shim resets as TCP resets the flows of its accept queue).
    /// [`Request::SetBacklog`] makes it listen again, and a new `Deliver`
    /// gives it a new queue. Stopping a stopped listener changes nothing.
    /// Answered with `Ok`; a sald older than this request answers
    /// `InvalidRequest`, with which a client keeps the listener as it was.
    StopListening {
        /// The listener, which must be one this connection created.
        listener: ListenerId,
    },
    /// Drain the listener bound to exactly `prefix`: the service is
    /// unregistered (its DEMUX rule goes, the controller withdraws it, new
    /// connections go to other instances) while the listener stays open and
    /// the flows it already admitted complete and can still be accepted.
    /// Closing it afterwards, once nothing is pending, resets nobody.
    /// Allowed to the binding's owner, root and sald's own user; draining a
    /// drained listener only reports on it. Answered with `Drained`: at
    /// once, or with `wait_ms` once nothing is pending any more (or the
    /// wait ran out, or the listener closed).
    ///
    /// Pending are the flows the listener admitted that the application
    /// has not taken yet: half-open, established and held by sald, and,
    /// for a listener whose flows are delivered ([`Request::Deliver`]),
    /// waiting in the application's accept queue until a `recvmsg` has
    /// taken them out of it (sald tells from the memory they hold in its
    /// end of the queue). So 0 means the application has taken every
    /// flow, whoever asks (an operator's `servalctl service drain` too).
    Drain {
        /// The prefix exactly as bound; every listener bound to it is drained.
        prefix: ServicePrefix,
        /// Wait up to this many milliseconds (at most 600 s) for nothing to be
        /// pending before answering; `None` answers at once.
        #[serde(default)]
        wait_ms: Option<u64>,
    },
    /// Open a flow to a service. Answered with `Connected` and the flow's fd
    /// once the handshake completes, or an error.
    Connect {
        /// The service to reach, resolved by longest-prefix match in sald's
        /// table.
        service: ServiceId,
        /// Stream: a `SOCK_STREAM` fd; datagram: a connected datagram flow on a
        /// `SOCK_SEQPACKET` fd.
        protocol: TransportProtocol,
        /// Give up after this long (default: the SAL's own retry limit).
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Open an unbound datagram socket (for `sendto` a service).
    OpenDatagram,

    // --- controller ---
    /// Adds an operator's (static) target to the rule for `prefix`, creating
    /// the rule, or updates the target of the same key. Root and sald's own
    /// user only.
    AddRule {
        /// The prefix the rule covers.
        prefix: ServicePrefix,
        /// What to do with the prefix's packets: forward by weight, deliver to
        /// a local listener, hold and ask the controller, or drop.
        target: Target,
        /// Only a rule's highest-priority (largest) targets are used; DEMUX wins
        /// regardless. Defaults to 0.
        #[serde(default)]
        priority: u32,
    },
    /// Remove one target, or the whole rule when `target` is `None`.
    DelRule {
        /// Exactly the prefix of the rule to change; an unknown one is
        /// `NotFound`.
        prefix: ServicePrefix,
        /// The target to remove; `None` removes the whole rule.
        #[serde(default)]
        target: Option<TargetKey>,
    },
    /// The service table, answered with `Rules` (after any `RulesPart`s);
    /// open to every user.
    ListRules,
    /// Turn this connection into an event stream: every event for root and
    /// sald's own user, the caller's own otherwise.
    Subscribe,
    /// Turn this connection into a connector: it then carries only
    /// `Connect` requests, any number in flight at once, and sald answers
    /// each with [`Response::Completed`] as soon as its handshake ends
    /// (successful or not), in whatever order. For a program with many
    /// non-blocking connects in flight: one connection for all of them,
    /// not one each. Requests are numbered from 0, in the order sent after
    /// this one.
    Connector,

    // --- operators ---
    /// Every flow (root and sald's own user), or the caller's own flows.
    ListFlows,
    /// The host's SAL interfaces, answered with `Interfaces`.
    ListInterfaces,
    /// sald's counters and sizes, answered with `Stats` (what `servalctl
    /// stats` shows).
    Stats,

    // --- controller (servd) ---
    /// Like `AddRule`, and records who installed the target (shown by
    /// `servalctl services`). A later plain `AddRule` of the same target
    /// makes it static again.
    AddRuleWithOrigin {
        /// The prefix the rule covers.
        prefix: ServicePrefix,
        /// What to do with the prefix's packets: forward by weight, deliver to
        /// a local listener, hold and ask the controller, or drop.
        target: Target,
        /// As for `AddRule`, but a non-static origin is capped at the lowest
        /// priority of the prefix's static targets.
        #[serde(default)]
        priority: u32,
        /// Who installs the target; a non-static add of a target the operator
        /// installed is ignored, leaving the operator's.
        #[serde(default)]
        origin: RuleOrigin,
    },

    /// Several rule changes applied in order, answered with
    /// [`Response::Applied`] (one round trip for a controller that installs
    /// or removes many rules at once). Each change is applied as its own
    /// `AddRuleWithOrigin` or `DelRule` would be; a failing change does not
    /// stop the ones after it.
    ApplyRules {
        /// The changes, applied in this order.
        changes: Vec<RuleChange>,
    },

    // --- operators: migration ---
    /// Move one flow to another of the host's interfaces (RSYN).
    Migrate {
        /// The flow to move, which must be established (root and sald's own
        /// user only).
        flow: FlowId,
        /// The interface to move it to, which must be one of sald's and up.
        iface: String,
    },
    /// Move every flow on interface `from` to interface `to`.
    MigrateAll {
        /// The interface whose established flows move; must be one of sald's.
        from: String,
        /// The interface they move to; must be one of sald's too. The first
        /// flow that fails to move ends the request with its error (flows
        /// moved before it stay moved).
        to: String,
    },
}

/// What sald answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// sald's answer to a `Hello` of its own version.
    Hello {
        /// sald's `PROTOCOL_VERSION`.
        version: u32,
        /// sald's name and version (`sald X.Y.Z`), for display.
        server: String,
    },
    /// Done, nothing to report: rule changes, migrations, `SetBacklog`,
    /// `CloseListener`, `StopListening`,
    /// and the switch into `Subscribe` or `Connector` mode.
    Ok,
    /// The request failed. Also sent, just before sald closes the
    /// connection, to a client it refuses, times out or cannot read.
    Error {
        /// The class of failure, one errno for the shim.
        kind: ErrorKind,
        /// Why, as one human-readable line.
        message: String,
    },
    /// `socket` is the datagram socket of a datagram listener (fd attached).
    Listening {
        /// Handle for `Accept`, `Deliver` and `CloseListener`, valid on this
        /// connection only.
        listener: ListenerId,
        /// The datagram listener's socket (fd attached); `None` for a stream
        /// listener.
        #[serde(default)]
        socket: Option<FlowId>,
    },
    /// The answer to [`Request::Relay`]: the prefix is bound, and its first
    /// packets go to `locator`.
    Relaying {
        /// Handle for `CloseListener`, valid on this connection only.
        listener: ListenerId,
        /// Where sald forwards the prefix's SYNs and unconnected datagrams.
        locator: Locator,
    },
    /// The answer to [`Request::Resolve`].
    Resolved {
        /// Where the program's host may send the service's SYNs itself:
        /// sald's rule for it forwards (or sald relays the service to a
        /// program beside it). `None`: ask me each time, that is, send the
        /// SYNs to sald (its rule serves the service here, holds it for
        /// the controller, drops it, or none matches; or sald answers
        /// no resolutions).
        #[serde(default)]
        route: Option<ResolvedRoute>,
        /// How long the answer holds, milliseconds: the program uses
        /// `route` that long, or (no route) sends the service's SYNs to
        /// sald that long before it asks again.
        lifetime_ms: u64,
    },
    /// The answer to [`Request::Deliver`]: the application's end of the
    /// listener's accept queue (fd attached).
    Delivering {
        /// The listener whose flows now go to the queue.
        listener: ListenerId,
    },
    /// A flow (fd attached).
    Accepted {
        /// The accepted flow as sald saw it at hand-over.
        flow: FlowInfo,
    },
    /// A flow (fd attached).
    Connected {
        /// The new flow as sald saw it at hand-over, once its handshake
        /// completed.
        flow: FlowInfo,
    },
    /// The answer to [`Request::Adopt`]: the flow, sald's now (fd
    /// attached).
    Adopted {
        /// The flow as sald saw it at hand-over, on sald's locator (the
        /// move may still be under way).
        flow: FlowInfo,
    },
    /// On a connector connection ([`Request::Connector`]): the answer to
    /// request number `request` (`Connected` with the flow's fd, or an
    /// error).
    Completed {
        /// Number of the request answered: every request after `Connector`
        /// takes the next number, from 0.
        request: u64,
        /// What a `Connect` on an ordinary connection would have answered (any
        /// other request gets `InvalidRequest`).
        response: Box<Response>,
    },
    /// The answer to [`Request::Drain`]: how many flows the drained
    /// listener admitted that its application has not taken yet, those
    /// waiting in its accept queue included (0: it can close without
    /// resetting anyone; see [`Request::Drain`]).
    Drained {
        /// Admitted flows not accepted yet, over every listener of the prefix.
        pending: u32,
    },
    /// An unbound datagram socket (fd attached).
    DatagramOpened {
        /// The socket's ID (a flow ID; `ListFlows` does not list sockets).
        socket: FlowId,
    },
    /// The answer to `ListRules`: the whole table, or its last part.
    Rules {
        /// Rules sorted by prefix, each target marked with who installed it
        /// (`Ephemeral` for unbound datagram sockets' own IDs).
        rules: Vec<Rule>,
        /// Whether a SYN or datagram that no rule matches goes out by
        /// broadcast (sald's `--no-broadcast` turns that off).
        #[serde(default)]
        broadcast_discovery: bool,
    },
    /// The answer to `ListFlows`: every flow the caller may see, or the last
    /// part.
    Flows {
        /// Flows sorted by flow ID: all of them for root and sald's own user,
        /// the caller's own otherwise.
        flows: Vec<FlowInfo>,
    },
    /// A piece of a long [`Response::Rules`], sent before it (see the
    /// module docs: long lists).
    RulesPart {
        /// The next rules, continuing the sorted order.
        rules: Vec<Rule>,
    },
    /// A piece of a long [`Response::Flows`], sent before it.
    FlowsPart {
        /// The next flows, continuing the sorted order.
        flows: Vec<FlowInfo>,
    },
    /// The answer to `ListInterfaces`.
    Interfaces {
        /// sald's SAL interfaces: name, locator, on-link prefix length, and
        /// whether the link is up.
        interfaces: Vec<LocalInterface>,
        /// Whether sald relays for programs that drive their own SAL host
        /// (UDP mode, unless `--no-relays`): it routes their SYNs by its rules and takes their
        /// `Relay` binds. A program's in-process mode needs it (false from
        /// a sald before this field: the program stays on the daemon path).
        #[serde(default)]
        relays: bool,
    },
    /// The answer to `Stats`.
    Stats {
        /// sald's counters and sizes at the time of the request.
        stats: Box<StatsReport>,
    },
    /// One event on a subscribed connection (after `Subscribe`'s `Ok`).
    Event {
        /// What happened; only events the subscriber's user may see are sent.
        event: ControlEvent,
    },
    /// The answer to [`Request::ApplyRules`]: the changes that failed (empty
    /// when all succeeded).
    Applied {
        /// The failed changes, in batch order.
        failures: Vec<RuleFailure>,
    },
}

/// The most next hops a [`ResolvedRoute`] has: sald answers a FORWARD
/// group of more with no route, and a program uses no route of more
/// (sald's groups are a few hops; this bounds what an answer makes a
/// program install).
pub const MAX_RESOLVED_HOPS: usize = 16;

/// A route a program's host may use on its own for a while (see
/// [`Request::Resolve`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedRoute {
    /// The prefix of sald's rule that matched (for display: it may be
    /// shorter than `prefix`).
    pub matched: ServicePrefix,
    /// What the answer holds for, and what the program installs its rule
    /// for: the service ID asked, whole. Not `matched`: sald may hold
    /// longer rules inside it (a local listener under a default route)
    /// that a rule of `matched` in the program would hide, and finding
    /// them costs what the table holds under `matched`.
    pub prefix: ServicePrefix,
    /// The next hops of the matched rule's active group, with their
    /// weights as the table holds them (weight 0: a standby, used only
    /// when every weight is 0); at least one.
    pub next_hops: Vec<NextHop>,
}

/// One next hop of a [`ResolvedRoute`]: a FORWARD target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextHop {
    /// Where the SYN goes: a server, a service router, or a program's host.
    pub locator: Locator,
    /// Its share among the hops, as a FORWARD target's weight.
    pub weight: u32,
}

/// One change of a [`Request::ApplyRules`] batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum RuleChange {
    /// As [`Request::AddRuleWithOrigin`].
    Add {
        /// The prefix the rule covers.
        prefix: ServicePrefix,
        /// What to do with the prefix's packets: forward by weight, deliver to
        /// a local listener, hold and ask the controller, or drop.
        target: Target,
        /// As in `AddRuleWithOrigin`: capped for non-static origins.
        #[serde(default)]
        priority: u32,
        /// Who installs the target (`Static` when absent).
        #[serde(default)]
        origin: RuleOrigin,
    },
    /// As [`Request::DelRule`]: one target, or the whole rule when `target`
    /// is `None`.
    Del {
        /// Exactly the prefix of the rule to change.
        prefix: ServicePrefix,
        /// The target to remove; `None` removes the whole rule.
        #[serde(default)]
        target: Option<TargetKey>,
    },
}

/// A change of a [`Request::ApplyRules`] batch that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleFailure {
    /// Position of the change in the batch.
    pub index: usize,
    /// What `AddRuleWithOrigin` / `DelRule` would have answered.
    pub kind: ErrorKind,
    /// Why, as one human-readable line.
    pub message: String,
}

impl Response {
    /// An error response.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
        Response::Error {
            kind,
            message: message.into(),
        }
    }

    /// Whether this response carries a file descriptor.
    pub fn carries_fd(&self) -> bool {
        if let Response::Completed { response, .. } = self {
            return response.carries_fd();
        }
        matches!(
            self,
            Response::Accepted { .. }
                | Response::Adopted { .. }
                | Response::Delivering { .. }
                | Response::Connected { .. }
                | Response::DatagramOpened { .. }
                | Response::Listening {
                    socket: Some(_),
                    ..
                }
        )
    }
}

/// Error classes, chosen so that a shim can map each to one errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No rule resolves the service (EHOSTUNREACH).
    NoRoute,
    /// The service refused the connection (ECONNREFUSED).
    Refused,
    /// No answer in time (ETIMEDOUT).
    TimedOut,
    /// The prefix is already bound on this host (EADDRINUSE).
    AddressInUse,
    /// The caller may not do this (EACCES).
    PermissionDenied,
    /// No such listener, flow or rule (ENOENT / EBADF).
    NotFound,
    /// Nothing ready and the caller asked not to wait (EAGAIN).
    WouldBlock,
    /// The request is malformed or out of range (EINVAL).
    InvalidRequest,
    /// The client speaks another protocol version (EPROTO).
    VersionMismatch,
    /// Too many flows or sockets (ENOBUFS / EMFILE).
    Exhausted,
    /// sald failed internally (EIO).
    Internal,
}

/// Events pushed to subscribers.
///
/// Root and sald's own user see every event; any other user sees only
/// those about its own flows and bindings (and `Lagged`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ControlEvent {
    /// A local listener now serves `prefix` (its DEMUX rule went in); servd
    /// announces it upstream.
    Registered {
        /// The prefix as the application bound it.
        prefix: ServicePrefix,
    },
    /// A local listener stopped serving `prefix` (drained, closed, or its
    /// connection went); servd withdraws it.
    Unregistered {
        /// The prefix as the application bound it.
        prefix: ServicePrefix,
    },
    /// A DELAY rule holds a packet or connect for `service`: the controller
    /// should resolve it. Root and sald's own user only.
    DelayNotify {
        /// The full service ID to resolve.
        service: ServiceId,
        /// What is held is a connect made on this host, not a packet that
        /// arrived (which anyone may send): servd keeps a query budget for
        /// packets and one for each user's connects, so that a flood of
        /// either cannot starve another user's connects.
        #[serde(default)]
        connect: bool,
        /// The user whose connect is held (`connect` only; `None` if sald
        /// does not know).
        #[serde(default)]
        uid: Option<u32>,
    },
    /// A flow was established: a connect made on this host completed its
    /// handshake, or a peer's connect to a local listener did (the flow
    /// then waits in the listener's backlog, counted from now on: servd's
    /// load of a served prefix is the flows accepted for it and not closed).
    FlowOpened {
        /// The new flow's local ID.
        flow: FlowId,
        /// The service ID the connect asked for.
        service: ServiceId,
        /// Whether a peer opened it to a local listener (this host serves
        /// it) rather than a program here connecting out. Absent, as from a
        /// sald before this field, means connected out.
        #[serde(default)]
        accepted: bool,
    },
    /// A flow (connected or accepted) is gone from the host: closed both
    /// ways, reset, or never established.
    FlowClosed {
        /// The flow's local ID, no longer in use.
        flow: FlowId,
    },
    /// This subscriber fell behind: sald's event queue is bounded, and the
    /// `missed` oldest events were dropped. State built from events should
    /// be read again (`ListRules`, `ListFlows`).
    Lagged {
        /// How many events this subscriber lost.
        missed: u64,
    },
}

/// Everything `servalctl stats` shows.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StatsReport {
    /// The protocol core's counters: packets, handshakes, cookies,
    /// migrations, buffer memory.
    pub host: HostStats,
    /// The service table's counters: lookups, packets resolved and dropped.
    pub table: TableStats,
    /// Prefixes in the service table, listeners' and datagram sockets' DEMUX
    /// rules included.
    pub rules: usize,
    /// Flows the host holds now in any state, stream and connected datagram
    /// (not unconnected datagram sockets).
    pub flows: usize,
    /// Bound listeners, drained ones included (not unbound datagram sockets).
    pub listeners: usize,
    /// Control connections admitted and being served now, subscribers and
    /// connectors included.
    pub control_clients: usize,
    /// Packets read from the links (TUN, raw socket, or UDP datagrams).
    pub link_rx: u64,
    /// Packets written to the links (TUN, raw socket, or UDP datagrams).
    pub link_tx: u64,
    /// Packets a link failed to send or dropped, plus UDP datagrams received
    /// unusable (truncated, or without a source).
    pub link_errors: u64,
    /// Whole seconds since sald finished setting up and opened its control
    /// socket.
    pub uptime_secs: u64,
    /// sald's file descriptor limit (its soft `RLIMIT_NOFILE`, raised to
    /// the hard limit at start): every flow handed to an application and
    /// every control connection takes one.
    #[serde(default)]
    pub fd_limit: u64,
    /// File descriptors sald has open.
    #[serde(default)]
    pub fds_open: u64,
    /// The budget of all flows' TCP buffers together, bytes (`[tcp]
    /// buffer_memory`; 0: none): `host.buffer_bytes` is what they hold,
    /// `host.buffer_pressure` whether they reached it, and
    /// `host.buffer_pressures`/`host.pressure_dropped` how often it bit.
    #[serde(default)]
    pub buffer_limit: u64,
    /// The budget of one user's flows' buffers (`[tcp]
    /// buffer_memory_per_uid`; 0: none); `host.group_buffer_pressures`
    /// counts the times a user's flows reached it.
    #[serde(default)]
    pub buffer_limit_per_uid: u64,
    /// Connects waiting for their handshake (each holds a waiter in sald
    /// until it completes, fails, times out or is given up on).
    #[serde(default)]
    pub connects_pending: u64,
    /// Drained listeners that waiting drains watch now, for the flows
    /// pending on them to be taken (an entry each, kept only while a drain
    /// waits on it).
    #[serde(default)]
    pub drains_watching: u64,
    /// Listeners whose pending flows drains counted, one per listener per
    /// look: a waiting drain looks again only when a listener it waits on
    /// has none left.
    #[serde(default)]
    pub drain_looks: u64,
    /// Times an ordinary user's work waited for its ration of sald's thread
    /// (a request, a listing's next part, a drain's next look, a datagram
    /// pump's next batch of the user's messages): each user may keep the
    /// thread busy for about a quarter of the time.
    #[serde(default)]
    pub ration_waits: u64,
    /// Relays sald ended itself because their program made its port
    /// shareable by other users (`SO_REUSEADDR` set again, or a device
    /// bound) after the relay was made.
    #[serde(default)]
    pub relays_ended: u64,
}

/// Puts a long list answer back together from its parts (see the module
/// docs).
#[derive(Debug, Default)]
pub struct Parts {
    pending: Option<Pending>,
}

/// The parts received so far of the list being answered.
#[derive(Debug)]
enum Pending {
    Flows(Vec<FlowInfo>),
    Rules(Vec<Rule>),
}

/// Parts of one list followed by something other than the rest of it.
#[derive(Debug, thiserror::Error)]
#[error("sald sent parts of a list, then an answer that does not end it")]
pub struct PartsMismatch;

impl Parts {
    /// Takes one response: `None` for a part (kept until the answer comes),
    /// else the response, with the parts received before it in front of its
    /// own items.
    pub fn take(&mut self, response: Response) -> Result<Option<Response>, PartsMismatch> {
        match (self.pending.take(), response) {
            (None, Response::FlowsPart { flows }) => {
                self.pending = Some(Pending::Flows(flows));
                Ok(None)
            }
            (Some(Pending::Flows(mut all)), Response::FlowsPart { flows }) => {
                all.extend(flows);
                self.pending = Some(Pending::Flows(all));
                Ok(None)
            }
            (None, Response::RulesPart { rules }) => {
                self.pending = Some(Pending::Rules(rules));
                Ok(None)
            }
            (Some(Pending::Rules(mut all)), Response::RulesPart { rules }) => {
                all.extend(rules);
                self.pending = Some(Pending::Rules(all));
                Ok(None)
            }
            (Some(Pending::Flows(mut all)), Response::Flows { flows }) => {
                all.extend(flows);
                Ok(Some(Response::Flows { flows: all }))
            }
            (
                Some(Pending::Rules(mut all)),
                Response::Rules {
                    rules,
                    broadcast_discovery,
                },
            ) => {
                all.extend(rules);
                Ok(Some(Response::Rules {
                    rules: all,
                    broadcast_discovery,
                }))
            }
            (None, other) => Ok(Some(other)),
            (Some(_), _) => Err(PartsMismatch),
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A body, announced or encoded, longer than `MAX_FRAME` (its length in
    /// bytes); the connection closes.
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// The body is not JSON of the expected message, or could not be encoded.
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes a message as one frame (length prefix included).
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(message)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Reads the length prefix of a frame, checking it against [`MAX_FRAME`].
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes a frame body.
pub fn decode_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    Ok(serde_json::from_slice(body)?)
}

/// A message on an unconnected datagram socket's SOCK_SEQPACKET fd.
///
/// Binary, because it is on the data path: a one-byte tag, a header, then
/// the payload. A service ID is 32 bytes; a locator is a kind (0 IPv4, 1
/// UDP), an IPv4 address (4) and a port (2); a peer is its flow ID (4), its
/// locator, then 1 and its service ID, or 0.
///
/// | tag | direction | header |
/// | --- | --- | --- |
/// | 1 `SendTo` | app to sald | service ID, then 1 and a locator (`via`), or 0 |
/// | 2 `Reply` | app to sald | peer |
/// | 3 `Received` | sald to app | peer, then 1 and the service ID it was sent to, or 0 |
/// | 4 `Refused` | sald to app | none: a host refused one of the socket's datagrams |
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatagramFrame {
    /// Send to `service`: resolved by sald's table, or straight to `via`.
    SendTo {
        /// The destination service ID.
        service: ServiceId,
        /// Send straight to this locator without resolving `service` (a reply,
        /// or a `sendto` naming an address).
        via: Option<Locator>,
        /// The payload; one over `sal::proto::MAX_DATAGRAM` bytes is dropped.
        data: Vec<u8>,
    },
    /// Answer the sender of a received datagram.
    Reply {
        /// The sender of the received datagram, as `Received` gave it.
        peer: DatagramPeer,
        /// The payload; one over `sal::proto::MAX_DATAGRAM` bytes is dropped.
        data: Vec<u8>,
    },
    /// A datagram for the application.
    Received {
        /// The sender: its locator, socket flow ID and own service ID (where a
        /// `Reply` goes).
        peer: DatagramPeer,
        /// The service ID the datagram was addressed to; `None` when it named
        /// none (addressed to this socket's flow ID).
        service: Option<ServiceId>,
        /// The payload.
        data: Vec<u8>,
    },
    /// A host this socket sent a datagram to answered with a reset (the
    /// application sees `ECONNREFUSED`).
    Refused,
}

/// Why a datagram frame was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DatagramFrameError {
    /// A zero-length message: not even a tag.
    #[error("empty datagram frame")]
    Empty,
    /// The first byte is no known tag (1 to 4).
    #[error("unknown datagram frame tag {0}")]
    UnknownTag(u8),
    /// The message ends inside its header.
    #[error("datagram frame header truncated")]
    Truncated,
    /// A peer's flow ID is 0, which names no flow.
    #[error("peer flow ID 0 is invalid")]
    ZeroFlow,
    /// A field holds a value its encoding never produces (a locator kind
    /// other than 0 or 1, a port with an IPv4 locator, a presence flag
    /// other than 0 or 1, bytes after a `Refused`): every frame has exactly
    /// one encoding, so a sender that means something else is refused
    /// rather than guessed at.
    #[error("malformed datagram frame: {0}")]
    Malformed(&'static str),
}

/// Bytes of an encoded locator.
const LOCATOR_LEN: usize = 7;

/// The most a `Received` frame adds before its payload: tag (1), peer
/// (flow 4, locator 7, service flag 1, service ID 32), service flag (1),
/// service ID (32). A receive buffer of the payload's size plus this holds
/// any frame.
pub const RECEIVED_HEADER_MAX: usize = 1 + 4 + LOCATOR_LEN + 1 + 32 + 1 + 32;

fn encode_locator(out: &mut Vec<u8>, locator: &Locator) {
    out.extend_from_slice(&locator_bytes(locator));
}

/// A locator's encoding: kind, IPv4 address, port.
fn locator_bytes(locator: &Locator) -> [u8; LOCATOR_LEN] {
    let (kind, ip, port) = match *locator {
        Locator::Ipv4(ip) => (0u8, ip, 0u16),
        Locator::Udp(addr) => (1u8, *addr.ip(), addr.port()),
    };
    let mut bytes = [0u8; LOCATOR_LEN];
    bytes[0] = kind;
    bytes[1..5].copy_from_slice(&ip.octets());
    bytes[5..].copy_from_slice(&port.to_be_bytes());
    bytes
}

fn encode_service(out: &mut Vec<u8>, service: Option<&ServiceId>) {
    match service {
        Some(service) => {
            out.push(1);
            out.extend_from_slice(service.as_bytes());
        }
        None => out.push(0),
    }
}

fn encode_peer(out: &mut Vec<u8>, peer: &DatagramPeer) {
    out.extend_from_slice(&peer.flow.get().to_be_bytes());
    encode_locator(out, &peer.locator);
    encode_service(out, peer.service.as_ref());
}

/// Reads from the front of a frame, failing with `Truncated`.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DatagramFrameError> {
        let (head, rest) = self
            .0
            .split_at_checked(n)
            .ok_or(DatagramFrameError::Truncated)?;
        self.0 = rest;
        Ok(head)
    }

    fn locator(&mut self) -> Result<Locator, DatagramFrameError> {
        let b = self.take(LOCATOR_LEN)?;
        let ip = Ipv4Addr::new(b[1], b[2], b[3], b[4]);
        let port = u16::from_be_bytes([b[5], b[6]]);
        match (b[0], port) {
            (0, 0) => Ok(Locator::Ipv4(ip)),
            (0, _) => Err(DatagramFrameError::Malformed("port with an IPv4 locator")),
            (1, _) => Ok(Locator::Udp(SocketAddrV4::new(ip, port))),
            _ => Err(DatagramFrameError::Malformed("unknown locator kind")),
        }
    }

    fn u32(&mut self) -> Result<u32, DatagramFrameError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DatagramFrameError> {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(bytes))
    }

    fn service(&mut self) -> Result<ServiceId, DatagramFrameError> {
        ServiceId::from_slice(self.take(32)?).ok_or(DatagramFrameError::Truncated)
    }

    /// A flag byte, then the item if it is 1.
    fn optional<T>(
        &mut self,
        item: impl FnOnce(&mut Self) -> Result<T, DatagramFrameError>,
    ) -> Result<Option<T>, DatagramFrameError> {
        match self.take(1)?[0] {
            0 => Ok(None),
            1 => item(self).map(Some),
            _ => Err(DatagramFrameError::Malformed("presence flag not 0 or 1")),
        }
    }

    fn peer(&mut self) -> Result<DatagramPeer, DatagramFrameError> {
        let flow = FlowId::new(self.u32()?).ok_or(DatagramFrameError::ZeroFlow)?;
        let locator = self.locator()?;
        let service = self.optional(Self::service)?;
        Ok(DatagramPeer {
            locator,
            flow,
            service,
        })
    }
}

/// One established flow on a listener's accept queue (see
/// [`Request::Deliver`]); the message carries the flow's fd as
/// `SCM_RIGHTS`.
///
/// Binary and fixed-size ([`AcceptNotice::LEN`] bytes), because the
/// application reads it in `accept`: the service ID the client asked for
/// (32), then 1 and the peer's locator (kind, IPv4 address, port), or 0 and
/// seven zero bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptNotice {
    /// The service the client connected to.
    pub service: ServiceId,
    /// Where the peer is, as far as this host knows.
    pub remote: Option<Locator>,
}

/// What sald puts on an accept queue in place of a flow it could not hand
/// over for want of descriptors or memory (the flow was reset): the
/// application's `accept` fails with `ENOBUFS`, as the kernel's does when
/// it cannot give an accepted connection a file.
pub const ACCEPT_EXHAUSTED: [u8; 1] = [0xff];

impl AcceptNotice {
    /// The encoded length.
    pub const LEN: usize = 32 + 1 + LOCATOR_LEN;

    /// The message, ready to send.
    pub fn encode(&self) -> [u8; AcceptNotice::LEN] {
        let mut message = [0u8; AcceptNotice::LEN];
        message[..32].copy_from_slice(self.service.as_bytes());
        if let Some(remote) = &self.remote {
            message[32] = 1;
            message[33..].copy_from_slice(&locator_bytes(remote));
        }
        message
    }

    /// Reads a message (`None`: not an accept notice).
    pub fn decode(message: &[u8]) -> Option<AcceptNotice> {
        if message.len() != AcceptNotice::LEN {
            return None;
        }
        let mut reader = Reader(message);
        let service = reader.service().ok()?;
        let remote = reader.optional(Reader::locator).ok()?;
        Some(AcceptNotice { service, remote })
    }
}

/// One established flow on an accept queue opened with `flow_info`
/// ([`Request::Deliver`]): an [`AcceptNotice`], then the rest of the
/// flow's [`FlowInfo`] snapshot, taken as sald handed the flow over. The
/// message carries the flow's fd as `SCM_RIGHTS`.
///
/// Why binary and fixed-size ([`FlowNotice::LEN`] bytes) rather than the
/// JSON an `Accepted` answer uses: the queue is read like a kernel
/// listening socket, without framing, so a reader must know how much room
/// a message needs; and `SIOCINQ` on a `SOCK_SEQPACKET` socket sums the
/// lengths of the queued messages, so with one length for every notice the
/// application can count the flows waiting in its queue (what its drain
/// needs, and sald cannot see). It also keeps the per-flow cost at a copy
/// of some fixed fields on both sides. The short [`AcceptNotice`] stays
/// what readers that do not ask for more get.
///
/// Layout after the [`AcceptNotice`] part (big-endian): flow ID (4), peer
/// flow ID or 0 (4), protocol number (1), role (1: 0 client, 1 server),
/// state (1, in [`FlowState`]'s order), local locator (7), interface name
/// (1 length byte, then [`FlowNotice::INTERFACE_MAX`] bytes, zero-padded),
/// the counters packets in/out and bytes in/out (4 x 8), migrations (4),
/// peer moves (4), 1 and microseconds since the last migration or 0 and 8
/// zero bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowNotice {
    /// The flow, as `Flows` would list it at hand-over time.
    pub info: FlowInfo,
}

/// Why a [`FlowNotice`] was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoticeError {
    /// The message is not exactly `FlowNotice::LEN` bytes long (its length).
    #[error("accept notice of {0} bytes (expected {len})", len = FlowNotice::LEN)]
    Length(usize),
    /// The flow ID field is 0.
    #[error("accept notice with flow ID 0")]
    ZeroFlow,
    /// A protocol, role, state or interface-name field holds no valid value
    /// (which one).
    #[error("accept notice with an unknown {0}")]
    Unknown(&'static str),
}

impl From<DatagramFrameError> for NoticeError {
    fn from(error: DatagramFrameError) -> NoticeError {
        match error {
            DatagramFrameError::ZeroFlow => NoticeError::ZeroFlow,
            // The length is checked before any field is read.
            _ => NoticeError::Length(0),
        }
    }
}

impl FlowNotice {
    /// The longest interface name a notice carries; a longer one (no
    /// kernel interface has one: `IFNAMSIZ` is 16 with the NUL) is sent as
    /// no interface.
    pub const INTERFACE_MAX: usize = 31;
    /// The encoded length.
    pub const LEN: usize = AcceptNotice::LEN
        + 4
        + 4
        + 3
        + LOCATOR_LEN
        + 1
        + FlowNotice::INTERFACE_MAX
        + 4 * 8
        + 4
        + 4
        + 1
        + 8;

    /// The message, ready to send.
    pub fn encode(&self) -> [u8; FlowNotice::LEN] {
        let info = &self.info;
        let mut out = [0u8; FlowNotice::LEN];
        let head = AcceptNotice {
            service: info.service,
            remote: info.remote,
        };
        let mut writer = Writer(&mut out[..]);
        writer.put(&head.encode());
        writer.put(&info.flow.get().to_be_bytes());
        writer.put(&info.peer_flow.map_or(0, FlowId::get).to_be_bytes());
        writer.put(&[
            info.protocol.number(),
            role_byte(info.role),
            state_byte(info.state),
        ]);
        writer.put(&locator_bytes(&info.local));
        let mut interface = [0u8; 1 + FlowNotice::INTERFACE_MAX];
        if let Some(name) = info
            .interface
            .as_deref()
            .filter(|name| name.len() <= FlowNotice::INTERFACE_MAX)
        {
            interface[0] = name.len() as u8;
            interface[1..1 + name.len()].copy_from_slice(name.as_bytes());
        }
        writer.put(&interface);
        let counters = &info.counters;
        for counter in [
            counters.packets_in,
            counters.packets_out,
            counters.bytes_in,
            counters.bytes_out,
        ] {
            writer.put(&counter.to_be_bytes());
        }
        writer.put(&info.migrations.to_be_bytes());
        writer.put(&info.peer_moves.to_be_bytes());
        match info.last_migration_us_ago {
            Some(us) => {
                writer.put(&[1]);
                writer.put(&us.to_be_bytes());
            }
            None => writer.put(&[0; 9]),
        }
        out
    }

    /// Reads a message; anything but exactly [`FlowNotice::LEN`] well-formed
    /// bytes is an error.
    pub fn decode(message: &[u8]) -> Result<FlowNotice, NoticeError> {
        if message.len() != FlowNotice::LEN {
            return Err(NoticeError::Length(message.len()));
        }
        let mut reader = Reader(message);
        let service = reader.service()?;
        let remote = reader.optional(Reader::locator)?;
        if remote.is_none() {
            reader.take(LOCATOR_LEN)?;
        }
        let flow = FlowId::new(reader.u32()?).ok_or(NoticeError::ZeroFlow)?;
        let peer_flow = FlowId::new(reader.u32()?);
        let [protocol, role, state] = reader.take(3)?.try_into().unwrap_or([0; 3]);
        let protocol =
            TransportProtocol::from_number(protocol).ok_or(NoticeError::Unknown("protocol"))?;
        let role = match role {
            0 => Role::Client,
            1 => Role::Server,
            _ => return Err(NoticeError::Unknown("role")),
        };
        let state = *FLOW_STATES
            .get(usize::from(state))
            .ok_or(NoticeError::Unknown("state"))?;
        let local = reader.locator()?;
        let interface = reader.take(1 + FlowNotice::INTERFACE_MAX)?;
        let interface = match usize::from(interface[0]) {
            0 => None,
            len => Some(
                interface
                    .get(1..1 + len)
                    .and_then(|name| std::str::from_utf8(name).ok())
                    .ok_or(NoticeError::Unknown("interface name"))?
                    .to_string(),
            ),
        };
        let counters = FlowCounters {
            packets_in: reader.u64()?,
            packets_out: reader.u64()?,
            bytes_in: reader.u64()?,
            bytes_out: reader.u64()?,
        };
        let migrations = reader.u32()?;
        let peer_moves = reader.u32()?;
        let moved = reader.take(1)?[0] == 1;
        let last_migration_us_ago = Some(reader.u64()?).filter(|_| moved);
        Ok(FlowNotice {
            info: FlowInfo {
                flow,
                peer_flow,
                service,
                protocol,
                role,
                state,
                local,
                remote,
                interface,
                counters,
                migrations,
                peer_moves,
                last_migration_us_ago,
            },
        })
    }
}

/// [`FlowState`]s in the order of their notice byte.
const FLOW_STATES: [FlowState; 5] = [
    FlowState::Resolving,
    FlowState::SynSent,
    FlowState::SynReceived,
    FlowState::Established,
    FlowState::Dead,
];

fn state_byte(state: FlowState) -> u8 {
    match state {
        FlowState::Resolving => 0,
        FlowState::SynSent => 1,
        FlowState::SynReceived => 2,
        FlowState::Established => 3,
        FlowState::Dead => 4,
    }
}

fn role_byte(role: Role) -> u8 {
    match role {
        Role::Client => 0,
        Role::Server => 1,
    }
}

/// Writes into the front of a buffer sized for what is written.
struct Writer<'a>(&'a mut [u8]);

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let (head, rest) = std::mem::take(&mut self.0).split_at_mut(bytes.len());
        head.copy_from_slice(bytes);
        self.0 = rest;
    }
}

impl DatagramFrame {
    /// The message, ready to send as one `SOCK_SEQPACKET` message: tag,
    /// header, payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            DatagramFrame::SendTo { service, via, data } => {
                out.push(1);
                out.extend_from_slice(service.as_bytes());
                match via {
                    Some(via) => {
                        out.push(1);
                        encode_locator(&mut out, via);
                    }
                    None => out.push(0),
                }
                out.extend_from_slice(data);
            }
            DatagramFrame::Reply { peer, data } => {
                out.push(2);
                encode_peer(&mut out, peer);
                out.extend_from_slice(data);
            }
            DatagramFrame::Received {
                peer,
                service,
                data,
            } => {
                out.push(3);
                encode_peer(&mut out, peer);
                encode_service(&mut out, service.as_ref());
                out.extend_from_slice(data);
            }
            DatagramFrame::Refused => out.push(4),
        }
        out
    }

    /// Reads one message; what follows the header is the payload, whatever
    /// its length.
    pub fn decode(bytes: &[u8]) -> Result<DatagramFrame, DatagramFrameError> {
        let (&tag, rest) = bytes.split_first().ok_or(DatagramFrameError::Empty)?;
        let mut r = Reader(rest);
        let frame = match tag {
            1 => DatagramFrame::SendTo {
                service: r.service()?,
                via: r.optional(Reader::locator)?,
                data: Vec::new(),
            },
            2 => DatagramFrame::Reply {
                peer: r.peer()?,
                data: Vec::new(),
            },
            3 => DatagramFrame::Received {
                peer: r.peer()?,
                service: r.optional(Reader::service)?,
                data: Vec::new(),
            },
            4 if rest.is_empty() => return Ok(DatagramFrame::Refused),
            4 => return Err(DatagramFrameError::Malformed("bytes after a refusal")),
            other => return Err(DatagramFrameError::UnknownTag(other)),
        };
        Ok(frame.with_data(r.0))
    }

    /// The frame with its payload set.
    fn with_data(mut self, payload: &[u8]) -> DatagramFrame {
        match &mut self {
            DatagramFrame::SendTo { data, .. }
            | DatagramFrame::Reply { data, .. }
            | DatagramFrame::Received { data, .. } => *data = payload.to_vec(),
            DatagramFrame::Refused => {}
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_opened_event_without_the_accepted_field_means_connected_out() {
        let event = ControlEvent::FlowOpened {
            flow: FlowId::new(7).unwrap(),
            service: "beef".parse().unwrap(),
            accepted: true,
        };
        let mut json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            serde_json::from_value::<ControlEvent>(json.clone()).unwrap(),
            event
        );
        json.as_object_mut().unwrap().remove("accepted");
        assert_eq!(
            serde_json::from_value::<ControlEvent>(json).unwrap(),
            ControlEvent::FlowOpened {
                flow: FlowId::new(7).unwrap(),
                service: "beef".parse().unwrap(),
                accepted: false,
            }
        );
    }

    #[test]
    fn parts_of_a_long_list_come_back_as_one_answer_in_order() {
        let mut table = sal::table::ServiceTable::new();
        for i in 0..5u8 {
            let prefix = format!("b{i}/8").parse().unwrap();
            table.add(prefix, Target::Drop, 0);
        }
        let mut rules: Vec<Rule> = table.rules().cloned().collect();
        rules.sort_by_key(|r| r.prefix);
        let mut parts = Parts::default();
        let part = |r: &[Rule]| Response::RulesPart { rules: r.to_vec() };
        assert!(parts.take(part(&rules[..2])).unwrap().is_none());
        assert!(parts.take(part(&rules[2..4])).unwrap().is_none());
        let whole = parts
            .take(Response::Rules {
                rules: rules[4..].to_vec(),
                broadcast_discovery: true,
            })
            .unwrap();
        assert_eq!(
            whole,
            Some(Response::Rules {
                rules: rules.clone(),
                broadcast_discovery: true
            })
        );
        // The next answer starts afresh; answers that are no lists pass.
        assert_eq!(parts.take(Response::Ok).unwrap(), Some(Response::Ok));
        let flows = parts.take(Response::Flows { flows: vec![] }).unwrap();
        assert_eq!(flows, Some(Response::Flows { flows: vec![] }));
        // Parts of one list, then another answer: a broken server.
        assert!(parts.take(part(&rules[..1])).unwrap().is_none());
        assert!(parts.take(Response::Flows { flows: vec![] }).is_err());
        let mut parts = Parts::default();
        parts.take(Response::FlowsPart { flows: vec![] }).unwrap();
        assert!(parts.take(part(&rules[..1])).is_err(), "flows, then rules");
        let mut parts = Parts::default();
        parts.take(part(&rules[..1])).unwrap();
        assert!(parts.take(Response::Ok).is_err());
        // Parts round-trip through frames like any response.
        let frame = encode_frame(&part(&rules)).unwrap();
        let back: Response = decode_body(&frame[4..]).unwrap();
        assert_eq!(back, part(&rules));
    }

    #[test]
    fn requests_round_trip_through_frames() {
        let requests = [
            Request::Hello {
                version: PROTOCOL_VERSION,
                client: "test".into(),
            },
            Request::Listen {
                prefix: "beef/16".parse().unwrap(),
                protocol: TransportProtocol::Stream,
                backlog: 8,
            },
            Request::SetBacklog {
                listener: ListenerId(3),
                backlog: 511,
            },
            Request::StopListening {
                listener: ListenerId(3),
            },
            Request::Relay {
                prefix: "c0ec70/24".parse().unwrap(),
                locator: Some("udp:10.0.0.2:40000".parse().unwrap()),
            },
            Request::Relay {
                prefix: "c0ec70/24".parse().unwrap(),
                locator: None,
            },
            Request::AddRule {
                prefix: "be/8".parse().unwrap(),
                target: Target::Forward {
                    locator: "10.0.0.2".parse().unwrap(),
                    weight: 3,
                },
                priority: 1,
            },
            Request::DelRule {
                prefix: "be/8".parse().unwrap(),
                target: Some(TargetKey::Drop),
            },
            Request::ListFlows,
            Request::ApplyRules {
                changes: vec![
                    RuleChange::Add {
                        prefix: "beef/16".parse().unwrap(),
                        target: Target::Forward {
                            locator: "10.0.0.3".parse().unwrap(),
                            weight: 1,
                        },
                        priority: 0,
                        origin: RuleOrigin::Announced {
                            by: "h3".into(),
                            expires_unix_ms: Some(5),
                        },
                    },
                    RuleChange::Del {
                        prefix: "beef/16".parse().unwrap(),
                        target: None,
                    },
                ],
            },
        ];
        let lagged = Response::Event {
            event: ControlEvent::Lagged { missed: 3 },
        };
        let frame = encode_frame(&lagged).unwrap();
        assert_eq!(decode_body::<Response>(&frame[4..]).unwrap(), lagged);
        assert!(String::from_utf8_lossy(&frame[4..]).contains(r#""event":"lagged","missed":3"#));
        for request in requests {
            let frame = encode_frame(&request).unwrap();
            let len = frame_len(frame[..4].try_into().unwrap()).unwrap();
            assert_eq!(len, frame.len() - 4);
            assert_eq!(decode_body::<Request>(&frame[4..]).unwrap(), request);
        }
        let json = serde_json::to_string(&Request::ListRules).unwrap();
        assert_eq!(json, r#"{"op":"list_rules"}"#);
        let del = RuleChange::Del {
            prefix: "be/8".parse().unwrap(),
            target: Some(TargetKey::Drop),
        };
        let json = serde_json::to_value(&del).unwrap();
        assert_eq!(json["change"], "del");
        let applied = Response::Applied {
            failures: vec![RuleFailure {
                index: 1,
                kind: ErrorKind::NotFound,
                message: "no rule".into(),
            }],
        };
        let frame = encode_frame(&applied).unwrap();
        assert_eq!(decode_body::<Response>(&frame[4..]).unwrap(), applied);
    }

    #[test]
    fn a_resolution_round_trips_with_or_without_a_route() {
        let asked = Request::Resolve {
            service: "c0ec7001".parse().unwrap(),
        };
        let frame = encode_frame(&asked).unwrap();
        assert_eq!(decode_body::<Request>(&frame[4..]).unwrap(), asked);
        let json = serde_json::to_value(&asked).unwrap();
        assert_eq!(json["op"], "resolve");
        let route = Response::Resolved {
            route: Some(ResolvedRoute {
                matched: "0/0".parse().unwrap(),
                prefix: ServicePrefix::exact("c0ec7001".parse().unwrap()),
                next_hops: vec![
                    NextHop {
                        locator: "udp:10.0.0.2:7077".parse().unwrap(),
                        weight: 3,
                    },
                    NextHop {
                        locator: "udp:10.0.0.3:7077".parse().unwrap(),
                        weight: 0,
                    },
                ],
            }),
            lifetime_ms: 5000,
        };
        let frame = encode_frame(&route).unwrap();
        assert_eq!(decode_body::<Response>(&frame[4..]).unwrap(), route);
        assert!(!route.carries_fd());
        // "Ask me each time" may leave the route out.
        let each_time: Response =
            decode_body(br#"{"type":"resolved","lifetime_ms":60000}"#).unwrap();
        assert_eq!(
            each_time,
            Response::Resolved {
                route: None,
                lifetime_ms: 60_000
            }
        );
    }

    #[test]
    fn a_relay_names_its_locator_or_leaves_it_to_sald() {
        let bare: Request = decode_body(br#"{"op":"relay","prefix":"c0ec70/24"}"#).unwrap();
        assert_eq!(
            bare,
            Request::Relay {
                prefix: "c0ec70/24".parse().unwrap(),
                locator: None,
            }
        );
        let relaying = Response::Relaying {
            listener: ListenerId(9),
            locator: "udp:10.0.0.2:40000".parse().unwrap(),
        };
        let frame = encode_frame(&relaying).unwrap();
        assert_eq!(decode_body::<Response>(&frame[4..]).unwrap(), relaying);
        assert!(!relaying.carries_fd(), "sald keeps the socket");
        let origin = RuleOrigin::Relay {
            locator: "udp:10.0.0.2:40000".parse().unwrap(),
        };
        let json = serde_json::to_string(&origin).unwrap();
        assert_eq!(json, r#"{"kind":"relay","locator":"udp:10.0.0.2:40000"}"#);
        assert_eq!(origin.label(), "relay udp:10.0.0.2:40000");
    }

    /// An export of a flow whose buffers hold `send` and `recv` bytes of
    /// 0xff (the longest in JSON), with the most advertised locators.
    fn export(send: usize, recv: usize) -> FlowExport {
        use sal::wire::MAX_ADDRESS_ADDRS;
        FlowExport {
            version: sal::proto::FLOW_EXPORT_VERSION,
            flow: FlowId::new(u32::MAX).unwrap(),
            peer_flow: FlowId::new(u32::MAX - 1).unwrap(),
            service: "ffffffff".parse().unwrap(),
            role: Role::Server,
            local: "udp:255.255.255.254:65535".parse().unwrap(),
            peer: "udp:255.255.255.253:65535".parse().unwrap(),
            peer_locators: (0..MAX_ADDRESS_ADDRS)
                .map(|_| "udp:255.255.255.252:65535".parse().unwrap())
                .collect(),
            local_nonce: [255; 8],
            peer_nonce: [255; 8],
            next_verno: u32::MAX,
            peer_next: u32::MAX,
            socket: sal::tcp::SocketExport {
                send_unacked: u32::MAX,
                send_max: u32::MAX,
                send_buffer: vec![0xff; send],
                recv_start: u32::MAX,
                recv_buffer: vec![0xff; recv],
                peer_window: u32::MAX,
                max_peer_window: u32::MAX,
                peer_window_scale: Some(255),
                local_window_shift: 255,
                sack: true,
                peer_mss: u16::MAX,
                timestamps: true,
                tsval: u32::MAX,
                ts_recent: u32::MAX,
                nagle: false,
                peer_finished: true,
            },
        }
    }

    #[test]
    fn an_adopt_round_trips_and_its_answer_carries_the_flow() {
        let adopt = Request::Adopt {
            export: Box::new(export(100, 200)),
        };
        let frame = encode_frame(&adopt).unwrap();
        assert_eq!(decode_body::<Request>(&frame[4..]).unwrap(), adopt);
        let adopted = Response::Adopted {
            flow: flow_info(None),
        };
        let frame = encode_frame(&adopted).unwrap();
        assert_eq!(decode_body::<Response>(&frame[4..]).unwrap(), adopted);
        assert!(adopted.carries_fd());
    }

    /// The figure `MAX_ADOPT_BUFFERED` promises: an export of that many
    /// buffered bytes fits a frame at its longest, and a full flow with
    /// sald's default buffers (1 MiB each way) is refused, clearly, before
    /// it is sent.
    #[test]
    fn an_adopt_fits_a_frame_up_to_its_bound_and_is_refused_clearly_beyond() {
        let half = MAX_ADOPT_BUFFERED / 2;
        let longest = Request::Adopt {
            export: Box::new(export(half, MAX_ADOPT_BUFFERED - half)),
        };
        let frame = encode_frame(&longest).expect("fits");
        assert!(frame.len() <= MAX_FRAME + 4);
        let full = Request::Adopt {
            export: Box::new(export(1 << 20, 1 << 20)),
        };
        match encode_frame(&full) {
            Err(FrameError::TooLarge(len)) => assert!(len > MAX_FRAME),
            other => panic!("not refused: {:?}", other.map(|f| f.len())),
        }
        // And the reader refuses its announced length before any body.
        let announced = (8u32 << 20).to_be_bytes();
        assert!(matches!(frame_len(announced), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn completed_answers_round_trip_and_carry_the_inner_descriptor() {
        let failed = Response::Completed {
            request: 7,
            response: Box::new(Response::error(ErrorKind::NoRoute, "no rule")),
        };
        let frame = encode_frame(&failed).unwrap();
        assert_eq!(decode_body::<Response>(&frame[4..]).unwrap(), failed);
        assert!(!failed.carries_fd());
        let opened = Response::Completed {
            request: 8,
            response: Box::new(Response::Delivering {
                listener: ListenerId(3),
            }),
        };
        assert!(opened.carries_fd());
        let json = serde_json::to_value(&opened).unwrap();
        assert_eq!(json["type"], "completed");
        assert_eq!(json["response"]["type"], "delivering");
        let frame = encode_frame(&Request::Connector).unwrap();
        assert_eq!(
            decode_body::<Request>(&frame[4..]).unwrap(),
            Request::Connector
        );
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        assert!(matches!(
            frame_len((MAX_FRAME as u32 + 1).to_be_bytes()),
            Err(FrameError::TooLarge(_))
        ));
        assert!(decode_body::<Request>(b"{\"op\":\"nope\"}").is_err());
        assert!(decode_body::<Request>(b"\xff\xfe").is_err());
    }

    #[test]
    fn accept_notices_round_trip_and_reject_other_lengths() {
        for remote in [
            None,
            Some("10.77.1.1".parse().unwrap()),
            Some("udp:10.0.0.1:54324".parse().unwrap()),
        ] {
            let notice = AcceptNotice {
                service: "c0ec70".parse().unwrap(),
                remote,
            };
            let message = notice.encode();
            assert_eq!(AcceptNotice::decode(&message), Some(notice));
            assert_eq!(
                AcceptNotice::decode(&message[..AcceptNotice::LEN - 1]),
                None
            );
        }
        assert_eq!(AcceptNotice::decode(&[0u8; AcceptNotice::LEN + 1]), None);
        assert_eq!(AcceptNotice::decode(&ACCEPT_EXHAUSTED), None);
    }

    fn flow_info(interface: Option<&str>) -> FlowInfo {
        FlowInfo {
            flow: FlowId::new(0x0102_0304).unwrap(),
            peer_flow: FlowId::new(77),
            service: "c0ec70".parse().unwrap(),
            protocol: TransportProtocol::Stream,
            role: Role::Server,
            state: FlowState::Established,
            local: "udp:10.0.0.2:54324".parse().unwrap(),
            remote: Some("10.0.0.1".parse().unwrap()),
            interface: interface.map(str::to_string),
            counters: FlowCounters {
                packets_in: 3,
                packets_out: 2,
                bytes_in: u64::MAX,
                bytes_out: 1 << 40,
            },
            migrations: 1,
            peer_moves: u32::MAX,
            last_migration_us_ago: Some(12_345),
        }
    }

    #[test]
    fn flow_notices_round_trip_every_field() {
        let mut variants = vec![flow_info(Some("eth0")), flow_info(None)];
        let mut bare = flow_info(Some(&"x".repeat(FlowNotice::INTERFACE_MAX)));
        bare.peer_flow = None;
        bare.remote = None;
        bare.last_migration_us_ago = None;
        bare.protocol = TransportProtocol::Datagram;
        bare.role = Role::Client;
        variants.push(bare);
        for state in FLOW_STATES {
            let mut info = flow_info(Some("wlan0"));
            info.state = state;
            variants.push(info);
        }
        for info in variants {
            let notice = FlowNotice { info };
            let message = notice.encode();
            assert_eq!(FlowNotice::decode(&message), Ok(notice.clone()));
            // The front is the short notice a plain reader gets.
            assert_eq!(
                AcceptNotice::decode(&message[..AcceptNotice::LEN]),
                Some(AcceptNotice {
                    service: notice.info.service,
                    remote: notice.info.remote,
                })
            );
        }
    }

    #[test]
    fn flow_notices_reject_bad_lengths_and_values() {
        let message = FlowNotice {
            info: flow_info(Some("eth0")),
        }
        .encode();
        for len in [0, 1, AcceptNotice::LEN, FlowNotice::LEN - 1] {
            assert_eq!(
                FlowNotice::decode(&message[..len]),
                Err(NoticeError::Length(len))
            );
        }
        let mut longer = message.to_vec();
        longer.push(0);
        assert!(FlowNotice::decode(&longer).is_err());
        assert!(FlowNotice::decode(&ACCEPT_EXHAUSTED).is_err());
        let flow_at = AcceptNotice::LEN;
        let bytes_at = flow_at + 8;
        let interface_at = bytes_at + 3 + LOCATOR_LEN;
        let cases: [(usize, u8, NoticeError); 5] = [
            (flow_at + 3, 0, NoticeError::ZeroFlow),
            (bytes_at, 0, NoticeError::Unknown("protocol")),
            (bytes_at + 1, 2, NoticeError::Unknown("role")),
            (bytes_at + 2, 5, NoticeError::Unknown("state")),
            (interface_at, 200, NoticeError::Unknown("interface name")),
        ];
        for (at, value, error) in cases {
            let mut bad = message;
            if at == flow_at + 3 {
                bad[flow_at..flow_at + 4].fill(0);
            }
            bad[at] = value;
            assert_eq!(FlowNotice::decode(&bad), Err(error), "byte {at} = {value}");
        }
        let mut not_utf8 = message;
        not_utf8[interface_at + 1] = 0xff;
        assert_eq!(
            FlowNotice::decode(&not_utf8),
            Err(NoticeError::Unknown("interface name"))
        );
        // A name no notice has room for goes as no interface.
        let long = FlowNotice {
            info: flow_info(Some(&"y".repeat(FlowNotice::INTERFACE_MAX + 1))),
        };
        assert_eq!(
            FlowNotice::decode(&long.encode()).unwrap().info.interface,
            None
        );
    }

    #[test]
    fn deliver_asks_for_flow_info_only_when_told() {
        let old: Request = decode_body(br#"{"op":"deliver","listener":4}"#).unwrap();
        assert_eq!(
            old,
            Request::Deliver {
                listener: ListenerId(4),
                flow_info: false
            }
        );
        let asked = Request::Deliver {
            listener: ListenerId(4),
            flow_info: true,
        };
        let frame = encode_frame(&asked).unwrap();
        assert_eq!(decode_body::<Request>(&frame[4..]).unwrap(), asked);
    }

    #[test]
    fn datagram_frames_round_trip() {
        let peer = DatagramPeer {
            locator: "udp:10.0.0.1:54324".parse().unwrap(),
            flow: FlowId::new(77).unwrap(),
            service: None,
        };
        let reference = DatagramPeer {
            locator: "10.77.1.1".parse().unwrap(),
            flow: FlowId::new(4).unwrap(),
            service: Some("0006".parse().unwrap()),
        };
        let frames = [
            DatagramFrame::SendTo {
                service: "beef".parse().unwrap(),
                via: None,
                data: b"hi".to_vec(),
            },
            DatagramFrame::SendTo {
                service: "0006".parse().unwrap(),
                via: Some("10.77.1.1".parse().unwrap()),
                data: b"hi".to_vec(),
            },
            DatagramFrame::Reply { peer, data: vec![] },
            DatagramFrame::Reply {
                peer: reference,
                data: b"back".to_vec(),
            },
            DatagramFrame::Received {
                peer: reference,
                service: Some("0007".parse().unwrap()),
                data: b"ref-unconnected".to_vec(),
            },
            DatagramFrame::Refused,
            DatagramFrame::Received {
                peer,
                service: Some("4001".parse().unwrap()),
                data: b"x".to_vec(),
            },
            DatagramFrame::Received {
                peer,
                service: None,
                data: b"y".to_vec(),
            },
        ];
        for frame in frames {
            assert_eq!(DatagramFrame::decode(&frame.encode()).unwrap(), frame);
        }
        assert_eq!(DatagramFrame::decode(&[]), Err(DatagramFrameError::Empty));
        assert_eq!(
            DatagramFrame::decode(&[9]),
            Err(DatagramFrameError::UnknownTag(9))
        );
        assert_eq!(
            DatagramFrame::decode(&[2, 0, 0]),
            Err(DatagramFrameError::Truncated)
        );
        assert_eq!(
            DatagramFrame::decode(&[2, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0]),
            Err(DatagramFrameError::ZeroFlow)
        );
        assert_eq!(
            DatagramFrame::decode(&[3, 0, 0, 0, 1, 0, 1, 1, 1, 1, 0, 0, 1, 7]),
            Err(DatagramFrameError::Truncated),
            "a service flag without the service"
        );
        // One encoding per frame: what no encoder writes is refused.
        let reply = |locator: [u8; LOCATOR_LEN]| {
            let mut bytes = vec![2, 0, 0, 0, 1];
            bytes.extend_from_slice(&locator);
            bytes.push(0);
            DatagramFrame::decode(&bytes)
        };
        assert!(reply([0, 10, 0, 0, 1, 0, 0]).is_ok());
        assert!(reply([1, 10, 0, 0, 1, 0, 7]).is_ok());
        assert_eq!(
            reply([0, 10, 0, 0, 1, 0, 7]),
            Err(DatagramFrameError::Malformed("port with an IPv4 locator"))
        );
        assert_eq!(
            reply([2, 10, 0, 0, 1, 0, 7]),
            Err(DatagramFrameError::Malformed("unknown locator kind"))
        );
        let mut flagged = [0u8; 1 + 4 + LOCATOR_LEN + 1];
        flagged[0] = 2;
        flagged[4] = 1;
        flagged[LOCATOR_LEN + 5] = 2;
        assert_eq!(
            DatagramFrame::decode(&flagged),
            Err(DatagramFrameError::Malformed("presence flag not 0 or 1"))
        );
        assert_eq!(DatagramFrame::decode(&[4]), Ok(DatagramFrame::Refused));
        assert_eq!(
            DatagramFrame::decode(&[4, 0]),
            Err(DatagramFrameError::Malformed("bytes after a refusal"))
        );
    }
}
