//! The command-line grammar of servalctl and the request each command sends.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand};
use sal::table::{Target, TargetKey};
use sal::{Locator, ServicePrefix};
use sal_control::Request;

/// Weight of a FORWARD target when none is given.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Priority of a target when none is given.
pub const DEFAULT_PRIORITY: u32 = 0;

const AFTER_HELP: &str = "\
The control socket is --control PATH, else $SERVAL_CONTROL, else /run/serval/sald.sock.
Service prefixes are hex digits, left-aligned, with an optional /LEN: beef/16, or one exact ID:
beef01 is beef0100...00. The original Serval's service 16385 (htonl(0x4001)) is 00004001 here.
Addresses (locators) are an IPv4 address (native carriage: 10.0.0.2) or udp:ADDR:PORT.

Examples:
  servalctl services
  servalctl service add beef/16 forward 10.0.0.2,weight=3,priority=2
  servalctl service add 00004001 forward 10.0.0.4
  servalctl service add beef/16 forward udp:10.0.0.3:54325
  servalctl service add 0/0 delay
  servalctl service del beef/16 10.0.0.2
  servalctl service drain beef/16 --wait 30
  servalctl resolve beef0102
  servalctl flows --json";

/// Operate a running sald: service rules, flows, interfaces, counters.
#[derive(Debug, Parser)]
#[command(
    name = "servalctl",
    version,
    after_help = AFTER_HELP,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// sald's control socket [default: $SERVAL_CONTROL, else /run/serval/sald.sock]
    #[arg(long, value_name = "PATH", global = true)]
    pub control: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// List the service table: one line per target of each rule, then
    /// whether broadcast discovery is on
    Services(ServicesArgs),
    /// Add or remove service rules, or drain a local service
    #[command(subcommand)]
    Service(ServiceCommand),
    /// List flows: stream flows and datagram sockets
    Flows(Listing),
    /// List the SAL interfaces and their locators
    Ifaces(Listing),
    /// Show sald's counters: sald-wide ones (links, descriptors, buffer
    /// budgets, drains), then the host's (host.*) and the service table's
    /// (table.*)
    Stats(Listing),
    /// Move a flow to another interface (RSYN), or with --all every flow of
    /// one interface to another
    #[command(
        override_usage = "servalctl migrate FLOWID IFACE\n       servalctl migrate --all FROM_IFACE TO_IFACE"
    )]
    Migrate(MigrateArgs),
    /// Show what sald answers a program with its own SAL host that asks
    /// how to reach SERVICE (the route it may use on its own, and for how
    /// long), as `sal-inproc` asks before caching a route
    Resolve(ResolveArgs),
}

/// `resolve SERVICE [--json]`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ResolveArgs {
    /// The service ID (hex digits, left-aligned)
    #[arg(value_name = "SERVICE")]
    pub service: sal::ServiceId,
    /// The options every listing has.
    #[command(flatten)]
    pub listing: Listing,
}

/// `migrate FLOWID IFACE` / `migrate --all FROM_IFACE TO_IFACE`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct MigrateArgs {
    /// Move every flow on FROM_IFACE to TO_IFACE
    #[arg(long, num_args = 2, value_names = ["FROM_IFACE", "TO_IFACE"], conflicts_with_all = ["flow", "iface"])]
    pub all: Option<Vec<String>>,
    /// The flow, as `servalctl flows` shows it (hex)
    #[arg(value_name = "FLOWID", required_unless_present = "all")]
    pub flow: Option<sal::FlowId>,
    /// The interface to move it to
    #[arg(value_name = "IFACE", required_unless_present = "all")]
    pub iface: Option<String>,
}

/// `services [--all] [--json]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Args)]
pub struct ServicesArgs {
    /// The options every listing has.
    #[command(flatten)]
    pub listing: Listing,
    /// Also list the own service IDs of unbound datagram sockets (ORIGIN
    /// ephemeral): where replies to them arrive, no service of this host
    #[arg(long)]
    pub all: bool,
}

