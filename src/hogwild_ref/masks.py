"""The per-tick plan: positions, locations and masks, built once per tick from the table (Spec §3).

For batch row ``r`` (a worker, or a prefill row), query token ``i`` sits at view position
``p[r, i] = o_r(write) + len_before(write) + i`` where offsets use the lengths *after* this tick's
writes (write-before-read, Spec §3.2). Its **location** in segment ``s`` is
``loc[r, s, i] = p[r, i] - o_r(s)`` (Spec §3.5): the query's position relative to the start of ``s``.
Because a view is causal when linearised, one rule gives the whole mask (Spec §3.3):
key ``t`` of segment ``s`` is visible to query ``(r, i)`` iff ``s`` is in ``r``'s view and ``t <= loc``.
Segments outside the view get ``loc = -1`` (nothing visible); rows without new tokens see nothing (Spec §3.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .rope import RopeSpec, Rotation
from .segments import Row, SegmentTable, TableError, view_offsets

__all__ = ["TickPlan", "plan_tick", "dense_mask"]


@dataclass(frozen=True)
class TickPlan:
    """Everything the attention backends need for one tick, shared by all layers (Spec §3.6).

    Attributes:
        table: the segment table *after* this tick's writes (lengths include the new tokens).
        rows: the batch rows (view, new-token count).
        segment_ids: all segments in table order (the storage order, index ``j``).
        lengths: ``(S,)`` segment lengths after the writes.
        new_tokens: ``(R,)`` new tokens per row; ``n = max(new_tokens)`` (at least 1).
        write_index: ``(R,)`` index ``j`` of each row's write segment.
        write_start: ``(R,)`` local position of each row's first new token in its write segment.
        write_offset: ``(R,)`` ``o_r(write)``: the view offset of the row's write segment.
        positions: ``(R, n)`` view positions of the new tokens (padding repeats the last valid one,
            or 0 for rows with no new tokens).
        valid: ``(R, n)`` which query slots hold real tokens.
        offsets: ``(R, S)`` ``o_r(s)`` (0 where ``s`` is not in the view).
        in_view: ``(R, S)`` whether ``s`` is in row ``r``'s view.
        loc: ``(R, S, n)`` locations (``-1`` outside the view).
        key_mask: ``(R, n, T)`` visibility of every stored key (table order, ``T = sum(lengths)``),
            the dense form of the rule above (:func:`dense_mask`).
        sizes: the segment lengths as Python ints (static shapes for ``torch.compile``).
        counts, write_indices, write_starts, row_offsets, max_position: host (Python) copies of
            ``new_tokens``, ``write_index``, ``write_start``, ``offsets`` and ``positions.max()``,
            so the per-layer code never reads small tensors back from an accelerator.
        query_rotation: cos/sin of the deltas ``-offsets`` (shape ``(R, S, rotary_dim//2)``), or None.
    """

    table: SegmentTable
    rows: tuple[Row, ...]
    segment_ids: tuple[str, ...]
    lengths: Int[Tensor, "S"]
    new_tokens: Int[Tensor, "R"]
    write_index: Int[Tensor, "R"]
    write_start: Int[Tensor, "R"]
    write_offset: Int[Tensor, "R"]
    positions: Int[Tensor, "R n"]
    valid: Bool[Tensor, "R n"]
    offsets: Int[Tensor, "R S"]
    in_view: Bool[Tensor, "R S"]
    loc: Int[Tensor, "R S n"]
    key_mask: Bool[Tensor, "R n T"]
    query_rotation: Rotation | None = None
    sizes: tuple[int, ...] = ()
    counts: tuple[int, ...] = ()
    write_indices: tuple[int, ...] = ()
    write_starts: tuple[int, ...] = ()
    row_offsets: tuple[tuple[int, ...], ...] = ()
    max_position: int = 0

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    @property
    def n(self) -> int:
        """Query slots per row (the padded new-token count)."""
        return int(self.positions.shape[1])


def plan_tick(
    table: SegmentTable,
    rows: Sequence[Row] | Sequence[int],
    rope: RopeSpec | None = None,
    device: torch.device | str | None = None,
) -> TickPlan:
    """Plan one tick over ``table`` (lengths *before* the tick) (Spec §3).

    ``rows`` are explicit :class:`Row` objects, or one new-token count per worker (the worker rows
    of the table's views). Two rows must not write the same segment. Returns the plan, whose
    ``table`` has the post-write lengths.
    """
    if rows and not isinstance(rows[0], Row):
        rows = table.rows([int(x) for x in rows])  # type: ignore[arg-type]
    rows = tuple(rows)  # type: ignore[assignment]
    if not rows:
        raise TableError("a tick needs at least one row")
    writes: dict[str, int] = {}
    for r, row in enumerate(rows):
        if row.new_tokens < 0:
            raise TableError(f"row {r} feeds {row.new_tokens} tokens; counts must be >= 0")
        for sid in row.view:
            if sid not in table._index:
                raise TableError(f"row {r}'s view names unknown segment {sid!r}; known: {[s.id for s in table.segments]}")
        if len(set(row.view)) != len(row.view):
            raise TableError(f"row {r}'s view repeats a segment: {row.view}")
        w = row.view[-1]
        if row.new_tokens:
            if w in writes:
                raise TableError(f"rows {writes[w]} and {r} both write segment {w!r} in one tick")
            writes[w] = r
    before = {row.view[-1]: table.length(row.view[-1]) for row in rows}
    after = table.with_lengths({sid: before[sid] + sum(r.new_tokens for r in rows if r.view[-1] == sid) for sid in before})

    ids = tuple(s.id for s in after.segments)
    S, R = len(ids), len(rows)
    n = max(1, max(r.new_tokens for r in rows))
    offsets = torch.zeros(R, S, dtype=torch.long)
    in_view = torch.zeros(R, S, dtype=torch.bool)
    positions = torch.zeros(R, n, dtype=torch.long)
    valid = torch.zeros(R, n, dtype=torch.bool)
    write_index = torch.zeros(R, dtype=torch.long)
    write_start = torch.zeros(R, dtype=torch.long)
    write_offset = torch.zeros(R, dtype=torch.long)
    for r, row in enumerate(rows):
        offs = view_offsets(after, row.view)
        for sid, o in offs.items():
            j = after.index(sid)
            offsets[r, j] = o
            in_view[r, j] = True
        w = row.view[-1]
        write_index[r] = after.index(w)
        write_start[r] = before[w]
        write_offset[r] = offs[w]
        first = offs[w] + before[w]
        if row.new_tokens:
            positions[r, : row.new_tokens] = torch.arange(first, first + row.new_tokens)
            positions[r, row.new_tokens :] = first + row.new_tokens - 1
            valid[r, : row.new_tokens] = True
    loc = positions[:, None, :] - offsets[:, :, None]
    loc = torch.where(in_view[:, :, None], loc, torch.full_like(loc, -1))
    # padded query slots see what their row's last real token sees; rows with no tokens see nothing
    loc = torch.where(valid.any(dim=1)[:, None, None], loc, torch.full_like(loc, -1))
    if rope is not None:
        rope.check_positions(positions)
    rot = rope.rotation(-offsets, device) if rope is not None else None
    lengths = torch.tensor([after.length(s) for s in ids], dtype=torch.long)
    key_mask = _key_mask(loc, lengths.tolist())
    to = (lambda t: t.to(device)) if device is not None else (lambda t: t)
    return TickPlan(
        table=after,
        rows=rows,  # type: ignore[arg-type]
        segment_ids=ids,
        lengths=to(lengths),
        new_tokens=to(torch.tensor([r.new_tokens for r in rows], dtype=torch.long)),
        write_index=to(write_index),
        write_start=to(write_start),
        write_offset=to(write_offset),
        positions=to(positions),
        valid=to(valid),
        offsets=to(offsets),
        in_view=to(in_view),
        loc=to(loc),
        key_mask=to(key_mask),
        query_rotation=rot,
        sizes=tuple(lengths.tolist()),
        counts=tuple(r.new_tokens for r in rows),
        write_indices=tuple(write_index.tolist()),
        write_starts=tuple(write_start.tolist()),
        row_offsets=tuple(tuple(row) for row in offsets.tolist()),
        max_position=int(positions.max()),
    )


def _key_mask(loc: Tensor, lengths: list[int]) -> Tensor:
    seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths, dtype=torch.long))
    t = torch.cat([torch.arange(L) for L in lengths]) if lengths else torch.zeros(0, dtype=torch.long)
    return t[None, None, :] <= loc[:, seg, :].transpose(1, 2)


def dense_mask(plan: TickPlan) -> Bool[Tensor, "R n T"]:
    """Dense boolean mask over all stored keys in table order (Spec §3.3).

    ``T = sum(lengths)``; key ``t`` of segment ``j`` is column ``start_j + t``: visible iff
    ``t <= loc[r, j, i]``.
    """
    return plan.key_mask
