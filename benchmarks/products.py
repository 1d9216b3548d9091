"""The common window's two attention products of one tick, PyTorch's against numpy's BLAS (Spec §9.6,
"CPU window products"; see docs/fast-path.md).

For every layer of a ``hogwild-ref bench`` model shape, the scores ``q · Kᵀ`` and the weighted values
``p · V`` of ``P`` problems of ``W`` workers over a common window of ``L`` keys, with the keys and
values laid out as the CPU store lays them out (keys transposed, spare capacity past the window),
through ``torch.matmul`` and through ``hogwild_ref.cpu_matmul.batched_matmul``, alternating, median
of ``--repeats``: ``python benchmarks/products.py --threads 1 --problems 1 8 --window 386``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

from hogwild_ref.bench import MODEL_SHAPES
from hogwild_ref.cpu_matmul import batched_matmul, numpy_applies
from hogwild_ref.limits import check_fits_memory, check_threads

Product = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _pass(product: Product, q: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    start = time.perf_counter()
    for k, v in layers:
        product(product(q, k.transpose(-1, -2)), v)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", choices=sorted(MODEL_SHAPES))
    parser.add_argument("--problems", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--window", type=int, default=386)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if min(*args.problems, args.workers, args.window, args.repeats, args.threads) < 1:
        parser.error("--problems, --workers, --window, --repeats and --threads take positive integers")
    shape = MODEL_SHAPES[args.model]
    hkv, heads, layers = shape["num_key_value_heads"], shape["num_attention_heads"], shape["num_hidden_layers"]
    D = shape["hidden_size"] // heads
    g = heads // hkv
    cap = args.window + args.window // 2 + 1  # spare capacity past the window, as a grown store has
    try:  # the command line's own checks: threads this process may use, K/V that fit in memory
        check_threads(args.threads)
        check_fits_memory(2 * layers * max(args.problems) * hkv * cap * D * 4,
                          f"--problems {max(args.problems)} --window {args.window}",
                          "choose fewer --problems or a smaller --window")
    except ValueError as exc:
        parser.error(str(exc))
    torch.set_num_threads(args.threads)
    print(f"{args.model}: {layers} layers, {hkv} KV heads of {g} query heads, D = {D}; W = {args.workers}, "
          f"window {args.window}; {platform.processor() or platform.machine()}, {args.threads} thread(s); "
          f"torch {torch.__version__}", file=sys.stderr)
    print("| problems | torch.matmul (ms) | batched_matmul (ms) | torch/numpy |\n|---:|---:|---:|---:|")
    with torch.inference_mode():
        for P in args.problems:
            # keys stored transposed (P, Hkv, D, cap), read as (P, Hkv, L, D); values (P, Hkv, cap, D)
            kv = [(torch.randn(P, hkv, D, cap)[..., : args.window].transpose(-1, -2),
                   torch.randn(P, hkv, cap, D)[:, :, : args.window]) for _ in range(layers)]
            q = torch.randn(P, hkv, args.workers * g, D)
            assert numpy_applies(q, kv[0][0].transpose(-1, -2))
            plain, fast = [], []
            _pass(batched_matmul, q, kv)
            for _ in range(args.repeats):
                plain.append(_pass(torch.matmul, q, kv))
                fast.append(_pass(batched_matmul, q, kv))
            p, f = statistics.median(plain) * 1e3, statistics.median(fast) * 1e3
            print(f"| {P} | {p:.2f} | {f:.2f} | {p / f:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