/// Options of every listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Args)]
pub struct Listing {
    /// Print sald's answer as JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// `service add`, `service del` and `service drain`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum ServiceCommand {
    /// Add a target to the rule of PREFIX (created if needed)
    ///
    /// A target that is already there (same address, or drop, or delay) is
    /// updated in place: its weight and priority change, its counters stay.
    #[command(subcommand_value_name = "TARGET", subcommand_help_heading = "Targets")]
    Add {
        /// Service prefix: hex digits with an optional /LEN (beef/16), or one ID
        #[arg(value_name = "PREFIX")]
        prefix: ServicePrefix,
        /// What the rule does
        #[command(subcommand)]
        target: AddTarget,
    },
    /// Remove the whole rule of PREFIX, or only its TARGET
    Del {
        /// Service prefix of the rule
        #[arg(value_name = "PREFIX")]
        prefix: ServicePrefix,
        /// Remove only this target: a forward address (10.0.0.2,
        /// udp:10.0.0.2:54325), `drop` or `delay`
        #[arg(value_name = "ADDR")]
        target: Option<TargetSpec>,
    },
    /// Stop attracting new connections to the local listener of PREFIX,
    /// keeping the ones it has
    ///
    /// The service is unregistered (its DEMUX rule goes; servd withdraws it
    /// from the routers, so new connections go to other instances) while the
    /// listener stays open: connections it already admitted complete and the
    /// application still accepts them. Prints how many admitted connections
    /// the application has not accepted yet (held by sald, or waiting in its
    /// accept queue); once that is 0 the application has taken every one and
    /// can close the listener (e.g. nginx SIGQUIT) without resetting anyone.
    /// Exit status 1 if some are still not accepted after --wait.
    Drain {
        /// Service prefix a local application bound (exactly as bound)
        #[arg(value_name = "PREFIX")]
        prefix: ServicePrefix,
        /// Wait up to SECS (e.g. 30 or 2.5, at most 600) until the
        /// application has accepted every connection the listener admitted
        #[arg(long = "wait", value_name = "SECS", value_parser = parse_wait)]
        wait_ms: Option<u64>,
    },
}

/// The target of `service add`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum AddTarget {
    /// Forward to an address, weighted among targets of the same priority
    ///
    /// Among the forward targets of the highest priority, one is picked per
    /// connection in proportion to its weight (default 1; weight 0 marks a
    /// standby, used only when every weight is 0). Priority defaults to 0;
    /// larger wins.
    Forward {
        /// Address with optional weight and priority: 10.0.0.2,weight=3,priority=2
        #[arg(value_name = "ADDR[,weight=W][,priority=P]")]
        spec: ForwardSpec,
    },
    /// Drop packets for the prefix (connection attempts are refused)
    Drop {
        /// Priority of the target (larger wins)
        #[arg(long, value_name = "P", default_value_t = DEFAULT_PRIORITY)]
        priority: u32,
    },
    /// Hold packets for the prefix and ask the service controller
    Delay {
        /// Priority of the target (larger wins)
        #[arg(long, value_name = "P", default_value_t = DEFAULT_PRIORITY)]
        priority: u32,
    },
}

/// `ADDR[,weight=W][,priority=P]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardSpec {
    /// Where to forward.
    pub locator: Locator,
    /// Relative share among forward targets of the same priority.
    pub weight: u32,
    /// Larger wins.
    pub priority: u32,
}

/// Why a `ForwardSpec` or `TargetSpec` was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

fn parse_number(what: &str, text: &str) -> Result<u32, SpecError> {
    text.parse().map_err(|_| {
        SpecError(format!(
            "invalid {what} {text:?}: expected a whole number from 0 to {}",
            u32::MAX
        ))
    })
}

impl FromStr for ForwardSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<ForwardSpec, SpecError> {
        let mut parts = s.split(',');
        let address = parts.next().unwrap_or_default();
        if address.is_empty() {
            return Err(SpecError(
                "missing address: expected ADDR[,weight=W][,priority=P]".into(),
            ));
        }
        let locator: Locator = address.parse().map_err(|e| SpecError(format!("{e}")))?;
        let (mut weight, mut priority) = (None, None);
        for option in parts {
            let (slot, what, value) = match option.split_once('=') {
                Some(("weight", value)) => (&mut weight, "weight", value),
                Some(("priority", value)) => (&mut priority, "priority", value),
                _ => {
                    return Err(SpecError(format!(
                    "unknown option {option:?} after the address: expected weight=W or priority=P"
                )))
                }
            };
            if slot.is_some() {
                return Err(SpecError(format!("{what} given twice")));
            }
            *slot = Some(parse_number(what, value)?);
        }
        Ok(ForwardSpec {
            locator,
            weight: weight.unwrap_or(DEFAULT_WEIGHT),
            priority: priority.unwrap_or(DEFAULT_PRIORITY),
        })
    }
}

