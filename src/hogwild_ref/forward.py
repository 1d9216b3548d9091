"""One forward step: rows + feeds in, each row's last-slot logits out, the storage written (Spec §3).

:class:`Forward` is the one place that runs the model over a Hogwild cache. The engine, the batch
runner, the compatibility proof, the conformance reference and the bench all call it. Per call it

1. picks the tick kind (:mod:`hogwild_ref.ticks`) and plans it on the host,
2. runs the model once with the tick in its cache: every layer writes its new K/V, then attends,
3. adopts the tick's post-write table in the storage and returns the logits.
"""

from __future__ import annotations

import contextlib
import operator
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .hf import HogwildCache, Packing, cache_keyword, layer_devices, use_hogwild_attention
from .limits import available_memory, gib
from .models import sliding_window
from .packed import PackedLinear, packable_bytes, packing_available, tensor_state
from .parallel import check_compile, local_kv_heads, share_tokens
from .plan import plan_tick
from .rope import RopeSpec
from .segments import Row, SegmentTable, contiguous, prompt_segment
from .split import kernel_for
from .storage import Storage
from .ticks import DecodeTick, ExtendTick, GeneralTick, GroupedTick, OracleTick, Planner, PrefillTick, Tick

__all__ = ["Forward", "WindowExceeded"]


class WindowExceeded(ValueError):
    """A tick's context passed the model's sliding window (Spec §11.3): full attention is no longer what
    the model computes. The engine attaches the run's partial result as ``result``."""

    result: Any = None


#: each model's oneDNN-packed linear weights (:class:`PackedLinear`, which holds the model's layers, not
#: the model): one copy per model, however many engines run it, gone with the model
_PACKS: weakref.WeakKeyDictionary[Any, PackedLinear] = weakref.WeakKeyDictionary()


def vocab_size(model: Any) -> int | None:
    """How many token ids ``model`` embeds: its config's ``vocab_size`` or its input embedding's rows,
    the larger (a padded embedding takes more ids; a tensor-parallel shard holds fewer rows than the
    config counts); None when neither is known. The feeds of Spec §3.1 are ids below it."""
    sizes = [getattr(getattr(model, "config", None), "vocab_size", None)]
    embed = getattr(model, "get_input_embeddings", None)
    if callable(embed):
        sizes.append(getattr(embed(), "num_embeddings", None))
    known = [n for n in sizes if isinstance(n, int) and not isinstance(n, bool) and n > 0]
    return max(known) if known else None


def check_feeds(rows: Sequence[Row], feeds: Sequence[Sequence[int]], vocab: int | None) -> None:
    """Refuse, in one line, a forward whose rows and feeds disagree (Spec §3.1: row ``r`` feeds
    ``n_r`` tokens, its ``feeds[r]``): no rows, a row that is not a :class:`~hogwild_ref.segments.Row`
    of a tuple of segment ids, a feed count or a token count that differs from the rows', or a token id
    the model does not embed. Without it a short feed left slots of the cache unwritten (fast) or
    filled with token 0 (general backends)."""
    if not rows:
        raise ValueError("a forward needs at least one row (Spec §3.1); got none")
    if len(feeds) != len(rows):
        raise ValueError(f"got {len(feeds)} feeds for {len(rows)} rows; pass one token list per row (Spec §3.1)")
    for r, (row, feed) in enumerate(zip(rows, feeds, strict=True)):
        if not isinstance(row, Row) or not isinstance(row.view, tuple) or not all(isinstance(s, str) for s in row.view):
            raise TypeError(f"row {r} must be a Row whose view is a tuple of segment ids, e.g. "
                            f"Row(('common', 'cur_0'), 1); got {row!r}")
        if len(feed) != row.new_tokens:
            raise ValueError(f"row {r} feeds {row.new_tokens} new tokens but its feed holds {len(feed)}; "
                             "give each row exactly its new_tokens token ids (Spec §3.1)")
        for t in feed:
            i = _token_id(t)
            if i is None or i < 0 or (vocab is not None and i >= vocab):
                raise ValueError(f"row {r} feeds token id {t!r}; the model embeds the ids 0 .. "
                                 f"{'its vocabulary size - 1' if vocab is None else vocab - 1}")


