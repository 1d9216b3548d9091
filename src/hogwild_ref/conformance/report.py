"""Results of a conformance run: per output, per vector, per run (Spec §12.5).

A vector's ``status`` is one of :data:`STATUSES`: ``passed``, ``failed``, ``out_of_scope`` (a level the
adapter does not implement, or outside its declared scope, Spec §12.3), ``skipped`` (the adapter
refused that one vector with a reason) or ``not_run`` (the adapter process was gone, Spec §12.7).
Only ``failed`` fails a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .vectors import SPEC_VERSION

__all__ = ["STATUSES", "OutputResult", "Report", "VectorMismatch", "VectorResult", "VersionError"]

#: the statuses of a vector (Spec §12.5)
STATUSES = ("passed", "failed", "out_of_scope", "skipped", "not_run")


class VectorMismatch(Exception):
    """An adapter output that cannot be compared (missing, wrong shape, not a tensor)."""


class VersionError(ValueError):
    """A vector of another format version than this runner reads (Spec §12.2)."""


@dataclass
class OutputResult:
    """The comparison of one output (Spec §12.5).

    Attributes:
        err: the error of Spec §10.1 (for position-dependent tolerances: at the row closest to
            failing), or None when the output could not be compared.
        tol: the tolerance that ``err`` is held to (for rope outputs: that row's bound, §10.4).
        shape, expected_shape: the returned and the expected shape (``shape`` None if not a tensor).
        message: why the output could not be compared (missing, wrong shape, not finite).
        mismatches: ``tokens`` only: marked greedy tokens that differ.
    """

    err: float | None
    tol: float
    shape: list[int] | None = None
    expected_shape: list[int] | None = None
    message: str | None = None
    mismatches: int | None = None

    @property
    def ratio(self) -> float | None:
        """``err / tol`` (a pass needs ``<= 1``); inf for an output that could not be compared."""
        if self.mismatches is not None:
            return math.inf if self.mismatches else 0.0
        if self.err is None or not math.isfinite(self.err):
            return math.inf
        return self.err / self.tol

    @property
    def ok(self) -> bool:
        return self.ratio is not None and self.ratio <= 1.0

    def to_json_dict(self) -> dict[str, Any]:
        ratio = self.ratio
        out: dict[str, Any] = {"passed": self.ok, "err": _finite(self.err), "tol": self.tol,
                               "ratio": ratio if ratio is not None and math.isfinite(ratio) else None,
                               "shape": self.shape, "expected_shape": self.expected_shape}
        if self.mismatches is not None:
            out["mismatches"] = self.mismatches
        if self.message is not None:
            out["error"] = self.message
        return out


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


@dataclass
class VectorResult:
    """The outcome of one vector.

    Attributes:
        name, level: the vector.
        status: one of :data:`STATUSES`.
        max_abs_err: the error of the output closest to failing (Spec §10.1), or None when nothing
            was compared (skipped, or the adapter raised).
        tol: the tolerance that error is held to.
        outputs: every output's comparison, by output name (``"out"``, ``"keys/cur_0"``,
            ``"rerotated"``, ``"logits"``, ``"tokens"``...).
        failure: why a failed vector failed: ``"raised"`` (the adapter raised or returned nothing
            usable), ``"mismatch"`` (an output missing or of the wrong shape), ``"numeric"`` (an error
            above its tolerance), ``"tokens"`` (greedy tokens differ); None when it passed.
        message: the adapter's exception, or the notes on mismatched outputs.
        seconds: wall time of the adapter call and the comparison.
    """

    name: str
    level: str
    status: str
    max_abs_err: float | None
    tol: float
    outputs: dict[str, OutputResult] = field(default_factory=dict)
    failure: str | None = None
    message: str | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def errors(self) -> dict[str, float]:
        """Error per output (inf for one that could not be compared; ``tokens``: mismatches)."""
        out = {}
        for k, o in self.outputs.items():
            if o.mismatches is not None:
                out[k] = float(o.mismatches)
            else:
                out[k] = o.err if o.err is not None else math.inf
        return out

    @property
    def ratio(self) -> float | None:
        """The worst ``err / tol`` over the outputs (None when nothing was compared)."""
        ratios = [o.ratio for o in self.outputs.values() if o.ratio is not None]
        return max(ratios) if ratios else None

    @property
    def worst(self) -> str | None:
        """Name of the output closest to failing (largest ``err / tol``)."""
        cand = {k: o.ratio for k, o in self.outputs.items() if k != "tokens" and o.ratio is not None}
        return max(cand, key=lambda k: cand[k]) if cand else None

    def to_json_dict(self) -> dict[str, Any]:
        """The vector's entry of the ``--json`` output (Spec §12.5)."""
        ratio = self.ratio
        out: dict[str, Any] = {
            "name": self.name,
            "level": self.level,
            "status": self.status,
            "passed": self.passed if self.status in ("passed", "failed") else None,
            "max_abs_err": _finite(self.max_abs_err),
            "tol": self.tol,
            "ratio": ratio if ratio is not None and math.isfinite(ratio) else None,
            "failure": self.failure,
            "outputs": {k: o.to_json_dict() for k, o in self.outputs.items()},
        }
        if self.status not in ("passed", "failed"):
            out[self.status] = True
        if self.message is not None and self.status != "passed":
            out["error"] = self.message
        return out


@dataclass
class Report:
    """All results of one run, in run order (levels in Spec §12.1 order, vectors by name)."""

    results: list[VectorResult]
    vectors_dir: Path | None = None

    @property
    def passed(self) -> int:
        return sum(r.status == "passed" for r in self.results)

    @property
    def failed(self) -> int:
        return sum(r.status == "failed" for r in self.results)

    @property
    def skipped(self) -> int:
        return sum(r.status == "skipped" for r in self.results)

    @property
    def out_of_scope(self) -> int:
        return sum(r.status == "out_of_scope" for r in self.results)

    @property
    def not_run(self) -> int:
        return sum(r.status == "not_run" for r in self.results)

    @property
    def ok(self) -> bool:
        """No vector failed (out-of-scope, skipped and not-run vectors do not fail a run by themselves)."""
        return self.failed == 0

    def __getitem__(self, name: str) -> VectorResult:
        """The result of vector ``name`` (or ``"level/name"`` when names repeat across levels)."""
        for r in self.results:
            if name in (r.name, f"{r.level}/{r.name}"):
                return r
        raise KeyError(name)

    def names(self, status: str, level: str | None = None) -> set[str]:
        """Names of the vectors with ``status`` (optionally of one level)."""
        return {r.name for r in self.results if r.status == status and (level is None or r.level == level)}

    def to_json_dict(self) -> dict[str, Any]:
        """``{"version", "passed", "failed", "out_of_scope", "skipped", "not_run", "vectors": [...]}`` (Spec §12.5)."""
        return {
            "version": SPEC_VERSION,
            "passed": self.passed,
            "failed": self.failed,
            "out_of_scope": self.out_of_scope,
            "skipped": self.skipped,
            "not_run": self.not_run,
            "vectors": [r.to_json_dict() for r in self.results],
        }


