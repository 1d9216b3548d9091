"""One layer's decode attention per backend vs single-sequence SDPA (see README.md)."""

import argparse
import json

import torch

from hogwild_ref.bench import as_rows, bench_attention, machine

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine())
    for row in as_rows(bench_attention(args.contexts, args.workers)):
        print(json.dumps(row))
