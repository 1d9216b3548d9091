"""What a run reports: streaming events and results (Spec §6, §13).

Pure data: no torch at run time (a result's recorded logits are tensors, typed only). The run loop
(:mod:`hogwild_ref.run`) emits the events; :class:`~hogwild_ref.engine.Engine` builds the results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .scheduler import Snapshot
from .segments import SegmentTable

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "DoneEvent",
    "Event",
    "FlushEvent",
    "GenerationInterrupted",
    "HogwildResult",
    "SnapshotEvent",
    "StepEvent",
    "TokenEvent",
    "TokenText",
    "WorkerResult",
]


# ---------------------------------------------------------------------- events
@dataclass(frozen=True)
class TokenEvent:
    """Worker ``worker`` sampled ``token`` at tick ``tick``. ``text`` is the worker's new text
    (:class:`TokenText`): a character spread over several tokens comes whole with the last of them,
    the tokens before it giving ``""``, so the texts of a worker's events join to its decoded tokens
    (the finisher's events, which follow worker 0's, start a text of their own).

    ``eos`` is True for a token that stops the worker (Spec §6.4): it is no part of the worker's text
    (:attr:`WorkerResult.text`), so a view of the texts leaves its piece (``<|im_end|>``) out."""

    tick: int
    worker: int
    token: int
    text: str
    eos: bool = False


class TokenText:
    """The text pieces of one worker's :class:`TokenEvent` s, read in context: a character that spans
    several tokens (a byte-level tokenizer's CJK or emoji) comes whole with the token that completes
    it, where decoding each token alone gave U+FFFD for each part; a token whose text depends on the
    one before it (a SentencePiece word start) is read after it. The pieces join to ``decode`` of all
    the tokens when these end on a whole character and the decoder reads each byte run alike wherever
    it is cut (byte-level BPE; a byte-fallback decoder may turn bytes already shown into U+FFFD once an
    invalid byte follows them). A character still incomplete when the stream ends is not given out.

    Each call decodes the tokens since the previous piece's start: a token or two, except during a run
    of bytes that form no character. ``decode`` is the engine's (Spec §7.4: special tokens kept)."""

    def __init__(self, decode: Callable[[Sequence[int]], str]):
        self.decode = decode
        self.tokens: list[int] = []
        self.start = 0  # the tokens before the last piece's, kept as its context
        self.read = 0  # the tokens whose text has been given out

    def piece(self, token: int) -> str:
        """The new text once ``token`` is appended ("" while a character is still incomplete)."""
        self.tokens.append(token)
        before = self.decode(self.tokens[self.start : self.read])
        text = self.decode(self.tokens[self.start :])
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""  # an incomplete character: held until the token that completes it
        self.start, self.read = self.read, len(self.tokens)
        return text[len(before) :]


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
    """Generation ended (``reason``: "boxed", "eos", "budget", "context" (no budget, and the model's
    positions reached, Spec §6.4) or "finisher"; a result built after
    Ctrl-C has reason "interrupted")."""

    tick: int
    reason: str | None
    answer: str | None


Event = TokenEvent | StepEvent | FlushEvent | SnapshotEvent | DoneEvent


# ---------------------------------------------------------------------- results
@dataclass
class WorkerResult:
    """One worker's output.

    ``tokens``: every id the worker sampled (worker 0: the finisher's too); ``view_tokens``: its
    linearised view when the run ended (its last query attended to it, except for the tokens of worker
    0's finisher, which ran after every other worker's last tick and shows in the views that hold
    worker 0's segment); ``generated_positions``: indices into ``view_tokens`` of tokens the
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
    problem: str = ""  # the problem as given (before the prompt templates)

    def to_json_dict(self) -> dict[str, Any]:
        """The ``--json`` object of the CLI."""
        return {
            "model": self.model,
            "problem": self.problem,
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


class EventCallbackError(RuntimeError):
    """An ``on_event`` callback raised during :meth:`Engine.run <hogwild_ref.engine.Engine.run>`: the run
    stops there and keeps its partial result, as for Ctrl-C (Spec §11.7).

    ``result`` holds what each worker wrote up to the last completed tick, ``reason == "interrupted"``
    (raised on the last event, :class:`DoneEvent`, the run is already complete: ``result`` is the
    whole result, with its own reason); the callback's own exception is ``__cause__``.
    """

    def __init__(self, result: HogwildResult | None, error: BaseException):
        super().__init__(f"the on_event callback raised {type(error).__name__}: {error}; the partial result is in "
                         ".result")
        self.result = result
