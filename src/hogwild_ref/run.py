"""The run loop: one problem or P problems, through the same code (Spec §3–§6, §13.3).

A :class:`ProblemRun` holds one problem's state: its scheduler, next feeds, transcript, sampling
generators (on the model's device, seeded ``seed + w``), pending tokens, snapshots and the answer
rule. :class:`RunLoop` drives any number of them over one storage, one tick at a time:

    plan → write → attend (one forward of every live row, :class:`~hogwild_ref.forward.Forward`)
    → sample (every live row in one call on the device) → schedule (each problem's scheduler)
    → flush (each finished step into its problem's history, in the scheduler's order, Spec §5.2)

:class:`~hogwild_ref.engine.Engine` drives one problem and yields the events; the batch runner
(:mod:`hogwild_ref.batch`) drives P problems side by side in one union table (Spec §13.3).
:meth:`RunLoop.finish` is the s1-style finisher (Spec §6.6) for any set of problems, committed (the
end of an engine run) or from a snapshot that is then restored (the batch runner's budgets, Spec §13.2).
"""

from __future__ import annotations

from collections import abc
from dataclasses import replace
from collections.abc import Callable, Iterable, Sequence
from typing import cast

import torch
from torch import Generator, Tensor

from .events import Event, FlushEvent, SnapshotEvent, StepEvent, TokenEvent, TokenText
from .forward import Forward
from .sampling import SamplingConfig, sample_rows
from .scheduler import Scheduler, Snapshot, extract_boxed
from .segments import Row, Segment, SegmentTable
from .storage import Storage

__all__ = ["ProblemRun", "RunLoop", "Transcript"]


class Transcript:
    """Token ids of every segment (mirroring the storage), which of them were sampled, and what each
    worker fed: the source of a result's texts and linearised views."""

    def __init__(self, segment_ids: Iterable[str], workers: int):
        ids = list(segment_ids)
        self.ids: dict[str, list[int]] = {s: [] for s in ids}
        self.sampled: dict[str, list[bool]] = {s: [] for s in ids}
        self.written: list[list[int]] = [[] for _ in range(workers)]

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


