"""Segment K/V storage for one layer: preallocated, written by index (Spec §2.1, §3.6, §9.6).

A plain class that knows nothing of transformers. Per layer, on that layer's device:

* the *common* segments (each group's static segment that opens its views: the prompt/history; one
  group for one problem, ``P`` for a batch of problems, Spec §9.6) share one buffer
  ``(P, Hkv, cap, D)`` for keys and one for values, so the fast backend reads each group's window
  with one batched matmul;
* every other segment is the *tail*, in two parts. The segments that ticks write (every worker's
  current step) have a block of one common capacity ``C`` each in a ``(P·Hkv, S_g, C, D)`` tensor
  (``S_g`` such segments per group; row ``g·Hkv + h`` is group ``g``'s head ``h``); the static ones
  (headers, separators) a block of their own capacity ``C_z`` each in a ``(P·Hkv, Z_g, C_z, D)``
  tensor. Each part is read by one batched matmul over (group, head, segment) without a copy, up to
  its own longest segment, and grows on its own: a long step does not make a four-token header
  cost as many slots. One group: ``(Hkv, S, C, D)``.

On a CPU the keys lie transposed in memory — ``(D, cap + 1)`` per common head, ``(D, C)`` per tail
block, each row padded to whole cache lines (:meth:`SegmentStore.key_pitch`) — and the views above
are their transposes, so readers see the same shapes either way (Spec §9.6 "Storage"). Keys are
stored rotated at segment-local positions (Spec §2.1). Capacities start at what a run first needs; a
write past a segment's capacity re-allocates only the part that filled (the common buffers, or one
tail part) with that capacity at least doubled (Spec §9.6), so memory follows the tokens held.
``keys[j]`` / ``values[j]`` are views of segment ``j`` (table order).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["DEFAULT_CAPACITY", "KEY_ROW_BYTES", "SegmentKV", "SegmentStore"]

#: capacity of a segment whose size the caller did not plan
DEFAULT_CAPACITY = 64

#: a transposed key matrix's rows (one per head dimension) start this many bytes apart at least, a
#: multiple of it (Spec §9.6 "Storage"): a cache line, so that a score product streams whole lines
KEY_ROW_BYTES = 64


@runtime_checkable
class SegmentKV(Protocol):
    """What the general backends read and write (Spec §9.2, §9.3): every segment's K/V by table index,
    on one device."""

    device: torch.device

    @property
    def keys(self) -> Sequence[Tensor]: ...

    @property
    def values(self) -> Sequence[Tensor]: ...

    def write(self, j: int, start: int, k: Tensor, v: Tensor) -> None: ...


class SegmentStore:
    """K/V of every segment of one layer (Spec §9.6).

    Args:
        capacities: slots reserved per segment, in table order.
        kv_heads: key/value heads of the layer.
        head_dim: head dimension.
        dtype: storage dtype (the model's).
        device: the layer's device.
        common: table index of the segment that opens every view, or each group's common segment
            (:class:`~hogwild_ref.segments.DecodeGroups`), or None: then every segment has a buffer of
            its own capacity and the fast path does not apply.
        tails: the tail's segments (default: every other segment, in table order).
        static: those of ``tails`` that no one-token tick writes (headers, separators); their blocks
            form the static part of the tail, in ``tails`` order, with a capacity of its own (default:
            none).
    """

    def __init__(self, capacities: Sequence[int], kv_heads: int, head_dim: int, dtype: torch.dtype, device: Any,
                 common: int | Sequence[int] | None = 0, tails: Sequence[int] | None = None,
                 keys_transposed: bool | None = None, static: Sequence[int] = ()):
        self.kv_heads, self.head_dim, self.dtype, self.device = kv_heads, head_dim, dtype, torch.device(device)
        #: keys lie in memory with the head dimension first (Spec §9.6 "Storage"): ``(D, cap + 1)`` per
        #: common head, ``(D, C)`` per tail block, rows :meth:`key_pitch` apart, so that the fast path's
        #: score matmuls read them as they lie; the default on a CPU, whose small batched matmuls
        #: repack a ``(cap, D)`` operand
        self.keys_transposed = self.device.type == "cpu" if keys_transposed is None else keys_transposed
        #: table index of each group's common segment (empty: no fast path)
        self.commons: tuple[int, ...] = () if common is None else (common,) if isinstance(common, int) else tuple(common)
        self._group_of = {j: b for b, j in enumerate(self.commons)}
        tail = list(tails) if tails is not None else [j for j in range(len(capacities)) if j not in self._group_of]
        fixed = set(static)
        #: table indices of the written tail's segments, and of the static tail's, each in block order
        #: (group by group)
        self.tail_segments = [j for j in tail if j not in fixed]
        self.static_segments = [j for j in tail if j in fixed]
        P = max(1, len(self.commons))
        #: written and static tail segments per group
        self.group_tail, self.group_static = len(self.tail_segments) // P, len(self.static_segments) // P
        #: each tail segment's (static part?, group, block within the group's part)
        self._block_of = {j: (False, *divmod(i, max(1, self.group_tail))) for i, j in enumerate(self.tail_segments)}
        self._block_of |= {j: (True, *divmod(i, max(1, self.group_static))) for i, j in enumerate(self.static_segments)}
        self.generation = 0  # bumped by every re-allocation
        caps = [max(1, int(c)) for c in capacities]
        if not self.commons:  # no fast path: one buffer per segment at its own capacity
            self.block = self.static_block = 0
            self.capacities = caps
            self.keys = [self._zeros(kv_heads, c, head_dim) for c in caps]
            self.values = [self._zeros(kv_heads, c, head_dim) for c in caps]
            return
        self.capacities = list(caps)
        self.k_common: Tensor
        self.v_common: Tensor
        self.k_tail: Tensor
        self.v_tail: Tensor
        self.k_static: Tensor
        self.v_static: Tensor
        self._allocate_common(max(caps[j] for j in self.commons), keep=0)
        self._allocate_tail(max([caps[j] for j in self.tail_segments], default=1), keep=0)
        self._allocate_static(max([caps[j] for j in self.static_segments], default=1), keep=0)
        self._index_segments()

    # ------------------------------------------------------------------ layout
    @property
    def common(self) -> int | None:
        """Table index of the segment that opens every view (one group), else None."""
        return self.commons[0] if len(self.commons) == 1 else None

    def _allocate_common(self, cap: int, keep: int) -> None:
        """(Re-)allocate the common segments' buffers with ``cap`` slots each, keeping the first ``keep``."""
        H, D, P = self.kv_heads, self.head_dim, len(self.commons)
        # one spare row: a window of the whole capacity is never the whole buffer, so its strides
        # relate to its length in one way only (a compiled step does not recompile on it)
        v = self._grown((P, H, cap + 1, D), 2, keep)[:, :, :cap]
        k = self._key_buffer((P, H), cap + 1, keep)[1][:, :, :cap]
        if keep:
            k[:, :, :keep], v[:, :, :keep] = self.k_common[:, :, :keep], self.v_common[:, :, :keep]
        self.k_common, self.v_common = k, v
        for j in self.commons:
            self.capacities[j] = cap

    def _allocate_tail(self, block: int, keep: int) -> None:
        """(Re-)allocate the written tail with blocks of ``block`` slots, keeping the first ``keep`` of each."""
        H, D, n, P = self.kv_heads, self.head_dim, self.group_tail, len(self.commons)
        # one flat buffer with one extra block at the end: the trash, where a row that feeds nothing
        # writes in a one-token tick (outside every view, never read: Spec §3.4)
        blocks = P * H * n
        v_buf = self._grown((blocks + 1, block, D), 1, keep)
        v_tail = v_buf[:-1].view(P * H, n, block, D)
        k_buf, k_blocks = self._key_buffer((blocks + 1,), block, keep)
        k_tail = k_blocks[:-1].view(P * H, n, block, D)
        if keep:
            k_tail[:, :, :keep], v_tail[:, :, :keep] = self.k_tail[:, :, :keep], self.v_tail[:, :, :keep]
            k_blocks[-1].zero_()  # the trash block: no copy fills its first slots
            v_buf[-1].zero_()
        self._k_flat, self._v_flat, self.k_tail, self.v_tail = k_buf.view(-1), v_buf.view(-1), k_tail, v_tail
        self.trash = blocks * block
        self.block = block
        for j in self.tail_segments:
            self.capacities[j] = block

    def _allocate_static(self, block: int, keep: int) -> None:
        """(Re-)allocate the static tail with blocks of ``block`` slots, keeping the first ``keep`` of each."""
        H, D, z, P = self.kv_heads, self.head_dim, self.group_static, len(self.commons)
        v = self._grown((P * H, z, block, D), 2, keep)
        k = self._key_buffer((P * H, z), block, keep)[1]
        if keep:
            k[:, :, :keep], v[:, :, :keep] = self.k_static[:, :, :keep], self.v_static[:, :, :keep]
        self.k_static, self.v_static = k, v
        self.static_block = block
        for j in self.static_segments:
            self.capacities[j] = block

    def _index_segments(self) -> None:
        """``keys[j]`` / ``values[j]``: views of segment ``j``'s slots in the current buffers."""
        self.keys = [self._segment(self.k_common, self.k_tail, self.k_static, j) for j in range(len(self.capacities))]
        self.values = [self._segment(self.v_common, self.v_tail, self.v_static, j) for j in range(len(self.capacities))]

    def _zeros(self, *shape: int) -> Tensor:
        with torch.inference_mode(False):  # normal tensors even when re-allocated during a tick
            return torch.zeros(*shape, dtype=self.dtype, device=self.device)

    def _grown(self, shape: tuple[int, ...], dim: int, keep: int) -> Tensor:
        """A new buffer of ``shape`` whose first ``keep`` entries along ``dim`` the caller fills by a
        copy: only the rest is zeroed (slots no segment holds are read under masks, so they must be
        finite, Spec §9.6)."""
        if not keep:
            return self._zeros(*shape)
        with torch.inference_mode(False):
            buf = torch.empty(shape, dtype=self.dtype, device=self.device)
        buf.narrow(dim, keep, shape[dim] - keep).zero_()
        return buf

    def key_pitch(self, length: int) -> int:
        """Elements from one head dimension's keys to the next in a transposed key matrix of ``length``
        slots (Spec §9.6 "Storage"): ``length`` rounded up to a whole number of :data:`KEY_ROW_BYTES`,
        so that every row starts on a cache line; ``length`` when the keys are not transposed."""
        if not self.keys_transposed:
            return length
        per_line = max(1, KEY_ROW_BYTES // self.dtype.itemsize)
        return -(-length // per_line) * per_line

    def _key_buffer(self, lead: tuple[int, ...], length: int, keep: int) -> tuple[Tensor, Tensor]:
        """A new key buffer (:meth:`_grown`) and its view ``(*lead, length, D)``; in memory it is
        ``(*lead, D, pitch)`` when the keys are stored transposed (:attr:`keys_transposed`), its rows
        :meth:`key_pitch` elements apart (the padding is zeros no view covers)."""
        if self.keys_transposed:
            buf = self._grown((*lead, self.head_dim, self.key_pitch(length)), len(lead) + 1, keep)
            return buf, buf[..., :length].transpose(-1, -2)
        buf = self._grown((*lead, length, self.head_dim), len(lead), keep)
        return buf, buf

    def _segment(self, common: Tensor, tail: Tensor, static: Tensor, j: int) -> Tensor:
        if j in self._group_of:
            return common[self._group_of[j]]
        is_static, g, b = self._block_of[j]
        return (static if is_static else tail)[g * self.kv_heads : (g + 1) * self.kv_heads, b]

    def slot(self, j: int, t: int) -> int:
        """Index of local position ``t`` of written tail segment ``j`` (head 0 of its group) in the flattened
        tail ``(P·Hkv·S_g·C, D)``; head ``h`` is ``S_g·C`` rows further (:meth:`scatter_index`)."""
        static, g, b = self._block_of[j]
        if static:
            raise ValueError(f"segment {j} is static: one-token ticks write only the written tail (Spec §9.6)")
        return (g * self.kv_heads * self.group_tail + b) * self.block + t

    def reserve(self, j: int, size: int) -> bool:
        """Make room for ``size`` tokens in segment ``j``; True when buffers were re-allocated.

        Growth is geometric (the capacity at least doubles, Spec §9.6) and touches only what filled:
        the common segments' buffers (every group's: they share one capacity), one part of the tail
        (the written or the static: every block of that part grows to the new block size), or,
        without a common segment, segment ``j``'s own buffers. What was stored is copied over.
        """
        if size <= self.capacities[j]:
            return False
        new = max(size, 2 * self.capacities[j])
        with torch.inference_mode():  # the copies run inside or outside a tick alike
            if not self.commons:
                k, v = self._zeros(self.kv_heads, new, self.head_dim), self._zeros(self.kv_heads, new, self.head_dim)
                old = self.capacities[j]
                k[:, :old], v[:, :old] = self.keys[j], self.values[j]
                self.keys[j], self.values[j], self.capacities[j] = k, v, new
            elif j in self._group_of:
                self._allocate_common(new, keep=self.capacities[j])
                self._index_segments()
            elif self._block_of[j][0]:
                self._allocate_static(new, keep=self.static_block)
                self._index_segments()
            else:
                self._allocate_tail(new, keep=self.block)
                self._index_segments()
        self.generation += 1
        return True

    # ------------------------------------------------------------------ writes
    def write(self, j: int, start: int, k: Float[Tensor, "Hkv n D"], v: Float[Tensor, "Hkv n D"]) -> None:
        """Store ``n`` tokens at local positions ``start..start+n-1`` of segment ``j`` (Spec §3.2)."""
        n = k.shape[1]
        self.reserve(j, start + n)
        self.keys[j][:, start : start + n] = k
        self.values[j][:, start : start + n] = v

    def scatter_index(self, slots: Int[Tensor, " R"]) -> Int[Tensor, "2 HkvRD"]:
        """Elements of the flat tail buffers that :meth:`scatter` writes for tail ``slots`` (:meth:`slot`;
        ``-1``: the trash), head-major, then the head dimension: values lie at ``slot·D + d``, keys there
        too or, stored transposed, at ``block·D·p + d·p + t`` for slot ``block·C + t`` (``p``: the
        rows' :meth:`key_pitch`)."""
        D, C, pitch = self.head_dim, self.block, self.key_pitch(self.block)
        heads = torch.arange(self.kv_heads, device=slots.device)[:, None] * (self.group_tail * C)
        rows = torch.where(slots[None, :] < 0, self.trash, heads + slots[None, :]).flatten()  # (Hkv·R,)
        d = torch.arange(D, device=slots.device)
        return torch.stack((rows[:, None] * D + d, (rows // C * D * pitch + rows % C)[:, None] + d * pitch)).flatten(1)

    def scatter(self, index: Int[Tensor, "2 HkvRD"], k: Float[Tensor, "Hkv R D"], v: Float[Tensor, "Hkv R D"]) -> None:
        """Store one token per row (:meth:`scatter_index`): the fast path's write (Spec §9.6)."""
        self._k_flat.index_copy_(0, index[1 if self.keys_transposed else 0], k.reshape(-1))
        self._v_flat.index_copy_(0, index[0], v.reshape(-1))

    def nbytes(self) -> int:
        """Bytes held by the buffers (keys and values)."""
        if not self.commons:
            return sum(t.untyped_storage().nbytes() for t in (*self.keys, *self.values))
        buffers = (self.k_common, self.v_common, self._k_flat, self._v_flat, self.k_static, self.v_static)
        return sum(t.untyped_storage().nbytes() for t in buffers)
