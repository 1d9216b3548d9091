"""Segment K/V storage for one layer: one preallocated arena per layer (Spec §2.1, §3.6, §9.6).

A plain class that knows nothing of transformers. Every segment of the table owns a fixed slice of
one arena tensor ``(Hkv, N, D)`` per layer for keys and one for values:

* the *common* segment (the one that opens every view: the prompt/history) sits first, at arena
  slots ``0 .. cap_common - 1``, so the fast backend reads it as one contiguous window;
* the other segments (the *tail*: headers, separators, every worker's current step) follow in table
  order;
* one last *trash* slot receives the K/V of rows that write nothing in a compiled tick (Spec §3.4:
  a zero-token row writes nothing into any segment).

Keys are stored rotated at segment-local positions (Spec §2.1). Capacities come from the run's
budget; a write past a segment's capacity re-allocates the arena with that segment's capacity
doubled (a rare event, documented in Spec §9.6; the compiled path then sees a new tail size).
``keys[j]`` / ``values[j]`` are views of segment ``j`` (table order) into the arena.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["DEFAULT_CAPACITY", "SegmentStore"]

#: capacity of a segment whose size the caller did not plan
DEFAULT_CAPACITY = 64


class SegmentStore:
    """K/V of every segment of one layer in one arena (Spec §9.6).

    Args:
        capacities: slots reserved per segment, in table order.
        kv_heads: key/value heads of the layer.
        head_dim: head dimension.
        dtype: storage dtype (the model's).
        device: the layer's device.
        common: table index of the segment stored first (the one that opens every view), or None
            (table order from slot 0).
    """

    def __init__(self, capacities: Sequence[int], kv_heads: int, head_dim: int, dtype: torch.dtype, device: Any,
                 common: int | None = 0):
        self.kv_heads, self.head_dim, self.dtype, self.device = kv_heads, head_dim, dtype, torch.device(device)
        S = len(capacities)
        self.common = common
        self.order = ([common] if common is not None else []) + [j for j in range(S) if j != common]
        self.generation = 0  # bumped by every re-allocation (compiled callers re-read the layout)
        self._allocate([max(1, int(c)) for c in capacities])

    # ------------------------------------------------------------------ layout
    def _allocate(self, capacities: list[int], old: SegmentStore | None = None) -> None:
        S = len(capacities)
        self.capacities = capacities
        self.base = [0] * S
        pos = 0
        for j in self.order:
            self.base[j] = pos
            pos += capacities[j]
        self.trash = pos  # one extra slot for rows that write nothing
        with torch.inference_mode(False):  # a normal tensor even when re-allocated during a tick
            k = torch.zeros(self.kv_heads, pos + 1, self.head_dim, dtype=self.dtype, device=self.device)
            v = torch.zeros_like(k)
        if old is not None:  # keep what is stored (whole old capacities: the store does not track lengths)
            for j in range(S):
                L = old.keys[j].shape[1]
                k[:, self.base[j] : self.base[j] + L] = old.keys[j]
                v[:, self.base[j] : self.base[j] + L] = old.values[j]
        self.k, self.v = k, v
        self.keys = [k[:, self.base[j] : self.base[j] + capacities[j]] for j in range(S)]
        self.values = [v[:, self.base[j] : self.base[j] + capacities[j]] for j in range(S)]

    @property
    def common_capacity(self) -> int:
        """Slots of the common segment (0 without one)."""
        return self.capacities[self.common] if self.common is not None else 0

    @property
    def tail_slice(self) -> slice:
        """Arena slots of the tail (every segment but the common one), trash slot excluded."""
        return slice(self.common_capacity, self.trash)

    def tail_index(self) -> tuple[Tensor, Tensor]:
        """For every tail slot: its segment (table index) and its local position, shape ``(N_tail,)``."""
        seg = torch.cat([torch.full((self.capacities[j],), j, dtype=torch.long) for j in self.order if j != self.common])
        loc = torch.cat([torch.arange(self.capacities[j]) for j in self.order if j != self.common])
        return seg, loc

    def reserve(self, j: int, size: int) -> bool:
        """Make room for ``size`` tokens in segment ``j``; True when the arena was re-allocated."""
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

    def scatter(self, slots: Tensor, k: Float[Tensor, "Hkv R D"], v: Float[Tensor, "Hkv R D"]) -> None:
        """Store one token per row at arena ``slots`` ``(R,)`` (the compiled path's write, Spec §9.6).

        Rows that write nothing point at :attr:`trash`.
        """
        self.k.index_copy_(1, slots, k)
        self.v.index_copy_(1, slots, v)

    def nbytes(self) -> int:
        """Bytes held by the arena (keys and values)."""
        return self.k.numel() * self.k.element_size() * 2


class _Snapshot:
    def __init__(self, keys: list[Tensor], values: list[Tensor]):
        self.keys, self.values = keys, values
