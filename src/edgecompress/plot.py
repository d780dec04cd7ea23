"""Plots of a report: accuracy against size and against latency, per stage and per format."""

from __future__ import annotations

from pathlib import Path

from ._extras import require
from .report import Report


def plot_report(report: Report, path: str | Path, title: str = "edgecompress") -> Path:
    """Write a PNG with accuracy vs size and accuracy vs latency (needs the ``plot`` extra)."""
    matplotlib = require("matplotlib", "plot", "Plotting the report")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    stages = [s for s in report.stages if s.accuracy is not None and not s.error]
    arts = [a for a in report.artifacts if a.accuracy is not None]
    for ax, key, label in ((axes[0], "size", "size on disk (MB)"),
                           (axes[1], "latency", "p50 latency (ms, batch 1)")):
        xs = [(s.size_bytes or 0) / 1e6 if key == "size" else s.latency_ms for s in stages]
        pts = [(x, 100 * s.accuracy, s.stage) for x, s in zip(xs, stages) if x is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="tab:blue",
                    label="pipeline stages (torch)")
            for x, y, name in pts:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for a in arts:
            x = a.size_bytes / 1e6 if key == "size" else a.latency_ms
            if x is None:
                continue
            ax.scatter([x], [100 * a.accuracy], marker="s", s=40, label=f"{a.format} {a.precision}")
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
    uniq = {}  # from both panels: without latencies (not measured) the right one is empty
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        uniq.update(zip(labels, handles))
    if uniq:
        fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=min(5, len(uniq)), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
