"""Worker scheduler: steps, flushes, collaboration prompts, stops, budgets (Spec §6).

Pure Python: no torch, no transformers. The scheduler sees token ids (ints) and text only
through two callables the caller passes in, ``decode(ids) -> str`` and
``encode(text) -> ids`` (the latter without special tokens).

One *tick* is one batched forward. Before the first tick the caller feeds
:meth:`Scheduler.initial_feeds`; after every tick it calls :meth:`Scheduler.observe` with
the token each worker sampled, flushes the returned workers' write segments into the
history (in the order given), and feeds the returned ``feeds`` at the next tick.

Token bookkeeping (Spec §6.2). A worker's *current step* is the list of tokens assigned to
its write segment: every token already fed plus the feed returned by the latest call (which
the caller feeds at the next tick). Hence, for every worker, the concatenation of all feeds
ever returned equals the concatenation of its flushed steps followed by its current step.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from hogwild_ref import prompts
from hogwild_ref.checks import is_int

__all__ = [
    "FinishedStep",
    "Scheduler",
    "SchedulerConfig",
    "Snapshot",
    "StopReason",
    "TickOutcome",
    "extract_boxed",
    "is_step_boundary",
]

StopReason = Literal["boxed", "eos", "budget"]

_BOXED = "\\boxed{"
#: what structures a box: a box's opening, an escaped brace (content), a brace
_BRACES = re.compile(r"\\boxed\{|\\[{}]|[{}]")


def is_step_boundary(text: str, *, punctuation: str = ".!?") -> bool:
    """Whether ``text`` (a step's generated text so far) ends a step (Spec §6.1).

    True iff all of:

    * ``text`` ends with ``"\\n\\n"`` (a longer run of trailing newlines also ends with it);
    * the last non-whitespace character before that is in ``punctuation``;
    * ``text`` is not inside an open code fence (an odd number of ``"```"``) nor inside
      open display math (an odd number of ``"$$"``).

    The rule is on text, not tokens: a tokenizer may emit ``"\\n\\n"`` as one token or as
    ``"\\n", "\\n"``; both end a step.
    """
    if not text.endswith("\n\n"):
        return False
    body = text.rstrip()
    if not body or body[-1] not in punctuation:
        return False
    if text.count("```") % 2:
        return False
    if text.count("$$") % 2:
        return False
    return True


def _boxed_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every complete ``\\boxed{...}`` content, in order of start (Spec §6.4).

    One pass from the first box over the braces alone, with a stack of the open ones (each marked
    with the content start of the box it opens, or None): linear in the text, also when boxes are
    left open. A brace after an odd number of backslashes is escaped (content); after an even number
    it is structure, the backslashes being line breaks ``\\\\`` (so ``\\boxed{a\\\\}`` closes).
    """
    first = text.find(_BOXED)
    if first == -1:
        return []
    spans = []
    stack: list[int | None] = []
    for m in _BRACES.finditer(text, first):
        token = m.group()
        if len(token) == 2 and _backslashes_before(text, m.start()) % 2:
            token = token[1]  # \\{ or \\}: a line break, then a brace that is structure
        if token == _BOXED:
            stack.append(m.end())
        elif token == "{":
            stack.append(None)
        elif token == "}" and stack:
            start = stack.pop()
            if start is not None:
                spans.append((start, m.end() - 1))  # the brace itself (one on, after a line break)
        # else an escaped brace \{ or \}: content, not structure
    spans.sort()
    return spans


def _backslashes_before(text: str, i: int) -> int:
    """How many backslashes run up to position ``i`` (exclusive) of ``text``."""
    j = i
    while j > 0 and text[j - 1] == "\\":
        j -= 1
    return i - j


def extract_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` in ``text``, or None (Spec §6.4).

    Braces nest (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``); escaped braces ``\\{``
    and ``\\}`` (an odd run of backslashes before the brace) are content, while the brace after a
    line break ``\\\\`` closes. An unclosed ``\\boxed{`` is not an answer, nor is a blank one
    (``\\boxed{}``, ``\\boxed{ }``). "Last" means the complete, non-blank box that starts last.
    """
    for a, b in reversed(_boxed_spans(text)):
        if text[a:b].strip():  # a blank box (an instruction echoed: "in \\boxed{}") is no answer
            return text[a:b]
    return None


@dataclass(frozen=True)
class SchedulerConfig:
    """Scheduler settings (Spec §6). Replace fields with :func:`dataclasses.replace`.

    Attributes:
        names: worker names; None gives :func:`prompts.default_names` (Spec §7).
        step_prefix: step header, ``{name}`` and the 1-based step index ``{k}`` substituted
            by :func:`prompts.fill` (Spec §6.2).
        collab_prompt: text appended after the step prefix when due; None disables
            (Spec §6.3). Used literally.
        collab_every: the collaboration prompt is inserted at the first step start after at
            least this many tokens sampled by that worker since its last collaboration
            prompt (or since the start); None disables (Spec §6.3).
        boundary: step-boundary predicate on the step's generated text (Spec §6.1).
        eos_token_ids: tokens that stop a worker (Spec §6.4). None (the default): the tokenizer's,
            filled in by the engine (a :class:`Scheduler` built directly treats None as none);
            ``frozenset()``: no token stops a worker.
        stop_on_boxed: stop when a finished step holds a complete ``\\boxed{...}``
            (Spec §6.4). In the contiguous layout (``steps=False``), where nothing is ever
            flushed, the rule applies to each worker's generated text instead.
        max_ticks: budget in ticks (forward passes); None for no budget (Spec §6.5).
        snapshot_ticks: tick counts at which to record a :class:`Snapshot` (Spec §6.5).
        steps: False for the contiguous layout: no boundaries, no flushes, the prefix only
            once (Spec §6.2).
        finisher: s1-style finisher text, used literally (Spec §6.6).
    """

    names: tuple[str, ...] | None = None
    step_prefix: str = prompts.DEFAULT_STEP_PREFIX
    collab_prompt: str | None = prompts.DEFAULT_COLLAB_PROMPT
    collab_every: int | None = 1024
    boundary: Callable[[str], bool] = is_step_boundary
    eos_token_ids: frozenset[int] | None = None
    stop_on_boxed: bool = True
    max_ticks: int | None = None
    snapshot_ticks: tuple[int, ...] = ()
    steps: bool = True
    finisher: str = prompts.DEFAULT_FINISHER

    def __post_init__(self) -> None:
        if self.names is not None:
            if isinstance(self.names, str):
                raise TypeError("names must be a sequence of names, not one string")
            object.__setattr__(self, "names", tuple(self.names))
        for name in ("steps", "stop_on_boxed"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("max_ticks", "collab_every"):
            value = getattr(self, name)
            if value is not None:
                if not is_int(value):
                    raise TypeError(f"{name} must be an int or None, got {type(value).__name__} {value!r}")
                object.__setattr__(self, name, operator.index(value))  # (a numpy integer as an int)
        if self.eos_token_ids is not None:
            given: object = self.eos_token_ids
            if isinstance(given, (int, str, bytes)) or not isinstance(given, Iterable):
                raise TypeError(f"eos_token_ids must be a set of token ids (e.g. frozenset({{2}})) or None, got {given!r}")
            ids = tuple(given)  # (once: an iterator is read here only)
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise TypeError(f"eos_token_ids must be a set of token ids (e.g. frozenset({{2}})) or None, got {ids!r}")
            object.__setattr__(self, "eos_token_ids", frozenset(ids))
        object.__setattr__(self, "snapshot_ticks", tuple(self.snapshot_ticks))
        if self.collab_every is not None and self.collab_every <= 0:
            raise ValueError(
                f"collab_every must be a positive number of tokens, got {self.collab_every}; "
                "use collab_every=None to disable the collaboration prompt"
            )
        if self.max_ticks is not None and self.max_ticks < 0:
            raise ValueError(
                f"max_ticks must be >= 0, got {self.max_ticks}; use max_ticks=None for no budget"
            )
        bad = [t for t in self.snapshot_ticks if not isinstance(t, int) or isinstance(t, bool) or t < 1]
        if bad:
            raise ValueError(
                f"snapshot_ticks must be tick counts >= 1, got {bad}; the first tick is 1"
            )
        if not callable(self.boundary):
            raise TypeError("boundary must be a callable taking the step text and returning bool")

    @classmethod
    def from_templates(
        cls, templates: prompts.PromptTemplates, **kwargs: object
    ) -> SchedulerConfig:
        """A config taking step prefix, collab prompt and finisher from ``templates`` (Spec §7)."""
        kwargs.setdefault("step_prefix", templates.step_prefix)
        kwargs.setdefault("collab_prompt", templates.collab_prompt)
        kwargs.setdefault("finisher", templates.finisher)
        return cls(**kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class FinishedStep:
    """A finished step (Spec §6.2): worker, 1-based index, tokens without the closing token."""

    worker: int
    index: int
    token_ids: tuple[int, ...]
    text: str


@dataclass(frozen=True)
class Snapshot:
    """State recorded when the tick count reaches a requested budget (Spec §6.5).

    Attributes:
        tick: the tick count.
        history_text: decoded shared history (all flushed steps, this tick's included).
        current_texts: per worker, decoded current step (including the pending feed).
        answer: :func:`extract_boxed` of the history, or None.
    """

    tick: int
    history_text: str
    current_texts: tuple[str, ...]
    answer: str | None


@dataclass(frozen=True)
class TickOutcome:
    """What :meth:`Scheduler.observe` decided for one tick (Spec §6.2, §6.4, §6.5).

    Attributes:
        feeds: per worker, the ids to feed at the next tick (``[]`` for a stopped worker).
        flushes: workers whose step finished at this tick, in flush order; flush their write
            segments into history in this order before the next tick.
        finished_steps: the finished steps, same order as ``flushes``.
        stopped: workers that stopped (sampled an EOS token) at this tick.
        done: generation is over; do not call :meth:`Scheduler.observe` again.
        reason: why it is over: ``"boxed"``, ``"eos"`` (every worker stopped) or
            ``"budget"``; None while not done.
        snapshot: the snapshot recorded at this tick, if this tick count was requested.
    """

    feeds: list[list[int]]
    flushes: list[int]
    finished_steps: list[FinishedStep]
    stopped: list[int]
    done: bool
    reason: StopReason | None
    snapshot: Snapshot | None


@dataclass
class _Worker:
    name: str
    index: int = 1  # 1-based step index k
    tokens: list[int] = field(default_factory=list)  # current step: fed + pending
    gen_start: int = 0  # tokens[gen_start:] were generated in this step (boundary text)
    since_collab: int = 0  # tokens sampled since the last collab prompt
    generated: list[int] = field(default_factory=list)
    stopped: bool = False


class Scheduler:
    """Decides, tick by tick, what each worker feeds, when steps end and when to stop (Spec §6).

    Args:
        workers: number of workers W (>= 1).
        decode: ``decode(ids) -> str``.
        encode: ``encode(text) -> ids``, without special tokens.
        config: settings.

    Semantics of one :meth:`observe` (Spec §6.2): a sampled token is appended to the
    worker's current step and the step's generated text (the tokens after the step prefix
    and collaboration prompt, the sampled one included) is tested with
    ``config.boundary``. When it fires, the sampled token is the *closing token*: it has not
    been through the model. The finished step is the step's tokens fed so far (prefix
    included, closing token excluded); it is flushed, and the next feed is
    ``[closing token] + encode(prefix of step k+1)`` (+ ``encode(collab_prompt)`` when due),
    which starts the new step. Otherwise the next feed is ``[sampled token]``.
    """

    def __init__(
        self,
        workers: int,
        decode: Callable[[list[int]], str],
        encode: Callable[[str], list[int]],
        config: SchedulerConfig = SchedulerConfig(),
    ) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool):
            raise TypeError(f"workers must be an int, got {type(workers).__name__}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}; pass the number of workers")
        if not callable(decode) or not callable(encode):
            raise TypeError(
                "decode and encode must be callables: decode(ids) -> str, encode(text) -> ids"
            )
        if not isinstance(config, SchedulerConfig):
            raise TypeError(f"config must be a SchedulerConfig, got {type(config).__name__}")
        names = config.names if config.names is not None else prompts.default_names(workers)
        if len(names) < workers:
            raise ValueError(
                f"config.names has {len(names)} names for {workers} workers; give at least "
                f"{workers} names, or names=None for the defaults"
            )
        self.workers = workers
        self.config = config
        #: the tokens that stop a worker (Spec §6.4): the config's, none when it leaves them unset
        self.eos: frozenset[int] = config.eos_token_ids or frozenset()
        self.names: tuple[str, ...] = tuple(names[:workers])
        self._decode = decode
        self._encode = encode
        self._collab_ids = (
            list(encode(config.collab_prompt))
            if config.collab_prompt is not None and config.collab_every is not None
            else []
        )
        self._snapshot_ticks = frozenset(config.snapshot_ticks)
        self.tick = 0
        self.history: list[FinishedStep] = []
        self._history_ids: list[int] = []
        self.snapshots: list[Snapshot] = []
        self.done = config.max_ticks == 0
        self.reason: StopReason | None = "budget" if self.done else None
        self._w = [_Worker(name=n) for n in self.names]
        for st in self._w:
            st.tokens = self._prefix_ids(st.name, 1)
            st.gen_start = len(st.tokens)

    # -- helpers -----------------------------------------------------------------------------

    def _prefix_ids(self, name: str, k: int) -> list[int]:
        return list(self._encode(prompts.fill(self.config.step_prefix, name=name, k=k)))

    def _check_worker(self, w: int) -> _Worker:
        if not 0 <= w < self.workers:
            raise IndexError(f"worker {w} out of range; there are {self.workers} workers")
        return self._w[w]

    def _parse(self, sampled: Sequence[int | None]) -> list[int | None]:
        if isinstance(sampled, (str, bytes, Mapping)) or not isinstance(sampled, Iterable):
            raise TypeError("sampled must be a sequence with one token id (or None) per worker")
        sampled = list(sampled)
        if len(sampled) != self.workers:
            raise ValueError(
                f"sampled has {len(sampled)} entries but there are {self.workers} workers; "
                "pass one token id per worker (None for a stopped worker)"
            )
        out: list[int | None] = []
        for w, (tok, st) in enumerate(zip(sampled, self._w)):
            if tok is None:
                if not st.stopped:
                    raise ValueError(
                        f"worker {w} ({st.name}) is active and was fed at this tick, so it must "
                        "have sampled a token; None is only for stopped workers"
                    )
                out.append(None)
                continue
            try:
                tok = operator.index(tok)
            except TypeError:
                raise TypeError(
                    f"sampled[{w}] must be an int token id or None, got {type(tok).__name__}"
                ) from None
            if tok < 0:
                raise ValueError(f"sampled[{w}] = {tok} is not a valid token id (negative)")
            if st.stopped:
                raise ValueError(
                    f"worker {w} ({st.name}) stopped earlier and was fed nothing, but sampled[{w}]"
                    f" = {tok}; pass None for stopped workers"
                )
            out.append(tok)
        return out

    # -- public API --------------------------------------------------------------------------

    def initial_feeds(self) -> list[list[int]]:
        """Per worker, the ids to feed at the first tick: the prefix of step 1 (Spec §6.2)."""
        return [list(self._prefix_ids(st.name, 1)) for st in self._w]

    def observe(self, sampled: Sequence[int | None]) -> TickOutcome:
        """Record the tokens sampled at this tick and decide the next one (Spec §6.2–§6.5).

        Args:
            sampled: per worker, the sampled token id, or None for a stopped worker.

        Raises:
            RuntimeError: if generation is already over.
            ValueError, TypeError: if ``sampled`` has the wrong length, holds a token for a
                stopped worker, or None for an active one.
        """
        if self.done:
            raise RuntimeError(
                f"generation is over (reason: {self.reason}); do not call observe() again — "
                "use finisher_feed() / answer()"
            )
        toks = self._parse(sampled)
        cfg = self.config
        self.tick += 1
        feeds: list[list[int]] = [[] for _ in range(self.workers)]
        finished: list[FinishedStep] = []
        stopped: list[int] = []
        boxed = False
        for w, (tok, st) in enumerate(zip(toks, self._w)):
            if tok is None:
                continue
            st.generated.append(tok)
            if tok in self.eos:
                st.stopped = True
                stopped.append(w)
                continue
            st.since_collab += 1
            if not cfg.steps:
                st.tokens.append(tok)
                feeds[w] = [tok]
                if cfg.stop_on_boxed and "}" in self._decode([tok]):
                    text = self._decode(st.tokens[st.gen_start :])
                    boxed = boxed or extract_boxed(text) is not None
                continue
            gen_text = self._decode(st.tokens[st.gen_start :] + [tok])
            if not cfg.boundary(gen_text):
                st.tokens.append(tok)
                feeds[w] = [tok]
                continue
            # Step change: tok is the closing token; it has not been through the model.
            step_ids = tuple(st.tokens)
            step = FinishedStep(w, st.index, step_ids, self._decode(list(step_ids)))
            finished.append(step)
            if cfg.stop_on_boxed and extract_boxed(step.text) is not None:
                boxed = True
            st.index += 1
            new = [tok, *self._prefix_ids(st.name, st.index)]
            if cfg.collab_every is not None and st.since_collab >= cfg.collab_every:
                new += self._collab_ids
                st.since_collab = 0
            st.tokens = new
            st.gen_start = len(new)
            feeds[w] = list(new)
        # Flush order: completion order; within one tick, ascending worker index.
        for step in finished:
            self.history.append(step)
            self._history_ids.extend(step.token_ids)
        reason: StopReason | None = None
        if boxed:
            reason = "boxed"
        elif all(st.stopped for st in self._w):
            reason = "eos"
        elif cfg.max_ticks is not None and self.tick >= cfg.max_ticks:
            reason = "budget"
        self.done = reason is not None
        self.reason = reason
        snapshot = self.snapshot() if self.tick in self._snapshot_ticks else None
        if snapshot is not None:
            self.snapshots.append(snapshot)
        return TickOutcome(
            feeds=feeds,
            flushes=[s.worker for s in finished],
            finished_steps=finished,
            stopped=stopped,
            done=self.done,
            reason=reason,
            snapshot=snapshot,
        )

    def snapshot(self) -> Snapshot:
        """The current state as a :class:`Snapshot` (Spec §6.5)."""
        history_text = self.history_text()
        return Snapshot(
            tick=self.tick,
            history_text=history_text,
            current_texts=tuple(self.current_text(w) for w in range(self.workers)),
            answer=extract_boxed(history_text),
        )

    def current_tokens(self, w: int) -> list[int]:
        """Tokens of worker ``w``'s current step, prefix included (Spec §6.2).

        These are the tokens fed so far plus the pending feed returned by the latest call;
        after the next tick they are exactly the contents of ``w``'s write segment.
        """
        return list(self._check_worker(w).tokens)

    def current_text(self, w: int) -> str:
        """Decoded :meth:`current_tokens` of worker ``w``."""
        return self._decode(self.current_tokens(w))

    def generated(self, w: int) -> list[int]:
        """Every token sampled by worker ``w``, in order (closing and EOS tokens included)."""
        return list(self._check_worker(w).generated)

    def step_index(self, w: int) -> int:
        """The 1-based index of worker ``w``'s current step (Spec §6.2)."""
        return self._check_worker(w).index

    def is_stopped(self, w: int) -> bool:
        """Whether worker ``w`` sampled an EOS token (Spec §6.4)."""
        return self._check_worker(w).stopped

    def history_text(self) -> str:
        """The decoded text of every flushed step, in flush order."""
        return self._decode(list(self._history_ids))

    def answer(self) -> str | None:
        """The final answer (Spec §6.4): content of the last complete ``\\boxed{...}`` in the
        history; else in the current text of the lowest-indexed worker that has one; else None.
        """
        found = extract_boxed(self.history_text())
        if found is not None:
            return found
        for w in range(self.workers):
            found = extract_boxed(self.current_text(w))
            if found is not None:
                return found
        return None

    def finisher_feed(self) -> list[int]:
        """``encode(config.finisher)``: the s1-style finisher (Spec §6.6).

        The engine appends it to a worker's pending feed once the budget is spent
        (``reason == "budget"``) and decodes until the open ``\\boxed{`` closes; apply
        :func:`extract_boxed` to the finisher text plus the continuation.
        """
        return list(self._encode(self.config.finisher))
