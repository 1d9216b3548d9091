"""Accuracy per method x workers x budget with confidence intervals (Spec §13.4).

The accuracy of a cell is the fraction of its rows (problems x seeds) that are correct; a row that
crashed counts as wrong and is also counted in ``errors``; the mean ticks, tokens and seconds are over
the rows that did not crash (a crashed row records none; a cell whose rows all crashed has none: None). The interval is the Wilson score interval
at 95% over those rows. Rows of one problem with different seeds are not independent, so with several
seeds the interval is somewhat optimistic; with one seed it is the usual binomial interval over problems.

Throughput (:func:`throughput`) is per (method, workers), over units (problem x seed) that ran without
an error, since one run serves every budget: each unit's wall time (its share of its batch's) and the
tokens it generated, as the row of its largest budget records them (``unit_seconds``, ``unit_tokens``:
a row kept from an earlier, shorter run of the unit records that run's).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable

__all__ = ["Cell", "Throughput", "format_markdown", "format_throughput", "label", "summarise", "throughput",
           "wilson_interval"]

Z95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``correct`` successes out of ``n`` (``(0, 1)`` for ``n = 0``)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Cell:
    """One line of the summary."""

    method: str
    workers: int
    budget: int
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    errors: int
    baseline: float | None  # accuracy of the 1-worker Hogwild run at this budget
    mean_ticks: float | None  # None when every row of the cell crashed
    mean_tokens: float | None  # tokens sampled per row, all workers (samples) together
    mean_seconds: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


METHOD_ORDER = {"hogwild": 0, "self_consistency": 1}


def summarise(rows: Iterable[dict[str, Any]]) -> list[Cell]:
    """Group ``rows`` by (method, workers, budget) into :class:`Cell` lines, sorted."""
    groups: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], int(r["workers"]), int(r["budget"])), []).append(r)
    base = {}
    for (method, workers, budget), rs in groups.items():
        if method == "hogwild" and workers == 1:
            base[budget] = sum(bool(r["correct"]) for r in rs) / len(rs)
    cells = []
    for (method, workers, budget), rs in groups.items():
        n = len(rs)
        k = sum(bool(r["correct"]) for r in rs)
        lo, hi = wilson_interval(k, n)
        ran = [r for r in rs if not r.get("error")]  # the means are over rows that ran to an answer
        cells.append(Cell(
            method=method,
            workers=workers,
            budget=budget,
            n=n,
            correct=k,
            accuracy=k / n,
            ci_low=lo,
            ci_high=hi,
            errors=sum(bool(r.get("error")) for r in rs),
            baseline=base.get(budget),
            mean_ticks=sum(r.get("ticks") or 0 for r in ran) / len(ran) if ran else None,
            mean_tokens=sum(sum(r.get("tokens_per_worker") or []) for r in ran) / len(ran) if ran else None,
            mean_seconds=sum(r.get("seconds") or 0.0 for r in ran) / len(ran) if ran else None,
        ))
    return sorted(cells, key=lambda c: (METHOD_ORDER.get(c.method, 9), c.method, c.workers, c.budget))


def label(c: Cell | Throughput) -> str:
    if c.method == "hogwild":
        return "Hogwild, 1 worker (baseline)" if c.workers == 1 else f"Hogwild, {c.workers} workers"
    if c.method == "self_consistency":
        return f"self-consistency, {c.workers} samples"
    return f"{c.method}, {c.workers}"


def format_markdown(cells: list[Cell]) -> str:
    """The summary as a Markdown table."""
    head = ("| method | budget | n | accuracy | 95% CI | 1-worker baseline | errors | mean ticks | mean tokens | mean s |\n"
            "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|\n")
    lines = []
    for c in cells:
        base = "-" if c.baseline is None else f"{c.baseline:.3f}"
        means = [_number(c.mean_ticks, 1), _number(c.mean_tokens, 1), _number(c.mean_seconds, 2)]
        lines.append(f"| {label(c)} | {c.budget} | {c.n} | {c.accuracy:.3f} | [{c.ci_low:.3f}, {c.ci_high:.3f}] | {base} | "
                     f"{c.errors} | {' | '.join(means)} |")
    return head + "\n".join(lines) + "\n"




@dataclass(frozen=True)
class Throughput:
    """How fast one (method, workers) ran: ``units`` (problem x seed) in ``seconds`` of wall time,
    generating ``tokens`` (all workers or samples, and the finisher)."""

    method: str
    workers: int
    units: int
    seconds: float
    tokens: int
    problems_per_hour: float
    tokens_per_second: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def throughput(rows: Iterable[dict[str, Any]]) -> list[Throughput]:
    """Problems/hour and tokens/s for each (method, workers), from the ``unit_seconds`` and
    ``unit_tokens`` of each unit's row of the largest budget (counted once per unit; rows that
    crashed, whose work produced nothing, and rows without them are left out)."""
    units: dict[tuple[str, int], dict[tuple[str, int], tuple[int, float, int]]] = {}
    for r in rows:
        if r.get("unit_seconds") is None or r.get("error"):
            continue
        unit = units.setdefault((r["method"], int(r["workers"])), {})
        key, budget = (str(r["problem_id"]), int(r["seed"])), int(r["budget"])
        if key not in unit or budget > unit[key][0]:
            unit[key] = (budget, float(r["unit_seconds"]), int(r.get("unit_tokens") or 0))
    out = []
    for (method, workers), us in units.items():
        seconds = sum(s for _, s, _ in us.values())
        tokens = sum(t for _, _, t in us.values())
        out.append(Throughput(method, workers, len(us), seconds, tokens,
                              problems_per_hour=len(us) * 3600 / seconds if seconds > 0 else 0.0,
                              tokens_per_second=tokens / seconds if seconds > 0 else 0.0))
    return sorted(out, key=lambda t: (METHOD_ORDER.get(t.method, 9), t.method, t.workers))


def format_throughput(rows: list[Throughput]) -> str:
    """Throughput as a Markdown table (empty when no row recorded its wall time)."""
    if not rows:
        return ""
    head = ("| method | units | wall s | problems/hour | tokens | tokens/s |\n"
            "|---|---:|---:|---:|---:|---:|\n")
    lines = [f"| {label(t)} | {t.units} | {t.seconds:.1f} | {t.problems_per_hour:.1f} | {t.tokens} | "
             f"{t.tokens_per_second:.1f} |" for t in rows]
    return head + "\n".join(lines) + "\n"
