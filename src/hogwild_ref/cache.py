"""The transformers glue: HogwildCache and the registered attention and mask functions (Spec §11).

The K/V themselves live in :class:`hogwild_ref.store.SegmentStore` (preallocated buffers per layer, on that
layer's device), which knows nothing of transformers. Integration uses transformers' public surfaces only:

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

from typing import Any, Callable, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.cache_utils import Cache, DynamicLayer

from .attention import BACKENDS
from .compat import check_attention_kwargs
from .fast import DecodeBuffers, DecodeTick, LayerInputs, common_segment, common_window, decode_attention, plan_decode, prefix_attention
from .masks import TickPlan
from .rope import RopeSpec, Rotation
from .segments import SegmentTable, flush_into
from .store import DEFAULT_CAPACITY, SegmentStore

__all__ = ["ATTN_IMPLEMENTATION", "CACHE_BACKENDS", "HogwildCache", "OracleCache", "SegmentStore", "make_cache"]

ATTN_IMPLEMENTATION = "hogwild"


#: backend names the cache (and the engine) accept: the functions of
#: :data:`hogwild_ref.attention.BACKENDS`, and ``"fast"`` (Spec §9.6: one-token ticks through
#: :func:`hogwild_ref.fast.decode_attention`, every other tick through ``rotate_queries``)
CACHE_BACKENDS = ("fast", *BACKENDS)


class HogwildCache(Cache):
    """Segment K/V storage for all layers, driven tick by tick (Spec §11.1).

    Args:
        config: the model's config (layers, heads, head dim).
        table: the segment table (its segment order is the storage order).
        rope: the model's RoPE (from :meth:`RopeSpec.from_config`).
        backend: ``"fast"``, ``"rotate_queries"`` or ``"rotate_keys"`` (Spec §9).
        dtype: storage dtype (the model's).
        device: storage device, or one device per layer (a model spread over devices).
        capacities: slots to reserve per segment id (from the run's budget; Spec §9.6); segments not
            named get :data:`hogwild_ref.store.DEFAULT_CAPACITY` and grow when needed.
        compile: the decode step runs under ``torch.compile`` (the engine compiles it): the common
            window's length is then marked dynamic, so that a growing history does not recompile.
    """

    position_zero = False  # the model is fed view positions

    def __init__(self, config: Any, table: SegmentTable, rope: RopeSpec, backend: str = "rotate_queries",
                 dtype: torch.dtype = torch.float32, device: Any = "cpu", capacities: Mapping[str, int] | None = None,
                 compile: bool | str = False):
        layers = config.num_hidden_layers
        super().__init__(layers=[DynamicLayer() for _ in range(layers)])
        allowed = ["oracle"] if self.position_zero else [b for b in CACHE_BACKENDS if b != "oracle"]
        if backend not in allowed:
            raise ValueError(f"backend {backend!r} is not available for {type(self).__name__}; choose one of {allowed}")
        self.backend_name = backend
        self.fast = backend == "fast"
        self.backend: Callable[..., Tensor] = BACKENDS["rotate_queries" if self.fast else backend]
        self.rope = rope
        self.table = table
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        devices = list(device) if isinstance(device, (list, tuple)) else [device] * layers
        caps = [(capacities or {}).get(s.id, DEFAULT_CAPACITY) for s in table.segments]
        common = common_segment(table)
        self.common = table.index(common) if common is not None else None
        self.stores = [SegmentStore(caps, kv, head_dim, dtype, devices[i], self.common) for i in range(layers)]
        self.plan: TickPlan | None = None
        self.decode: DecodeTick | None = None
        self._write_rot: Rotation | None = None
        self._buffers: dict[torch.device, DecodeBuffers] = {}
        self._tail_index: dict[torch.device, Tensor] = {}
        self._layer_inputs: dict[torch.device, LayerInputs] = {}
        self.compiled = compile  # the engine compiles the decode step; the window must then stay symbolic

    # ------------------------------------------------------------------ tick protocol
    def begin_tick(self, plan: TickPlan) -> None:
        """Install the plan of the coming forward pass (Spec §3.6); built once, used by every layer."""
        if plan.segment_ids != tuple(s.id for s in self.table.segments):
            raise ValueError("the plan's segments do not match the cache's table")
        self.plan = plan
        self._write_rot = None if self.position_zero else self.rope.rotation(
            -plan.write_offset[:, None, None], plan.write_offset.device
        )

    def can_decode(self, counts: Sequence[int]) -> bool:
        """Whether a tick feeding ``counts`` takes the fast path (Spec §9.6): the ``fast`` backend, a
        segment that opens every view, and at most one new token per row."""
        return self.fast and self.common is not None and all(c in (0, 1) for c in counts)

    def begin_decode(self, counts: Sequence[int]) -> Tensor:
        """Plan a one-token tick on the host, copy it to the devices in place (Spec §9.6).

        Returns the rows' view positions ``(R, 1)`` on the first layer's device.
        """
        table = self.table
        for w, c in enumerate(counts):
            if c:
                sid = table.write_segment(w)
                for store in self.stores:
                    store.reserve(table.index(sid), table.length(sid) + c)
        tick = plan_decode(table, counts, self.rope, self.stores[0])
        for store in self.stores:
            if store.device not in self._buffers:
                self._buffers[store.device] = DecodeBuffers(
                    table.workers, len(table.segments), self.rope.rotary_dim // 2, store.device, store.dtype
                )
        self._layer_inputs = {}
        for device, buffers in self._buffers.items():
            buffers.load(tick)
            store = next(st for st in self.stores if st.device == device)
            inputs = buffers.layer_inputs(tick.window, store.common, self._tail(store), store.block)  # type: ignore[arg-type]
            inputs = inputs._replace(scatter_index=store.scatter_index(buffers.slots))
            if self.compiled:
                torch._dynamo.mark_dynamic(inputs.mask, 1)  # the mask's width carries the common window
            self._layer_inputs[device] = inputs
        self.decode = tick
        return self._buffers[self.stores[0].device].positions

    def end_tick(self) -> None:
        """Adopt the tick's post-write table."""
        tick = self.plan if self.plan is not None else self.decode
        assert tick is not None, "end_tick without begin_tick/begin_decode"
        self.table = tick.table
        self.plan = self.decode = None

    def _to_local(self, keys: Tensor) -> Tensor:
        """Keys rotated at view positions -> segment-local positions: rotate by ``-o_r(write)``."""
        return self.rope.apply(keys, self._write_rot)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ transformers Cache API
    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """Store the tick's new K/V of every row with new tokens (Spec §3.2, §3.4).

        ``key_states``/``value_states``: ``(R, Hkv, n, D)``. Padding slots and zero-token rows are
        never written into a segment. Returns the inputs unchanged (the attention function reads the store).
        """
        store = self.stores[layer_idx]
        if self.decode is not None:
            inputs = self._layer_inputs[store.device]
            assert inputs.scatter_index is not None
            local = self.rope.apply(key_states[:, :, 0], inputs.write_rotation)
            store.scatter(inputs.scatter_index, local.transpose(0, 1), value_states[:, :, 0].transpose(0, 1))
            return key_states, value_states
        plan = self.plan
        if plan is None:
            raise RuntimeError("HogwildCache.update called outside a tick; run the model through hogwild_ref.engine")
        local = key_states if self.position_zero else self._to_local(key_states)
        index, starts = plan.write_indices, plan.write_starts
        for r, n in enumerate(plan.counts):
            if n:
                store.write(index[r], starts[r], local[r, :, :n], value_states[r, :, :n])
        return key_states, value_states

    def attend(self, layer_idx: int, query: Float[Tensor, "R Hq n D"], scaling: float) -> Float[Tensor, "R Hq n D"]:
        """Run the backend for this layer over the segment store (Spec §9)."""
        store = self.stores[layer_idx]
        if self.decode is not None:
            return self._attend_decode(store, query, scaling)
        plan = self.plan
        assert plan is not None
        if self.fast and self.common is not None and plan.num_rows == 1 and len(plan.rows[0].view) == 1 \
                and plan.write_indices[0] == self.common:  # prefill of the common segment: causal SDPA
            return prefix_attention(query, store.keys[self.common], store.values[self.common], plan.write_starts[0], scaling)
        return self.backend(query, store.keys, store.values, plan, self.rope, scaling)

    def _tail(self, store: SegmentStore) -> Tensor:
        """Table indices of the store's tail segments on its device."""
        if store.device not in self._tail_index:
            self._tail_index[store.device] = torch.tensor(store.tail_segments, dtype=torch.long, device=store.device)
        return self._tail_index[store.device]

    def _attend_decode(self, store: SegmentStore, query: Tensor, scaling: float) -> Tensor:
        inputs = self._layer_inputs[store.device]
        k_tail, v_tail = store.k_tail, store.v_tail
        window = inputs.mask.shape[1] - k_tail.shape[1] * k_tail.shape[2]  # symbolic under torch.compile
        kc, vc = store.k_common[:, :window], store.v_common[:, :window]
        return decode_attention(query, kc, vc, k_tail, v_tail, inputs.query_rotation, inputs.mask, inputs.active,
                                self.rope, scaling)

    def get_seq_length(self, layer_idx: int | None = 0, *args: Any, **kwargs: Any) -> int:
        """Longest view length (informational: the engine always passes explicit position ids).

        0 during a one-token tick: the value would otherwise be a Python int that changes every tick,
        and a compiled decode step would recompile on it (transformers reads it to build masks,
        which the ``"hogwild"`` mask function does not use).
        """
        if self.decode is not None:
            return 0
        return max(self.table.view_length(w) for w in range(self.table.workers))

    def get_mask_sizes(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
        return self.get_seq_length(), 0

    def decode_read_bytes(self) -> int:
        """K/V bytes one one-token tick reads on the fast path (Spec §9.6): every layer's common window
        (once for all rows) and its tail blocks."""
        total = 0
        for store in self.stores:
            if store.common is None:
                return 0
            L = self.table.length(self.table.segments[store.common].id)
            window = common_window(L, store.capacities[store.common])
            slots = window + len(store.tail_segments) * store.block
            total += 2 * slots * store.kv_heads * store.head_dim * store.k_common.element_size()
        return total

    def nbytes(self) -> int:
        """Bytes held by all layers' K/V buffers."""
        return sum(store.nbytes() for store in self.stores)

    # ------------------------------------------------------------------ flush (Spec §5.1)
    def flush(self, w: int, history: str | None = None) -> None:
        """Move worker ``w``'s finished step into history: re-rotate by the history length, append (Spec §5.1).

        ``history``: the segment to flush into, when it is not the table's history segment (a
        union of several problems' tables, Spec §13.3).
        """
        table = self.table
        if history is None and table.history is None:
            raise ValueError(f"layout {table.layout!r} has no history segment to flush into")
        hist = history if history is not None else table.history
        after = table.flush(w) if history is None else flush_into(table, w, history)  # validates first
        h, own = table.index(hist), table.index(table.write_segment(w))  # type: ignore[arg-type]
        L_h, L = table.length(hist), table.length(table.write_segment(w))  # type: ignore[arg-type]
        with torch.inference_mode():  # the buffers are written under inference mode during ticks
            for store in self.stores:
                k, v = store.keys[own][:, :L], store.values[own][:, :L]
                if not self.position_zero:
                    k = self.rope.rerotate(k, L_h)
                store.write(h, L_h, k, v)
        self.table = after


class OracleCache(HogwildCache):
    """The engine oracle's storage (Spec §11.4): position-0 keys, views assembled from scratch."""

    position_zero = True

    def __init__(self, config: Any, table: SegmentTable, rope: RopeSpec, backend: str = "oracle",
                 dtype: torch.dtype = torch.float32, device: Any = "cpu", capacities: Mapping[str, int] | None = None,
                 compile: bool | str = False):
        super().__init__(config, table, rope, backend, dtype, device, capacities)


def make_cache(config: Any, table: SegmentTable, rope: RopeSpec, backend: str, dtype: torch.dtype, device: Any,
               capacities: Mapping[str, int] | None = None, compile: bool | str = False) -> HogwildCache:
    """The cache for ``backend``: :class:`OracleCache` for ``"oracle"``, else :class:`HogwildCache`."""
    cls = OracleCache if backend == "oracle" else HogwildCache
    return cls(config, table, rope, backend, dtype, device, capacities, compile)


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
