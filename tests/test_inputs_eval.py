"""Bad eval inputs are refused before the model loads (Spec §13.1, §13.5): one line, exit 2.

Each case builds its files in tmp_path and runs ``hogwild_ref.cli.main`` in-process with
``models.load`` replaced by a failure, so a case that reaches the model fails the test. Oracles:
the refusals name what is wrong (the line, the column, the pid), checked against what the test wrote.
Then the dataset forms that must load: parquet and ``save_to_disk`` folders in the common schemas.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

import hogwild_ref.models
from hogwild_ref.cli import main
from hogwild_ref.evaluation.answers import check_answer
from hogwild_ref.evaluation.datasets import load_dataset

BASE = ["eval", "--workers", "1", "--budgets", "4", "--no-progress", "--no-self-consistency"]


def _jsonl(path: Path, records: list[Any]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def _parquet(path: Path, records: list[dict[str, Any]]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return str(path)


def _disk(path: Path, splits: dict[str, list[dict[str, Any]]] | list[dict[str, Any]]) -> str:
    import datasets

    def one(rows: list[dict[str, Any]]) -> Any:
        return datasets.Dataset.from_list(rows or GOOD).filter(lambda r: bool(rows))  # an empty split as filtering makes one

    ds = one(splits) if isinstance(splits, list) else datasets.DatasetDict({k: one(v) for k, v in splits.items()})
    ds.save_to_disk(str(path))
    return str(path)


GOOD = [{"id": "a", "problem": "1+1?", "answer": "2"}, {"id": "b", "problem": "2+2?", "answer": "4"}]


def _row(**kw: Any) -> dict[str, Any]:
    return {"format": 2, "method": "hogwild", "problem_id": "a", "workers": 1, "seed": 0, "budget": 4, "gold": "2",
            "kind": "math", "checker": "math-verify==0.9.0", "check": "math-verify", "answer": "3", "correct": False,
            "ticks": 4, "finisher_ticks": 1, "tokens_per_worker": [4], "seconds": 0.1, "error": None,
            "unit_seconds": 0.1, "unit_tokens": 5} | kw


def _resume_dir(t: Path, lines: list[str]) -> list[str]:
    """An --out directory holding a results.jsonl with ``lines`` (its config.json from a valid first call)."""
    data = _jsonl(t / "d.jsonl", GOOD)
    out = t / "out"
    out.mkdir()
    (out / "results.jsonl").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    return ["--dataset", data, "--out", str(out)]


def _resumable(t: Path) -> tuple[Any, Path]:
    """A one-worker config on GOOD, and its --out directory ``t/o`` holding its config.json."""
    from hogwild_ref.evaluation import EvalConfig

    cfg = EvalConfig(dataset=_jsonl(t / "d.jsonl", GOOD), workers=(1,), budgets=(4,), self_consistency=False)
    (t / "o").mkdir()
    (t / "o" / "config.json").write_text(json.dumps(cfg.identity()))
    return cfg, t / "o"


def _damaged_config(t: Path) -> list[str]:
    argv = _resume_dir(t, [json.dumps(_row())])
    (t / "out" / "config.json").write_text("{x", encoding="utf-8")
    return argv


def _bytes(t: Path, name: str, data: bytes) -> str:
    (t / name).write_bytes(data)
    return str(t / name)


# (name, build(tmp_path) -> extra argv, text the one-line error must contain)
CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("malformed-jsonl", lambda t: ["--dataset", _bytes(t, "d.jsonl", b'{"problem": "P", "answer": 1}\n{oops\n')],
     "d.jsonl:2 is not valid JSON"),
    ("malformed-json-array", lambda t: ["--dataset", _bytes(t, "d.json", b'[{"problem": "P", "answer": 1},\n  {oops]')],
     "d.json:2 is not valid JSON"),
    ("missing-problem", lambda t: ["--dataset", _jsonl(t / "d.jsonl", [{"answer": "1", "text": "P"}])],
     "d.jsonl:1 has no problem text"),
    ("missing-answer", lambda t: ["--dataset", _jsonl(t / "d.jsonl", GOOD + [{"problem": "P"}])],
     "d.jsonl:3 has no answer"),
    ("duplicate-ids", lambda t: ["--dataset", _jsonl(t / "d.jsonl", GOOD + [GOOD[0]])],
     "d.jsonl:3 repeats the id 'a'"),
    ("bad-utf8", lambda t: ["--dataset", _bytes(t, "d.jsonl", b'{"problem": "P", "answer": 1}\n{"problem": "\xff"}\n')],
     "d.jsonl:2 is not UTF-8 (byte 0xff"),
    ("csv", lambda t: ["--dataset", _bytes(t, "d.csv", b"problem,answer\n1+1?,2\n")], "CSV is not read"),
    ("plain-directory", lambda t: ["--dataset", str(t)], "not a `datasets` save_to_disk folder"),
    ("missing-file", lambda t: ["--dataset", str(t / "nope.jsonl")], "does not exist"),
    ("empty-file", lambda t: ["--dataset", _bytes(t, "d.jsonl", b"\n\n")], "has no problems"),
    ("empty-array", lambda t: ["--dataset", _bytes(t, "d.json", b"[]")], "has no problems"),
    ("empty-problem", lambda t: ["--dataset", _jsonl(t / "d.jsonl", GOOD + [{"problem": "  ", "answer": "1"}])],
     "d.jsonl:3: the problem is empty"),
    ("record-not-object", lambda t: ["--dataset", _jsonl(t / "d.jsonl", GOOD + [7])], "d.jsonl:3 is a number, not a JSON object"),
    ("empty-save-to-disk", lambda t: ["--dataset", _disk(t / "one", [])], "has no problems"),
    ("gold-dict", lambda t: ["--dataset", _jsonl(t / "d.jsonl", [{"problem": "P", "answer": {"x": 1}}])],
     "the gold answer {'x': 1} is a dict"),
    ("gold-empty-list", lambda t: ["--dataset", _jsonl(t / "d.jsonl", [{"problem": "P", "answer": []}])],
     "the gold answer is an empty list"),
    ("bad-id", lambda t: ["--dataset", _jsonl(t / "d.jsonl", [{"id": "", "problem": "P", "answer": "1"}])],
     "the id '' is not"),
    ("huge-problem", lambda t: ["--dataset", _jsonl(t / "d.jsonl", [{"problem": "x " * 600_000, "answer": "1"}])],
     "the problem is 1.2 MB"),
    ("limit-0", lambda t: ["--limit", "0"], "--limit must be >= 1"),
    ("out-is-a-file", lambda t: ["--out", _bytes(t, "f.txt", b"x")], "is a file; give a directory"),
    # these were NotADirectoryError/PermissionError lines that named neither --out nor a fix
    ("out-under-a-file", lambda t: ["--out", str(Path(_bytes(t, "f.txt", b"x")) / "sub")],
     "cannot be created or written (Not a directory); give a writable directory"),
    ("out-under-proc", lambda t: ["--out", "/proc/self/hogwild-out"], "--out /proc/self/hogwild-out cannot be created"),
    ("out-empty", lambda t: ["--out", ""], "--out is empty; give a path (or omit --out for its default)"),
    ("dataset-empty", lambda t: ["--dataset", " "], "--dataset is empty; give a path"),  # was read as "."
    ("duplicate-seeds", lambda t: ["--seeds", "0", "0"], "--seeds repeats seed 0"),
    # a review: torch seeds a generator with -1 as with 2^64 - 1, so these reran the same units under two keys
    ("aliased-seeds", lambda t: ["--workers", "1", "--seeds", "-1", str(2**64 - 1)],
     "--seeds gives -1 and 18446744073709551615, which seed the same generators"),
    ("finisher-tokens-0", lambda t: ["--finisher-tokens", "0"], "--finisher-tokens must be >= 1; got 0"),
    ("collab-every-negative", lambda t: ["--collab-every", "-1"], "--collab-every must be >= 0 (0 disables"),
    ("temperature-negative", lambda t: ["--temperature", "-1"], "--temperature must be >= 0 (0 is greedy)"),
    ("top-p-above-1", lambda t: ["--top-p", "2"], "--top-p must be in (0, 1]; got 2.0"),
    ("budget-beyond-context", lambda t: ["--budgets", "64", "9000"],
     "--budgets 9000 cannot be spent: every tick adds a token to each worker's view and the model has 8192 positions"),
    ("finisher-beyond-context", lambda t: ["--finisher-tokens", "9000"], "--finisher-tokens 9000 is beyond the model's 8192"),
    ("device-cuda", lambda t: ["--device", "cuda:99"], "--device cuda:99: "),  # no CUDA here, or not 100 devices
    ("device-unknown", lambda t: ["--device", "foo"], "--device 'foo' is not a torch device"),
    ("model-missing", lambda t: ["--model", str(t / "no-model")], "does not exist"),
    ("threads-0", lambda t: ["--threads", "0"], "--threads must be >= 1; got 0"),
    ("threads-negative", lambda t: ["--threads", "-2"], "--threads must be >= 1; got -2"),
    ("threads-beyond-cores", lambda t: ["--threads", "100000"], "more than the"),
    ("unknown-builtin", lambda t: ["--dataset", "builtin:gsm8k"], "unknown built-in dataset"),
    ("field-on-builtin", lambda t: ["--field", "problem=q"], "--field applies to dataset files"),
    ("field-malformed", lambda t: ["--field", "problem"], "write KEY=COLUMN"),
    ("field-unknown-key", lambda t: ["--field", "question=q"], "write KEY=COLUMN"),
    ("field-missing-in-jsonl", lambda t: ["--dataset", _jsonl(t / "d.jsonl", GOOD), "--field", "answer=final"],
     "d.jsonl:1 has no field 'final' (--field answer=final); it has: id, problem, answer"),
    ("field-missing-in-parquet", lambda t: ["--dataset", _parquet(t / "d.parquet", GOOD), "--field", "problem=q"],
     "column 'q' (--field problem=q) is not in"),
    ("corrupt-parquet", lambda t: ["--dataset", _bytes(t, "d.parquet", b"PAR1 not really")],
     "is not a readable parquet file"),
    ("splits-without-split", lambda t: ["--dataset", _disk(t / "dd", {"train": GOOD, "test": GOOD})],
     "holds the splits train, test; choose one with --split"),
    ("unknown-split", lambda t: ["--dataset", _disk(t / "dd", {"train": GOOD}), "--split", "test"],
     "there is no split 'test'"),
    ("empty-split", lambda t: ["--dataset", _disk(t / "dd", {"train": GOOD, "test": []}), "--split", "test"],
     "split 'test' of"),
    ("split-of-a-file", lambda t: ["--dataset", _jsonl(t / "d.jsonl", GOOD), "--split", "test"],
     "--split applies to save_to_disk folders of several splits; "),
    ("split-of-a-builtin", lambda t: ["--split", "test"], "--split applies to save_to_disk folders of several splits, not"),
    ("split-of-one-dataset", lambda t: ["--dataset", _disk(t / "one", GOOD), "--split", "test"],
     "holds one dataset, not splits, so --split test does not apply"),
    ("field-missing-in-disk", lambda t: ["--dataset", _disk(t / "one", GOOD), "--field", "answer=solution"],
     "its columns are: id, problem, answer"),
    ("integer-kind-non-integer-gold", lambda t: ["--dataset", _jsonl(t / "d.jsonl", [{"problem": "P", "answer": "1/2"}]),
                                                 "--answer-kind", "integer"], "is not an integer"),
    ("resume-wrong-type", lambda t: _resume_dir(t, [json.dumps(_row()), json.dumps(_row(problem_id="b", correct="false"))]),
     'results.jsonl:2 is not a results row: \'correct\' is "false", not true or false'),
    ("resume-old-format", lambda t: _resume_dir(t, [json.dumps({k: v for k, v in _row().items() if k != "format"})]),
     "results.jsonl:1 is not a results row: it has row format 1"),
    ("resume-missing-field", lambda t: _resume_dir(t, [json.dumps({k: v for k, v in _row().items() if k != "budget"})]),
     "the field 'budget' is missing"),
    ("resume-not-json", lambda t: _resume_dir(t, ["{broken", json.dumps(_row())]), "results.jsonl:1 is not a results row"),
    ("resume-damaged-config", lambda t: _damaged_config(t), "config.json is damaged"),
    # found by a newcomer: each passed the up-front checks (and broke the folder, or ran the baseline first)
    ("sc-temperature-nan", lambda t: ["--workers", "2", "--sc-temperature", "nan"],
     "sc_temperature (--sc-temperature) must be a finite number > 0; got nan"),
    ("sc-temperature-inf", lambda t: ["--sc-temperature", "inf"], "(--sc-temperature) must be a finite number"),
    ("workers-beyond-1024", lambda t: ["--workers", "2000"], "workers (--workers) 2000 is more than the 1024"),
    # a review: with a budget whose bound passes the positions, a context warning came before this refusal
    ("workers-beyond-1024-long-budget", lambda t: ["--workers", "2000", "--budgets", "64"],
     "workers (--workers) 2000 is more than the 1024"),
    ("seed-beyond-2^64", lambda t: ["--workers", "2", "--seeds", "18446744073709551615"],
     "seed 18446744073709551615 (--seeds) is out of range"),
    ("field-null", lambda t: ["--dataset", _jsonl(t / "d.jsonl", [{"q": "1+1?", "sol": "2"}, {"q": "2+2?", "sol": None}]),
                              "--field", "problem=q", "--field", "answer=sol"],
     "d.jsonl:2: its 'sol' (--field answer=sol) is null; every problem needs its answer"),
    ("json-one-object", lambda t: ["--dataset", _bytes(t, "w.json", b'{\n "data": [{"problem": "1+1?", "answer": "2"}]\n}')],
     "w.json is one JSON object, not records (its records are under 'data'? write that list)"),
    ("json-pandas-columns", lambda t: ["--dataset", _bytes(t, "c.json", b'{"problem":{"0":"1+1?"},"answer":{"0":"2"}}')],
     "c.json is one JSON object, not records"),
    ("resume-gold-changed", lambda t: _resume_dir(t, [json.dumps(_row(gold="5"))]),
     "problem 'a' has the gold answer '5' (math) in the results in"),
    # an environment review: JSON can spell a lone surrogate, which no results file can hold as UTF-8
    ("surrogate-in-problem", lambda t: ["--dataset", _bytes(t, "s.jsonl", b'{"problem": "What is \\udce8 2?", "answer": "2"}\n')],
     "s.jsonl:1: its problem is not valid text: '\\udce8' at character 8 (a lone surrogate); fix the record"),
    ("surrogate-in-answer", lambda t: ["--dataset", _bytes(t, "s.jsonl", b'{"problem": "P", "answer": "2\\udce8"}\n')],
     "s.jsonl:1: its answer is not valid text"),
    ("surrogate-in-id", lambda t: ["--dataset", _bytes(t, "s.jsonl", b'{"id": "\\ud800", "problem": "P", "answer": "2"}\n')],
     "s.jsonl:1: its id is not valid text"),
]


@pytest.fixture
def no_model(monkeypatch):
    monkeypatch.setattr(hogwild_ref.models, "load", lambda *a, **k: pytest.fail("the model was loaded for bad input"))


@pytest.mark.parametrize("name,build,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_eval_input_is_refused_before_the_model_loads(name, build, needle, tmp_path, capsys, no_model, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out (eval-out/...) lands here
    argv = BASE + build(tmp_path)
    capsys.readouterr()  # what building the files printed (datasets' progress bars)
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "default-out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert needle in lines[0], lines[0]


def test_a_budget_past_the_models_positions_is_warned_before_the_model_loads(tmp_path, capsys, monkeypatch):
    def stop(*a: Any, **k: Any) -> Any:
        raise RuntimeError("stopped at the model")

    monkeypatch.setattr(hogwild_ref.models, "load", stop)
    # 4 workers x 2100 ticks + 24 finisher tokens pass the embedded SmolLM2's 8192 positions (its config.json)
    argv = BASE[:1] + ["--workers", "4", "--budgets", "2100", "--no-progress", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == ("warning: this run may reach about 8424 positions (prompt + workers x budget), beyond the "
                        "model's max_position_embeddings of 8192; quality degrades past it: lower the budget "
                        "(--budgets) or the number of workers"), lines
    assert lines[-1] == "error: RuntimeError: stopped at the model"
    assert main(argv[:-4] + ["2000", "--no-progress", "--out", str(tmp_path / "o")]) == 2  # 4 x 2000 + 24: no warning
    assert [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning")] == []
    import hogwild_ref.evaluation.shards as shards

    monkeypatch.setattr(shards, "place_from_env", lambda env: shards.Place(1, 2, 1, 2))  # under torchrun only rank 0 says it
    assert main(argv) == 2
    assert [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning")] == []


def test_the_context_warning_is_said_once_for_a_whole_evaluation(tmp_path, capsys, monkeypatch, smollm_tokenizer):
    from hogwild_ref.models import tiny_model

    model = tiny_model("llama", seed=2, vocab_size=len(smollm_tokenizer), max_position_embeddings=16)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(model.config.to_json_string())  # what the CLI reads before loading
    monkeypatch.setattr(hogwild_ref.models, "load", lambda *a, **k: (model, smollm_tokenizer))
    argv = ["eval", "--model", str(tmp_path / "model"), "--dataset", "builtin:arith-2", "--limit", "1", "--workers", "2",
            "--budgets", "4", "8", "--finisher-tokens", "3", "--prompts", "compact", "--collab-every", "0",
            "--no-progress", "--threads", "1", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    # 2 workers x 8 ticks + 3 finisher tokens pass 16 positions; the runners (1 worker, 2 workers, self-consistency),
    # each past them with its prompt too, do not say it again
    assert [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning")] == [
        "warning: this run may reach about 19 positions (prompt + workers x budget), beyond the model's "
        "max_position_embeddings of 16; quality degrades past it: lower the budget (--budgets) or the number of workers"]


def test_an_interrupted_evaluation_counts_the_rows_of_its_file_and_shards(tmp_path, capsys):
    from hogwild_ref.cli.eval import _say_interrupted
    from hogwild_ref.evaluation.shards import shard_name

    _jsonl(tmp_path / "results.jsonl", [_row(), _row(budget=8)])
    _jsonl(tmp_path / shard_name(1, 2), [_row(budget=8), _row(problem_id="b")])  # one key in both files
    _say_interrupted(tmp_path)
    assert capsys.readouterr().err.strip() == (f"interrupted: 3 rows kept in {tmp_path / 'results.jsonl'} and 1 rank "
                                               "shard(s) beside it; rerun the same command to resume (the batch that "
                                               "was running is run again)")
    # a first run under torchrun: no results.jsonl yet, only the shards (it was named although it did not exist)
    (tmp_path / "results.jsonl").unlink()
    _jsonl(tmp_path / shard_name(0, 2), [_row()])
    _say_interrupted(tmp_path)
    assert capsys.readouterr().err.strip() == (f"interrupted: 3 rows kept in 2 rank shard(s) in {tmp_path}; rerun the "
                                               "same command to resume (the batch that was running is run again)")
    # one process stopped before its first row: no shards, no results file yet (it was named, "0 rows kept in" it)
    for shard in tmp_path.glob("results.rank*"):
        shard.unlink()
    _say_interrupted(tmp_path)
    assert capsys.readouterr().err.strip() == (f"interrupted before any problem's rows were complete: nothing kept in "
                                               f"{tmp_path} (a batch's rows are written when it ends); rerun the same "
                                               "command to start again")


def test_the_case_table_is_large():
    assert len(CASES) >= 25


def test_an_out_directory_in_use_names_the_holder(tmp_path, capsys, no_model):
    out = tmp_path / "out"
    out.mkdir()
    holder = ("import fcntl, os, sys\nf = open(sys.argv[1], 'a+')\nfcntl.flock(f.fileno(), fcntl.LOCK_EX)\n"
              "f.write(str(os.getpid())); f.flush()\nprint('held', flush=True)\nsys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(out / ".lock")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        assert main(BASE + ["--limit", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: {out} is in use by another evaluation (pid {proc.pid}); wait for it to end, or use " \
                      "another --out directory"
    finally:
        proc.communicate("")
    # once the holder has exited, the OS has dropped its lock: the same checks pass
    from hogwild_ref.evaluation.results import OutDirLock

    with OutDirLock(out):
        assert (out / ".lock").read_text().strip() == str(__import__("os").getpid())
    # released, it names no holder: a later refusal by another tool's lock named this finished process
    assert (out / ".lock").read_text() == ""


def test_summary_files_are_replaced_whole_or_not_at_all(tmp_path):
    """summary.md/json, the plots and config.json were written in place: a kill meanwhile left half a
    file. Now a write that stops leaves the old file and no temporary beside it."""
    from hogwild_ref.evaluation.results import replace_file

    path = tmp_path / "summary.md"
    path.write_text("old\n")

    def stops_halfway(tmp):
        tmp.write_text("new, but only ha")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_file(path, stops_halfway)
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.md"]
    replace_file(path, lambda tmp: tmp.write_text("new\n"))
    assert path.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.md"]


def test_a_changed_setting_is_refused_before_the_model_loads(tmp_path, capsys, no_model):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"dataset": "builtin:arith-3"}))
    (out / "results.jsonl").write_text(json.dumps(_row()) + "\n")
    assert main(BASE + ["--out", str(out)]) == 2
    assert "dataset: 'builtin:arith-3' there, 'builtin:arith' now" in capsys.readouterr().err


def test_a_run_that_kept_no_row_binds_no_setting(tmp_path):
    """An evaluation interrupted before any row (``nothing kept``) leaves its config.json: a rerun with
    other settings is not refused, and records its own."""
    from hogwild_ref.evaluation import EvalConfig
    from hogwild_ref.evaluation.runner import _check_identity, check_inputs

    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(EvalConfig(dataset="builtin:arith-3").identity()))
    (out / "results.jsonl").write_text("")
    cfg = EvalConfig(dataset="builtin:arith", answer_kind="math")
    check_inputs(cfg, out)  # no error
    _check_identity(out / "config.json", cfg)
    assert json.loads((out / "config.json").read_text())["dataset"] == "builtin:arith"


def test_a_resumed_row_must_come_from_the_same_text_and_checker(tmp_path):
    from hogwild_ref.evaluation.runner import check_inputs, problem_hash
    from hogwild_ref.evaluation.datasets import Problem

    cfg, out = _resumable(tmp_path)
    same = problem_hash(Problem("a", "1+1?", "2"))
    (out / "results.jsonl").write_text(json.dumps(_row(problem_hash=same)) + "\n")
    check_inputs(cfg, out)  # the same text, gold and checker: resumes
    _jsonl(tmp_path / "d.jsonl", [{"id": "a", "problem": "1+1 = ?", "answer": "2"}, GOOD[1]])  # edited, same gold
    with pytest.raises(ValueError, match="problem 'a' has another text in the dataset now"):
        check_inputs(cfg, out)
    _jsonl(tmp_path / "d.jsonl", GOOD)
    (out / "results.jsonl").write_text(json.dumps(_row(checker="math-verify==0.7.0")) + "\n")
    with pytest.raises(ValueError, match="checked by math-verify==0.7.0, and this installation has math-verify=="):
        check_inputs(cfg, out)


def test_the_same_dataset_typed_another_way_resumes(tmp_path, monkeypatch):
    from hogwild_ref.evaluation import EvalConfig
    from hogwild_ref.evaluation.runner import _check_identity

    _jsonl(tmp_path / "d.jsonl", GOOD)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.jsonl").write_text(json.dumps(_row()) + "\n")
    _check_identity(tmp_path / "out" / "config.json", EvalConfig(dataset="d.jsonl"))
    _check_identity(tmp_path / "out" / "config.json", EvalConfig(dataset="./sub/../d.jsonl"))  # no error: one file
    _check_identity(tmp_path / "out" / "config.json", EvalConfig(dataset=str(tmp_path / "d.jsonl")))  # nor here
    with pytest.raises(ValueError, match="dataset: 'd.jsonl' there, 'e.jsonl' now"):
        _check_identity(tmp_path / "out" / "config.json", EvalConfig(dataset="e.jsonl"))


def test_a_results_file_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path, capsys, no_model):
    argv = _resume_dir(tmp_path, [])
    (tmp_path / "out" / "results.jsonl").unlink()
    (tmp_path / "out" / "results.jsonl").mkdir()  # (a file made read-only stays writable to root, as tests may run)
    assert main(["eval", *argv, "--threads", "1"]) == 2
    assert "results.jsonl cannot be written (Is a directory); make it writable" in capsys.readouterr().err


# ---------------------------------------------------------------------- what must load
def test_parquet_in_the_gsm8k_schema(tmp_path):
    path = _parquet(tmp_path / "gsm8k-test.parquet", [
        {"question": "Q1", "answer": "2 + 2 = 4\n#### 4"},
        {"question": "Q2", "answer": "so 1,000 + 200\n#### 1,200"},
    ])
    ps = load_dataset(path)
    assert [(p.id, p.problem, p.answer, p.kind) for p in ps] == [
        ("gsm8k-test-0", "Q1", "4", "integer"), ("gsm8k-test-1", "Q2", "1200", "integer")]


def test_save_to_disk_folders_in_the_math500_and_aime_schemas(tmp_path):
    math500 = _disk(tmp_path / "math500", [
        {"problem": "P1", "solution": "... \\boxed{\\frac{1}{2}}", "answer": "\\frac{1}{2}", "unique_id": "test/a/1.json"},
        {"problem": "P2", "solution": "...", "answer": "(1,2]", "unique_id": "test/b/2.json"}])
    assert [(p.id, p.answer, p.kind) for p in load_dataset(math500)] == [
        ("test/a/1.json", "\\frac{1}{2}", "math"), ("test/b/2.json", "(1,2]", "math")]
    aime = _disk(tmp_path / "aime_2024", {"train": [{"id": 60, "problem": "P", "solution": "S", "answer": "033"},
                                                    {"id": 61, "problem": "Q", "solution": "S", "answer": "204"}]})
    ps = load_dataset(aime)  # one split: taken without --split; AIME answers compare as integers
    assert [(p.id, p.answer, p.kind) for p in ps] == [("60", "033", "integer"), ("61", "204", "integer")]
    dd = _disk(tmp_path / "dd", {"train": GOOD[:1], "test": GOOD[1:]})
    assert [p.id for p in load_dataset(dd, split="test")] == ["b"]


def test_limo_jsonl_with_a_bom_and_other_schemas_by_field(tmp_path):
    limo = tmp_path / "limo.jsonl"
    limo.write_bytes("\ufeff".encode() + b'{"question": "Q", "solution": "long \\\\boxed{9}", "answer": "8"}\n')
    (p,) = load_dataset(str(limo))  # a byte-order mark is accepted
    assert (p.problem, p.answer, p.kind) == ("Q", "8", "math")
    other = _parquet(tmp_path / "other.parquet", [{"uid": "u1", "prompt": "P", "target": 18.0}])
    (q,) = load_dataset(other, fields={"problem": "prompt", "answer": "target", "id": "uid"})
    assert (q.id, q.problem, q.answer) == ("u1", "P", "18")  # a float column's 18.0 is the integer 18


def test_a_gold_answer_given_as_a_list(tmp_path):
    # OlympiadBench's final_answer: a list of the parts of one answer (a one-item list is that item)
    path = _jsonl(tmp_path / "ob.jsonl", [{"id": 1, "question": "Q", "final_answer": ["$x=3$"]},
                                          {"id": 2, "question": "R", "final_answer": ["1", "2"]}])
    a, b = load_dataset(path)
    assert (a.answer, b.answer) == ("$x=3$", "1, 2")
    from hogwild_ref.evaluation.answers import answers_match

    assert answers_match("2, 1", b.answer) and not answers_match("1", b.answer)  # both solutions, in any order


def test_the_lock_is_reentrant_and_per_rank_under_torchrun(tmp_path, monkeypatch):
    import fcntl

    from hogwild_ref.evaluation.results import OutDirLock

    with OutDirLock(tmp_path), OutDirLock(tmp_path):  # the checks, then the run, in one process
        with open(tmp_path / ".lock") as f, pytest.raises(BlockingIOError):  # held against any other open file
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert OutDirLock(tmp_path).name == ".lock.rank1"  # ranks of one evaluation share the directory
    monkeypatch.setenv("RANK", "0")
    assert OutDirLock(tmp_path).name == ".lock"  # rank 0 holds the directory's own lock: another evaluation waits


# ---------------------------------------------------------------------- found by a newcomer (datasets, resume)
def test_json_lines_with_line_separators_inside_strings(tmp_path):
    """U+2028, U+2029 and U+0085 are valid inside JSON strings and written raw by json.dumps(ensure_ascii=False);
    str.splitlines() split records (and the results file's rows) at them."""
    text = "Line one\u2028line two\u0085and three\u2029: what is 1+1?"
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"id": "a\u2028b", "problem": text, "answer": "2"}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    (p,) = load_dataset(str(path))
    assert p.problem == text and p.id == "a\u2028b"
    from hogwild_ref.evaluation.results import parse_rows

    row = _row(problem_id="a\u2028b")
    assert parse_rows(json.dumps(row, ensure_ascii=False) + "\n", tmp_path / "results.jsonl") == [row]


