"""The tick loop: model + HogwildCache + scheduler + sampling, with streaming events (Spec §3–§6, §11).

One tick is one batched forward of all workers (Spec §3.1). Before the first tick the static
segments are prefilled (Spec §4.4). After each tick the scheduler decides the next feeds and which
finished steps to flush (Spec §6.2); flushes happen in its order before the next tick (Spec §5.2).

Public entry points: :func:`generate` (returns a :class:`HogwildResult`) and :class:`Engine`
(:meth:`Engine.stream` yields events as they happen).
"""

from __future__ import annotations

import contextlib
import inspect
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Generator, Iterator, Sequence

import torch
from torch import Tensor

from . import prompts as prompts_mod
from .cache import ATTN_IMPLEMENTATION, CACHE_BACKENDS, HogwildCache, make_cache
from .checks import check_int, check_problem, check_settings, context_bound, warn_context
from .compat import ensure_compatible
from .masks import plan_tick
from .models import check_vocabulary, sliding_window
from .packed import PackedLinear, packing_available
from .sampling import SamplingConfig, sample_rows
from .scheduler import Scheduler, SchedulerConfig, Snapshot, extract_boxed
from .segments import Row, SegmentTable, make_layout

__all__ = [
    "DoneEvent",
    "Engine",
    "FlushEvent",
    "GenerationInterrupted",
    "HogwildResult",
    "SnapshotEvent",
    "StepEvent",
    "TokenEvent",
    "WorkerResult",
    "generate",
]


# ---------------------------------------------------------------------- events
@dataclass(frozen=True)
class TokenEvent:
    """Worker ``worker`` sampled ``token`` at tick ``tick`` (``text`` is its decoded piece)."""

    tick: int
    worker: int
    token: int
    text: str


@dataclass(frozen=True)
class StepEvent:
    """Worker ``worker`` finished step ``index`` (``text`` excludes the closing token)."""

    tick: int
    worker: int
    index: int
    text: str


@dataclass(frozen=True)
class FlushEvent:
    """A finished step of ``worker`` moved into the history, which now has ``history_length`` tokens."""

    tick: int
    worker: int
    history_length: int


@dataclass(frozen=True)
class SnapshotEvent:
    """The state at a requested budget (Spec §6.5)."""

    tick: int
    snapshot: Snapshot


@dataclass(frozen=True)
class DoneEvent:
    """Generation ended (``reason``: "boxed", "eos", "budget" or "finisher"; a result built after
    Ctrl-C has reason "interrupted")."""

    tick: int
    reason: str | None
    answer: str | None


Event = TokenEvent | StepEvent | FlushEvent | SnapshotEvent | DoneEvent


# ---------------------------------------------------------------------- results
@dataclass
class WorkerResult:
    """One worker's output.

    ``tokens``: every id the worker sampled (worker 0: the finisher's too); ``view_tokens``: its final linearised view (what its
    last query attended to); ``generated_positions``: indices into ``view_tokens`` of tokens the
    model sampled (the rest were forced: prompt, headers, step prefixes, other workers' tokens are
    counted as generated too — they were sampled by their writer).
    """

    name: str
    text: str
    tokens: list[int]
    view_tokens: list[int]
    generated_positions: list[int]


