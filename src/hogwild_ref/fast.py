"""The fast backend: one-token ticks over preallocated segment storage (Spec §9.6).

Split FlashInfer-style into what the host decides once per tick and what the compiled code reads:

* :func:`plan_decode` (host, once per tick) turns the segment table and the rows' new-token counts
  (0 or 1 each) into a :class:`DecodePlan`: Python ints for control flow and a few small tensors —
  per (row, segment) rotations by ``+o_r(s)``, visibility, post-write lengths, each row's tail slot.
  :class:`DecodeBuffers` keeps device copies of them that are written in place every tick (static
  addresses, as CUDA graphs need).
* :func:`decode_attention` is one layer's attention on explicit tensors (traced into the engine's
  compiled decode step when it compiles one, ``fullgraph=True``). The *common* segment — the one
  that opens every view (prompt + history) — sits at offset 0 in every view, so its keys are stored
  at their view positions already: it is read once for all rows with no rotation and no per-row
  copy. The *tail* (headers, separators, current steps; small) stays at segment-local positions;
  each row's query is re-rotated once per tail segment (Spec §9.2) and the tail is read by one
  batched matmul over (head, segment). Both parts share one softmax. On the CPU these batched
  products go through numpy's BLAS (:func:`~hogwild_ref.cpu_matmul.batched_matmul`, Spec §9.6, "CPU
  window products").

Lengths live only in the masks; the shapes are the common window (the common segment's length rounded
up to :data:`WINDOW_QUANTUM`, marked dynamic when the engine compiles its decode step, so that a growing
history does not recompile) and the tail's block capacity (static until the store is re-allocated).
:func:`prefix_attention` is the prefill of the common segment: plain causal SDPA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .cpu_matmul import batched_matmul
from .rope import RopeSpec, Rotation
from .segments import SegmentTable, TableError, view_offsets
from .store import SegmentStore

__all__ = ["TAIL_QUANTUM", "WINDOW_QUANTUM", "DecodeBuffers", "DecodePlan", "LayerInputs", "StaticTail", "common_keys", "common_window",
           "decode_attention", "plan_decode", "prefix_attention", "tail_window"]

#: the common window is the common segment's length rounded up to a multiple of this
WINDOW_QUANTUM = 64
#: an eager tick reads each tail block up to the longest tail segment, rounded up to a multiple of this
TAIL_QUANTUM = 16


def tail_window(longest: int, block: int) -> int:
    """Slots of every tail block an eager one-token tick reads (Spec §9.6): the longest tail segment's
    length rounded up to :data:`TAIL_QUANTUM`, within the block capacity."""
    return min(block, max(TAIL_QUANTUM, -(-longest // TAIL_QUANTUM) * TAIL_QUANTUM))


def common_window(length: int, capacity: int) -> int:
    """Keys of the common segment a one-token tick reads (Spec §9.6): its length rounded up to
    :data:`WINDOW_QUANTUM`, within its capacity."""
    return min(capacity, max(WINDOW_QUANTUM, -(-length // WINDOW_QUANTUM) * WINDOW_QUANTUM))


@dataclass(frozen=True)
class DecodePlan:
    """The host's decisions for one tick in which every row feeds at most one token (Spec §9.6).

    Attributes:
        table: the table after this tick's writes.
        positions: ``(R, 1)`` view position of each row's new token (0 for rows that feed nothing).
        slots: ``(R,)`` tail slot each row writes (:meth:`SegmentStore.slot`); ``-1`` for a row that
            feeds nothing (it writes the store's trash slot, which no tick reads).
        rotation: cos/sin ``(R, S, rotary_dim // 2)`` of ``+o_r(s)`` for every row and segment.
        write: table index of each row's write segment (Python ints).
        visible: ``(R, S)`` whether segment ``s`` is in row ``r``'s view and the row feeds a token.
        lengths: ``(S,)`` segment lengths after the writes.
        window: the common window (the longest common segment's length rounded up, within their capacity).
        common_lengths: each group's common segment length after the writes.
        tail_window: the slots of each written tail block an eager tick reads (:func:`tail_window`).
        static_window: the slots of each static tail block an eager tick reads (:func:`tail_window`
            of the longest static tail segment).
    """

    table: SegmentTable
    positions: Int[Tensor, "R 1"]
    slots: Int[Tensor, " R"]
    rotation: Rotation
    write: tuple[int, ...]
    visible: Bool[Tensor, "R S"]
    lengths: Int[Tensor, " S"]
    window: int
    tail_window: int
    static_window: int
    common_lengths: tuple[int, ...]


def plan_decode(table: SegmentTable, counts: Sequence[int], rope: RopeSpec, store: SegmentStore) -> DecodePlan:
    """Plan a one-token tick over ``table`` (lengths before the tick) for ``store`` (Spec §9.6).

    The store must already have room for the writes (:meth:`SegmentStore.reserve`).
    """
    if len(counts) != table.workers:
        raise TableError(f"counts has {len(counts)} entries; expected one per worker ({table.workers})")
    if any(c not in (0, 1) for c in counts):
        raise TableError(f"the fast decode path feeds 0 or 1 token per row; got {list(counts)}")
    if not store.commons:
        raise TableError("the fast decode path needs a segment that opens every view, or every group's (Spec §9.6)")
    after = table.append(counts)
    R, S = table.workers, len(table.segments)
    offsets = [[0] * S for _ in range(R)]
    visible = [[False] * S for _ in range(R)]
    positions, slots, write = [], [], []
    for r, view in enumerate(after.views):
        w = after.index(view[-1])
        write.append(w)
        offs = view_offsets(after, view)
        if counts[r]:
            for sid, o in offs.items():
                j = after.index(sid)
                offsets[r][j] = o
                visible[r][j] = True
            local = after.length(view[-1]) - 1
            positions.append(offs[view[-1]] + local)
            slots.append(store.slot(w, local))
        else:  # writes its (unused) K/V into the trash slot
            positions.append(0)
            slots.append(-1)
    lengths = [s.length for s in after.segments]
    if rope.max_position is not None:
        rope.check_positions(max(positions))
    return DecodePlan(
        table=after,
        positions=torch.tensor(positions, dtype=torch.long)[:, None],
        slots=torch.tensor(slots, dtype=torch.long),
        rotation=rope.rotation(torch.tensor(offsets, dtype=torch.long), dtype=_work(store.dtype)),
        write=tuple(write),
        visible=torch.tensor(visible, dtype=torch.bool),
        lengths=torch.tensor(lengths, dtype=torch.long),
        window=common_window(max(lengths[j] for j in store.commons), store.capacities[store.commons[0]]),
        tail_window=tail_window(max((lengths[j] for j in store.tail_segments), default=0), store.block),
        static_window=tail_window(max((lengths[j] for j in store.static_segments), default=0), store.static_block),
        common_lengths=tuple(lengths[j] for j in store.commons),
    )


def _work(dtype: torch.dtype) -> torch.dtype:
    """Rotation dtype: float32, or float64 for float64 storage (Spec §8.5)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class StaticTail(NamedTuple):
    """What a one-token tick's rows see of their group's static tail segments (Spec §9.6): the query
    rotation by ``-o_r(s)`` (cos/sin ``(R, Ss, 1, 1, h)``) and the keys each row sees (``(R, Ss·Cs)``,
    ``Cs`` slots read per static block)."""

    rotation: Rotation
    mask: Tensor

    def to(self, device: torch.device | str) -> StaticTail:
        """These tensors on ``device``."""
        return StaticTail(self.rotation.to(device), self.mask.to(device, non_blocking=True))


class LayerInputs(NamedTuple):
    """A one-token tick's inputs shared by every layer on one device (Spec §9.6)."""

    query_rotation: Rotation  # by -o_r(s) for the row's group's written tail segments: cos/sin (R, St, 1, 1, h)
    common_mask: Tensor | None  # (R, Lw): the common-window keys each row sees; None: all of them
    tail_mask: Tensor  # (R, St·C): the written tail keys each row sees, its group's blocks in order ((R, n, St·C)
    # in an extend tick: per query slot)
    active: Tensor  # (R,): 1 for rows that feed a token ((R, n) in an extend tick: per query slot)
    write_rotation: Rotation  # by -o_r(write): cos/sin (R, 1, h)
    static: StaticTail | None = None  # the static tail's rotation and mask (None: no static segment)
    scatter_index: Tensor | None = None  # elements of the store's flat tail buffers the new K/V go to

    def to(self, device: torch.device | str) -> LayerInputs:
        """These inputs on ``device`` (an extend tick's host inputs, once per layer device per tick, Spec §11.8)."""
        def move(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.to(device, non_blocking=True)
        return LayerInputs(self.query_rotation.to(device), move(self.common_mask), self.tail_mask.to(device, non_blocking=True),
                           self.active.to(device, non_blocking=True), self.write_rotation.to(device),
                           None if self.static is None else self.static.to(device), move(self.scatter_index))


def common_keys(window: int, lengths: Int[Tensor, " R"], active: Bool[Tensor, " R"]) -> Bool[Tensor, "R Lw"]:
    """The common-window keys each row sees (Spec §9.6): the first ``lengths[r]`` of ``window`` for a row
    that feeds a token; slot 0 alone for one that does not, so that its softmax stays finite (its
    output is zeroed by ``active``)."""
    mask = (torch.arange(window, device=lengths.device)[None, :] < lengths[:, None]) & active[:, None]
    mask[:, 0] |= ~active
    return mask


class DecodeBuffers:
    """Device copies of a :class:`DecodePlan`'s tensors, written in place every tick (Spec §9.6).

    The compiled code reads these same tensors every tick (static addresses); :meth:`load` copies a
    new tick into them (from pinned host memory, non-blocking, on accelerators).
    """

    def __init__(self, rows: int, segments: int, half_rotary: int, device: Any, dtype: torch.dtype = torch.float32):
        device = torch.device(device)
        pin = device.type == "cuda"
        self.device = device

        def pair(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
            host = torch.zeros(shape, dtype=dtype, pin_memory=pin)
            return host, (torch.zeros(shape, dtype=dtype, device=device) if device.type != "cpu" else host)

        self._host_positions, self.positions = pair((rows, 1), torch.long)
        self._host_slots, self.slots = pair((rows,), torch.long)
        work = _work(dtype)
        self._host_cos, self.cos = pair((rows, segments, half_rotary), work)
        self._host_sin, self.sin = pair((rows, segments, half_rotary), work)
        self._host_visible, self.visible = pair((rows, segments), torch.bool)
        self._host_lengths, self.lengths = pair((segments,), torch.long)
        self.write_cos = torch.zeros(rows, half_rotary, dtype=work, device=device)
        self.write_sin = torch.zeros_like(self.write_cos)

    def load(self, tick: DecodePlan) -> None:
        """Copy ``tick`` into the buffers (in place) and derive each row's write rotation ``-o_r(write)``."""
        pairs = (
            (self._host_positions, self.positions, tick.positions),
            (self._host_slots, self.slots, tick.slots),
            (self._host_cos, self.cos, tick.rotation.cos),
            (self._host_sin, self.sin, tick.rotation.sin),
            (self._host_visible, self.visible, tick.visible),
            (self._host_lengths, self.lengths, tick.lengths),
        )
        for host, dev, new in pairs:
            host.copy_(new)
            if dev is not host:
                dev.copy_(host, non_blocking=True)
        rows = torch.arange(len(tick.write), device=self.device)
        write = torch.tensor(tick.write, dtype=torch.long).to(self.device, non_blocking=True)
        self.write_cos.copy_(self.cos[rows, write])
        self.write_sin.copy_(-self.sin[rows, write])

    def layer_inputs(self, window: int, commons: Int[Tensor, " R"], tails: Int[Tensor, "R St"], block: int,
                     whole_common: bool = False, statics: Int[Tensor, "R Ss"] | None = None,
                     static_block: int = 0) -> LayerInputs:
        """The tick's inputs of :func:`decode_attention` shared by every layer on this device.

        ``commons``: the table index of each row's common segment (its group's); ``tails``: the table
        indices of each row's group's written tail segments, in block order; ``statics``: those of its
        static tail segments (None or no column: none), read ``static_block`` slots each. Returns the rotation by
        ``-o_r(s)`` of every row's query for each of its tail segments ``s`` (cos/sin
        ``(R, St, 1, 1, h)``), the keys each row sees (its group's common window of ``window`` slots,
        then ``block`` slots per tail segment of its group), which rows feed a token, and the
        rotation of each row's new key by ``-o_r(write)``. ``whole_common``: the caller knows that
        every group's common segment fills the window exactly, so every row sees the whole window
        and no common mask is built (``common_mask`` is None). Otherwise a row without a new token
        is given the common window's first slot, so that its softmax stays finite (its output is
        zeroed by ``active``). The :class:`Rotation` objects are built here, outside any compiled code.
        """
        active = self.visible.any(dim=1)
        common_mask = None
        if not whole_common:
            common_mask = common_keys(window, self.lengths[commons], active)
        query, tail_mask = self._tail_inputs(tails, block)
        static = None
        if statics is not None and statics.shape[1]:
            static = StaticTail(*self._tail_inputs(statics, static_block))
        write = Rotation(self.write_cos[:, None], self.write_sin[:, None])  # keys (R, Hkv, D) to local positions
        return LayerInputs(query, common_mask, tail_mask, active.to(self.cos.dtype), write, static)

    def _tail_inputs(self, segments: Tensor, block: int) -> tuple[Rotation, Tensor]:
        """The query rotation by ``-o_r(s)`` (cos/sin ``(R, S, 1, 1, h)``) and the key mask ``(R, S·block)``
        of each row for the tail segments ``segments`` ``(R, S)`` of its group, ``block`` slots read each."""
        local = torch.arange(block, device=self.device)
        rows = torch.arange(segments.shape[0], device=self.device)[:, None]
        mask = self.visible[rows, segments][..., None] & (local[None, None, :] < self.lengths[segments][..., None])
        query = Rotation(self.cos[rows, segments][:, :, None, None], -self.sin[rows, segments][:, :, None, None])
        return query, mask.flatten(1)


def _tail_scores(qg: Tensor, k_tail: Tensor, query_rotation: Rotation, rope: RopeSpec) -> Tensor:
    """Unscaled scores ``(P, Hkv, St, W·g, C)`` of the queries ``qg`` ``(P, W, Hkv, g, D)`` (accumulation
    dtype; ``P`` groups of ``W`` rows) against their group's tail blocks (``k_tail`` ``(P·Hkv, St, C, D)``,
    group-major): each row's query re-rotated once per tail segment by ``-o_r(s)`` (Spec §9.2), one
    batched matmul over (group, head, segment), reading the tail in place. The scores stay block by
    block, as the matmul writes them (no transposed copy)."""
    P, W, hkv, g, D = qg.shape
    st_n, block = k_tail.shape[1], k_tail.shape[2]
    qr = rope.apply(qg.reshape(P * W, 1, hkv, g, D), query_rotation)  # (R, St, Hkv, g, D)
    qr = qr.view(P, W, st_n, hkv, g, D).permute(0, 3, 2, 1, 4, 5).reshape(P, hkv, st_n, W * g, D)
    kt = k_tail.view(P, hkv, st_n, block, D)
    return batched_matmul(qr, kt.to(qg.dtype).transpose(-1, -2))  # (P, Hkv, St, W*g, C)


def _tail_values(p: Tensor, v_tail: Tensor) -> Tensor:
    """``(P, Hkv, W·g, D)``: the tail's weights ``p`` ``(P, Hkv, St, W·g, C)`` (:func:`_tail_scores`'
    layout) applied to the values of each group's tail blocks (``v_tail`` ``(P·Hkv, St, C, D)``)."""
    P, hkv, st_n = p.shape[:3]
    vt = v_tail.view(P, hkv, st_n, v_tail.shape[2], v_tail.shape[3])
    return batched_matmul(p, vt.to(p.dtype)).sum(dim=2)


#: ``log2 e``: a one-token tick's scores are computed in base 2 (the queries are scaled by it) and the
#: softmax takes ``exp2`` (Spec §9.6, step 4): PyTorch's CPU ``exp2`` is exact at ``-inf`` (a masked
#: key's weight is exactly 0) at full speed and costs about a third of ``exp`` on finite scores, while
#: ``exp`` takes a slow path for arguments that underflow, ``-inf`` included (measured on this
#: project's development CPU, one thread, torch 2.13: finite scores 0.32 against 0.86 ns an element,
#: ``-inf`` 0.30 against 2.96 ns; pytorch/pytorch#143800)
LOG2E = math.log2(math.e)


def _mask_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean key mask as the float tensor added to the scores (Spec §9.6, step 4; same shape,
    broadcast against them): ``0`` where the mask admits the key (exact: ``s + 0 == s``), ``-inf``
    where it does not (``exp2`` makes it exactly 0). Built from the mask's few elements once per
    part, it replaces a ``masked_fill`` that broadcasts the mask over the heads (on the CPU about
    70 us for 8 problems of 2 workers and a 576-key window, against under 10 us for a broadcast add)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def decode_attention(
    q: Float[Tensor, "R Hq n D"],
    k_common: Float[Tensor, "P Hkv Lw D"],
    v_common: Float[Tensor, "P Hkv Lw D"],
    k_tail: Float[Tensor, "PHkv St C D"],
    v_tail: Float[Tensor, "PHkv St C D"],
    query_rotation: Rotation,
    common_mask: Bool[Tensor, "R Lw"] | None,
    tail_mask: Bool[Tensor, "R T"] | Bool[Tensor, "R n T"],
    active: Float[Tensor, " R"] | Float[Tensor, "R n"],
    rope: RopeSpec,
    scaling: float,
    k_static: Float[Tensor, "PHkv Ss Cs D"] | None = None,
    v_static: Float[Tensor, "PHkv Ss Cs D"] | None = None,
    static: StaticTail | None = None,
) -> Float[Tensor, "R Hq n D"]:
    """One layer's attention for a one-token tick, or an extend tick's (Spec §9.6).

    The rows come in ``P`` groups of ``W = R / P`` consecutive rows (one group for one problem; a
    group per problem in a batch, Spec §13.3); group ``b`` reads only its own common window
    ``k_common[b]`` and its own ``St`` tail blocks (``k_tail``'s blocks group by group), so the
    work is block-diagonal: linear in ``P``. ``k_tail`` / ``v_tail`` hold every group's tail blocks,
    group-major: row ``b·Hkv + h`` is group ``b``'s head ``h`` (``St`` blocks of ``C`` slots each).

    ``q`` is rotated at the rows' view positions (as the model does). The common window's keys are
    at their view positions already (a common segment sits at offset 0 in every view of its group)
    and are read once for all rows of the group. The tail's keys stay at segment-local positions; for
    tail segment ``s`` row ``r``'s query is re-rotated by ``query_rotation`` (cos/sin
    ``(R, St, 1, 1, h)``: the rotation by ``-o_r(s)``, Spec §9.2), so that its dot product with key
    ``t`` sees the relative position ``p - o_r(s) - t``. ``common_mask`` says which common-window
    keys each row sees (None: all of them, as when the window is exactly every group's common
    segment) and ``tail_mask`` (``T = St·C``) which tail keys, its group's blocks in order.
    ``k_static`` / ``v_static`` (``Ss`` blocks of ``Cs`` slots per group and head) with ``static``
    (their rotation and mask) are a second tail part read the same way: the static segments
    (headers, separators), read only as far as the longest of them.

    A row may feed ``n > 1`` tokens (an extend tick, :mod:`~hogwild_ref.extend`): its ``n`` query slots
    are read like ``n`` more query heads of the row (same rotations, same common keys), and
    ``tail_mask`` ``(R, n, T)`` and ``active`` ``(R, n)`` then say per slot what it sees (its own write
    segment causally, Spec §3.3) and whether it holds a token.

    Every part shares one softmax, computed without joining them: the row maximum over all, then
    ``exp2`` in place and one sum per part, so each score block is written by its matmul and read
    three more times, never copied (the scaling and ``log2 e``, :data:`LOG2E`, are applied to the
    queries; a masked key's score is ``-inf``, its weight exactly 0). Rows with
    ``active == 0`` (no new token) return zeros. Scores and the softmax are computed in float32
    (float64 for float64 inputs).
    """
    R, Hq, n, D = q.shape
    P, hkv = k_common.shape[0], k_common.shape[1]
    W, g = R // P, Hq // hkv * n  # a row's n query slots are read as n times its heads (R, Hkv, g·n, D)
    acc = torch.promote_types(q.dtype, torch.float32)
    qg = (q.to(acc) * (scaling * LOG2E)).reshape(P, W, hkv, g, D)  # base-2 scores (exp2, step 4)
    # common part: one batched matmul per (group, KV head) over the group's rows' queries, no rotation
    qk = qg.permute(0, 2, 1, 3, 4).reshape(P, hkv, W * g, D)
    sc = batched_matmul(qk, k_common.to(acc).transpose(-1, -2))  # (P, Hkv, W*g, Lw)
    if common_mask is not None:  # the common window's keys each row sees (None: all of them)
        sc.view(P, hkv, W, g, -1).add_(_mask_bias(common_mask.view(P, 1, W, 1, -1), acc))
    tails = _tail_parts(k_tail, v_tail, query_rotation, tail_mask, k_static, v_static, static)
    # the tail parts' scores (P, Hkv, S, W*g, C), block by block, masked
    parts = [_tail_part_scores(qg, k, rotation, mask, rope) for k, _, rotation, mask in tails]
    # one softmax over every part: every row sees a key (an active row its own new one in the tail)
    top = sc.amax(dim=-1, keepdim=True)  # (P, Hkv, W*g, 1)
    for st in parts:
        top = torch.maximum(top, st.amax(dim=(2, 4), keepdim=True)[:, :, 0])
    pc = sc.sub_(top).exp2_()  # base 2 (the queries were scaled by log2 e); a masked key's -inf gives 0
    total = pc.sum(dim=-1, keepdim=True)
    out = batched_matmul(pc, v_common.to(acc))  # (P, Hkv, W*g, D)
    for pt, (_, v, _, _) in zip(parts, tails):
        pt.sub_(top[:, :, None]).exp2_()
        total = total + pt.sum(dim=(2, 4), keepdim=True)[:, :, 0]
        out = out + _tail_values(pt, v)
    out = (out / total).view(P, hkv, W, g, D).permute(0, 2, 1, 3, 4).reshape(R, Hq, n, D) * active.view(R, 1, -1, 1)
    return out.to(q.dtype)


def _tail_parts(k_tail: Tensor, v_tail: Tensor, query_rotation: Rotation, tail_mask: Tensor,
                k_static: Tensor | None, v_static: Tensor | None, static: StaticTail | None
                ) -> list[tuple[Tensor, Tensor, Rotation, Tensor]]:
    """The tail parts a one-token tick attends to (Spec §9.6): ``(keys, values, query rotation, mask)``
    of the written tail, then of the static tail when there is one."""
    parts = [(k_tail, v_tail, query_rotation, tail_mask)]
    if static is not None and k_static is not None and v_static is not None:
        parts.append((k_static, v_static, static.rotation, static.mask))
    return parts


def _tail_part_scores(qg: Tensor, k: Tensor, rotation: Rotation, mask: Tensor, rope: RopeSpec) -> Tensor:
    """One tail part's scores ``(P, Hkv, S, W·g, C)`` (:func:`_tail_scores`) with the keys its ``mask``
    does not admit set to ``-inf`` (:func:`_mask_bias`, laid out ``(P, 1, S, W, 1, C)`` for a ``mask``
    ``(R, S·C)``, one per row, or ``(P, 1, S, W, g, C)`` for a ``mask`` ``(R, n, S·C)``, one per query
    slot of a row's ``n``, its ``g = heads·n`` query columns ordered head-major)."""
    P, W, hkv, g, _ = qg.shape
    st = _tail_scores(qg, k, rotation, rope)
    n, block = st.shape[2], st.shape[4]
    if mask.dim() == 2:
        keep = mask.view(P, W, n, block).transpose(1, 2)[:, None, :, :, None, :]
    else:  # per query slot: (R, slots, S·C) -> (P, 1, S, W, heads·slots, C)
        slots = mask.shape[1]
        per = mask.view(P, W, 1, slots, n, block).expand(P, W, g // slots, slots, n, block)
        keep = per.reshape(P, W, g, n, block).permute(0, 3, 1, 2, 4)[:, None]
    st.view(P, hkv, n, W, g, block).add_(_mask_bias(keep, st.dtype))
    return st


def prefix_attention(
    q: Float[Tensor, "1 Hq n D"], keys: Float[Tensor, "Hkv L D"], values: Float[Tensor, "Hkv L D"],
    start: int, scaling: float,
) -> Float[Tensor, "1 Hq n D"]:
    """Attention of a prefill chunk of the common segment (Spec §9.6): one causal sequence.

    The chunk's queries sit at positions ``start .. start+n-1`` of the segment, which opens every
    view (offset 0), so its stored keys are at their view positions: this is plain causal attention
    over ``keys[:, :start+n]`` through PyTorch's fused kernel (no dense score matrix, memory linear
    in the prompt length for a fixed chunk).
    """
    n = q.shape[2]
    T = start + n
    k, v = keys[None, :, :T], values[None, :, :T]
    if k.stride(-1) != 1:  # keys stored transposed (a CPU store): the fused kernel wants D contiguous
        k = k.contiguous()
    if start == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=True)
    mask = torch.arange(T, device=q.device)[None, :] <= torch.arange(start, T, device=q.device)[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=True)