@pytest.mark.parametrize("value, gold", [(1e-5, "0.00001"), (1.23e-05, "0.0000123"), (1.5e23, str(int(1.5e23))), (2.0**60, "1152921504606846976"),
                                         (5.0, "5"), (-0.0, "0"), (2.5, "2.5")])
def test_float_gold_answers_are_plain_decimals(tmp_path, value, gold):
    """1e-05 as a gold answer: math-verify does not equate it with a prediction of 0.00001."""
    (p,) = load_dataset(_jsonl(tmp_path / "d.jsonl", [{"problem": "P", "answer": value}]))
    assert p.answer == gold
    if value == 1e-5:
        assert check_answer("0.00001", p.answer, p.kind).correct


def test_decimal_and_class_label_answers(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from decimal import Decimal

    pq.write_table(pa.table({"problem": ["P"], "answer": pa.array([Decimal("1.50")], pa.decimal128(5, 2))}),
                   tmp_path / "dec.parquet")
    assert load_dataset(str(tmp_path / "dec.parquet"))[0].answer == "1.5"
    features = datasets.Features({"problem": datasets.Value("string"), "answer": datasets.ClassLabel(names=["7", "9"])})
    datasets.Dataset.from_dict({"problem": ["a", "b"], "answer": [1, 0]}, features=features).save_to_disk(tmp_path / "cl")
    assert [p.answer for p in load_dataset(str(tmp_path / "cl"))] == ["9", "7"]  # the labels, not the indices
    # -1 is datasets' "no label": a missing answer, refused, never the gold answer "-1"
    datasets.Dataset.from_dict({"problem": ["a", "b"], "answer": [1, -1]}, features=features).save_to_disk(tmp_path / "nl")
    with pytest.raises(ValueError, match="row 1 has no answer"):
        load_dataset(str(tmp_path / "nl"))


def test_a_dataset_dict_with_an_empty_split_reads_its_other_splits(tmp_path):
    import datasets

    # datasets saves an empty split without data files and cannot load the whole dict back
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"problem": ["P"], "answer": ["1"]}),
                          "test": datasets.Dataset.from_dict({"problem": [], "answer": []})}).save_to_disk(tmp_path / "dd")
    assert [p.answer for p in load_dataset(str(tmp_path / "dd"), split="train")] == ["1"]
    with pytest.raises(ValueError, match=r"^split 'test' of .*dd is empty; choose another split \(train, test\)$"):
        load_dataset(str(tmp_path / "dd"), split="test")


