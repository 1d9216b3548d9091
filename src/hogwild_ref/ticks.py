"""One tick of every kind, as an object: plan on the host, then ``write`` and ``attend`` per layer (Spec §3, §9).

A tick object is built once per forward (its plan: Python ints and a few small tensors) and then
called by every layer, on that layer's :class:`~hogwild_ref.store.SegmentStore`, in the order
write-before-read (Spec §3.2): transformers calls :meth:`Tick.write` from the cache's ``update`` as
each layer computes its new K/V, then :meth:`Tick.attend` from the registered attention function.

================  ========================================================================  ==========
kind              when                                                                      spec
================  ========================================================================  ==========
:class:`GeneralTick`   any rows, any new-token counts: the dense plan (:func:`~hogwild_ref.plan.plan_tick`)
                       and a general backend (``rotate_queries`` or ``rotate_keys``)          §3.6, §9.2–§9.3
:class:`PrefillTick`   the prefill of the segment that opens every view (fast backend): causal SDPA  §9.6
:class:`GroupedTick`   any rows over a union of problems (fast backend): one general tick per group
                       over its own segments (block-diagonal)                                §9.6, §13.3
:class:`DecodeTick`    every worker row feeds at most one token (fast backend): host plan copied
                       into in-place device buffers, the common window read once for all rows      §9.6
:class:`ExtendTick`    worker rows of a grid of groups feed any number of tokens (fast backend): the
                       one-token tick's attention with each row's slots as more query heads        §9.6
:class:`OracleTick`    the engine oracle: position-0 keys, views assembled from scratch         §11.4
================  ========================================================================  ==========

Every tick exposes ``table`` (the post-write table), ``positions`` (the rows' view positions, the
model's ``position_ids``) and ``max_position``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .attention import BACKENDS
from .extend import ExtendPlan, extend_grid, plan_extend
from .fast import DecodeBuffers, LayerInputs, StaticTail, decode_attention, plan_decode, prefix_attention
from .plan import TickPlan, plan_tick
from .rope import RopeSpec, Rotation
from .segments import Row, Segment, SegmentTable
from .split import decode_attention_split, kernel_for, unsupported
from .storage import Storage
from .store import SegmentKV, SegmentStore

__all__ = ["EXTEND_SCORE_BYTES", "DecodeTick", "ExtendTick", "GeneralTick", "GroupedTick", "OracleTick", "Planner", "PrefillTick", "Tick"]

#: builds a general tick's plan: ``(table, rows, rope, device) -> TickPlan`` (:func:`~hogwild_ref.plan.plan_tick`)
Planner = Callable[[SegmentTable, Sequence[Row], RopeSpec, Any], TickPlan]


class Tick:
    """What every tick offers the model's layers (Spec §3.1)."""

    kind = "tick"
    table: SegmentTable
    positions: Tensor
    max_position: int
    #: what the cache reports as its sequence length (0 keeps a compiled decode step from recompiling)
    seq_length: int = 0

    def write(self, layer: int, store: SegmentStore, k: Float[Tensor, "R Hkv n D"], v: Float[Tensor, "R Hkv n D"]) -> None:
        """Store the tick's new K/V of every row with new tokens in ``store`` (Spec §3.2, §3.4)."""
        raise NotImplementedError

    def attend(self, layer: int, store: SegmentStore, q: Float[Tensor, "R Hq n D"], scaling: float) -> Float[Tensor, "R Hq n D"]:
        """This layer's attention over ``store`` (Spec §9)."""
        raise NotImplementedError


