"""The evaluation harness (Spec §13): answers, datasets, summary, resumable results, crashes, CLI.

Oracles: hand-written answer pairs; an independent parser of the built-in questions; published Wilson
interval values; and, for resuming, a complete uninterrupted run of the same evaluation.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from hogwild_ref.evaluation import EvalConfig, run_eval
from hogwild_ref.evaluation.answers import answers_match, extract_answer, majority_vote, normalise
from hogwild_ref.evaluation.datasets import load_dataset, problem_from_record
from hogwild_ref.evaluation.results import ResultsLog
from hogwild_ref.evaluation.runner import _engine
from hogwild_ref.evaluation.summary import format_markdown, summarise, throughput, wilson_interval
from hogwild_ref.models import tiny_model
from hogwild_ref.sampling import SamplingConfig


# ---------------------------------------------------------------------- answers (Spec §13.1)
def test_extract_answer_takes_the_last_parseable_box():
    assert extract_answer("a \\boxed{3} then \\boxed{\\frac{1}{2}} and \\boxed{}") == "\\frac{1}{2}"
    assert extract_answer("\\boxed{7} \\boxed{ $ $ }") == "7"
    assert extract_answer("\\boxed{12, 7") is None  # unclosed
    assert extract_answer("no box") is None and extract_answer(None) is None


def test_normalise_strips_latex_noise():
    assert normalise("  \\text{ 42 } . ") == "42"
    assert normalise("\\left( 1, 2 \\right)") == "(1,2)"
    assert normalise("90^\\circ") == "90"


def test_majority_vote_groups_equal_answers_and_breaks_ties_by_first():
    assert majority_vote(["3", "4", "3.0", None]) == "3"
    assert majority_vote(["4", "3"]) == "4"
    assert majority_vote([None, "4", "\\frac{8}{2}", "3"]) == "4"
    assert majority_vote([None, None]) is None


# ---------------------------------------------------------------------- datasets
_QUESTIONS = [
    (r"has (\d+) apples and buys (\d+) more", lambda a, b: a + b),
    (r"A box holds (\d+) pens\. How many pens are in (\d+) boxes", lambda a, b: a * b),
    (r"had (\d+) stickers and gave away (\d+)", lambda a, b: a - b),
    (r"(\d+) cookies are shared equally by (\d+) children", lambda a, b: a // b),
    (r"has (\d+) cars with (\d+) seats each, and (\d+) seats are taken", lambda a, b, c: a * b - c),
]


def _solve(question: str) -> int:
    for pattern, f in _QUESTIONS:
        m = re.search(pattern, question)
        if m:
            return f(*map(int, m.groups()))
    raise AssertionError(f"unrecognised question {question!r}")


@pytest.mark.parametrize("spec,k", [("builtin:arith", 5), ("builtin:arith-1", 1), ("builtin:arith-3", 3)])
def test_builtin_arith_is_deterministic_and_its_answers_are_right(spec, k):
    problems = load_dataset(spec)
    assert problems == load_dataset(spec) and len({p.id for p in problems}) == len(problems) == 200
    for p in problems[:60]:
        questions = re.findall(r"^\d+\. (.*)$", p.problem, re.MULTILINE) if k > 1 else [p.problem]
        assert len(questions) == k
        golds = [_solve(q) for q in questions]
        assert all(g >= 0 for g in golds)
        assert p.kind == "integers" and answers_match(", ".join(map(str, golds)), p.answer, p.kind), p
        assert "\\boxed{}" in p.problem
    assert load_dataset(spec, limit=3) == problems[:3]


def test_dataset_field_layouts(tmp_path):
    gsm = problem_from_record({"question": "Q?", "answer": "3 + 4 = 7\nso 1,000 + 234\n#### 1,234"}, "d-0")
    assert (gsm.id, gsm.problem, gsm.answer, gsm.kind) == ("d-0", "Q?", "1234", "integer")
    math = problem_from_record({"problem": "P", "solution": "so $\\boxed{\\frac{1}{2}}$.", "unique_id": "alg/1.json"}, "x")
    assert (math.id, math.answer) == ("alg/1.json", "\\frac{1}{2}")
    aime = problem_from_record({"ID": "2024-I-1", "Problem": "P", "Answer": 204, "Solution": "..."}, "x")
    assert (aime.id, aime.answer) == ("2024-I-1", "204")
    limo = problem_from_record({"question": "Q", "solution": "\\boxed{9}", "answer": "8"}, "x")
    assert limo.answer == "8"  # the answer field wins over the solution's box
    with pytest.raises(ValueError, match="no problem text"):
        problem_from_record({"answer": "1"}, "r-3")
    with pytest.raises(ValueError, match="no answer"):
        problem_from_record({"problem": "P", "solution": "no box"}, "r-3")

    path = tmp_path / "set.jsonl"
    path.write_text('{"id": "a", "problem": "1+1?", "answer": "2"}\n\n{"id": "b", "question": "2+2?", "answer": "#### 4"}\n')
    assert [(p.id, p.answer) for p in load_dataset(str(path))] == [("a", "2"), ("b", "4")]
    arr = tmp_path / "set.json"
    arr.write_text(json.dumps([{"problem": "P", "answer": 1}, {"problem": "Q", "answer": 2}]))
    assert [p.id for p in load_dataset(str(arr))] == ["set-0", "set-1"]
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": 1, "problem": "P", "answer": 1}\n{"id": 1, "problem": "Q", "answer": 2}\n')
    with pytest.raises(ValueError, match=r"dup.jsonl:2 repeats the id '1' of .*dup.jsonl:1"):
        load_dataset(str(dup))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "P", "answer": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 is not valid JSON"):
        load_dataset(str(bad))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="unknown built-in dataset"):
        load_dataset("builtin:gsm8k")


# ---------------------------------------------------------------------- summary (Spec §13.4)
def test_wilson_interval_matches_published_values():
    # Newcombe (1998), Stat. Med. 17:857, Table I: 81/263 -> 0.2553-0.3662; 15/148 -> 0.0624-0.1605
    lo, hi = wilson_interval(81, 263)
    assert abs(lo - 0.2553) < 1e-4 and abs(hi - 0.3662) < 1e-4
    lo, hi = wilson_interval(15, 148)
    assert abs(lo - 0.0624) < 1e-4 and abs(hi - 0.1605) < 1e-4
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and abs(hi - 0.2775) < 1e-4  # Newcombe Table I: 0/10 -> 0-0.2775
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_summarise_counts_accuracy_errors_and_baseline():
    def row(method, w, b, pid, correct, error=None):
        return {"method": method, "workers": w, "budget": b, "problem_id": pid, "seed": 0, "correct": correct,
                "error": error, "ticks": b, "tokens_per_worker": [b] * w, "seconds": 1.0}

    rows = [row("hogwild", 1, 8, "a", True), row("hogwild", 1, 8, "b", False),
            row("hogwild", 2, 8, "a", True), row("hogwild", 2, 8, "b", False, error="RuntimeError: boom"),
            row("self_consistency", 2, 8, "a", False), row("self_consistency", 2, 8, "b", False)]
    cells = summarise(rows)
    assert [(c.method, c.workers) for c in cells] == [("hogwild", 1), ("hogwild", 2), ("self_consistency", 2)]
    h2 = cells[1]
    assert (h2.n, h2.correct, h2.accuracy, h2.errors, h2.baseline, h2.mean_tokens) == (2, 1, 0.5, 1, 0.5, 16)
    assert cells[2].accuracy == 0.0 and cells[2].baseline == 0.5
    text = format_markdown(cells)
    assert "| Hogwild, 1 worker (baseline) | 8 | 2 | 0.500 |" in text and "self-consistency, 2 samples" in text


def test_a_cell_whose_rows_all_crashed_has_no_means_and_crashed_units_no_throughput():
    """A review recomputing the summary: such a cell showed means of 0.0, and a crashed unit's share of
    its batch's time counted as work done (with none of its tokens)."""
    def row(pid, budget, error=None, seconds=2.0, tokens=10):
        return {"method": "hogwild", "workers": 1, "budget": budget, "problem_id": pid, "seed": 0, "correct": False,
                "error": error, "ticks": None if error else budget, "tokens_per_worker": None if error else [budget],
                "seconds": None if error else 1.0, "unit_seconds": seconds, "unit_tokens": None if error else tokens}

    (cell,) = summarise([row("a", 8, "RuntimeError: boom"), row("b", 8, "RuntimeError: boom")])
    assert (cell.n, cell.errors, cell.mean_ticks, cell.mean_tokens, cell.mean_seconds) == (2, 2, None, None, None)
    assert "| 2 | - | - | - |" in format_markdown([cell]) and json.loads(json.dumps(cell.to_dict()))["mean_ticks"] is None
    # units: a (8 and 16: the row of its largest budget counts, written by a later, longer run), b crashed
    (speed,) = throughput([row("a", 8, seconds=2.0, tokens=10), row("a", 16, seconds=3.0, tokens=18),
                           row("b", 8, "RuntimeError: boom", seconds=5.0), row("b", 16, "RuntimeError: boom", seconds=5.0)])
    assert (speed.units, speed.seconds, speed.tokens) == (1, 3.0, 18)
    assert (speed.problems_per_hour, speed.tokens_per_second) == (1200.0, 6.0)


