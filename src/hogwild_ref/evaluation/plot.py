"""Accuracy against the forward-pass budget, one line per worker count (Spec §13.4).

Needs matplotlib (the ``eval`` extra: ``pip install 'hogwild_ref[eval]'``).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from .results import replace_file
from .summary import Cell, label

__all__ = ["plot_accuracy"]


def plot_accuracy(cells: list[Cell], out_stem: str | Path, title: str = "") -> list[Path]:
    """Write ``{out_stem}.png`` and ``{out_stem}.svg``; return their paths.

    Hogwild lines are solid (the 1-worker baseline in black), self-consistency lines dashed in the
    colour of the same worker count; the shaded bands are the 95% intervals of the summary. Points
    of different lines at one budget are dodged sideways by a few percent so that equal accuracies
    stay visible (the tick labels give the budgets).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("plotting needs matplotlib: pip install 'hogwild_ref[eval]' (or pip install matplotlib)") from exc
    series: dict[tuple[str, int], list[Cell]] = {}
    for c in cells:
        series.setdefault((c.method, c.workers), []).append(c)
    counts = sorted({w for _, w in series})
    palette = plt.get_cmap("tab10")
    colour = {w: ("black" if w == 1 else palette(i % 10)) for i, w in enumerate(counts)}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    budgets: set[int] = {c.budget for c in cells}
    ordered = sorted(series.items(), key=lambda kv: (kv[0][0] != "hogwild", kv[0][1]))
    spread = 0.025 * math.log2(max(budgets) / min(budgets)) if len(budgets) > 1 else 0.0
    for i, ((method, workers), cs) in enumerate(ordered):
        cs = sorted(cs, key=lambda c: c.budget)
        dodge = 2 ** (spread * (i - (len(ordered) - 1) / 2))
        x = [c.budget * dodge for c in cs]
        y = [c.accuracy for c in cs]
        style = "-" if method == "hogwild" else "--"
        marker = "o" if method == "hogwild" else "s"
        ax.plot(x, y, style, marker=marker, color=colour[workers], label=label(cs[0]), linewidth=1.6, markersize=6)
        ax.fill_between(x, [c.ci_low for c in cs], [c.ci_high for c in cs], color=colour[workers], alpha=0.10, linewidth=0)
    ticks = sorted(budgets)
    ax.set_xscale("log", base=2)
    ax.minorticks_off()
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("budget (sequential forward passes)")
    ax.set_ylabel("accuracy")
    n = max((c.n for c in cells), default=0)
    head = "\n".join(textwrap.wrap(title, 80))
    ax.set_title(head + (f"\n{n} problem-seed pairs per point; bands: 95% Wilson intervals" if n else ""), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".svg")]
    replace_file(paths[0], lambda tmp: fig.savefig(tmp, dpi=150, format="png"))  # whole or not at all (Spec §13.5)
    replace_file(paths[1], lambda tmp: fig.savefig(tmp, format="svg"))
    plt.close(fig)
    return paths
