"""Several new tokens per row on the fast path: the host plan of an extend tick (Spec §9.6, "Several tokens").

A worker that changes step feeds its new step's header, the finisher feeds its text (Spec §6.2, §6.6):
a tick in which rows feed several tokens. :func:`plan_extend` plans such a tick over the fast path's
storage for a *grid* of worker rows — every local worker of :attr:`ExtendPlan.locals` in every group of
:attr:`ExtendPlan.groups` (the finisher's worker 0 of each live problem, or every worker of the problems
that changed step) — and :func:`~hogwild_ref.fast.decode_attention` attends with each row's ``n`` query
slots read like ``n`` more query heads: the common window once per group with no rotation, each tail
segment with the row's query re-rotated by ``-o_r(s)`` (Spec §9.2). What differs from a one-token tick
is only what a slot sees of its own write segment: new token ``i`` sees local positions up to
``len_before + i`` (Spec §3.3); every other segment of the view is whole at its post-write length.
Padding slots (``i >= n_r``) and zero-token rows are written to the store's trash slot and return zeros
(Spec §3.4). The plan is made fresh each tick (no static buffers: an extend tick runs eagerly).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from .fast import LayerInputs, StaticTail, common_keys, tail_window
from .rope import RopeSpec, Rotation
from .segments import SegmentTable, TableError, view_offsets
from .store import SegmentStore

__all__ = ["ExtendPlan", "extend_grid", "plan_extend"]


def extend_grid(workers: Sequence[int], group_size: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The groups and local workers (Spec §9.6) whose every pair is one of ``workers``, listed group by
    group in local order, or None when ``workers`` is not such a grid (``group_size``: workers per group)."""
    groups = sorted({w // group_size for w in workers})
    locals_ = sorted({w % group_size for w in workers})
    grid = [b * group_size + j for b in groups for j in locals_]
    return (tuple(groups), tuple(locals_)) if list(workers) == grid else None


@dataclass(frozen=True)
class ExtendPlan:
    """The host's decisions for an extend tick (Spec §9.6, "Several tokens").

    Attributes:
        table: the table after this tick's writes.
        groups: the grid's groups (indices into the store's groups), ascending.
        locals: the grid's local workers, ascending; row ``r`` is worker
            ``groups[r // len(locals)] · W + locals[r % len(locals)]``.
        positions: ``(R, n)`` view position of each row's new tokens (padding slots: the row's last real
            position; zero-token rows: 0), on the host.
        slots: ``(R, n)`` tail slot of each new token (:meth:`SegmentStore.slot`); ``-1`` in padding slots.
        window: the common window (the grid's longest common segment, at least 1 slot).
        tail_window: slots of each written tail block read (:func:`~hogwild_ref.fast.tail_window`).
        static_window: slots of each static tail block read.
        inputs: the tick's layer inputs on the host (masks ``(R, Lw)``, ``(R, n, St·C)``, ``(R, Ss·Cs)``).
    """

    table: SegmentTable
    groups: tuple[int, ...]
    locals: tuple[int, ...]
    positions: Int[Tensor, "R n"]
    slots: Int[Tensor, "R n"]
    window: int
    tail_window: int
    static_window: int
    inputs: LayerInputs


def plan_extend(table: SegmentTable, counts: Mapping[int, int], rope: RopeSpec, store: SegmentStore) -> ExtendPlan:
    """Plan an extend tick in which worker ``w`` feeds ``counts[w]`` tokens (Spec §9.6, §3.3) over
    ``table`` (lengths before the tick), for ``store``'s layout; the workers of ``counts`` must form a
    grid (:func:`extend_grid`). The store must already have room for the writes (:meth:`SegmentStore.reserve`)."""
    if not store.commons:
        raise TableError("an extend tick needs a segment that opens every view, or every group's (Spec §9.6)")
    size = table.workers // len(store.commons)
    workers = sorted(counts)
    grid = extend_grid(workers, size)
    if grid is None:
        raise TableError(f"an extend tick's workers must be every chosen worker of every chosen group; got {workers}")
    if any(c < 0 for c in counts.values()):
        raise TableError(f"new-token counts must be >= 0; got {dict(counts)}")
    groups, locals_ = grid
    after = table.append([counts.get(w, 0) for w in range(table.workers)])
    n = max(1, max(counts.values()))
    tails, statics = store.tail_segments, store.static_segments
    gt, gs = store.group_tail, store.group_static
    positions, slots, write_offsets, starts = [], [], [], []
    offsets_t, offsets_s, visible_t, visible_s, is_write = [], [], [], [], []
    for w in workers:
        view, c, b = after.views[w], counts[w], w // size
        sid = view[-1]
        j, start, offs = after.index(sid), table.length(sid), view_offsets(after, view)
        # a padding slot takes its row's last real position; a zero-token row 0 (Spec §3.6)
        positions.append([offs[sid] + start + min(i, c - 1) if c else 0 for i in range(n)])
        slots.append([store.slot(j, start + i) if i < c else -1 for i in range(n)])
        write_offsets.append(offs[sid])
        starts.append(start)
        mine_t, mine_s = tails[b * gt : (b + 1) * gt], statics[b * gs : (b + 1) * gs]
        ids_t, ids_s = [after.segments[k].id for k in mine_t], [after.segments[k].id for k in mine_s]
        offsets_t.append([offs.get(s, 0) for s in ids_t])
        offsets_s.append([offs.get(s, 0) for s in ids_s])
        visible_t.append([bool(c) and s in offs for s in ids_t])
        visible_s.append([bool(c) and s in offs for s in ids_s])
        is_write.append([k == j for k in mine_t])
    if rope.max_position is not None:
        rope.check_positions(max(max(p) for p in positions))
    lengths = [s.length for s in after.segments]
    commons = [lengths[store.commons[b]] for b in groups]
    window = max(1, max(commons))  # a zero-token row reads slot 0 (capacity >= 1), so never an empty window
    C = tail_window(max((lengths[k] for k in tails), default=0), store.block)
    Cs = tail_window(max((lengths[k] for k in statics), default=0), store.static_block)
    R = len(workers)
    active_rows = torch.tensor([counts[w] > 0 for w in workers])
    count_t = torch.tensor([counts[w] for w in workers])
    slot_i = torch.arange(n)
    # the common window: every slot of an active row sees its group's whole common segment
    common_mask = common_keys(window, torch.tensor(commons).repeat_interleave(len(locals_)), active_rows)
    # the written tail: segments of the view at their post-write lengths; the row's own one causally
    tail_len = torch.tensor([[lengths[k] for k in tails[b * gt : (b + 1) * gt]] for b in groups]).repeat_interleave(
        len(locals_), dim=0)
    t = torch.arange(C)
    own = torch.tensor(is_write, dtype=torch.bool)[:, None, :, None]
    upto = torch.tensor(starts)[:, None, None, None] + slot_i[None, :, None, None]
    tail_mask = (torch.tensor(visible_t, dtype=torch.bool)[:, None, :, None] & (t < tail_len[:, None, :, None])
                 & (~own | (t <= upto)))
    static_len = torch.tensor([[lengths[k] for k in statics[b * gs : (b + 1) * gs]] for b in groups],
                              dtype=torch.long).view(len(groups), gs).repeat_interleave(len(locals_), dim=0)
    static_mask = torch.tensor(visible_s, dtype=torch.bool).view(R, gs)[:, :, None] & (
        torch.arange(Cs) < static_len[:, :, None])
    work = torch.float64 if store.dtype == torch.float64 else torch.float32
    rot_t = rope.rotation(torch.tensor(offsets_t, dtype=torch.long).view(R, gt), dtype=work)
    rot_s = rope.rotation(torch.tensor(offsets_s, dtype=torch.long).view(R, gs), dtype=work)
    rot_w = rope.rotation(torch.tensor(write_offsets, dtype=torch.long), dtype=work)
    static = StaticTail(Rotation(rot_s.cos[:, :, None, None], -rot_s.sin[:, :, None, None]), static_mask.flatten(1)) if gs else None
    inputs = LayerInputs(
        query_rotation=Rotation(rot_t.cos[:, :, None, None], -rot_t.sin[:, :, None, None]),
        common_mask=common_mask,
        tail_mask=tail_mask.flatten(2),
        active=(slot_i[None, :] < count_t[:, None]).to(work),
        write_rotation=Rotation(rot_w.cos[:, None, None], -rot_w.sin[:, None, None]),  # keys (R, Hkv, n, D)
        static=static,
    )
    return ExtendPlan(after, groups, locals_, torch.tensor(positions, dtype=torch.long), torch.tensor(slots, dtype=torch.long),
                      window, C, Cs, inputs)
