"""End-to-end ticks/s of the engine on the embedded model vs plain greedy decoding (see README.md)."""

import argparse
import json

import torch

from hogwild_ref.bench import as_rows, bench_engine, machine
from hogwild_ref.models import load_default

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--ticks", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_default()
    print(machine())
    for row in as_rows(bench_engine(model, tokenizer, args.workers, args.ticks)):
        print(json.dumps(row))
