"""Many processes, one result (Spec §13.6): the work split, the shards and their merge, and torchrun end to end.

Oracles: properties checked by brute force (every unit owned once, loads against the largest cost),
rows written by hand, and — for the runs — one uninterrupted single-process evaluation of the same
settings: two gloo ranks under torchrun, a rank killed midway and the rerun, and a change of the number
of processes between runs must all end with its rows, each key once.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import hogwild_ref
from hogwild_ref.evaluation import EvalConfig, run_eval
from hogwild_ref.evaluation.shards import (
    Place,
    assign,
    cpu_threads,
    merge_rows,
    place_from_env,
    rank_device,
    read_rows,
    shard_name,
    shard_paths,
    write_rows,
)


# ---------------------------------------------------------------------- the split (pure)
@given(st.lists(st.integers(1, 8), max_size=60), st.integers(1, 9))
def test_assign_gives_every_unit_to_one_rank_balanced_and_the_same_every_time(costs, world):
    owners = assign(costs, world)
    assert len(owners) == len(costs) and all(0 <= r < world for r in owners)  # covering, and disjoint by construction
    shards = [[i for i, r in enumerate(owners) if r == rank] for rank in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(len(costs)))
    loads = [sum(costs[i] for i in s) for s in shards]
    assert max(loads) - min(loads) <= max(costs, default=0)
    assert assign(list(costs), world) == owners  # a pure function of the plan and the world size


@given(st.integers(1, 40), st.integers(1, 6))
def test_assign_splits_equal_units_round_robin(n, world):
    owners = assign([3] * n, world)
    assert owners == [i % world for i in range(n)]


def test_assign_rejects_an_empty_world():
    with pytest.raises(ValueError, match="world size"):
        assign([1], 0)


# ---------------------------------------------------------------------- the environment (pure)
def test_place_from_torchrun_environment():
    assert place_from_env({}) == Place(0, 1, 0, 1)
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    assert place_from_env(env) == Place(5, 8, 1, 4)
    with pytest.raises(ValueError, match="RANK=8 WORLD_SIZE=8"):
        place_from_env(env | {"RANK": "8"})
    with pytest.raises(ValueError, match="LOCAL_RANK='x' is not an integer"):
        place_from_env(env | {"LOCAL_RANK": "x"})


def test_rank_device_and_threads():
    one, second = Place(), Place(rank=3, world=4, local_rank=1, local_world=2)
    assert rank_device(None, one, 8) is None and rank_device("cuda:3", one, 8) == "cuda:3"
    assert rank_device(None, second, 2) == "cuda:1" and rank_device("cuda", second, 2) == "cuda:1"
    assert rank_device(None, second, 0) == "cpu" and rank_device("cpu", second, 2) == "cpu"
    with pytest.raises(ValueError, match="--nproc-per-node 1"):
        rank_device(None, second, 1)
    with pytest.raises(ValueError, match="pass --device cuda"):
        rank_device("cuda:0", second, 2)
    assert cpu_threads(16, second, None) == 8 and cpu_threads(16, second, 3) == 3
    assert cpu_threads(16, one, None) is None and cpu_threads(1, second, None) == 1


# ---------------------------------------------------------------------- shard files and the merge (pure)
def _row(pid, budget=8, error=None, answer="1", method="hogwild"):
    """A complete results row of format 2 (Spec §13.5)."""
    return {"format": 2, "method": method, "problem_id": pid, "workers": 2, "seed": 0, "budget": budget, "gold": "1",
            "answer": answer, "correct": answer == "1", "ticks": budget, "finisher_ticks": 0, "tokens_per_worker": [budget] * 2,
            "seconds": 1.0, "error": error, "checker": "math-verify==0.9.0", "check": "equal strings", "kind": "math",
            "unit_seconds": 1.0, "unit_tokens": 2 * budget}


def test_shard_paths_are_ordered_by_world_then_rank(tmp_path):
    for r, n in [(10, 12), (2, 12), (1, 3), (0, 3)]:
        (tmp_path / shard_name(r, n)).write_text("")
    (tmp_path / "results.jsonl").write_text("")
    (tmp_path / "results.rank1-of-3.jsonl.tmp").write_text("")
    names = [p.name for p in shard_paths(tmp_path)]
    assert names == ["results.rank0-of-3.jsonl", "results.rank1-of-3.jsonl", "results.rank2-of-12.jsonl",
                     "results.rank10-of-12.jsonl"]
    assert shard_paths(tmp_path / "missing") == []


def test_read_rows_skips_a_cut_line_and_leaves_the_file_alone(tmp_path):
    path = tmp_path / shard_name(1, 2)
    text = json.dumps(_row("a")) + "\n" + json.dumps(_row("b"))[:20]
    path.write_text(text)
    assert [r["problem_id"] for r in read_rows(path)] == ["a"]
    assert path.read_text() == text  # another rank's file: read, never truncated
    assert read_rows(tmp_path / "none.jsonl") == []


@pytest.mark.parametrize("bad", ["not json", json.dumps({"format": 2, "method": "hogwild"}),
                                 json.dumps({**_row("x"), "correct": "false"})])
def test_read_rows_refuses_a_complete_line_that_is_not_a_row(tmp_path, bad):
    """A shard is resumed like results.jsonl (Spec §13.5): a complete line that is not a valid row is named."""
    path = tmp_path / shard_name(0, 2)
    path.write_text(json.dumps(_row("a")) + "\n" + bad + "\n")
    with pytest.raises(ValueError, match=f"{shard_name(0, 2)}:2 is not a results row"):
        read_rows(path)


def test_merge_keeps_one_row_per_key_in_plan_order():
    merged_file = [_row("a", error="boom"), _row("b", answer="old"), _row("z")]
    shard0 = [_row("b", answer="7"), _row("a", answer="5")]  # a retried error: the row without error wins
    shard1 = [_row("c", error="x"), _row("c", answer="3")]  # within one file the later row wins
    order = [("hogwild", p, 2, 0, 8) for p in ("c", "b", "a")]
    rows = merge_rows([merged_file, shard0, shard1], order)
    assert [(r["problem_id"], r["answer"], r["error"]) for r in rows] == [
        ("c", "3", None), ("b", "old", None), ("a", "5", None), ("z", "1", None)]  # equal standing: first source stays
    assert merge_rows([[_row("q", error="e1")], [_row("q", error="e2")]])[0]["error"] == "e1"


def test_write_rows_replaces_the_file(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text("old\n")
    write_rows(path, [_row("a"), _row("b")])
    assert [json.loads(x)["problem_id"] for x in path.read_text().splitlines()] == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]


# ---------------------------------------------------------------------- runs of a tiny model
BASE = dict(dataset="builtin:arith-2", workers=(2,), budgets=(3, 6), limit=3, batch=2, prompts="compact",
            finisher_tokens=3, collab_every=None)
CLI = ["eval", "--dataset", "builtin:arith-2", "--workers", "2", "--budgets", "3", "6", "--limit", "3", "--batch", "2",
       "--prompts", "compact", "--finisher-tokens", "3", "--collab-every", "0", "--threads", "1", "--no-progress"]
UNITS = 9  # 3 problems x (Hogwild W=1, W=2, self-consistency W=2)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm_tokenizer):
    """A tiny random llama saved with the SmolLM2 tokenizer: what ``--model DIR`` loads in every rank."""
    from hogwild_ref.models import tiny_model

    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", seed=11, vocab_size=len(smollm_tokenizer)).save_pretrained(path)
    smollm_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference(tiny_dir, tmp_path_factory):
    """Rows of one uninterrupted single-process run, by key."""
    from hogwild_ref.models import load

    model, tok = load(str(tiny_dir))
    report = run_eval(model, tok, EvalConfig(**BASE), tmp_path_factory.mktemp("single"), progress=False, plot=False)
    assert len(report.rows) == 2 * UNITS
    return {_key(r): _content(r) for r in report.rows}


def _key(r):
    return (r["method"], r["problem_id"], r["workers"], r["seed"], r["budget"])


def _content(r):
    """A row without its wall-clock time and batch size (which depends on how the units were split)."""
    return {k: v for k, v in r.items() if k not in ("seconds", "batch", "unit_seconds")}  # timings


def _unit(r):
    return _key(r)[:4]


def _merged(out: Path):
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    keys = [_key(r) for r in rows]
    assert len(keys) == len(set(keys)), "a key appears twice in the merged results"
    return {k: _content(r) for k, r in zip(keys, rows)}


class _Rank:
    """One rank of a run of ``world`` processes, played in this process one after the other; the other ranks
    report ``others`` at the end (default: they ran nothing)."""

    def __init__(self, rank, world, others=None):
        self.rank, self.world = rank, world
        self.others = others or [0] * (world - 1)

    def agree(self, step):
        return step()

    def gather(self, value):
        return [value, *self.others]


def test_a_changed_number_of_processes_resumes_every_shard(tiny_dir, reference, tmp_path):
    """Ranks 1 and 2 of 3 finish, rank 0 dies before its first row; one process resumes: it runs exactly the
    units no shard holds, merges the shards into results.jsonl and removes them."""
    from hogwild_ref.models import load

    model, tok = load(str(tiny_dir))
    cfg = EvalConfig(**BASE)
    ran: dict[int, list] = {1: [], 2: [], 0: []}
    for rank in (1, 2):
        run_eval(model, tok, cfg, tmp_path, progress=False, plot=False, group=_Rank(rank, 3),
                 on_unit=lambda u, r=rank: ran[r].append((u.method, u.problem.id, u.workers, u.seed)))
    assert [p.name for p in shard_paths(tmp_path)] == [shard_name(1, 3), shard_name(2, 3)]
    assert ran[1] and ran[2] and not set(ran[1]) & set(ran[2])
    for rank in (1, 2):  # each shard holds its own rank's units, both budgets of each
        rows = read_rows(tmp_path / shard_name(rank, 3))
        assert sorted({_unit(r) for r in rows}) == sorted(ran[rank]) and len(rows) == 2 * len(ran[rank])
        assert all(_content(r) == reference[_key(r)] for r in rows)
    report = run_eval(model, tok, cfg, tmp_path, progress=False, plot=False,
                      on_unit=lambda u: ran[0].append((u.method, u.problem.id, u.workers, u.seed)))
    assert len(ran[0]) + len(ran[1]) + len(ran[2]) == UNITS and not set(ran[0]) & (set(ran[1]) | set(ran[2]))
    assert report.ran_units == len(ran[0]) and report.skipped_units == UNITS - len(ran[0])
    assert _merged(tmp_path) == reference
    assert shard_paths(tmp_path) == [] and {_key(r) for r in report.rows} == set(reference)
    assert run_eval(model, tok, cfg, tmp_path, progress=False, plot=False).ran_units == 0


def test_rank_zero_of_two_merges_the_shards_when_the_other_rank_is_done(tiny_dir, reference, tmp_path):
    from hogwild_ref.models import load

    model, tok = load(str(tiny_dir))
    cfg = EvalConfig(**BASE)
    other = run_eval(model, tok, cfg, tmp_path, progress=False, plot=False, group=_Rank(1, 2))
    assert other.cells == [] and not (tmp_path / "summary.md").exists()  # only rank 0 writes the summary
    report = run_eval(model, tok, cfg, tmp_path, progress=False, plot=False, group=_Rank(0, 2))
    assert other.ran_units + report.ran_units == UNITS and other.ran_units >= 3 and report.ran_units >= 3
    assert _merged(tmp_path) == reference and shard_paths(tmp_path) == []
    assert "| Hogwild, 2 workers | 6 | 3 |" in (tmp_path / "summary.md").read_text()


# ---------------------------------------------------------------------- torchrun, two gloo processes
_no_torchrun = pytest.mark.skipif(
    importlib.util.find_spec("torch.distributed.run") is None or sys.platform == "win32",
    reason="torchrun (torch.distributed.run) with gloo is not available here",
)


def needs_torchrun(test):
    """A slow test that starts torchrun; skipped where torchrun is missing."""
    return pytest.mark.slow(_no_torchrun(test))

#: Run as torchrun's script: the CLI with a fault on rank 1 (``EVAL_FAULT``): ``kill`` SIGKILLs the rank
#: right after its first rows are on disk; ``fail`` makes its model load raise.
FAULTY = """
import os, signal, sys
import hogwild_ref.cli.eval as cli_eval
from hogwild_ref.evaluation.results import ResultsLog
from hogwild_ref.cli import main