/// `--wait SECS` of `service drain`, in milliseconds.
fn parse_wait(text: &str) -> Result<u64, SpecError> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.0..=600.0).contains(&secs) => {
            Ok((secs * 1000.0).round() as u64)
        }
        _ => Err(SpecError(format!(
            "invalid wait {text:?}: expected seconds from 0 to 600"
        ))),
    }
}

/// The optional target of `service del`: an address, `drop` or `delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetSpec(pub TargetKey);

impl FromStr for TargetSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<TargetSpec, SpecError> {
        match s {
            "drop" => Ok(TargetSpec(TargetKey::Drop)),
            "delay" => Ok(TargetSpec(TargetKey::Delay)),
            _ => s
                .parse()
                .map(|locator| TargetSpec(TargetKey::Forward { locator }))
                .map_err(|_| {
                    SpecError(format!(
                        "invalid target {s:?}: expected an address (10.0.0.2 or udp:ADDR:PORT), drop or delay"
                    ))
                }),
        }
    }
}

impl Command {
    /// The request this command sends to sald.
    pub fn request(&self) -> Request {
        match self {
            Command::Services(_) => Request::ListRules,
            Command::Flows(_) => Request::ListFlows,
            Command::Ifaces(_) => Request::ListInterfaces,
            Command::Stats(_) => Request::Stats,
            Command::Resolve(args) => Request::Resolve {
                service: args.service,
            },
            Command::Migrate(args) => match (&args.all, args.flow, &args.iface) {
                (Some(all), _, _) => Request::MigrateAll {
                    from: all[0].clone(),
                    to: all[1].clone(),
                },
                (None, Some(flow), Some(iface)) => Request::Migrate {
                    flow,
                    iface: iface.clone(),
                },
                // clap enforces FLOWID and IFACE when --all is absent.
                _ => Request::Stats,
            },
            Command::Service(ServiceCommand::Add { prefix, target }) => {
                let (target, priority) = match *target {
                    AddTarget::Forward { spec } => (
                        Target::Forward {
                            locator: spec.locator,
                            weight: spec.weight,
                        },
                        spec.priority,
                    ),
                    AddTarget::Drop { priority } => (Target::Drop, priority),
                    AddTarget::Delay { priority } => (Target::Delay, priority),
                };
                Request::AddRule {
                    prefix: *prefix,
                    target,
                    priority,
                }
            }
            Command::Service(ServiceCommand::Del { prefix, target }) => Request::DelRule {
                prefix: *prefix,
                target: target.map(|t| t.0),
            },
            Command::Service(ServiceCommand::Drain { prefix, wait_ms }) => Request::Drain {
                prefix: *prefix,
                wait_ms: *wait_ms,
            },
        }
    }

