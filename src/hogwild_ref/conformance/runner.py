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
import inspect
import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from .protocol import LEVELS
from .report import OutputResult, Report, VectorMismatch, VectorResult, VersionError
from .scope import SkipVector, check_scope, out_of_scope, vector_properties
from .vectors import FORMAT, READABLE_VERSIONS, SPEC_VERSION, Vector, load_vector, vector_names

__all__ = ["OutputResult", "Report", "VectorResult", "VersionError", "default_vectors_dir", "load_adapter", "relative_error", "run"]


# ---------------------------------------------------------------------- locating things
def default_vectors_dir(must_exist: bool = True) -> Path:
    """``spec/vectors/v3`` (the current format, Spec §12.2) of the source checkout this package lives in,
    else the copy an installed wheel ships (``hogwild_ref/conformance/vector_files/v3``).

    Raises FileNotFoundError (suggesting ``--vectors``) when neither is there; with ``must_exist=False``
    (for regeneration, which writes into a checkout) when the checkout's ``spec/`` is missing.
    """
    spec = Path(__file__).resolve().parents[3] / "spec"
    path = spec / "vectors" / FORMAT
    if path.is_dir() or (not must_exist and spec.is_dir()):
        return path
    shipped = Path(__file__).resolve().parent / "vector_files" / FORMAT
    if must_exist and shipped.is_dir():
        return shipped
    raise FileNotFoundError(
        f"conformance vectors not found at {path} (hogwild_ref does not run from a source checkout) "
        + (f"nor at {shipped}; " if must_exist else "; regenerating writes into a checkout's spec/: ")
        + f"pass the vector directory with --vectors DIR (a copy of spec/vectors/{FORMAT} of the hogwild_ref repository)"
    )


def load_adapter(spec: str) -> Any:
    """Import ``module:factory`` and return ``factory()`` (Spec §12.3).

    The current directory is put on ``sys.path`` first (as ``python -m`` would), so an adapter module
    next to the caller needs no installation.
    """
    module_name, sep, factory_name = spec.partition(":")
    if not sep or not module_name or not factory_name:
        raise ValueError(f"--adapter must look like 'package.module:factory'; got {spec!r}")
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
        stem = Path(module_name).stem
        raise ValueError(f"--adapter takes a module name, not a file: run from the folder that holds it and pass "
                         f"--adapter {stem}:{factory_name} (or use --adapter-cmd for a script)")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import adapter module {module_name!r}: {exc}") from exc
    except (Exception, SystemExit) as exc:  # the module's own code failed (syntax, a name, an assertion, exit)
        raise ValueError(f"cannot import adapter module {module_name!r}: it raised {_raised(exc)}") from exc
    factory = getattr(module, factory_name, None)
    if factory is None or not callable(factory):
        raise ValueError(f"module {module_name!r} has no callable {factory_name!r}")
    try:
        return factory()
    except (Exception, SystemExit) as exc:  # the adapter's own failure: a usage error of the runner (exit 2)
        raise ValueError(f"adapter factory {spec!r} raised {_raised(exc)}") from exc


def _raised(exc: BaseException, where: bool = True, whole: bool = False) -> str:
    """An exception as text: its type, its message (its first line unless ``whole``) and (``where``)
    the file and line that raised it (for an adapter's exception: in the adapter's code)."""
    message = [str(exc).strip()] if whole else str(exc).strip().splitlines()
    text = f"{type(exc).__name__}{': ' + message[0] if message and message[0] else ''}"
    frame = traceback.extract_tb(exc.__traceback__)[-1] if where and exc.__traceback__ else None
    if frame is None or isinstance(exc, SyntaxError) or getattr(exc, "remote", False):
        return text  # a SyntaxError's message names its file and line; a line of ours says nothing of an adapter process
    return f"{text} (at {Path(frame.filename).name}:{frame.lineno})"


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
    if not out.is_floating_point():  # Spec §12.3: outputs have a floating dtype (a complex one would lose its imaginary part)
        raise VectorMismatch(f"dtype {str(out.dtype).removeprefix('torch.')}: outputs must have a real floating dtype")
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
        static=inputs["static"], prefill=vector_properties(vector)["prefill"],
        static_keys=static_keys, static_values=static_values, ticks=inputs["ticks"],
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