class ProblemRun:
    """One problem's state in the run loop (Spec §6).

    Args:
        scheduler: the problem's scheduler (Spec §6).
        views: each worker's view in the storage's table (a union table names its segments ``p{b}/...``).
        history: the problem's history segment in that table (None: no steps, contiguous layout).
        base: the storage's worker index of this problem's worker 0 (``b * W`` in a union table;
            renumbered when :meth:`RunLoop.compact` moves the problem into a smaller storage).
        seed: worker ``w`` samples with a generator seeded ``seed + w`` on ``device`` (the model's device).
        decode: token ids -> text.
        segment_ids: the segments the transcript mirrors.
        extract: the answer rule's extraction (default :func:`~hogwild_ref.scheduler.extract_boxed`).
        record_logits: keep each tick's last-slot logits ``(W, V)`` (float32, on the CPU).
        prefix: what this problem's segment ids start with in a union table (``p{b}/``, Spec §13.3);
            empty when the storage holds this problem alone.
        positions: the most positions a worker's view may reach (Spec §6.4, ``context``): a tick that
            would pass them is not run, and the run ends with reason ``"context"``. None: no bound.
    """

    def __init__(self, scheduler: Scheduler, views: Sequence[tuple[str, ...]], history: str | None, base: int,
                 seed: int, device: torch.device, decode: Callable[[Sequence[int]], str], segment_ids: Iterable[str],
                 *, extract: Callable[[str], str | None] = extract_boxed, record_logits: bool = False,
                 prefix: str = "", positions: int | None = None):
        self.sched = scheduler
        self.workers = len(views)
        self.views = [tuple(v) for v in views]
        self.history, self.base, self.prefix, self.positions = history, base, prefix, positions
        self.decode, self.extract = decode, extract
        self.generators = [Generator(device=device).manual_seed(seed + w) for w in range(self.workers)]
        self.feeds: list[list[int]] = scheduler.initial_feeds()
        self.pending: list[int | None] = [None] * self.workers
        self.transcript = Transcript(segment_ids, self.workers)
        self.snapshots: list[Snapshot] = []
        self.logits: list[Tensor] | None = [] if record_logits else None
        self.finisher_tokens: list[int] = []  # what the committed finisher decoded for worker 0
        #: each worker's token texts read in context (a character over several tokens comes whole)
        self.texts = [TokenText(decode) for _ in range(self.workers)]
        self.ticks = 0  # generation ticks committed (the finisher's not counted)
        self.reason: str | None = None
        self.active = True
        self.error: str | None = None

    # ------------------------------------------------------------------ per tick
    def rows(self) -> list[Row]:
        """This problem's rows of the next tick (one per worker, Spec §3.1)."""
        return [Row(view, len(f)) for view, f in zip(self.views, self.feeds, strict=True)]

    def check_end(self) -> bool:
        """Before a tick: end the run when the scheduler is done (a budget of 0, Spec §6.5), no worker
        feeds anything, or the tick would pass :attr:`positions` (Spec §6.4); True when it ended."""
        if self.sched.done:
            self.reason = self.sched.reason
        elif not any(self.feeds):
            self.reason = self.reason or "eos"
        elif self.positions is not None and self.longest_view() + sum(map(len, self.feeds)) > self.positions:
            # (a view may hold every worker's segment, each growing by its writer's feed this tick)
            self.reason = "context"
        else:
            return False
        self.active = False
        return True

    def longest_view(self) -> int:
        """Tokens in the longest worker view: the positions its next token starts at (Spec §6.4, ``context``)."""
        return max(sum(len(self.transcript.ids[sid]) for sid in view) for view in self.views)

    def token_events(self, sampled: list[int | None]) -> list[Event]:
        """The coming tick's sampled tokens as events (before :meth:`commit`: a Ctrl-C while they are
        handled reports the previous tick)."""
        return [TokenEvent(self.ticks + 1, w, tok, self.texts[w].piece(tok), tok in self.sched.eos)
                for w, tok in enumerate(sampled) if tok is not None]

    def commit(self, storage: Storage, sampled: list[int | None], logits: Tensor) -> list[Event]:
        """The tick is complete: record it, let the scheduler decide, flush in its order (Spec §5.2, §6.2).
        Returns the step, flush and snapshot events."""
        events: list[Event] = []
        self.ticks += 1
        if self.logits is not None:
            self.logits.append(logits.detach().float().cpu())
        for w, f in enumerate(self.feeds):
            first_sampled = bool(f) and self.pending[w] is not None and f[0] == self.pending[w]
            self.transcript.append(self.views[w][-1], f, first_sampled, worker=w)
        self.pending = list(sampled)
        outcome = self.sched.observe(sampled)
        events += [StepEvent(self.ticks, s.worker, s.index, s.text) for s in outcome.finished_steps]
        for w in outcome.flushes:
            assert self.history is not None
            own = self.views[w][-1]
            storage.flush(self.base + w, None if self.history == storage.table.history else self.history)
            self.transcript.flush(own, self.history)
            events.append(FlushEvent(self.ticks, w, storage.table.length(self.history)))
        if outcome.snapshot is not None:
            self.snapshots.append(outcome.snapshot)
            events.append(SnapshotEvent(self.ticks, outcome.snapshot))
        self.feeds = outcome.feeds
        if outcome.done:
            self.reason = outcome.reason
            self.active = False
        return events

    # ------------------------------------------------------------------ answers
    def answer(self) -> str | None:
        """The answer rule (Spec §6.4): the history's, else the current text of the lowest worker that has one."""
        found = self.extract(self.sched.history_text())
        for w in range(self.workers):
            if found is not None:
                break
            found = self.extract(self.sched.current_text(w))
        return found

    def last_token(self, w: int) -> list[int]:
        """Worker ``w``'s sampled token not yet fed (not an EOS), as a feed prefix."""
        p = self.pending[w]
        return [p] if p is not None and p not in self.sched.eos else []


