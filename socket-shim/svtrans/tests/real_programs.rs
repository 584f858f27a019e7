//! Real programs from Debian packages, unmodified, over service IDs, on two
//! hosts built from network namespaces (a client host and a server host,
//! each with its own sald on a TUN, the client forwarding everything to the
//! server): `curl` and `socat` against `python3 -m http.server` through the
//! translator and through inet mode, and memcached behind `svtrans egress`
//! driven by libmemcached's tools through inet mode and through
//! `svtrans ingress`. Served bytes are compared byte for byte.
//!
//! Needs root (namespaces); skips loudly otherwise. When root, a missing
//! package is a failure, not a skip (scripts/setup installs them).

#[path = "../../preload/tests/support/mod.rs"]
mod support;

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sal::table::Target;
use sal::Locator;
use sal_control::{Request, Response};
use socket_shim::ControlClient;
use testnet::{require_root, wait_for, wait_until, Host, NsChild, Topology, TopologyBuilder};

use support::binary;

const TRANSFER: usize = 2 << 20;

/// A sald in a host namespace, stopped with SIGTERM on drop.
struct NsSald {
    child: NsChild,
    control: PathBuf,
}

impl Drop for NsSald {
    fn drop(&mut self) {
        let _ = self.child.terminate(Duration::from_secs(5));
    }
}

fn start_sald(host: &Host, dir: &Path, name: &str) -> NsSald {
    let control = dir.join(format!("{name}.sock"));
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut cmd = host.ns.command(binary("sald"));
    cmd.arg("--iface")
        .arg(&host.ifaces[0].name)
        .arg("--control")
        .arg(&control)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let child = host.ns.spawn_cmd(cmd).unwrap();
    if !wait_until(Duration::from_secs(10), || {
        UnixStream::connect(&control).is_ok()
    }) {
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        panic!("sald on {name} did not come up:\n{log}");
    }
    NsSald { child, control }
}

/// Client host 0 (10.1.0.1) and server host 1 (10.1.0.2). Field order is
/// drop order: the daemons stop before their namespaces go.
struct Net {
    client: NsSald,
    server: NsSald,
    net: Topology,
    dir: tempfile::TempDir,
    data: Vec<u8>,
}

impl Net {
    fn new(label: &str) -> Net {
        let net = TopologyBuilder::new(label, 2).link(0, 1).build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let client = start_sald(net.host(0), dir.path(), "client");
        let server = start_sald(net.host(1), dir.path(), "server");
        let to: Ipv4Addr = net.host(1).addr().unwrap();
        let response = ControlClient::connect_to(&client.control)
            .unwrap()
            .request(&Request::AddRule {
                prefix: "0/0".parse().unwrap(),
                target: Target::Forward {
                    locator: Locator::Ipv4(to),
                    weight: 1,
                },
                priority: 0,
            })
            .unwrap()
            .response;
        assert_eq!(response, Response::Ok);
        let www = dir.path().join("www");
        std::fs::create_dir(&www).unwrap();
        let data = pattern(TRANSFER);
        std::fs::write(www.join("f.bin"), &data).unwrap();
        Net {
            client,
            server,
            net,
            dir,
            data,
        }
    }

    fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    /// `program args` in host `i`, talking to that host's sald.
    fn cmd(&self, i: usize, program: impl AsRef<OsStr>, args: &[&str]) -> Command {
        let control = if i == 0 {
            &self.client.control
        } else {
            &self.server.control
        };
        let mut cmd = self.net.host(i).ns.command(program);
        cmd.args(args)
            .env("SERVAL_CONTROL", control)
            .stdin(Stdio::null());
        cmd
    }

    /// Like `cmd`, under `serval-run ARGS --`.
    fn shimmed(&self, i: usize, run_args: &[&str], program: &str, args: &[&str]) -> Command {
        let mut all: Vec<&str> = run_args.to_vec();
        all.push("--");
        all.push(program);
        all.extend_from_slice(args);
        self.cmd(i, binary("serval-run"), &all)
    }

    /// `python3 -m http.server` on 127.0.0.1:8000 of the server host,
    /// serving `www()`.
    fn http_server(&self) -> NsChild {
        let www = self.www();
        let args = [
            "-m",
            "http.server",
            "8000",
            "--bind",
            "127.0.0.1",
            "--directory",
            www.to_str().unwrap(),
        ];
        self.spawn(1, self.cmd(1, python(), &args), "http.log")
    }

