"""Batching independent problems (Spec §13.3) and answers at snapshots (Spec §13.2), against the engine.

The oracle is :meth:`Engine.run` on one problem at a time (itself checked against the engine oracle
in ``test_engine.py``): a batch of problems must give every problem exactly its own run (greedy
tokens identical, logits within Spec §10), and the finisher's answer at a snapshot must be the
answer of a separate run whose budget is that snapshot.
"""

from __future__ import annotations

import pytest
import torch

from hogwild_ref.batch import BatchItem, BatchRunner, union_tables
from hogwild_ref.engine import Engine
from hogwild_ref.models import tiny_model
from hogwild_ref.scheduler import SchedulerConfig
from hogwild_ref.segments import TableError, flush_into, make_layout

#: Spec §12.5 (the `model` level's tolerance): whole-model float32 logits, max abs error relative to the largest |logit|.
LOGIT_RTOL = 1e-4

PROBLEMS = ["What is 12 + 30? Think step by step.", "Add 3 and 4.", "Count the letters in 'hogwild'."]


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _watch_ticks(forward, see):
    """Call ``see(storage, tick)`` on every tick ``forward`` plans; returns its own planner."""
    plan = forward.tick

    def watched(storage, rows):
        tick = plan(storage, rows)
        see(storage, tick)
        return tick

    forward.tick = watched
    return plan


def chunk_boundary(text: str) -> bool:
    """A step boundary that fires often on any text (random models never write '.\\n\\n')."""
    return len(text) >= 12


def _engine(model, tok, *, workers, layout, ticks, finisher, eos=frozenset(), seed=0, backend="rotate_queries"):
    sched = SchedulerConfig(max_ticks=ticks, boundary=chunk_boundary, collab_every=5, eos_token_ids=eos,
                            stop_on_boxed=False)
    return Engine(model, tok, workers=workers, layout=layout, backend=backend, scheduler=sched, seed=seed,
                  record_logits=True, finisher=finisher, finisher_tokens=5)


# ---------------------------------------------------------------------- pure helpers
def test_union_namespaces_segments_and_writers():
    a, b = make_layout("combined", 2), make_layout("interleaved", 3)
    union, histories = union_tables([a, b])
    assert union.workers == 5
    assert histories == ["p0/common", "p1/common"]
    assert union.views[0] == tuple(f"p0/{s}" for s in a.views[0])
    assert union.views[4] == ("p1/common", "p1/cur_2")
    assert union.write_segment(3) == "p1/cur_1" and union["p1/cur_1"].writer == 3
    # a view names only its own problem's segments
    for w, view in enumerate(union.views):
        prefix = "p0/" if w < 2 else "p1/"
        assert all(sid.startswith(prefix) for sid in view)
    assert union_tables([make_layout("contiguous", 2)])[1] == [None]


def test_flush_into_moves_the_step_into_the_given_history():
    union, _ = union_tables([make_layout("interleaved", 2), make_layout("interleaved", 2)])
    union = union.with_lengths({"p0/common": 10, "p1/common": 7, "p1/cur_1": 4, "p0/cur_1": 2})
    out = flush_into(union, 3, "p1/common")
    assert out.length("p1/common") == 11 and out.length("p1/cur_1") == 0
    assert out.length("p0/common") == 10 and out.length("p0/cur_1") == 2
    with pytest.raises(TableError, match="does not open worker 3"):
        flush_into(union, 3, "p0/common")
    with pytest.raises(TableError, match="static"):
        flush_into(union, 3, "p1/cur_0")


