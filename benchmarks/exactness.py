"""Worst logit error of each fast backend (``fast``, the default, and the two rotate backends) against
the engine oracle, per family and layout.

Not a test (tests/test_engine.py asserts the bound); this prints the numbers for reports.
Tiny random-weight models of every supported family and the embedded SmolLM2, W = 2 and 4,
24 ticks with a step boundary that forces frequent flushes.
"""

import argparse

import torch

from hogwild_ref.bench import machine
from hogwild_ref.engine import Engine
from hogwild_ref.models import SUPPORTED_FAMILIES, load_default, tiny_model
from hogwild_ref.scheduler import SchedulerConfig


def run(model, tok, workers, layout, backend, ticks):
    sched = SchedulerConfig(max_ticks=ticks, boundary=lambda text: len(text) >= 12, collab_every=None, eos_token_ids=frozenset())
    engine = Engine(model, tok, workers=workers, layout=layout, backend=backend, scheduler=sched, record_logits=True, finisher=False)
    return engine.run("What is 12 + 30? Think step by step.")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ticks", type=int, default=24, help="ticks per run (>= 1)")
    args = ap.parse_args()
    if args.ticks < 1:
        ap.error(f"--ticks must be >= 1 (ticks per run; 0 compares nothing); got {args.ticks}")
    torch.set_num_threads(1)
    print(machine())
    smollm, tok = load_default()
    models = {f: tiny_model(f, seed=1, vocab_size=len(tok)) for f in SUPPORTED_FAMILIES} | {"smollm2": smollm}
    print("| family | backend | worst rel. logit error | greedy tokens identical |")
    print("|---|---|---|---|")
    for family, model in models.items():
        worst = {"fast": 0.0, "rotate_queries": 0.0, "rotate_keys": 0.0}
        same = {"fast": True, "rotate_queries": True, "rotate_keys": True}
        for workers in (2, 4):
            for layout in ("contiguous", "interleaved", "combined"):
                ref = run(model, tok, workers, layout, "oracle", args.ticks)
                for backend in worst:
                    got = run(model, tok, workers, layout, backend, args.ticks)
                    for a, b in zip(got.logits, ref.logits):
                        worst[backend] = max(worst[backend], float((a - b).abs().max() / b.abs().max()))
                    same[backend] &= all(x.tokens == y.tokens for x, y in zip(got.workers, ref.workers))
        for backend in worst:
            print(f"| {family} | {backend} | {worst[backend]:.2e} | {same[backend]} |")
