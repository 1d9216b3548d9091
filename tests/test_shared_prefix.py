"""The shared prompt prefix (Spec §4.4): the template's leading tokens, the same for every problem, are
prefilled once as a chunk of their own and copied into each problem's prompt segment.

Oracles: the prompts' own tokens (the shared length is where two real problems' prompts first
differ, never past it), and the prefill of the whole prompt in one row (a chunk boundary changes
rounding only, Spec §10)."""

from __future__ import annotations

import os

import torch

from hogwild_ref.engine import SHARED_MIN, Engine
from hogwild_ref.models import tiny_model
from hogwild_ref.scheduler import SchedulerConfig

PROBLEMS = ["What is 12 + 30? Think step by step.", "Add 3 and 4.", "Zebras count: 7 + 8."]

#: Spec §10.2: float32 K/V after a different chunking agree to rounding
KV_RTOL = 1e-5


def _engine(tok, **kw):
    model = tiny_model("llama", vocab_size=len(tok), seed=3)
    return Engine(model, tok, workers=2, layout="combined", scheduler=SchedulerConfig(max_ticks=4, eos_token_ids=frozenset()),
                  **kw)


def test_shared_length_stops_where_problems_prompts_differ(smollm_tokenizer):
    eng = _engine(smollm_tokenizer)
    preps = [eng.prepare(p) for p in PROBLEMS]
    prompts = [p.static[p.first] for p in preps]
    common = len(os.path.commonprefix(prompts))
    shared = {p.shared for p in preps}
    assert len(shared) == 1  # every problem reuses the same prefix
    (n,) = shared
    assert SHARED_MIN <= n <= common  # the default templates' system text is long; never past a difference
    # the template part is the system text: the problem text starts after it
    assert PROBLEMS[0] not in smollm_tokenizer.decode(prompts[0][:n])


def test_prefill_with_the_shared_prefix_equals_one_row_and_is_computed_once(smollm_tokenizer):
    eng = _engine(smollm_tokenizer)
    fwd = eng.forward
    prep_a, prep_b = eng.prepare(PROBLEMS[0]), eng.prepare(PROBLEMS[1])
    assert prep_a.shared > 0

    def prefill(prep, shared):
        storage = fwd.storage(prep.table, eng.capacities(prep))
        before = fwd.kinds.copy()
        fwd.prefill(storage, prep.first, prep.static, 512, shared)
        forwards = sum(fwd.kinds.values()) - sum(before.values())
        return storage.segment_kv(prep.first), storage.table, forwards

    (k1, v1), t1, _ = prefill(prep_a, 0)
    (k2, v2), t2, n_first = prefill(prep_a, prep_a.shared)
    (_, _), _, n_again = prefill(prep_b, prep_b.shared)
    assert t1 == t2 and k1.shape == k2.shape
    for x, y in ((k1, k2), (v1, v2)):
        assert float((x - y).abs().max() / y.abs().max()) < KV_RTOL
    # the prefix's prefill ran on the first call only: one forward fewer for the second problem
    assert n_again == n_first - 1


def test_weights_changed_in_place_recompute_the_prefix(smollm_tokenizer):
    eng = _engine(smollm_tokenizer)
    fwd = eng.forward
    prep = eng.prepare(PROBLEMS[0])

    def first_keys():
        storage = fwd.storage(prep.table, eng.capacities(prep))
        fwd.prefill(storage, prep.first, prep.static, 512, prep.shared)
        return storage.segment_kv(prep.first)[0][:, :, : prep.shared]

    def oracle():  # no shared prefix at all
        storage = fwd.storage(prep.table, eng.capacities(prep))
        fwd.prefill(storage, prep.first, prep.static, 512, 0)
        return storage.segment_kv(prep.first)[0][:, :, : prep.shared]

    before = first_keys()
    k_proj = eng.model.model.layers[0].self_attn.k_proj
    with torch.no_grad():
        k_proj.weight.mul_(2.0)
    after, fresh = first_keys(), oracle()
    assert not torch.allclose(before[0], after[0])
    assert float((after - fresh).abs().max() / fresh.abs().max()) < KV_RTOL
    k_proj.weight.data = k_proj.weight.data * 0.5  # new data under the same parameter: seen too
    again, fresh = first_keys(), oracle()
    assert not torch.allclose(after[0], again[0])
    assert float((again - fresh).abs().max() / fresh.abs().max()) < KV_RTOL