def test_top_p_at_temperature_0_binds_no_resume():
    """It filters nothing there (Hogwild is greedy, the samples are never filtered): a resume with or
    without it goes on (a review found it refused)."""
    with pytest.warns(UserWarning, match="--top-p has no effect"):
        with_p = EvalConfig(top_p=0.9)
    assert with_p.identity() == EvalConfig().identity()
    assert EvalConfig(temperature=0.7, top_p=0.9).identity()["top_p"] == 0.9


def _valid_row(**kw):
    return {"format": 2, "method": "hogwild", "problem_id": "a", "workers": 1, "seed": 0, "budget": 8, "gold": "7",
            "kind": "math", "checker": "math-verify==0.9.0", "check": "math-verify", "answer": "6", "correct": False,
            "ticks": 8, "finisher_ticks": 2, "tokens_per_worker": [8], "seconds": 0.5, "error": None,
            "unit_seconds": 0.5, "unit_tokens": 10} | kw


def test_results_log_drops_a_line_cut_short_and_keeps_the_latest_row(tmp_path):
    path = tmp_path / "results.jsonl"
    full = _valid_row()
    path.write_text(json.dumps(full) + "\n" + '{"method": "hogwild", "problem_id": "b", "wor')
    log = ResultsLog(path)
    assert log.dropped == 1 and len(log.all()) == 1
    assert path.read_text().endswith("}\n")
    log.append([full | {"correct": True}, full | {"problem_id": "b"}])
    again = ResultsLog(path)
    assert again.dropped == 0 and len(again.all()) == 2
    assert again.rows[("hogwild", "a", 1, 0, 8)]["correct"] is True


