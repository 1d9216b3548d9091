#!/usr/bin/env bash
# The GPU check of the fast path (issue 7, Spec §9.6), for a machine with torch, transformers, einops,
# jaxtyping, rich, hypothesis and pytest preinstalled and no internet. Run from the repository root:
#
#     OUT=/some/dir bash benchmarks/gpu.sh
#
# Stages, each under a timeout so that a hang still leaves its log (the whole script: under 6 minutes):
#   1. install the project from the working tree, offline   -> $OUT/install.log
#   2. record the machine and the versions                   -> $OUT/env.txt
#   3. the fast path's exactness tests on CUDA               -> $OUT/tests.log
#   4. the split common part's tests (flex, Spec §9.5)       -> $OUT/split-tests.log
#   5. `bench ticks`, Qwen2.5-7B shape, W = 1 2 4 8, 4k/16k  -> $OUT/bench.jsonl (JSON lines), $OUT/bench.log
#   6. `bench ticks --split flex`: eager ticks, score row vs split, alternating, 16k, W = 1 4 8
#                                                            -> $OUT/split.jsonl, $OUT/split.log
# Without CUDA (a dry run) stage 3 is skipped, stage 4 runs on the CPU, and stages 5-6 run the same
# commands on a small CPU case (smollm2-135m shape, ctx 256, W = 1 2).
# Exit status: non-zero if the install, the tests or a bench failed (the benches run in any case).
set -uo pipefail

OUT=${OUT:-$PWD/gpu-out}
PY=${PYTHON:-python3}
BUDGET=${BUDGET_S:-345}   # seconds for the whole script; the benches get what the earlier stages leave
SPLIT_S=${SPLIT_BENCH_S:-80}  # of which the split bench (stage 6) keeps this much
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
status=0

stage() { echo "== $(date +%T) $*" >&2; }

stage "install (offline)"
if "$PY" -c "import setuptools" 2>/dev/null &&
    timeout -k 5 60 "$PY" -m pip install --no-index --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 &&
    (cd / && "$PY" -c "import hogwild_ref") 2>>"$OUT/install.log"; then
    echo "installed with pip" >>"$OUT/install.log"
else
    echo "pip install failed or setuptools missing: using PYTHONPATH=$PWD/src" | tee -a "$OUT/install.log" >&2
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" -c "import hogwild_ref" 2>>"$OUT/install.log" || { echo "hogwild_ref does not import" >&2; status=1; }
fi

stage "environment"
{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse --verify -q HEAD || echo unknown)"
    timeout 20 nvidia-smi || echo "nvidia-smi failed"
    timeout 60 "$PY" - <<'EOF'
import platform, torch, transformers
print("python", platform.python_version(), "| torch", torch.__version__, "| transformers", transformers.__version__)
print("cuda", torch.version.cuda, "| available", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
for name in ("einops", "jaxtyping", "rich", "hypothesis", "pytest", "triton", "hogwild_ref"):
    try:
        mod = __import__(name)
        print(name, getattr(mod, "__version__", "?"), getattr(mod, "__file__", ""))
    except Exception as exc:  # report, do not stop
        print(name, "MISSING:", exc)
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >&2

cuda=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ "$cuda" = 1 ]; then
    export HOGWILD_TEST_DEVICE=cuda
    bench_case=(--model qwen2.5-7b --dtype bfloat16)
    main_case=(--workers 1 2 4 8 --ctx 4096 16384 --steps 20)
    split_case=(--workers 1 4 8 --ctx 16384 --steps 10)
else
    echo "no CUDA: a dry run (CUDA tests skipped, the benches on a small CPU case)" >&2
    bench_case=(--model smollm2-135m --dtype float32 --threads 1)
    main_case=(--workers 1 2 --ctx 256 --steps 2)
    split_case=(--workers 1 2 --ctx 256 --steps 2)
fi

stage "fast-path exactness tests on CUDA"
if [ "$cuda" = 1 ]; then
    timeout -k 5 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_fast.py tests/test_extend.py tests/test_packing.py >"$OUT/tests.log" 2>&1
    tests=$?
else
    echo "skipped: no CUDA" >"$OUT/tests.log"
    tests=0
fi
tail -n 5 "$OUT/tests.log" >&2
[ "$tests" -eq 0 ] || { echo "tests failed (exit $tests; 124: timed out)" >&2; status=1; }

stage "split common part tests (${HOGWILD_TEST_DEVICE:-cpu})"
timeout -k 5 90 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_split.py >"$OUT/split-tests.log" 2>&1
tests=$?
tail -n 5 "$OUT/split-tests.log" >&2
[ "$tests" -eq 0 ] || { echo "split tests failed (exit $tests; 124: timed out)" >&2; status=1; }

# bench NAME SECONDS ARGS...: `bench ticks` under a timeout -> $OUT/NAME.jsonl, $OUT/NAME.log
bench() {
    local name=$1 limit=$2
    shift 2
    stage "bench ticks $* (${limit}s)"
    if [ "$limit" -gt 30 ]; then
        timeout -k 5 "$limit" "$PY" -m hogwild_ref.cli bench ticks "${bench_case[@]}" --layout combined \
            --backend fast --json "$@" >"$OUT/$name.jsonl" 2>"$OUT/$name.log"
        rc=$?
    else
        echo "no time left for this bench" >"$OUT/$name.log"
        rc=124
    fi
    tail -n 5 "$OUT/$name.log" >&2
    cat "$OUT/$name.jsonl" 2>/dev/null
    [ "$rc" -eq 0 ] || { echo "bench $name failed (exit $rc; 124: timed out)" >&2; status=1; }
}

bench bench $((BUDGET - SECONDS - SPLIT_S)) "${main_case[@]}"
# the split path runs on eager ticks: both paths eager, alternating on the same storage; flex (the
# CUDA kernel) in the dry run too
bench split $((BUDGET - SECONDS)) "${split_case[@]}" --split flex --compile no

stage "done in ${SECONDS}s, exit $status"
exit "$status"
