"""`throughput`: application-to-application Gbit/s over the SAL (iperf3
through the shim, inet mode: sald at both ends) next to kernel TCP on the
same veth pair and the TUN-forwarder ceiling, 1 and 4 flows."""

import re

from . import plot
from .common import bound, iperf, pair, result
from .netlab import Lab
from .stack import binary

CLAIM = ("The kernel prototype's SAL adds little to TCP: throughput close to "
         "native TCP (the paper's Table 3, qualitatively).")


def tun_ceiling(ctx, seconds):
    from .netlab import run

    proc = run([binary("tun-forwarder"), "--seconds", str(seconds), "--txqueuelen", "4096"],
               check=False, timeout=seconds * 3 + 60)
    m = re.search(r"TUN forwarder \(user space, 1 copy\)\s+([\d.]+) Gbit/s", proc.stdout)
    return (float(m.group(1)), None) if m else (None, f"tun-forwarder: {proc.stderr.strip()[-300:]}")


def run(ctx):
    seconds = ctx.seconds(10, 3)
    failures = []
    ceiling, err = tun_ceiling(ctx, seconds)
    if err:
        failures.append(err)
    figures = {"seconds_per_run": seconds, "tun_forwarder_gbps": ceiling}
    with Lab("throughput", ctx.workdir) as lab:
        a, b, addr = pair(lab)
        shim = lambda host: ([binary("serval-run"), "--map", "5201=be0c4", "--"], host.env)  # noqa: E731
        for flows in (1, 4):
            k, err = iperf(a.ns, b.ns, addr, 5201, flows, seconds)
            figures[f"kernel_tcp_{flows}_gbps"] = k
            if err:
                failures.append(f"kernel TCP, {flows} flows: {err}")
            (cw, ce), (sw, se) = shim(a), shim(b)
            s, err = iperf(a.ns, b.ns, "10.200.0.1", 5201, flows, seconds, client_wrap=cw, server_wrap=sw,
                           client_env=ce, server_env=se, log=lab.path(f"iperf-sal-{flows}.log"),
                           ready=lambda: bound(b, "be0c4"))
            figures[f"sal_{flows}_gbps"] = s
            if err:
                failures.append(f"SAL, {flows} flows: {err}")
            if k and s:
                figures[f"sal_over_kernel_{flows}"] = s / k
            if ceiling and s:
                figures[f"sal_over_tun_ceiling_{flows}"] = s / ceiling
    plot.bars(
        f"{ctx.outdir}/throughput.png",
        "Throughput: SAL vs kernel TCP (veth pair, MTU 1500)",
        "goodput (Gbit/s)",
        ["1 flow", "4 flows"],
        {
            "kernel TCP (iperf3)": [figures.get("kernel_tcp_1_gbps"), figures.get("kernel_tcp_4_gbps")],
            "SAL: iperf3 via shim + sald": [figures.get("sal_1_gbps"), figures.get("sal_4_gbps")],
            "TUN-forwarder ceiling": [ceiling, None],
        },
        note=f"iperf3, {seconds} s per run, same run and machine; ceiling = kernel TCP through a plain user-space TUN-to-TUN forwarder (1 copy per packet).",
    )
    return result(ctx, "throughput", "Throughput: SAL vs kernel TCP vs TUN ceiling", CLAIM, figures,
                 ok=all(figures.get(k) for k in ("kernel_tcp_1_gbps", "sal_1_gbps", "sal_4_gbps")),
                 failures=failures,
                  headline=(f"1 flow: SAL {figures.get('sal_1_gbps') or 0:.2f}, kernel {figures.get('kernel_tcp_1_gbps') or 0:.2f}, "
                       f"TUN ceiling {ceiling or 0:.2f} Gbit/s (SAL/ceiling x{figures.get('sal_over_tun_ceiling_1') or 0:.2f}); "
                       f"4 flows: SAL {figures.get('sal_4_gbps') or 0:.2f} Gbit/s "
                       f"(x{figures.get('sal_over_tun_ceiling_4') or 0:.2f})"))
