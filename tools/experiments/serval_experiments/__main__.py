"""`python3 -m serval_experiments [--quick] [NAME...]`: runs the experiments
(all when no NAME), writes target/experiments/NAME.png, NAME.json and
report.md, and prints a summary. Exits non-zero when any experiment failed.
Normally started by `scripts/experiments`, which builds and installs first."""

import argparse
import importlib
import os
import shutil
import sys
import time
import traceback

from . import report
from .common import Context
from .netlab import Interrupted, install_signal_handlers, remove_orphans

NAMES = ["throughput", "router", "translator", "webservice", "memcached", "migration"]


def main():
    p = argparse.ArgumentParser(prog="scripts/experiments", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="shorten every phase (whole set under 10 minutes)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "target", "experiments"))
    p.add_argument("names", nargs="*", metavar="NAME", help=f"experiments to run: {', '.join(NAMES)}")
    args = p.parse_args()
    unknown = [n for n in args.names if n not in NAMES]
    if unknown:
        p.error(f"unknown experiment {', '.join(unknown)} (known: {', '.join(NAMES)})")
    if os.geteuid() != 0:
        sys.exit("experiments: needs root (network namespaces)")
    outdir = os.path.abspath(args.out)
    os.makedirs(outdir, exist_ok=True)
    workdir = os.path.join(outdir, "work")
    shutil.rmtree(workdir, ignore_errors=True)
    install_signal_handlers()
    remove_orphans()
    ctx = Context(args.quick, outdir, workdir)
    results = []
    started = time.monotonic()
    try:
        for name in args.names or NAMES:
            print(f"== {name}", flush=True)
            t0 = time.monotonic()
            ctx.workdir = os.path.join(workdir, name)
            try:
                res = importlib.import_module(f".{name}", __package__).run(ctx)
            except Interrupted:
                raise
            except Exception as e:  # noqa: BLE001 - one experiment's failure is reported, the others still run
                traceback.print_exc()
                res = {"name": name, "title": name, "paper_claim": "", "figures": {}, "ok": False,
                       "notes": [], "failures": [f"{type(e).__name__}: {e}"]}
            res["elapsed_s"] = time.monotonic() - t0
            results.append(res)
            status = "ok" if res["ok"] else "FAILED: " + "; ".join(res["failures"])
            print(f"   {name}: {status} ({res['elapsed_s']:.0f} s)", flush=True)
    except Interrupted as e:
        print(f"experiments: interrupted ({e}); everything was cleaned up", file=sys.stderr)
        sys.exit(130)
    finally:
        remove_orphans()
    elapsed = time.monotonic() - started
    report.write(ctx, results, elapsed)
    print()
    print(report.summary(results))
    print(f"\nreport: {os.path.join(outdir, 'report.md')} ({elapsed:.0f} s)")
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
