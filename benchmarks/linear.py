"""The linear layers of one forward, plain against packed (Spec §9.6, "CPU linear layers"; see README.md).

Every float32 linear layer of a random-weight model of a ``hogwild-ref bench`` shape (the output layer
included) called once with ``rows`` rows, through the module's own forward (``F.linear``) and under
``hogwild_ref.packed.PackedLinear`` (one oneDNN-packed copy for every row count), alternating, median
of ``--repeats``: ``python benchmarks/linear.py --threads 1 --rows 1 2 4 8 16 32``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

from hogwild_ref.bench import MODEL_SHAPES, random_model
from hogwild_ref.limits import check_fits_memory, check_threads, shape_from_config
from hogwild_ref.packed import PackedLinear, packing_available


def _pass(layers: list[torch.nn.Linear], inputs: dict[int, torch.Tensor]) -> float:
    start = time.perf_counter()
    for layer in layers:
        layer(inputs[layer.in_features])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", choices=sorted(MODEL_SHAPES))
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not packing_available():
        parser.error("this torch build has no oneDNN packed linear on this CPU")
    if any(r < 1 for r in args.rows) or args.repeats < 1 or args.threads < 1:
        parser.error("--rows, --repeats and --threads take positive integers")
    try:  # the command line's own checks: threads this process may use, weights that fit in memory
        check_threads(args.threads)
        shape = shape_from_config({k: v for k, v in MODEL_SHAPES[args.model].items() if k != "family"})
        if shape is not None:  # the float32 weights and their oneDNN-packed copy
            check_fits_memory(2 * shape.weight_bytes(4), f"--model {args.model} (float32, with its packed copy)",
                              "choose a smaller --model (smollm2-135m)")
    except ValueError as exc:
        parser.error(str(exc))
    torch.set_num_threads(args.threads)
    model = random_model(args.model, torch.float32, "cpu")
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    packed = PackedLinear(model)
    print(f"{args.model}: {len(layers)} linear layers; {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s); torch {torch.__version__}", file=sys.stderr)
    print("| rows | plain (ms) | packed (ms) | plain/packed |\n|---:|---:|---:|---:|")
    with torch.inference_mode():
        for rows in args.rows:
            inputs = {d: torch.randn(rows, d) for d in {m.in_features for m in layers}}
            plain, fast = [], []
            _pass(layers, inputs)
            for _ in range(args.repeats):
                plain.append(_pass(layers, inputs))
                with packed:
                    fast.append(_pass(layers, inputs))
            p, f = statistics.median(plain) * 1e3, statistics.median(fast) * 1e3
            print(f"| {rows} | {p:.1f} | {f:.1f} | {p / f:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
