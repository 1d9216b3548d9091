"""Several independent problems in one forward pass, with answers at several budgets (Spec §13.2, §13.3).

:class:`BatchRunner` runs ``P`` problems of ``W`` workers each as one batch of ``P x W`` rows per
tick. The problems share nothing but the forward pass: their segment tables are put side by side in
one *union table* whose segment ids are namespaced per problem (``p{b}/common``, ``p{b}/cur_0``, ...)
and whose writer of problem ``b``'s worker ``w`` is ``b*W + w`` (:func:`union_tables`). A row's view
names only its own problem's segments, so by the visibility rule (Spec §3.3) it never sees another
problem's keys; each problem flushes into its own history segment (:func:`flush_kv`). It drives the
engine's own :meth:`~hogwild_ref.engine.Engine.forward_rows` and
:class:`~hogwild_ref.cache.HogwildCache` (any backend), so a problem's run equals its
:meth:`Engine.run <hogwild_ref.engine.Engine.run>` (greedy tokens identical, logits within Spec §10).

Every run is also *snapshotted* at each requested budget: at the end of that tick the s1-style
finisher (Spec §6.6) is run from the snapshot's state, and the state is then restored, so the run
itself continues unchanged (Spec §13.2). The answer at budget ``B`` is therefore the answer of a
separate run with budget ``B``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch
from torch import Tensor

from .cache import HogwildCache, make_cache
from .engine import Engine
from .sampling import sample
from .scheduler import Scheduler, extract_boxed
from .segments import Row, Segment, SegmentTable

__all__ = ["BatchItem", "BatchRunner", "BudgetAnswer", "ItemResult", "copy_segments", "flush_kv", "union_tables"]


@dataclass(frozen=True)
class BatchItem:
    """One problem of a batch; worker ``w`` samples with a generator seeded ``seed + w`` (as :class:`Engine`)."""

    problem: str
    seed: int = 0


@dataclass(frozen=True)
class BudgetAnswer:
    """A run's answer at one budget (Spec §13.2).

    Attributes:
        budget: the requested budget in ticks.
        ticks: generation ticks done by then (fewer than ``budget`` when the run ended earlier).
        answer: the answer at that budget (the scheduler's, else the finisher's), or None.
        reason: ``"boxed"``, ``"eos"``, ``"budget"`` or ``"finisher"`` (as :class:`~hogwild_ref.engine.HogwildResult`).
        tokens: per worker, the number of tokens sampled by then (finisher tokens excluded).
        finisher_tokens: the tokens the finisher decoded for worker 0 (empty if it did not run).
        seconds: wall time from the start of the batch to the end of this budget's finisher.
    """

    budget: int
    ticks: int
    answer: str | None
    reason: str | None
    tokens: tuple[int, ...]
    finisher_tokens: tuple[int, ...]
    seconds: float


@dataclass
class ItemResult:
    """What one problem of a batch produced."""

    problem: str
    seed: int
    tokens: list[list[int]] = field(default_factory=list)  # per worker, every sampled token
    answer: str | None = None
    reason: str | None = None
    ticks: int = 0
    budgets: list[BudgetAnswer] = field(default_factory=list)
    logits: list[Tensor] | None = None  # per tick (W, V) float32, when record_logits
    error: str | None = None


def union_tables(tables: Sequence[SegmentTable]) -> tuple[SegmentTable, list[str | None]]:
    """Put independent segment tables side by side in one table (Spec §13.3).

    Segment ``s`` of table ``b`` becomes ``p{b}/s``; worker ``w`` of table ``b`` becomes worker
    ``sum(workers of tables before b) + w``. Returns the union (no history segment of its own: no
    segment opens every view) and, per table, the id of its history segment in the union (None for
    tables without one).
    """
    if not tables:
        raise ValueError("union_tables needs at least one table")
    segments: list[Segment] = []
    views: list[tuple[str, ...]] = []
    histories: list[str | None] = []
    base = 0
    for b, table in enumerate(tables):
        name = f"p{b}/".__add__
        segments += [Segment(name(s.id), s.length, None if s.writer is None else base + s.writer) for s in table.segments]
        views += [tuple(map(name, v)) for v in table.views]
        histories.append(None if table.history is None else name(table.history))
        base += table.workers
    layouts = {t.layout for t in tables}
    layout = f"union:{layouts.pop()}" if len(layouts) == 1 else "union"
    return SegmentTable(tuple(segments), tuple(views), history=None, layout=layout), histories


def flush_kv(cache: HogwildCache, w: int, history: str) -> None:
    """Flush worker ``w`` of a union table into its problem's ``history`` segment (Spec §5.1, §13.3):
    :meth:`HogwildCache.flush` with the history segment given explicitly."""
    cache.flush(w, history)


def copy_segments(src: HogwildCache, dst: HogwildCache, prefix: str) -> None:
    """Copy every non-empty segment ``s`` of ``src`` into segment ``prefix + s`` of ``dst`` (Spec §13.3).

    The stored K/V are segment-local (Spec §2.1), so a copy needs no rotation; ``dst``'s lengths
    are set to ``src``'s.
    """
    lengths = {}
    with torch.inference_mode():
        for seg in src.table.segments:
            if not seg.length:
                continue
            j, k = src.table.index(seg.id), dst.table.index(prefix + seg.id)
            for s_store, d_store in zip(src.stores, dst.stores, strict=True):
                d_store.write(k, 0, s_store.keys[j][:, : seg.length], s_store.values[j][:, : seg.length])
            lengths[prefix + seg.id] = seg.length
    dst.table = dst.table.with_lengths(lengths)


@dataclass
class _Problem:
    """Per-problem state of a batch."""

    index: int
    item: BatchItem
    sched: Scheduler
    gens: list[torch.Generator]
    views: list[tuple[str, ...]]  # per worker, its view in the union table
    history: str | None
    result: ItemResult
    feeds: list[list[int]]
    pending: list[int | None]
    active: bool = True


class BatchRunner:
    """Run problems in batches of rows, with the finisher's answer at every budget (Spec §13).

    Args:
        engine: an :class:`Engine` that carries the model, tokenizer and every setting (workers,
            layout, backend, templates, scheduler, sampling, finisher tokens, prefill chunk); its
            scheduler budget and snapshots are replaced by ``budgets``.
        budgets: budgets in ticks (``>= 1``); the runs go to the largest one.
        finisher: apply the finisher (Spec §6.6) at every budget where there is no answer yet.
        record_logits: keep each tick's last-slot logits per problem (for tests).
        extract: answer extraction from a text (default :func:`~hogwild_ref.scheduler.extract_boxed`,
            as the engine); applied as :meth:`Scheduler.answer` does: the history, then each
            worker's current text, then the finisher's text.
    """

    def __init__(self, engine: Engine, budgets: Sequence[int], *, finisher: bool = True, record_logits: bool = False,
                 extract: Callable[[str], str | None] = extract_boxed):
        budgets = sorted(set(int(b) for b in budgets))
        if not budgets or budgets[0] < 1:
            raise ValueError(f"budgets must be tick counts >= 1; got {list(budgets)}")
        self.engine = engine
        self.budgets = budgets
        self.finisher = finisher
        self.record_logits = record_logits
        self.extract = extract
        self.scheduler_config = replace(engine.scheduler_config, max_ticks=budgets[-1], snapshot_ticks=tuple(budgets))

    # ------------------------------------------------------------------ public
    def run(self, items: Sequence[BatchItem], on_tick: Callable[[int, int], None] | None = None) -> list[ItemResult]:
        """Run ``items`` as one batch; return one :class:`ItemResult` per item, in order.

        ``on_tick(tick, active)`` is called after every generation tick with the number of problems
        still running. An exception raised while handling one problem's tokens (decoding,
        scheduling, sampling) ends that problem with its ``error`` set; the others go on. An
        exception in the shared forward pass propagates (run the items one by one to isolate it).
        """
        if not items:
            return []
        eng = self.engine
        W = eng.workers
        t0 = time.perf_counter()
        # the engine's own prompt rendering and static segments, so a problem's run is its Engine.run
        built = [eng._table_and_static(it.problem) for it in items]
        union, histories = union_tables([t for t, _, _ in built])
        cache = make_cache(eng.model.config, union, eng.rope, eng.backend, eng.dtype, eng.device)
        self._prefill(cache, built)
        probs: list[_Problem] = []
        for b, (it, _built) in enumerate(zip(items, built)):
            sched = Scheduler(W, eng._decode, eng._encode, self.scheduler_config)
            probs.append(_Problem(
                index=b,
                item=it,
                sched=sched,
                gens=[torch.Generator(device="cpu").manual_seed(it.seed + w) for w in range(W)],
                views=list(union.views[b * W : (b + 1) * W]),
                history=histories[b],
                result=ItemResult(it.problem, it.seed, logits=[] if self.record_logits else None),
                feeds=sched.initial_feeds(),
                pending=[None] * W,
            ))
        tick = 0
        while any(p.active for p in probs):
            live = [p for p in probs if p.active]
            rows = [Row(p.views[w], len(p.feeds[w])) for p in live for w in range(W)]
            feeds = [p.feeds[w] for p in live for w in range(W)]
            logits = eng.forward_rows(cache, rows, feeds)
            assert logits is not None
            tick += 1
            finish_now: list[_Problem] = []
            for i, p in enumerate(live):
                try:
                    self._observe(cache, p, logits[i * W : (i + 1) * W], finish_now)
                except Exception as exc:  # noqa: BLE001 - recorded in the problem's result
                    p.result.error = f"{type(exc).__name__}: {exc}"
                    p.active = False
            if finish_now:
                self._snapshot_finishers(cache, finish_now, t0)
            for p in live:
                if p.active and p.sched.done:
                    try:
                        self._finish_item(p, p.sched.reason, t0)
                    except Exception as exc:  # noqa: BLE001 - recorded in the problem's result
                        p.result.error = f"{type(exc).__name__}: {exc}"
                        p.active = False
            if on_tick is not None:
                on_tick(tick, sum(p.active for p in probs))
        return [p.result for p in probs]

    # ------------------------------------------------------------------ steps
    def _prefill(self, cache: HogwildCache, built: list[tuple[SegmentTable, str, dict[str, list[int]]]]) -> None:
        """Spec §4.4 for every problem: :meth:`Engine.prefill` in the problem's own cache, then its
        K/V copied into the union (:func:`copy_segments`).

        One problem at a time: a prefill row scores its hundreds of query slots against every
        stored key of the batch, so batching prefill rows across problems costs ``P^2``, and a
        problem's prefill alone is exactly its :meth:`Engine.run`'s.
        """
        eng = self.engine
        for b, (table, first, static) in enumerate(built):
            own = make_cache(eng.model.config, table, eng.rope, eng.backend, eng.dtype, eng.device)
            eng.prefill(own, first, static)
            copy_segments(own, cache, f"p{b}/")

    def _observe(self, cache: HogwildCache, p: _Problem, logits: Tensor, finish_now: list[_Problem]) -> None:
        """Sample, let the scheduler decide, flush, and record a snapshot (as :meth:`Engine.stream`)."""
        eng = self.engine
        if p.result.logits is not None:
            p.result.logits.append(logits.detach().cpu())
        sampled: list[int | None] = [
            sample(logits[w], eng.sampling, p.gens[w]) if f else None for w, f in enumerate(p.feeds)
        ]
        p.pending = list(sampled)
        outcome = p.sched.observe(sampled)
        for w in outcome.flushes:
            assert p.history is not None
            flush_kv(cache, p.index * eng.workers + w, p.history)
        p.feeds = outcome.feeds
        p.result.ticks = p.sched.tick
        if outcome.snapshot is not None:
            finish_now.append(p)

    def _answer(self, p: _Problem) -> str | None:
        """:meth:`Scheduler.answer` with ``self.extract``: the history, else the lowest worker's current text."""
        found = self.extract(p.sched.history_text())
        for w in range(self.engine.workers):
            if found is not None:
                break
            found = self.extract(p.sched.current_text(w))
        return found

    def _needs_finisher(self, p: _Problem) -> bool:
        """Spec §6.6: only when the budget (not boxed/eos) ended generation and there is no answer."""
        return self.finisher and self._answer(p) is None and (not p.sched.done or p.sched.reason == "budget")

    def _snapshot_finishers(self, cache: HogwildCache, snap: list[_Problem], t0: float) -> None:
        """Answers at this tick's budget for ``snap`` (Spec §13.2): the finisher from the snapshot's
        state for those without an answer, then the state restored."""
        need = [p for p in snap if self._needs_finisher(p)]
        produced: dict[int, list[int]] = {p.index: [] for p in need}
        answers: dict[int, str | None] = {}
        if need:
            saved = cache.table  # the finisher appends to worker 0's write segments only
            try:
                answers = self._run_finishers(cache, need, produced)
            finally:
                cache.table = saved  # K/V written past the restored lengths are overwritten later
        now = time.perf_counter() - t0
        for p in snap:
            tick = p.sched.tick
            if p.index in answers:
                answer = answers[p.index]
                reason = "finisher" if answer is not None else "budget"
            else:
                answer = self._answer(p)
                reason = (p.sched.reason or "budget") if p.sched.done else "budget"
            p.result.budgets.append(BudgetAnswer(
                budget=tick,
                ticks=tick,
                answer=answer,
                reason=reason,
                tokens=tuple(len(p.sched.generated(w)) for w in range(self.engine.workers)),
                finisher_tokens=tuple(produced.get(p.index, ())),
                seconds=now,
            ))

    def _run_finishers(self, cache: HogwildCache, need: list[_Problem], produced: dict[int, list[int]]) -> dict[int, str | None]:
        """The finisher (Spec §6.6) for worker 0 of every problem in ``need``, batched; greedy."""
        eng = self.engine
        eos = self.scheduler_config.eos_token_ids
        fin = {p.index: p.sched.finisher_feed() for p in need}
        feeds: dict[int, list[int]] = {}
        for p in need:
            head = [p.pending[0]] if p.pending[0] is not None and p.pending[0] not in eos else []
            feeds[p.index] = head + fin[p.index]
        answers: dict[int, str | None] = {}
        live = list(need)
        for _ in range(eng.finisher_tokens):
            if not live:
                break
            rows = [Row(p.views[0], len(feeds[p.index])) for p in live]
            logits = eng.forward_rows(cache, rows, [feeds[p.index] for p in live])
            assert logits is not None
            still = []
            for i, p in enumerate(live):
                tok = int(torch.argmax(logits[i]))
                produced[p.index].append(tok)
                feeds[p.index] = [tok]
                answer = self.extract(eng._decode(fin[p.index] + produced[p.index]))
                answers[p.index] = answer
                if answer is None and tok not in eos:
                    still.append(p)
            live = still
        for p in need:
            answers.setdefault(p.index, None)
        return answers

    def _finish_item(self, p: _Problem, reason: str | None, t0: float) -> None:
        """The run of ``p`` is over: its final answer, and every budget it did not reach."""
        p.active = False
        r = p.result
        r.reason = reason
        r.answer = self._answer(p)
        r.ticks = p.sched.tick
        r.tokens = [p.sched.generated(w) for w in range(self.engine.workers)]
        done = {a.budget for a in r.budgets}
        now = time.perf_counter() - t0
        for B in self.budgets:
            if B in done:
                continue
            # the run ended at tick r.ticks < B: a run with budget B ends there too, without a finisher
            r.budgets.append(BudgetAnswer(
                budget=B,
                ticks=r.ticks,
                answer=r.answer,
                reason=reason,
                tokens=tuple(len(t) for t in r.tokens),
                finisher_tokens=(),
                seconds=now,
            ))
        r.budgets.sort(key=lambda a: a.budget)
        if r.budgets and r.budgets[-1].reason == "finisher":
            r.reason, r.answer = "finisher", r.budgets[-1].answer

