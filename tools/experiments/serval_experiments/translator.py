"""`translator`: iperf3 (unmodified) through svtrans and through the shim's
inet mode, next to native SAL streams (svcat) and kernel TCP, same veth
pair, one flow each."""

from . import plot
from .common import bound, iperf, iperf_client, pair, result, svcat_goodput, tcp_listening
from .netlab import Lab, wait_until
from .stack import binary

CLAIM = ("The TCP translator lets unmodified clients reach services at a "
         "modest cost compared with native Serval (the paper's translator "
         "evaluation, qualitatively).")


def run(ctx):
    seconds = ctx.seconds(10, 3)
    failures = []
    figures = {"seconds_per_run": seconds}
    with Lab("translator", ctx.workdir) as lab:
        a, b, addr = pair(lab)
        k, err = iperf(a.ns, b.ns, addr, 5201, 1, seconds)
        figures["kernel_tcp_gbps"] = k
        if err:
            failures.append(f"kernel TCP: {err}")
        run_ = [binary("serval-run"), "--map", "5201=be0c4", "--"]
        s, err = iperf(a.ns, b.ns, "10.200.0.1", 5201, 1, seconds, client_wrap=run_, server_wrap=run_,
                       client_env=a.env, server_env=b.env, log=lab.path("iperf-inet.log"),
                       ready=lambda: bound(b, "be0c4"))
        figures["inet_mode_gbps"] = s
        if err:
            failures.append(f"inet mode: {err}")
        egress = b.spawn(binary("svtrans"), "egress", "--service", "be0c5", "--to", "127.0.0.1:5202",
                         log=lab.path("egress.log"))
        ingress = a.spawn(binary("svtrans"), "ingress", "--listen", "127.0.0.1:5203", "--service", "be0c5",
                          log=lab.path("ingress.log"))
        server = b.ns.spawn("iperf3", "-s", "-B", "127.0.0.1", "-p", "5202", log=lab.path("iperf-trans-srv.log"))
        # All three up (a loaded machine starts them slowly) before the client.
        up = wait_until(lambda: tcp_listening(b.ns, 5202) and tcp_listening(a.ns, 5203) and bound(b, "be0c5"), 15, 0.1)
        if up:
            t, err = iperf_client(a.ns, "127.0.0.1", 5203, 1, seconds)
        else:
            t, err = None, "iperf3 -s, svtrans ingress or svtrans egress did not start within 15 s"
        figures["svtrans_gbps"] = t
        if err:
            failures.append(f"svtrans: {err}; egress log: {egress.log_text()[-200:]}; ingress log: {ingress.log_text()[-200:]}")
        for p in (server, ingress, egress):
            p.stop(2)
        n, err = svcat_goodput(lab, a, b, "be0c6", seconds)
        figures["native_sal_gbps"] = n
        if err:
            failures.append(f"native SAL stream: {err}")
    for key in ("inet_mode_gbps", "svtrans_gbps"):
        if figures.get(key) and figures.get("native_sal_gbps"):
            figures[key.replace("_gbps", "_over_native")] = figures[key] / figures["native_sal_gbps"]
        if figures.get(key) and figures.get("kernel_tcp_gbps"):
            figures[key.replace("_gbps", "_over_kernel")] = figures[key] / figures["kernel_tcp_gbps"]
    plot.bars(
        f"{ctx.outdir}/translator.png",
        "Translator: unmodified iperf3 reaching a service",
        "goodput (Gbit/s)",
        ["1 flow"],
        {
            "kernel TCP": [figures.get("kernel_tcp_gbps")],
            "native SAL stream (svcat)": [figures.get("native_sal_gbps")],
            "inet mode (serval-run, both ends)": [figures.get("inet_mode_gbps")],
            "svtrans ingress + egress": [figures.get("svtrans_gbps")],
        },
        note=f"veth pair, MTU 1500, {seconds} s per run; svtrans: iperf3 -> TCP -> svtrans ingress -> SAL -> svtrans egress -> TCP -> iperf3 -s.",
    )
    return result(ctx, "translator", "Translator: svtrans and inet mode vs native SAL vs kernel TCP", CLAIM, figures,
                 ok=all(figures.get(k) for k in ("kernel_tcp_gbps", "inet_mode_gbps", "svtrans_gbps", "native_sal_gbps")),
                 failures=failures,
                  headline=", ".join(f"{k.replace('_gbps', '')} {figures.get(k) or 0:.2f}" for k in
                                ("kernel_tcp_gbps", "native_sal_gbps", "inet_mode_gbps", "svtrans_gbps")) + " Gbit/s"
                  + f"; svtrans/native x{figures.get('svtrans_over_native') or 0:.2f}")

