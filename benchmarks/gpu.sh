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
#   4. `bench ticks`, Qwen2.5-7B shape, W = 1 2 4 8, 4k/16k  -> $OUT/bench.jsonl (JSON lines), $OUT/bench.log
# Exit status: non-zero if the install, the tests or the bench failed (the bench runs in any case).
set -uo pipefail

OUT=${OUT:-$PWD/gpu-out}
PY=${PYTHON:-python3}
BUDGET=${BUDGET_S:-345}   # seconds for the whole script; the bench gets what the earlier stages leave
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

stage "fast-path exactness tests on CUDA"
export HOGWILD_TEST_DEVICE=cuda
timeout -k 5 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_fast.py >"$OUT/tests.log" 2>&1
tests=$?
tail -n 5 "$OUT/tests.log" >&2
[ "$tests" -eq 0 ] || { echo "tests failed (exit $tests; 124: timed out)" >&2; status=1; }

left=$((BUDGET - SECONDS))
stage "bench ticks (${left}s left)"
if [ "$left" -gt 30 ]; then
    timeout -k 5 "$left" "$PY" -m hogwild_ref.cli bench ticks --model qwen2.5-7b --workers 1 2 4 8 \
        --ctx 4096 16384 --layout combined --backend fast --dtype bfloat16 --steps 20 --json \
        >"$OUT/bench.jsonl" 2>"$OUT/bench.log"
    bench=$?
else
    echo "no time left for the bench" >"$OUT/bench.log"
    bench=124
fi
tail -n 5 "$OUT/bench.log" >&2
cat "$OUT/bench.jsonl" 2>/dev/null
[ "$bench" -eq 0 ] || { echo "bench failed (exit $bench; 124: timed out)" >&2; status=1; }

stage "done in ${SECONDS}s, exit $status"
exit "$status"