    /// `python3 -m http.server` on TCP port 8080 of the server host in
    /// inet mode, port 8080 mapped to `service`: it binds the service.
    fn inet_http_server(&self, service: &str) -> NsChild {
        let www = self.www();
        let map = format!("8080={service}");
        let args = [
            "-m",
            "http.server",
            "8080",
            "--bind",
            "0.0.0.0",
            "--directory",
            www.to_str().unwrap(),
        ];
        self.spawn(
            1,
            self.shimmed(1, &["--map", &map], python(), &args),
            "http.log",
        )
    }

    fn spawn(&self, i: usize, mut cmd: Command, log: &str) -> NsChild {
        let log = std::fs::File::create(self.dir.path().join(log)).unwrap();
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        self.net.host(i).ns.spawn_cmd(cmd).unwrap()
    }
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn python() -> &'static str {
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Runs `make()`'s command until it succeeds (servers take a moment to
/// register), returning its output.
fn until_ok(logs: &Path, what: &str, mut make: impl FnMut() -> Command) -> Output {
    let mut last = None;
    let found = wait_for(Duration::from_secs(30), || {
        let output = make().output().expect("running a client");
        if output.status.success() {
            Some(output)
        } else {
            last = Some(output);
            std::thread::sleep(Duration::from_millis(200));
            None
        }
    });
    found.unwrap_or_else(|| {
        let last = last.map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
        let mut text = String::new();
        for entry in std::fs::read_dir(logs).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                let body = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: String = body
                    .chars()
                    .rev()
                    .take(2000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                text.push_str(&format!("--- {} ---\n{tail}\n", entry.path().display()));
            }
        }
        panic!("{what} never succeeded; last stderr: {last:?}\n{text}")
    })
}

/// The body of a raw HTTP/1.0 response.
fn http_body(raw: &[u8]) -> &[u8] {
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    &raw[at + 4..]
}

fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert!(
        got == want,
        "{what}: got {} bytes, expected {} (content differs)",
        got.len(),
        want.len()
    );
}

fn socat_get(net: &Net, i: usize, run_args: Option<&[&str]>, target: &str) -> Output {
    let script = format!("printf 'GET /f.bin HTTP/1.0\\r\\n\\r\\n' | socat -t 30 - TCP:{target}");
    match run_args {
        Some(args) => until_ok(net.dir.path(), "socat", || {
            net.shimmed(i, args, "sh", &["-c", &script])
        }),
        None => until_ok(net.dir.path(), "socat", || {
            net.cmd(i, "sh", &["-c", &script])
        }),
    }
}

fn needs(tools: &[(&str, &str)]) -> bool {
    tools
        .iter()
        .all(|(tool, package)| support::require_tool(tool, package))
}

#[test]
fn curl_and_socat_through_the_translator() {
    require_root!();
    if !needs(&[("curl", "curl"), ("socat", "socat"), ("python3", "python3")]) {
        return;
    }
    let net = Net::new("trans-http");
    let _http = net.http_server();
    let svtrans = env!("CARGO_BIN_EXE_svtrans");
    let _egress = net.spawn(
        1,
        net.cmd(
            1,
            svtrans,
            &["egress", "--service", "80a1", "--to", "127.0.0.1:8000"],
        ),
        "egress.log",
    );
    let _ingress = net.spawn(
        0,
        net.cmd(
            0,
            svtrans,
            &["ingress", "--listen", "127.0.0.1:9000", "--service", "80a1"],
        ),
        "ingress.log",
    );
    let out = net.dir.path().join("curl.bin");
    until_ok(net.dir.path(), "curl through svtrans", || {
        net.cmd(
            0,
            "curl",
            &[
                "-sS",
                "--max-time",
                "20",
                "-o",
                out.to_str().unwrap(),
                "http://127.0.0.1:9000/f.bin",
            ],
        )
    });
    assert_same(
        "curl through svtrans",
        &std::fs::read(&out).unwrap(),
        &net.data,
    );
    let raw = socat_get(&net, 0, None, "127.0.0.1:9000");
    assert_same("socat through svtrans", http_body(&raw.stdout), &net.data);
}

#[test]
fn curl_and_socat_through_inet_mode() {
    require_root!();
    if !needs(&[("curl", "curl"), ("socat", "socat"), ("python3", "python3")]) {
        return;
    }
    let net = Net::new("inet-http");
    // The server binds TCP port 8080, which becomes service 80a2.
    let _http = net.inet_http_server("80a2");
    // The client connects to port 80 of an address nobody has: the shim
    // connects to service 80a2 instead.
    let out = net.dir.path().join("curl.bin");
    until_ok(net.dir.path(), "curl in inet mode", || {
        net.shimmed(
            0,
            &["--map", "80=80a2"],
            "curl",
            &[
                "-sS",
                "--max-time",
                "20",
                "-o",
                out.to_str().unwrap(),
                "http://10.200.0.1/f.bin",
            ],
        )
    });
    assert_same(
        "curl in inet mode",
        &std::fs::read(&out).unwrap(),
        &net.data,
    );
    let raw = socat_get(
        &net,
        0,
        Some(&["--map", "80=80a2", "--net", "10.200.0.0/16"]),
        "10.200.0.1:80",
    );
    assert_same("socat in inet mode", http_body(&raw.stdout), &net.data);
}