# ---------------------------------------------------------------------- batched == one at a time
@pytest.mark.parametrize("family,layout,workers,backend", [
    ("qwen2", "combined", 2, "rotate_queries"),
    ("qwen2", "interleaved", 3, "rotate_queries"),
    ("qwen2", "contiguous", 2, "rotate_queries"),
    ("phi3", "combined", 2, "rotate_queries"),
    ("qwen3", "combined", 3, "rotate_keys"),
    ("qwen2", "combined", 2, "fast"),
    ("qwen3", "interleaved", 3, "fast"),
    ("llama", "contiguous", 2, "fast"),
])
def test_batched_problems_equal_one_at_a_time(family, layout, workers, backend, smollm_tokenizer):
    model = tiny_model(family, seed=3, vocab_size=len(smollm_tokenizer))
    ticks = 14
    items = [BatchItem(p, seed=10 * i) for i, p in enumerate(PROBLEMS)]
    runner = BatchRunner(_engine(model, smollm_tokenizer, workers=workers, layout=layout, ticks=ticks, finisher=False,
                                 backend=backend), [ticks], finisher=False, record_logits=True)
    forward, union_kinds = runner.engine.forward, []
    # the kind of every tick over the union (prefills run per problem)
    _watch_ticks(forward, lambda storage, tick: union_kinds.append(tick.kind) if storage.table.workers > workers else None)
    batched = runner.run(items)
    if backend == "fast":  # block-diagonal ticks over the union (Spec §9.6, §13.3), never the general path;
        # step changes (several tokens per worker) as extend ticks, only the static prefill per group
        assert union_kinds.count("decode") > 0 and union_kinds.count("extend") > 0, union_kinds
        assert set(union_kinds) <= {"decode", "extend", "grouped"}, union_kinds
    worst = 0.0
    for it, got in zip(items, batched):
        ref = _engine(model, smollm_tokenizer, workers=workers, layout=layout, ticks=ticks, finisher=False,
                      seed=it.seed, backend=backend).run(it.problem)
        assert got.error is None
        assert got.tokens == [w.tokens for w in ref.workers], f"{layout}: greedy tokens differ for {it.problem!r}"
        assert got.ticks == ref.ticks and len(got.logits) == len(ref.logits)
        for a, b in zip(got.logits, ref.logits):
            worst = max(worst, _rel_err(a, b))
    assert worst <= LOGIT_RTOL, f"{layout}: logit error {worst:.2e}"


def test_problems_with_the_same_prompt_are_prefilled_once(smollm_tokenizer):
    """Spec §13.3 (the same prompt twice): two items of one problem (self-consistency samples, several
    seeds) share one prefill, the second one's prompt and static segments are copies of the first's, and
    every item's run still equals its run alone."""
    model = tiny_model("llama", seed=7, vocab_size=len(smollm_tokenizer))
    ticks = 10
    items = [BatchItem(PROBLEMS[0], seed=1), BatchItem(PROBLEMS[1], seed=2), BatchItem(PROBLEMS[0], seed=3)]
    runner = BatchRunner(_engine(model, smollm_tokenizer, workers=2, layout="combined", ticks=ticks, finisher=False,
                                 backend="fast"), [ticks], finisher=False, record_logits=True)
    forward, prefilled = runner.engine.forward, set()
    prefill = forward._prefill

    def watched(storage, views, feeds, chunk):
        prefilled.update(v[0].split("/")[0] for v in views if "/" in v[0])  # the union's problems
        return prefill(storage, views, feeds, chunk)

    forward._prefill = watched
    batched = runner.run(items)
    assert prefilled == {"p0", "p1"}, prefilled  # problem 2 is problem 0's prompt: copied, not computed
    for it, got in zip(items, batched):
        ref = _engine(model, smollm_tokenizer, workers=2, layout="combined", ticks=ticks, finisher=False,
                      seed=it.seed, backend="fast").run(it.problem)
        assert got.error is None and got.tokens == [w.tokens for w in ref.workers]
        for a, b in zip(got.logits, ref.logits, strict=True):
            assert _rel_err(a, b) <= LOGIT_RTOL


