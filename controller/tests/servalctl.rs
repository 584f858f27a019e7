//! servalctl end to end: the built binary against a fake sald on a temporary
//! control socket, or against no sald at all.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::thread;

use sal::proto::LocalInterface;
use sal::table::{ListenerId, Rule, RuleOrigin, ServiceTable, Target, TargetKey};
use sal_control::{
    decode_body, encode_frame, frame_len, ErrorKind, NextHop, Request, ResolvedRoute, Response,
    StatsReport, PROTOCOL_VERSION,
};

/// A fake sald answering `Hello` itself and everything else with `answer`.
struct FakeSald {
    path: PathBuf,
    requests: Arc<Mutex<Vec<Request>>>,
    _dir: tempfile::TempDir,
}

impl FakeSald {
    fn start(answer: impl Fn(&Request) -> Response + Send + Sync + 'static) -> FakeSald {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sald.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let answer = Arc::new(answer);
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (seen, answer) = (seen.clone(), answer.clone());
                thread::spawn(move || serve(conn, &seen, &*answer));
            }
        });
        FakeSald {
            path,
            requests,
            _dir: dir,
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(mut conn: UnixStream, seen: &Mutex<Vec<Request>>, answer: &dyn Fn(&Request) -> Response) {
    loop {
        let mut prefix = [0u8; 4];
        if conn.read_exact(&mut prefix).is_err() {
            return;
        }
        let mut body = vec![0u8; frame_len(prefix).unwrap()];
        conn.read_exact(&mut body).unwrap();
        let request: Request = decode_body(&body).unwrap();
        seen.lock().unwrap().push(request.clone());
        let response = match request {
            Request::Hello { .. } => Response::Hello {
                version: PROTOCOL_VERSION,
                server: "fake-sald".into(),
            },
            _ => answer(&request),
        };
        conn.write_all(&encode_frame(&response).unwrap()).unwrap();
    }
}

fn servalctl(control: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_servalctl"))
        .arg("--control")
        .arg(control)
        .args(args)
        .env_remove("SERVAL_CONTROL")
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Exactly one line `servalctl: ...` on stderr.
fn assert_one_error_line(output: &Output, code: i32) -> String {
    assert_eq!(output.status.code(), Some(code), "{output:?}");
    let text = stderr(output);
    assert!(text.starts_with("servalctl: "), "{text:?}");
    assert_eq!(text.lines().count(), 1, "{text:?}");
    assert!(text.ends_with('\n'));
    text
}

fn sample_rules() -> Vec<Rule> {
    let mut table = ServiceTable::new();
    table.add(
        "beef/16".parse().unwrap(),
        Target::Forward {
            locator: "10.0.0.2".parse().unwrap(),
            weight: 3,
        },
        2,
    );
    table.add(
        "4001".parse().unwrap(),
        Target::Demux {
            listener: ListenerId(7),
        },
        0,
    );
    table.add("0/0".parse().unwrap(), Target::Delay, 0);
    table.rules().cloned().collect()
}

#[test]
fn add_forward_sends_the_right_request() {
    let sald = FakeSald::start(|_| Response::Ok);
    let output = servalctl(
        &sald.path,
        &[
            "service",
            "add",
            "beef/16",
            "forward",
            "10.0.0.2,weight=3,priority=2",
        ],
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output), "");
    let requests = sald.requests();
    assert!(matches!(&requests[0], Request::Hello { version, client }
        if *version == PROTOCOL_VERSION && client == "servalctl"));
    assert_eq!(
        requests[1],
        Request::AddRule {
            prefix: "beef/16".parse().unwrap(),
            target: Target::Forward {
                locator: "10.0.0.2".parse().unwrap(),
                weight: 3
            },
            priority: 2
        }
    );

    let output = servalctl(
        &sald.path,
        &["service", "del", "beef/16", "udp:10.0.0.2:54325"],
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        sald.requests()[3],
        Request::DelRule {
            prefix: "beef/16".parse().unwrap(),
            target: Some(TargetKey::Forward {
                locator: "udp:10.0.0.2:54325".parse().unwrap()
            })
        }
    );
}

/// The sample rules and an unbound datagram socket's own service ID.
fn rules_with_an_ephemeral_id() -> Vec<Rule> {
    let mut rules = sample_rules();
    let mut table = ServiceTable::new();
    let ephemeral = Target::Demux {
        listener: ListenerId(8),
    };
    table.add("83e6c0fd".parse().unwrap(), ephemeral, 0);
    let mut rule = table.rules().next().unwrap().clone();
    rule.set_origin(&ephemeral.key(), RuleOrigin::Ephemeral);
    rules.push(rule);
    rules
}

#[test]
fn services_prints_a_sorted_table_or_json() {
    let sald = FakeSald::start(|request| match request {
        Request::ListRules => Response::Rules {
            rules: rules_with_an_ephemeral_id(),
            broadcast_discovery: false,
        },
        _ => Response::error(ErrorKind::InvalidRequest, "unexpected"),
    });
    let output = servalctl(&sald.path, &["services"]);
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(
        lines[4],
        "broadcast discovery: off (no matching rule: no route)"
    );
    assert!(lines[0].starts_with("PREFIX"));
    assert!(lines[1].starts_with("0/0 ") && lines[1].contains("delay"));
    assert!(lines[2].starts_with("4001/256") && lines[2].contains("demux listener 7"));
    assert!(lines[3].starts_with("beef/16") && lines[3].contains("forward 10.0.0.2"));
    // Columns line up: every row is as wide as the header's last column ends.
    let target_column = lines[0].find("TARGET").unwrap();
    assert!(lines[1..4]
        .iter()
        .all(|l| l[target_column - 2..target_column] == *"  "));

    let output = servalctl(&sald.path, &["services", "--json"]);
    assert!(output.status.success(), "{output:?}");
    let rules: Vec<Rule> = serde_json::from_slice(&output.stdout).unwrap();
    let mut expected = sample_rules();
    expected.sort_by_key(|rule| rule.prefix);
    assert_eq!(rules, expected, "the ephemeral ID hidden");

    // --all shows the unbound socket's own ID too.
    let output = servalctl(&sald.path, &["services", "--all"]);
    let text = stdout(&output);
    let ephemeral = text
        .lines()
        .find(|l| l.starts_with("83e6c0fd/256"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(ephemeral.contains("demux listener 8") && ephemeral.contains("ephemeral"));
    let output = servalctl(&sald.path, &["services", "--all", "--json"]);
    let rules: Vec<Rule> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rules.len(), 4);
}

#[test]
fn services_says_when_broadcast_discovery_is_on() {
    let sald = FakeSald::start(|request| match request {
        Request::ListRules => Response::Rules {
            rules: vec![],
            broadcast_discovery: true,
        },
        _ => Response::error(ErrorKind::InvalidRequest, "unexpected"),
    });
    let text = stdout(&servalctl(&sald.path, &["services"]));
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.starts_with("broadcast discovery: on")),
        "{text}"
    );
}

