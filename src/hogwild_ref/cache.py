"""HogwildCache: per-layer segment K/V storage behind the transformers Cache API (Spec §11).

Integration uses transformers' public surfaces only:

* :class:`HogwildCache` subclasses ``transformers.Cache``; its ``update()`` receives the tick's new
  K/V (rotated by the model at the rows' view positions), re-rotates the keys by ``-o_r(write)`` to
  segment-local positions and stores them — every row before any attention runs (Spec §3.2);
* an attention function registered with ``AttentionInterface`` under ``"hogwild"`` reads the segment
  store and the tick plan and runs the selected backend (Spec §9);
* a mask function registered with ``AttentionMaskInterface`` returns None (the plan is the mask).

:class:`OracleCache` is the engine oracle of Spec §11.4: the model runs with ``position_ids = 0``, so
the cache receives position-0 keys, which it stores as they are; every tick it assembles each view
from scratch (:func:`hogwild_ref.attention.oracle`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from jaxtyping import Float
from torch import Tensor
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.cache_utils import Cache, DynamicLayer

from .attention import BACKENDS
from .compat import check_attention_kwargs
from .masks import TickPlan
from .rope import RopeSpec, Rotation
from .segments import SegmentTable

__all__ = ["ATTN_IMPLEMENTATION", "HogwildCache", "OracleCache", "SegmentStore", "make_cache"]

ATTN_IMPLEMENTATION = "hogwild"


class SegmentStore:
    """K/V of every segment for one layer, each in a buffer with spare capacity (Spec §2.1, §3.6).

    Appends write in place; a full buffer doubles its capacity (amortised growth, never a copy of
    the whole cache per token).
    """

    def __init__(self, num_segments: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: Any, capacity: int = 64):
        self.keys = [torch.zeros(kv_heads, capacity, head_dim, dtype=dtype, device=device) for _ in range(num_segments)]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.lengths = [0] * num_segments

    def _reserve(self, j: int, size: int) -> None:
        cap = self.keys[j].shape[1]
        if size <= cap:
            return
        new_cap = max(size, 2 * cap)
        for buf in (self.keys, self.values):
            old = buf[j]
            grown = old.new_zeros(old.shape[0], new_cap, old.shape[2])
            grown[:, :cap] = old
            buf[j] = grown

    def write(self, j: int, start: int, k: Float[Tensor, "Hkv n D"], v: Float[Tensor, "Hkv n D"]) -> None:
        """Store ``n`` tokens at local positions ``start..start+n-1`` of segment ``j``."""
        n = k.shape[1]
        self._reserve(j, start + n)
        self.keys[j][:, start : start + n] = k
        self.values[j][:, start : start + n] = v
        self.lengths[j] = max(self.lengths[j], start + n)

    def clear(self, j: int) -> None:
        self.lengths[j] = 0


class HogwildCache(Cache):
    """Segment K/V storage for all layers, driven by one :class:`TickPlan` per tick (Spec §11.1).

    Args:
        config: the model's config (layers, heads, head dim).
        table: the segment table (its segment order is the storage order).
        rope: the model's RoPE (from :meth:`RopeSpec.from_config`).
        backend: ``"rotate_queries"`` (default) or ``"rotate_keys"``.
    """

    position_zero = False  # the model is fed view positions

    def __init__(self, config: Any, table: SegmentTable, rope: RopeSpec, backend: str = "rotate_queries",
                 dtype: torch.dtype = torch.float32, device: Any = "cpu"):
        layers = config.num_hidden_layers
        super().__init__(layers=[DynamicLayer() for _ in range(layers)])
        if backend not in BACKENDS or (backend == "oracle") != self.position_zero:
            allowed = [b for b in BACKENDS if b != "oracle"] if not self.position_zero else ["oracle"]
            raise ValueError(f"backend {backend!r} is not available for {type(self).__name__}; choose one of {allowed}")
        self.backend_name = backend
        self.backend: Callable[..., Tensor] = BACKENDS[backend]
        self.rope = rope
        self.table = table
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.stores = [SegmentStore(len(table.segments), kv, head_dim, dtype, device) for _ in range(layers)]
        self.plan: TickPlan | None = None
        self._write_rot: Rotation | None = None

    # ------------------------------------------------------------------ tick protocol
    def begin_tick(self, plan: TickPlan) -> None:
        """Install the plan of the coming forward pass (Spec §3.6); built once, used by every layer."""
        if plan.segment_ids != tuple(s.id for s in self.table.segments):
            raise ValueError("the plan's segments do not match the cache's table")
        self.plan = plan
        self._write_rot = None if self.position_zero else self.rope.rotation(
            -plan.write_offset[:, None, None], plan.write_offset.device
        )

    def end_tick(self) -> None:
        """Adopt the plan's post-write table."""
        assert self.plan is not None
        self.table = self.plan.table
        self.plan = None

    def _to_local(self, keys: Tensor) -> Tensor:
        """Keys rotated at view positions -> segment-local positions: rotate by ``-o_r(write)``."""
        return self.rope.apply(keys, self._write_rot)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ transformers Cache API
    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """Store the tick's new K/V of every row with new tokens (Spec §3.2, §3.4).

        ``key_states``/``value_states``: ``(R, Hkv, n, D)``. Padding slots and zero-token rows are
        never written. Returns the inputs unchanged (the attention function reads the store).
        """
        plan = self.plan
        if plan is None:
            raise RuntimeError("HogwildCache.update called outside a tick; run the model through hogwild_ref.engine")
        store = self.stores[layer_idx]
        local = key_states if self.position_zero else self._to_local(key_states)
        index, starts = plan.write_indices, plan.write_starts
        for r, n in enumerate(plan.counts):
            if n:
                store.write(index[r], starts[r], local[r, :, :n], value_states[r, :, :n])
        return key_states, value_states

    def attend(self, layer_idx: int, query: Float[Tensor, "R Hq n D"], scaling: float) -> Float[Tensor, "R Hq n D"]:
        """Run the backend for this layer over the segment store (Spec §9)."""
        assert self.plan is not None
        store = self.stores[layer_idx]
        return self.backend(query, store.keys, store.values, self.plan, self.rope, scaling)

    def get_seq_length(self, layer_idx: int | None = 0, *args: Any, **kwargs: Any) -> int:
        """Longest view length (informational: the engine always passes explicit position ids)."""
        return max(self.table.view_length(w) for w in range(self.table.workers))

    def get_mask_sizes(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
        return self.get_seq_length(), 0

    # ------------------------------------------------------------------ flush (Spec §5.1)
    def flush(self, w: int) -> None:
        """Move worker ``w``'s finished step into history: re-rotate by the history length, append."""
        table = self.table
        if table.history is None:
            raise ValueError(f"layout {table.layout!r} has no history segment to flush into")
        h, own = table.index(table.history), table.index(table.write_segment(w))
        L_h, L = table.length(table.history), table.length(table.write_segment(w))
        with torch.inference_mode():  # the buffers are written under inference mode during ticks
            for store in self.stores:
                k, v = store.keys[own][:, :L], store.values[own][:, :L]
                if not self.position_zero:
                    k = self.rope.rerotate(k, L_h)
                store.write(h, L_h, k, v)
                store.clear(own)
        self.table = table.flush(w)


class OracleCache(HogwildCache):
    """The engine oracle's storage (Spec §11.4): position-0 keys, views assembled from scratch."""

    position_zero = True

    def __init__(self, config: Any, table: SegmentTable, rope: RopeSpec, backend: str = "oracle",
                 dtype: torch.dtype = torch.float32, device: Any = "cpu"):
        super().__init__(config, table, rope, backend, dtype, device)


def make_cache(config: Any, table: SegmentTable, rope: RopeSpec, backend: str, dtype: torch.dtype, device: Any) -> HogwildCache:
    """The cache for ``backend``: :class:`OracleCache` for ``"oracle"``, else :class:`HogwildCache`."""
    cls = OracleCache if backend == "oracle" else HogwildCache
    return cls(config, table, rope, backend, dtype, device)


# ---------------------------------------------------------------------- transformers registration
def hogwild_attention(module: Any, query: Tensor, key: Tensor, value: Tensor, attention_mask: Any,
                      scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[Tensor, None]:
    """Attention function registered as ``"hogwild"`` (Spec §11.1).

    The engine passes its cache as the ``hogwild_cache`` keyword of the model call; transformers
    forwards it here. Returns ``(R, n, Hq, D)`` as transformers' attention functions do.
    """
    cache: HogwildCache | None = kwargs.get("hogwild_cache")
    if cache is None:
        raise RuntimeError(
            "the 'hogwild' attention implementation needs the hogwild_cache keyword; "
            "run the model through hogwild_ref.engine"
        )
    check_attention_kwargs(module, kwargs, dropout=dropout, attention_mask=attention_mask)  # issue 9 (compat.py)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    out = cache.attend(module.layer_idx, query, scaling)
    return out.transpose(1, 2).contiguous(), None


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None


AttentionInterface.register(ATTN_IMPLEMENTATION, hogwild_attention)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _no_mask)