    /// Whether the output should be JSON.
    pub fn json(&self) -> bool {
        match self {
            Command::Services(ServicesArgs { listing: l, .. })
            | Command::Flows(l)
            | Command::Ifaces(l)
            | Command::Stats(l)
            | Command::Resolve(ResolveArgs { listing: l, .. }) => l.json,
            Command::Service(_) | Command::Migrate(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("servalctl").chain(args.iter().copied()))
    }

    fn request(args: &[&str]) -> Request {
        parse(args).unwrap().command.request()
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn forward_with_weight_and_priority() {
        assert_eq!(
            request(&[
                "service",
                "add",
                "beef/16",
                "forward",
                "10.0.0.2,weight=3,priority=2"
            ]),
            Request::AddRule {
                prefix: "beef/16".parse().unwrap(),
                target: Target::Forward {
                    locator: "10.0.0.2".parse().unwrap(),
                    weight: 3,
                },
                priority: 2,
            }
        );
        assert_eq!(
            request(&[
                "service",
                "add",
                "4001",
                "forward",
                "udp:10.0.0.3:54325,priority=1"
            ]),
            Request::AddRule {
                prefix: "4001".parse().unwrap(),
                target: Target::Forward {
                    locator: "udp:10.0.0.3:54325".parse().unwrap(),
                    weight: DEFAULT_WEIGHT,
                },
                priority: 1,
            }
        );
    }

    #[test]
    fn drop_delay_and_del() {
        assert_eq!(
            request(&["service", "add", "0/0", "drop"]),
            Request::AddRule {
                prefix: ServicePrefix::DEFAULT,
                target: Target::Drop,
                priority: 0,
            }
        );
        assert_eq!(
            request(&["service", "add", "be/8", "delay", "--priority", "4"]),
            Request::AddRule {
                prefix: "be/8".parse().unwrap(),
                target: Target::Delay,
                priority: 4,
            }
        );
        assert_eq!(
            request(&["service", "del", "be/8"]),
            Request::DelRule {
                prefix: "be/8".parse().unwrap(),
                target: None,
            }
        );
        assert_eq!(
            request(&["service", "del", "be/8", "10.0.0.9"]),
            Request::DelRule {
                prefix: "be/8".parse().unwrap(),
                target: Some(TargetKey::Forward {
                    locator: "10.0.0.9".parse().unwrap()
                }),
            }
        );
        assert_eq!(
            request(&["service", "del", "be/8", "delay"]),
            Request::DelRule {
                prefix: "be/8".parse().unwrap(),
                target: Some(TargetKey::Delay),
            }
        );
    }

    #[test]
    fn listings_and_global_options() {
        let cli = parse(&["flows", "--json", "--control", "/tmp/x.sock"]).unwrap();
        assert_eq!(cli.command.request(), Request::ListFlows);
        assert!(cli.command.json());
        assert_eq!(cli.control, Some(PathBuf::from("/tmp/x.sock")));
        let cli = parse(&["--control", "/tmp/y.sock", "services"]).unwrap();
        assert!(!cli.command.json());
        assert_eq!(cli.control, Some(PathBuf::from("/tmp/y.sock")));
        assert_eq!(request(&["ifaces"]), Request::ListInterfaces);
        assert_eq!(request(&["stats", "--json"]), Request::Stats);
    }

    #[test]
    fn bad_specs_are_rejected_with_reasons() {
        let cases = [
            ("", "missing address"),
            ("10.0.0", "invalid locator"),
            ("10.0.0.2,weight=x", "invalid weight \"x\""),
            ("10.0.0.2,weight=-1", "invalid weight"),
            ("10.0.0.2,priority=99999999999", "invalid priority"),
            ("10.0.0.2,colour=red", "unknown option \"colour=red\""),
            ("10.0.0.2,weight=1,weight=2", "weight given twice"),
            ("10.0.0.2,", "unknown option \"\""),
        ];
        for (spec, message) in cases {
            let error = spec.parse::<ForwardSpec>().unwrap_err().to_string();
            assert!(error.contains(message), "{spec:?}: {error}");
        }
        assert!("nope".parse::<TargetSpec>().is_err());
        for args in [
            &["service", "add", "xyz", "drop"][..],
            &["service", "add", "beef/4", "drop"],
            &["service", "add", "beef/16", "forward"],
            &["service", "add", "beef/16", "teleport"],
            &["service", "add", "beef/16"],
            &["service", "del", "beef/16", "10.0.0"],
            &["services", "extra"],
            &["migrate", "0", "eth0"],
            &["migrate", "1"],
            &["migrate", "--all", "eth0"],
            &["migrate", "--all", "eth0", "eth1", "1", "eth2"],
            &[],
        ] {
            assert!(parse(args).is_err(), "{args:?} parsed");
        }
    }

    #[test]
    fn drain_commands() {
        assert_eq!(
            request(&["service", "drain", "80a0"]),
            Request::Drain {
                prefix: "80a0".parse().unwrap(),
                wait_ms: None,
            }
        );
        assert_eq!(
            request(&["service", "drain", "be/8", "--wait", "2.5"]),
            Request::Drain {
                prefix: "be/8".parse().unwrap(),
                wait_ms: Some(2500),
            }
        );
        assert!(parse(&["service", "drain"]).is_err());
        for wait in ["soon", "-1", "601", "NaN"] {
            assert!(parse(&["service", "drain", "be/8", "--wait", wait]).is_err());
        }
    }

    #[test]
    fn migrate_commands() {
        assert_eq!(
            request(&["migrate", "1a2b", "wlan0"]),
            Request::Migrate {
                flow: sal::FlowId::new(0x1a2b).unwrap(),
                iface: "wlan0".into()
            }
        );
        assert_eq!(
            request(&["migrate", "--all", "wlan0", "eth1"]),
            Request::MigrateAll {
                from: "wlan0".into(),
                to: "eth1".into()
            }
        );
    }
}