def test_a_step_change_in_one_problem_leaves_the_other_problems_on_the_one_token_path(smollm_tokenizer):
    """Spec §9.6 (groups): a forward in which one problem of eight feeds several tokens (a step change,
    a collaboration prompt) and the seven others' rows one each runs as two forwards, the one-token
    problems through the decode tick; with two problems of eight feeding several tokens it stays one
    (packed). The logits of every row equal the engine oracle's (Spec §11.4) either way."""
    from hogwild_ref.forward import Forward
    from hogwild_ref.segments import Row

    model = tiny_model("llama", seed=11, vocab_size=len(smollm_tokenizer))
    engine = _engine(model, smollm_tokenizer, workers=2, layout="combined", ticks=4, finisher=False, backend="fast")
    preps = [engine.prepare(PROBLEMS[b % len(PROBLEMS)]) for b in range(8)]
    union, _ = union_tables([p.table for p in preps])
    ones = [[t] for t in range(30, 42)]  # one token each for problems 2..7
    ticks = [
        [[t] for t in range(5, 21)],  # one token per worker
        [[11], [12], [13, 14, 15], [], *ones],  # problem 1: worker 0 three tokens, worker 1 none
        [[18, 19], [20], [21], [22, 23], *ones],  # problems 0 and 1 several tokens, the others one
    ]
    expected_kinds = [{"decode": 1}, {"decode": 1, "extend": 1}, {"extend": 1}]
    got: dict[str, list[torch.Tensor]] = {}
    for backend in ("fast", "oracle"):
        forward = Forward(model, engine.rope, backend)
        storage = forward.storage(union)
        for b, prep in enumerate(preps):
            own = forward.storage(prep.table)
            forward.prefill(own, prep.first, prep.static)
            storage.copy_from(own, f"p{b}/")
        got[backend] = []
        for feeds, expected in zip(ticks, expected_kinds):
            before = dict(forward.kinds)
            got[backend].append(forward(storage, [Row(v, len(f)) for v, f in zip(union.views, feeds)], feeds))
            kinds = {k: n - before.get(k, 0) for k, n in forward.kinds.items() if n != before.get(k, 0)}
            if backend == "fast":
                assert kinds == expected, (feeds, kinds)
    for feeds, fast, oracle in zip(ticks, got["fast"], got["oracle"]):
        fed = [r for r, f in enumerate(feeds) if f]  # a row that feeds nothing returns logits to be ignored
        assert _rel_err(fast[fed], oracle[fed]) <= LOGIT_RTOL


@pytest.mark.parametrize("backend", ["rotate_queries", "fast"])
def test_batched_problems_with_stopped_workers_equal_one_at_a_time(backend, smollm_tokenizer):
    """Problems that end at different ticks (EOS) and zero-token rows inside a batch."""
    model = tiny_model("llama", seed=5, vocab_size=len(smollm_tokenizer))
    ticks = 16
    probe = _engine(model, smollm_tokenizer, workers=2, layout="combined", ticks=ticks, finisher=False).run(PROBLEMS[0])
    eos = frozenset([probe.workers[1].tokens[4]])  # worker 1 of problem 0 stops at tick 5
    items = [BatchItem(p) for p in PROBLEMS]
    runner = BatchRunner(_engine(model, smollm_tokenizer, workers=2, layout="combined", ticks=ticks, finisher=True, eos=eos,
                                 backend=backend), [4, 9, ticks], record_logits=True)
    batched = runner.run(items)
    for it, got in zip(items, batched):
        ref = _engine(model, smollm_tokenizer, workers=2, layout="combined", ticks=ticks, finisher=False, eos=eos,
                      backend=backend).run(it.problem)
        assert got.tokens == [w.tokens for w in ref.workers]
        assert got.ticks == ref.ticks and got.reason in (ref.reason, "finisher")
        for a, b in zip(got.logits, ref.logits):
            assert _rel_err(a, b) <= LOGIT_RTOL
    assert any(len(t) < ticks for t in batched[0].tokens), "the chosen EOS did not stop a worker early"


@pytest.mark.parametrize("backend", ["rotate_queries", "fast"])
def test_a_batch_goes_on_with_its_live_problems_alone_once_half_have_ended(backend, smollm_tokenizer):
    """Spec §13.3 (note on work): once at most half of a batch's problems still run, their rows are
    the only ones computed (the live problems move into a storage of their own), and every problem
    still equals its run alone, before and after the move."""
    model = tiny_model("llama", seed=9, vocab_size=len(smollm_tokenizer))
    ticks = 14
    problems = [*PROBLEMS, "Name a prime above 10."]
    # EOS: for problems 0 and 2, a token both workers sample at one tick of their runs alone and no
    # worker of problems 1 and 3 ever samples, so that 0 and 2 end there and 1 and 3 run on
    probes = [[w.tokens for w in _engine(model, smollm_tokenizer, workers=2, layout="combined", ticks=ticks,
                                         finisher=False, backend=backend).run(p).workers] for p in problems]
    others = {t for b in (1, 3) for tokens in probes[b] for t in tokens}
    eos = frozenset(next(a for a, b in zip(*probes[p]) if a == b and a not in others) for p in (0, 2))
    items = [BatchItem(p) for p in problems]
    runner = BatchRunner(_engine(model, smollm_tokenizer, workers=2, layout="combined", ticks=ticks, finisher=True,
                                 eos=eos, backend=backend), [5, ticks], record_logits=True)
    forward, rows_per_forward = runner.engine.forward, []
    # how many worker rows the storage of every forward holds
    _watch_ticks(forward, lambda storage, tick: rows_per_forward.append(storage.table.workers))
    batched = runner.run(items)
    ends = [got.ticks for got in batched]
    assert ends[0] < ticks and ends[2] < ticks and ends[1] == ends[3] == ticks, ends
    assert max(rows_per_forward) == 8 and rows_per_forward[-1] == 4, rows_per_forward  # the last: after the move
    for it, got in zip(items, batched):
        ref = _engine(model, smollm_tokenizer, workers=2, layout="combined", ticks=ticks, finisher=False, eos=eos,
                      backend=backend).run(it.problem)
        assert got.error is None
        assert got.tokens == [w.tokens for w in ref.workers], it.problem
        assert got.ticks == ref.ticks
        for a, b in zip(got.logits, ref.logits):
            assert _rel_err(a, b) <= LOGIT_RTOL
    # the answers at the budget after the move equal a batch that never moves (one problem per batch)
    alone = BatchRunner(_engine(model, smollm_tokenizer, workers=2, layout="combined", ticks=ticks, finisher=True,
                                eos=eos, backend=backend), [5, ticks])
    for it, got in zip(items, batched):
        ref_budgets = alone.run([it])[0].budgets
        assert [(a.budget, a.ticks, a.answer, a.reason, a.tokens, a.finisher_tokens) for a in got.budgets] == \
            [(a.budget, a.ticks, a.answer, a.reason, a.tokens, a.finisher_tokens) for a in ref_budgets]


