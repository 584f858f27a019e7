"""What every experiment shares: the run context, iperf3 runs, parsing of
ab's report, and the result record that becomes NAME.json and a section of
report.md."""

import json
import os
import re
import statistics
import time

from .netlab import wait_until


class Context:
    """Options of one `scripts/experiments` run."""

    def __init__(self, quick, outdir, workdir):
        self.quick = quick
        self.outdir = outdir
        self.workdir = workdir

    def seconds(self, full, quick):
        return quick if self.quick else full


def result(ctx, name, title, claim, figures, ok, notes=(), failures=(), headline=""):
    """The record of one experiment, also written to NAME.json. `ok` is
    whether it ran and met its acceptance checks; `failures` says precisely
    what went wrong; `headline` is its line in the summary."""
    res = {
        "name": name,
        "title": title,
        "paper_claim": claim,
        "figures": figures,
        "ok": bool(ok) and not failures,
        "notes": list(notes),
        "failures": list(failures),
        "headline": headline,
    }
    write_json(ctx, name, res)
    return res


class Schedule:
    """Events at fixed offsets from a start time."""

    def __init__(self):
        self.t0 = time.time()

    def at(self, t):
        """Sleeps until `t` seconds after the start."""
        delay = self.t0 + t - time.time()
        if delay > 0:
            time.sleep(delay)

    def now(self):
        return time.time() - self.t0


def write_json(ctx, name, data):
    with open(os.path.join(ctx.outdir, f"{name}.json"), "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)


def iperf_client(ns, addr, port, streams, seconds, wrap=(), env=None):
    """Runs an iperf3 client; returns (Gbit/s at the receiver, None) or
    (None, why it failed)."""
    proc = ns.exec("timeout", seconds + 20, *wrap, "iperf3", "-c", addr, "-p", port, "-t", seconds,
                   "-P", streams, "-J", check=False, timeout=seconds + 30, env=env)
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        return None, f"iperf3 printed no JSON (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"
    if "error" in data:
        return None, f"iperf3: {data['error']}"
    bps = data.get("end", {}).get("sum_received", {}).get("bits_per_second")
    return (bps / 1e9 if bps else None), None


def bound(host, service):
    """Whether `service` (hex digits as bound) shows in host's service table."""
    return service.lower() in host.ctl("services", check=False).stdout


def tcp_listening(ns, port):
    """Whether something listens on TCP `port` in namespace `ns`."""
    out = ns.exec("ss", "-Hltn", f"sport = :{port}", check=False).stdout
    return bool(out.strip())


def iperf(client_ns, server_ns, addr, port, streams, seconds, client_wrap=(), server_wrap=(),
          client_env=None, server_env=None, log=None, ready=None):
    """iperf3 server (one test) and client: (Gbit/s, None) or (None, error).
    The client starts once `ready()` (default: the server's TCP port
    listens), waiting up to 15 s: a loaded machine starts programs slowly."""
    bind = [] if server_wrap else ["-B", addr]
    server = server_ns.spawn(*server_wrap, "iperf3", "-s", "-1", "-p", port, *bind, env=server_env, log=log)
    ready = ready or (lambda: tcp_listening(server_ns, port))
    if not wait_until(lambda: ready() or not server.alive(), 15, 0.1) or not server.alive():
        server.stop(grace=2)
        return None, f"the iperf3 server did not get ready: {server.log_text()[-300:]}"
    gbps, err = iperf_client(client_ns, addr, port, streams, seconds, client_wrap, client_env)
    server.stop(grace=2)
    return gbps, err


AB_FIELDS = {
    "complete": r"Complete requests:\s+(\d+)",
    "failed": r"Failed requests:\s+(\d+)",
    "non_2xx": r"Non-2xx responses:\s+(\d+)",
    "rps": r"Requests per second:\s+([\d.]+)",
    "seconds": r"Time taken for tests:\s+([\d.]+)",
}


def parse_ab(text):
    """ab's summary as numbers (missing fields are 0); `aborted` when ab
    stopped before its end (e.g. "Test aborted after 10 failures")."""
    out = {}
    for key, pattern in AB_FIELDS.items():
        m = re.search(pattern, text)
        out[key] = float(m.group(1)) if m else 0.0
    m = re.search(r"\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)", text)
    out["failed_detail"] = dict(zip(["connect", "receive", "length", "exceptions"], map(int, m.groups()))) if m else {}
    out["aborted"] = "Complete requests" not in text
    return out


def percentile(samples, q):
    if not samples:
        return None
    xs = sorted(samples)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def median(samples):
    return statistics.median(samples) if samples else None


PY = "/usr/bin/python3"  # Debian's python3, which has matplotlib (scripts/setup)
TOOLS_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def flowtool(*args):
    """Command line of a flowtools program (for namespaces and shells)."""
    return [PY, "-m", "serval_experiments.flowtools", *map(str, args)]


def pair(lab):
    """Two hosts on one veth pair (MTU 1500), each running sald; a's
    default service rule points at b. Returns (a, b, b's address)."""
    from .stack import Host

    na, nb = lab.netns("a"), lab.netns("b")
    lab.veth(na, "eth0", "10.4.0.1/24", nb, "eth0", "10.4.0.2/24")
    a = Host(lab, na, "a", ["eth0"])
    b = Host(lab, nb, "b", ["eth0"])
    a.ctl("service", "add", "0/0", "forward", "10.4.0.2")
    return a, b, "10.4.0.2"


def svcat_goodput(lab, client, server, service, seconds):
    """Gbit/s of one native SAL stream, svcat to svcat (zeros from cat), over
    the steady part of the transfer (the first half second left out)."""
    import shlex

    from .stack import binary

    out = lab.path(f"svcat-{service}.json")
    sink = " ".join(map(shlex.quote, flowtool("sink", "--seconds", seconds + 15, "--out", out)))
    rx = server.spawn("sh", "-c", f"{shlex.quote(binary('svcat'))} listen {service} | {sink}",
                      log=lab.path(f"svcat-{service}-rx.log"), env={"PYTHONPATH": TOOLS_DIR}, cwd=TOOLS_DIR)
    # The listener is up once its service shows in the server's table.
    wait_until(lambda: bound(server, service) or not rx.alive(), 10, 0.1)
    tx = client.spawn("sh", "-c", f"timeout {seconds} cat /dev/zero | {shlex.quote(binary('svcat'))} connect {service}",
                      log=lab.path(f"svcat-{service}-tx.log"))
    tx.wait(seconds + 20)
    rx.wait(20)
    tx.stop(1)
    rx.stop(1)
    try:
        with open(out) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None, f"svcat transfer produced no figures: {rx.log_text()[-300:]} {tx.log_text()[-300:]}"
    series = data["series"][int(0.5 / data["bin_s"]):-1]
    if not series:
        return None, "svcat transfer too short to measure"
    return sum(series) * 8 / (len(series) * data["bin_s"]) / 1e9, None
