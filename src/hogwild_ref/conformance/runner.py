"""The conformance runner: feed every vector to an adapter and compare (Spec §12.3, §12.5).

:func:`run` loads the vectors of the requested levels (refusing other format versions, Spec §12.2),
calls the adapter with each vector's inputs only (never the expected tensors) and measures **every
output on its own** with the relative error of Spec §10.1::

    err = max |out - expected| / max |expected|      (the absolute difference if max |expected| = 0)

over the entries that carry meaning (attention: real query slots; model: rows of workers that fed
tokens). ``rope`` outputs are measured per row against the position-dependent bound of Spec §10.4.
A vector passes when every output is within its tolerance (and, for the ``model`` level, every
marked greedy token matches). An output of the wrong shape, a missing output, a non-finite value
or an exception fails the vector; the other outputs are still measured and reported.

Adapters are in-process objects with one method per level, or anything with ``supported_levels``
and ``call_vector(vector, kwargs)`` — the out-of-process and offline adapters of
:mod:`~hogwild_ref.conformance.external` (Spec §12.7).
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
from .vectors import FORMAT, SPEC_VERSION, Vector, load_vector, vector_names

__all__ = ["OutputResult", "Report", "VectorResult", "VersionError", "default_vectors_dir", "load_adapter", "relative_error", "run"]


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
        status: ``"passed"``, ``"failed"`` or ``"skipped"`` (the adapter lacks the level).
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
            "passed": None if self.status == "skipped" else self.passed,
            "max_abs_err": _finite(self.max_abs_err),
            "tol": self.tol,
            "ratio": ratio if ratio is not None and math.isfinite(ratio) else None,
            "failure": self.failure,
            "outputs": {k: o.to_json_dict() for k, o in self.outputs.items()},
        }
        if self.status == "skipped":
            out["skipped"] = True
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
        """``{"version", "passed", "failed", "skipped", "vectors": [...]}`` (Spec §12.5)."""
        return {
            "version": SPEC_VERSION,
            "passed": self.passed,
            "failed": self.failed,
            "skipped": self.skipped,
            "vectors": [r.to_json_dict() for r in self.results],
        }


# ---------------------------------------------------------------------- locating things
def default_vectors_dir(must_exist: bool = True) -> Path:
    """``spec/vectors/v2`` (the current format, Spec §12.2) of the source checkout this package lives in.

    Raises FileNotFoundError (suggesting ``--vectors``) when the package does not run from a checkout:
    when the directory is missing, or with ``must_exist=False`` (for regeneration) when ``spec/`` is.
    """
    spec = Path(__file__).resolve().parents[3] / "spec"
    path = spec / "vectors" / FORMAT
    if not (path.is_dir() if must_exist else spec.is_dir()):
        raise FileNotFoundError(
            f"conformance vectors not found at {path} (hogwild_ref does not run from a source checkout); "
            f"pass the vector directory with --vectors DIR (a copy of spec/vectors/{FORMAT} of the hogwild_ref repository)"
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
    diff, scale = _diff(out, expected, mask)
    if diff.numel() == 0:
        return 0.0
    if not bool(torch.isfinite(diff).all()):
        return math.inf
    worst = float(diff.max())
    return worst / scale if scale > 0 else worst


def _diff(out: Any, expected: Tensor, mask: Tensor | None = None) -> tuple[Tensor, float]:
    if not isinstance(out, Tensor):
        raise VectorMismatch(f"expected a tensor, got {type(out).__name__}")
    if tuple(out.shape) != tuple(expected.shape):
        raise VectorMismatch(f"shape {tuple(out.shape)} != expected {tuple(expected.shape)}")
    a = out.detach().to("cpu", torch.float64)
    b = expected.to(torch.float64)
    if mask is not None:
        a, b = a[mask], b[mask]
    scale = float(b.abs().max()) if b.numel() else 0.0
    return (a - b).abs(), scale


def row_errors(out: Any, expected: Tensor) -> Tensor:
    """Per row ``i`` of ``(N, D)`` tensors: ``max_j |out[i, j] - expected[i, j]| / max|expected|`` (Spec §10.4)."""
    diff, scale = _diff(out, expected)
    rows = diff.amax(dim=-1) if diff.numel() else diff.sum(dim=-1)
    rows = torch.where(torch.isfinite(rows), rows, torch.full_like(rows, math.inf))
    return rows / scale if scale > 0 else rows


def position_tolerance(meta: Mapping[str, Any], positions: Tensor) -> Tensor:
    """The per-row rope tolerance of Spec §10.4: ``tolerance + tolerance_per_position * (|p| + 1)``."""
    base = float(meta["tolerance"])
    per = float(meta.get("tolerance_per_position", 0.0))
    return base + per * (positions.to(torch.float64).abs() + 1.0)


# ---------------------------------------------------------------------- levels
class _Outputs(dict):
    """Comparisons by output name; each output is measured on its own, so one mismatch hides nothing."""

    def __init__(self, tol: float) -> None:
        super().__init__()
        self.tol = tol

    def measure(self, name: str, out: Any, expected: Tensor, mask: Tensor | None = None,
                positions: Tensor | None = None, meta: Mapping[str, Any] | None = None) -> None:
        shape = list(out.shape) if isinstance(out, Tensor) else None
        exp_shape = list(expected.shape)
        try:
            if isinstance(out, _Missing):
                raise VectorMismatch(out.message)
            if positions is not None:
                assert meta is not None
                errs, tols = row_errors(out, expected), position_tolerance(meta, positions)
                if errs.numel() == 0:
                    self[name] = OutputResult(0.0, self.tol, shape, exp_shape)
                    return
                i = int((errs / tols).argmax())
                err = float(errs[i])
                self[name] = OutputResult(err, float(tols[i]), shape, exp_shape,
                                          None if math.isfinite(err) else "non-finite values")
            else:
                err = relative_error(out, expected, mask)
                self[name] = OutputResult(err, self.tol, shape, exp_shape,
                                          None if math.isfinite(err) else "non-finite values")
        except VectorMismatch as exc:
            self[name] = OutputResult(None, self.tol, shape, exp_shape, str(exc))


@dataclass
class _Missing:
    """Stands in for an output the adapter did not return."""

    message: str


def _get(container: Any, key: str, what: str | None = None) -> Any:
    if not isinstance(container, Mapping):
        return _Missing(f"the adapter returned {type(container).__name__}, expected a mapping with {key!r}")
    if key not in container:
        return _Missing(f"the adapter's result has no {what or repr(key)}")
    return container[key]


def inputs_rope(vector: Vector) -> dict[str, Any]:
    """The keyword arguments of ``rope()`` for a vector (Spec §12.3)."""
    t, inputs = vector.tensors, vector.meta["inputs"]
    return dict(rope=inputs["rope"], config=inputs["config"], x=t["input/x"].clone(),
                positions=t["input/positions"].clone(), y=t["input/y"].clone(), deltas=t["input/deltas"].clone())


def inputs_attention(vector: Vector) -> dict[str, Any]:
    """The keyword arguments of ``attention()`` for a vector (Spec §12.3)."""
    t, inputs = vector.tensors, vector.meta["inputs"]
    return dict(
        layout=inputs["layout"], workers=int(inputs["workers"]), lengths=dict(inputs["lengths"]),
        table=inputs["table"], new_tokens=list(inputs["new_tokens"]), rope=inputs["rope"], config=inputs["config"],
        scaling=float(inputs["scaling"]),
        q=t["input/q"].clone(), k=t["input/k"].clone(), v=t["input/v"].clone(),
        keys={k: x.clone() for k, x in vector.inputs("keys").items()},
        values={k: x.clone() for k, x in vector.inputs("values").items()},
    )


def inputs_model(vector: Vector) -> dict[str, Any]:
    """The keyword arguments of ``model()`` for a vector (Spec §12.3)."""
    inputs = vector.meta["inputs"]
    static_keys = {k: x.clone() for k, x in vector.inputs("static_keys").items()} or None
    static_values = {k: x.clone() for k, x in vector.inputs("static_values").items()} or None
    return dict(
        config=vector.meta["config"], weights={k: x.clone() for k, x in vector.inputs("weights").items()},
        rope=inputs["rope"], layout=inputs["layout"], workers=int(inputs["workers"]), table=inputs["table"],
        static=inputs["static"], static_keys=static_keys, static_values=static_values, ticks=inputs["ticks"],
    )


def score_rope(vector: Vector, got: Any) -> _Outputs:
    t = vector.tensors
    outputs = _Outputs(float(vector.meta["tolerance"]))
    for name, pos in (("rotated", t["input/positions"]), ("rerotated", t["input/deltas"])):
        outputs.measure(name, _get(got, name), t[f"expected/{name}"], positions=pos, meta=vector.meta)
    return outputs


def score_attention(vector: Vector, got: Any) -> _Outputs:
    t, inputs = vector.tensors, vector.meta["inputs"]
    outputs = _Outputs(float(vector.meta["tolerance"]))
    expected_out = t["expected/out"]  # (W, Hq, n, D)
    n = expected_out.shape[2]
    real = torch.arange(n)[None, :] < torch.tensor(inputs["new_tokens"])[:, None]  # (W, n)
    out = _get(got, "out")
    if isinstance(out, Tensor) and tuple(out.shape) == tuple(expected_out.shape):
        # compare (W, n, Hq, D) so that the (W, n) mask selects the real query slots
        outputs.measure("out", out.detach().cpu().transpose(1, 2), expected_out.transpose(1, 2), real)
        outputs["out"].shape = list(out.shape)
        outputs["out"].expected_shape = list(expected_out.shape)
    else:
        outputs.measure("out", out, expected_out)  # records the mismatch
    for kind in ("keys", "values"):
        stored = _get(got, kind)
        for sid, expected in vector.expected(kind).items():
            item = stored if isinstance(stored, _Missing) else _get(stored, sid, f"{kind}[{sid!r}]")
            outputs.measure(f"{kind}/{sid}", item, expected)
    return outputs


def score_model(vector: Vector, got: Any) -> _Outputs:
    t, inputs = vector.tensors, vector.meta["inputs"]
    outputs = _Outputs(float(vector.meta["tolerance"]))
    expected = t["expected/logits"]  # (T, W, V)
    fed = torch.tensor([[len(f) > 0 for f in tick["feeds"]] for tick in inputs["ticks"]])
    if isinstance(got, Mapping) and "logits" in got:  # out-of-process adapters return {"logits": ...}
        got = got["logits"]
    outputs.measure("logits", got, expected, fed)
    if outputs["logits"].err is not None:
        tokens = t["expected/tokens"]
        marked = tokens >= 0
        bad = int((got.detach().cpu().argmax(-1)[marked] != tokens[marked]).sum())
        outputs["tokens"] = OutputResult(None, 0.0, list(tokens.shape), list(tokens.shape), mismatches=bad)
    return outputs


INPUTS: dict[str, Callable[[Vector], dict[str, Any]]] = {
    "rope": inputs_rope,
    "attention": inputs_attention,
    "model": inputs_model,
}
SCORES: dict[str, Callable[[Vector, Any], _Outputs]] = {
    "rope": score_rope,
    "attention": score_attention,
    "model": score_model,
}


# ---------------------------------------------------------------------- run
def supports(adapter: Any, level: str) -> bool:
    """Whether ``adapter`` implements ``level``: its ``supported_levels`` if it has them (out-of-process
    adapters), else whether it has a method of that name (Spec §12.3)."""
    declared = getattr(adapter, "supported_levels", None)
    if declared is not None:
        return level in declared
    return callable(getattr(adapter, level, None))


def call_adapter(adapter: Any, vector: Vector) -> Any:
    """Call the adapter on one vector's inputs: ``adapter.call_vector(vector, kwargs)`` when it has that
    (out-of-process and offline adapters need the vector's name), else ``adapter.<level>(**kwargs)``."""
    kwargs = INPUTS[vector.level](vector)
    hook = getattr(adapter, "call_vector", None)
    if callable(hook):
        return hook(vector, kwargs)
    return getattr(adapter, vector.level)(**kwargs)


def check_version(vector: Vector, path: Path | None = None) -> None:
    """Refuse vectors of another format version (Spec §12.2), naming the fix."""
    version = vector.meta.get("version")
    if version != SPEC_VERSION:
        where = f"{path}: " if path is not None else ""
        raise VersionError(
            f"{where}vector format version {version!r}, but this runner reads version {SPEC_VERSION} only "
            f"(spec/vectors/{FORMAT}); version 1 vectors (spec/vectors/v1) need hogwild_ref 0.1's runner, "
            f"or pass --vectors spec/vectors/{FORMAT}"
        )


def run_vector(adapter: Any, vector: Vector) -> VectorResult:
    """Run one vector against ``adapter`` (Spec §12.3, §12.5)."""
    name, level = vector.name, vector.level
    tol = float(vector.meta["tolerance"])
    if not supports(adapter, level):
        return VectorResult(name, level, "skipped", None, tol, message=f"the adapter does not implement the {level} level")
    t0 = time.perf_counter()
    try:
        got = call_adapter(adapter, vector)
    except Exception as exc:  # noqa: BLE001 -- an adapter's exception fails only its vector (Spec §12.3)
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        at = f" (at {Path(where.filename).name}:{where.lineno})" if where is not None else ""
        return VectorResult(name, level, "failed", None, tol, failure="raised",
                            message=f"{type(exc).__name__}: {exc}{at}", seconds=time.perf_counter() - t0)
    outputs = SCORES[level](vector, got)
    # the measured output closest to failing (outputs that could not be compared are reported apart)
    worst = max((o for k, o in outputs.items() if k != "tokens" and o.err is not None),
                key=lambda o: o.ratio or 0.0, default=None)
    notes = [f"{k}: {o.message}" for k, o in outputs.items() if o.message]
    tokens = outputs.get("tokens")
    if tokens is not None and tokens.mismatches:
        notes.append(f"{tokens.mismatches} greedy token(s) differ")
    failure = None
    if any(o.err is None and o.mismatches is None for o in outputs.values()):
        failure = "mismatch"
    elif any(not o.ok for k, o in outputs.items() if k != "tokens"):
        failure = "numeric"
    elif tokens is not None and not tokens.ok:
        failure = "tokens"
    err = worst.err if worst is not None else None
    return VectorResult(name, level, "failed" if failure else "passed", err,
                        worst.tol if worst is not None else tol, dict(outputs), failure,
                        "; ".join(notes) or None, time.perf_counter() - t0)


def vector_paths(directory: Path | str | None, levels: Sequence[str] | None) -> tuple[Path, list[Path]]:
    """The vector directory and the JSON files of ``levels`` in it (errors name ``--vectors``)."""
    directory = Path(directory) if directory is not None else default_vectors_dir()
    if not directory.is_dir():
        raise FileNotFoundError(f"vector directory {directory} does not exist; pass --vectors DIR")
    levels = list(levels) if levels else list(LEVELS)
    for level in levels:
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; choose from {', '.join(LEVELS)}")
    paths = [p for level in levels for p in vector_names(directory, level)]
    if not paths:
        raise FileNotFoundError(f"no vectors for level(s) {', '.join(levels)} under {directory}")
    return directory, paths


def load_checked(path: Path) -> Vector:
    """Load a vector, check its format version and that its level matches its directory."""
    vector = load_vector(path)
    check_version(vector, path)
    if vector.level != path.parent.name:
        raise ValueError(f"{path}: level {vector.level!r} does not match its directory")
    return vector


def run(adapter: Any, vectors_dir: Path | str | None = None, levels: Sequence[str] | None = None) -> Report:
    """Run every vector of ``levels`` (default: all) in ``vectors_dir`` (default: the checkout's) against ``adapter``."""
    directory, paths = vector_paths(vectors_dir, levels)
    results = [run_vector(adapter, load_checked(path)) for path in paths]
    return Report(results, directory)
