"""``bench ticks`` reports the memory-bandwidth floor next to its ratios (issue: tick cost near the floor).

The floor is arithmetic on measured inputs; the oracle here recomputes each input independently: the
weight bytes from the model's parameters (``parameters()`` yields a tied embedding once), the HF
step's K/V bytes from the config, and the fast path's K/V bytes from the storage's own accounting.
No time is asserted.
"""

from __future__ import annotations

import pytest
import torch

from hogwild_ref.bench import STEP_TOKENS, bench_ticks, read_bandwidth, weight_bytes
from hogwild_ref.models import tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")


def test_bench_ticks_reports_the_floor_of_the_tick_and_of_the_hf_step():
    model = tiny_model("llama", seed=0, vocab_size=256, tie_word_embeddings=True)
    independent = sum(p.numel() * p.element_size() for p in model.parameters())
    assert weight_bytes(model) == independent
    rows = bench_ticks(model, workers=(1, 3), contexts=(128,), steps=2, warmup=1)
    cfg = model.config
    hf_kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * (128 + STEP_TOKENS) * 4
    assert [r.workers for r in rows] == [1, 3]
    for r in rows:
        assert r.weight_bytes == independent and r.bandwidth > 0 and r.kv_bytes_per_tick > 0
        assert r.floor_s == pytest.approx((independent + r.kv_bytes_per_tick) / r.bandwidth)
        assert r.ratio_floor == pytest.approx(r.s_per_tick / r.floor_s)
        assert r.baseline_floor_s == pytest.approx((independent + hf_kv) / r.bandwidth)
        assert r.baseline_ratio_floor == pytest.approx(r.baseline_s_per_step / r.baseline_floor_s)
    # three workers read at least the one worker's common window, and more tail
    assert rows[1].kv_bytes_per_tick > rows[0].kv_bytes_per_tick


def test_read_bandwidth_is_a_rate_of_the_bytes_read():
    small = read_bandwidth("cpu", nbytes=1 << 22, repeat=2)
    assert 1e6 < small < 1e13  # bytes per second: a plausible memory read rate, not a time
    assert torch.get_num_threads() == 1


def test_bench_ticks_with_problems_reads_each_problem_once_and_compares_with_runs_alone():
    """P problems side by side read P one-problem windows and tails (block-diagonal, Spec §9.6): the
    K/V bytes are exactly P times one problem's, never P^2; the comparison is P one-problem ticks."""
    model = tiny_model("llama", seed=0, vocab_size=256)
    rows = bench_ticks(model, workers=(2,), contexts=(100,), steps=2, warmup=1, problems=(1, 3))
    one, three = rows
    assert (one.problems, three.problems) == (1, 3)
    assert three.kv_bytes_per_tick == 3 * one.kv_bytes_per_tick
    assert one.independent_s_per_tick is None and one.ratio_independent is None
    assert three.tokens_per_s == pytest.approx(3 * 2 / three.s_per_tick)
    assert three.ratio_independent == pytest.approx(three.s_per_tick / three.independent_s_per_tick)
    assert three.independent_s_per_tick == pytest.approx(3 * one.s_per_tick)  # the P = 1 case of this run


def test_bench_ticks_with_split_times_both_paths_in_one_run():
    """``split``: every one-problem case is also timed through the split common part (Spec §9.5), on the
    same storage, alternating; P > 1 cases keep the score-row path only; a compiled step is refused."""
    model = tiny_model("llama", seed=0, vocab_size=256)
    rows = bench_ticks(model, workers=(2,), contexts=(100,), steps=1, warmup=1, problems=(1, 2), split="flex",
                       compile=False)
    one, two = rows
    assert one.split_kernel == "flex" and one.split_s_per_tick is not None and one.split_s_per_tick > 0
    assert one.ratio_split == pytest.approx(one.split_s_per_tick / one.s_per_tick)
    assert two.split_kernel is None and two.split_s_per_tick is None and two.ratio_split is None
    with pytest.raises(ValueError, match="eager ticks"):
        bench_ticks(model, workers=(1,), contexts=(10,), steps=1, warmup=1, split=True, compile=True)