#[test]
fn other_listings_print_their_payload() {
    let sald = FakeSald::start(|request| match request {
        Request::ListInterfaces => Response::Interfaces {
            interfaces: vec![LocalInterface {
                name: "eth0".into(),
                locator: "10.0.0.1".parse().unwrap(),
                prefix_len: 24,
                up: true,
            }],
            relays: false,
        },
        Request::ListFlows => Response::Flows { flows: vec![] },
        Request::Stats => Response::Stats {
            stats: Box::new(StatsReport {
                rules: 4,
                ..Default::default()
            }),
        },
        _ => Response::Ok,
    });
    let output = servalctl(&sald.path, &["ifaces"]);
    assert!(
        stdout(&output).contains("eth0  10.0.0.1  10.0.0.0/24"),
        "{output:?}"
    );
    let output = servalctl(&sald.path, &["flows"]);
    assert!(stdout(&output).starts_with("FLOW  SERVICE"), "{output:?}");
    let output = servalctl(&sald.path, &["flows", "--json"]);
    assert_eq!(stdout(&output).trim(), "[]");
    let output = servalctl(&sald.path, &["stats", "--json"]);
    let stats: StatsReport = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stats.rules, 4);
    let output = servalctl(&sald.path, &["stats"]);
    assert!(stdout(&output)
        .lines()
        .any(|l| l.starts_with("rules ") && l.ends_with(" 4")));
}

