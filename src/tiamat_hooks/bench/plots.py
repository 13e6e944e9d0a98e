"""PNG charts for benchmark reports (matplotlib, extra ``bench``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
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