# ---------------------------------------------------------------------- run_eval end to end (tiny model)
@pytest.fixture(scope="module")
def tiny(smollm_tokenizer):
    return tiny_model("llama", seed=11, vocab_size=len(smollm_tokenizer)), smollm_tokenizer


def _cfg(**kw):
    base = dict(dataset="builtin:arith-2", workers=(2,), budgets=(3, 6), limit=3, batch=2, prompts="compact",
                finisher_tokens=3, collab_every=None)
    return EvalConfig(**(base | kw))


def _stable(rows):
    """Rows without the wall-clock fields (and the batch size, which depends on what was left to run)."""
    return sorted((json.dumps({k: v for k, v in r.items() if k not in ("seconds", "batch", "unit_seconds")}, sort_keys=True)
                   for r in rows))


def test_eval_writes_rows_summary_and_plot(tiny, tmp_path):
    model, tok = tiny
    report = run_eval(model, tok, _cfg(), tmp_path, progress=False)
    # units: hogwild W=1 and W=2, self-consistency W=2; 3 problems; 2 budgets each
    assert report.ran_units == 9 and len(report.rows) == 18
    assert {(r["method"], r["workers"]) for r in report.rows} == {("hogwild", 1), ("hogwild", 2), ("self_consistency", 2)}
    for r in report.rows:
        assert r["error"] is None and r["ticks"] <= r["budget"]
        assert len(r["tokens_per_worker"]) == r["workers"]
        assert r["kind"] == "integers" and r["correct"] == answers_match(r["answer"], r["gold"], "integers")
        assert r["format"] == 2 and r["checker"].startswith("math-verify==")
        assert r["unit_seconds"] > 0 and r["unit_tokens"] >= sum(r["tokens_per_worker"])
        if r["method"] == "self_consistency":
            assert len(r["samples"]) == 2 and r["answer"] == majority_vote(r["samples"], "integers")
    assert report.files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in report.files["svg"].read_text()
    assert "| Hogwild, 2 workers | 6 | 3 |" in report.files["summary_md"].read_text()
    summary = json.loads(report.files["summary_json"].read_text())
    assert len(summary["cells"]) == 6 and summary["checker"].startswith("math-verify==")
    # what the verdicts rest on: math-verify pins its LaTeX parser but not sympy (a review)
    import importlib.metadata

    versions = {n: importlib.metadata.version(n) for n in ("math-verify", "latex2sympy2_extended", "sympy")}
    assert summary["checker_versions"] == versions
    assert f"sympy=={versions['sympy']}" in report.files["summary_md"].read_text()
    # throughput per (method, W): units counted once (not once per budget), from the rows' own wall time and tokens
    speed = {(t["method"], t["workers"]): t for t in summary["throughput"]}
    assert set(speed) == {("hogwild", 1), ("hogwild", 2), ("self_consistency", 2)}
    for (method, w), t in speed.items():
        mine = {r["problem_id"]: r for r in report.rows if (r["method"], r["workers"]) == (method, w)}
        assert t["units"] == 3 == len(mine)
        assert t["seconds"] == pytest.approx(sum(r["unit_seconds"] for r in mine.values()))
        assert t["tokens"] == sum(r["unit_tokens"] for r in mine.values())
        assert t["problems_per_hour"] == pytest.approx(3 * 3600 / t["seconds"])
        assert t["tokens_per_second"] == pytest.approx(t["tokens"] / t["seconds"])
    assert "| method | units | wall s | problems/hour | tokens | tokens/s |" in report.files["summary_md"].read_text()


