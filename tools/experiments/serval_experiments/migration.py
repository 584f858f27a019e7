"""`migration`: goodput over time of one transfer from a dual-homed client
("phone": wifi and cell, both through a kernel router to the server) while
wifi goes down and comes back; sald (svcat to svcat, automatic migration)
next to Linux MPTCP (a plain MPTCP socket pair, the second subflow on cell)
on the same topology, as in sald's migration bench."""

import shlex
import time

from . import plot
from .common import Schedule, TOOLS_DIR, flowtool, result
from .netlab import Lab
from .stack import Host, binary

CLAIM = ("A connection survives the loss of its interface: the flow moves to "
         "the other interface and the transfer goes on (the paper's migration "
         "experiment, qualitatively).")
SERVER = "10.8.2.2"


def build(lab):
    phone, net, srv = lab.netns("phone"), lab.netns("net"), lab.netns("srv")
    lab.veth(phone, "wifi", "10.8.0.1/24", net, "p0", "10.8.0.2/24")
    lab.veth(phone, "cell", "10.8.1.1/24", net, "p1", "10.8.1.2/24")
    lab.veth(srv, "eth0", f"{SERVER}/24", net, "p2", "10.8.2.1/24")
    net.sysctl("net.ipv4.ip_forward", 1)
    phone.ip("route", "add", "default", "via", "10.8.0.2", "metric", "100")
    phone.ip("route", "add", "default", "via", "10.8.1.2", "metric", "200")
    srv.ip("route", "add", "default", "via", "10.8.2.1")
    return phone, net, srv


def load(path):
    import json

    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def timeline(phone, cut_at, back_at, t0, while_down=lambda: None):
    """Takes wifi down at cut_at and up again at back_at (seconds after t0);
    calls `while_down` just before wifi comes back."""
    clock = Schedule()
    clock.t0 = t0
    clock.at(cut_at)
    phone.ip("link", "set", "wifi", "down")
    clock.at(back_at - 0.3)
    while_down()
    clock.at(back_at)
    phone.ip("link", "set", "wifi", "up")
    phone.ip("route", "replace", "default", "via", "10.8.0.2", "metric", "100", check=False)


