"""The tick loop: model + HogwildCache + scheduler + sampling, with streaming events (Spec §3–§6, §11).

One tick is one batched forward of all workers (Spec §3.1). Before the first tick the static
segments are prefilled (Spec §4.4). After each tick the scheduler decides the next feeds and which
finished steps to flush (Spec §6.2); flushes happen in its order before the next tick (Spec §5.2).

Public entry points: :func:`generate` (returns a :class:`HogwildResult`) and :class:`Engine`
(:meth:`Engine.stream` yields events as they happen).
"""

from __future__ import annotations

import inspect
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Generator, Iterator, Sequence

import torch
from torch import Tensor

from . import prompts as prompts_mod
from .attention import BACKENDS
from .cache import ATTN_IMPLEMENTATION, HogwildCache, make_cache
from .checks import check_int, check_problem, check_settings, context_bound, warn_context
from .masks import plan_tick
from .compat import ensure_compatible
from .models import check_vocabulary, sliding_window
from .sampling import SamplingConfig, sample
from .scheduler import Scheduler, SchedulerConfig, Snapshot, extract_boxed
from .segments import LAYOUTS, Row, SegmentTable, make_layout

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


def _cache_keyword(model: Any) -> str:
    """transformers 5.24 renamed ``past_key_values`` to ``cache``; support both."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# ---------------------------------------------------------------------- engine
class Engine:
    """Hogwild generation with one model over one shared segment cache.

    Args:
        model: a transformers causal LM of a supported family (Spec §11.3).
        tokenizer: its tokenizer (a chat template is used when it has one).
        workers: number of workers ``W >= 1``.
        layout: ``"contiguous"``, ``"interleaved"`` or ``"combined"`` (Spec §4).
        backend: ``"rotate_queries"`` (default), ``"rotate_keys"`` or ``"oracle"`` (the slow engine
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
        backend: str = "rotate_queries",
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
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        check_int("prefill_chunk", prefill_chunk, 1)
        check_settings(workers=workers, layout=layout, backend=backend, backends=tuple(BACKENDS), max_ticks=None,
                       finisher_tokens=finisher_tokens, seed=seed)  # Spec §11.7, before the model runs
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
        if tokenizer is not None:
            check_vocabulary(model, tokenizer)
        self.model, self.tokenizer = model, tokenizer
        self.rope = ensure_compatible(model, allow_untested=allow_untested, backend=backend)  # Spec §11.6
        self.workers, self.layout, self.backend = workers, layout, backend
        self.templates = templates or prompts_mod.PromptTemplates()
        base = scheduler or SchedulerConfig.from_templates(self.templates, eos_token_ids=eos_token_ids(model, tokenizer))
        self.scheduler_config = replace(base, steps=layout != "contiguous")
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
        reference conformance adapter. Switches the model to the ``"hogwild"`` attention only for
        the duration of the call (the model is left as it was between ticks). Returns the
        last real slot's logits per row ``(R, V)`` (float32, on the CPU), or None when ``logits`` is False.
        """
        plan = plan_tick(cache.table, rows, self.rope, self.device)
        if self.window is not None:
            longest = plan.max_position + 1
            if longest > self.window:
                raise ValueError(
                    f"the context reached {longest} tokens, beyond the model's sliding window of {self.window}; "
                    "hogwild_ref implements full attention only: use a smaller budget or a model without "
                    "sliding-window attention"
                )
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
        return out.logits[torch.arange(plan.num_rows, device=out.logits.device), last.to(out.logits.device)].float().cpu()

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
    def stream(self, problem: str) -> Generator[Event, None, None]:
        """Run Hogwild generation on ``problem``, yielding events; the result lands in ``self.result``.

        Ctrl-C (``KeyboardInterrupt``, raised inside the run or thrown into it at an event) leaves the
        partial result in ``self.result`` — every worker's text up to the last completed tick and the
        history, ``reason == "interrupted"`` — and propagates.
        """
        self.result, self._partial = None, None
        try:
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
        cache = make_cache(self.model.config, table, self.rope, self.backend, self.dtype, self.device)
        sched = Scheduler(W, self._decode, self._encode, self.scheduler_config)
        gens = [torch.Generator(device="cpu").manual_seed(self.seed + w) for w in range(W)]
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
            sampled: list[int | None] = []
            for w, f in enumerate(feeds):
                if f:
                    tok = sample(logits[w], self.sampling, gens[w])
                    sampled.append(tok)
                    yield TokenEvent(tick + 1, w, tok, self._decode([tok]))
                else:
                    sampled.append(None)
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


_UNSET: Any = object()


def generate(
    model: Any,
    tokenizer: Any,
    problem: str,
    workers: int = 2,
    layout: str = "combined",
    max_ticks: int | None = 256,
    *,
    backend: str = "rotate_queries",
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
    check_settings(problem=problem, workers=workers, layout=layout, backend=backend, backends=tuple(BACKENDS),
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