@dataclass
class HogwildResult:
    """Everything a run produced."""

    model: str
    layout: str
    backend: str
    workers: list[WorkerResult]
    history_text: str
    answer: str | None
    reason: str | None
    ticks: int
    seconds: float
    prefill_seconds: float
    snapshots: list[Snapshot] = field(default_factory=list)
    table: SegmentTable | None = None
    logits: list[Tensor] | None = None  # per tick (W, V) float32, when record_logits
    settings: dict[str, Any] = field(default_factory=dict)  # the run's settings (workers, budget, sampling, ...)

    @property
    def ticks_per_second(self) -> float:
        return self.ticks / self.seconds if self.seconds else 0.0

    def to_json_dict(self) -> dict[str, Any]:
        """The ``--json`` object of the CLI."""
        return {
            "model": self.model,
            "layout": self.layout,
            "backend": self.backend,
            "ticks": self.ticks,
            "seconds": round(self.seconds, 4),
            "prefill_seconds": round(self.prefill_seconds, 4),
            "history_text": self.history_text,
            "answer": self.answer,
            "reason": self.reason,
            "settings": self.settings,
            "snapshots": [asdict(s) for s in self.snapshots],
            "workers": [
                {
                    "name": w.name,
                    "text": w.text,
                    "tokens": w.tokens,
                    "view_tokens": w.view_tokens,
                    "generated_positions": w.generated_positions,
                }
                for w in self.workers
            ],
        }


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`generate`: a ``KeyboardInterrupt`` that carries the partial result.

    ``result`` holds what each worker wrote up to the last completed tick and the shared history,
    with ``reason == "interrupted"`` (also left in :attr:`Engine.result`).
    """

    def __init__(self, result: HogwildResult | None):
        super().__init__("generation interrupted")
        self.result = result


# ---------------------------------------------------------------------- token bookkeeping
class _Transcript:
    """Token ids of every segment (mirroring the cache), which of them were sampled, and what each
    worker fed — the source of the result's texts and linearised views."""

    def __init__(self, table: SegmentTable):
        self.ids: dict[str, list[int]] = {s.id: [] for s in table.segments}
        self.sampled: dict[str, list[bool]] = {s.id: [] for s in table.segments}
        self.written: list[list[int]] = [[] for _ in range(table.workers)]

    def append(self, sid: str, ids: Sequence[int], first_sampled: bool = False, worker: int | None = None) -> None:
        """``ids`` were fed into segment ``sid`` (by ``worker``); the first was sampled if ``first_sampled``."""
        self.ids[sid].extend(ids)
        self.sampled[sid].extend(first_sampled and i == 0 for i in range(len(ids)))
        if worker is not None:
            self.written[worker].extend(ids)

    def flush(self, own: str, history: str) -> None:
        """Spec §5.1 on the mirror: ``own``'s tokens move to the end of ``history``."""
        self.ids[history].extend(self.ids[own])
        self.sampled[history].extend(self.sampled[own])
        self.ids[own], self.sampled[own] = [], []

    def view(self, view: Sequence[str]) -> tuple[list[int], list[int]]:
        """The linearised view's ids and the indices of its sampled tokens."""
        ids = [t for sid in view for t in self.ids[sid]]
        flags = [f for sid in view for f in self.sampled[sid]]
        return ids, [i for i, f in enumerate(flags) if f]


# ---------------------------------------------------------------------- model plumbing
@contextmanager
def use_hogwild_attention(model: Any) -> Iterator[None]:
    """Switch ``model`` to the ``"hogwild"`` attention implementation for the duration (Spec §11.1)."""
    previous = getattr(model.config, "_attn_implementation", None)
    if previous == ATTN_IMPLEMENTATION:  # already switched for the whole run
        yield
        return
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    try:
        yield
    finally:
        if previous is not None:
            model.set_attn_implementation(previous)


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Tokens that end a worker: the tokenizer's EOS and the model's ``generation_config`` EOS ids.

    Chat models often end a turn with a token other than the tokenizer's EOS (Phi-3's ``<|end|>``,
    Llama 3's ``<|eot_id|>``); their generation config lists it.
    """
    ids: set[int] = set()
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen, int):
        ids.add(gen)
    elif isinstance(gen, (list, tuple)):
        ids.update(int(x) for x in gen)
    return frozenset(ids)


def _layer_devices(model: Any) -> list[torch.device]:
    """The device of every decoder layer (a model spread with ``device_map`` keeps K/V beside its layer)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    default = next(model.parameters()).device
    if layers is None or len(layers) != model.config.num_hidden_layers:
        return [default] * model.config.num_hidden_layers
    return [next(layer.parameters(), torch.empty(0, device=default)).device for layer in layers]


