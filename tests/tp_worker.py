"""One Hogwild run per tiny model, under ``torchrun`` (tensor parallel) or in one process: the worker of
tests/test_parallel.py. ``python tp_worker.py OUT.json [--tp-plan auto] MODEL_DIR...``.

Every rank writes ``OUT.json.rank{r}`` (rank 0 also ``OUT.json``): per model, the workers' tokens, the
flush count, the finisher's tokens, each tick's logits and the K/V heads of every layer's store.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from hogwild_ref.engine import Engine
from hogwild_ref.events import FlushEvent
from hogwild_ref.forward import Forward
from hogwild_ref.models import load
from hogwild_ref.scheduler import SchedulerConfig


def run(model, tok):
    """W = 4, combined, greedy, a step boundary every 6 characters (flushes), a snapshot at tick 5, the finisher
    after 10 ticks."""
    stores = []
    plain = Forward.storage

    def storage(self, *args, **kwargs):
        st = plain(self, *args, **kwargs)
        stores.append([s.kv_heads for s in st.stores])
        return st

    Forward.storage = storage  # type: ignore[method-assign]
    try:
        sched = SchedulerConfig(max_ticks=10, boundary=lambda text: len(text) >= 6, collab_every=None, snapshot_ticks=(5,),
                                eos_token_ids=frozenset())
        engine = Engine(model, tok, workers=4, layout="combined", backend="fast", scheduler=sched,
                        record_logits=True, finisher=True, finisher_tokens=6)
        flushes = sum(isinstance(ev, FlushEvent) for ev in engine.stream("Add 2 and 3."))
    finally:
        Forward.storage = plain  # type: ignore[method-assign]
    result = engine.result
    assert result is not None
    assert result.logits is not None
    return {"tokens": [w.tokens for w in result.workers], "flushes": flushes, "reason": result.reason,
            "snapshots": [[s.tick, s.history_text, list(s.current_texts)] for s in result.snapshots],
            "logits": [t.tolist() for t in result.logits], "kv_heads": stores}


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    out, rest = argv[0], argv[1:]
    tp = None
    if rest[0] == "--tp-plan":
        tp, rest = rest[1], rest[2:]
    results = {}
    for path in rest:
        model, tok = load(path, tp_plan=tp)
        results[os.path.basename(path)] = run(model, tok)
    rank = int(os.environ.get("RANK", "0"))
    with open(f"{out}.rank{rank}", "w") as f:
        json.dump(results, f)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1:])