def adapter_scope(adapter: Any) -> dict[str, list[str]]:
    """The scope an adapter declares (its ``scope`` attribute, Spec §12.3), validated; ``{}`` for none."""
    scope = getattr(adapter, "scope", None)
    return check_scope(scope() if callable(scope) else scope)


def call_adapter(adapter: Any, vector: Vector) -> Any:
    """Call the adapter on one vector's inputs: ``adapter.call_vector(vector, kwargs)`` when it has that
    (out-of-process and offline adapters need the vector's name), else ``adapter.<level>(**kwargs)``.

    An in-process method whose signature does not take the keyword arguments of this protocol version
    raises TypeError naming the mismatch and what changed between versions (Spec §12.3)."""
    kwargs = INPUTS[vector.level](vector)
    hook = getattr(adapter, "call_vector", None)
    if callable(hook):
        return hook(vector, kwargs)
    method = getattr(adapter, vector.level)
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):  # no signature to check (a builtin): call it and see
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            raise TypeError(
                f"the adapter's {vector.level}() does not take the keyword arguments of protocol {SPEC_VERSION} "
                f"({exc}); see hogwild_ref.conformance.protocol (Spec §12.3). Changes: version 2 moved "
                f"`convention` into `rope`; version 3 added `prefill` to model(). Accepting **kwargs keeps an "
                f"adapter working across versions"
            ) from None
    return method(**kwargs)


def check_version(vector: Vector, path: Path | None = None) -> None:
    """Refuse vectors of a format version this runner does not read (Spec §12.2), naming the fix."""
    version = vector.meta.get("version")
    where = f"{path}: " if path is not None else ""
    if version is None:
        raise VersionError(f"{where}no format version: not a conformance vector (Spec §12.2); pass --vectors with a copy "
                           f"of spec/vectors/{FORMAT}")
    if version not in READABLE_VERSIONS:
        raise VersionError(
            f"{where}vector format version {version!r}, but this runner reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))} (current: version {SPEC_VERSION}, spec/vectors/{FORMAT}); "
            f"version 1 vectors (spec/vectors/v1) need hogwild_ref 0.1's runner, or pass --vectors spec/vectors/{FORMAT}"
        )


