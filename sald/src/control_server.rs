//! The control socket: one task per client connection.
//!
//! A client speaks the protocol of [`sal_control`]: `Hello` first, then one
//! request at a time. Whatever a client does (garbage, oversized frames,
//! vanishing mid-request) costs only that client its connection and the
//! listeners and datagram sockets it created; the daemon keeps running.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{
    sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};
use sal::proto::{ConnectError, HostError};
use sal::table::{ListenerId, RuleOrigin, TableError, TargetKey};
use sal::wire::TransportProtocol;
use sal::{FlowId, ServicePrefix};
use sal_control::{
    decode_body, encode_frame, frame_len, ErrorKind, Request, Response, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};

use crate::config::AllowConfig;
use crate::daemon::Shared;
use crate::pump;

/// Who installed which rule target (`AddRuleWithOrigin`), for listings.
///
/// Kept beside the core's table rather than in it so that rule changes keep
/// going through the core's own calls; only non-static origins are stored.
/// An entry whose target has since gone (removed by the core itself) is
/// harmless: listings only annotate targets that exist, and re-adding the
/// target by any request overwrites it.
static ORIGINS: std::sync::Mutex<Option<HashMap<(ServicePrefix, TargetKey), RuleOrigin>>> =
    std::sync::Mutex::new(None);

fn set_origin(prefix: ServicePrefix, key: TargetKey, origin: RuleOrigin) {
    let mut origins = ORIGINS.lock().unwrap_or_else(|e| e.into_inner());
    let origins = origins.get_or_insert_with(HashMap::new);
    if origin == RuleOrigin::Static {
        origins.remove(&(prefix, key));
    } else {
        origins.insert((prefix, key), origin);
    }
}

fn forget_origins(prefix: &ServicePrefix, key: Option<&TargetKey>) {
    let mut origins = ORIGINS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(origins) = origins.as_mut() {
        match key {
            Some(key) => {
                origins.remove(&(*prefix, *key));
            }
            None => origins.retain(|(p, _), _| p != prefix),
        }
    }
}

fn annotate_origins(rules: &mut [sal::table::Rule]) {
    let origins = ORIGINS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(origins) = origins.as_ref() else {
        return;
    };
    for rule in rules {
        let keys: Vec<TargetKey> = rule.targets().iter().map(|e| e.target.key()).collect();
        for key in keys {
            if let Some(origin) = origins.get(&(rule.prefix, key)) {
                rule.set_origin(&key, origin.clone());
            }
        }
    }
}

/// Policy and context the control server needs.
pub struct ControlContext {
    pub shared: Arc<Shared>,
    pub allow: Vec<AllowConfig>,
    pub started: std::time::Instant,
    /// The daemon's own user: may change rules, like root.
    pub owner_uid: u32,
}

