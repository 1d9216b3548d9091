"""The general tick's host plan: positions, locations and masks, built once per tick from the table (Spec §3).

For batch row ``r`` (a worker, or a prefill row), query token ``i`` sits at view position
``p[r, i] = o_r(write) + len_before(write) + i`` where offsets use the lengths *after* this tick's
writes (write-before-read, Spec §3.2). Its **location** in segment ``s`` is
``loc[r, s, i] = p[r, i] - o_r(s)`` (Spec §3.5): the query's position relative to the start of ``s``.
Because a view is causal when linearised, one rule gives the whole mask (Spec §3.3):
key ``t`` of segment ``s`` is visible to query ``(r, i)`` iff ``s`` is in ``r``'s view and ``t <= loc``.
Segments outside the view get ``loc = -1`` (nothing visible); rows without new tokens see nothing (Spec §3.4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .rope import RopeSpec, Rotation
from .segments import Row, SegmentTable, TableError, view_offsets

__all__ = ["TickPlan", "plan_tick", "dense_mask"]


@dataclass(frozen=True)
class TickPlan:
    """The general tick's plan, shared by all layers (Spec §3.6): host decisions and the few tensors the backends read.

    Host side (Python ints, read by the per-layer code without touching a device):
        table: the segment table *after* this tick's writes (lengths include the new tokens).
        rows: the batch rows (view, new-token count).
        segment_ids: all segments in table order (the storage order, index ``j``).
        sizes: the segment lengths after the writes.
        counts: new tokens per row; ``n = max(counts)`` (at least 1).
        write_indices: index ``j`` of each row's write segment.
        write_starts: local position of each row's first new token in its write segment.
        row_offsets: ``o_r(s)`` per row and segment (0 where ``s`` is not in the view).
        max_position: the largest view position of the tick.

    Tensors (on the plan's device):
        positions: ``(R, n)`` view positions of the new tokens (padding repeats the last valid one,
            or 0 for rows with no new tokens).
        offsets: ``(R, S)`` ``o_r(s)``.
        write_offset: ``(R,)`` ``o_r(write)``: the view offset of the row's write segment.
        key_mask: ``(R, n, T)`` visibility of every stored key (table order, ``T = sum(sizes)``),
            the dense form of the rule above (:func:`dense_mask`).
        query_rotation: cos/sin of the deltas ``-offsets`` (shape ``(R, S, rotary_dim//2)``), or None.

    The locations, validity and per-segment views of Spec §3.5 are derived on demand (:attr:`loc`,
    :attr:`valid`, ...): no backend reads them, so a tick does not build them.
    """

    table: SegmentTable
    rows: tuple[Row, ...]
    segment_ids: tuple[str, ...]
    sizes: tuple[int, ...]
    counts: tuple[int, ...]
    write_indices: tuple[int, ...]
    write_starts: tuple[int, ...]
    row_offsets: tuple[tuple[int, ...], ...]
    max_position: int
    positions: Int[Tensor, "R n"]
    offsets: Int[Tensor, "R S"]
    write_offset: Int[Tensor, " R"]
    key_mask: Bool[Tensor, "R n T"]
    query_rotation: Rotation | None = None

    def to(self, device: torch.device) -> TickPlan:
        """This plan with its tensors copied to ``device`` (a model spread over devices reads one copy per
        device per tick, Spec §11.8)."""
        rot = self.query_rotation
        return replace(self, positions=self.positions.to(device), offsets=self.offsets.to(device),
                       write_offset=self.write_offset.to(device), key_mask=self.key_mask.to(device),
                       query_rotation=None if rot is None else rot.to(device))

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    @property
    def n(self) -> int:
        """Query slots per row (the padded new-token count)."""
        return int(self.positions.shape[1])

    # derived views of Spec §3.5 (CPU tensors, built when read)
    @property
    def lengths(self) -> Int[Tensor, " S"]:
        """``(S,)`` segment lengths after the writes."""
        return torch.tensor(self.sizes, dtype=torch.long)

    @property
    def new_tokens(self) -> Int[Tensor, " R"]:
        """``(R,)`` new tokens per row."""
        return torch.tensor(self.counts, dtype=torch.long)

    @property
    def write_index(self) -> Int[Tensor, " R"]:
        return torch.tensor(self.write_indices, dtype=torch.long)

    @property
    def write_start(self) -> Int[Tensor, " R"]:
        return torch.tensor(self.write_starts, dtype=torch.long)

    @property
    def valid(self) -> Bool[Tensor, "R n"]:
        """``(R, n)`` which query slots hold real tokens."""
        return torch.arange(self.n)[None, :] < self.new_tokens[:, None]

    @property
    def in_view(self) -> Bool[Tensor, "R S"]:
        """``(R, S)`` whether segment ``s`` is in row ``r``'s view."""
        return torch.tensor([[sid in row.view for sid in self.segment_ids] for row in self.rows], dtype=torch.bool)

    @property
    def loc(self) -> Int[Tensor, "R S n"]:
        """``(R, S, n)`` locations (Spec §3.5; ``-1`` outside the view and for rows without tokens)."""
        return _locations(self.positions.cpu(), self.offsets.cpu(), self.in_view, self.new_tokens)


def _locations(positions: Tensor, offsets: Tensor, in_view: Tensor, counts: Tensor) -> Tensor:
    loc = positions[:, None, :] - offsets[:, :, None]
    loc = torch.where(in_view[:, :, None], loc, torch.full_like(loc, -1))
    # padded query slots see what their row's last real token sees; rows with no tokens see nothing
    return torch.where((counts > 0)[:, None, None], loc, torch.full_like(loc, -1))


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
    rows_t: tuple[Row, ...] = tuple(rows)  # type: ignore[arg-type]
    if not rows_t:
        raise TableError("a tick needs at least one row")
    writes: dict[str, int] = {}
    for r, row in enumerate(rows_t):
        if row.new_tokens < 0:
            raise TableError(f"row {r} feeds {row.new_tokens} tokens; counts must be >= 0")
        if not row.view:
            raise TableError(f"row {r}'s view is empty; a view lists at least the row's write segment (Spec §3.1, §2.3 rule 3)")
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
    before = {row.view[-1]: table.length(row.view[-1]) for row in rows_t}
    after = table.with_lengths({sid: before[sid] + sum(r.new_tokens for r in rows_t if r.view[-1] == sid) for sid in before})

    ids = tuple(s.id for s in after.segments)
    S, R = len(ids), len(rows_t)
    n = max(1, max(r.new_tokens for r in rows_t))
    offsets = [[0] * S for _ in range(R)]
    in_view = [[False] * S for _ in range(R)]
    positions = [[0] * n for _ in range(R)]
    write_indices, write_starts, write_offsets = [], [], []
    for r, row in enumerate(rows_t):
        offs = view_offsets(after, row.view)
        for sid, o in offs.items():
            j = after.index(sid)
            offsets[r][j] = o
            in_view[r][j] = True
        w = row.view[-1]
        write_indices.append(after.index(w))
        write_starts.append(before[w])
        write_offsets.append(offs[w])
        first = offs[w] + before[w]
        if row.new_tokens:
            positions[r] = [first + min(i, row.new_tokens - 1) for i in range(n)]
    pos_t = torch.tensor(positions, dtype=torch.long)
    off_t = torch.tensor(offsets, dtype=torch.long)
    counts = tuple(r.new_tokens for r in rows_t)
    if rope is not None:
        rope.check_positions(pos_t)
    rot = rope.rotation(-off_t, device) if rope is not None else None
    sizes = tuple(after.length(s) for s in ids)
    loc = _locations(pos_t, off_t, torch.tensor(in_view, dtype=torch.bool), torch.tensor(counts, dtype=torch.long))
    key_mask = _key_mask(loc, list(sizes))
    to = (lambda t: t.to(device)) if device is not None else (lambda t: t)
    return TickPlan(
        table=after,
        rows=rows_t,
        segment_ids=ids,
        sizes=sizes,
        counts=counts,
        write_indices=tuple(write_indices),
        write_starts=tuple(write_starts),
        row_offsets=tuple(tuple(row) for row in offsets),
        max_position=max(max(p) for p in positions),
        positions=to(pos_t),
        offsets=to(off_t),
        write_offset=to(torch.tensor(write_offsets, dtype=torch.long)),
        key_mask=to(key_mask),
        query_rotation=rot,
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
