"""`router`: new connections from a SAL client to a SAL server on another
subnet, once through a kernel IP router (the client's SYN goes straight to
the server's address) and once through a `sald --forward` service router
(the SYN goes to the router, which resolves the service ID and forwards it;
the rest of the connection flows end to end). Same hosts, same programs:
ab for the connection rate, a sequential client for connect latency,
nginx serving a 1-byte file, all unmodified under serval-run."""

import json

from . import plot
from .common import TOOLS_DIR, flowtool, median, parse_ab, percentile, result
from .netlab import Lab
from .stack import Host, binary
from .web import Nginx, content

CLAIM = ("A service router forwards SYNs at a rate comparable to an IP router "
         "(the paper's router micro-benchmark, qualitatively); only the first "
         "packet of a connection visits it.")
SERVICE = "c0"


def _probe(client, lab, label, run_, count, seconds):
    out = lab.path(f"connect-{label}.json")
    proc = client.run("timeout", seconds + 30, *run_, *flowtool("connect", "--addr", "10.200.0.1:80", "--path", "/x",
                                                                 "--count", count, "--seconds", seconds, "--out", out),
                      check=False, timeout=seconds + 40, cwd=TOOLS_DIR)
    try:
        with open(out) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"connect_ms": [], "request_ms": [], "failed": count, "error": proc.stderr[-300:]}


def measure(ctx, lab, client, label, count, concurrency):
    """(ab's figures, sequential connect latencies, ab's output); when two
    probe connections fail, nothing else is tried (bounded failure)."""
    run_ = [binary("serval-run"), "--map", f"80={SERVICE}", "--"]
    probe = _probe(client, lab, label + "-probe", run_, 2, 12)
    if not probe["connect_ms"]:
        probe["failed"] = count
        return {"complete": 0, "failed": 0, "non_2xx": 0, "rps": 0.0}, probe, \
            __import__("subprocess").CompletedProcess([], 1, "", "no connection completed (2 probes, 5 s each)")
    ab = client.run("timeout", 120, *run_, "ab", "-r", "-n", count, "-c", concurrency,
                    "http://10.200.0.1/x", check=False, timeout=150)
    rate = parse_ab(ab.stdout)
    lat = _probe(client, lab, label, run_, count, 90)
    return rate, lat, ab


def routed_subnets(ctx, lab, count, concurrency, cases):
    """client (10.5.1.0/24) - router - server (10.5.2.0/24)."""
    nc, nr, ns = lab.netns("client"), lab.netns("router"), lab.netns("server")
    lab.veth(nc, "eth0", "10.5.1.1/24", nr, "eth0", "10.5.1.254/24")
    lab.veth(ns, "eth0", "10.5.2.1/24", nr, "eth1", "10.5.2.254/24")
    nc.ip("route", "add", "10.5.2.0/24", "via", "10.5.1.254")
    ns.ip("route", "add", "10.5.1.0/24", "via", "10.5.2.254")
    client = Host(lab, nc, "client", ["eth0"])
    server = Host(lab, ns, "server", ["eth0"])
    root, _ = content(lab, 1, "x")
    Nginx(server, "server", root, SERVICE)
    # 1. kernel IP router: the client's SYN is addressed to the server.
    nr.sysctl("net.ipv4.ip_forward", 1)
    client.ctl("service", "add", "0/0", "forward", "10.5.2.1")
    cases.append(("kernel IP router", "ip") + measure(ctx, lab, client, "ip", count, concurrency))
    # 2. service router: the SYN goes to sald --forward, which resolves it.
    nr.sysctl("net.ipv4.ip_forward", 0)
    router = Host(lab, nr, "router", ["eth0", "eth1"], forward=True)
    router.ctl("service", "add", f"{SERVICE}/8", "forward", "10.5.2.1")
    client.ctl("service", "del", "0/0", "10.5.2.1")
    client.ctl("service", "add", "0/0", "forward", "10.5.1.254")
    cases.append(("sald service router, between subnets", "sr") + measure(ctx, lab, client, "sr", count, concurrency))
    return None, nr.exec("nft", "list", "table", "ip", "sald", check=False).stdout


