//! servalctl: the operator CLI over sald's control socket.
//!
//! [`main`] is the whole program; the `servalctl` binary only calls it. Every
//! failure ends as one line `servalctl: MESSAGE` on stderr: exit status 2 for
//! command-line mistakes (clap's usage errors, bad prefixes and addresses),
//! 1 for everything else (sald not running, permission denied, unknown rule).

pub mod cli;
pub mod render;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use sal::table::TargetKey;
use sal_control::{control_path, Request, Response};
use serval_cli::one_line;
use socket_shim::ControlClient;

pub use cli::{Cli, Command};

/// Name servalctl introduces itself with in `Hello`.
const CLIENT_NAME: &str = "servalctl";

/// Runs servalctl with the process's arguments; returns the exit status.
pub fn main() -> ExitCode {
    let cli: Cli = serval_cli::parse("servalctl");
    match run(&cli, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("servalctl: {}", one_line(&format!("{error:#}")));
            ExitCode::from(1)
        }
    }
}

/// The control socket path: `--control`, else `SERVAL_CONTROL`, else the default.
pub fn control_socket(cli: &Cli) -> PathBuf {
    cli.control.clone().unwrap_or_else(control_path)
}

/// Executes one command, writing its output to `out`.
pub fn run(cli: &Cli, out: &mut impl Write) -> anyhow::Result<()> {
    let mut control = ControlClient::connect_as(control_socket(cli), CLIENT_NAME)?;
    let request = cli.command.request();
    let reply = control
        .request(&request)
        .with_context(|| what_failed(&request))?;
    let json = cli.command.json();
    let text = match (&cli.command, reply.response) {
        (Command::Service(_) | Command::Migrate(_), Response::Ok) => return Ok(()),
        (
            Command::Service(cli::ServiceCommand::Drain { prefix, wait_ms }),
            Response::Drained { pending },
        ) => {
            if pending > 0 && wait_ms.is_some() {
                return Err(anyhow!(
                    "{prefix} drained, but {pending} admitted connections were still not accepted when the wait ran out"
                ));
            }
            format!("{prefix} drained: {pending} admitted connections not accepted yet\n")
        }
        (
            Command::Services(args),
            Response::Rules {
                mut rules,
                broadcast_discovery,
            },
        ) => {
            rules.sort_by_key(|rule| rule.prefix);
            if !args.all {
                render::hide_ephemeral(&mut rules);
            }
            if json {
                to_json(&rules)?
            } else {
                render::services(&rules) + &render::discovery(broadcast_discovery)
            }
        }
        (Command::Flows(_), Response::Flows { mut flows }) => {
            flows.sort_by_key(|flow| flow.flow);
            if json {
                to_json(&flows)?
            } else {
                render::flows(&flows)
            }
        }
        (Command::Ifaces(_), Response::Interfaces { interfaces, .. }) => {
            if json {
                to_json(&interfaces)?
            } else {
                render::interfaces(&interfaces)
            }
        }
        (Command::Stats(_), Response::Stats { stats }) => {
            if json {
                to_json(&stats)?
            } else {
                render::stats(&stats)
            }
        }
        (Command::Resolve(args), Response::Resolved { route, lifetime_ms }) => {
            if json {
                to_json(&serde_json::json!({ "route": route, "lifetime_ms": lifetime_ms }))?
            } else {
                render::resolution(&args.service, route.as_ref(), lifetime_ms)
            }
        }
        (_, other) => {
            return Err(anyhow!(
                "sald gave an unexpected answer: {}",
                serde_json::to_string(&other).unwrap_or_else(|_| format!("{other:?}"))
            ))
        }
    };
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the output"),
    }
}

/// Pretty JSON with a final newline.
fn to_json(value: &impl serde::Serialize) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(text)
}

/// What a failed request was trying to do, for its error line.
fn what_failed(request: &Request) -> String {
    match request {
        Request::AddRule { prefix, .. } => format!("cannot add to the rule of {prefix}"),
        Request::DelRule {
            prefix,
            target: None,
        } => format!("cannot remove the rule of {prefix}"),
        Request::DelRule {
            prefix,
            target: Some(target),
        } => {
            let target = match target {
                TargetKey::Forward { locator } => format!("forward {locator}"),
                TargetKey::Demux { listener } => format!("demux listener {}", listener.0),
                TargetKey::Delay => "delay".into(),
                TargetKey::Drop => "drop".into(),
            };
            format!("cannot remove {target} from the rule of {prefix}")
        }
        Request::Drain { prefix, .. } => format!("cannot drain {prefix}"),
        Request::ListRules => "cannot list the service table".into(),
        Request::ListFlows => "cannot list flows".into(),
        Request::ListInterfaces => "cannot list interfaces".into(),
        Request::Stats => "cannot read the counters".into(),
        _ => "request failed".into(),
    }
}
