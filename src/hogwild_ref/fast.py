"""The fast backend: one-token ticks over the arena, compiled (Spec §9.6).

Split FlashInfer-style into what the host decides once per tick and what the compiled code reads:

* :func:`plan_decode` (host, once per tick) turns the segment table and the rows' new-token counts
  (0 or 1 each) into a :class:`DecodeTick`: Python ints for control flow and a few small tensors —
  per (row, segment) rotations by ``+o_r(s)``, visibility, post-write lengths, each row's arena slot.
  :class:`DecodeBuffers` keeps device copies of them that are written in place every tick (static
  addresses, as CUDA graphs need).
* :func:`decode_attention` (compiled once, ``fullgraph=True``) is one layer's attention on explicit
  tensors. The *common* segment — the one that opens every view (prompt + history) — sits at offset 0
  in every view, so its keys are stored at their view positions already: it is read once for all
  rows with no rotation and no per-row copy. The *tail* (headers, separators, current steps; small)
  is stored at segment-local positions and re-rotated per row to its view positions, as DESIGN §5
  option (a) describes. Both parts share one softmax.

Lengths live only in the masks; the shapes are the common window (the common segment's length rounded
up to :data:`WINDOW_QUANTUM`, marked dynamic so that a growing history does not recompile) and the
tail's capacity (static until the arena is re-allocated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .rope import RopeSpec, Rotation
from .segments import SegmentTable, TableError, view_offsets
from .store import SegmentStore

__all__ = ["WINDOW_QUANTUM", "DecodeBuffers", "DecodeTick", "common_segment", "decode_attention", "plan_decode"]

#: the common window is the common segment's length rounded up to a multiple of this
WINDOW_QUANTUM = 64


def common_segment(table: SegmentTable) -> str | None:
    """The segment that opens every view, if one does (Spec §9.6): the history, or a shared prompt."""
    first = {view[0] for view in table.views}
    if len(first) != 1:
        return None
    sid = first.pop()
    return sid if table[sid].writer is None else None


@dataclass(frozen=True)
class DecodeTick:
    """The host's decisions for one tick in which every row feeds at most one token (Spec §9.6).

    Attributes:
        table: the table after this tick's writes.
        counts: new tokens per row (0 or 1).
        positions: ``(R, 1)`` view position of each row's new token (0 for rows that feed nothing).
        slots: ``(R,)`` arena slot each row writes (the store's trash slot for rows that feed nothing).
        rotation: cos/sin ``(R, S, rotary_dim // 2)`` of ``+o_r(s)`` for every row and segment.
        write: table index of each row's write segment (Python ints).
        visible: ``(R, S)`` whether segment ``s`` is in row ``r``'s view and the row feeds a token.
        lengths: ``(S,)`` segment lengths after the writes.
        window: the common window (the common segment's length rounded up, within its capacity).
    """

    table: SegmentTable
    counts: tuple[int, ...]
    positions: Int[Tensor, "R 1"]
    slots: Int[Tensor, "R"]
    rotation: Rotation
    write: tuple[int, ...]
    visible: Bool[Tensor, "R S"]
    lengths: Int[Tensor, "S"]
    window: int


def plan_decode(table: SegmentTable, counts: Sequence[int], rope: RopeSpec, store: SegmentStore) -> DecodeTick:
    """Plan a one-token tick over ``table`` (lengths before the tick) for the arena ``store`` (Spec §9.6).

    The arena must already have room for the writes (:meth:`SegmentStore.reserve`).
    """
    if len(counts) != table.workers:
        raise TableError(f"counts has {len(counts)} entries; expected one per worker ({table.workers})")
    if any(c not in (0, 1) for c in counts):
        raise TableError(f"the fast decode path feeds 0 or 1 token per row; got {list(counts)}")
    common = store.common
    if common is None:
        raise TableError("the fast decode path needs a segment that opens every view (Spec §9.6)")
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
            slots.append(store.base[w] + local)
        else:
            positions.append(0)
            slots.append(store.trash)
    lengths = [s.length for s in after.segments]
    cap = store.capacities[common]
    window = min(cap, max(WINDOW_QUANTUM, -(-lengths[common] // WINDOW_QUANTUM) * WINDOW_QUANTUM))
    if rope.max_position is not None:
        rope.check_positions(max(positions))
    return DecodeTick(
        table=after,
        counts=tuple(counts),
        positions=torch.tensor(positions, dtype=torch.long)[:, None],
        slots=torch.tensor(slots, dtype=torch.long),
        rotation=rope.rotation(torch.tensor(offsets, dtype=torch.long)),
        write=tuple(write),
        visible=torch.tensor(visible, dtype=torch.bool),
        lengths=torch.tensor(lengths, dtype=torch.long),
        window=window,
    )


class DecodeBuffers:
    """Device copies of a :class:`DecodeTick`'s tensors, written in place every tick (Spec §9.6).

    The compiled code reads these same tensors every tick (static addresses); :meth:`load` copies a
    new tick into them (from pinned host memory, non-blocking, on accelerators).
    """

    def __init__(self, rows: int, segments: int, half_rotary: int, device: Any):
        device = torch.device(device)
        pin = device.type == "cuda"
        self.device = device

        def pair(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
            host = torch.zeros(shape, dtype=dtype, pin_memory=pin)
            return host, (torch.zeros(shape, dtype=dtype, device=device) if device.type != "cpu" else host)

        self._host_positions, self.positions = pair((rows, 1), torch.long)
        self._host_slots, self.slots = pair((rows,), torch.long)
        self._host_cos, self.cos = pair((rows, segments, half_rotary), torch.float32)
        self._host_sin, self.sin = pair((rows, segments, half_rotary), torch.float32)
        self._host_visible, self.visible = pair((rows, segments), torch.bool)
        self._host_lengths, self.lengths = pair((segments,), torch.long)
        self.write_cos = torch.zeros(rows, half_rotary, dtype=torch.float32, device=device)
        self.write_sin = torch.zeros_like(self.write_cos)

    def load(self, tick: DecodeTick) -> None:
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


def decode_attention(
    q: Float[Tensor, "R Hq 1 D"],
    k_common: Float[Tensor, "Hkv Lw D"],
    v_common: Float[Tensor, "Hkv Lw D"],
    k_tail: Float[Tensor, "Hkv Nt D"],
    v_tail: Float[Tensor, "Hkv Nt D"],
    tail_segment: Int[Tensor, "Nt"],
    tail_local: Int[Tensor, "Nt"],
    cos: Float[Tensor, "R S h"],
    sin: Float[Tensor, "R S h"],
    visible: Bool[Tensor, "R S"],
    lengths: Int[Tensor, "S"],
    common: int,
    rope: RopeSpec,
    scaling: float,
) -> Float[Tensor, "R Hq 1 D"]:
    """One layer's attention for a one-token tick over the arena (Spec §9.6).

    ``q`` is rotated at the rows' view positions (as the model does). The common window's keys are
    at their view positions (offset 0 in every view); key ``t`` of the common segment is visible iff
    ``t < lengths[common]``. Tail slot ``a`` holds local position ``tail_local[a]`` of segment
    ``tail_segment[a]``; for row ``r`` it is rotated by ``+o_r(s)`` to its view position and is
    visible iff the segment is in the view and ``tail_local[a] < lengths[s]`` (write-before-read: the
    row's own new token is the last visible key of its write segment). Rows that feed nothing see
    nothing and return zeros. Scores and the softmax are computed in float32 (float64 inputs: float64).
    """
    R, Hq, _, D = q.shape
    hkv = k_common.shape[0]
    acc = torch.promote_types(q.dtype, torch.float32)
    qg = rearrange(q.to(acc), "r (k g) 1 d -> r k g d", k=hkv)
    # common part: read once for all rows, no rotation
    sc = torch.einsum("rkgd,kld->rkgl", qg, k_common.to(acc)) * scaling
    window = k_common.shape[1]
    mc = (torch.arange(window, device=q.device) < lengths[common])[None, :] & visible[:, common, None]
    # tail: re-rotate each slot to the row's view position of its segment
    rot = Rotation(cos[:, tail_segment][:, None], sin[:, tail_segment][:, None])  # (R, 1, Nt, h)
    kt = rope.apply(k_tail.to(acc)[None], rot)  # (R, Hkv, Nt, D)
    st = torch.einsum("rkgd,rktd->rkgt", qg, kt) * scaling
    mt = visible[:, tail_segment] & (tail_local < lengths[tail_segment])[None, :]
    scores = torch.cat([sc, st], dim=-1)
    mask = torch.cat([mc, mt], dim=-1)[:, None, None, :]
    scores = scores.masked_fill(~mask, float("-inf"))
    top = scores.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(acc).min)
    e = torch.exp(scores - top)
    p = e / e.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(acc).tiny)
    out = torch.einsum("rkgl,kld->rkgd", p[..., :window], v_common.to(acc))
    out = out + torch.einsum("rkgt,ktd->rkgd", p[..., window:], v_tail.to(acc))
    return rearrange(out, "r k g d -> r (k g) 1 d").to(q.dtype)


_COMPILED: dict[str, Any] = {}


def compiled_decode_attention(mode: str | None = None) -> Any:
    """:func:`decode_attention` under ``torch.compile(fullgraph=True)`` (one compiled function per process)."""
    key = mode or "default"
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(decode_attention, fullgraph=True, mode=mode)
    return _COMPILED[key]