/// Accepts control clients forever.
pub async fn serve(listener: UnixListener, context: Arc<ControlContext>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let context = context.clone();
                tokio::spawn(async move {
                    context.shared.lock().control_clients += 1;
                    let mut client = Client::new(context.clone(), stream);
                    if let Err(error) = client.serve().await {
                        tracing::debug!(%error, "control client ended");
                    }
                    client.cleanup();
                    context.shared.lock().control_clients -= 1;
                });
            }
            Err(error) => {
                tracing::warn!(%error, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Binds the control socket, replacing a stale socket file but refusing to
/// steal one that a running daemon answers on.
pub async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another sald is already serving the control socket {}",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .map_err(|e| anyhow::anyhow!("cannot remove stale {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot bind control socket {}: {e}", path.display()))?;
    // Anyone may connect: what a client may do is decided per request from
    // its peer credentials (see `Client::privileged` and `may_bind`).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| anyhow::anyhow!("cannot open up {}: {e}", path.display()))?;
    Ok(listener)
}

struct Client {
    context: Arc<ControlContext>,
    stream: UnixStream,
    uid: u32,
    listeners: Vec<ListenerId>,
}

/// What a request produced: a response and maybe a socket to hand over.
type Reply = (Response, Option<OwnedFd>);

fn error_reply(kind: ErrorKind, message: impl Into<String>) -> Reply {
    (Response::error(kind, message), None)
}

fn host_error(error: HostError) -> Reply {
    let kind = match &error {
        HostError::Connect(ConnectError::NoRoute) => ErrorKind::NoRoute,
        HostError::Connect(ConnectError::Refused) => ErrorKind::Refused,
        HostError::Connect(ConnectError::TimedOut) => ErrorKind::TimedOut,
        HostError::AddressInUse(_) => ErrorKind::AddressInUse,
        HostError::NoSuchFlow(_) | HostError::NoSuchListener(_) | HostError::NoSuchInterface(_) => {
            ErrorKind::NotFound
        }
        HostError::WouldBlock => ErrorKind::WouldBlock,
        HostError::TooManyFlows(_) => ErrorKind::Exhausted,
        _ => ErrorKind::InvalidRequest,
    };
    error_reply(kind, error.to_string())
}

fn connect_error(error: ConnectError) -> Reply {
    host_error(HostError::Connect(error))
}

/// A connected pair of sockets of `kind`: (ours, the app's).
fn pair(kind: SockType) -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        kind,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

impl Client {
    fn new(context: Arc<ControlContext>, stream: UnixStream) -> Client {
        let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
        Client {
            context,
            stream,
            uid,
            listeners: Vec::new(),
        }
    }

    fn privileged(&self) -> bool {
        self.uid == 0 || self.uid == self.context.owner_uid
    }

    fn may_bind(&self, prefix: &ServicePrefix) -> bool {
        self.privileged()
            || self.context.allow.is_empty()
            || self
                .context
                .allow
                .iter()
                .any(|a| a.uid == self.uid && a.prefix.covers(prefix))
    }

    /// Reads one request; `Ok(None)` on a clean end of connection.
    async fn read_request(&mut self) -> anyhow::Result<Option<Request>> {
        let mut prefix = [0u8; 4];
        match self.stream.read_exact(&mut prefix).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let len = frame_len(prefix)?;
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).await?;
        Ok(Some(decode_body(&body)?))
    }

    async fn write_response(
        &mut self,
        response: &Response,
        fd: Option<OwnedFd>,
    ) -> anyhow::Result<()> {
        let frame = encode_frame(response)?;
        let Some(fd) = fd else {
            self.stream.write_all(&frame).await?;
            return Ok(());
        };
        // The fd rides on the first byte; the rest of the frame follows plainly.
        let sent = loop {
            self.stream.writable().await?;
            let result = self.stream.try_io(Interest::WRITABLE, || {
                let fds = [fd.as_raw_fd()];
                let cmsg = [ControlMessage::ScmRights(&fds)];
                sendmsg::<()>(
                    self.stream.as_raw_fd(),
                    &[IoSlice::new(&frame)],
                    &cmsg,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            });
            match result {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        };
        self.stream.write_all(&frame[sent..]).await?;
        Ok(())
    }

    async fn serve(&mut self) -> anyhow::Result<()> {
        match self.read_request().await {
            Ok(Some(Request::Hello { version, .. })) if version == PROTOCOL_VERSION => {
                let hello = Response::Hello {
                    version: PROTOCOL_VERSION,
                    server: format!("sald {}", env!("CARGO_PKG_VERSION")),
                };
                self.write_response(&hello, None).await?;
            }
            Ok(Some(Request::Hello { version, .. })) => {
                let reply = Response::error(
                    ErrorKind::VersionMismatch,
                    format!(
                        "protocol version {version} not supported; sald speaks {PROTOCOL_VERSION}"
                    ),
                );
                self.write_response(&reply, None).await?;
                return Ok(());
            }
            Ok(Some(_)) => {
                let reply =
                    Response::error(ErrorKind::InvalidRequest, "the first request must be hello");
                self.write_response(&reply, None).await?;
                return Ok(());
            }
            Ok(None) => return Ok(()),
            Err(error) => {
                let reply = Response::error(ErrorKind::InvalidRequest, error.to_string());
                let _ = self.write_response(&reply, None).await;
                return Err(error);
            }
        }
        loop {
            let request = match self.read_request().await {
                Ok(Some(request)) => request,
                Ok(None) => return Ok(()),
                Err(error) => {
                    // Garbage: say why, then hang up on this client only.
                    let reply = Response::error(ErrorKind::InvalidRequest, error.to_string());
                    let _ = self.write_response(&reply, None).await;
                    return Err(error);
                }
            };
            if request == Request::Subscribe {
                return self.stream_events().await;
            }
            let (response, fd) = self.handle(request).await;
            self.write_response(&response, fd).await?;
        }
    }

    async fn stream_events(&mut self) -> anyhow::Result<()> {
        let mut events = self.context.shared.lock().subscribe();
        self.write_response(&Response::Ok, None).await?;
        let mut probe = [0u8; 1];
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.write_response(&Response::Event { event }, None).await?,
                    None => return Ok(()),
                },
                read = self.stream.read(&mut probe) => {
                    // Subscribers only listen; anything read (or EOF) ends it.
                    let _ = read;
                    return Ok(());
                }
            }
        }
    }

    async fn handle(&mut self, request: Request) -> Reply {
        let shared = self.context.shared.clone();
        match request {
            Request::Hello { .. } | Request::Subscribe => {
                error_reply(ErrorKind::InvalidRequest, "unexpected request")
            }
            // Not served yet: clients (servd) fall back to one request per rule.
            Request::ApplyRules { .. } => {
                error_reply(ErrorKind::InvalidRequest, "apply_rules is not supported")
            }
            Request::Listen {
                prefix,
                protocol,
                backlog,
            } => {
                if !self.may_bind(&prefix) {
                    return error_reply(
                        ErrorKind::PermissionDenied,
                        format!("uid {} may not bind {prefix}", self.uid),
                    );
                }
                let mut core = shared.lock();
                let listener =
                    match core
                        .host
                        .listen(prefix, protocol, backlog.clamp(1, 65535) as usize)
                    {
                        Ok(listener) => listener,
                        Err(error) => return host_error(error),
                    };
                self.listeners.push(listener);
                let socket = core.host.listener_socket(listener);
                let fd = match socket {
                    Some(socket) => match pair(SockType::SeqPacket) {
                        Ok((ours, theirs)) => {
                            let signal = core.adopt(socket);
                            tokio::spawn(pump::datagram_socket(
                                shared.clone(),
                                socket,
                                signal,
                                ours,
                                false,
                            ));
                            Some(theirs)
                        }
                        Err(error) => return error_reply(ErrorKind::Internal, error.to_string()),
                    },
                    None => None,
                };
                core.run();
                tracing::info!(%prefix, ?protocol, uid = self.uid, "service registered");
                (Response::Listening { listener, socket }, fd)
            }
            Request::Accept {
                listener,
                nonblocking,
            } => {
                if !self.listeners.contains(&listener) {
                    return error_reply(
                        ErrorKind::NotFound,
                        format!("no listener {listener:?} on this connection"),
                    );
                }
                let flow = if nonblocking {
                    match shared.lock().host.accept(listener) {
                        Ok(flow) => flow,
                        Err(error) => return host_error(error),
                    }
                } else {
                    let waiter = shared.lock().wait_accept(listener);
                    let mut probe = [0u8; 1];
                    let mut waiter = waiter;
                    tokio::select! {
                        flow = &mut waiter => match flow {
                            Ok(flow) => flow,
                            Err(_) => return error_reply(ErrorKind::NotFound, "listener closed"),
                        },
                        _ = self.stream.read(&mut probe) => {
                            // The client hung up (or broke protocol) while waiting.
                            drop(waiter);
                            shared.lock().prune_accepts(listener);
                            return error_reply(ErrorKind::InvalidRequest, "client went away");
                        }
                    }
                };
                self.hand_over(flow, |flow| Response::Accepted { flow })
            }
            Request::CloseListener { listener } => {
                if !self.listeners.contains(&listener) {
                    return error_reply(
                        ErrorKind::NotFound,
                        format!("no listener {listener:?} on this connection"),
                    );
                }
                self.listeners.retain(|l| *l != listener);
                let mut core = shared.lock();
                let result = core.host.close_listener(listener);
                core.run();
                match result {
                    Ok(()) => (Response::Ok, None),
                    Err(error) => host_error(error),
                }
            }
            Request::Connect {
                service,
                protocol,
                timeout_ms,
            } => {
                let waiter = {
                    let mut core = shared.lock();
                    let flow = match core.host.connect(service, protocol) {
                        Ok(flow) => flow,
                        Err(error) => return host_error(error),
                    };
                    let waiter = core.wait_connect(flow);
                    core.run();
                    (flow, waiter)
                };
                let (flow, waiter) = waiter;
                let outcome = match timeout_ms {
                    Some(ms) => match tokio::time::timeout(Duration::from_millis(ms), waiter).await
                    {
                        Ok(outcome) => outcome,
                        Err(_) => {
                            let mut core = shared.lock();
                            let _ = core.host.abort(flow);
                            let _ = core.host.close(flow);
                            core.run();
                            return connect_error(ConnectError::TimedOut);
                        }
                    },
                    None => waiter.await,
                };
                match outcome {
                    Ok(Ok(_)) => self.hand_over(flow, |flow| Response::Connected { flow }),
                    Ok(Err(error)) => connect_error(error),
                    Err(_) => connect_error(ConnectError::Refused),
                }
            }
            Request::OpenDatagram => {
                let mut core = shared.lock();
                let socket = match core.host.open_datagram() {
                    Ok(socket) => socket,
                    Err(error) => return host_error(error),
                };
                match pair(SockType::SeqPacket) {
                    Ok((ours, theirs)) => {
                        let signal = core.adopt(socket);
                        tokio::spawn(pump::datagram_socket(
                            shared.clone(),
                            socket,
                            signal,
                            ours,
                            true,
                        ));
                        (Response::DatagramOpened { socket }, Some(theirs))
                    }
                    Err(error) => {
                        let _ = core.host.close_datagram(socket);
                        error_reply(ErrorKind::Internal, error.to_string())
                    }
                }
            }
            Request::AddRule {
                prefix,
                target,
                priority,
            } => self.add_rule(prefix, target, priority, RuleOrigin::Static),
            Request::AddRuleWithOrigin {
                prefix,
                target,
                priority,
                origin,
            } => self.add_rule(prefix, target, priority, origin),
            Request::DelRule { prefix, target } => {
                if !self.privileged() {
                    return error_reply(ErrorKind::PermissionDenied, "only root may change rules");
                }
                let mut core = shared.lock();
                let result = match target {
                    Some(key) => core.host.remove_rule_target(&prefix, &key),
                    None => core.host.remove_rule(&prefix),
                };
                forget_origins(&prefix, target.as_ref());
                core.run();
                match result {
                    Ok(()) => (Response::Ok, None),
                    Err(error @ (TableError::NoSuchRule(_) | TableError::NoSuchTarget(..))) => {
                        error_reply(ErrorKind::NotFound, error.to_string())
                    }
                }
            }
            Request::ListRules => {
                let core = shared.lock();
                let mut rules: Vec<_> = core.host.table().rules().cloned().collect();
                rules.sort_by_key(|rule| rule.prefix);
                annotate_origins(&mut rules);
                (Response::Rules { rules }, None)
            }
            Request::ListFlows => {
                let mut core = shared.lock();
                // Bring the host's clock (and the flows' ages) up to now.
                core.run();
                let mut flows = core.host.flows();
                drop(core);
                flows.sort_by_key(|f| f.flow);
                (Response::Flows { flows }, None)
            }
            Request::ListInterfaces => {
                let interfaces = shared.lock().host.interfaces().to_vec();
                (Response::Interfaces { interfaces }, None)
            }
            Request::Stats => {
                let stats = shared.lock().stats(self.context.started.elapsed());
                (Response::Stats { stats }, None)
            }
            Request::Migrate { flow, iface } => {
                if !self.privileged() {
                    return error_reply(ErrorKind::PermissionDenied, "only root may migrate flows");
                }
                let mut core = shared.lock();
                let result = core.host.migrate(flow, &iface);
                core.run();
                match result {
                    Ok(()) => (Response::Ok, None),
                    Err(error) => host_error(error),
                }
            }
            Request::MigrateAll { from, to } => {
                if !self.privileged() {
                    return error_reply(ErrorKind::PermissionDenied, "only root may migrate flows");
                }
                let mut core = shared.lock();
                let on_from: Vec<_> = core
                    .host
                    .flows()
                    .into_iter()
                    .filter(|f| f.interface.as_deref() == Some(from.as_str()))
                    .map(|f| f.flow)
                    .collect();
                if !core.host.interfaces().iter().any(|i| i.name == from) {
                    return error_reply(ErrorKind::NotFound, format!("no interface {from}"));
                }
                let mut moved = 0;
                let mut failure = None;
                for flow in on_from {
                    match core.host.migrate(flow, &to) {
                        Ok(()) => moved += 1,
                        Err(HostError::NotConnected) => {}
                        Err(error) => {
                            failure = Some(error);
                            break;
                        }
                    }
                }
                core.run();
                match failure {
                    Some(error) => host_error(error),
                    None => {
                        tracing::info!(%from, %to, moved, "flows migrated");
                        (Response::Ok, None)
                    }
                }
            }
        }
    }

    /// Adds a rule target on behalf of an operator (`Static`) or servd.
    fn add_rule(
        &self,
        prefix: ServicePrefix,
        target: sal::table::Target,
        priority: u32,
        origin: RuleOrigin,
    ) -> Reply {
        if !self.privileged() {
            return error_reply(ErrorKind::PermissionDenied, "only root may change rules");
        }
        let mut core = self.context.shared.lock();
        core.host.add_rule(prefix, target, priority);
        core.run();
        // servd refreshes its rules often: only operators' changes are news.
        if origin == RuleOrigin::Static {
            tracing::info!(%prefix, ?target, priority, "rule added");
        } else {
            tracing::debug!(%prefix, ?target, priority, ?origin, "rule added");
        }
        set_origin(prefix, target.key(), origin);
        (Response::Ok, None)
    }

    /// Gives an established flow to the client: a socketpair whose other end
    /// is served by a pump task.
    fn hand_over(
        &mut self,
        flow: FlowId,
        respond: impl FnOnce(sal::proto::FlowInfo) -> Response,
    ) -> Reply {
        let shared = self.context.shared.clone();
        let mut core = shared.lock();
        let Some(info) = core.host.flow(flow) else {
            return error_reply(
                ErrorKind::Refused,
                "the flow closed before it could be handed over",
            );
        };
        let kind = match info.protocol {
            TransportProtocol::Stream => SockType::Stream,
            TransportProtocol::Datagram => SockType::SeqPacket,
        };
        let (ours, theirs) = match pair(kind) {
            Ok(pair) => pair,
            Err(error) => {
                let _ = core.host.abort(flow);
                let _ = core.host.close(flow);
                core.run();
                return error_reply(ErrorKind::Internal, error.to_string());
            }
        };
        let signal = core.adopt(flow);
        match info.protocol {
            TransportProtocol::Stream => {
                let std_stream = std::os::unix::net::UnixStream::from(ours);
                let stream = std_stream
                    .set_nonblocking(true)
                    .and_then(|()| UnixStream::from_std(std_stream));
                match stream {
                    Ok(stream) => {
                        tokio::spawn(pump::stream(shared.clone(), flow, signal, stream));
                    }
                    Err(error) => return error_reply(ErrorKind::Internal, error.to_string()),
                }
            }
            TransportProtocol::Datagram => {
                tokio::spawn(pump::datagram_flow(shared.clone(), flow, signal, ours));
            }
        }
        (respond(info), Some(theirs))
    }

    /// Unbinds everything this client bound.
    fn cleanup(&mut self) {
        if self.listeners.is_empty() {
            return;
        }
        let mut core = self.context.shared.lock();
        for listener in self.listeners.drain(..) {
            let _ = core.host.close_listener(listener);
        }
        core.run();
    }
}