fault, rank1 = os.environ["EVAL_FAULT"], os.environ.get("RANK") == "1"
append = ResultsLog.append
def killed_after_first_rows(self, rows):
    append(self, rows)
    if fault == "kill" and rank1:
        os.kill(os.getpid(), signal.SIGKILL)
ResultsLog.append = killed_after_first_rows
load = cli_eval._load
def failing_load(args):
    if fault == "fail" and rank1:
        raise RuntimeError("no memory left on this GPU")
    return load(args)
cli_eval._load = failing_load
sys.exit(main(sys.argv[1:]))
"""


def _torchrun(args, cwd, *, script=None, fault=None, timeout=300):
    src = str(Path(hogwild_ref.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    if fault:
        env["EVAL_FAULT"] = fault
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [str(script)] if script else ["-m", "hogwild_ref"]
    proc = subprocess.run(cmd + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@needs_torchrun
def test_two_ranks_under_torchrun_give_the_rows_of_one_process(tiny_dir, reference, tmp_path):
    out = tmp_path / "out"
    rc, stdout, stderr = _torchrun(CLI + ["--model", str(tiny_dir), "--out", str(out)], tmp_path)
    assert rc == 0, stderr[-3000:]
    assert _merged(out) == reference
    assert shard_paths(out) == [] and (out / "summary.md").is_file() and (out / "accuracy.png").is_file()
    assert stdout.count("| Hogwild, 2 workers | 6 | 3 |") == 1  # the summary, printed by rank 0 only
    assert re.search(rf"\b{UNITS} units run, 0 already in", stderr)


@needs_torchrun
def test_a_killed_rank_keeps_its_finished_rows_and_the_rerun_completes(tiny_dir, reference, tmp_path):
    out = tmp_path / "out"
    script = tmp_path / "faulty.py"
    script.write_text(FAULTY)
    args = CLI + ["--model", str(tiny_dir), "--out", str(out)]
    rc, _, stderr = _torchrun(args, tmp_path, script=script, fault="kill")
    assert rc != 0
    assert not (out / "results.jsonl").exists()  # rank 0 never merged: the run did not end
    killed = read_rows(out / shard_name(1, 2))
    assert killed and len(killed) == 2 * len({_unit(r) for r in killed})  # its first batch, both budgets of each unit
    assert all(_content(r) == reference[_key(r)] for r in killed)
    done = {_unit(r) for p in shard_paths(out) for r in read_rows(p)}
    rc, stdout, stderr = _torchrun(args, tmp_path)
    assert rc == 0, stderr[-3000:]
    assert re.search(rf"\b{UNITS - len(done)} units run, {len(done)} already in", stderr), stderr[-2000:]
    assert _merged(out) == reference and shard_paths(out) == []


@needs_torchrun
def test_a_failing_rank_stops_every_rank_with_one_line_from_rank_zero(tiny_dir, tmp_path):
    script = tmp_path / "faulty.py"
    script.write_text(FAULTY)
    out = tmp_path / "out"
    rc, stdout, stderr = _torchrun(CLI + ["--model", str(tiny_dir), "--out", str(out)], tmp_path, script=script,
                                   fault="fail")
    assert rc != 0
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: RankError: rank 1 of 2: RuntimeError: no memory left on this GPU"], stderr[-3000:]
    assert not (out / "results.jsonl").exists() and shard_paths(out) == []


@needs_torchrun
def test_an_out_folder_in_use_stops_every_rank_at_once(tiny_dir, tmp_path):
    """Another evaluation holds --out: rank 0 is refused its lock; rank 1 (which takes its own) once went on
    to wait for rank 0 in the process group, ignored torchrun's SIGTERM and was killed 30 s later. Now the
    ranks take their locks together and all stop, rank 0 saying why in one line."""
    from hogwild_ref.evaluation.results import OutDirLock

    out = tmp_path / "out"
    with OutDirLock(out, name=".lock"):  # held by this process, as by another evaluation
        rc, _, stderr = _torchrun(CLI + ["--model", str(tiny_dir), "--out", str(out)], tmp_path, timeout=120)
    assert rc != 0
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: RankError: rank 0 of 2: ValueError: {out} is in use by another evaluation (pid {os.getpid()}); "
                      "wait for it to end, or use another --out directory"], stderr[-3000:]
    assert "forcefully exiting" not in stderr and not (out / "config.json").exists()


def test_rank_zero_refuses_to_merge_when_it_cannot_see_a_shard(tiny_dir, tmp_path):
    """Nodes that do not share --out: rank 1 reports rows that rank 0 cannot see; nothing is merged or removed."""
    from hogwild_ref.models import load

    model, tok = load(str(tiny_dir))
    cfg = EvalConfig(**(BASE | dict(limit=1, workers=(1,), self_consistency=False)))
    with pytest.raises(RuntimeError, match=r"cannot see results.rank1-of-2.jsonl in .*file system every node shares"):
        run_eval(model, tok, cfg, tmp_path, progress=False, plot=False, group=_Rank(0, 2, [1]))
    assert [p.name for p in shard_paths(tmp_path)] == [shard_name(0, 2)] and not (tmp_path / "results.jsonl").exists()


def test_ranks_agree_on_failures_and_rank_zero_names_them():
    from hogwild_ref.evaluation.distributed import RankError, TorchGroup

    def group(rank, errors):
        g = TorchGroup(Place(rank, len(errors), rank, len(errors)))
        g.gather = lambda mine: [mine if r == rank else e for r, e in enumerate(errors)]  # type: ignore[method-assign]
        return g

    def fail(exc):
        raise exc

    assert group(0, [None, None]).agree(lambda: 42) == 42
    with pytest.raises(RankError, match=r"^rank 1 of 3: OSError: disk full$"):
        group(0, [None, "OSError: disk full", None]).agree(lambda: 1)
    with pytest.raises(RankError, match=r"^rank 1 of 2: ValueError: bad$"):  # the failing rank reports its own error
        group(1, [None, None]).agree(lambda: fail(ValueError("bad")))
    with pytest.raises(RankError, match=r"^ranks 0, 2 of 3: RuntimeError: x; rank 1 of 3: KeyError: 'k'$"):
        group(1, ["RuntimeError: x", None, "RuntimeError: x"]).agree(lambda: {}["k"])
    with pytest.raises(RankError, match=r"^all 2 ranks: ValueError: no such file$"):
        group(0, [None, "ValueError: no such file"]).agree(lambda: fail(ValueError("no such file")))


def test_cli_refuses_a_bad_dist_timeout_before_loading(tmp_path, capsys, monkeypatch):
    import hogwild_ref.models
    from hogwild_ref.cli import main

    monkeypatch.setattr(hogwild_ref.models, "load", lambda *a, **k: pytest.fail("loaded a model for bad arguments"))
    for bad in ("0", "inf", "nan", "1e30", "10081"):  # inf and 1e30 overflowed timedelta: a traceback
        assert main(["eval", "--dist-timeout", bad, "--out", str(tmp_path)]) == 2
        assert capsys.readouterr().err.startswith("error: --dist-timeout must be a positive number of minutes, at "
                                                  "most 10080 (a week)")


def test_a_lost_rank_is_told_in_words_not_in_gloos():
    """A distributed probe: a rank stopped past ``--dist-timeout`` or killed left the others with gloo's
    own text (``[.../gloo/transport/tcp/unbound_buffer.cc:129] Timed out waiting 15000ms ...``), which
    names no rank and no fix. Such failures are recognised; other errors are not."""
    import torch.distributed as dist

    from hogwild_ref.cli.eval import lost_contact

    gloo = "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:129] Timed out waiting 15000ms"
    assert lost_contact(RuntimeError(gloo))
    assert lost_contact(RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:7895"))
    assert lost_contact(dist.DistStoreError("wait timeout after 15000ms, keys: /default_pg/0//cpu//0/1"))
    assert not lost_contact(RuntimeError("CUDA out of memory"))
    assert not lost_contact(ValueError("gloo/transport"))