def test_progress_on_a_console_that_is_not_a_terminal_is_plain_lines(tiny, tmp_path, monkeypatch):
    """A log file or a scheduler's output (stderr not a terminal) showed nothing until the end: a rich bar
    draws only on terminals. Now a plain line, no control codes, every PLAIN_EVERY_S seconds and at the end."""
    import io
    import re

    from rich.console import Console

    from hogwild_ref.evaluation import runner

    monkeypatch.setattr(runner._Progress, "PLAIN_EVERY_S", 0.0)
    log = io.StringIO()
    model, tok = tiny
    run_eval(model, tok, _cfg(limit=2, workers=(1,), self_consistency=False), tmp_path, progress=True,
             console=Console(file=log, force_terminal=False), plot=False)
    lines = log.getvalue().splitlines()
    pattern = re.compile(r"eval (\d+)/2 units, (\d+)%, \d+:\d\d:\d\d elapsed, ETA (\d+:\d\d:\d\d|\?)")
    assert len(lines) >= 3 and all(pattern.fullmatch(line) for line in lines), lines
    assert pattern.fullmatch(lines[-1]).group(1, 2) == ("2", "100") and "\x1b" not in log.getvalue()


def test_eval_resumes_without_redoing_finished_rows(tiny, tmp_path):
    model, tok = tiny
    complete = run_eval(model, tok, _cfg(), tmp_path / "complete", progress=False, plot=False)
    # an interrupted run: the first 5 rows, then a line cut short
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(tmp_path / "complete" / "config.json", part / "config.json")
    lines = (tmp_path / "complete" / "results.jsonl").read_text().splitlines(keepends=True)
    (part / "results.jsonl").write_text("".join(lines[:5]) + lines[5][:40])
    kept = [json.loads(x) for x in lines[:5]]
    unit = lambda r: (r["method"], r["problem_id"], r["workers"], r["seed"])  # noqa: E731
    finished = {unit(r) for r in kept if sum(unit(q) == unit(r) for q in kept) == 2}  # both budgets on disk
    assert len(finished) == 2
    ran = []
    resumed = run_eval(model, tok, _cfg(), part, progress=False, plot=False, on_unit=ran.append)
    assert resumed.skipped_units == 2 and resumed.ran_units == len(ran) == 7
    assert not {(u.method, u.problem.id, u.workers, u.seed) for u in ran} & finished
    assert _stable(resumed.rows) == _stable(complete.rows)
    # and once complete, nothing runs again
    again = run_eval(model, tok, _cfg(), part, progress=False, plot=False, on_unit=ran.append)
    assert again.ran_units == 0 and len(ran) == 7