class RunLoop:
    """Drives :class:`ProblemRun` objects over one storage, one tick at a time (Spec §3.1).

    Args:
        forward: the forward step.
        storage: the K/V of every run's table (one table, or a union of several, Spec §13.3).
        sampling: sampling settings, shared by every row.
        isolate_errors: an exception while one run commits (decoding, scheduling) ends that run with
            its ``error`` set and the others go on (P problems); else it propagates (one problem).
    """

    def __init__(self, forward: Forward, storage: Storage, sampling: SamplingConfig, *, isolate_errors: bool = False):
        self.forward, self.storage, self.sampling = forward, storage, sampling
        self.isolate_errors = isolate_errors

    def sample(self, runs: Sequence[ProblemRun]) -> list[tuple[ProblemRun, list[int | None], Tensor]]:
        """The forward and sampling half of a tick for every active run (those whose
        :meth:`ProblemRun.check_end` lets them go on): one forward of all their rows, one sampling call
        on the device for all rows. Returns ``(run, sampled, logits)`` per run, not yet committed."""
        live = [r for r in runs if r.active and not r.check_end()]
        if not live:
            return []
        rows = [row for r in live for row in r.rows()]
        feeds = [f for r in live for f in r.feeds]
        logits = self.forward(self.storage, rows, feeds)
        assert logits is not None
        gens = [g for r in live for g in r.generators]
        sampled = self.forward.share(sample_rows(logits, [bool(f) for f in feeds], self.sampling, gens))
        out, start = [], 0
        for r in live:
            out.append((r, sampled[start : start + r.workers], logits[start : start + r.workers]))
            start += r.workers
        return out

    def commit(self, run: ProblemRun, sampled: list[int | None], logits: Tensor) -> list[Event]:
        """The schedule and flush half of a tick for one run (:meth:`ProblemRun.commit`); with
        ``isolate_errors``, an exception ends that run with its ``error`` set and no events."""
        if not self.isolate_errors:
            return run.commit(self.storage, sampled, logits)
        try:
            return run.commit(self.storage, sampled, logits)
        except Exception as exc:  # noqa: BLE001 - recorded in the run
            run.error = f"{type(exc).__name__}: {exc}"
            run.active = False
            return []

    def compact(self, live: Sequence[ProblemRun]) -> bool:
        """When the runs ``live`` (problems of a union table, Spec §13.3) hold at most half of the
        storage's worker rows, go on with them in a storage of their own; True when moved.

        A one-token tick computes every worker row of its storage, so without this the rows of
        problems that have ended (or whose finisher has closed) are computed until the last problem
        ends (Spec §13.3, note on problems that end early). Their segments are copied as they are
        (ids and lengths kept; stored K/V are segment-local, Spec §2.1), their workers renumbered in
        order (each run's ``base``), and the old storage is dropped from the loop. No row sees
        another problem's keys (Spec §3.3), so no run changes.
        """
        old = self.storage
        rows = sum(r.workers for r in live)
        if not live or any(not r.prefix for r in live) or 2 * rows > old.table.workers:
            return False
        segments: list[Segment] = []
        views: list[tuple[str, ...]] = []
        bases, base = [], 0
        for r in live:
            mine = [s for s in old.table.segments if s.id.startswith(r.prefix)]
            segments += [replace(s, writer=None if s.writer is None else s.writer - r.base + base) for s in mine]
            views += r.views
            bases.append(base)
            base += r.workers
        table = SegmentTable(tuple(segments), tuple(views), history=None, layout=old.table.layout)
        caps = {s.id: old.stores[0].capacities[old.table.index(s.id)] for s in segments}
        new = self.forward.storage(table, caps)
        for s in segments:
            if s.length:
                new.copy_segment(old, s.id, s.id)
        for r, b in zip(live, bases):
            r.base = b
        self.storage = new
        return True

    def tick(self, runs: Sequence[ProblemRun]) -> list[tuple[ProblemRun, list[Event]]]:
        """One whole tick of every active run: :meth:`sample`, then :meth:`commit` of each run."""
        return [(r, r.token_events(sampled) + self.commit(r, sampled, logits)) for r, sampled, logits in self.sample(runs)]

    def finish(self, runs: Sequence[ProblemRun], tokens: int, *, commit: bool
               ) -> abc.Generator[tuple[ProblemRun, TokenEvent], None, dict[int, tuple[str | None, list[int]]]]:
        """The s1-style finisher (Spec §6.6) for worker 0 of every run in ``runs``, batched, greedy.

        Worker 0 is fed its last token and the finisher text, then decodes until the answer closes,
        an EOS, or ``tokens`` tokens. ``commit``: the tokens stay (transcript, ``finisher_tokens``,
        events); else the storage's table is restored afterwards (K/V written past the restored
        lengths are overwritten later), and so are the loop's storage and every run's ``base`` when
        the finisher went on in a smaller storage once others closed (:meth:`compact`). Returns
        ``{id(run): (answer, tokens)}``.
        """
        fin = {id(r): r.sched.finisher_feed() for r in runs}
        feeds = {id(r): r.last_token(0) + fin[id(r)] for r in runs}
        first_sampled = {id(r): bool(r.last_token(0)) for r in runs}
        produced: dict[int, list[int]] = {id(r): [] for r in runs}
        answers: dict[int, str | None] = {id(r): None for r in runs}
        saved, home, bases = self.storage.table, self.storage, [r.base for r in runs]
        live = list(runs)
        texts = {id(r): TokenText(r.decode) for r in runs} if commit else {}  # the finisher's own text
        try:
            for step in range(tokens):
                if not live:
                    break
                rows = [Row(r.views[0], len(feeds[id(r)])) for r in live]
                logits = self.forward(self.storage, rows, [feeds[id(r)] for r in live])
                assert logits is not None
                ids = cast(list[int], self.forward.share(logits.argmax(dim=-1).tolist()))  # argmax: never None
                still = []
                for r, tok in zip(live, ids, strict=True):
                    key = id(r)
                    if commit:
                        r.transcript.append(r.views[0][-1], feeds[key], first_sampled[key], worker=0)
                        r.finisher_tokens.append(tok)
                        r.pending[0] = tok
                        yield r, TokenEvent(r.ticks + step + 1, 0, tok, texts[key].piece(tok), tok in r.sched.eos)
                    produced[key].append(tok)
                    feeds[key], first_sampled[key] = [tok], True
                    answers[key] = r.extract(r.decode(fin[key] + produced[key]))
                    if answers[key] is None and tok not in r.sched.eos:
                        still.append(r)
                if not commit and len(still) < len(live):
                    self.compact(still)  # the finishers that closed leave the rows computed (Spec §13.3)
                live = still
        finally:
            if not commit:  # the snapshot's own storage and table again (Spec §13.2)
                self.storage = home
                for r, b in zip(runs, bases):
                    r.base = b
                self.storage.table = saved
        return {key: (answers[key], produced[key]) for key in answers}