#[test]
fn resolve_shows_what_a_program_would_cache() {
    let routed: sal::ServiceId = "c0ec7001".parse().unwrap();
    let sald = FakeSald::start(move |request| match request {
        Request::Resolve { service } if *service == routed => Response::Resolved {
            route: Some(ResolvedRoute {
                matched: "c0ec/16".parse().unwrap(),
                prefix: sal::ServicePrefix::exact(routed),
                next_hops: vec![
                    NextHop {
                        locator: "udp:10.0.0.2:7077".parse().unwrap(),
                        weight: 3,
                    },
                    NextHop {
                        locator: "10.0.0.3".parse().unwrap(),
                        weight: 0,
                    },
                ],
            }),
            lifetime_ms: 5000,
        },
        Request::Resolve { .. } => Response::Resolved {
            route: None,
            lifetime_ms: 60_000,
        },
        _ => Response::Ok,
    });
    let output = servalctl(&sald.path, &["resolve", "c0ec7001"]);
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    assert!(
        text.contains("forward (sald's rule c0ec/16), cacheable for 5000 ms"),
        "{text}"
    );
    let rows: Vec<Vec<&str>> = (text.lines().skip(2))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [vec!["udp:10.0.0.2:7077", "3"], vec!["10.0.0.3", "0"]],
        "{text}"
    );
    let output = servalctl(&sald.path, &["resolve", "beef", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["route"], serde_json::Value::Null);
    assert_eq!(json["lifetime_ms"], 60_000);
    let output = servalctl(&sald.path, &["resolve", "beef"]);
    assert!(stdout(&output).contains("no route to cache"), "{output:?}");
    assert!(
        (sald.requests()).contains(&Request::Resolve { service: routed }),
        "the service asked is the one given"
    );
}

#[test]
fn daemon_errors_are_one_line_and_exit_1() {
    let sald = FakeSald::start(|request| match request {
        Request::DelRule { prefix, .. } => {
            Response::error(ErrorKind::NotFound, format!("no rule for {prefix}"))
        }
        _ => Response::error(ErrorKind::PermissionDenied, "uid 1000 may not change rules"),
    });
    let output = servalctl(&sald.path, &["service", "del", "beef/16"]);
    let line = assert_one_error_line(&output, 1);
    assert_eq!(
        line,
        "servalctl: cannot remove the rule of beef/16: no rule for beef/16\n"
    );
    let output = servalctl(&sald.path, &["service", "add", "be/8", "drop"]);
    let line = assert_one_error_line(&output, 1);
    assert!(line.contains("uid 1000 may not change rules"), "{line}");
}

#[test]
fn missing_daemon_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sald.sock");
    let output = servalctl(&path, &["services"]);
    let line = assert_one_error_line(&output, 1);
    assert_eq!(
        line,
        format!(
            "servalctl: sald is not running (no control socket at {})\n",
            path.display()
        )
    );
    // SERVAL_CONTROL is used when --control is not given.
    let output = Command::new(env!("CARGO_BIN_EXE_servalctl"))
        .arg("stats")
        .env("SERVAL_CONTROL", &path)
        .output()
        .unwrap();
    let line = assert_one_error_line(&output, 1);
    assert!(line.contains(&path.display().to_string()), "{line}");
}

