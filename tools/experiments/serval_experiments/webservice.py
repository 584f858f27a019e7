"""`webservice`: the paper's replicated web service. Four clients run ab
(unmodified, under serval-run), each keeping 20 requests for a 3 MB file in
flight, one connection per request, against nginx instances (unmodified,
under serval-run) that register the same service ID through servd. Two
instances serve from the start, two more register at 1 unit, the first two
leave gracefully at 2 units, another starts at 3 units; the run ends at 4
units. A unit is 60 s as in the paper, 10 s under --quick.

A graceful leave is a drain, then a quit: `servalctl service drain 80a0
--wait` on the leaving host withdraws the service (sald removes its DEMUX
rule; servd withdraws the route from the router, so new connections go to
the other instances) while nginx keeps accepting what sald had already
admitted; once nothing is pending in sald, and after 2 s more for nginx
to accept the flows serval-run's preload took from sald ahead of its
accept(), nginx gets SIGQUIT: it closes its listener (nothing queued to
reset), finishes the requests in flight and exits. Per-instance throughput comes from each nginx's access log;
failures from ab's reports."""

import signal
import time

from . import plot
from .common import Schedule, parse_ab, result
from .netlab import Lab, wait_until
from .stack import Host, binary
from .web import Nginx, content

CLAIM = ("Clients stay undisturbed while instances join and leave: throughput "
         "shifts among the instances, no request fails (the paper's Figure 8, "
         "qualitatively).")
SERVICE = "80a0"
FILE_SIZE = 3 * 1024 * 1024
CLIENTS = 4
IN_FLIGHT = 20
ROUTER = "10.6.0.254"
# Between a drained instance going idle and its nginx closing (see below).
SETTLE_S = 2


def build(lab):
    clients = [lab.netns(f"c{i + 1}") for i in range(CLIENTS)]
    servers = [lab.netns(f"s{i + 1}") for i in range(5)]
    router = lab.netns("r")
    members = [(router, "eth0", f"{ROUTER}/24")]
    members += [(ns, "eth0", f"10.6.0.{i + 1}/24") for i, ns in enumerate(clients)]
    members += [(ns, "eth0", f"10.6.0.{i + 11}/24") for i, ns in enumerate(servers)]
    lab.lan(members)
    r = Host(lab, router, "r", ["eth0"], forward=True)
    r.servd("--router", "--listen", f"{ROUTER}:54326")
    hosts = []
    for ns, _, cidr in members[1:]:
        h = Host(lab, ns, ns.label, ["eth0"])
        h.servd("--upstream", f"{ROUTER}:54326", "--listen", f"{cidr.split('/')[0]}:54326")
        hosts.append(h)
    return r, hosts[:CLIENTS], hosts[CLIENTS:]


def announced(router, count):
    """Whether the router has `count` FORWARD targets for the service."""
    try:
        rules = router.ctl_json("services")
    except Exception:  # noqa: BLE001 - not up yet
        return False
    text = str(rules)
    return text.count("announced") >= count


