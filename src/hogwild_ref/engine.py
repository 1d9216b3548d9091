"""Hogwild generation of one problem: :class:`Engine` and :func:`generate` (Spec §3–§7, §11).

The engine renders the prompt and static segments (Spec §4.4, §7), proves the model once (Spec
§11.6), prefills, and drives one :class:`~hogwild_ref.run.ProblemRun` through the run loop
(:class:`~hogwild_ref.run.RunLoop`), yielding events as they happen (:meth:`Engine.stream`); the
batch runner (:mod:`hogwild_ref.batch`) drives P problems through the same loop.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable, Generator, Mapping, Sequence

import torch
import transformers

from . import prompts as prompts_mod
from .checks import ContextLengthWarning, SettingsError, check_problem, context_bound, warn_context
from .events import (DoneEvent, Event, EventCallbackError, FlushEvent, GenerationInterrupted, HogwildResult, SnapshotEvent,
                     StepEvent, TokenEvent, WorkerResult)
from .forward import Forward, WindowExceeded
from .hf import eos_token_ids, layer_devices, use_hogwild_attention
from .models import check_vocabulary
from .parallel import check_compile
from .proof import ensure_compatible
from .records import package_version
from .run import ProblemRun, RunLoop
from .sampling import SamplingConfig
from .scheduler import Scheduler, SchedulerConfig
from .segments import SegmentTable, TableError, make_layout, prompt_segment
from .settings import Settings

__all__ = [
    "DoneEvent",
    "Engine",
    "EventCallbackError",
    "FlushEvent",
    "GenerationInterrupted",
    "HogwildResult",
    "Prepared",
    "SnapshotEvent",
    "StepEvent",
    "TokenEvent",
    "WorkerResult",
    "eos_token_ids",
    "generate",
]

#: slots reserved at the start for a worker's segment (a longer one grows its storage, Spec §9.6)
STEP_CAPACITY = 64

#: the shortest template prefix worth a forward of its own (Spec §4.4, shared prefix)
SHARED_MIN = 32

#: two problem texts whose prompts agree exactly on the template's part (Spec §4.4, shared prefix)
_PROBES = ("Probe problem: 1 + 1.", "Zebras? 42")
#: stands for the problem when the prompt around it is rendered (:meth:`Engine._literal`)
_MARK = "\x00hogwild-problem\x00"


@dataclass(frozen=True)
class Prepared:
    """A problem ready to prefill (Spec §4.4): the table (lengths 0), its prompt segment and the token
    ids of every static segment."""

    table: SegmentTable
    first: str
    static: dict[str, list[int]]
    #: leading tokens of the prompt that are the template's, the same for every problem (Spec §4.4,
    #: shared prefix): prefilled once and reused; 0 when shorter than :data:`SHARED_MIN`
    shared: int = 0


def _check_settings(settings: Any) -> None:
    if settings is not None and not isinstance(settings, Settings):
        raise TypeError(f"settings must be a hogwild_ref.Settings (e.g. Settings(workers=2)); got {type(settings).__name__}")


def _check_model(model: Any) -> None:
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"model must be a transformers causal LM (e.g. model, tokenizer = hogwild_ref.load(...)); got "
                        f"{type(model).__name__}")


class Engine:
    """Hogwild generation with one model over one shared segment cache.

    A model runs one forward at a time: its modules are switched for the duration of each forward
    (the Hogwild attention, the packed linear layers), so run an engine, and any engines sharing its
    model, from one thread at a time (for parallel runs, use processes: ``torchrun``, Spec §13.6).

    Args:
        model: a transformers causal LM of a supported family (Spec §11.3).
        tokenizer: its tokenizer (a chat template is used when it has one).
        settings: the run's :class:`~hogwild_ref.settings.Settings` (workers, layout, backend, budget,
            sampling, seed, finisher, prefill chunk); keywords named like its fields override it.
            Without one, the engine has no budget (``max_ticks=None``: a run ends at a boxed answer,
            every worker's end of sequence or the model's positions), unlike ``Settings()`` and
            :func:`generate`, whose budget is 256 ticks: pass ``max_ticks=`` to bound it.
        templates: prompt texts (Spec §7).
        scheduler: scheduler settings (Spec §6), used as given (its budget and snapshots replace the
            settings'); its ``eos_token_ids``, when left unset (None), are the tokenizer's
            (:func:`~hogwild_ref.hf.eos_token_ids`), so they cannot be forgotten; ``frozenset()`` means none;
            default: from the templates and the settings.
        sampling: sampling settings (overrides the settings' temperature, top-k, top-p, min-p).
        record_logits: keep each tick's last-slot logits per worker (for tests).
        allow_untested: run a model family outside the tested ones once the compatibility proof on
            the model passes (Spec §11.3, §11.6); every model is proven before its first run.
        model_name: the name reported in the result (default: the config's name or path).
        compile: compile the one-token ticks (:class:`~hogwild_ref.forward.Forward`; None: on CUDA).
        pack_weights: packed CPU linear weights for one-token ticks (:class:`~hogwild_ref.forward.Forward`).
        table: explicit segments and views (Spec §4.5) instead of the ``layout`` preset; its lengths
            must be 0. The rendered prompt goes into its prompt segment (Spec §4.4); every other
            static segment's text comes from ``static_texts``.
        static_texts: with ``table``: the text of each static segment other than the prompt segment
            (missing ones stay empty).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        settings: Settings | None = None,
        *,
        templates: prompts_mod.PromptTemplates | None = None,
        scheduler: SchedulerConfig | None = None,
        sampling: SamplingConfig | None = None,
        record_logits: bool = False,
        allow_untested: bool = False,
        model_name: str | None = None,
        compile: bool | str | None = None,
        pack_weights: bool | None = None,
        table: SegmentTable | None = None,
        static_texts: dict[str, str] | None = None,
        **overrides: Any,
    ) -> None:
        unknown = sorted(set(overrides) - set(Settings.names()))
        if unknown:
            raise TypeError(f"Engine() got unexpected keyword(s) {unknown}; settings are {', '.join(Settings.names())}")
        if sampling is not None:
            overrides.update(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                             min_p=sampling.min_p)
        if scheduler is not None:  # the scheduler's budget is the run's (checked here, Spec §11.7)
            check_scheduler_agrees(scheduler, overrides)
            overrides.setdefault("max_ticks", scheduler.max_ticks)
            overrides.setdefault("snapshots", scheduler.snapshot_ticks)  # checked against that budget
        _check_settings(settings)
        if templates is not None and not isinstance(templates, prompts_mod.PromptTemplates):
            raise TypeError("templates must be a PromptTemplates object (e.g. PromptTemplates.compact()); got "
                            f"{templates.__name__ if isinstance(templates, type) else type(templates).__name__}")
        base = settings or Settings(max_ticks=None)
        self.settings = replace(base, **overrides) if overrides else base  # checked (Spec §11.7), before the model runs
        s = self.settings
        if table is not None and ("layout" in overrides or s.layout != Settings.layout):
            raise ValueError("Engine() got both a layout and an explicit table; the table's views are the layout "
                             "(Spec §4.5): pass one of them")
        _check_model(model)
        table, layout = _explicit_table(table, static_texts, s.workers, s.layout)
        self.table, self.static_texts = table, dict(static_texts or {})
        if tokenizer is not None:
            check_vocabulary(model, tokenizer)
        self.model, self.tokenizer = model, tokenizer
        check_compile(model, layer_devices(model), compile, pack_weights)  # before the proof runs the model (Spec §11.8)
        self.rope = ensure_compatible(model, allow_untested=allow_untested, backend=s.backend)  # Spec §11.6
        self.forward = Forward(model, self.rope, s.backend, compile=compile, pack_weights=pack_weights)
        self.workers, self.layout, self.backend = s.workers, layout, s.backend
        self.templates = templates or prompts_mod.PromptTemplates()
        if scheduler is None:
            scheduler = SchedulerConfig.from_templates(
                self.templates, eos_token_ids=eos_token_ids(model, tokenizer), max_ticks=s.max_ticks,
                snapshot_ticks=s.snapshots, collab_every=s.collab_every)
        if scheduler.eos_token_ids is None:
            scheduler = replace(scheduler, eos_token_ids=eos_token_ids(model, tokenizer))
        self.scheduler_config = replace(scheduler, steps=layout != "contiguous" if table is None else table.history is not None)
        self.names = self.scheduler_config.names or prompts_mod.default_names(s.workers)
        self.sampling = SamplingConfig(s.temperature, s.top_k, s.top_p, s.min_p)
        self.record_logits = record_logits
        self.model_name = model_name or getattr(model.config, "_name_or_path", "") or model.config.model_type
        self.result: HogwildResult | None = None
        self._partial: Callable[[str], HogwildResult] | None = None
        self._template_prefix: dict[prompts_mod.PromptTemplates, list[int]] = {}
        self._special_texts: frozenset[str] | None = None  # the tokenizer's special token texts, read once

    # ------------------------------------------------------------------ text and tables
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    def prepare(self, problem: str) -> Prepared:
        """The layout's table (lengths 0) and the token ids of its static segments (Spec §4.4, §4.5, §7),
        for a problem that :func:`~hogwild_ref.checks.check_problem` takes (Spec §11.7): every run, alone
        or batched, is prepared here."""
        check_problem(problem)
        templates = self.templates
        table = self.table if self.table is not None else make_layout(self.layout, self.workers)
        if table.history is None:  # no shared history, so no history header (Spec §4.1)
            templates = replace(templates, history_header="")
        chat = self.tokenizer.apply_chat_template if getattr(self.tokenizer, "chat_template", None) else None
        first = prompt_segment(table)

        def text_of(problem: str) -> str:
            return prompts_mod.render_prompt(problem, self.workers, chat, templates, names=self.names)

        def render(text: str) -> list[int]:
            return self.encode(text_of(text))

        prompt = render(problem) if not self._holds_special_text(problem) else self._literal(problem, text_of)
        if templates not in self._template_prefix:  # the tokens every problem's prompt starts with
            a, b = (render(p) for p in _PROBES)
            self._template_prefix[templates] = a[: next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))]
        template = self._template_prefix[templates]
        shared = next((i for i, (x, y) in enumerate(zip(prompt, template)) if x != y), min(len(prompt), len(template)))
        shared = min(shared, len(prompt) - 1)
        static = {first: prompt}
        if self.table is not None:  # explicit views: static texts come from the caller
            static.update({sid: self.encode(text) for sid, text in self.static_texts.items()})
        elif self.layout == "combined":
            static.update({sid: self.encode(text) for sid, text in prompts_mod.segment_texts(templates, self.workers).items()})
        return Prepared(table, first, static, shared if shared >= SHARED_MIN else 0)

    def _holds_special_text(self, problem: str) -> bool:
        """Whether ``problem`` contains the text of one of the tokenizer's special tokens (``<|im_end|>``)."""
        if self._special_texts is None:
            decoder = getattr(self.tokenizer, "added_tokens_decoder", None) or {}
            specials = {t.content for t in decoder.values() if getattr(t, "special", False) and t.content}
            specials |= {t for t in getattr(self.tokenizer, "all_special_tokens", []) if t}
            self._special_texts = frozenset(specials)
        return any(t in problem for t in self._special_texts)

    def _literal(self, problem: str, text_of: Callable[[str], str]) -> list[int]:
        """The prompt of a problem holding a special token's text (Spec §7.4, "A problem is text"): the
        rendered prompt before and after the problem encoded as usual, the problem with its special
        token texts as plain characters (``split_special_tokens``), so no problem can close the user's
        turn or open another."""
        whole, marked = text_of(problem), text_of(_MARK)
        before, _, after = marked.partition(_MARK)
        if marked.count(_MARK) != 1 or whole != before + problem + after:
            raise ValueError("the problem contains the text of a special token of the tokenizer (such as "
                             "<|im_end|>), and the chat template does not insert the problem as it is, so it "
                             "cannot be kept as plain text; remove the special token text from the problem")
        middle = self.tokenizer(problem, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return self.encode(before) + list(middle) + self.encode(after)

    def warn_context(self, prepared: Sequence[Prepared], max_ticks: int | None) -> str | None:
        """Warn (and return the message) when a run of the longest of ``prepared`` that spends ``max_ticks``
        would pass the model's ``max_position_embeddings`` (Spec §11.7, :func:`~hogwild_ref.checks.context_bound`)."""
        fin = self._finisher_tokens()
        bounds = [context_bound(sum(map(len, p.static.values())), self.workers, max_ticks, fin) for p in prepared]
        prompt = max(self._prompt_positions(p) for p in prepared)
        return warn_context(max((b for b in bounds if b is not None), default=None),
                            getattr(self.model.config, "max_position_embeddings", None), prompt=prompt)

    def _finisher_tokens(self) -> int:
        """The tokens the finisher may decode after the budget (Spec §6.6): none when it is off."""
        return self.settings.finisher_tokens if self.settings.finisher else 0

    def _prompt_positions(self, prepared: Prepared) -> int:
        """The prompt's tokens in the longest worker view (the static segments it holds)."""
        return max(sum(len(prepared.static[s]) for s in view if s in prepared.static) for view in prepared.table.views)

    def check_window(self, prepared: Prepared, max_ticks: int | None) -> None:
        """Refuse, before anything runs, a run that must pass the model's sliding window (Spec §11.3):
        its prompt alone (its longest view), or that and a spent budget
        (:func:`~hogwild_ref.checks.context_bound`, a lower estimate); a run that passes it later stops
        there with :class:`~hogwild_ref.forward.WindowExceeded`, its partial result attached."""
        window = self.forward.window
        if window is None:
            return
        prompt = self._prompt_positions(prepared)
        if prompt > window:
            raise WindowExceeded(f"the prompt alone is {prompt} tokens in a worker's view, beyond the model's sliding "
                                 f"window of {window}; hogwild_ref implements full attention only: shorten the "
                                 "problem, use fewer workers, or a model without sliding-window attention")
        fin = self._finisher_tokens()
        # a preset layout's views come to hold every worker's tokens (Spec §4); an explicit view its own at least
        writers = 1 if self.table is not None else self.workers
        bound = context_bound(prompt, writers, max_ticks, fin)
        if bound is not None and bound > window:
            room = max((window - prompt - fin) // writers, 0)
            if room == 0:
                raise WindowExceeded(f"the prompt ({prompt} tokens in a worker's view) and the finisher's {fin} tokens "
                                     f"leave no tick within the model's sliding window of {window}: shorten the problem, "
                                     "use fewer workers, or turn the finisher off")
            raise WindowExceeded(f"a run that spends max_ticks={max_ticks} reaches at least {bound} positions, beyond the "
                                 f"model's sliding window of {window}; hogwild_ref implements full attention only: give "
                                 f"max_ticks={room} or less, or use a model without sliding-window attention")

    def capacities(self, prepared: Prepared) -> dict[str, int]:
        """Slots to reserve per segment when a run starts (Spec §9.6): what the prompt and a first stretch
        of the run need, never the budget.

        Static segments: their length. The history: the prompt plus :data:`STEP_CAPACITY` tokens per
        worker (its first steps). A worker's segment (a current step, or a contiguous output):
        :data:`STEP_CAPACITY` tokens. A segment that fills grows geometrically (its capacity at least
        doubles, :meth:`~hogwild_ref.store.SegmentStore.reserve`): amortised O(1) copies per token, and
        O(log n) re-allocations (so at most that many recompiles of a compiled step) over a run.
        """
        table, static = prepared.table, prepared.static
        caps = {sid: len(ids) for sid, ids in static.items()}
        for seg in table.segments:
            if seg.writer is not None:
                caps[seg.id] = STEP_CAPACITY
        if table.history is not None:
            caps[table.history] = len(static.get(table.history, [])) + self.workers * STEP_CAPACITY
        return caps

    def positions(self, scheduler: Scheduler) -> int | None:
        """Without a budget, the positions a run may fill (Spec §6.4, ``context``): the model's
        ``max_position_embeddings``, less the finisher's room; None with a budget (it bounds the run)
        or a model without the bound."""
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if self.forward.window is not None:  # a sliding window bounds the positions full attention may fill
            limit = min(limit, self.forward.window) if isinstance(limit, int) else self.forward.window
        if self.scheduler_config.max_ticks is not None or not isinstance(limit, int):
            return None
        room = len(scheduler.finisher_feed()) + self.settings.finisher_tokens + 1 if self.settings.finisher else 0
        return max(limit - room, 1)

    def new_run(self, scheduler: Scheduler, views: Sequence[tuple[str, ...]], history: str | None, base: int,
                seed: int, segment_ids: Sequence[str], **kwargs: Any) -> ProblemRun:
        """A :class:`~hogwild_ref.run.ProblemRun` with this engine's text and device (generators where the logits come out, Spec §11.5)."""
        return ProblemRun(scheduler, views, history, base, seed, self.forward.output_device, self.decode, segment_ids,
                          **kwargs)

    def settings_dict(self) -> dict[str, Any]:
        """The run's settings as plain data (the ``settings`` of :meth:`HogwildResult.to_json_dict`): what a
        rerun needs, as the run used it. The scheduler's texts (step prefix, collaboration prompt,
        finisher) replace the templates' where a :class:`SchedulerConfig` was given; an explicit table
        (Spec §4.5) is recorded with its static texts; the weights' dtype and device, which change the
        tokens, are recorded too (the step boundary, a function, only by name)."""
        cfg = self.scheduler_config
        s = self.settings
        param = next(self.model.parameters())
        prompts = asdict(self.templates) | {"step_prefix": cfg.step_prefix, "collab_prompt": cfg.collab_prompt,
                                            "finisher": cfg.finisher}
        data = {
            "workers": self.workers,
            "names": list(self.names),
            "layout": self.layout,
            "backend": self.backend,
            "max_ticks": cfg.max_ticks,
            "seed": s.seed,
            "sampling": asdict(self.sampling),
            "collab_every": cfg.collab_every,
            "finisher": s.finisher,
            "finisher_tokens": s.finisher_tokens,
            "snapshot_ticks": list(cfg.snapshot_ticks),
            "prefill_chunk": s.prefill_chunk,
            "eos_token_ids": sorted(cfg.eos_token_ids or ()),
            "stop_on_boxed": cfg.stop_on_boxed,
            "boundary": getattr(cfg.boundary, "__qualname__", repr(cfg.boundary)),
            "dtype": str(param.dtype).removeprefix("torch."),
            "device": str(param.device),
            "prompts": prompts,
            "versions": {"hogwild_ref": package_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__},
        }
        if self.table is not None:
            data["table"] = self.table.to_dict()
            data["static_texts"] = dict(self.static_texts)
        return data

    # ------------------------------------------------------------------ the run
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
                self.result = self._partial("interrupted")
            raise
        except WindowExceeded as exc:  # what ran is kept, on the error and in self.result
            if self._partial is not None:
                self.result = exc.result = self._partial("window")
            raise
        finally:
            self._partial = None

    def _stream(self, problem: str) -> Generator[Event, None, None]:
        t0 = time.perf_counter()
        prep = self.prepare(problem)
        s = self.settings
        self.warn_context([prep], self.scheduler_config.max_ticks)
        self.check_window(prep, self.scheduler_config.max_ticks)
        storage = self.forward.storage(prep.table, self.capacities(prep))
        sched = Scheduler(self.workers, self.decode, self.encode, self.scheduler_config)
        run = self.new_run(sched, prep.table.views, prep.table.history, 0, s.seed, [seg.id for seg in prep.table.segments],
                           record_logits=self.record_logits, positions=self.positions(sched))
        loop = RunLoop(self.forward, storage, self.sampling)
        timing = {"prefill": 0.0}

        def build(reason: str | None, answer: str | None) -> HogwildResult:
            """The result from the state after the last completed tick (also the partial one, Ctrl-C)."""
            workers = []
            for w in range(self.workers):
                view_tokens, generated_positions = run.transcript.view(storage.table.views[w])
                workers.append(WorkerResult(
                    name=self.names[w],
                    text=self.decode(run.transcript.written[w] + run.last_token(w)),
                    tokens=sched.generated(w) + (run.finisher_tokens if w == 0 else []),
                    view_tokens=view_tokens,
                    generated_positions=generated_positions,
                ))
            return HogwildResult(
                model=self.model_name, layout=self.layout, backend=self.backend, workers=workers,
                history_text=sched.history_text(), answer=answer, reason=reason,
                ticks=run.ticks + len(run.finisher_tokens), seconds=time.perf_counter() - t0,
                prefill_seconds=timing["prefill"], snapshots=list(run.snapshots), table=storage.table,
                logits=run.logits, settings=self.settings_dict(), problem=problem,
            )

        self._partial = lambda reason: build(reason, run.answer())
        self.forward.prefill(storage, prep.first, prep.static, s.prefill_chunk, prep.shared)
        for sid, ids in prep.static.items():
            run.transcript.append(sid, ids)
        timing["prefill"] = time.perf_counter() - t0
        while run.active:
            for _, sampled, logits in loop.sample([run]):
                yield from run.token_events(sampled)
                # the tick is complete: commit it (a Ctrl-C before this line reports the previous tick)
                yield from loop.commit(run, sampled, logits)
        answer, reason = run.answer(), run.reason
        if reason == "context" and run.ticks == 0:  # (said, rather than an empty result without a word)
            warnings.warn(f"no tick fit: the prompt ({run.longest_view()} tokens in a worker's view) and the first tick's "
                          f"feeds pass the {run.positions} positions the model leaves once the finisher's room is kept "
                          "(Spec §6.4); shorten the problem, use fewer workers, or turn the finisher off",
                          ContextLengthWarning, stacklevel=3)
        # at the model's positions the finisher has the room kept for it, unless the prompt took it (Spec §6.4)
        room = reason == "budget" or reason == "context" and run.positions is not None and run.longest_view() <= run.positions
        if answer is None and room and s.finisher:
            finisher = loop.finish([run], s.finisher_tokens, commit=True)
            while True:
                try:
                    _, event = next(finisher)
                except StopIteration as stop:
                    answer = stop.value[id(run)][0]
                    break
                yield event
            if answer is not None:
                reason = "finisher"
        self.result = build(reason, answer)
        self._partial = None
        yield DoneEvent(self.result.ticks, reason, answer)

    @staticmethod
    def _stop(events: Generator[Event, None, None]) -> None:
        """Let a suspended run build its partial result (it is stopped as by Ctrl-C)."""
        try:
            events.throw(KeyboardInterrupt())
        except (KeyboardInterrupt, StopIteration):
            pass

    def run(self, problem: str, on_event: Callable[[Event], None] | None = None) -> HogwildResult:
        """Run to completion, calling ``on_event`` for every event; return the result.

        Ctrl-C anywhere (inside the model or inside ``on_event``) raises :class:`GenerationInterrupted`,
        a ``KeyboardInterrupt`` carrying the partial result, which also stays in ``self.result``. An
        exception raised by ``on_event`` stops the run the same way and raises
        :class:`~hogwild_ref.events.EventCallbackError` carrying the partial result (the callback's
        exception is its ``__cause__``).
        """
        if on_event is not None and not callable(on_event):
            raise TypeError(f"on_event must be a function called with each event, or None; got {type(on_event).__name__}")
        events = self.stream(problem)
        try:
            for event in events:
                if on_event is None:
                    continue
                try:
                    on_event(event)
                except Exception as exc:  # the callback failed (not the run): stop there, keeping the partial result
                    self._stop(events)
                    raise EventCallbackError(self.result, exc) from exc
        except KeyboardInterrupt:
            self._stop(events)
            raise GenerationInterrupted(self.result) from None
        assert self.result is not None
        return self.result


# ---------------------------------------------------------------------- explicit tables (Spec §4.5)
def _explicit_table(table: SegmentTable | None, static_texts: dict[str, str] | None, workers: int,
                    layout: str) -> tuple[SegmentTable | None, str]:
    """Check ``Engine``'s ``table``/``static_texts`` arguments; return the table and the layout name."""
    if static_texts is not None and (not isinstance(static_texts, Mapping)
                                     or not all(isinstance(k, str) for k in static_texts)):
        raise TypeError("static_texts must be a dict of segment id -> text, e.g. {'note': 'Be brief.'}; got "
                        f"{static_texts!r}"[:300])
    wrong = next(((k, v) for k, v in (static_texts or {}).items() if not isinstance(v, str)), None)
    if wrong is not None:
        sid, value = wrong
        raise TypeError(f"static_texts[{sid!r}] must be the segment's text (a str); got {type(value).__name__} {value!r}"[:300])
    if table is None:
        if static_texts:
            raise ValueError("static_texts needs an explicit table (for the presets the prompts module renders them)")
        return None, layout  # a preset name, checked by Settings
    if not isinstance(table, SegmentTable):
        raise TypeError(f"table must be a SegmentTable (SegmentTable.from_dict for the JSON form); got {type(table).__name__}")
    if table.workers != workers:
        raise ValueError(f"the table has {table.workers} workers but workers={workers}; pass workers={table.workers}")
    if any(s.length for s in table.segments):
        raise ValueError("an explicit table for the engine must have all lengths 0 (the engine prefills it)")
    try:
        first = prompt_segment(table)
    except TableError as exc:
        raise ValueError(str(exc)) from None
    unknown = sorted(set(static_texts or {}) - {s.id for s in table.segments if s.writer is None and s.id != first})
    if unknown:
        raise ValueError(f"static_texts names {unknown}, which are not static segments of the table other than {first!r}")
    return table, table.layout or "explicit"


_UNSET: Any = object()


def generate(
    model: Any,
    tokenizer: Any,
    problem: str,
    workers: int = _UNSET,
    layout: str = _UNSET,
    max_ticks: int | None = _UNSET,
    *,
    settings: Settings | None = None,
    templates: prompts_mod.PromptTemplates | None = None,
    on_event: Callable[[Event], None] | None = None,
    max_steps: Any = _UNSET,
    **kwargs: Any,
) -> HogwildResult:
    """Hogwild generation of ``workers`` workers on ``problem``.

    ``max_ticks`` is the budget in ticks (batched forward passes, the paper's budget), not in
    reasoning steps. Every other setting is a keyword named like a field of
    :class:`~hogwild_ref.settings.Settings` (``backend``, ``temperature``, ``seed``, ``snapshots``, ...),
    or a whole ``settings`` object, which the keywords given (``workers``, ``layout`` and ``max_ticks``
    included) override; unset, they are the defaults of :class:`~hogwild_ref.settings.Settings`
    (2 workers, the combined layout, 256 ticks). The rest go to :class:`Engine`. Every setting is checked before the
    model runs (Spec §11.7); the model is proven compatible once (Spec §11.6). ``max_steps`` is the
    deprecated name of ``max_ticks`` (removed in 0.3). Ctrl-C raises :class:`GenerationInterrupted`
    carrying the partial result.
    """
    if max_steps is not _UNSET and max_ticks is not _UNSET:
        raise TypeError("generate() got both max_steps and max_ticks; pass max_ticks only (max_steps is its deprecated name)")
    if kwargs.get("table") is not None and layout is not _UNSET:
        raise ValueError("generate() got both a layout and an explicit table; the table's views are the layout "
                         "(Spec §4.5): pass one of them")
    if max_steps is not _UNSET:
        warnings.warn("generate(max_steps=...) is deprecated: the budget counts ticks, pass max_ticks=... "
                      "(max_steps will be removed in hogwild_ref 0.3)", DeprecationWarning, stacklevel=2)
        max_ticks = max_steps
    check_problem(problem)
    names = {f.name for f in fields(Settings)}
    given: dict[str, Any] = {"workers": workers, "layout": layout, "max_ticks": max_ticks}
    chosen = {k: v for k, v in given.items() if v is not _UNSET} | {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    _check_settings(settings)
    if settings is None:
        settings = Settings(**chosen)
    elif chosen:
        settings = replace(settings, **chosen)
    if tokenizer is None:  # after the settings' checks (Spec §11.7), before the model runs
        raise TypeError("generate() needs the model's tokenizer (e.g. model, tokenizer = hogwild_ref.load(...))")
    if kwargs.get("scheduler") is not None:
        check_scheduler_agrees(kwargs["scheduler"], chosen)
    engine = Engine(model, tokenizer, settings, templates=templates, **kwargs)
    return engine.run(problem, on_event)


def check_scheduler_agrees(scheduler: SchedulerConfig, given: dict[str, Any]) -> None:
    """A :class:`SchedulerConfig` is used as given (its budget, snapshots and collaboration interval are
    the run's, Spec §6): the same settings also given as keywords must agree with it, or one of the two
    would be dropped silently."""
    for name, field_name in (("max_ticks", "max_ticks"), ("snapshots", "snapshot_ticks"), ("collab_every", "collab_every")):
        if name not in given:
            continue
        mine, theirs = given[name], getattr(scheduler, field_name)
        if name == "snapshots":
            mine, theirs = sorted(set(mine or ())), sorted(set(theirs))
        if mine != theirs:
            raise SettingsError(f"{name}={given[name]!r} and the scheduler's {field_name}={getattr(scheduler, field_name)!r} "
                                f"disagree; the scheduler is used as given: set {field_name} in it (or give no scheduler)")