/// nginx as a reverse proxy in inet mode: it registers each upstream socket
/// with epoll before connecting it (edge-triggered, for reading and
/// writing) and waits for that registration to report the connect, so the
/// registration must follow the socket when the flow takes its number.
#[test]
fn nginx_proxies_to_a_service_in_inet_mode() {
    require_root!();
    if !needs(&[("nginx", "nginx"), ("curl", "curl"), ("python3", "python3")]) {
        return;
    }
    let net = Net::new("inet-nginx");
    let _http = net.inet_http_server("80a3");
    let dir = net.dir.path().display();
    let conf = net.dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process off; pid {dir}/nginx.pid;
             error_log {dir}/nginx-error.log info;
             events {{ worker_connections 64; }}
             http {{
                 access_log off;
                 client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
                 fastcgi_temp_path {dir}/fastcgi; uwsgi_temp_path {dir}/uwsgi;
                 scgi_temp_path {dir}/scgi;
                 server {{
                     listen 127.0.0.1:9080;
                     location / {{
                         proxy_pass http://10.200.0.1:80;
                         proxy_connect_timeout 20s;
                     }}
                 }}
             }}"
        ),
    )
    .unwrap();
    // Port 80 upstream becomes service 80a3; nginx's own listener on 9080
    // is not mapped and stays the kernel's.
    let _nginx = net.spawn(
        0,
        net.shimmed(
            0,
            &["--map", "80=80a3"],
            "nginx",
            &["-c", conf.to_str().unwrap(), "-e", "stderr"],
        ),
        "nginx.log",
    );
    let out = net.dir.path().join("nginx.bin");
    for _ in 0..3 {
        until_ok(net.dir.path(), "curl through nginx", || {
            net.cmd(
                0,
                "curl",
                &[
                    "-sSf",
                    "--max-time",
                    "30",
                    "-o",
                    out.to_str().unwrap(),
                    "http://127.0.0.1:9080/f.bin",
                ],
            )
        });
        assert_same(
            "curl through nginx in inet mode",
            &std::fs::read(&out).unwrap(),
            &net.data,
        );
    }
}

#[test]
fn memcached_behind_egress() {
    require_root!();
    if !needs(&[
        ("memcached", "memcached"),
        ("memccp", "libmemcached-tools"),
        ("memccat", "libmemcached-tools"),
    ]) {
        return;
    }
    let net = Net::new("memcached");
    let _memcached = net.spawn(
        1,
        net.cmd(
            1,
            "memcached",
            &["-u", "root", "-l", "127.0.0.1", "-p", "11211", "-U", "0"],
        ),
        "memcached.log",
    );
    let svtrans = env!("CARGO_BIN_EXE_svtrans");
    let _egress = net.spawn(
        1,
        net.cmd(
            1,
            svtrans,
            &["egress", "--service", "11211", "--to", "127.0.0.1:11211"],
        ),
        "egress.log",
    );
    let _ingress = net.spawn(
        0,
        net.cmd(
            0,
            svtrans,
            &[
                "ingress",
                "--listen",
                "127.0.0.1:21211",
                "--service",
                "11211",
            ],
        ),
        "ingress.log",
    );
    let value = pattern(300_000);
    let file = net.dir.path().join("item");
    std::fs::write(&file, &value).unwrap();
    // Store through inet mode (libmemcached connects non-blocking and polls)...
    until_ok(net.dir.path(), "memccp in inet mode", || {
        net.shimmed(
            0,
            &["--map", "11211=11211"],
            "memccp",
            &["--servers=10.77.0.1:11211", file.to_str().unwrap()],
        )
    });
    // ... read back through inet mode and through the ingress translator.
    let got = until_ok(net.dir.path(), "memccat in inet mode", || {
        net.shimmed(
            0,
            &["--map", "11211=11211"],
            "memccat",
            &["--servers=10.77.0.1:11211", "item"],
        )
    });
    // memccat ends each value with a newline of its own.
    let mut want = value.clone();
    want.push(b'\n');
    assert_same("memccat in inet mode", &got.stdout, &want);
    let got = until_ok(net.dir.path(), "memccat through svtrans ingress", || {
        net.cmd(0, "memccat", &["--servers=127.0.0.1:21211", "item"])
    });
    assert_same("memccat through svtrans", &got.stdout, &want);
}