def test_a_budget_finisher_goes_on_with_the_problems_whose_answer_is_still_open(smollm_tokenizer, monkeypatch):
    """Spec §13.3 (problems that end early) inside a budget's finisher (Spec §6.6, §13.2): once the
    finishers of half of the problems have closed, the others decode in a storage of their own; every
    problem's answers and finisher tokens equal its batch of one, and the runs go on unchanged."""
    from hogwild_ref.run import RunLoop

    model = tiny_model("llama", seed=7, vocab_size=len(smollm_tokenizer))
    problems = [*PROBLEMS, "Name a prime above 10."]
    closes: set[str] = set()  # the finishers that close after their first token, by prefix in the batch
    real_finish = RunLoop.finish

    def finish(self, runs, tokens, *, commit):
        kept = [r.extract for r in runs]
        for r in runs:
            if r.prefix in closes:
                r.extract = lambda text: "closed"
        try:
            return (yield from real_finish(self, runs, tokens, commit=commit))
        finally:
            for r, extract in zip(runs, kept):
                r.extract = extract

    monkeypatch.setattr(RunLoop, "finish", finish)
    runner = BatchRunner(_engine(model, smollm_tokenizer, workers=2, layout="combined", ticks=9, finisher=True),
                         [4, 9], record_logits=True)
    forward, rows_per_forward = runner.engine.forward, []
    plan_tick_of = _watch_ticks(forward, lambda storage, tick: rows_per_forward.append(storage.table.workers))
    closes.update({"p0/", "p2/"})
    batched = runner.run([BatchItem(p) for p in problems])
    assert 4 in rows_per_forward, rows_per_forward  # the finisher's later ticks: problems 1 and 3 alone
    assert 8 in rows_per_forward[rows_per_forward.index(4):], rows_per_forward  # then all four went on
    forward.tick = plan_tick_of
    for b, (problem, got) in enumerate(zip(problems, batched)):
        closes.clear()
        closes.update({"p0/"} if b in (0, 2) else set())
        ref = runner.run([BatchItem(problem)])[0]
        assert got.tokens == ref.tokens and got.ticks == ref.ticks
        assert [(a.answer, a.reason, a.finisher_tokens) for a in got.budgets] == \
            [(a.answer, a.reason, a.finisher_tokens) for a in ref.budgets]
        assert all(len(a.finisher_tokens) == (1 if b in (0, 2) else 5) for a in got.budgets), got.budgets
        for x, y in zip(got.logits, ref.logits):
            assert _rel_err(x, y) <= LOGIT_RTOL


# ---------------------------------------------------------------------- snapshots + finisher
@pytest.mark.parametrize("layout,backend", [("combined", "rotate_queries"), ("contiguous", "rotate_queries"),
                                            ("combined", "fast")])