def run_vector(adapter: Any, vector: Vector, scope: Mapping[str, list[str]] | None = None) -> VectorResult:
    """Run one vector against ``adapter`` (Spec §12.3, §12.5).

    ``scope`` is the adapter's declared scope (default: :func:`adapter_scope`). A vector of a level the
    adapter lacks or outside its scope is ``out_of_scope``; one it refuses (:class:`SkipVector`) is
    ``skipped``; when the adapter is gone (an out-of-process adapter that hung or exited: its ``gone``
    attribute says why) the vector is ``not_run``.
    """
    name, level = vector.name, vector.level
    tol = float(vector.meta["tolerance"])
    if not supports(adapter, level):
        return VectorResult(name, level, "out_of_scope", None, tol, message=f"the adapter does not implement the {level} level")
    why = out_of_scope(adapter_scope(adapter) if scope is None else scope, vector)
    reason = getattr(adapter, "out_of_scope_reason", None)
    if why is None and callable(reason):
        why = reason(vector)
    if why is not None:
        return VectorResult(name, level, "out_of_scope", None, tol, message=why)
    gone = getattr(adapter, "gone", None)
    if gone:
        return VectorResult(name, level, "not_run", None, tol, message=f"not run: {gone}")
    t0 = time.perf_counter()
    try:
        got = call_adapter(adapter, vector)
    except SkipVector as exc:
        return VectorResult(name, level, "skipped", None, tol, message=str(exc) or "skipped by the adapter",
                            seconds=time.perf_counter() - t0)
    except VectorMismatch as exc:  # no outputs for the vector (an offline output file missing, Spec §12.7)
        return VectorResult(name, level, "failed", None, tol, failure="mismatch", message=str(exc),
                            seconds=time.perf_counter() - t0)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 -- an adapter's exception (sys.exit too) fails only its vector (Spec §12.3)
        return VectorResult(name, level, "failed", None, tol, failure="raised",
                            message=_raised(exc, whole=True), seconds=time.perf_counter() - t0)
    outputs = SCORES[level](vector, got)
    # the measured output closest to failing (outputs that could not be compared are reported apart)
    worst = max((o for k, o in outputs.items() if k != "tokens" and o.err is not None),
                key=lambda o: o.ratio or 0.0, default=None)
    notes = [f"{k}: {o.message}" for k, o in outputs.items() if o.message]
    notes += [f"{k}: error {o.err:.3g} is {o.ratio:.3g} x its tolerance {o.tol:.3g}" for k, o in outputs.items()
              if k != "tokens" and o.err is not None and o.ratio is not None and math.isfinite(o.ratio) and not o.ok]
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
    levels = list(dict.fromkeys(levels)) if levels else list(LEVELS)  # a level given twice runs once
    for level in levels:
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; choose from {', '.join(LEVELS)}")
    paths = [p for level in levels for p in vector_names(directory, level)]
    if not paths:
        raise FileNotFoundError(f"no vectors for level(s) {', '.join(levels)} under {directory}")
    return directory, paths


def load_checked(path: Path) -> Vector:
    """Load a vector, check its format version and that its level matches its directory; a file that
    cannot be read as a vector raises ValueError naming it."""
    try:
        vector = load_vector(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # malformed JSON, a damaged safetensors file, ...
        raise ValueError(f"{path}: not a readable conformance vector ({_raised(exc, where=False)}); "
                         f"pass --vectors with a copy of spec/vectors/{FORMAT} (or rewrite it: --regenerate)") from None
    check_version(vector, path)
    if vector.level != path.parent.name:
        raise ValueError(f"{path}: level {vector.level!r} does not match its directory")
    return vector


def not_reached(vectors_dir: Path | str | None, levels: Sequence[str] | None, done: Sequence[VectorResult],
                why: str) -> list[VectorResult]:
    """A ``not_run`` result (Spec §12.5) for every vector of ``levels`` that :func:`run` did not reach
    (not among ``done``): what an interrupted run reports for the rest, so that its counts cover every
    vector."""
    _, paths = vector_paths(vectors_dir, levels)
    seen = {(r.level, r.name) for r in done}
    out = []
    for path in paths:  # named by their files (<level>/<name>.json, Spec §12.4), not loaded: nothing can fail here
        if (path.parent.name, path.stem) not in seen:
            out.append(VectorResult(path.stem, path.parent.name, "not_run", None, _tolerance(path), message=f"not run: {why}"))
    return out


def _tolerance(path: Path) -> float:
    """A vector's tolerance from its metadata, or 0.0 when the file cannot tell."""
    try:
        return float(json.loads(path.read_text(encoding="utf-8"))["tolerance"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def run(adapter: Any, vectors_dir: Path | str | None = None, levels: Sequence[str] | None = None,
        on_result: Callable[[VectorResult], None] | None = None) -> Report:
    """Run every vector of ``levels`` (default: all) in ``vectors_dir`` (default: the checkout's) against ``adapter``.

    ``on_result`` is called with each result as it is known (for progress, or to keep a partial report).
    """
    directory, paths = vector_paths(vectors_dir, levels)
    scope = adapter_scope(adapter)
    results = []
    for path in paths:
        result = run_vector(adapter, load_checked(path), scope)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return Report(results, directory)
