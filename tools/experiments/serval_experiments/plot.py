"""The figures: every plot is titled, has labelled axes with units and a
legend, and says in a footnote what was measured and how long."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _finish(fig, ax, path, note):
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="#555555", ha="left", va="bottom", wrap=True)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, alpha=0.3)
    fig.tight_layout(rect=(0, 0.05 if note else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bars(path, title, ylabel, groups, series, note=None):
    """Grouped bars: `series` maps a label to one value per group (None: no bar)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    n = len(series)
    width = 0.8 / max(n, 1)
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        pts = [(x, v) for x, v in zip(xs, values) if v is not None]
        rects = ax.bar([p[0] for p in pts], [p[1] for p in pts], width, label=label)
        ax.bar_label(rects, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _finish(fig, ax, path, note)


def lines(path, title, xlabel, ylabel, series, events=(), shade=(), note=None, ylog=False, stacked=False):
    """Time series: `series` maps a label to (xs, ys). `events` are (x, text)
    vertical markers, `shade` (x0, x1, text) spans."""
    fig, ax = plt.subplots(figsize=(9, 4.8))
    if stacked and series:
        labels = list(series)
        xs = series[labels[0]][0]
        ax.stackplot(xs, *[series[lbl][1] for lbl in labels], labels=labels, alpha=0.85)
    else:
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys, label=label, linewidth=1.4)
    for x0, x1, text in shade:
        ax.axvspan(x0, x1, color="#d62728", alpha=0.12, label=text)
    top = ax.get_ylim()[1]
    for x, text in events:
        ax.axvline(x, color="#444444", linestyle="--", linewidth=0.9)
        ax.text(x, top * 0.98, " " + text, rotation=90, va="top", ha="left", fontsize=7, color="#444444")
    if ylog:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(bottom=0 if not ylog else None)
    _finish(fig, ax, path, note)


def cdf(path, title, xlabel, series, note=None):
    """Empirical CDFs: `series` maps a label to a list of samples."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, samples in series.items():
        xs = sorted(samples)
        if not xs:
            continue
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of connections")
    ax.set_title(title)
    ax.set_ylim(0, 1.02)
    _finish(fig, ax, path, note)
