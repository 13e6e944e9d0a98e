"""PNG charts for benchmark reports (matplotlib, extra ``bench``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .latency import LatencyReport
    from .recall import RecallBenchReport


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("plots need matplotlib: pip install 'tiamat-hooks[bench]'") from exc
    return plt


def plot_recall(report: RecallBenchReport, path: Path) -> None:
    """Recall (overall and per category) against the token budget."""
    plt = _pyplot()
    budgets = [r.budget for r in report.results]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cat in report.results[0].recall:
        ys = [r.recall[cat] for r in report.results]
        ax.plot(budgets, ys, marker="o", linewidth=3 if cat == "overall" else 1, label=cat)
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_ylim(0, 1)
    ax.set_xlabel("token budget (cl100k)")
    ax.set_ylabel("evidence recall")
    ax.set_title(f"{report.dataset}: evidence recall by budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_latency(reports: list[LatencyReport], path: Path) -> None:
    """Recall p50/p95 (ms) against stored turns, one line pair per store."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for rep in reports:
        xs = [p.turns for p in rep.points]
        for q, style in (("p50", "-"), ("p95", "--")):
            ax.plot(
                xs,
                [p.recall_ms[q] for p in rep.points],
                style,
                marker="o",
                label=f"{rep.store} recall {q}",
            )
    ax.set_xscale("log")
    ax.set_xlabel("stored turns")
    ax.set_ylabel("recall latency (ms)")
    ax.set_title("Recall latency by store size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