@pytest.mark.parametrize("name, head, needle", [
    ("d.pq", b"PAR1\x15\x04", "is a parquet file: name it .parquet"),
    ("d.jsonl.gz", b"\x1f\x8b\x08\x00", "is gzip-compressed: decompress it first"),
    ("data-00000-of-00001.arrow", b"\xff\xff\xff\xff\x08\x01", "is an Arrow stream"),
])
def test_binary_files_are_named_for_what_they_are(tmp_path, name, head, needle):
    (tmp_path / name).write_bytes(head + bytes(range(256)))
    with pytest.raises(ValueError, match=needle):
        load_dataset(str(tmp_path / name))


def test_a_missing_dataset_is_one_line_without_the_exception_name(tmp_path, capsys, no_model):
    assert main(["eval", "--dataset", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: dataset '{tmp_path / 'nope.jsonl'}' does not exist")


def test_ids_of_a_numeric_column_with_nulls(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # pandas writes an integer column with a null as float: 1.0, NaN, 3.0
    pq.write_table(pa.table({"id": [1.0, float("nan"), 3.0], "problem": ["a", "b", "c"], "answer": ["1", "2", "3"]}),
                   tmp_path / "d.parquet")
    assert [p.id for p in load_dataset(str(tmp_path / "d.parquet"))] == ["1", "d-1", "3"]


def test_integer_kind_from_a_word_of_the_path_and_grouped_integer_gold(tmp_path, monkeypatch):
    records = [{"problem": "P", "answer": "3"}]
    (tmp_path / "jaime").mkdir()
    (tmp_path / "aime24").mkdir()
    assert load_dataset(_jsonl(tmp_path / "jaime" / "x.jsonl", records))[0].kind == "math"  # a name, not AIME
    assert load_dataset(_jsonl(tmp_path / "aime24" / "x.jsonl", records))[0].kind == "integer"
    # the same file typed from inside its folder: the kind does not depend on the working directory
    monkeypatch.chdir(tmp_path / "aime24")
    assert load_dataset("x.jsonl")[0].kind == "integer"
    assert load_dataset("./x.jsonl")[0].kind == "integer"
    (tmp_path / "store").mkdir()  # a link named for AIME keeps its name (found in review)
    _jsonl(tmp_path / "store" / "blob1.jsonl", records)
    (tmp_path / "aime25.jsonl").symlink_to(tmp_path / "store" / "blob1.jsonl")
    assert load_dataset(str(tmp_path / "aime25.jsonl"))[0].kind == "integer"
    monkeypatch.chdir(tmp_path)
    (p,) = load_dataset(_jsonl(tmp_path / "g.jsonl", [{"problem": "P", "answer": "1,234"}]), kind="integer")
    assert p.kind == "integer" and check_answer("1234", p.answer, p.kind).correct


def test_a_gold_integer_written_with_a_zero_fraction_is_an_integer(tmp_path):
    """Spec §13.1 reads ``18.0`` as 18, but a review found an AIME file with one such gold answer made
    every problem ``math``, GSM8k's ``#### 5.0`` was ``math`` and ``--answer-kind integer`` refused it."""
    (tmp_path / "aime24").mkdir()
    records = [{"problem": "P", "answer": "33"}, {"problem": "Q", "answer": "5.0"}]
    assert [p.kind for p in load_dataset(_jsonl(tmp_path / "aime24" / "x.jsonl", records))] == ["integer", "integer"]
    assert [p.kind for p in load_dataset(_jsonl(tmp_path / "x.jsonl", records), kind="integer")] == ["integer"] * 2
    (gsm,) = load_dataset(_jsonl(tmp_path / "g.jsonl", [{"question": "P", "answer": "so 5 #### 5.0"}]))
    assert gsm.kind == "integer" and check_answer("5", gsm.answer, gsm.kind).correct


def test_a_null_id_with_field_takes_the_default_id(tmp_path):
    problems = load_dataset(_jsonl(tmp_path / "d.jsonl", [{"uid": "a", "q": "1+1?", "a": "2"}, {"uid": None, "q": "2+2?", "a": "4"}]),
                            fields={"id": "uid", "problem": "q", "answer": "a"})
    assert [p.id for p in problems] == ["a", "d-1"]


def test_summary_means_leave_out_rows_that_crashed():
    from hogwild_ref.evaluation.summary import summarise

    good = _row(ticks=8, tokens_per_worker=[8, 8], seconds=2.0)
    crashed = _row(problem_id="b", ticks=None, tokens_per_worker=None, seconds=None, error="RuntimeError: x", correct=False)
    (cell,) = summarise([good, crashed])
    assert cell.n == 2 and cell.errors == 1 and cell.correct == int(good["correct"])
    assert (cell.mean_ticks, cell.mean_tokens, cell.mean_seconds) == (8.0, 16.0, 2.0)


def test_integer_kind_on_a_builtin_set_warns_and_seeds_are_bounded_by_what_they_seed():
    """--answer-kind integer on builtin:arith was recorded silently by earlier versions: a folder made so
    must still resume, so it is a warning. Seeds: self-consistency seeds seed * W + i only when it runs."""
    from hogwild_ref.evaluation import EvalConfig

    with pytest.warns(UserWarning, match="does not change built-in sets"):
        problems = load_dataset("builtin:arith", 2, kind="integer")
    assert [p.kind for p in problems] == ["integers", "integers"]
    EvalConfig(seeds=(2**62,), workers=(4,), self_consistency=False)  # generators seeded up to 2^62 + 3
    with pytest.raises(ValueError, match=r"seed 4611686018427387904 \(--seeds\) is out of range"):
        EvalConfig(seeds=(2**62,), workers=(4,))  # self-consistency seeds 4 * 2^62 + i


def test_the_library_resume_refuses_a_changed_gold_before_any_unit_runs(tmp_path):
    """run_eval (library callers do not go through check_inputs) meets the same refusal as the command."""
    from hogwild_ref.evaluation import run_eval

    cfg, out = _resumable(tmp_path)
    (out / "results.jsonl").write_text(json.dumps(_row(gold="5")) + "\n")
    with pytest.raises(ValueError, match="problem 'a' has the gold answer '5'"):
        run_eval(None, None, cfg, out, progress=False)  # no model: refused before it is used


def test_a_gold_integer_with_the_typeset_minus_is_an_integer(tmp_path):
    """Spec §13.1 writes U+2212 as ``-``, and the integer kind compared ``−5`` and ``-5`` as equal, but a
    GSM8k gold ``#### −5`` was read as ``math`` (the kind test took ASCII signs only)."""
    (gsm,) = load_dataset(_jsonl(tmp_path / "g.jsonl", [{"question": "P", "answer": "so #### \u22125"}]))
    assert gsm.kind == "integer" and check_answer("-5", gsm.answer, gsm.kind).correct
    (tmp_path / "aime24").mkdir()
    records = [{"problem": "P", "answer": "33"}, {"problem": "Q", "answer": "\u221212"}]
    assert [p.kind for p in load_dataset(_jsonl(tmp_path / "aime24" / "x.jsonl", records))] == ["integer", "integer"]


def test_a_folder_that_takes_no_new_file_is_refused_before_the_model_loads(tmp_path, capsys, no_model, monkeypatch):
    """A distributed probe: a folder that refused new files (``chattr +i``; root ignores permissions)
    was found only when a rank's shard was first written, after the model loaded and a batch ran, with
    a raw PermissionError from each rank. The check now makes (and removes) a file there first."""
    import errno

    import hogwild_ref.evaluation.runner as runner

    argv = _resume_dir(tmp_path, [])
    (tmp_path / "out" / "results.jsonl").unlink()
    made = []

    def refuse(*args, **kwargs):
        made.append(kwargs.get("dir"))
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(runner.tempfile, "mkstemp", refuse)
    assert main(["eval", *argv, "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "does not take new files (Operation not permitted); make it writable, or use another --out" in err, err
    assert made and all(d == tmp_path / "out" for d in made)