/// `svtrans ARGS` in host `i` under a descriptor limit of `nofile` (hard
/// and soft).
fn svtrans_limited(net: &Net, i: usize, nofile: u32, args: &[&str]) -> Command {
    let limit = format!("--nofile={nofile}:{nofile}");
    let mut all = vec![limit.as_str(), "--", env!("CARGO_BIN_EXE_svtrans")];
    all.extend_from_slice(args);
    net.cmd(i, "prlimit", &all)
}

/// Whether the server host's sald has a listener bound at `prefix`.
fn bound(net: &Net, prefix: &str) -> bool {
    let prefix: sal::ServicePrefix = prefix.parse().unwrap();
    let Ok(reply) = ControlClient::connect_to(&net.server.control)
        .and_then(|mut c| c.request(&Request::ListRules))
    else {
        return false;
    };
    let Response::Rules { rules, .. } = reply.response else {
        return false;
    };
    rules.iter().any(|rule| {
        rule.prefix == prefix
            && rule
                .targets()
                .iter()
                .any(|e| matches!(e.target, Target::Demux { .. }))
    })
}

/// Each relayed connection used to cost the translator 8 descriptors: at
/// its limit, egress exited (and its service vanished) and ingress reset
/// every new client. Now, with far more idle clients than its limits allow
/// (ingress 64 descriptors, egress 40), both keep running, the service
/// stays bound, a connection opened before the flood still flows, the
/// excess is refused with a bounded number of log lines, and once the
/// idle clients leave new ones are served again.
#[test]
fn the_translator_survives_running_out_of_descriptors() {
    use std::io::{Read, Write};
    require_root!();
    if !needs(&[
        ("python3", "python3"),
        ("prlimit", "util-linux"),
        ("curl", "curl"),
    ]) {
        return;
    }
    let net = Net::new("trans-fds");
    let _http = net.http_server();
    let egress_args = ["egress", "--service", "80a2", "--to", "127.0.0.1:8000"];
    let mut egress = net.spawn(1, svtrans_limited(&net, 1, 40, &egress_args), "egress.log");
    let ingress_args = ["ingress", "--listen", "127.0.0.1:9001", "--service", "80a2"];
    let mut ingress = net.spawn(
        0,
        svtrans_limited(&net, 0, 64, &ingress_args),
        "ingress.log",
    );
    let curl = || {
        net.cmd(
            0,
            "curl",
            &[
                "-sS",
                "--max-time",
                "20",
                "-o",
                "/dev/null",
                "http://127.0.0.1:9001/f.bin",
            ],
        )
    };
    until_ok(net.dir.path(), "curl through svtrans", curl);

    let connect = || {
        net.net
            .host(0)
            .ns
            .run(|| std::net::TcpStream::connect("127.0.0.1:9001"))
            .unwrap()
    };
    let mut first = connect().expect("the first connection");
    std::thread::sleep(Duration::from_millis(300));
    let idle: Vec<std::net::TcpStream> = (0..100).filter_map(|_| connect().ok()).collect();
    std::thread::sleep(Duration::from_secs(1));

    assert!(ingress.try_wait().unwrap().is_none(), "ingress exited");
    assert!(egress.try_wait().unwrap().is_none(), "egress exited");
    assert!(bound(&net, "80a2"), "the egress service is no longer bound");
    first
        .write_all(b"GET /f.bin HTTP/1.0\r\n\r\n")
        .expect("the first connection is still open");
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut raw = Vec::new();
    first.read_to_end(&mut raw).unwrap();
    assert_same(
        "a connection opened before the flood",
        http_body(&raw),
        &net.data,
    );

    let logs = |name: &str| std::fs::read_to_string(net.dir.path().join(name)).unwrap();
    for name in ["ingress.log", "egress.log"] {
        let log = logs(name);
        let refusals = log.lines().filter(|l| l.contains("refused")).count();
        assert!(refusals >= 1, "{name}: no refusal logged:\n{log}");
        assert!(refusals <= 10, "{name}: {refusals} refusal lines:\n{log}");
    }
    drop(idle);
    until_ok(net.dir.path(), "curl after the flood", curl);
    assert!(ingress.try_wait().unwrap().is_none(), "ingress exited");
    assert!(egress.try_wait().unwrap().is_none(), "egress exited");
}