#[test]
fn usage_errors_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sald.sock");
    for args in [
        &["service", "add", "xyz", "drop"][..],
        &["service", "add", "beef/4", "forward", "10.0.0.2"],
        &["service", "add", "beef/16", "forward", "10.0.0"],
        &["service", "add", "beef/16", "forward", "10.0.0.2,weight=x"],
        &["service", "add", "beef/16", "teleport"],
        &["service", "add", "beef/16"],
        &["service", "del", "beef/16", "nowhere"],
        &["services", "--jsn"],
        &["migrate", "00000000", "eth0"],
    ] {
        let output = servalctl(&path, args);
        let line = assert_one_error_line(&output, 2);
        assert!(!line.contains("panicked"), "{args:?}: {line}");
    }
    let output = servalctl(&path, &["service", "add", "xyz", "drop"]);
    assert_eq!(
        stderr(&output),
        "servalctl: invalid value 'xyz' for '<PREFIX>': invalid hex digit 'x' at position 0\n"
    );
}

#[test]
fn servd_usage_errors_are_one_line_and_exit_2() {
    for (args, expected) in [
        (
            &["--listen", "nope"][..],
            "servd: invalid value 'nope' for '--listen <ADDR:PORT>': invalid socket address syntax\n",
        ),
        (
            &["--bogus"],
            "servd: unexpected argument '--bogus' found; see 'servd --help'\n",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_servd"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
        assert_eq!(stderr(&output), expected, "{args:?}");
    }
    let help = Command::new(env!("CARGO_BIN_EXE_servd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(stdout(&help).contains("--max-cached"));
}

#[test]
fn help_documents_every_subcommand() {
    let output = Command::new(env!("CARGO_BIN_EXE_servalctl"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = stdout(&output);
    for word in [
        "services",
        "service",
        "flows",
        "ifaces",
        "stats",
        "migrate",
        "resolve",
        "--control",
        "SERVAL_CONTROL",
    ] {
        assert!(help.contains(word), "--help lacks {word}");
    }
    for sub in ["services", "flows", "ifaces", "stats", "resolve"] {
        let output = Command::new(env!("CARGO_BIN_EXE_servalctl"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(
            stdout(&output).contains("--json"),
            "{sub} --help lacks --json"
        );
    }
}

#[test]
fn drain_reports_what_is_pending_and_fails_when_the_wait_runs_out() {
    let sald = FakeSald::start(|request| match request {
        Request::Drain { wait_ms: None, .. } => Response::Drained { pending: 3 },
        Request::Drain {
            wait_ms: Some(_), ..
        } => Response::Drained { pending: 2 },
        _ => Response::Ok,
    });
    let output = servalctl(&sald.path, &["service", "drain", "80a0"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout(&output),
        "80a/256 drained: 3 admitted connections not accepted yet\n"
    );
    let output = servalctl(&sald.path, &["service", "drain", "80a0", "--wait", "1.5"]);
    let text = assert_one_error_line(&output, 1);
    assert!(
        text.contains("2 admitted connections were still not accepted"),
        "{text}"
    );
    assert_eq!(
        sald.requests()
            .into_iter()
            .filter(|r| matches!(r, Request::Drain { .. }))
            .collect::<Vec<_>>(),
        [
            Request::Drain {
                prefix: "80a0".parse().unwrap(),
                wait_ms: None
            },
            Request::Drain {
                prefix: "80a0".parse().unwrap(),
                wait_ms: Some(1500)
            }
        ]
    );
    let refused =
        FakeSald::start(|_| Response::error(ErrorKind::NotFound, "no listener is bound to be/8"));
    let output = servalctl(&refused.path, &["service", "drain", "be/8"]);
    let text = assert_one_error_line(&output, 1);
    assert!(
        text.contains("cannot drain be/8") && text.contains("no listener"),
        "{text}"
    );
}
