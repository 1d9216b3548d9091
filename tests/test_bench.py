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
