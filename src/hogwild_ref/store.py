"""Segment K/V storage for one layer: preallocated, written by index (Spec §2.1, §3.6, §9.6).

A plain class that knows nothing of transformers. Per layer, on that layer's device:

* the *common* segment (the static segment that opens every view: the prompt/history) has one
  buffer ``(Hkv, cap, D)`` for keys and one for values, so the fast backend reads it as one window;
* every other segment (the *tail*: headers, separators, every worker's current step) has a block of
  one common capacity ``C`` in a ``(Hkv, S_tail, C, D)`` tensor, so the tail is read by one batched
  matmul over (head, segment) without a copy.

Keys are stored rotated at segment-local positions (Spec §2.1). Capacities come from the run's
budget; a write past a segment's capacity re-allocates the buffers with that capacity doubled (rare,
Spec §9.6). ``keys[j]`` / ``values[j]`` are views of segment ``j`` (table order).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["DEFAULT_CAPACITY", "SegmentStore"]

#: capacity of a segment whose size the caller did not plan
DEFAULT_CAPACITY = 64


class SegmentStore:
    """K/V of every segment of one layer (Spec §9.6).

    Args:
        capacities: slots reserved per segment, in table order.
        kv_heads: key/value heads of the layer.
        head_dim: head dimension.
        dtype: storage dtype (the model's).
        device: the layer's device.
        common: table index of the segment that opens every view, or None: then every segment has a
            buffer of its own capacity and the fast path does not apply.
    """

    def __init__(self, capacities: Sequence[int], kv_heads: int, head_dim: int, dtype: torch.dtype, device: Any,
                 common: int | None = 0):
        self.kv_heads, self.head_dim, self.dtype, self.device = kv_heads, head_dim, dtype, torch.device(device)
        self.common = common
        #: table indices of the tail's segments, in block order
        self.tail_segments = [j for j in range(len(capacities)) if j != common]
        self._block_of = {j: b for b, j in enumerate(self.tail_segments)}
        self.generation = 0  # bumped by every re-allocation
        self._allocate([max(1, int(c)) for c in capacities])

    # ------------------------------------------------------------------ layout
    def _allocate(self, capacities: list[int], old: SegmentStore | None = None) -> None:
        if self.common is None:  # no fast path: one buffer per segment at its own capacity
            self.capacities, self.block = list(capacities), 0
            self.keys = [self._zeros(self.kv_heads, c, self.head_dim) for c in capacities]
            self.values = [self._zeros(self.kv_heads, c, self.head_dim) for c in capacities]
            self._restore(old)
            return
        block = max([capacities[j] for j in self.tail_segments], default=1)
        self.capacities = [c if j == self.common else block for j, c in enumerate(capacities)]
        self.block = block
        common_cap = self.capacities[self.common] if self.common is not None else 0

        zeros = self._zeros
        H, D, n = self.kv_heads, self.head_dim, len(self.tail_segments)
        # one spare row: a window of the whole capacity is never the whole buffer, so its strides
        # relate to its length in one way only (a compiled step does not recompile on it)
        self.k_common = zeros(H, common_cap + 1, D)[:, :common_cap]
        self.v_common = zeros(H, common_cap + 1, D)[:, :common_cap]
        # the tail is one flat buffer with one extra row at the end: the trash slot, where a row that
        # feeds nothing writes in a one-token tick (outside every view, never read: Spec §3.4)
        self._k_flat, self._v_flat = zeros(H * n * block + 1, D), zeros(H * n * block + 1, D)
        self.k_tail = self._k_flat[:-1].view(H, n, block, D)
        self.v_tail = self._v_flat[:-1].view(H, n, block, D)
        self.trash = H * n * block
        self.keys = [self._segment(self.k_common, self.k_tail, j) for j in range(len(capacities))]
        self.values = [self._segment(self.v_common, self.v_tail, j) for j in range(len(capacities))]
        self._restore(old)

    def _zeros(self, *shape: int) -> Tensor:
        with torch.inference_mode(False):  # normal tensors even when re-allocated during a tick
            return torch.zeros(*shape, dtype=self.dtype, device=self.device)

    def _restore(self, old: SegmentStore | None) -> None:
        """Copy what ``old`` stored (whole old capacities: the store does not track lengths)."""
        if old is None:
            return
        for j, (k, v) in enumerate(zip(old.keys, old.values, strict=True)):
            self.keys[j][:, : k.shape[1]] = k
            self.values[j][:, : v.shape[1]] = v

    def _segment(self, common: Tensor, tail: Tensor, j: int) -> Tensor:
        return common if j == self.common else tail[:, self._block_of[j]]

    def slot(self, j: int, t: int) -> int:
        """Index of local position ``t`` of tail segment ``j`` in the flattened tail ``(Hkv, S_tail·C, D)``."""
        return self._block_of[j] * self.block + t

    def reserve(self, j: int, size: int) -> bool:
        """Make room for ``size`` tokens in segment ``j``; True when the buffers were re-allocated."""
        if size <= self.capacities[j]:
            return False
        caps = list(self.capacities)
        caps[j] = max(size, 2 * caps[j])
        self._allocate(caps, _Snapshot(self.keys, self.values))  # type: ignore[arg-type]
        self.generation += 1
        return True

    # ------------------------------------------------------------------ writes
    def write(self, j: int, start: int, k: Float[Tensor, "Hkv n D"], v: Float[Tensor, "Hkv n D"]) -> None:
        """Store ``n`` tokens at local positions ``start..start+n-1`` of segment ``j`` (Spec §3.2)."""
        n = k.shape[1]
        self.reserve(j, start + n)
        self.keys[j][:, start : start + n] = k
        self.values[j][:, start : start + n] = v

    def scatter_index(self, slots: Int[Tensor, "R"]) -> Int[Tensor, "HkvR"]:
        """Rows of the flat tail buffer that :meth:`scatter` writes for tail ``slots`` (:meth:`slot`;
        ``-1``: the trash slot), head-major."""
        heads = torch.arange(self.kv_heads, device=slots.device)[:, None] * (len(self.tail_segments) * self.block)
        return torch.where(slots[None, :] < 0, self.trash, heads + slots[None, :]).flatten()

    def scatter(self, index: Int[Tensor, "HkvR"], k: Float[Tensor, "Hkv R D"], v: Float[Tensor, "Hkv R D"]) -> None:
        """Store one token per row (:meth:`scatter_index`): the fast path's write (Spec §9.6)."""
        self._k_flat.index_copy_(0, index, k.reshape(-1, self.head_dim))
        self._v_flat.index_copy_(0, index, v.reshape(-1, self.head_dim))

    def nbytes(self) -> int:
        """Bytes held by the buffers (keys and values)."""
        if self.common is None:
            return sum(t.untyped_storage().nbytes() for t in (*self.keys, *self.values))
        return sum(t.untyped_storage().nbytes() for t in (self.k_common, self.v_common, self._k_flat, self._v_flat))


class _Snapshot:
    def __init__(self, keys: list[Tensor], values: list[Tensor]):
        self.keys, self.values = keys, values