class GeneralTick(Tick):
    """Any rows and counts: the plan of Spec §3.6 and a general backend (Spec §9.2, §9.3).

    The model feeds the rows' view positions, so its new keys arrive rotated there; :meth:`write`
    rotates them by ``-o_r(write)`` to segment-local positions (Spec §2.1). Padding slots and
    zero-token rows are never written (Spec §3.4).
    """

    kind = "general"

    def __init__(self, storage: Storage | SegmentTable, rows: Sequence[Row], rope: RopeSpec, backend: str, device: Any,
                 planner: Planner = plan_tick, devices: Sequence[torch.device] | None = None):
        """``storage``: the run's storage, or (a group of a :class:`GroupedTick`) a table, with the layer
        ``devices`` of the storage it lives in."""
        table = storage if isinstance(storage, SegmentTable) else storage.table
        if devices is None:
            devices = [] if isinstance(storage, SegmentTable) else storage.devices
        self.plan = planner(table, rows, rope, device)
        self.rope = rope
        self.backend = BACKENDS[backend]
        self.table = self.plan.table
        self.positions = self.plan.positions
        self.max_position = self.plan.max_position
        self.seq_length = max(self.table.view_length(w) for w in range(self.table.workers))
        # one copy of the plan per layer device, made here, once per tick (Spec §11.8)
        home = self.plan.positions.device
        self._plans = {d: self.plan if d == home else self.plan.to(d) for d in devices}
        self._plans.setdefault(home, self.plan)
        self._write_rots = {d: rope.rotation(-p.write_offset[:, None, None], p.write_offset.device)
                            for d, p in self._plans.items()}

    def _local(self, k: Tensor, device: torch.device) -> Tensor:
        return self.rope.apply(k, self._write_rots[device])

    def write(self, layer: int, store: SegmentKV, k: Float[Tensor, "R Hkv n D"], v: Float[Tensor, "R Hkv n D"]) -> None:
        local = self._local(k, store.device)
        plan = self.plan
        for r, n in enumerate(plan.counts):
            if n:
                store.write(plan.write_indices[r], plan.write_starts[r], local[r, :, :n], v[r, :, :n])

    def attend(self, layer: int, store: SegmentKV, q: Float[Tensor, "R Hq n D"], scaling: float) -> Float[Tensor, "R Hq n D"]:
        return self.backend(q, store.keys, store.values, self._plans[store.device], self.rope, scaling)


class PrefillTick(GeneralTick):
    """A prefill chunk of the segment that opens every view (Spec §9.6): one causal sequence at offset 0,
    through PyTorch's fused attention (no dense score matrix)."""

    kind = "prefill"

    @staticmethod
    def applies(storage: Storage, rows: Sequence[Row]) -> bool:
        """One row whose view is the common segment alone (it writes the common segment)."""
        if storage.common is None or len(rows) != 1:
            return False
        common = storage.table.segments[storage.common].id
        return rows[0].view == (common,)

    def attend(self, layer: int, store: SegmentKV, q: Float[Tensor, "R Hq n D"], scaling: float) -> Float[Tensor, "R Hq n D"]:
        j = self.plan.write_indices[0]
        return prefix_attention(q, store.keys[j], store.values[j], self.plan.write_starts[0], scaling)


def _renumbered(seg: Segment, base: int) -> Segment:
    """``seg`` in its group's own table: its writer counted from the group's first worker ``base``."""
    return seg if seg.writer is None else Segment(seg.id, seg.length, seg.writer - base)


class _GroupStore:
    """The segments ``js`` (table indices, in the group's order) of a layer's store, as a group's own store."""

    def __init__(self, store: SegmentStore, js: Sequence[int]):
        self.store, self.js = store, js
        self.device = store.device

    @property
    def keys(self) -> list[Tensor]:
        return [self.store.keys[j] for j in self.js]

    @property
    def values(self) -> list[Tensor]:
        return [self.store.values[j] for j in self.js]

    def write(self, j: int, start: int, k: Tensor, v: Tensor) -> None:
        self.store.write(self.js[j], start, k, v)


