"""`memcached`: a keyspace partitioned by service-ID prefix. Each partition
(5eca0/18, 5eca4/18, 5eca8/18, 5ecac/18) is served by one real memcached
behind `svtrans egress --service PREFIX` on a server host; servd announces
the prefixes and the service router's longest-prefix match does the
partitioning. One client (kvclient, under serval-run) issues a GET/SET mix
by key. Two servers hold two partitions each; at 1 unit a third server
joins and takes one partition from each; at 2 units the first server leaves
and its last partition moves to the second. A move starts the partition on
its new server, drains it on the old one (`servalctl service drain`: servd
withdraws it, so new connections go to the new server) and then stops it
there (the egress unbinds; the client's open connection ends and it
reconnects); the new memcached starts empty, so the client sees misses.
A unit is 30 s, 8 s under --quick."""

import json
import time

from . import plot
from .common import Schedule, TOOLS_DIR, PY, result
from .netlab import Lab, wait_until
from .stack import Host, binary

CLAIM = ("Partitions move between servers as servers join and leave; clients "
         "keep reaching every key by service ID, with misses while a moved "
         "partition warms up (the paper's memcached experiment, qualitatively).")
PARTITIONS = ["5eca0/18", "5eca4/18", "5eca8/18", "5ecac/18"]
ROUTER = "10.7.0.254"


class Partition:
    """One partition served on one host: memcached + svtrans egress."""

    def __init__(self, host, index):
        self.host = host
        self.index = index
        port = 11300 + index
        self.memcached = host.ns.spawn("memcached", "-u", "root", "-l", "127.0.0.1", "-p", port, "-U", "0",
                                       "-m", "64", log=host.lab.path(f"memcached-{host.name}-{index}.log"))
        self.egress = host.spawn(binary("svtrans"), "egress", "--service", PARTITIONS[index], "--to", f"127.0.0.1:{port}",
                                 log=host.lab.path(f"egress-{host.name}-{index}.log"))

    def stop(self):
        self.egress.stop(5)
        self.memcached.stop(5)


def announced_to(router, index, host):
    """Whether the router forwards partition `index` to `host` (servalctl
    prints prefixes without trailing zero digits)."""
    digits, length = PARTITIONS[index].split("/")
    shown = f"{digits.rstrip('0')}/{length}"
    return any(line.split()[0] == shown and f"announced {host}" in line
               for line in router.ctl("services").stdout.splitlines()[1:] if line.strip())


def run(ctx):
    unit = 8 if ctx.quick else 30
    end = 3 * unit
    failures, notes, events = [], [], []
    with Lab("memcached", ctx.workdir) as lab:
        names = ["client", "m1", "m2", "m3"]
        nss = {n: lab.netns(n) for n in names + ["r"]}
        members = [(nss["r"], "eth0", f"{ROUTER}/24")] + [(nss[n], "eth0", f"10.7.0.{i + 1}/24") for i, n in enumerate(names)]
        lab.lan(members)
        router = Host(lab, nss["r"], "r", ["eth0"], forward=True)
        router.servd("--router", "--listen", f"{ROUTER}:54326")
        hosts = {}
        for i, n in enumerate(names):
            hosts[n] = Host(lab, nss[n], n, ["eth0"])
            hosts[n].servd("--upstream", f"{ROUTER}:54326", "--listen", f"10.7.0.{i + 1}:54326")
        placed = {}

        def place(index, host):
            placed[index] = Partition(hosts[host], index)
            if not wait_until(lambda: announced_to(router, index, host), 10, 0.1):
                failures.append(f"partition {PARTITIONS[index]} on {host} was not announced to the router")

        def move(index, to):
            old = placed[index]
            place(index, to)
            drained = old.host.ctl("service", "drain", PARTITIONS[index], "--wait", 30, check=False)
            if drained.returncode != 0:
                failures.append(f"draining {PARTITIONS[index]} on {old.host.name} failed: {drained.stderr.strip()}")
            old.stop()
            notes.append(f"partition {PARTITIONS[index]}: {old.host.name} -> {to}")

        for index, host in ((0, "m1"), (1, "m1"), (2, "m2"), (3, "m2")):
            place(index, host)
        out = lab.path("kvclient.json")
        client = hosts["client"].spawn(binary("serval-run"), "--", "timeout", end + 30, PY, "-m",
                                       "serval_experiments.kvclient", "--seconds", end, "--out", out,
                                       env={"PYTHONPATH": TOOLS_DIR}, log=lab.path("kvclient.log"), cwd=TOOLS_DIR)
        clock = Schedule()
        t0 = clock.t0

        clock.at(unit)
        events.append((time.time() - t0, "m3 joins"))
        move(1, "m3")
        move(3, "m3")
        clock.at(2 * unit)
        events.append((time.time() - t0, "m1 leaves"))
        move(0, "m2")
        if client.wait(end + 40 - (time.time() - t0)) is None:
            failures.append("the client did not finish")
        try:
            with open(out) as f:
                data = json.load(f)
        except (OSError, ValueError):
            data = None
            failures.append(f"the client wrote no figures: {client.log_text()[-400:]}")
        final_rules = router.ctl("services").stdout
    rows = data["per_second"] if data else []
    offset = (data["start_wall"] - t0) if data else 0
    xs = [r["t"] + offset for r in rows]
    ops_ok = sum(r["ops"] for r in rows)
    ops_failed = sum(r["failed"] for r in rows)
    figures = {
        "ops_ok": ops_ok,
        "ops_failed": ops_failed,
        "misses": sum(r["misses"] for r in rows),
        "reconnects": sum(r["reconnects"] for r in rows),
        "mean_ops_per_s": ops_ok / end if end else 0,
        "op_latency_ms_p50": data.get("latency_ms_p50") if data else None,
        "op_latency_ms_p99": data.get("latency_ms_p99") if data else None,
        "unit_s": unit,
        "events": events,
        "per_second": rows,
        "router_rules_at_end": " ".join(final_rules.split()),
    }
    if ops_failed:
        failures.append(f"{ops_failed} operations failed (after one reconnect and retry each)")
    if not ops_ok:
        failures.append("no operation succeeded")
    plot.lines(
        f"{ctx.outdir}/memcached.png",
        "Partitioned memcached: request rate as partitions move",
        "time (s)", "operations per second",
        {"operations/s (GET/SET, 90% GET)": (xs, [r["ops"] for r in rows]),
         "GET misses/s": (xs, [r["misses"] for r in rows]),
         "failed operations/s": (xs, [r["failed"] for r in rows])},
        events=events,
        note=(f"4 partitions by service-ID prefix, one memcached each behind svtrans egress; one client keyed by "
              f"service ID; {ops_ok} ops ok, {ops_failed} failed, {figures['reconnects']} reconnects. 1 unit = {unit} s."),
    )
    return result(ctx, "memcached", "Partitioned memcached: partitions move as servers join and leave", CLAIM, figures,
                 ok=ops_ok > 0, notes=notes, failures=failures,
                  headline=f"{ops_ok} ops ok, {ops_failed} failed, {figures['misses']} misses, {figures['reconnects']} reconnects")