def one_lan(ctx, lab, count, concurrency, cases):
    """client, router and server on one LAN: the SYN goes through the
    service router, the server answers the client directly."""
    nc, nr, ns = lab.netns("lclient"), lab.netns("lrouter"), lab.netns("lserver")
    lab.lan([(nc, "eth0", "10.5.3.1/24"), (nr, "eth0", "10.5.3.254/24"), (ns, "eth0", "10.5.3.2/24")])
    client = Host(lab, nc, "lclient", ["eth0"])
    server = Host(lab, ns, "lserver", ["eth0"])
    router = Host(lab, nr, "lrouter", ["eth0"], forward=True)
    root, _ = content(lab, 1, "x")
    Nginx(server, "lserver", root, SERVICE)
    router.ctl("service", "add", f"{SERVICE}/8", "forward", "10.5.3.2")
    client.ctl("service", "add", "0/0", "forward", "10.5.3.254")
    cases.append(("sald service router, one LAN", "sr_lan") + measure(ctx, lab, client, "sr_lan", count, concurrency))


def run(ctx):
    count = 3000 if not ctx.quick else 400
    concurrency = 16
    failures, notes = [], []
    figures, samples, cases = {"connections_per_run": count, "ab_concurrency": concurrency}, {}, []
    with Lab("router", ctx.workdir) as lab:
        _, fence = routed_subnets(ctx, lab, count, concurrency, cases)
    with Lab("router-lan", ctx.workdir + "-lan") as lab:
        one_lan(ctx, lab, count, concurrency, cases)
    for label, key, rate, lat, ab in cases:
        failed = int(rate["failed"] + rate["non_2xx"]) + (count - int(rate["complete"]))
        figures[f"{key}_conn_per_s"] = rate["rps"]
        figures[f"{key}_ab_failed"] = failed
        figures[f"{key}_connect_p50_ms"] = median(lat["connect_ms"])
        figures[f"{key}_connect_p99_ms"] = percentile(lat["connect_ms"], 0.99)
        figures[f"{key}_request_p50_ms"] = median(lat["request_ms"])
        figures[f"{key}_latency_failed"] = lat["failed"]
        if failed or lat["failed"] or not lat["connect_ms"]:
            if key == "sr":
                # What the router's own firewall does with transit SAL
                # packets (a fence that dropped them once broke this case).
                notes.append("router nftables table ip sald: " + " ".join(fence.split())[-300:])
            failures.append(f"{label}: {failed} of {count} ab requests and {lat['failed']} latency probes failed "
                            f"{lat.get('error', '')} {ab.stderr.strip()[-200:]}")
        samples[f"{label}: {rate['rps']:.0f} conn/s (ab -c {concurrency}), p50 {figures[f'{key}_connect_p50_ms'] or 0:.2f} ms"] = lat["connect_ms"]
    for key in ("sr", "sr_lan"):
        if figures.get("ip_conn_per_s") and figures.get(f"{key}_conn_per_s"):
            figures[f"{key}_over_ip_rate"] = figures[f"{key}_conn_per_s"] / figures["ip_conn_per_s"]
    plot.cdf(
        f"{ctx.outdir}/router.png",
        "Connection setup through a service router vs a kernel IP router",
        "connect latency, application to application (ms)",
        samples,
        note=f"SAL client -> router -> SAL server (nginx, 1-byte file), {count} sequential connects per case; "
             f"rate: ab, {count} requests, {concurrency} in flight, one connection per request.",
    )
    return result(ctx, "router", "Router: SYN forwarding rate and connect latency", CLAIM, figures,
                 ok=bool(figures.get("sr_conn_per_s")), notes=notes, failures=failures,
                  headline=(f"conn/s: IP router {figures.get('ip_conn_per_s', 0):.0f}, service router between "
                       f"subnets {figures.get('sr_conn_per_s', 0):.0f} (x{figures.get('sr_over_ip_rate') or 0:.2f}), "
                       f"on one LAN {figures.get('sr_lan_conn_per_s', 0):.0f} (x{figures.get('sr_lan_over_ip_rate') or 0:.2f}); "
                       f"connect p50 {figures.get('ip_connect_p50_ms') or 0:.2f} / {figures.get('sr_connect_p50_ms') or 0:.2f} ms"))
