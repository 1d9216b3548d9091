"""Several independent problems in one forward pass, with answers at several budgets (Spec §13.2, §13.3).

:class:`BatchRunner` runs ``P`` problems of ``W`` workers each as one batch of ``P x W`` rows per
tick. The problems share nothing but the forward pass: their segment tables are put side by side in
one *union table* whose segment ids are namespaced per problem (``p{b}/common``, ``p{b}/cur_0``, ...)
and whose writer of problem ``b``'s worker ``w`` is ``b*W + w`` (:func:`union_tables`). A row's view
names only its own problem's segments, so by the visibility rule (Spec §3.3) it never sees another
problem's keys; each problem flushes into its own history segment. It drives the same run loop as
the engine (:class:`~hogwild_ref.run.RunLoop`: one forward of every live row, one sampling call,
each problem's scheduler), so a problem's run equals its :meth:`Engine.run <hogwild_ref.engine.Engine.run>`
(greedy tokens identical and logits within Spec §10, as Spec §13.3 requires; every problem's
generators live on the model's device, seeded as the engine seeds them, so sampled tokens agree too
wherever the batch's logits equal the run's bit for bit (on CPU they did in a review, 4 problems of
2 workers sampled at temperature 1) and may differ where they differ within the tolerance). With the fast backend the union falls into one
group per problem (Spec §9.6): one-token ticks and extend ticks (step changes, the finisher's first
tick) read each problem's own common window, and the prefills run per problem
(:class:`~hogwild_ref.ticks.GroupedTick`), so a batch costs ``P`` problems' attention, not ``P^2``.

Every run is also *snapshotted* at each requested budget: at the end of that tick the s1-style
finisher (Spec §6.6) is run from the snapshot's state, and the state is then restored, so the run
itself continues unchanged (Spec §13.2). The answer at budget ``B`` is therefore the answer of a
separate run with budget ``B``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from torch import Tensor

from .checks import check_ints, check_seed
from .engine import Engine
from .events import SnapshotEvent
from .hf import use_hogwild_attention
from .run import ProblemRun, RunLoop
from .scheduler import Scheduler, extract_boxed
from .segments import Segment, SegmentTable

__all__ = ["BatchItem", "BatchRunner", "BudgetAnswer", "ItemResult", "union_tables"]


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
        seconds: wall time from the start of the batch to this budget's answer: the end of its
            finisher, or of the run when it ended before the budget.
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
        budgets = sorted(set(check_ints("budgets", budgets)))  # 2.7 or "12" is refused, not truncated or split
        if not budgets or budgets[0] < 1:
            raise ValueError(f"budgets must be tick counts >= 1; got {list(budgets)}")
        self.engine = engine
        self.budgets = budgets
        self.finisher = finisher
        self.record_logits = record_logits
        self.extract = extract
        self.scheduler_config = replace(engine.scheduler_config, max_ticks=budgets[-1], snapshot_ticks=tuple(budgets))
        self._warned = False  # the context warning (Spec §11.7) was given

    # ------------------------------------------------------------------ public
    def run(self, items: Sequence[BatchItem], on_tick: Callable[[int, int], None] | None = None) -> list[ItemResult]:
        """Run ``items`` as one batch; return one :class:`ItemResult` per item, in order.

        ``on_tick(tick, active)`` is called after every generation tick with the number of problems
        still running. An exception raised while handling one problem's tokens (decoding,
        scheduling) ends that problem with its ``error`` set; the others go on. An exception in the
        shared forward pass or sampling propagates (run the items one by one to isolate it).
        """
        wrong = [items] if isinstance(items, (str, BatchItem)) else [it for it in items if not isinstance(it, BatchItem)]
        if wrong:
            raise TypeError("items must be a list of BatchItem (e.g. [BatchItem('What is 6 * 7?', seed=0)]); got "
                            f"{type(wrong[0]).__name__} {wrong[0]!r}")
        for it in items:  # the problems are checked as Engine.run checks them, by Engine.prepare (Spec §11.7)
            check_seed(it.seed, self.engine.workers, -(2**63))  # a torch generator takes -2^63 .. 2^64 - 1
        if not items:
            return []
        with use_hogwild_attention(self.engine.model):  # switched once for the batch, restored at the end
            return self._run(items, on_tick)

    def _run(self, items: Sequence[BatchItem], on_tick: Callable[[int, int], None] | None) -> list[ItemResult]:
        eng = self.engine
        W = eng.workers
        t0 = time.perf_counter()
        # the engine's own prompt rendering and static segments, so a problem's run is its Engine.run
        prepared = [eng.prepare(it.problem) for it in items]
        if not self._warned:  # once per runner, for the longest problem of its first batch that passes
            self._warned = eng.warn_context(prepared, self.scheduler_config.max_ticks) is not None
        union, histories = union_tables([p.table for p in prepared])
        caps = {f"p{b}/{sid}": c for b, prep in enumerate(prepared) for sid, c in eng.capacities(prep).items()}
        storage = eng.forward.storage(union, caps)
        if storage.groups is not None and eng.forward.backend == "fast":
            # Spec §4.4 for every problem side by side, each on its own segments (block-diagonal, Spec §9.6)
            eng.forward.prefill(storage, [f"p{b}/{prep.first}" for b, prep in enumerate(prepared)],
                                [{f"p{b}/{sid}": toks for sid, toks in prep.static.items()} for b, prep in enumerate(prepared)],
                                eng.settings.prefill_chunk, [prep.shared for prep in prepared])
        else:
            for b, prep in enumerate(prepared):
                # Spec §4.4 for every problem in its own storage, then copied into the union: with a general
                # backend a prefill row scores its query slots against every stored key of the batch (P^2)
                own = eng.forward.storage(prep.table)
                eng.forward.prefill(own, prep.first, prep.static, eng.settings.prefill_chunk, prep.shared)
                storage.copy_from(own, f"p{b}/")
        ids = [s.id for s in union.segments]
        runs: list[ProblemRun] = []
        for b, it in enumerate(items):
            sched = Scheduler(W, eng.decode, eng.encode, self.scheduler_config)
            runs.append(eng.new_run(sched, union.views[b * W : (b + 1) * W], histories[b], b * W, it.seed, ids,
                                    extract=self.extract, record_logits=self.record_logits, prefix=f"p{b}/"))
        results = [ItemResult(it.problem, it.seed) for it in items]
        loop = RunLoop(eng.forward, storage, eng.sampling, isolate_errors=True)
        del storage  # the loop holds it (and may replace it: RunLoop.compact)
        tick = 0
        over: set[int] = set()
        while any(r.active for r in runs):
            ticked = loop.tick(runs)
            tick += bool(ticked)
            snap = [r for r, events in ticked if any(isinstance(e, SnapshotEvent) for e in events)]
            if snap:
                self._snapshot_finishers(loop, snap, {id(r): res for r, res in zip(runs, results)}, t0)
            for r, res in zip(runs, results):
                if r.active or id(r) in over:
                    continue
                over.add(id(r))
                res.ticks = r.ticks
                if r.error is not None:  # recorded; the other problems go on
                    res.error = r.error
                else:
                    self._finish_item(r, res, t0)
            if on_tick is not None and ticked:
                on_tick(tick, sum(r.active for r in runs))
            loop.compact([r for r in runs if r.active])  # work and memory follow the live problems (Spec §13.3)
        for r, res in zip(runs, results):
            res.logits = r.logits
        return results

    # ------------------------------------------------------------------ budgets
    def _needs_finisher(self, r: ProblemRun) -> bool:
        """Spec §6.6: only when the budget (not boxed/eos) ended generation and there is no answer."""
        return self.finisher and r.answer() is None and (r.active or r.reason == "budget")

    def _snapshot_finishers(self, loop: RunLoop, snap: list[ProblemRun], results: dict[int, ItemResult], t0: float) -> None:
        """Answers at this tick's budget for ``snap`` (Spec §13.2): the finisher from the snapshot's
        state for those without an answer, then the state restored."""
        need = [r for r in snap if self._needs_finisher(r)]
        answers: dict[int, tuple[str | None, list[int]]] = {}
        if need:
            finisher = loop.finish(need, self.engine.settings.finisher_tokens, commit=False)
            while True:
                try:
                    next(finisher)
                except StopIteration as stop:
                    answers = stop.value
                    break
        now = time.perf_counter() - t0
        for r in snap:
            if id(r) in answers:
                answer, produced = answers[id(r)]
                reason = "finisher" if answer is not None else "budget"
            else:
                answer, produced = r.answer(), []
                reason = (r.reason or "budget") if not r.active else "budget"
            results[id(r)].budgets.append(BudgetAnswer(
                budget=r.ticks, ticks=r.ticks, answer=answer, reason=reason,
                tokens=tuple(len(r.sched.generated(w)) for w in range(r.workers)),
                finisher_tokens=tuple(produced), seconds=now,
            ))

    def _finish_item(self, r: ProblemRun, res: ItemResult, t0: float) -> None:
        """The run of ``r`` is over: its final answer, and every budget it did not reach."""
        res.reason = r.reason
        res.answer = r.answer()
        res.ticks = r.ticks
        res.tokens = [r.sched.generated(w) for w in range(r.workers)]
        done = {a.budget for a in res.budgets}
        now = time.perf_counter() - t0
        for B in self.budgets:
            if B in done:
                continue
            # the run ended at tick res.ticks < B: a run with budget B ends there too, without a finisher
            res.budgets.append(BudgetAnswer(
                budget=B, ticks=res.ticks, answer=res.answer, reason=r.reason,
                tokens=tuple(len(t) for t in res.tokens), finisher_tokens=(), seconds=now,
            ))
        res.budgets.sort(key=lambda a: a.budget)
        if res.budgets and res.budgets[-1].reason == "finisher":
            res.reason, res.answer = "finisher", res.budgets[-1].answer