def run(ctx):
    unit = 10 if ctx.quick else 60
    end = 4 * unit
    failures, notes, events = [], [], []
    with Lab("webservice", ctx.workdir) as lab:
        router, clients, servers = build(lab)
        root, path = content(lab, FILE_SIZE)
        instances = {}

        def start(i):
            instances[f"s{i + 1}"] = Nginx(servers[i], f"s{i + 1}", root, SERVICE)

        start(0)
        start(1)
        if not wait_until(lambda: announced(router, 2), 15, 0.2):
            failures.append(f"the first two instances were not announced to the router: {router.ctl('services').stdout}")
        clock = Schedule()
        t0 = clock.t0
        abs_ = []
        for i, c in enumerate(clients):
            abs_.append(c.serval_run([(80, SERVICE)], "timeout", end + 60, "ab", "-v", 1, "-r", "-c", IN_FLIGHT, "-t", end,
                                     "-n", 10_000_000, "-s", 30, f"http://10.200.0.1{path}",
                                     log=lab.path(f"ab-c{i + 1}.log")))

        clock.at(unit)
        start(2)
        start(3)
        events.append((time.time() - t0, "s3, s4 join"))
        clock.at(2 * unit)
        events.append((time.time() - t0, "s1, s2 leave"))
        drain_wait = 60
        drains, drain_s = {}, {}
        drain_began = time.time()
        for i, name in ((0, "s1"), (1, "s2")):
            drains[name] = servers[i].ns.spawn(
                binary("servalctl"), "--control", servers[i].control, "service", "drain", SERVICE,
                "--wait", drain_wait, log=lab.path(f"drain-{name}.log"))
        leaving = {}
        for i, name in ((0, "s1"), (1, "s2")):
            code = drains[name].wait(drain_wait + 15)
            text = " ".join(drains[name].log_text().split())
            drain_s[name] = round(time.time() - drain_began, 3)
            if code == 0:
                notes.append(f"{name}: idle {drain_s[name]:.2f} s after the drain began ({text})")
            elif "wait ran out" in text:
                # Not a failure by itself: ab's count says whether closing
                # now costs a request.
                notes.append(f"{name}: still not idle {drain_wait} s after the drain began ({text}); closing anyway")
            else:
                failures.append(f"servalctl service drain on {name} failed (exit {code}): {text}")
        # sald has handed over everything it admitted, but serval-run's
        # preload takes flows from sald ahead of the program's accept():
        # give nginx a moment to accept what its listening socket holds.
        time.sleep(SETTLE_S)
        for name in ("s1", "s2"):
            instances[name].proc.send(signal.SIGQUIT)
            leaving[name] = time.time()
        for name in ("s1", "s2"):
            code = instances[name].proc.wait(60)
            if code is None:
                failures.append(f"{name} did not finish its requests and exit within 60 s of SIGQUIT")
            else:
                notes.append(f"{name}: SIGQUIT to exit {time.time() - leaving[name]:.2f} s (exit code {code})")
        time.sleep(1)
        drained_syns = {}
        for i, name in ((0, "s1"), (1, "s2")):
            try:
                drained_syns[name] = servers[i].ctl_json("stats")["host"].get("drained_syns")
            except Exception as e:  # noqa: BLE001 - a figure, not a check
                notes.append(f"no counters from sald on {name}: {e}")
            local = servers[i].ctl("services").stdout
            if SERVICE[:3] in local:
                failures.append(
                    f"nginx {name} exited but sald on {name} still lists the service 1 s later, so servd did not "
                    f"withdraw it and the router keeps sending new connections there: {' '.join(local.split())}")
            at_router = router.ctl("services").stdout
            if f"announced {name}" in at_router:
                failures.append(f"the router still forwards to {name} 1 s after it left: {' '.join(at_router.split())}")
        clock.at(3 * unit)
        start(4)
        events.append((time.time() - t0, "s5 joins"))
        for i, ab in enumerate(abs_):
            if ab.wait(end + 90 - (time.time() - t0)) is None:
                failures.append(f"ab on c{i + 1} did not finish")
        reports = [parse_ab(ab.log_text()) for ab in abs_]
        for i, (rep, ab) in enumerate(zip(reports, abs_)):
            if rep["aborted"]:
                failures.append(f"ab on c{i + 1} stopped early: {ab.log_text().strip()[-300:]}")
        logs = {name: inst.access_log() for name, inst in instances.items()}
        errors = {name: inst.error_log() for name, inst in instances.items()}
    # ab counts one failed request in several categories (a reset is a
    # receive error, a length error and an exception); count requests.
    failed_each = [r["failed_detail"].get("connect", 0) + max(list(r["failed_detail"].values())[1:] or [0])
                   + r["non_2xx"] for r in reports]
    failed = int(sum(failed_each))
    ok_requests = int(sum(r["complete"] - f for r, f in zip(reports, failed_each)))
    served = {name: sum(1 for (_, st, n) in log if st == 200 and n == FILE_SIZE) for name, log in logs.items()}
    # A response cut short while the run was going on (not by ab stopping at
    # its time limit) is a disturbed client even if ab did not count it.
    truncated = {name: sum(1 for (t, st, n) in log if n < FILE_SIZE and t - t0 < end - 2) for name, log in logs.items()}
    bin_s = 1 if ctx.quick else 2
    nbins = int(end / bin_s) + 1
    xs = [i * bin_s for i in range(nbins)]
    series = {}
    for name, log in logs.items():
        ys = [0.0] * nbins
        for t, _, n in log:
            b = int((t - t0) / bin_s)
            if 0 <= b < nbins:
                ys[b] += n * 8 / bin_s / 1e6
        series[f"{name} ({served[name]} requests)"] = (xs, ys)
    figures = {
        "requests_ok": ok_requests,
        "requests_failed": failed,
        "instances": served,
        "truncated_responses": truncated,
        "ab": [{k: v for k, v in r.items()} for r in reports],
        "clients": CLIENTS,
        "in_flight_per_client": IN_FLIGHT,
        "file_bytes": FILE_SIZE,
        "unit_s": unit,
        "events": events,
        "drain_to_idle_s": drain_s,
        "syns_dropped_while_draining": drained_syns,
        "mean_total_mbps": sum(n for log in logs.values() for (_, _, n) in log) * 8 / end / 1e6,
    }
    if failed:
        detail = [r["failed_detail"] for r in reports]
        failures.append(f"{failed} requests failed across graceful joins and leaves (ab: {detail})")
    if any(truncated.values()):
        failures.append(f"responses cut short before the end of the run: {truncated}")
    idle = [name for name, count in served.items() if count == 0]
    if idle:
        failures.append(f"instances that served nothing: {', '.join(idle)}")
    for name, text in errors.items():
        alerts = [line for line in text.splitlines() if "[alert]" in line or "[emerg]" in line]
        if alerts:
            notes.append(f"{name} error log: {alerts[0][:200]}")
    plot.lines(
        f"{ctx.outdir}/webservice.png",
        "Replicated web service: throughput per nginx instance",
        "time (s)", "throughput served (Mbit/s)", series, events=events, stacked=True,
        note=(f"{CLIENTS} ab clients x {IN_FLIGHT} requests in flight for a 3 MB file, one SAL flow per request, "
              f"service router + servd; {ok_requests} requests ok, {failed} failed. Paper timeline, 1 unit = {unit} s."),
    )
    return result(ctx, "webservice", "Replicated web service: instances join and leave", CLAIM, figures,
                 ok=ok_requests > 0, notes=notes, failures=failures,
                  headline=f"{ok_requests} requests ok, {failed} failed; served per instance {served}")
