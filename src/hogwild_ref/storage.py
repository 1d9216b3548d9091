"""A run's K/V: the segment table and one :class:`~hogwild_ref.store.SegmentStore` per layer (Spec §2.1, §5.1).

No transformers here: :class:`~hogwild_ref.hf.HogwildCache` wraps a :class:`Storage` for the model,
and every tick object (:mod:`hogwild_ref.ticks`) writes and reads the stores of the layer it is
given. The table is the storage's own record of every segment's length; a tick hands back the
post-write table, a flush the post-flush one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .checks import is_int
from .fast import common_window, tail_window
from .rope import RopeSpec
from .segments import DecodeGroups, SegmentTable, decode_groups, flush_into
from .store import DEFAULT_CAPACITY, SegmentStore

__all__ = ["Storage"]


def check_capacities(table: SegmentTable, capacities: Mapping[str, int]) -> None:
    """Refuse reserved capacities (Spec §9.6: slots per segment, grown when full) for ids the table does not
    have, or that are not integers ``>= 0``: a misspelt id used to reserve nothing without a word."""
    ids = {s.id for s in table.segments}
    unknown = sorted(map(str, set(capacities) - ids))
    if unknown:
        raise ValueError(f"capacities name {unknown}, which are not segments of the table "
                         f"({', '.join(sorted(ids))})")
    bad = {k: v for k, v in capacities.items() if not is_int(v) or v < 0}
    if bad:
        raise ValueError(f"capacities must be integers >= 0 (slots to reserve per segment); got {bad}")


class Storage:
    """K/V storage of every layer for one segment table (Spec §2.1).

    Args:
        config: the model's config (layers, heads, head dim).
        table: the segment table (its segment order is the storage order).
        rope: the model's RoPE (flushes re-rotate with it, Spec §5.1).
        dtype: storage dtype (the model's).
        devices: one device per layer (a model spread over devices keeps K/V beside each layer), or one for all.
        capacities: slots to reserve per segment id; segments not named get
            :data:`~hogwild_ref.store.DEFAULT_CAPACITY`; every segment grows when it fills (Spec §9.6).
        position_zero: the engine oracle's storage (Spec §11.4): keys are stored at position 0, as the
            model computes them with ``position_ids = 0``; views are assembled from scratch.
        kv_heads: K/V heads per layer, when not the config's (a tensor-parallel rank holds its share, Spec §11.8).
        keys_transposed: lay keys out head dimension first (:class:`~hogwild_ref.store.SegmentStore`;
            default: on CPUs).
    """

    def __init__(self, config: Any, table: SegmentTable, rope: RopeSpec, dtype: torch.dtype = torch.float32,
                 devices: Any = "cpu", capacities: Mapping[str, int] | None = None, *, position_zero: bool = False,
                 kv_heads: int | None = None, keys_transposed: bool | None = None):
        layers = config.num_hidden_layers
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv = kv_heads or getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        per_layer = list(devices) if isinstance(devices, (list, tuple)) else [devices] * layers
        check_capacities(table, capacities or {})
        caps = [(capacities or {}).get(s.id, DEFAULT_CAPACITY) for s in table.segments]
        #: the fast path's groups of workers, each with its own common segment (Spec §9.6), or None
        self.groups: DecodeGroups | None = decode_groups(table)
        commons, tails = (self.groups.commons, self.groups.tails) if self.groups is not None else (None, None)
        #: table index of the segment that opens every view (one group), or None
        self.common = commons[0] if commons is not None and len(commons) == 1 else None
        # tail segments no one-token tick writes (headers, separators): the static part of the tail
        static = [j for j in tails or () if table.segments[j].writer is None]
        self.stores = [SegmentStore(caps, kv, head_dim, dtype, per_layer[i], commons, tails, keys_transposed, static)
                       for i in range(layers)]
        self.table = table
        self.rope = rope
        self.position_zero = position_zero
        self.dtype = dtype
        #: the fast path's per-device tick buffers, written in place every tick (:class:`hogwild_ref.fast.DecodeBuffers`)
        self.decode_buffers: dict[torch.device, Any] = {}

    @property
    def devices(self) -> list[torch.device]:
        """The distinct devices of the layers, in layer order."""
        return list(dict.fromkeys(store.device for store in self.stores))

    def reserve(self, sid: str, size: int) -> None:
        """Room for ``size`` tokens in segment ``sid`` in every layer (grows geometrically, Spec §9.6)."""
        j = self.table.index(sid)
        for store in self.stores:
            store.reserve(j, size)

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
        assert hist is not None
        after = table.flush(w) if history is None else flush_into(table, w, hist)  # validates first
        own_id = table.write_segment(w)
        h, own = table.index(hist), table.index(own_id)
        L_h, L = table.length(hist), table.length(own_id)
        with torch.inference_mode():  # the buffers are written under inference mode during ticks
            for store in self.stores:
                k, v = store.keys[own][:, :L], store.values[own][:, :L]
                if not self.position_zero:
                    k = self.rope.rerotate(k, L_h)
                store.write(h, L_h, k, v)
        self.table = after

    def copy_from(self, src: Storage, prefix: str) -> None:
        """Copy every non-empty segment ``s`` of ``src`` into segment ``prefix + s`` (Spec §13.3).

        The stored K/V are segment-local (Spec §2.1), so a copy needs no rotation; this storage's
        lengths are set to ``src``'s.
        """
        for seg in src.table.segments:
            if seg.length:
                self.copy_segment(src, seg.id, prefix + seg.id)

    def copy_segment(self, src: Storage, sid: str, into: str) -> None:
        """Copy segment ``sid`` of ``src`` (every layer, its current length) into segment ``into`` of this
        storage, from slot 0, and set ``into``'s length to it (Spec §2.1: stored K/V are segment-local,
        so no rotation). Both storages must come from the same forward step (layers, devices, dtype)."""
        if src.position_zero != self.position_zero:
            raise ValueError("copy_segment between an oracle storage (position-0 keys) and another")
        j, k, n = src.table.index(sid), self.table.index(into), src.table.length(sid)
        with torch.inference_mode():
            for s_store, d_store in zip(src.stores, self.stores, strict=True):
                d_store.write(k, 0, s_store.keys[j][:, :n], s_store.values[j][:, :n])
        self.table = self.table.with_lengths({into: n})

    def load(self, keys: Mapping[str, Any], values: Mapping[str, Any]) -> None:
        """Store given static K/V ``(layers, Hkv, len, D)`` in the stored form of Spec §2.1 (local positions)."""
        lengths = {}
        with torch.inference_mode():
            for sid, ks in keys.items():
                j, L = self.table.index(sid), ks.shape[2]
                if self.table[sid].writer is not None:
                    raise ValueError(f"static K/V given for {sid!r}, which is a worker's write segment")
                ks = ks.to(self.dtype)
                if self.position_zero:  # the oracle stores position-0 keys
                    ks = self.rope.rerotate(ks, -torch.arange(L))
                for layer, store in enumerate(self.stores):
                    store.write(j, 0, ks[layer], values[sid][layer].to(ks.dtype))
                lengths[sid] = L
        self.table = self.table.with_lengths(lengths)

    def segment_kv(self, sid: str) -> tuple[Float[Tensor, "layers Hkv L D"], Float[Tensor, "layers Hkv L D"]]:
        """Segment ``sid``'s K/V of every layer ``(layers, Hkv, len, D)``, keys at local positions (Spec §2.1)."""
        j, L = self.table.index(sid), self.table.length(sid)
        ks = torch.stack([st.keys[j][:, :L] for st in self.stores])
        vs = torch.stack([st.values[j][:, :L] for st in self.stores])
        if self.position_zero:  # the oracle stores position-0 keys: move to local positions 0..L-1
            ks = self.rope.rerotate(ks, torch.arange(L))
        return ks.clone(), vs.clone()

    # ------------------------------------------------------------------ accounting
    def nbytes(self) -> int:
        """Bytes held by all layers' K/V buffers."""
        return sum(store.nbytes() for store in self.stores)

    def decode_read_bytes(self, compiled: bool = False) -> int:
        """K/V bytes one one-token tick reads on the fast path (Spec §9.6): every layer's common windows
        (once for all rows of their group) and its tail blocks; 0 without the fast path's groups.
        An eager tick reads the longest common segment exactly, each written tail block up to the
        longest written tail segment and each static block up to the longest static one; a compiled
        one reads the rounded window and whole blocks."""
        total = 0
        lengths = [s.length for s in self.table.segments]
        for store in self.stores:
            if not store.commons:
                return 0
            L = max(lengths[j] for j in store.commons)
            window = common_window(L, store.capacities[store.commons[0]]) if compiled or L == 0 else L
            slots = len(store.commons) * window
            for part, block in ((store.tail_segments, store.block), (store.static_segments, store.static_block)):
                if part:
                    longest = max(lengths[j] for j in part)
                    slots += len(part) * (block if compiled else tail_window(longest, block))
            total += 2 * slots * store.kv_heads * store.head_dim * store.k_common.element_size()
        return total
