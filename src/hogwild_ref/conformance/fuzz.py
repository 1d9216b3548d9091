"""Differential fuzzing of an adapter against the reference's oracles, with shrinking (Spec §12.8).

:func:`fuzz` draws random cases with hypothesis — segment tables (the presets, the official
five-block table, explicit views), ``W``, lengths, zero-token and multi-token rows, every RoPE type,
partial rotary, both conventions, GQA/MQA/MHA, the dtypes — **within the adapter's declared scope**
(Spec §12.3), builds each as a regular vector with the same generator as the checked-in ones
(:func:`~.vectors_attention.attention_vector`, :func:`~.vectors_rope.rope_vector`: float64 oracles,
inputs rounded to the dtype) and runs it through the runner (:func:`~.runner.run_vector`). On the first
failing case hypothesis shrinks it to a minimal one (fewest workers and segments, shortest
lengths, simplest RoPE), which is returned and can be written as a vector file, so that
``hogwild-ref conform --vectors DIR`` reruns it.
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .report import VectorResult
from .runner import run_vector
from .scope import out_of_scope
from .vectors import Vector, official_combined_table, write_vector
from .vectors_attention import ATTENTION_CONFIGS, AttentionCase, attention_vector
from .vectors_rope import ROPE_CONFIGS, rope_vector

__all__ = ["FUZZ_LEVELS", "FuzzResult", "fuzz", "table_summary"]

#: the levels :func:`fuzz` draws cases for
FUZZ_LEVELS = ("rope", "attention")
#: every RoPE configuration the fuzzer draws from: the attention level's, then the rope level's (Spec §8.4)
CONFIGS: dict[str, Callable[[], Any]] = {**ATTENTION_CONFIGS, **{f"rope-{k}": v for k, v in ROPE_CONFIGS.items()}}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_LAYOUTS = ("interleaved", "contiguous", "combined", "official-combined", "explicit")
_HEADS = ((2, 1), (2, 2), (4, 2), (4, 1))


@dataclass
class FuzzResult:
    """The outcome of fuzzing one level.

    Attributes:
        level: ``"rope"`` or ``"attention"``.
        examples: cases run through the adapter (including the shrinking phase).
        vector: the shrunk failing case as a vector, or None when no case failed.
        result: its result against the adapter.
        path: where :func:`fuzz` wrote it (``out_dir/<level>/<name>.json``), or None.
        note: why nothing could be checked (the adapter lacks the level, or was gone), or why a failing
            case could not be written to ``out_dir``; else None.
    """

    level: str
    examples: int
    vector: Vector | None = None
    result: VectorResult | None = None
    path: Path | None = None
    note: str | None = None


class _AdapterGone(BaseException):
    """The adapter process is gone (hung, exited, broke the protocol): fuzzing stops at once.

    A BaseException, so that hypothesis passes it through instead of shrinking it as a failure."""


def _allowed(scope: Mapping[str, list[str]], key: str, values: Sequence[str]) -> list[str]:
    accepted = scope.get(key)
    return [v for v in values if accepted is None or v in accepted]


def _rope_types() -> dict[str, str]:
    from ..rope import RopeSpec

    return {name: RopeSpec.from_config(make()).rope_type for name, make in CONFIGS.items()}


def _strategies(level: str, scope: Mapping[str, list[str]]) -> Any:
    from hypothesis import strategies as st

    rope_types = _rope_types()
    configs = [c for c in CONFIGS if scope.get("rope_types") is None or rope_types[c] in scope["rope_types"]]
    conventions = _allowed(scope, "conventions", ["half", "interleaved"])
    dtypes = _allowed(scope, "dtypes", list(_DTYPES))
    if not configs or not conventions or not dtypes:
        raise ValueError(f"the declared scope {dict(scope)} leaves no {level} case to draw")

    if level == "rope":
        @st.composite
        def rope_cases(draw: Any) -> Vector:
            name = draw(st.sampled_from(configs))
            config = CONFIGS[name]()
            convention = draw(st.sampled_from(conventions))
            from ..rope import RopeSpec

            limit = RopeSpec.from_config(config).max_position or int(config.max_position_embeddings)
            pos = draw(st.lists(st.integers(0, limit - 1), min_size=1, max_size=6))
            delta = draw(st.lists(st.integers(-(limit - 1), limit - 1), min_size=len(pos), max_size=len(pos)))
            seed = draw(st.integers(0, 2**16))
            return rope_vector("fuzz", config, convention, torch.tensor(pos, dtype=torch.long),
                               torch.tensor(delta, dtype=torch.long), torch.Generator().manual_seed(seed))

        return rope_cases()

    layouts = [x for x in _LAYOUTS if not scope.get("layouts") or x in scope["layouts"]
               or (x in ("official-combined", "explicit") and "explicit" in scope["layouts"])]
    if not layouts:
        raise ValueError(f"the declared scope {dict(scope)} leaves no layout to draw")

    @st.composite
    def attention_cases(draw: Any) -> Vector:
        from ..segments import make_layout

        from ..rope import RopeSpec

        config = draw(st.sampled_from(configs))
        made = CONFIGS[config]()
        limit = RopeSpec.from_config(made).max_position or int(made.max_position_embeddings)
        layout = draw(st.sampled_from(layouts))
        workers = draw(st.integers(1, 4))
        # a long history now and then (RoPE at large positions), always inside the model's position limit
        first_length = st.one_of(st.integers(0, 12), st.sampled_from([n for n in (300, 3000) if n + 200 < limit]))
        table: dict[str, Any] | None = None
        lengths: dict[str, int] | None = None
        if layout in ("interleaved", "contiguous", "combined"):
            ids = [s.id for s in make_layout(layout, workers).segments]
            lengths = {sid: draw(first_length if i == 0 else st.integers(0, 12)) for i, sid in enumerate(ids)}
        elif layout == "official-combined":
            ids = [s["id"] for s in official_combined_table(workers)["segments"]]
            table = official_combined_table(workers, {sid: draw(first_length if i == 0 else st.integers(0, 12))
                                                      for i, sid in enumerate(ids)})
        else:
            table = draw(_explicit_tables(workers, first_length))
        counts = tuple(draw(st.lists(st.integers(0, 3), min_size=workers, max_size=workers)))
        case = AttentionCase(
            "fuzz", "a case drawn by `hogwild-ref conform fuzz`", config, counts,
            layout=layout if table is None else None, workers=workers, lengths=lengths, table=table,
            convention=draw(st.sampled_from(conventions)), dtype=_DTYPES[draw(st.sampled_from(dtypes))],
            heads=draw(st.sampled_from(_HEADS)),
            extra=("table=official-combined",) if layout == "official-combined" else ())
        return attention_vector(case, draw(st.integers(0, 2**16)), CONFIGS)

    return attention_cases()


def _explicit_tables(workers: int, first_length: Any) -> Any:
    """Explicit views (Spec §4.5): an optional history opening every view, static segments, and per view an
    ordered subset of the other segments, then the worker's write segment."""
    from hypothesis import strategies as st

    @st.composite
    def tables(draw: Any) -> dict[str, Any]:
        n_static = draw(st.integers(0, 3))
        static = [f"s{i}" for i in range(n_static)]
        hist = static[0] if static and draw(st.booleans()) else None
        segments = [{"id": sid, "length": draw(first_length if sid == hist else st.integers(0, 12)), "writer": None}
                    for sid in static]
        segments += [{"id": f"w{w}", "length": draw(st.integers(0, 12)), "writer": w} for w in range(workers)]
        views = []
        for w in range(workers):
            others = [s for s in static if s != hist] + [f"w{j}" for j in range(workers) if j != w]
            order = draw(st.permutations(others))
            keep = draw(st.integers(0, len(order)))
            views.append(([hist] if hist else []) + list(order[:keep]) + [f"w{w}"])
        return {"version": 1, "layout": None, "history": hist, "segments": segments, "views": views}

    return tables()