def run(ctx):
    total = 12 if ctx.quick else 30
    cut_at, back_at = total * 0.3, total * 0.6
    failures, notes, series, figures = [], [], {}, {"seconds": total, "wifi_down_s": cut_at, "wifi_up_s": back_at}
    with Lab("migration", ctx.workdir) as lab:
        phone, net, srv = build(lab)
        # sald: svcat to svcat, wifi cut mid-transfer.
        hp = Host(lab, phone, "phone", ["wifi", "cell"])
        hs = Host(lab, srv, "srv", ["eth0"])
        hp.ctl("service", "add", "0/0", "forward", SERVER)
        out = lab.path("sald-sink.json")
        sink = " ".join(map(shlex.quote, flowtool("sink", "--seconds", total + 10, "--out", out)))
        rx = hs.spawn("sh", "-c", f"{shlex.quote(binary('svcat'))} listen b16 | {sink}", log=lab.path("sald-rx.log"),
                      env={"PYTHONPATH": TOOLS_DIR}, cwd=TOOLS_DIR)
        time.sleep(0.5)
        t0 = time.time()
        tx = hp.spawn("sh", "-c", f"timeout {total} cat /dev/zero | {shlex.quote(binary('svcat'))} connect b16",
                      log=lab.path("sald-tx.log"))
        seen = {}
        timeline(phone, cut_at, back_at, t0, lambda: seen.update(flows=hp.ctl("flows").stdout))
        tx.wait(total + 20)
        rx.wait(15)
        flows = seen.get("flows", "")
        sald = load(out)
        # MPTCP on the same topology.
        for ns in (phone, srv):
            ns.sysctl("net.mptcp.enabled", 1)
            ns.ip("mptcp", "limits", "set", "subflow", 2, "add_addr_accepted", 2, check=False)
        phone.ip("mptcp", "endpoint", "add", "10.8.1.1", "dev", "cell", "subflow", check=False)
        out2 = lab.path("mptcp-sink.json")
        rx2 = srv.spawn(*flowtool("sink", "--listen", f"{SERVER}:5500", "--mptcp", "--seconds", total + 10, "--out", out2),
                        env={"PYTHONPATH": TOOLS_DIR}, cwd=TOOLS_DIR, log=lab.path("mptcp-rx.log"))
        time.sleep(0.5)
        t1 = time.time()
        tx2 = phone.spawn(*flowtool("source", "--connect", f"{SERVER}:5500", "--mptcp", "--seconds", total),
                          env={"PYTHONPATH": TOOLS_DIR}, cwd=TOOLS_DIR, log=lab.path("mptcp-tx.log"))
        timeline(phone, cut_at, back_at, t1)
        tx2.wait(total + 20)
        rx2.wait(15)
        mptcp = load(out2)
        if mptcp is None:
            notes.append(f"Linux MPTCP unavailable or failed: {rx2.log_text()[-200:]} {tx2.log_text()[-200:]}")
    for label, data, start in (("sald (svcat, auto-migration)", sald, t0), ("Linux MPTCP (2 subflows)", mptcp, t1)):
        if not data or not data["series"]:
            if label.startswith("sald"):
                failures.append("the sald transfer delivered nothing")
            continue
        offset = data["first_byte_wall"] - start
        xs = [offset + i * data["bin_s"] for i in range(len(data["series"]))]
        ys = [b * 8 / data["bin_s"] / 1e6 for b in data["series"]]
        series[label] = (xs, ys)
        key = "sald" if label.startswith("sald") else "mptcp"
        # The longest run of (nearly) empty bins after the cut: the data gap.
        pre = [b for x, b in zip(xs, data["series"]) if 0.5 < x < cut_at]
        floor = 0.05 * sum(pre) / len(pre) if pre else 0
        gap = longest = 0
        for x, b in zip(xs, data["series"]):
            if x >= cut_at:
                gap = gap + 1 if b <= floor else 0
                longest = max(longest, gap)
        figures[f"{key}_gap_s"] = longest * data["bin_s"]
        figures[f"{key}_mbytes"] = data["bytes"] / 1e6
        after = [y for x, y in zip(xs, ys) if x > cut_at + 1 and x < back_at]
        figures[f"{key}_mbps_while_wifi_down"] = sum(after) / len(after) if after else 0
        before = [y for x, y in zip(xs, ys) if 0.5 < x < cut_at]
        figures[f"{key}_mbps_before_cut"] = sum(before) / len(before) if before else 0
    figures["sald_flows_while_wifi_down"] = " ".join(flows.split())[:400]
    if sald and "cell" not in flows:
        failures.append(f"the sald flow was not on cell while wifi was down: {' '.join(flows.split())[:300]}")
    if series.get("sald (svcat, auto-migration)") and not figures.get("sald_mbps_while_wifi_down"):
        failures.append("the sald transfer stopped when wifi went down")
    plot.lines(
        f"{ctx.outdir}/migration.png",
        "Migration: one transfer while wifi goes down and comes back",
        "time (s)", "goodput at the receiver (Mbit/s)", series,
        shade=[(cut_at, back_at, "wifi down (ip link set wifi down)")],
        note="phone (wifi + cell) -> kernel router -> server; 100 ms bins; gap = bins under 5% of the pre-cut mean; sald: svcat over sald with automatic "
             "migration; MPTCP: kernel MPTCP socket, second subflow on cell.",
    )
    return result(ctx, "migration", "Migration: goodput across an interface loss, sald vs MPTCP", CLAIM, figures,
                 ok=bool(series), notes=notes, failures=failures,
                  headline=(f"gap sald {figures.get('sald_gap_s', float('nan')):.1f} s, "
                       f"MPTCP {figures.get('mptcp_gap_s', float('nan')):.1f} s"))