def test_a_crashing_problem_is_recorded_and_the_others_finish(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    from hogwild_ref.engine import Engine

    real = Engine.prepare
    victim = load_dataset("builtin:arith-2", 3)[1]

    def flaky(self, problem):
        if problem == victim.problem:
            raise RuntimeError("boom")
        return real(self, problem)

    monkeypatch.setattr(Engine, "prepare", flaky)
    report = run_eval(model, tok, _cfg(), tmp_path, progress=False, plot=False)
    bad = [r for r in report.rows if r["problem_id"] == victim.id]
    good = [r for r in report.rows if r["problem_id"] != victim.id]
    assert len(bad) == 6 and all(r["error"] == "RuntimeError: boom" and r["correct"] is False for r in bad)
    assert len(good) == 12 and all(r["error"] is None for r in good)
    assert sum(c.errors for c in report.cells) == 6
    # a resume keeps recorded errors; --retry-errors reruns exactly those units
    monkeypatch.setattr(Engine, "prepare", real)
    assert run_eval(model, tok, _cfg(), tmp_path, progress=False, plot=False).ran_units == 0
    retried = run_eval(model, tok, _cfg(retry_errors=True), tmp_path, progress=False, plot=False)
    assert retried.ran_units == 3 and all(r["error"] is None for r in retried.rows)
    on_disk = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(on_disk) == 18 and all(r["error"] is None for r in on_disk)  # the error rows replaced, not kept beside


def test_an_added_budget_leaves_one_row_per_key(tiny, tmp_path):
    model, tok = tiny
    first = run_eval(model, tok, _cfg(limit=2), tmp_path, progress=False, plot=False)
    assert len(first.rows) == 2 * 3 * 2  # 2 problems x (1 worker, 2 workers, self-consistency) x 2 budgets
    more = run_eval(model, tok, _cfg(limit=2, budgets=(3, 6, 8)), tmp_path, progress=False, plot=False)
    assert more.ran_units == 6  # every unit misses its budget-8 row, so every unit runs again
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    keys = [(r["method"], r["problem_id"], r["workers"], r["seed"], r["budget"]) for r in map(json.loads, lines)]
    assert len(lines) == len(set(keys)) == 2 * 3 * 3
    # the rerun's rows of the first budgets are the first run's (greedy, and self-consistency with the same seeds),
    # but for the unit's generated tokens, which count the tokens up to the largest budget (Spec §13.5)
    def answers(rows):
        return _stable({k: v for k, v in r.items() if k != "unit_tokens"} for r in rows)
    assert answers(r for r in more.rows if r["budget"] != 8) == answers(first.rows)


def test_a_failing_rerun_for_an_added_budget_keeps_the_rows_it_had(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    from hogwild_ref.engine import Engine

    first = run_eval(model, tok, _cfg(limit=1, self_consistency=False, budgets=(3,)), tmp_path, progress=False, plot=False)
    assert len(first.rows) == 2 and all(r["error"] is None for r in first.rows)

    def fails(self, problem):
        raise RuntimeError("out of memory at the larger budget")

    monkeypatch.setattr(Engine, "prepare", fails)
    more = run_eval(model, tok, _cfg(limit=1, self_consistency=False, budgets=(3, 6)), tmp_path, progress=False, plot=False)
    assert more.ran_units == 2
    on_disk = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(on_disk) == 4
    assert sorted(json.dumps(r, sort_keys=True) for r in on_disk if r["budget"] == 3) == \
        sorted(json.dumps(r, sort_keys=True) for r in first.rows)  # the good rows, untouched
    assert all(r["error"] == "RuntimeError: out of memory at the larger budget" for r in on_disk if r["budget"] == 6)


def test_a_split_recorded_for_a_source_without_splits_does_not_block_a_resume(tmp_path):
    from hogwild_ref.evaluation.answers import require_checker
    from hogwild_ref.evaluation.datasets import builtin_arith
    from hogwild_ref.evaluation.runner import check_inputs

    cfg = _cfg(limit=1)
    (tmp_path / "config.json").write_text(json.dumps(cfg.identity() | {"split": "test"}))  # as earlier versions wrote it
    run_rows = [{"format": 2, "method": "hogwild", "problem_id": "arith5-0", "workers": 1, "seed": 0, "budget": 3,
                 "gold": builtin_arith()[0].answer, "kind": "integers", "checker": require_checker(), "check": "integers",
                 "answer": None, "correct": False, "ticks": 3, "finisher_ticks": 1, "tokens_per_worker": [3],
                 "seconds": 0.1, "error": None, "unit_seconds": 0.1, "unit_tokens": 4}]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in run_rows))  # (so its settings bind)
    assert len(check_inputs(cfg, tmp_path)) == 1  # the same problems: builtin sets have no split to choose
    with pytest.raises(ValueError, match="finisher_tokens: 3 there, 4 now"):  # a real difference still refused
        check_inputs(_cfg(limit=1, finisher_tokens=4), tmp_path)