def test_finisher_at_snapshots_leaves_the_run_unchanged_and_equals_a_run_with_that_budget(layout, backend, smollm_tokenizer):
    model = tiny_model("llama", seed=7, vocab_size=len(smollm_tokenizer))
    budgets = [5, 9, 13]
    items = [BatchItem(PROBLEMS[0], seed=1), BatchItem(PROBLEMS[1], seed=2)]
    runner = BatchRunner(_engine(model, smollm_tokenizer, workers=2, layout=layout, ticks=99, finisher=True,
                                 backend=backend), budgets, finisher=True, record_logits=True)
    results = runner.run(items)
    for it, got in zip(items, results):
        # the main run, snapshots and finishers notwithstanding, is the run without them
        plain = _engine(model, smollm_tokenizer, workers=2, layout=layout, ticks=budgets[-1], finisher=False,
                        seed=it.seed, backend=backend).run(it.problem)
        assert got.tokens == [w.tokens for w in plain.workers]
        for a, b in zip(got.logits, plain.logits):
            assert _rel_err(a, b) <= LOGIT_RTOL
        assert [a.budget for a in got.budgets] == budgets
        for snap in got.budgets:
            ref = _engine(model, smollm_tokenizer, workers=2, layout=layout, ticks=snap.budget, finisher=True,
                          seed=it.seed, backend=backend).run(it.problem)
            generated = len(ref.workers[0].tokens) - len(snap.finisher_tokens)
            assert snap.ticks == snap.budget and snap.tokens[0] == generated == snap.budget
            assert len(snap.finisher_tokens) > 0, "the finisher did not run"
            assert list(snap.finisher_tokens) == ref.workers[0].tokens[generated:]
            assert snap.answer == ref.answer
            assert snap.reason == ref.reason


def test_a_problem_that_fails_is_recorded_and_the_others_go_on(smollm_tokenizer, monkeypatch):
    model = tiny_model("llama", seed=7, vocab_size=len(smollm_tokenizer))
    runner = BatchRunner(_engine(model, smollm_tokenizer, workers=2, layout="combined", ticks=8, finisher=False), [8],
                         finisher=False)
    from hogwild_ref.run import ProblemRun

    real = ProblemRun.commit

    def flaky(self, storage, sampled, logits):
        if self.base == 2 and self.ticks == 3:  # problem 1 (workers 2, 3 of the union), its 4th tick
            raise RuntimeError("boom")
        return real(self, storage, sampled, logits)

    monkeypatch.setattr(ProblemRun, "commit", flaky)
    results = runner.run([BatchItem(p) for p in PROBLEMS])
    assert results[1].error == "RuntimeError: boom"
    assert results[0].error is None and results[2].error is None
    assert results[0].ticks == results[2].ticks == 8


def test_a_batch_switches_the_attention_implementation_once_and_restores_it(smollm_tokenizer, monkeypatch):
    """As Engine.run: the model runs the "hogwild" attention for the whole batch (not switched per
    forward), and its own implementation is back afterwards, also after an error."""
    model = tiny_model("llama", seed=7, vocab_size=len(smollm_tokenizer))
    before = model.config._attn_implementation
    runner = BatchRunner(_engine(model, smollm_tokenizer, workers=2, layout="combined", ticks=6, finisher=True,
                                 backend="fast"), [3, 6])
    switches: list[str] = []
    real = type(model).set_attn_implementation

    def counted(self, name, *args, **kwargs):
        switches.append(name)
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(type(model), "set_attn_implementation", counted)
    runner.run([BatchItem(p) for p in PROBLEMS[:2]])
    assert switches == ["hogwild", before]
    assert model.config._attn_implementation == before

    from hogwild_ref.run import RunLoop

    def broken(self, runs):
        raise KeyboardInterrupt

    monkeypatch.setattr(RunLoop, "tick", broken)
    with pytest.raises(KeyboardInterrupt):
        runner.run([BatchItem(PROBLEMS[0])])
    assert model.config._attn_implementation == before


