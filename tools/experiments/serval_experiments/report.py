"""report.md and the summary table: each experiment's figures next to the
paper's claim."""

import os

PAPER_NOTE = (
    "The paper's claims are quoted qualitatively (Nordström et al., *Serval: An "
    "End-Host Stack for Service-Centric Networking*, NSDI 2012); its exact numbers "
    "come from a kernel prototype on 2012 hardware and are not comparable with a "
    "user-space stack in network namespaces on a shared 2-core machine."
)


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        return f"{len(value)} values"
    return str(value)


def write(ctx, results, elapsed):
    lines = [
        "# Serval evaluation, reproduced",
        "",
        f"Run: `scripts/experiments{' --quick' if ctx.quick else ''}`, {elapsed:.0f} s in all. {PAPER_NOTE}",
        "",
        "| experiment | result | seconds |",
        "| --- | --- | --- |",
    ]
    for r in results:
        lines.append(f"| [{r['name']}](#{r['name']}) | {'ok' if r['ok'] else '**FAILED**'} | {r.get('elapsed_s', 0):.0f} |")
    for r in results:
        lines += ["", f"## {r['name']}", "", f"**{r['title']}**", "", f"Paper: {r['paper_claim']}", ""]
        if os.path.exists(os.path.join(ctx.outdir, f"{r['name']}.png")):
            lines += [f"![{r['name']}]({r['name']}.png)", ""]
        lines += ["| figure | value |", "| --- | --- |"]
        for key, value in r["figures"].items():
            if isinstance(value, list):
                continue
            lines.append(f"| {key} | {_fmt(value)} |")
        for note in r["notes"]:
            lines += ["", f"- {note}"]
        for failure in r["failures"]:
            lines += ["", f"- **FAILED**: {failure}"]
    with open(os.path.join(ctx.outdir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def summary(results):
    rows = [("experiment", "result", "s", "headline")]
    for r in results:
        rows.append((r["name"], "ok" if r["ok"] else "FAILED", f"{r.get('elapsed_s', 0):.0f}", r.get("headline", "")))
    width = [max(len(row[i]) for row in rows) for i in range(3)]
    out = []
    for row in rows:
        out.append("  ".join(row[i].ljust(width[i]) for i in range(3)) + "  " + row[3])
    return "\n".join(out)