def _token_id(t: Any) -> int | None:
    """``t`` as a token id: an int or anything with ``__index__`` (a numpy integer, a 0-d integer
    tensor), not a bool; None otherwise."""
    if isinstance(t, bool):
        return None
    try:
        return operator.index(t)
    except TypeError:
        return None


class Forward:
    """The forward step of one model with one backend (Spec §3, §9, §11).

    Args:
        model: a transformers causal LM (proven compatible by the caller, Spec §11.6).
        rope: the model's RoPE (:func:`hogwild_ref.proof.ensure_compatible` returns it).
        backend: ``"fast"``, ``"rotate_queries"``, ``"rotate_keys"`` or ``"oracle"`` (Spec §9).
        compile: run one-token ticks through ``torch.compile(model.forward, fullgraph=True)`` (a string
            is the compile mode); None: the fast backend on CUDA, with CUDA graphs (Spec §9.6).
        pack_weights: run the float32 CPU linear layers on oneDNN-packed copies of the weights in
            every call of at least two rows (:class:`~hogwild_ref.packed.PackedLinear`, Spec §9.6); None:
            with the fast backend on the CPU, float32, eager, unless the copy would take more than half
            of the memory still available (then it warns once and runs unpacked).
        planner: the general tick's planner (:func:`~hogwild_ref.plan.plan_tick`; the conformance suite's
            mutants replace it).
        split: eager one-token ticks attend to the common segment through a fused kernel that returns
            its log-sum-exp and merge the tail by Spec §9.5 (:func:`~hogwild_ref.split.decode_attention_split`):
            True picks the kernel from each layer's device (``cpu_flash`` on the CPU, ``flex`` on CUDA),
            a string names it (:data:`~hogwild_ref.split.KERNELS`); None: off, since on the CPU the
            score-row path measured faster at 1k and level at 4k (docs/fast-path.md, "Split common part").
        devices: the device of each layer's K/V (default: each decoder layer's own device,
            :func:`~hogwild_ref.hf.layer_devices`; Spec §11.8).
        pack_slots: with the fast backend, a forward whose rows feed unequal numbers of tokens runs the
            model's token-wise layers on the real slots only, as one packed sequence
            (:class:`~hogwild_ref.hf.Packing`, Spec §11.2 "Packed slots"); False: on every padded slot.

    Several layer devices or tensor-parallel ranks turn the compiled step and packed weights off, and
    refuse them when asked for (:func:`~hogwild_ref.parallel.check_compile`).
    """

    def __init__(self, model: Any, rope: RopeSpec, backend: str = "fast", *, compile: bool | str | None = None,
                 pack_weights: bool | None = None, planner: Planner = plan_tick, split: bool | str | None = None,
                 devices: Sequence[Any] | None = None, pack_slots: bool = True):
        self.model, self.rope, self.backend = model, rope, backend
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        #: each layer's K/V device (Spec §11.8)
        self.layer_devices = [torch.device(d) for d in (devices if devices is not None else layer_devices(model))]
        out = model.get_output_embeddings()
        #: where the logits come out (the last layer's side of a spread model): sampling runs there (Spec §11.5)
        self.output_device = out.weight.device if out is not None else self.device
        compile, pack_weights = check_compile(model, self.layer_devices, compile, pack_weights)
        self.window = sliding_window(model.config)
        #: the token ids the model embeds (``0 .. vocab_size - 1``); None when neither the config nor the
        #: input embeddings say
        self.vocab_size = vocab_size(model)
        self.planner = planner
        self._cache_kw = cache_keyword(model)
        if compile is None:
            compile = backend == "fast" and self.device.type == "cuda"
        self.compile = compile
        #: packing was chosen by default, so it gives way to a lack of memory (:meth:`_packed_linear`)
        self._pack_auto = pack_weights is None
        if pack_weights is None:
            pack_weights = (backend == "fast" and self.device.type == "cpu" and self.dtype == torch.float32
                            and packing_available())
        self.pack_weights = pack_weights
        #: several-token forwards of the fast backend run the model on their real slots only (:meth:`_packing`)
        self.pack_slots = pack_slots
        kernel_for(split, self.device)  # an unknown kernel's name fails here
        #: the decode ticks' ``split`` option (:class:`~hogwild_ref.ticks.DecodeTick`)
        self.split: bool | str = split if isinstance(split, str) else bool(split)
        #: the last shared prompt prefix (Spec §4.4): its key and a storage holding its prefill
        self._shared: tuple[tuple[Any, ...], Storage] | None = None
        self._compiled_step: Callable[..., Any] | None = None
        self._caches: weakref.WeakKeyDictionary[Storage, HogwildCache] = weakref.WeakKeyDictionary()
        #: how many forwards each tick kind served (``general``, ``prefill``, ``grouped``, ``decode``, ``extend``, ``oracle``)
        self.kinds: dict[str, int] = {}

    # ------------------------------------------------------------------ storage
    def storage(self, table: SegmentTable, capacities: Mapping[str, int] | None = None) -> Storage:
        """Empty storage for ``table`` on the model's layer devices, in the model's dtype."""
        return Storage(self.model.config, table, self.rope, self.dtype, self.layer_devices, capacities,
                       position_zero=self.backend == "oracle", kv_heads=local_kv_heads(self.model))

    def share(self, tokens: Sequence[int | None]) -> list[int | None]:
        """The sampled ``tokens`` every process goes on with: rank 0's under tensor parallelism, else as given
        (:func:`~hogwild_ref.parallel.share_tokens`, Spec §11.5)."""
        return share_tokens(self.model, tokens, self.output_device)

    # ------------------------------------------------------------------ one forward
    def tick(self, storage: Storage, rows: Sequence[Row]) -> Tick:
        """Plan the tick that ``rows`` make over ``storage`` (host side, Spec §3.6, §9.6)."""
        if self.backend == "oracle":
            return OracleTick(storage, rows, self.rope, self.device, self.planner)
        workers = DecodeTick.workers(storage, rows) if self.backend == "fast" else None
        if workers is not None:  # every worker runs a row; those without one feed nothing (Spec §9.6)
            counts = [0] * storage.table.workers
            for w, row in zip(workers, rows):
                counts[w] = row.new_tokens
            return DecodeTick(storage, counts, self.rope, bool(self.compile), self.split, workers)
        grid = ExtendTick.workers(storage, rows) if self.backend == "fast" else None
        if grid is not None:  # worker rows of some groups feed several tokens (Spec §9.6, "Several tokens")
            return ExtendTick(storage, rows, self.rope, grid, self.device)
        if self.backend == "fast" and PrefillTick.applies(storage, rows):
            return PrefillTick(storage, rows, self.rope, "rotate_queries", self.device, self.planner)
        if self.backend == "fast" and GroupedTick.applies(storage, rows):
            return GroupedTick(storage, rows, self.rope, "rotate_queries", self.device, self.planner)
        general = "rotate_queries" if self.backend == "fast" else self.backend
        return GeneralTick(storage, rows, self.rope, general, self.device, self.planner)

    def __call__(self, storage: Storage, rows: Sequence[Row], feeds: Sequence[Sequence[int]],
                 logits: bool = True) -> Float[Tensor, "R V"] | None:
        """One batched forward over ``rows`` feeding ``feeds`` (Spec §3): plan, write, attend.

        Returns the last real slot's logits per row ``(R, V)`` (float32, on the model's device; a row
        without tokens gets its slot-0 logits, to be ignored), or None when ``logits`` is False.
        """
        if self.model.training:
            raise RuntimeError("the model is in training mode (dropout would apply); call model.eval() first")
        check_feeds(rows, feeds, self.vocab_size)
        parts = self.parts(storage, rows)
        if parts is not None:
            return self._in_parts(storage, rows, feeds, logits, parts)
        tick = self.tick(storage, rows)
        self._check_window(tick.max_position + 1)
        self.kinds[tick.kind] = self.kinds.get(tick.kind, 0) + 1
        cache = self._caches.get(storage)
        if cache is None:
            cache = self._caches[storage] = HogwildCache(storage)
        cache.tick = tick
        kwargs = {self._cache_kw: cache, "use_cache": True, "hogwild_cache": cache}
        decode = tick if isinstance(tick, DecodeTick) else None
        positions = tick.positions
        packing = None
        if decode is not None:  # one token per worker row; workers without a row of the caller feed 0
            fed = [0] * storage.table.workers
            for w, f in zip(decode.workers_of_rows, feeds):
                fed[w] = f[0] if f else 0
            ids = torch.tensor(fed, dtype=torch.long)[:, None]
            kwargs["logits_to_keep"] = 1
        else:
            n = tick.positions.shape[1]
            ids = torch.zeros(len(rows), n, dtype=torch.long)
            for r, f in enumerate(feeds):
                if f:
                    ids[r, : len(f)] = torch.tensor(f, dtype=torch.long)
            ends = [max(len(f), 1) - 1 for f in feeds]  # each row's last slot (slot 0 for a row without tokens)
            packing = self._packing(ends, n)
            # the output layer runs only on the slots whose logits are returned, given as host indices (valid
            # for hidden states on any device): an index gathers them into one contiguous copy, where a count
            # slices a strided view (Spec §11.2, item 5)
            if packing is None:  # from the earliest last slot on
                keep = n - min(ends) if logits else 1
                kwargs["logits_to_keep"] = torch.arange(n - keep, n)
            else:  # the token-wise layers run on the real slots only, the output layer on each row's last one
                ids = ids[packing.on(ids.device)][None]
                positions = positions[packing.on(positions.device)][None]
                kwargs["logits_to_keep"] = packing.last if logits else packing.last[-1:]
        packed = self._packed_linear()
        step = self._decode_step if decode is not None else self.model
        cache.packing = packing
        try:
            with use_hogwild_attention(self.model), torch.inference_mode(), packed or contextlib.nullcontext():
                out = step(input_ids=ids.to(self.device, non_blocking=True), position_ids=positions, **kwargs)
        finally:
            cache.tick, cache.packing = None, None
        storage.table = tick.table
        if not logits:
            return None
        if decode is not None:
            last = out.logits[:, -1].float()
            if decode.workers_of_rows == list(range(storage.table.workers)):
                return last
            return last[torch.tensor(decode.workers_of_rows, device=last.device)]
        if packing is not None:
            return out.logits[0].float()
        kept = torch.tensor([i - (n - keep) for i in ends], device=out.logits.device)
        return out.logits[torch.arange(len(rows), device=out.logits.device), kept].float()

    def _packing(self, ends: list[int], n: int) -> Packing | None:
        """The packed slots of a several-token forward (Spec §11.2, "Packed slots"), rows ending at slots
        ``ends`` of ``n``: with the fast backend, when any slot would be padding; else None (measured,
        one CPU thread: 8 prompts of 154-176 tokens prefill in 2.81-2.95 s packed against 2.89-3.12 s
        padded, their static rows of 4-11 tokens in 0.93-1.00 against 1.08-1.20 s)."""
        counts = [e + 1 for e in ends]
        if self.backend != "fast" or not self.pack_slots or sum(counts) == len(counts) * n:
            return None
        return Packing(counts, n)

    def parts(self, storage: Storage, rows: Sequence[Row]) -> tuple[list[int], list[int]] | None:
        """A forward over several groups (Spec §9.6, §13.3) in which some groups' rows feed several
        tokens and every row of the other groups at most one, as two forwards: the indices of the
        rows that take the one-token path (:class:`~hogwild_ref.ticks.DecodeTick`) and of the rest
        (an :class:`~hogwild_ref.ticks.ExtendTick` when they are a grid of worker rows); None when
        the forward is one tick.

        No row sees another group's keys (Spec §3.3), so the split changes no result; each group's
        rows take the path they take when the group's problem runs alone. One extend tick attends every
        row over ``n`` query slots (padding included) but runs the model's other layers on the real
        slots only (:meth:`_packing`); two forwards pass over the weights twice. The split is made when
        at most one group in eight feeds several tokens (measured on one CPU thread, 400-token
        contexts, groups whose workers feed 8 tokens, the others 1; split against one packed tick:
        8 problems of 2 workers, one problem 318 against 345 ms, two 380 against 348, three 392
        against 348, four 457 against 373; of 1 worker, one 263 against 254, four 328 against 244;
        4 problems of 2 workers, one 253 against 226). With :attr:`pack_slots` off the same rule
        holds (the padded forward is a reference, not a path to tune).
        """
        if (self.backend != "fast" or all(row.new_tokens <= 1 for row in rows)
                or not GroupedTick.applies(storage, rows)):
            return None
        several = {row.view[0] for row in rows if row.new_tokens > 1}  # each group's common segment opens its views
        single = {row.view[0] for row in rows} - several
        if 8 * len(several) > len(several) + len(single):
            return None
        one = [r for r, row in enumerate(rows) if row.view[0] in single]
        if not DecodeTick.applies(storage, [rows[r] for r in one]):
            return None
        return one, [r for r, row in enumerate(rows) if row.view[0] in several]

    def _in_parts(self, storage: Storage, rows: Sequence[Row], feeds: Sequence[Sequence[int]], logits: bool,
                  parts: tuple[list[int], list[int]]) -> Float[Tensor, "R V"] | None:
        """:meth:`__call__` as one forward per part of :meth:`parts`, the logits put back in row order."""
        out: Tensor | None = None
        for idx in parts:
            got = self(storage, [rows[r] for r in idx], [feeds[r] for r in idx], logits)
            if got is not None:
                if out is None:
                    out = got.new_empty(len(rows), got.shape[1])
                out[torch.tensor(idx, device=got.device)] = got
        return out

    def prefill(self, storage: Storage, first: str | Sequence[str], static: Mapping[str, list[int]]
                | Sequence[Mapping[str, list[int]]], chunk: int = 512, shared: int | Sequence[int] = 0) -> None:
        """Prefill the static segments (Spec §4.4): ``first`` (the prompt/history) alone, then every
        other static segment ``s`` of ``static`` in one batch of rows ``[first, s]``, at most ``chunk``
        tokens per row per forward (appending chunk by chunk equals one long row: each chunk attends
        causally to what is already stored).

        Several problems of a union table (Spec §13.3): ``first`` and ``static`` are one per problem
        (ids as in the union), and each forward prefills every problem's rows side by side; the fast
        backend runs each problem's part on its own segments (:class:`~hogwild_ref.ticks.GroupedTick`).

        ``shared`` (one per problem, or one for all): how many leading tokens of the prompt are the
        template's, the same for every problem (Spec §4.4, shared prefix). Their K/V are computed
        once, as a chunk of their own, kept for the next call with the same tokens and weights, and
        copied into each problem's prompt segment; the rest of the prompt is prefilled after them.

        Problems whose prompt and static texts are all the same (the samples of self-consistency,
        one problem under several seeds) are prefilled once: the others' segments are copies of the
        first one's (Spec §13.3, "the same prompt twice").
        """
        firsts = [first] if isinstance(first, str) else list(first)
        statics = [static] if isinstance(static, Mapping) else list(static)
        feeds = [st[f] for f, st in zip(firsts, statics, strict=True)]
        shares = [shared] * len(firsts) if isinstance(shared, int) else list(shared)
        if len(shares) != len(firsts) or any(not 0 <= n < max(len(f), 1) for n, f in zip(shares, feeds)):
            raise ValueError(f"shared must give 0 <= n < prompt length per problem; got {shares} for prompts "
                             f"of {[len(f) for f in feeds]} tokens")
        rest = {b: [sid for sid in st if sid != f] for b, (f, st) in enumerate(zip(firsts, statics))}
        first_of: dict[tuple[Any, ...], int] = {}
        same = {b: first_of.setdefault((tuple(feeds[b]), shares[b], tuple(tuple(statics[b][s]) for s in rest[b])), b)
                for b in range(len(firsts))}  # each problem's first problem with the same texts
        todo = [b for b in range(len(firsts)) if same[b] == b]
        for b in todo:
            if shares[b]:
                held = self._shared_prefix(feeds[b][: shares[b]], chunk)
                storage.copy_segment(held, prompt_segment(held.table), firsts[b])
        self._prefill(storage, [(firsts[b],) for b in todo], [feeds[b][shares[b]:] for b in todo], chunk)
        others = [((firsts[b], sid), statics[b][sid]) for b in todo for sid in rest[b] if statics[b][sid]]
        if others:
            self._prefill(storage, [view for view, _ in others], [feed for _, feed in others], chunk)
        for b, a in same.items():  # stored K/V are segment-local (Spec §2.1): a copy is the prefill
            if a != b:
                for src, dst in zip([firsts[a], *rest[a]], [firsts[b], *rest[b]], strict=True):
                    if storage.table.length(src):
                        storage.copy_segment(storage, src, dst)

    def _shared_prefix(self, tokens: list[int], chunk: int) -> Storage:
        """A one-segment storage whose ``prompt`` holds the prefill of ``tokens`` (Spec §4.4, shared
        prefix): computed on the first call, then reused while the tokens, the chunk size and the
        model's weights (:func:`~hogwild_ref.packed.tensor_state`) stay the same. One prefix is kept."""
        key = (tuple(tokens), chunk, tuple(tensor_state(p) for p in self.model.parameters()))
        if self._shared is not None and self._shared[0] == key:
            return self._shared[1]
        self._shared = None  # free the old prefix first
        table = contiguous(1)
        own = self.storage(table, {prompt_segment(table): len(tokens)})
        self._prefill(own, [(prompt_segment(table),)], [tokens], chunk)
        self._shared = (key, own)
        return own

    def _prefill(self, storage: Storage, views: list[tuple[str, ...]], feeds: list[list[int]], chunk: int) -> None:
        for start in range(0, max((len(f) for f in feeds), default=0), chunk):
            part = [f[start : start + chunk] for f in feeds]
            self(storage, [Row(v, len(c)) for v, c in zip(views, part)], part, logits=False)

    # ------------------------------------------------------------------ helpers
    def _packed_linear(self) -> PackedLinear | None:
        """oneDNN-packed linear weights on the CPU (Spec §9.6, "CPU linear layers"), when enabled: one
        pack per model, shared by every engine on it, serves every forward's calls of two rows or more;
        made again after a weight changed."""
        if not self.pack_weights or self.compile:
            return None
        packed = _PACKS.get(self.model)
        if packed is None or not packed.current():
            _PACKS.pop(self.model, None)  # the old copies go before the new ones are made
            del packed
            if self._pack_auto and not self._room_to_pack():
                self.pack_weights = False
                return None
            packed = _PACKS[self.model] = PackedLinear(self.model)
        return packed

    def _room_to_pack(self) -> bool:
        """Whether the packed copies (Spec §9.6, CPU linear layers) take at most half of the memory this
        machine still has available; if not, say so once: the ticks run unpacked, slower, not killed."""
        need, available = packable_bytes(self.model), available_memory()
        if available is None or 2 * need <= available:
            return True
        warnings.warn(f"not packing the linear weights: the packed copy needs about {gib(need)} "
                      f"and this machine has {gib(available)} of memory available; the model runs unpacked (slower); free "
                      "memory, or (library) pass pack_weights=True to pack anyway", stacklevel=2)
        return False

    @property
    def _decode_step(self) -> Callable[..., Any]:
        """The model's forward for one-token ticks: compiled once when ``compile`` is set (Spec §9.6)."""
        if not self.compile:
            return self.model
        if self._compiled_step is None:
            on_cuda = self.device.type == "cuda"
            mode = self.compile if isinstance(self.compile, str) else ("reduce-overhead" if on_cuda else None)
            # CPU: freezing lets inductor pre-pack the weights, so the W-row linear layers cost about
            # one row's (MKL's small-M GEMM otherwise grows with W)
            options: dict[str, Any] | None = None if on_cuda or mode is not None else {"freezing": True}
            self._compiled_step = torch.compile(self.model.forward, fullgraph=True, mode=mode, options=options)
        return self._compiled_step

    def _check_window(self, longest: int) -> None:
        if self.window is not None and longest > self.window:
            raise WindowExceeded(
                f"the context reached {longest} tokens, beyond the model's sliding window of {self.window}; "
                "hogwild_ref implements full attention only: use a smaller budget or a model without "
                "sliding-window attention"
            )