class GroupedTick(Tick):
    """Any rows over a table of several independent groups (a union of problems, Spec §13.3; the groups
    of Spec §9.6): each group's rows are planned and attended as a :class:`GeneralTick` over that
    group's own segments only (as a :class:`PrefillTick` when they are the prefill of its common
    segment), so the work is block-diagonal (linear in the number of groups, where one general tick
    over the union scores every row against every problem's keys).

    The rows of a group are padded to the tick's largest new-token count; padding slots are neither
    written nor attended (their outputs are zeros).
    """

    kind = "grouped"

    @staticmethod
    def applies(storage: Storage, rows: Sequence[Row]) -> bool:
        """Several groups, and every row's view opened by one group's common segment."""
        groups = storage.groups
        if groups is None or len(groups.commons) < 2:
            return False
        opening = {storage.table.segments[c].id for c in groups.commons}
        return all(row.view[0] in opening for row in rows)

    def __init__(self, storage: Storage, rows: Sequence[Row], rope: RopeSpec, backend: str, device: Any,
                 planner: Planner = plan_tick):
        table, groups = storage.table, storage.groups
        assert groups is not None
        n = groups.workers
        group_of = {table.segments[c].id: b for b, c in enumerate(groups.commons)}
        by_group: dict[int, list[int]] = {}
        for r, row in enumerate(rows):
            by_group.setdefault(group_of[row.view[0]], []).append(r)
        self.parts: list[tuple[list[int], GeneralTick, list[int]]] = []
        lengths: dict[str, int] = {}
        for b, idx in sorted(by_group.items()):
            js = groups.members(b)
            sub = SegmentTable(tuple(_renumbered(table.segments[j], b * n) for j in js), table.views[b * n : (b + 1) * n])
            common = table.segments[groups.commons[b]].id
            mine = [rows[r] for r in idx]
            # a group's prefill of its common segment (one row, that segment alone): causal SDPA, as alone
            kind = PrefillTick if len(mine) == 1 and mine[0].view == (common,) and mine[0].new_tokens else GeneralTick
            tick = kind(sub, mine, rope, backend, device, planner, storage.devices)
            self.parts.append((idx, tick, js))  # row indices as a list: valid on every layer's device
            lengths.update({seg.id: seg.length for seg in tick.table.segments})
        self.table = table.with_lengths(lengths)
        width = max(tick.positions.shape[1] for _, tick, _ in self.parts)
        self.positions = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        for idx_t, tick, _ in self.parts:
            self.positions[idx_t, : tick.positions.shape[1]] = tick.positions
        self.max_position = max(tick.max_position for _, tick, _ in self.parts)
        self.seq_length = max(tick.seq_length for _, tick, _ in self.parts)

    def write(self, layer: int, store: SegmentStore, k: Float[Tensor, "R Hkv n D"], v: Float[Tensor, "R Hkv n D"]) -> None:
        for idx_t, tick, js in self.parts:
            m = tick.positions.shape[1]
            tick.write(layer, _GroupStore(store, js), k[idx_t, :, :m], v[idx_t, :, :m])

    def attend(self, layer: int, store: SegmentStore, q: Float[Tensor, "R Hq n D"], scaling: float) -> Float[Tensor, "R Hq n D"]:
        out = torch.zeros_like(q)
        for idx_t, tick, js in self.parts:
            m = tick.positions.shape[1]
            out[idx_t, :, :m] = tick.attend(layer, _GroupStore(store, js), q[idx_t, :, :m], scaling)
        return out


class OracleTick(GeneralTick):
    """The engine oracle's tick (Spec §11.4): the model runs at ``position_ids = 0``, keys are stored as
    they come (position 0), and every view is assembled and rotated from scratch (Spec §9.1)."""

    kind = "oracle"

    def __init__(self, storage: Storage, rows: Sequence[Row], rope: RopeSpec, device: Any,
                 planner: Planner = plan_tick):
        super().__init__(storage, rows, rope, "oracle", device, planner)
        self.positions = torch.zeros_like(self.plan.positions)

    def _local(self, k: Tensor, device: torch.device) -> Tensor:
        return k