def test_the_linear_benchmark_times_each_row_count_and_refuses_bad_counts():
    """``benchmarks/linear.py`` (docs: fast path, CPU linear layers): one table row per row count, each
    time a positive number of milliseconds; a row count below 1 is a usage error (exit 2)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "linear.py"
    ran = subprocess.run([sys.executable, str(script), "--rows", "2", "3", "--repeats", "1"],
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|$", ran.stdout, re.M)
    assert [r[0] for r in rows] == ["2", "3"] and all(float(x) > 0 for r in rows for x in r[1:])
    bad = subprocess.run([sys.executable, str(script), "--rows", "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--rows" in bad.stderr.splitlines()[-1]
    # a newcomer review: the CLI's own checks (threads beyond the cores ran; a 7B model was built past memory)
    for argv, said in ((["--threads", "100000"], "more than the"), (["--model", "qwq-32b"], "GiB of memory")):
        bad = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and said in bad.stderr.splitlines()[-1], bad.stderr


def test_the_exactness_script_refuses_a_run_that_compares_nothing():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "exactness.py"
    for ticks in ("0", "-1"):  # 0 printed a table of zero errors; -1 a traceback
        bad = subprocess.run([sys.executable, str(script), "--ticks", ticks], capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and "--ticks must be >= 1" in bad.stderr.splitlines()[-1], bad.stderr


@pytest.mark.parametrize("argv, fixes, not_said", [
    (["--ctx", "100000000"], "choose smaller --contexts, --dtype bfloat16, or a machine", "--model"),
    (["--ctx", "8000", "--problems", "4096", "--model", "qwq-32b", "--dtype", "bfloat16"],
     "choose smaller --contexts, fewer --problems, a smaller --model (smollm2-135m), or a machine", "--dtype bfloat16"),
])
def test_a_bench_too_large_for_memory_names_the_flags_that_made_it_so(capsys, argv, fixes, not_said):
    # found by a newcomer: the refusal suggested --dtype bfloat16 to a bfloat16 run, and never --contexts
    from hogwild_ref.cli import main

    assert main(["bench", "ticks", "--threads", "1", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "needs about" in err and fixes in err and not_said not in err.split("needs about")[1]


def test_the_floor_of_every_backend_counts_the_kv_it_attends_to():
    """The floor is the weights and the K/V a tick attends to (docs: the fast path). Backends without
    the fast path's windows read at least every stored token's K/V once; their floor counted none."""
    model = tiny_model("llama", seed=0, vocab_size=256)
    cfg = model.config
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4
    for backend in ("rotate_queries", "rotate_keys"):
        (r,) = bench_ticks(model, workers=(2,), contexts=(96,), steps=1, warmup=1, backend=backend)
        stored = r.kv_bytes_per_tick // per_token
        assert r.kv_bytes_per_tick == stored * per_token and stored >= 96 + 2 * STEP_TOKENS, backend
        assert r.floor_s == pytest.approx((r.weight_bytes + r.kv_bytes_per_tick) / r.bandwidth)


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"), reason="Linux only")
def test_peak_memory_is_the_cases_own_not_the_processs():
    """On the CPU the peak was the process's since it started (the bandwidth probe's 512 MiB and every
    earlier case in it); each case now starts its own peak (Linux: /proc/self/clear_refs)."""
    import resource

    big = torch.ones(400 << 18)  # 400 MiB, touched, then given back
    del big
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model = tiny_model("llama", seed=0, vocab_size=256)
    (r,) = bench_ticks(model, workers=(1,), contexts=(32,), steps=1, warmup=1)
    assert 0 < r.peak_mem_bytes < process_peak - (300 << 20)


def _fake_engine_bench(done_then_interrupted):
    from hogwild_ref.bench import EngineTiming

    def bench_engine(model, tokenizer, workers, ticks, on_result=None, **kw):
        for w in workers:
            if w not in done_then_interrupted:
                raise KeyboardInterrupt
            on_result(EngineTiming(w, "combined", "rotate_queries", ticks, 10.0, 10.0 * w, 20.0))
        raise AssertionError("the fake ran every W")

    return bench_engine


@pytest.mark.parametrize("as_json", [False, True])
def test_an_interrupted_engine_bench_keeps_the_finished_workers_and_says_it_is_partial(capsys, monkeypatch, as_json):
    """Ctrl-C during W = 8 kept nothing of W = 1, done before it (a newcomer review); a table cut short
    looked like a whole one on stdout."""
    import json

    import hogwild_ref.bench as bench
    import hogwild_ref.cli.bench as cli_bench
    from hogwild_ref.cli import main
    from hogwild_ref.cli.bench import INTERRUPTED

    monkeypatch.setattr(cli_bench, "_load", lambda args: (None, None))
    monkeypatch.setattr(bench, "bench_engine", _fake_engine_bench({1}))
    assert main(["bench", "engine", "--workers", "1", "8", "--threads", "1"] + (["--json"] if as_json else [])) == 130
    out = capsys.readouterr().out
    if as_json:
        doc = json.loads(out)
        assert doc["interrupted"] is True and [r["workers"] for r in doc["results"]] == [1]
        assert doc["command"] == "hogwild-ref bench engine --workers 1 8 --threads 1 --json"
        assert doc["hogwild_ref"] == __import__("hogwild_ref").__version__ and doc["results"][0]["dtype"] == "float32"
    else:
        assert out.rstrip().endswith(INTERRUPTED) and "engine" in out


def test_bench_ticks_json_names_the_model_dtype_steps_version_and_command(capsys, monkeypatch):
    import json

    import hogwild_ref.bench as bench
    from hogwild_ref.cli import main

    monkeypatch.setattr(bench, "random_model", lambda name, dtype, device: tiny_model("llama", seed=0, vocab_size=256))
    argv = ["bench", "ticks", "--json", "--contexts", "32", "--workers", "1", "--steps", "1", "--threads", "1"]
    assert main(argv) == 0
    (line,) = capsys.readouterr().out.splitlines()
    row = json.loads(line)
    assert (row["model"], row["dtype"], row["steps"]) == ("smollm2-135m", "float32", 1)
    assert row["command"] == "hogwild-ref " + " ".join(argv) and row["hogwild_ref"]


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"), reason="Linux only")
@pytest.mark.parametrize("context, workers", [(16384, 4), (4096, 32)])
def test_the_attention_bench_memory_estimate_bounds_what_a_case_uses(context, workers):
    """``bench attention`` refuses a case whose :func:`attention_bytes` passes the free memory, so the
    estimate must cover what the case adds (measured: the growth of a fresh process's peak resident set
    over both backends) without refusing runs that fit by a wide margin (the first estimate held every
    worker's rotated view at once: 3.5x too much at 32 workers)."""
    import subprocess
    import sys

    script = f"""if True:
        import torch
        from hogwild_ref.bench import attention_bytes, bench_attention
        torch.set_num_threads(1)
        base = int(open("/proc/self/statm").read().split()[1]) * 4096
        open("/proc/self/clear_refs", "w").write("5")
        bench_attention([{context}], {workers}, repeat=1)
        peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
        print(peak - base, attention_bytes({context}, {workers}))
    """
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    used, estimate = map(int, done.stdout.split())
    assert used <= estimate <= 2.5 * used, (used / 2**20, estimate / 2**20)


def test_bench_attention_on_cuda_checks_the_devices_free_memory(capsys, monkeypatch):
    """On a GPU the attention case's tensors live in the device's memory: checked against its free
    memory (a review: the check was skipped there), in bfloat16, the dtype the run uses there."""
    from hogwild_ref.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 30, 80 << 30))
    assert main(["bench", "attention", "--contexts", "262144", "--workers", "4", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "bench attention at --contexts 262144 with 4 workers (bfloat16) needs about" in err
    assert "has 1.0 GiB available" in err


def test_the_products_benchmark_times_each_problem_count_and_refuses_bad_counts():
    """``benchmarks/products.py`` (docs: fast path, CPU attention products): one table row per problem
    count, each time a positive number of milliseconds; a count below 1 is a usage error (exit 2)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "products.py"
    ran = subprocess.run([sys.executable, str(script), "--problems", "1", "2", "--window", "40", "--repeats", "1"],
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|$", ran.stdout, re.M)
    assert [r[0] for r in rows] == ["1", "2"] and all(float(x) > 0 for r in rows for x in r[1:])
    for argv, said in ((["--problems", "0"], "--problems"), (["--threads", "100000"], "more than the"),
                       (["--problems", "100000000"], "choose fewer --problems")):
        bad = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and said in bad.stderr.splitlines()[-1], bad.stderr