def _cache_keyword(model: Any) -> str:
    """transformers 5.24 renamed ``past_key_values`` to ``cache``; support both."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# ---------------------------------------------------------------------- engine
#: slots reserved for a worker's current step (a longer step grows its segment, Spec §9.6)
STEP_CAPACITY = 64
#: budget assumed for capacity planning when the run has none
DEFAULT_BUDGET = 1024


class Engine:
    """Hogwild generation with one model over one shared segment cache.

    Args:
        model: a transformers causal LM of a supported family (Spec §11.3).
        tokenizer: its tokenizer (a chat template is used when it has one).
        workers: number of workers ``W >= 1``.
        layout: ``"contiguous"``, ``"interleaved"`` or ``"combined"`` (Spec §4).
        backend: ``"fast"`` (default: one-token ticks through the path of Spec §9.6, other
            forwards through ``rotate_queries``), ``"rotate_queries"``, ``"rotate_keys"`` or ``"oracle"`` (the slow engine
            oracle of Spec §11.4).
        templates: prompt texts (Spec §7).
        scheduler: scheduler settings (Spec §6); its budget is ``max_ticks``.
        sampling: sampling settings; one ``torch.Generator`` per worker seeded ``seed + w``.
        finisher: when the budget ends without an answer, force one with the s1-style finisher
            (Spec §6.6), up to ``finisher_tokens`` tokens, in worker 0's view.
        record_logits: keep each tick's last-slot logits per worker (for tests).
        allow_untested: run a model family outside the tested ones once the compatibility proof on
            the model passes (Spec §11.3, §11.6); every model is proven before its first run.
        model_name: the name reported in the result (default: the config's name or path).
        prefill_chunk: most tokens per row in one prefill forward (bounds prefill memory).
        compile: run the fast backend's one-token ticks through ``torch.compile(model.forward,
            fullgraph=True)`` (a string is the compile mode); None: on CUDA only, with CUDA graphs.
        pack_weights: run the one-token ticks' float32 CPU linear layers on MKL-packed copies of the
            weights (:class:`hogwild_ref.packed.PackedLinear`; one more copy of those weights);
            None: with the fast backend, W >= 4, float32 on the CPU (at W = 2 MKL's plain product is
            faster: 95 vs 110 ms per tick on SmolLM2's shape, one thread).
        table: explicit segments and views (Spec §4.5) instead of the ``layout`` preset; its lengths
            must be 0. The rendered prompt goes into its prompt segment (Spec §4.4); every other
            static segment's text comes from ``static_texts``.
        static_texts: with ``table``: the text of each static segment other than the prompt segment
            (missing ones stay empty).

    A ``scheduler`` config is used as given: its ``eos_token_ids`` replace the defaults
    (:func:`eos_token_ids`), so pass them when you pass a config.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        workers: int = 2,
        layout: str = "combined",
        backend: str = "fast",
        templates: prompts_mod.PromptTemplates | None = None,
        scheduler: SchedulerConfig | None = None,
        sampling: SamplingConfig | None = None,
        seed: int = 0,
        finisher: bool = True,
        finisher_tokens: int = 24,
        record_logits: bool = False,
        allow_untested: bool = False,
        model_name: str | None = None,
        prefill_chunk: int = 512,
        compile: bool | str | None = None,
        pack_weights: bool | None = None,
        table: SegmentTable | None = None,
        static_texts: dict[str, str] | None = None,
    ) -> None:
        if backend not in CACHE_BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(CACHE_BACKENDS)}")
        check_int("prefill_chunk", prefill_chunk, 1)
        check_settings(workers=workers, layout=layout if table is None else "combined", backend=backend,
                       backends=CACHE_BACKENDS, max_ticks=None, finisher_tokens=finisher_tokens,
                       seed=seed)  # Spec §11.7, before the model runs
        table, layout = _explicit_table(table, static_texts, workers, layout)
        self.table, self.static_texts = table, dict(static_texts or {})
        if tokenizer is not None:
            check_vocabulary(model, tokenizer)
        self.model, self.tokenizer = model, tokenizer
        self.rope = ensure_compatible(model, allow_untested=allow_untested, backend=backend)  # Spec §11.6
        self.workers, self.layout, self.backend = workers, layout, backend
        self.templates = templates or prompts_mod.PromptTemplates()
        base = scheduler or SchedulerConfig.from_templates(self.templates, eos_token_ids=eos_token_ids(model, tokenizer))
        self.scheduler_config = replace(base, steps=layout != "contiguous" if table is None else table.history is not None)
        self.names = self.scheduler_config.names or prompts_mod.default_names(workers)
        self.sampling = sampling or SamplingConfig()
        self.seed = seed
        self.finisher = finisher
        self.finisher_tokens = finisher_tokens
        self.record_logits = record_logits
        self.model_name = model_name or getattr(model.config, "_name_or_path", "") or model.config.model_type
        self.window = sliding_window(model.config)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self._cache_kw = _cache_keyword(model)
        self.prefill_chunk = prefill_chunk
        if compile is None:  # the fast backend compiles on accelerators by default (Spec §9.6)
            compile = backend == "fast" and self.device.type == "cuda"
        self.compile = compile
        self._compiled_step: Callable[..., Any] | None = None
        if pack_weights is None:  # eager fast ticks on the CPU with W >= 4 (Spec §9.6; measured: a loss at W = 2)
            pack_weights = (backend == "fast" and self.device.type == "cpu" and workers >= 4
                            and self.dtype == torch.float32 and packing_available())
        self.pack_weights = pack_weights
        self._packed: PackedLinear | None = None
        self.result: HogwildResult | None = None
        self._partial: Callable[[], HogwildResult] | None = None

    # ------------------------------------------------------------------ helpers
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def forward_rows(self, cache: HogwildCache, rows: Sequence[Row], feeds: Sequence[Sequence[int]], logits: bool = True) -> Tensor | None:
        """One batched forward over explicit ``rows`` feeding ``feeds`` (Spec §3): plan, write, attend.

        The building block of :meth:`stream` (prefill rows and worker ticks alike) and of the
        reference conformance adapter. A tick of the worker rows in which every row feeds at most
        one token goes through the fast path when the cache has the ``fast`` backend (Spec §9.6);
        every other forward through the general plan (Spec §3.6). Returns the last real slot's
        logits per row ``(R, V)`` (float32, on the model's device), or None when ``logits`` is False.
        """
        counts = [len(f) for f in feeds]
        worker_rows = len(rows) == cache.table.workers and all(
            row.view == view for row, view in zip(rows, cache.table.views)
        )
        if worker_rows and cache.can_decode(counts):
            return self._forward_decode(cache, feeds, counts, logits)
        plan = plan_tick(cache.table, rows, self.rope, self.device)
        self._check_window(plan.max_position + 1)
        ids = torch.zeros(plan.num_rows, plan.n, dtype=torch.long)
        for r, f in enumerate(feeds):
            if f:
                ids[r, : len(f)] = torch.tensor(f, dtype=torch.long)
        cache.begin_tick(plan)
        positions = torch.zeros_like(plan.positions) if cache.position_zero else plan.positions
        kwargs = {self._cache_kw: cache, "use_cache": True, "hogwild_cache": cache}
        if not logits:
            kwargs["logits_to_keep"] = 1
        with use_hogwild_attention(self.model), torch.inference_mode():
            out = self.model(input_ids=ids.to(self.device), position_ids=positions, **kwargs)
        cache.end_tick()
        if not logits:
            return None
        last = (plan.new_tokens - 1).clamp_min(0)
        return out.logits[torch.arange(plan.num_rows, device=out.logits.device), last.to(out.logits.device)].float()

    def _forward_decode(self, cache: HogwildCache, feeds: Sequence[Sequence[int]], counts: list[int], logits: bool) -> Tensor | None:
        """A one-token tick through the fast path (Spec §9.6): host plan, in-place device tensors."""
        positions = cache.begin_decode(counts)
        assert cache.decode is not None
        self._check_window(int(cache.decode.positions.max()) + 1)
        ids = torch.tensor([f[0] if f else 0 for f in feeds], dtype=torch.long)[:, None]
        kwargs = {self._cache_kw: cache, "use_cache": True, "hogwild_cache": cache, "logits_to_keep": 1}
        packed = self._packed_linear(len(feeds))
        with use_hogwild_attention(self.model), torch.inference_mode(), packed or contextlib.nullcontext():
            out = self._decode_step(input_ids=ids.to(self.device, non_blocking=True), position_ids=positions, **kwargs)
        cache.end_tick()
        return out.logits[:, -1].float() if logits else None

    def _packed_linear(self, rows: int) -> PackedLinear | None:
        """MKL-packed linear weights for ``rows``-row ticks on the CPU (Spec §9.6), when enabled."""
        if not self.pack_weights or self.compile:
            return None
        if self._packed is None or self._packed.rows != rows:
            self._packed = PackedLinear(self.model, rows)
        return self._packed

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
            raise ValueError(
                f"the context reached {longest} tokens, beyond the model's sliding window of {self.window}; "
                "hogwild_ref implements full attention only: use a smaller budget or a model without "
                "sliding-window attention"
            )

    def prefill(self, cache: HogwildCache, first: str, static: dict[str, list[int]]) -> None:
        """Prefill the static segments (Spec §4.4): ``first`` (the prompt/history) alone, then every
        other static segment ``s`` of ``static`` in one batch of rows ``[first, s]``."""
        self._prefill(cache, [(first,)], [static[first]])
        others = [sid for sid in static if sid != first and static[sid]]
        if others:
            self._prefill(cache, [(first, sid) for sid in others], [static[sid] for sid in others])

    def _prefill(self, cache: HogwildCache, views: list[tuple[str, ...]], feeds: list[list[int]]) -> None:
        """Prefill rows ``views`` with ``feeds``, at most ``prefill_chunk`` tokens per row per forward."""
        step = self.prefill_chunk
        for start in range(0, max(len(f) for f in feeds), step):
            chunk = [f[start : start + step] for f in feeds]
            self.forward_rows(cache, [Row(v, len(c)) for v, c in zip(views, chunk)], chunk, logits=False)

    def _table_and_static(self, problem: str) -> tuple[SegmentTable, str, dict[str, list[int]]]:
        """The layout's table (lengths 0) and the token ids of its static segments (Spec §4.4)."""
        if self.table is not None:  # explicit views (Spec §4.5): static texts come from the caller
            return _explicit_static(self, problem)
        table = make_layout(self.layout, self.workers)
        templates = self.templates
        if table.history is None:  # contiguous: no shared history, so no history header (Spec §4.1)
            templates = replace(templates, history_header="")
        chat = self.tokenizer.apply_chat_template if getattr(self.tokenizer, "chat_template", None) else None
        prompt = prompts_mod.render_prompt(problem, self.workers, chat, templates, names=self.names)
        first = table.history if table.history is not None else table.segments[0].id
        static = {first: self._encode(prompt)}
        if self.layout == "combined":
            for sid, text in prompts_mod.segment_texts(templates, self.workers).items():
                static[sid] = self._encode(text)
        return table, first, static

    # ------------------------------------------------------------------ main loop
    def capacities(self, table: SegmentTable, static: dict[str, list[int]]) -> dict[str, int]:
        """Slots to reserve per segment, from the run's budget (Spec §9.6).

        Static segments: their length. The history: the prompt plus 1.5 tokens per worker per tick
        of the budget (room for step prefixes) and the finisher's. A current step: :data:`STEP_CAPACITY` tokens (a longer
        step grows its segment). Contiguous outputs: the whole budget.
        """
        budget = self.scheduler_config.max_ticks if self.scheduler_config.max_ticks is not None else DEFAULT_BUDGET
        extra = self.finisher_tokens + 32
        caps = {sid: len(ids) for sid, ids in static.items()}
        for seg in table.segments:
            if seg.writer is not None:
                caps[seg.id] = min(budget, STEP_CAPACITY) + 16 if table.history is not None else budget + extra
        if table.history is not None:
            # a tick feeds one token per worker, more at a step change (prefix, collaboration prompt)
            caps[table.history] = len(static.get(table.history, [])) + self.workers * (budget + budget // 2) + extra
        return caps

    def make_cache(self, table: SegmentTable, static: dict[str, list[int]]) -> HogwildCache:
        """The run's cache: the engine's backend, capacities from the budget, per-layer devices."""
        return make_cache(self.model.config, table, self.rope, self.backend, self.dtype, _layer_devices(self.model),
                          self.capacities(table, static), self.compile)

    def stream(self, problem: str) -> Generator[Event, None, None]:
        """Run Hogwild generation on ``problem``, yielding events; the result lands in ``self.result``.

        Ctrl-C (``KeyboardInterrupt``, raised inside the run or thrown into it at an event) leaves the
        partial result in ``self.result`` — every worker's text up to the last completed tick and the
        history, ``reason == "interrupted"`` — and propagates.
        """
        self.result, self._partial = None, None
        try:
            with use_hogwild_attention(self.model):  # switched once for the whole run, restored at the end
                yield from self._stream(problem)
        except KeyboardInterrupt:
            if self._partial is not None:
                self.result = self._partial()
            raise
        finally:
            self._partial = None

    def settings(self) -> dict[str, Any]:
        """The run's settings as plain data (the ``settings`` of :meth:`HogwildResult.to_json_dict`)."""
        cfg = self.scheduler_config
        return {
            "workers": self.workers,
            "names": list(self.names),
            "layout": self.layout,
            "backend": self.backend,
            "max_ticks": cfg.max_ticks,
            "seed": self.seed,
            "sampling": asdict(self.sampling),
            "collab_every": cfg.collab_every,
            "finisher": self.finisher,
            "finisher_tokens": self.finisher_tokens,
            "snapshot_ticks": list(cfg.snapshot_ticks),
            "prompts": asdict(self.templates),
        }

    def _stream(self, problem: str) -> Generator[Event, None, None]:
        t0 = time.perf_counter()
        check_problem(problem)
        table, first, static = self._table_and_static(problem)
        W = self.workers
        bound = context_bound(sum(map(len, static.values())), W, self.scheduler_config.max_ticks,
                              self.finisher_tokens if self.finisher else 0)
        warn_context(bound, getattr(self.model.config, "max_position_embeddings", None))
        cache = self.make_cache(table, static)
        sched = Scheduler(W, self._decode, self._encode, self.scheduler_config)
        gens = [torch.Generator(device=self.device).manual_seed(self.seed + w) for w in range(W)]
        transcript = _Transcript(table)
        logits_log: list[Tensor] = []
        snapshots: list[Snapshot] = []
        prefill_seconds = 0.0
        pending: list[int | None] = [None] * W
        finished: list[int] = []  # tokens the finisher decoded for worker 0
        tick = 0

        def build(reason: str | None, answer: str | None) -> HogwildResult:
            """The result from the state after the last completed tick (also the partial one, Ctrl-C)."""
            workers = []
            for w in range(W):
                view_tokens, generated_positions = transcript.view(cache.table.views[w])
                p = pending[w]
                last = [p] if p is not None and p not in self.scheduler_config.eos_token_ids else []
                workers.append(WorkerResult(
                    name=self.names[w],
                    text=self._decode(transcript.written[w] + last),
                    tokens=sched.generated(w) + (finished if w == 0 else []),
                    view_tokens=view_tokens,
                    generated_positions=generated_positions,
                ))
            return HogwildResult(
                model=self.model_name, layout=self.layout, backend=self.backend, workers=workers,
                history_text=sched.history_text(), answer=answer, reason=reason, ticks=tick,
                seconds=time.perf_counter() - t0, prefill_seconds=prefill_seconds, snapshots=list(snapshots),
                table=cache.table, logits=logits_log if self.record_logits else None, settings=self.settings(),
            )

        self._partial = lambda: build("interrupted", sched.answer())

        # prefill (Spec §4.4): the prompt/history segment alone, then every other static segment,
        # in chunks of prefill_chunk tokens (appending to a segment chunk by chunk is the same as
        # one long row: each chunk attends causally to what is already stored)
        self.prefill(cache, first, static)
        for sid, ids in static.items():
            transcript.append(sid, ids)
        prefill_seconds = time.perf_counter() - t0

        feeds = sched.initial_feeds()
        reason: str | None = None
        while True:
            if sched.done:  # a budget of 0 ends generation before the first tick (Spec §6.5)
                reason = sched.reason
                break
            if not any(feeds):
                reason = reason or "eos"
                break
            logits = self.forward_rows(cache, cache.table.rows([len(f) for f in feeds]), feeds)
            assert logits is not None
            sampled = sample_rows(logits, [bool(f) for f in feeds], self.sampling, gens)
            for w, tok in enumerate(sampled):
                if tok is not None:
                    yield TokenEvent(tick + 1, w, tok, self._decode([tok]))
            # the tick is complete: commit it (a Ctrl-C before this line reports the previous tick)
            tick += 1
            if self.record_logits:
                logits_log.append(logits.detach().cpu())
            for w, f in enumerate(feeds):
                first_sampled = bool(f) and pending[w] is not None and f[0] == pending[w]
                transcript.append(cache.table.write_segment(w), f, first_sampled, worker=w)
            pending[:] = sampled
            outcome = sched.observe(sampled)
            for step in outcome.finished_steps:
                yield StepEvent(tick, step.worker, step.index, step.text)
            for w in outcome.flushes:
                own = cache.table.write_segment(w)
                hist = cache.table.history
                assert hist is not None
                cache.flush(w)
                transcript.flush(own, hist)
                yield FlushEvent(tick, w, cache.table.length(hist))
            if outcome.snapshot is not None:
                snapshots.append(outcome.snapshot)
                yield SnapshotEvent(tick, outcome.snapshot)
            feeds = outcome.feeds
            if outcome.done:
                reason = outcome.reason
                break

        answer = sched.answer()
        if answer is None and reason == "budget" and self.finisher:
            answer, extra = yield from self._finish(cache, sched, pending, transcript, tick, finished)
            tick += extra
            if answer is not None:
                reason = "finisher"

        self.result = build(reason, answer)
        self._partial = None
        yield DoneEvent(tick, reason, answer)

    def _finish(self, cache: HogwildCache, sched: Scheduler, pending: list[int | None], transcript: _Transcript,
                tick: int, produced: list[int]) -> Generator[Event, None, tuple[str | None, int]]:
        """s1-style finisher (Spec §6.6): worker 0 is fed its last token + the finisher, then decodes greedily."""
        W = self.workers
        head = [pending[0]] if pending[0] is not None and pending[0] not in self.scheduler_config.eos_token_ids else []
        feed = head + sched.finisher_feed()
        extra = 0
        for _ in range(self.finisher_tokens):
            feeds = [feed] + [[] for _ in range(W - 1)]
            logits = self.forward_rows(cache, cache.table.rows([len(f) for f in feeds]), feeds)
            assert logits is not None
            extra += 1
            transcript.append(cache.table.write_segment(0), feed, bool(head), worker=0)
            tok = int(torch.argmax(logits[0]))
            yield TokenEvent(tick + extra, 0, tok, self._decode([tok]))
            produced.append(tok)
            pending[0] = tok
            head = [tok]
            feed = [tok]
            answer = extract_boxed(self._decode(sched.finisher_feed() + produced))
            if answer is not None or tok in self.scheduler_config.eos_token_ids:
                return answer, extra
        return extract_boxed(self._decode(sched.finisher_feed() + produced)), extra

    def run(self, problem: str, on_event: Callable[[Event], None] | None = None) -> HogwildResult:
        """Run to completion, calling ``on_event`` for every event; return the result.

        Ctrl-C anywhere (inside the model or inside ``on_event``) raises :class:`GenerationInterrupted`,
        a ``KeyboardInterrupt`` carrying the partial result, which also stays in ``self.result``.
        """
        events = self.stream(problem)
        try:
            for event in events:
                if on_event is not None:
                    on_event(event)
        except KeyboardInterrupt:
            try:  # an interrupt in on_event: let the suspended run build its partial result
                events.throw(KeyboardInterrupt())
            except (KeyboardInterrupt, StopIteration):
                pass
            raise GenerationInterrupted(self.result) from None
        assert self.result is not None
        return self.result


# ---------------------------------------------------------------------- explicit tables (Spec §4.5)
def _explicit_table(table: SegmentTable | None, static_texts: dict[str, str] | None, workers: int,
                    layout: str) -> tuple[SegmentTable | None, str]:
    """Check ``Engine``'s ``table``/``static_texts`` arguments; return the table and the layout name."""
    if table is None:
        if static_texts:
            raise ValueError("static_texts needs an explicit table (for the presets the prompts module renders them)")
        return None, layout  # a preset name, checked by check_settings
    if not isinstance(table, SegmentTable):
        raise TypeError(f"table must be a SegmentTable (SegmentTable.from_dict for the JSON form); got {type(table).__name__}")
    if table.workers != workers:
        raise ValueError(f"the table has {table.workers} workers but workers={workers}; pass workers={table.workers}")
    if any(s.length for s in table.segments):
        raise ValueError("an explicit table for the engine must have all lengths 0 (the engine prefills it)")
    from .conformance.vectors import prompt_segment

    first = prompt_segment(table)  # raises when Spec §4.4 defines no prefill for the table
    unknown = sorted(set(static_texts or {}) - {s.id for s in table.segments if s.writer is None and s.id != first})
    if unknown:
        raise ValueError(f"static_texts names {unknown}, which are not static segments of the table other than {first!r}")
    return table, table.layout or "explicit"


def _explicit_static(engine: Engine, problem: str) -> tuple[SegmentTable, str, dict[str, list[int]]]:
    """The explicit table, its prompt segment and its static segments' token ids (Spec §4.4, §4.5)."""
    from .conformance.vectors import prompt_segment

    table = engine.table
    assert table is not None
    templates = engine.templates if table.history is not None else replace(engine.templates, history_header="")
    chat = engine.tokenizer.apply_chat_template if getattr(engine.tokenizer, "chat_template", None) else None
    first = prompt_segment(table)
    static = {first: engine._encode(prompts_mod.render_prompt(problem, engine.workers, chat, templates, names=engine.names))}
    for sid, text in engine.static_texts.items():
        static[sid] = engine._encode(text)
    return table, first, static


_UNSET: Any = object()


def generate(
    model: Any,
    tokenizer: Any,
    problem: str,
    workers: int = 2,
    layout: str = "combined",
    max_ticks: int | None = 256,
    *,
    backend: str = "fast",
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    seed: int = 0,
    snapshots: Sequence[int] = (),
    collab_every: int | None = 1024,
    templates: prompts_mod.PromptTemplates | None = None,
    finisher: bool = True,
    finisher_tokens: int = 24,
    on_event: Callable[[Event], None] | None = None,
    max_steps: Any = _UNSET,
    **engine_kwargs: Any,
) -> HogwildResult:
    """Hogwild generation of ``workers`` workers on ``problem``.

    ``max_ticks`` is the budget in ticks (batched forward passes, the paper's budget), not in
    reasoning steps; ``snapshots`` lists budgets at which to record the state (Spec §6.5). Every
    setting is checked before the model runs (Spec §11.7); the model is proven compatible once
    (Spec §11.6). ``max_steps`` is the deprecated name of ``max_ticks`` (removed in 0.3).
    Ctrl-C raises :class:`GenerationInterrupted` carrying the partial result.
    """
    if max_steps is not _UNSET:
        warnings.warn("generate(max_steps=...) is deprecated: the budget counts ticks, pass max_ticks=... "
                      "(max_steps will be removed in hogwild_ref 0.3)", DeprecationWarning, stacklevel=2)
        max_ticks = max_steps
    check_settings(problem=problem, workers=workers, layout=layout, backend=backend, backends=CACHE_BACKENDS,
                   max_ticks=max_ticks, snapshots=snapshots, finisher_tokens=finisher_tokens,
                   collab_every=collab_every, seed=seed, temperature=temperature, top_k=top_k, top_p=top_p,
                   min_p=min_p)
    templates = templates or prompts_mod.PromptTemplates()
    sched = SchedulerConfig.from_templates(
        templates,
        eos_token_ids=eos_token_ids(model, tokenizer),
        max_ticks=max_ticks,
        snapshot_ticks=tuple(snapshots),
        collab_every=collab_every,
    )
    engine = Engine(
        model,
        tokenizer,
        workers=workers,
        layout=layout,
        backend=backend,
        templates=templates,
        scheduler=sched,
        sampling=SamplingConfig(temperature, top_k, top_p, min_p),
        seed=seed,
        finisher=finisher,
        finisher_tokens=finisher_tokens,
        **engine_kwargs,
    )
    return engine.run(problem, on_event)