def _worker_rows(storage: Storage, rows: Sequence[Row]) -> list[int] | None:
    """The worker whose view each row is (Spec §3.1), or None when a row is no worker's view or two rows
    are one worker's."""
    worker = {view: w for w, view in enumerate(storage.table.views)}
    ws = [worker.get(row.view, -1) for row in rows]
    return ws if -1 not in ws and len(set(ws)) == len(ws) else None


def _reserve_writes(storage: Storage, counts: Mapping[int, int]) -> None:
    """Room in storage for worker ``w``'s ``counts[w]`` new tokens in its write segment (Spec §9.6: the
    fast path's slots are planned after any re-allocation)."""
    table = storage.table
    for w, c in counts.items():
        if c:
            sid = table.write_segment(w)
            storage.reserve(sid, table.length(sid) + c)


class DecodeTick(Tick):
    """Every worker row feeds 0 or 1 token (Spec §9.6): the host plan (:func:`~hogwild_ref.fast.plan_decode`)
    is copied into the storage's per-device buffers in place (static addresses for compiled steps),
    new keys are scattered into the tail, and :func:`~hogwild_ref.fast.decode_attention` reads the
    common window once for all rows.

    ``compiled``: the model's forward runs under ``torch.compile``: the common mask's width (which
    carries the rounded common window) is marked dynamic, so that a growing history does not
    recompile. An eager tick reads exactly the longest common segment, unmasked when every group's
    is that long.
    ``split``: attend with :func:`~hogwild_ref.split.decode_attention_split` (the common part through a
    fused kernel that returns its log-sum-exp, merged with the tail by Spec §9.5) on eager ticks of one
    group with a non-empty common segment, on the layers whose device, dtype and head dim the kernel
    takes (:func:`~hogwild_ref.split.unsupported`); the others run ``decode_attention``. True: each
    layer's device's kernel (:func:`~hogwild_ref.split.default_kernel`: ``cpu_flash`` on the CPU,
    ``flex`` on CUDA); a string: that kernel (:data:`~hogwild_ref.split.KERNELS`). The forward step's
    ``split`` option.
    """

    kind = "decode"

    @staticmethod
    def workers(storage: Storage, rows: Sequence[Row]) -> list[int] | None:
        """The worker of each row, when the fast path applies (Spec §9.6), else None: the table has the
        fast path's groups (a common segment opening every view, or each group's views), every row is
        a distinct worker's view and feeds at most one token. Workers without a row feed nothing
        (zero-token rows, Spec §3.4): problems of a batch that ended, the finisher's worker-0 rows."""
        if storage.groups is None or any(row.new_tokens not in (0, 1) for row in rows):
            return None
        return _worker_rows(storage, rows)

    @staticmethod
    def applies(storage: Storage, rows: Sequence[Row]) -> bool:
        """:meth:`workers` finds the fast path's rows."""
        return DecodeTick.workers(storage, rows) is not None

    def __init__(self, storage: Storage, counts: Sequence[int], rope: RopeSpec, compiled: bool = False,
                 split: bool | str = False, workers: Sequence[int] | None = None):
        table = storage.table
        #: the worker of each of the caller's rows (:meth:`workers`); the tick itself runs every worker's row
        self.workers_of_rows = list(workers) if workers is not None else list(range(table.workers))
        _reserve_writes(storage, dict(enumerate(counts)))
        first = storage.stores[0]
        plan = plan_decode(table, counts, rope, first)
        self.rope = rope
        self.table = plan.table
        self.max_position = int(plan.positions.max())
        kernel_for(split, "cpu")  # an unknown kernel name fails here, not in a layer
        #: the split option (see the class); a compiled step keeps the score-row path (Spec §9.6)
        self.split: bool | str = False if compiled else split
        # eager ticks read each tail block up to the longest tail segment; a compiled step keeps the
        # block capacity, a shape that changes only when the store grows (Spec §9.6)
        self._tail_block = first.block if compiled else plan.tail_window
        self._static_block = first.static_block if compiled else plan.static_window
        # a compiled step reads the rounded common window under a mask (a dynamic dimension); an eager
        # tick reads exactly the longest common segment, with no common mask when all are that long
        longest = max(plan.common_lengths)
        self._window = plan.window if compiled or longest == 0 else longest
        whole = not compiled and longest > 0 and min(plan.common_lengths) == longest
        self._common_length = plan.table.length(plan.table.segments[first.common].id) if first.common is not None else 0
        self._inputs: dict[torch.device, LayerInputs] = {}
        for device in storage.devices:
            store = next(st for st in storage.stores if st.device == device)
            if device not in storage.decode_buffers:
                buffers = DecodeBuffers(table.workers, len(table.segments), rope.rotary_dim // 2, device, store.dtype)
                # each row's group: its common segment and its tail segments (block order), Spec §9.6
                P = len(store.commons)
                group = torch.arange(table.workers) // (table.workers // P)
                commons = torch.tensor(store.commons, dtype=torch.long)[group].to(device)
                tails = torch.tensor(store.tail_segments, dtype=torch.long).view(P, -1)[group].to(device)
                statics = torch.tensor(store.static_segments, dtype=torch.long).view(P, -1)[group].to(device)
                storage.decode_buffers[device] = (buffers, commons, tails, statics)
            buffers, commons, tails, statics = storage.decode_buffers[device]
            buffers.load(plan)
            inputs = buffers.layer_inputs(self._window, commons, tails, self._tail_block, whole_common=whole,
                                          statics=statics, static_block=self._static_block)
            inputs = inputs._replace(scatter_index=store.scatter_index(buffers.slots))
            if compiled:
                assert inputs.common_mask is not None
                torch._dynamo.mark_dynamic(inputs.common_mask, 1)
            self._inputs[device] = inputs
        self.positions = storage.decode_buffers[first.device][0].positions

    def write(self, layer: int, store: SegmentStore, k: Float[Tensor, "R Hkv n D"], v: Float[Tensor, "R Hkv n D"]) -> None:
        inputs = self._inputs[store.device]
        assert inputs.scatter_index is not None
        local = self.rope.apply(k[:, :, 0], inputs.write_rotation)
        store.scatter(inputs.scatter_index, local.transpose(0, 1), v[:, :, 0].transpose(0, 1))

    def attend(self, layer: int, store: SegmentStore, q: Float[Tensor, "R Hq n D"], scaling: float) -> Float[Tensor, "R Hq n D"]:
        inputs = self._inputs[store.device]
        k_tail, v_tail = store.k_tail[:, :, : self._tail_block], store.v_tail[:, :, : self._tail_block]
        k_static, v_static = store.k_static[:, :, : self._static_block], store.v_static[:, :, : self._static_block]
        P = store.k_common.shape[0]
        # the mask carries the window under torch.compile (a symbolic size); an eager tick knows it
        window = inputs.common_mask.shape[1] if inputs.common_mask is not None else self._window
        L = self._common_length
        kernel = kernel_for(self.split, store.device)
        if kernel and P == 1 and L > 0 and unsupported(kernel, store.device, store.dtype, q.shape[-1]) is None:
            return decode_attention_split(q, store.k_common[0, :, :L], store.v_common[0, :, :L], k_tail, v_tail,
                                          inputs.query_rotation, inputs.tail_mask, inputs.active, self.rope,
                                          scaling, kernel, k_static=k_static, v_static=v_static,
                                          static=inputs.static)
        kc, vc = store.k_common[:, :, :window], store.v_common[:, :, :window]
        return decode_attention(q, kc, vc, k_tail, v_tail, inputs.query_rotation, inputs.common_mask,
                                inputs.tail_mask, inputs.active, self.rope, scaling, k_static=k_static, v_static=v_static,
                                static=inputs.static)


class ExtendTick(Tick):
    """Worker rows that feed any number of tokens, over the fast path's storage (Spec §9.6, "Several
    tokens"): the rows are a grid — the same local workers in each of some groups (:func:`~hogwild_ref.extend.extend_grid`),
    in worker order — planned by :func:`~hogwild_ref.extend.plan_extend` and attended by
    :func:`~hogwild_ref.fast.decode_attention` with each row's query slots as more query heads: each
    group's common window read once, the tail re-rotated per segment. The grid's groups' common, tail
    and static blocks are read in place when the grid holds every group, else gathered. Groups are
    attended a few at a time (each turn gathering its groups) when all at once would take more than
    :data:`EXTEND_SCORE_BYTES` of scores (long contexts, many problems, many new tokens), and one
    group's query slots a few at a time when its scores alone would. Eager only (its plan is made per
    tick, no static buffers).
    """

    kind = "extend"

    @staticmethod
    def workers(storage: Storage, rows: Sequence[Row]) -> list[int] | None:
        """The worker of each row when the rows are a grid of worker views over the fast path's storage
        (Spec §9.6), in worker order; else None."""
        groups = storage.groups
        if groups is None or not rows:
            return None
        ws = _worker_rows(storage, rows)
        if ws is None or extend_grid(ws, storage.table.workers // len(groups.commons)) is None:
            return None
        return ws

    def __init__(self, storage: Storage, rows: Sequence[Row], rope: RopeSpec, workers: Sequence[int], device: Any = "cpu"):
        """``workers``: :meth:`workers` of ``rows``; ``device``: where the model takes its inputs
        (``positions`` goes there, the model's ``position_ids``)."""
        counts = {w: row.new_tokens for w, row in zip(workers, rows, strict=True)}
        _reserve_writes(storage, counts)
        first = storage.stores[0]
        self.plan: ExtendPlan = plan_extend(storage.table, counts, rope, first)
        self.rope = rope
        self.table = self.plan.table
        self.max_position = int(self.plan.positions.max())
        self.positions = self.plan.positions.to(device)
        self.seq_length = max(self.table.view_length(w) for w in workers)
        P = len(first.commons)
        #: the grid's groups, as an index into the store's groups (None: every group, read in place)
        self._groups = None if self.plan.groups == tuple(range(P)) else torch.tensor(self.plan.groups)
        self._inputs: dict[torch.device, tuple[LayerInputs, Tensor, Tensor | None]] = {}
        for device in storage.devices:  # the host plan moved once per device per tick (Spec §11.8)
            store = next(st for st in storage.stores if st.device == device)
            groups = None if self._groups is None else self._groups.to(device)
            self._inputs[device] = (self.plan.inputs.to(device), store.scatter_index(self.plan.slots.flatten().to(device)), groups)

    def write(self, layer: int, store: SegmentStore, k: Float[Tensor, "R Hkv n D"], v: Float[Tensor, "R Hkv n D"]) -> None:
        inputs, index, _ = self._inputs[store.device]
        local = self.rope.apply(k, inputs.write_rotation)  # to segment-local positions (Spec §2.1)
        R, hkv, n, D = k.shape
        store.scatter(index, local.transpose(0, 1).reshape(hkv, R * n, D), v.transpose(0, 1).reshape(hkv, R * n, D))

    def attend(self, layer: int, store: SegmentStore, q: Float[Tensor, "R Hq n D"], scaling: float) -> Float[Tensor, "R Hq n D"]:
        """The grid's attention: every group at once when their scores fit :data:`EXTEND_SCORE_BYTES`,
        else in turns that each keep within it: as many groups a turn as fit, and when one group's
        scores alone do not, that group's query slots a few at a time (each slot's softmax is its own,
        so a turn's slots attend as they would together; at least one slot of one group a turn)."""
        inputs, _, groups = self._inputs[store.device]
        plan = self.plan
        G, L, n = len(plan.groups), len(plan.locals), q.shape[2]
        keys = plan.window + store.group_tail * plan.tail_window + store.group_static * plan.static_window
        per_slot = torch.promote_types(q.dtype, torch.float32).itemsize * q.shape[1] * L * keys  # one slot of one group
        slots = min(n, max(1, EXTEND_SCORE_BYTES // per_slot))
        step = max(1, EXTEND_SCORE_BYTES // (per_slot * n)) if slots == n else 1
        if slots == n and step >= G:
            return self._attend(store, q, scaling, inputs, groups)
        out = torch.empty_like(q)
        for g0 in range(0, G, step):
            rows = slice(g0 * L, min(G, g0 + step) * L)
            chunk = groups if step >= G else torch.tensor(plan.groups[g0 : g0 + step], device=store.device)
            mine = inputs if step >= G else _rows(inputs, rows)
            for s0 in range(0, n, slots):
                part = slice(s0, s0 + slots)
                out[rows, :, part] = self._attend(store, q[rows, :, part], scaling, _slots(mine, part), chunk)
        return out

    def _attend(self, store: SegmentStore, q: Tensor, scaling: float, inputs: LayerInputs, groups: Tensor | None) -> Tensor:
        """:func:`~hogwild_ref.fast.decode_attention` of the rows of ``groups`` (None: every group)."""
        plan = self.plan
        kc, vc = store.k_common[:, :, : plan.window], store.v_common[:, :, : plan.window]
        kt, vt = store.k_tail[:, :, : plan.tail_window], store.v_tail[:, :, : plan.tail_window]
        ks, vs = store.k_static[:, :, : plan.static_window], store.v_static[:, :, : plan.static_window]
        if groups is not None:  # some groups only: gather theirs (Spec §9.6, block-diagonal)
            kc, vc = kc[groups], vc[groups]
            kt, vt, ks, vs = (_gather(x, groups, store.kv_heads) for x in (kt, vt, ks, vs))
        return decode_attention(q, kc, vc, kt, vt, inputs.query_rotation, inputs.common_mask, inputs.tail_mask,
                                inputs.active, self.rope, scaling, k_static=ks, v_static=vs, static=inputs.static)


#: the most an extend tick's score tensors take at once (one layer); more groups are attended in turns
EXTEND_SCORE_BYTES = 256 * 2**20


def _slots(inputs: LayerInputs, slots: slice) -> LayerInputs:
    """An extend tick's layer inputs for some of its query slots: only the tail mask ``(R, n, T)`` and
    ``active`` ``(R, n)`` are per slot (every slot of a row sees the same common window and static tail)."""
    return inputs._replace(tail_mask=inputs.tail_mask[:, slots], active=inputs.active[:, slots])


def _rows(inputs: LayerInputs, rows: slice) -> LayerInputs:
    """The per-row layer inputs of ``rows`` (an extend tick's attention, a chunk of groups)."""
    static = inputs.static
    if static is not None:
        static = StaticTail(Rotation(static.rotation.cos[rows], static.rotation.sin[rows]), static.mask[rows])
    return inputs._replace(
        query_rotation=Rotation(inputs.query_rotation.cos[rows], inputs.query_rotation.sin[rows]),
        common_mask=None if inputs.common_mask is None else inputs.common_mask[rows],
        tail_mask=inputs.tail_mask[rows], active=inputs.active[rows], static=static)


def _gather(blocks: Tensor, groups: Tensor, heads: int) -> Tensor:
    """Tail blocks ``(P·Hkv, S, C, D)`` (group-major) of ``groups`` only: ``(G·Hkv, S, C, D)``."""
    return blocks.unflatten(0, (-1, heads))[groups].flatten(0, 1)
