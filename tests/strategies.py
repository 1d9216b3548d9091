"""Hypothesis strategies shared by the property tests.

* :func:`segment_tables` — *arbitrary* valid segment tables with user-given views (not only the
  presets): random worker count, random static segments, an optional history segment that opens every
  view, every view a random ordered subset of the other segments followed by the worker's write
  segment, and the table's storage order shuffled.
* :func:`preset_tables` — the three layout presets with random segment lengths.
* :func:`any_tables` — either of the above.
* :func:`tick_counts` — one new-token count per worker (zeros included).

Everything is generated from hypothesis primitives only; no hogwild_ref code decides what a valid
table looks like (the library's constructor just has to accept what we build).
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from hogwild_ref.attention import TOLERANCES
from hogwild_ref.segments import LAYOUTS, Segment, SegmentTable, make_layout

#: short readable segment ids; tests that exercise serialisation pass ``ids=st.text(...)`` instead.
SIMPLE_IDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=6)


@st.composite
def segment_tables(
    draw: st.DrawFn,
    *,
    min_workers: int = 1,
    max_workers: int = 6,
    max_static: int = 4,
    max_length: int = 12,
    ids: st.SearchStrategy[str] = SIMPLE_IDS,
    history: bool | None = None,
) -> SegmentTable:
    """A random valid table with explicit (non-preset) views.

    ``history``: ``True`` forces a history segment, ``False`` forbids it, ``None`` draws it.
    """
    workers = draw(st.integers(min_workers, max_workers))
    n_static = draw(st.integers(1 if history else 0, max_static))
    names = draw(st.lists(ids, min_size=workers + n_static, max_size=workers + n_static, unique=True))
    write_ids, static_ids = names[:workers], names[workers:]
    lengths = draw(st.lists(st.integers(0, max_length), min_size=len(names), max_size=len(names)))
    length_of = dict(zip(names, lengths))

    if history is None:
        has_history = bool(static_ids) and draw(st.booleans())
    else:
        has_history = history
    hist = static_ids[0] if has_history else None

    views = []
    for w in range(workers):
        others = [s for s in static_ids if s != hist] + [write_ids[j] for j in range(workers) if j != w]
        order = draw(st.permutations(others))
        keep = draw(st.integers(0, len(order)))
        view = ([hist] if hist is not None else []) + list(order[:keep]) + [write_ids[w]]
        views.append(tuple(view))

    segs = [Segment(s, length_of[s], None) for s in static_ids]
    segs += [Segment(write_ids[w], length_of[write_ids[w]], w) for w in range(workers)]
    segs = draw(st.permutations(segs))
    layout = draw(st.sampled_from([None, "custom"]))
    return SegmentTable(tuple(segs), tuple(views), history=hist, layout=layout)


@st.composite
def preset_tables(
    draw: st.DrawFn,
    *,
    min_workers: int = 1,
    max_workers: int = 6,
    max_length: int = 12,
    layouts: tuple[str, ...] = LAYOUTS,
) -> SegmentTable:
    """A layout preset with every segment at a random length (as after some ticks)."""
    name = draw(st.sampled_from(layouts))
    workers = draw(st.integers(min_workers, max_workers))
    extra = {}
    if name == "combined":
        extra = {k: draw(st.integers(0, 3)) for k in ("others_header", "separator", "own_header")}
    table = make_layout(name, workers, draw(st.integers(0, max_length)), **extra)
    lengths = {s.id: draw(st.integers(0, max_length)) for s in table.segments if s.writer is not None}
    return table.with_lengths(lengths)


def any_tables(**kwargs) -> st.SearchStrategy[SegmentTable]:
    """User-given views or presets."""
    preset_kwargs = {k: v for k, v in kwargs.items() if k in ("min_workers", "max_workers", "max_length")}
    return st.one_of(segment_tables(**kwargs), preset_tables(**preset_kwargs))


def tick_counts(workers: int, max_new: int = 3) -> st.SearchStrategy[list[int]]:
    """One new-token count per worker, zeros included."""
    return st.lists(st.integers(0, max_new), min_size=workers, max_size=workers)


def stored_key_tolerance(dtype: torch.dtype, view_position: int, local_position: int) -> float:
    """How far a stored key may be from the key rotated once to its segment-local position (relative
    to its largest entry): the dtype's tolerance (Spec §10.2), plus, in float32, the bound of Spec §10.4
    for each of its two rotations (to the view position, then by the delta back to the local one)."""
    tol = TOLERANCES[dtype]
    if dtype == torch.float32:
        tau = lambda p: 1e-6 + 2**-23 * (abs(p) + 1)  # noqa: E731 - Spec §10.4
        tol += tau(view_position) + tau(local_position - view_position)
    return tol
