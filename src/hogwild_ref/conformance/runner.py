"""The conformance runner: feed every vector to an adapter and compare (Spec §12.3, §12.5).

:func:`run` loads the vectors of the requested levels, calls the adapter's method of each level with
the vector's inputs only (never the expected tensors), and measures every output with the relative
error of Spec §10.1::

    err = max |out - expected| / max |expected|      (the absolute difference if max |expected| = 0)

over the entries that carry meaning (attention: real query slots; model: rows of workers that fed
tokens). A vector's error is its worst output's; it passes when that error is within the vector's
``tolerance`` (and, for the ``model`` level, every marked greedy token matches). An output of the
wrong shape, a missing output, a non-finite value or an exception fails the vector and is reported.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from .protocol import LEVELS
from .vectors import FORMAT, Vector, load_vector, vector_names

__all__ = ["Report", "VectorResult", "default_vectors_dir", "load_adapter", "relative_error", "run"]


class VectorMismatch(Exception):
    """An adapter output that cannot be compared (missing, wrong shape, not a tensor)."""


@dataclass
class VectorResult:
    """The outcome of one vector.

    Attributes:
        name, level: the vector.
        status: ``"passed"``, ``"failed"`` or ``"skipped"`` (the adapter lacks the level's method).
        max_abs_err: the worst relative error over the vector's outputs (Spec §10.1), or None
            when nothing was compared (skipped, or the adapter raised / returned a malformed output).
        tol: the vector's tolerance.
        errors: the error of every compared output, by output name (e.g. ``"out"``,
            ``"keys/cur_0"``, ``"rerotated"``, ``"logits"``, ``"tokens"`` — the last one counts
            mismatching marked tokens).
        message: why the vector failed or was skipped, if not simply by error > tolerance.
        seconds: wall time of the adapter call and the comparison.
    """

    name: str
    level: str
    status: str
    max_abs_err: float | None
    tol: float
    errors: dict[str, float] = field(default_factory=dict)
    message: str | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def worst(self) -> str | None:
        """Name of the output with the largest error."""
        finite = {k: v for k, v in self.errors.items() if k != "tokens"}
        return max(finite, key=lambda k: finite[k]) if finite else None

    def to_json_dict(self) -> dict[str, Any]:
        """The vector's entry of the ``--json`` output (Spec §12.5)."""
        err = self.max_abs_err if self.max_abs_err is not None and math.isfinite(self.max_abs_err) else None
        out: dict[str, Any] = {
            "name": self.name,
            "level": self.level,
            "passed": None if self.status == "skipped" else self.passed,
            "max_abs_err": err,
            "tol": self.tol,
        }
        if self.status == "skipped":
            out["skipped"] = True
        elif self.message is not None and not self.passed:
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
    def ok(self) -> bool:
        """No vector failed (skipped vectors do not fail a run)."""
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
        """``{"passed": n, "failed": m, "skipped": k, "vectors": [...]}`` (Spec §12.5)."""
        return {
            "passed": self.passed,
            "failed": self.failed,
            "skipped": self.skipped,
            "vectors": [r.to_json_dict() for r in self.results],
        }


# ---------------------------------------------------------------------- locating things
def default_vectors_dir(must_exist: bool = True) -> Path:
    """``spec/vectors/v1`` of the source checkout this package lives in.

    Raises FileNotFoundError (suggesting ``--vectors``) when the package does not run from a checkout:
    when the directory is missing, or with ``must_exist=False`` (for regeneration) when ``spec/`` is.
    """
    spec = Path(__file__).resolve().parents[3] / "spec"
    path = spec / "vectors" / FORMAT
    if not (path.is_dir() if must_exist else spec.is_dir()):
        raise FileNotFoundError(
            f"conformance vectors not found at {path} (hogwild_ref does not run from a source checkout); "
            "pass the vector directory with --vectors DIR (a copy of spec/vectors/v1 of the hogwild_ref repository)"
        )
    return path


def load_adapter(spec: str) -> Any:
    """Import ``module:factory`` and return ``factory()`` (Spec §12.3).

    The current directory is put on ``sys.path`` first (as ``python -m`` would), so an adapter module
    next to the caller needs no installation.
    """
    module_name, sep, factory_name = spec.partition(":")
    if not sep or not module_name or not factory_name:
        raise ValueError(f"--adapter must look like 'package.module:factory'; got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import adapter module {module_name!r}: {exc}") from exc
    factory = getattr(module, factory_name, None)
    if factory is None or not callable(factory):
        raise ValueError(f"module {module_name!r} has no callable {factory_name!r}")
    try:
        return factory()
    except Exception as exc:  # the adapter's own failure: a usage error of the runner (exit 2)
        raise ValueError(f"adapter factory {spec!r} raised {type(exc).__name__}: {exc}") from exc


# ---------------------------------------------------------------------- measures
def relative_error(out: Any, expected: Tensor, mask: Tensor | None = None) -> float:
    """Spec §10.1: ``max|out - expected| / max|expected|`` (absolute when ``max|expected| == 0``).

    ``mask`` (broadcastable to ``expected``'s leading dimensions) selects the entries that carry
    meaning. Raises :class:`VectorMismatch` when ``out`` is not a tensor of ``expected``'s shape.
    """
    if not isinstance(out, Tensor):
        raise VectorMismatch(f"expected a tensor, got {type(out).__name__}")
    if tuple(out.shape) != tuple(expected.shape):
        raise VectorMismatch(f"shape {tuple(out.shape)} != expected {tuple(expected.shape)}")
    a = out.detach().to("cpu", torch.float64)
    b = expected.to(torch.float64)
    if mask is not None:
        a, b = a[mask], b[mask]
    if b.numel() == 0:
        return 0.0
    diff = (a - b).abs()
    if not bool(torch.isfinite(diff).all()):
        return math.inf
    scale = float(b.abs().max())
    worst = float(diff.max())
    return worst / scale if scale > 0 else worst


# ---------------------------------------------------------------------- levels
class _Errors(dict):
    """Errors by output name; an output that cannot be compared gets ``inf`` and a note."""

    def __init__(self) -> None:
        super().__init__()
        self.notes: list[str] = []

    def measure(self, name: str, out: Any, expected: Tensor, mask: Tensor | None = None) -> None:
        try:
            self[name] = relative_error(out, expected, mask)
        except VectorMismatch as exc:
            self[name] = math.inf
            self.notes.append(f"{name}: {exc}")


def _check_rope(adapter: Any, vector: Vector) -> _Errors:
    t, inputs = vector.tensors, vector.meta["inputs"]
    got = adapter.rope(
        config=inputs["config"], convention=inputs["convention"],
        x=t["input/x"].clone(), positions=t["input/positions"].clone(),
        y=t["input/y"].clone(), deltas=t["input/deltas"].clone(),
    )
    errors = _Errors()
    for name in ("rotated", "rerotated"):
        errors.measure(name, _get(got, name), t[f"expected/{name}"])
    return errors


def _check_attention(adapter: Any, vector: Vector) -> _Errors:
    t, inputs = vector.tensors, vector.meta["inputs"]
    got = adapter.attention(
        layout=inputs["layout"], workers=int(inputs["workers"]), lengths=dict(inputs["lengths"]),
        table=inputs["table"], new_tokens=list(inputs["new_tokens"]), rope=inputs["rope"],
        scaling=float(inputs["scaling"]),
        q=t["input/q"].clone(), k=t["input/k"].clone(), v=t["input/v"].clone(),
        keys={k: x.clone() for k, x in vector.inputs("keys").items()},
        values={k: x.clone() for k, x in vector.inputs("values").items()},
    )
    errors = _Errors()
    expected_out = t["expected/out"]  # (W, Hq, n, D)
    n = expected_out.shape[2]
    real = torch.arange(n)[None, :] < torch.tensor(inputs["new_tokens"])[:, None]  # (W, n)
    out = _get(got, "out")
    if isinstance(out, Tensor) and tuple(out.shape) == tuple(expected_out.shape):
        # compare (W, n, Hq, D) so that the (W, n) mask selects the real query slots
        errors.measure("out", out.detach().cpu().transpose(1, 2), expected_out.transpose(1, 2), real)
    else:
        errors.measure("out", out, expected_out)  # records the mismatch
    for kind in ("keys", "values"):
        stored = _get(got, kind)
        for sid, expected in vector.expected(kind).items():
            errors.measure(f"{kind}/{sid}", _get(stored, sid, f"{kind}[{sid!r}]"), expected)
    return errors


def _check_model(adapter: Any, vector: Vector) -> _Errors:
    t, inputs = vector.tensors, vector.meta["inputs"]
    got = adapter.model(
        config=vector.meta["config"], weights={k: x.clone() for k, x in vector.inputs("weights").items()},
        layout=inputs["layout"], workers=int(inputs["workers"]), static=inputs["static"], ticks=inputs["ticks"],
    )
    errors = _Errors()
    expected = t["expected/logits"]  # (T, W, V)
    fed = torch.tensor([[len(f) > 0 for f in tick["feeds"]] for tick in inputs["ticks"]])
    errors.measure("logits", got, expected, fed)
    if errors["logits"] != math.inf:
        tokens = t["expected/tokens"]
        marked = tokens >= 0
        errors["tokens"] = float((got.detach().cpu().argmax(-1)[marked] != tokens[marked]).sum())
    return errors


def _get(container: Any, key: str, what: str | None = None) -> Any:
    if not isinstance(container, Mapping):
        raise VectorMismatch(f"the adapter returned {type(container).__name__}, expected a mapping with {key!r}")
    if key not in container:
        raise VectorMismatch(f"the adapter's result has no {what or repr(key)}")
    return container[key]


CHECKS: dict[str, Callable[[Any, Vector], _Errors]] = {
    "rope": _check_rope,
    "attention": _check_attention,
    "model": _check_model,
}


# ---------------------------------------------------------------------- run
def run_vector(adapter: Any, vector: Vector) -> VectorResult:
    """Run one vector against ``adapter`` (Spec §12.3, §12.5)."""
    name, level = vector.name, vector.level
    tol = float(vector.meta["tolerance"])
    if not callable(getattr(adapter, level, None)):
        return VectorResult(name, level, "skipped", None, tol, message=f"the adapter has no {level}() method")
    t0 = time.perf_counter()
    try:
        errors = CHECKS[level](adapter, vector)
    except VectorMismatch as exc:
        return VectorResult(name, level, "failed", None, tol, message=str(exc), seconds=time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 -- an adapter's exception fails only its vector (Spec §12.3)
        where = traceback.extract_tb(exc.__traceback__)[-1]
        message = f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"
        return VectorResult(name, level, "failed", None, tol, message=message, seconds=time.perf_counter() - t0)
    worst = max((v for k, v in errors.items() if k != "tokens"), default=0.0)
    ok = worst <= tol and errors.get("tokens", 0.0) == 0.0
    notes = list(errors.notes)
    if errors.get("tokens", 0.0):
        notes.append(f"{int(errors['tokens'])} greedy token(s) differ")
    return VectorResult(name, level, "passed" if ok else "failed", worst, tol, dict(errors),
                        "; ".join(notes) or None, time.perf_counter() - t0)


def run(adapter: Any, vectors_dir: Path | str | None = None, levels: Sequence[str] | None = None) -> Report:
    """Run every vector of ``levels`` (default: all) in ``vectors_dir`` (default: the checkout's) against ``adapter``."""
    directory = Path(vectors_dir) if vectors_dir is not None else default_vectors_dir()
    if not directory.is_dir():
        raise FileNotFoundError(f"vector directory {directory} does not exist; pass --vectors DIR")
    levels = list(levels) if levels else list(LEVELS)
    for level in levels:
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; choose from {', '.join(LEVELS)}")
    paths = [p for level in levels for p in vector_names(directory, level)]
    if not paths:
        raise FileNotFoundError(f"no vectors for level(s) {', '.join(levels)} under {directory}")
    results = []
    for path in paths:
        vector = load_vector(path)
        if vector.level != path.parent.name:
            raise ValueError(f"{path}: level {vector.level!r} does not match its directory")
        results.append(run_vector(adapter, vector))
    return Report(results, directory)