# ---------------------------------------------------------------------- sampling: one code path, one device
def test_sampled_batched_problems_equal_one_at_a_time_with_generators_on_the_engine_device(smollm_tokenizer, monkeypatch):
    """Temperature 0.6, fixed seeds: every problem of a batch samples exactly the tokens of its own
    Engine.run, and every sampling generator, batched or not, is created on the engine's device.

    The device check cannot rely on the generators' own ``.device`` on a CPU machine (torch reports
    ``cpu`` for any CPU index), so the engine is given the device ``cpu:0`` and every generator's
    creation is recorded: a runner that made its generators on another device (say a literal "cpu")
    fails here."""
    import hogwild_ref.run as run_mod

    made: list[torch.device] = []
    real_generator = run_mod.Generator
    monkeypatch.setattr(run_mod, "Generator", lambda device: made.append(torch.device(device)) or real_generator(device=device))
    model = tiny_model("qwen2", seed=11, vocab_size=len(smollm_tokenizer))
    sched = SchedulerConfig(max_ticks=12, boundary=chunk_boundary, collab_every=5, eos_token_ids=frozenset(), stop_on_boxed=False)

    def engine(seed=0):
        eng = Engine(model, smollm_tokenizer, workers=2, layout="combined", backend="rotate_queries", scheduler=sched,
                     seed=seed, finisher=False, temperature=0.6, top_p=0.95)
        eng.forward.device = eng.forward.output_device = torch.device("cpu", 0)  # sampling runs where the logits are
        return eng

    items = [BatchItem(p, seed=100 + 7 * i) for i, p in enumerate(PROBLEMS)]
    batched = BatchRunner(engine(), [12], finisher=False).run(items)
    alone = [engine(it.seed).run(it.problem) for it in items]
    assert made and all(d == torch.device("cpu", 0) for d in made), made
    greedy = Engine(model, smollm_tokenizer, workers=2, layout="combined", backend="rotate_queries", scheduler=sched,
                    finisher=False).run(PROBLEMS[0])
    assert [w.tokens for w in greedy.workers] != [w.tokens for w in alone[0].workers], "temperature 0.6 sampled nothing"
    for it, got, ref in zip(items, batched, alone):
        assert got.error is None
        assert got.tokens == [w.tokens for w in ref.workers], f"sampled tokens differ for {it.problem!r}"


def test_batched_problems_on_the_fast_path_with_layers_on_two_devices(smollm_tokenizer, monkeypatch):
    """A batch over layers that report two devices (Spec §11.8; on a CPU machine two keys of the same
    memory): every group's plans, buffers and row indices reach each layer's device, and the tokens are
    those of the one-device batch, finisher snapshots included."""
    import hogwild_ref.forward as forward_mod

    model = tiny_model("llama", seed=9, vocab_size=len(smollm_tokenizer), num_hidden_layers=4)
    items = [BatchItem(p, seed=i) for i, p in enumerate(PROBLEMS)]

    def run():
        eng = _engine(model, smollm_tokenizer, workers=2, layout="combined", ticks=12, finisher=True, backend="fast")
        return BatchRunner(eng, [6, 12], record_logits=True).run(items), eng.forward

    one, _ = run()
    fake = [torch.device("cpu")] * 2 + [torch.device("cpu", 0)] * 2
    monkeypatch.setattr(forward_mod, "layer_devices", lambda m: list(fake))
    spread, forward = run()
    assert {st.device for st in forward.storage(make_layout("combined", 2)).stores} == set(fake)
    for a, b in zip(one, spread):
        assert a.error is None and b.error is None
        assert a.tokens == b.tokens and [x.answer for x in a.budgets] == [x.answer for x in b.budgets]
        assert [x.finisher_tokens for x in a.budgets] == [x.finisher_tokens for x in b.budgets]
        for la, lb in zip(a.logits, b.logits):
            assert _rel_err(lb, la) <= LOGIT_RTOL


def test_a_seed_beyond_the_generators_range_is_refused_before_anything_runs(smollm_tokenizer, monkeypatch):
    """Worker w of a batched problem samples with the seed ``seed + w`` (Spec §11.5), which a torch
    generator takes up to 2^64 - 1: a larger one is refused as :class:`~hogwild_ref.Settings` refuses it,
    before the batch's prefill, not by torch after it."""
    from hogwild_ref.checks import SettingsError

    model = tiny_model("llama", seed=7, vocab_size=len(smollm_tokenizer))
    runner = BatchRunner(_engine(model, smollm_tokenizer, workers=2, layout="combined", ticks=4, finisher=False), [4],
                         finisher=False)
    monkeypatch.setattr(BatchRunner, "_run", lambda *a, **k: pytest.fail("the batch ran"))
    for seed in (2**64 - 1, 2**70):
        with pytest.raises(SettingsError, match=f"seed {seed} is too large: .* give a seed <= {2**64 - 2}"):
            runner.run([BatchItem(PROBLEMS[0], seed=0), BatchItem(PROBLEMS[1], seed=seed)])