def table_summary(vector: Vector) -> str:
    """``W``, the segment count and the lengths of an attention vector's table (or a rope vector's rows)."""
    inputs = vector.meta["inputs"]
    if vector.level == "rope":
        return f"{vector.tensors['input/positions'].numel()} rows, rope_type {inputs['rope']['rope_type']}"
    lengths = inputs["lengths"]
    kind = inputs["layout"] or next((f.removeprefix("table=") for f in vector.meta["features"]
                                     if f.startswith("table=")), "explicit")
    return (f"{kind}, W={inputs['workers']}, {len(lengths)} segments, lengths {dict(lengths)}, "
            f"new tokens {inputs['new_tokens']}")


def fuzz(adapter: Any, level: str = "attention", examples: int = 200, seed: int = 0,
         scope: Mapping[str, list[str]] | None = None, out_dir: Path | str | None = None) -> FuzzResult:
    """Draw up to ``examples`` cases of ``level`` within ``scope`` and compare ``adapter`` with the reference.

    On the first failing case hypothesis shrinks it; the minimal case is returned (and written to
    ``out_dir/<level>/`` as a vector when ``out_dir`` is given). Deterministic for a given ``seed``.
    """
    from hypothesis import HealthCheck, find, settings
    from hypothesis.errors import Flaky, HypothesisDeprecationWarning, NoSuchExample

    from .runner import adapter_scope, supports

    if level not in FUZZ_LEVELS:
        raise ValueError(f"conform fuzz draws cases for {', '.join(FUZZ_LEVELS)}; got {level!r}")
    if examples < 1:
        raise ValueError(f"--examples must be >= 1; got {examples}")
    if not supports(adapter, level):
        return FuzzResult(level, 0, note=f"the adapter does not implement the {level} level")
    scope = dict(adapter_scope(adapter) if scope is None else scope)
    strategy = _strategies(level, scope)
    tried = 0

    def fails(vector: Vector) -> bool:
        nonlocal tried
        if out_of_scope(scope, vector) is not None:
            return False
        tried += 1
        status = run_vector(adapter, vector, scope).status
        if getattr(adapter, "gone", None):  # a process that hung or broke the protocol: nothing more to learn
            raise _AdapterGone(str(adapter.gone))
        return status == "failed"

    config = settings(max_examples=examples, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    try:
        with warnings.catch_warnings():
            # building a case constructs transformers configs, which touch the global `random` state
            warnings.simplefilter("ignore", HypothesisDeprecationWarning)
            found = find(strategy, fails, settings=config, random=random.Random(seed))
    except NoSuchExample:
        return FuzzResult(level, tried)
    except _AdapterGone as exc:
        return FuzzResult(level, tried, note=f"the adapter was gone: {exc}")
    except Flaky as exc:
        return FuzzResult(level, tried, note=f"the adapter's verdicts are not reproducible ({type(exc).__name__}); "
                                             "rerun with another --seed")
    digest = hashlib.sha256(json.dumps(found.meta["inputs"], sort_keys=True).encode()).hexdigest()[:10]
    name = f"fuzz-{level}-{digest}"
    found.meta.update(name=name, description=f"found and shrunk by `hogwild-ref conform fuzz --seed {seed}`: "
                      + found.meta["description"])
    result = run_vector(adapter, found, scope)
    path, note = None, None
    if out_dir is not None:
        try:
            path, _ = write_vector(Path(out_dir) / level, found)
        except OSError as exc:  # the case is still reported, and the seed reproduces it
            note = f"{type(exc).__name__}: {exc}"
    return FuzzResult(level, tried, found, result, path, note)