def test_eval_refuses_to_mix_settings_in_one_directory(tiny, tmp_path):
    model, tok = tiny
    run_eval(model, tok, _cfg(budgets=(2,), workers=(1,), self_consistency=False, limit=1), tmp_path, progress=False, plot=False)
    with pytest.raises(ValueError, match=r"finisher_tokens: 3 there, 5 now"):
        run_eval(model, tok, _cfg(budgets=(2,), finisher_tokens=5, limit=1), tmp_path, progress=False, plot=False)


def test_eval_config_rejects_bad_input():
    with pytest.raises(ValueError, match="budgets must be"):
        EvalConfig(budgets=(0, 8))
    with pytest.raises(ValueError, match="workers must be"):
        EvalConfig(workers=(0,))
    with pytest.raises(ValueError, match="--sc-temperature > 0"):
        EvalConfig(sc_temperature=0.0)
    with pytest.raises(ValueError, match="batch must be"):
        EvalConfig(batch=0)
    # the run settings each unit hands the engine, refused when the config is made, not after the model loads
    for bad, needle in [({"finisher_tokens": 0}, "finisher_tokens must be >= 1; got 0"),
                        ({"collab_every": 0}, "collab_every must be >= 1; got 0"),
                        ({"temperature": -0.5}, "temperature must be >= 0"),
                        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]; got 0.0")]:
        with pytest.raises(ValueError, match=needle):
            EvalConfig(**bad)
    assert EvalConfig(collab_every=None, top_p=1.0, temperature=0.7).collab_every is None
    assert EvalConfig(seeds=(-1, 0)).seeds == (-1, 0)  # seeds of any sign (folders made with them resume)


def test_top_p_filters_the_hogwild_runs_only(tiny):
    """A review: ``--top-p`` filtered the self-consistency samples (at ``--sc-temperature``), and at
    ``--temperature 0`` it filtered nothing else, without a word (Spec §13.4)."""
    model, tok = tiny
    cfg = _cfg(temperature=0.7, top_p=0.5)
    hogwild, samples = _engine(model, tok, cfg, "hogwild", 2), _engine(model, tok, cfg, "self_consistency", 2)
    assert (hogwild.workers, hogwild.sampling) == (2, SamplingConfig(0.7, top_p=0.5))
    assert (samples.workers, samples.sampling) == (1, SamplingConfig(cfg.sc_temperature))
    with pytest.warns(UserWarning, match="^--top-p has no effect with --temperature 0"):
        greedy = _cfg(top_p=0.5)
    assert _engine(model, tok, greedy, "hogwild", 2).sampling == SamplingConfig(0.0)
    assert _engine(model, tok, greedy, "self_consistency", 2).sampling == SamplingConfig(greedy.sc_temperature)


@pytest.mark.slow
def test_cli_eval_on_the_embedded_model(tmp_path, capsys, monkeypatch, smollm):
    import hogwild_ref.models
    from hogwild_ref.cli import main

    monkeypatch.setattr(hogwild_ref.models, "load", lambda *a, **k: smollm)  # the session's model, no second load

    tmp_path = tmp_path / ("a-folder-whose-name-is-long-enough-to-pass-eighty-columns-" * 2)
    rc = main(["eval", "--dataset", "builtin:arith", "--workers", "1", "2", "--budgets", "4", "8", "--limit", "1",
               "--prompts", "compact", "--out", str(tmp_path), "--no-progress", "--finisher-tokens", "4"])
    assert rc == 0
    captured = capsys.readouterr()
    out = captured.out
    # each file's path on its own whole line, as a log file (a console of 80 columns) gets it
    assert f"results: {tmp_path / 'results.jsonl'}" in captured.err.splitlines()
    assert "| Hogwild, 2 workers | 8 | 1 |" in out and "self-consistency, 2 samples" in out
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for name in ("summary.md", "summary.json", "accuracy.png", "accuracy.svg", "config.json"):
        assert (tmp_path / name).is_file()
    monkeypatch.setattr(hogwild_ref.models, "load", lambda *a, **k: pytest.fail("loaded a model for bad arguments"))
    assert main(["eval", "--budgets", "0", "--out", str(tmp_path / "x")]) == 2
    assert "budgets must be tick counts >= 1" in capsys.readouterr().err
