"""Packed slots (Spec §11.2, "Packed slots"): a several-token forward of the fast backend whose rows
feed unequal numbers of tokens runs the model's token-wise layers on the real slots only, one packed
``(1, N)`` sequence, and gives the tick the same ``(R, n)`` rows as before. The oracle is the same
forward on every padded slot (``Forward(pack_slots=False)``, itself checked against the dense oracle
in ``test_fast.py``, ``test_extend.py`` and ``test_batch.py``): logits within Spec §10 and every
segment's stored K/V alike, while the model's embedding layer saw exactly the real slots. The models
run on ``HOGWILD_TEST_DEVICE`` (default the CPU; ``benchmarks/gpu.sh`` runs this file on CUDA)."""

from __future__ import annotations

import pytest
import torch

from hogwild_ref.batch import union_tables
from hogwild_ref.engine import Engine
from hogwild_ref.forward import Forward
from hogwild_ref.models import tiny_model
from hogwild_ref.segments import Row
from test_fast import DEVICE

pytestmark = pytest.mark.usefixtures("single_thread")

#: Spec §12.5 (the `model` level's tolerance): whole-model float32 logits, max abs error relative to the largest |logit|.
LOGIT_RTOL = 1e-4


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _forwards(model, rope):
    """The packed forward, the padded one, and the token counts each model call embedded."""
    packed, padded = Forward(model, rope, "fast"), Forward(model, rope, "fast", pack_slots=False)
    seen: list[tuple[int, ...]] = []
    model.get_input_embeddings().register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    return packed, padded, seen


def _same_storage(a, b):
    for seg in a.table.segments:
        assert b.table.length(seg.id) == seg.length
        ka, va = a.segment_kv(seg.id)
        kb, vb = b.segment_kv(seg.id)
        if seg.length:
            assert _rel_err(ka, kb) <= LOGIT_RTOL and _rel_err(va, vb) <= LOGIT_RTOL, seg.id


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_packed_forwards_equal_padded_ones_for_one_problem(family, char_tokenizer):
    model = tiny_model(family, seed=3, vocab_size=len(char_tokenizer)).to(DEVICE)
    engine = Engine(model, char_tokenizer, workers=3, layout="combined", finisher=False)
    prep = engine.prepare("What is 6 * 7?")
    first, static = prep.first, prep.static
    others = [sid for sid in static if sid != first]
    assert len({len(static[sid]) for sid in others}) > 1, "static rows of unequal lengths"
    packed, padded, seen = _forwards(model, engine.rope)
    stores = [f.storage(prep.table) for f in (packed, padded)]
    logits = []
    for f, st in zip((packed, padded), stores):
        f(st, [Row((first,), len(static[first]))], [static[first]], logits=False)
        seen.clear()
        logits.append(f(st, [Row((first, sid), len(static[sid])) for sid in others], [static[sid] for sid in others]))
        calls = list(seen)
        seen.clear()
        # an extend tick: worker 0 feeds 5 tokens, worker 1 one, worker 2 none
        feeds = [[11, 12, 13, 14, 15], [16], []]
        logits.append(f(st, [Row(prep.table.views[w], len(x)) for w, x in enumerate(feeds)], feeds)[:2])
        calls += seen
        if f is packed:
            assert calls == [(1, sum(len(static[sid]) for sid in others)), (1, 5 + 1 + 1)], calls
        else:
            assert calls == [(len(others), max(len(static[sid]) for sid in others)), (3, 5)], calls
    assert logits[0].shape == logits[2].shape and logits[1].shape == logits[3].shape
    assert _rel_err(logits[0], logits[2]) <= LOGIT_RTOL and _rel_err(logits[1], logits[3]) <= LOGIT_RTOL
    assert int(logits[0].argmax(-1)[0]) == int(logits[2].argmax(-1)[0])
    _same_storage(*stores)


def test_packed_prefill_of_a_union_equals_the_padded_one(char_tokenizer):
    """Three problems' prompts of unequal lengths prefilled side by side (Spec §13.3, a grouped tick),
    then their static rows; every segment of the union stored alike."""
    model = tiny_model("llama", seed=5, vocab_size=len(char_tokenizer)).to(DEVICE)
    engine = Engine(model, char_tokenizer, workers=2, layout="combined", finisher=False)
    preps = [engine.prepare(p) for p in ("Add 3 and 4.", "What is 12 + 30? Think step by step, please.", "Count.")]
    union, _ = union_tables([p.table for p in preps])
    firsts = [f"p{b}/{p.first}" for b, p in enumerate(preps)]
    statics = [{f"p{b}/{sid}": ids for sid, ids in p.static.items()} for b, p in enumerate(preps)]
    assert len({len(p.static[p.first]) for p in preps}) == 3
    packed, padded, seen = _forwards(model, engine.rope)
    stores, calls = [], []
    for f in (packed, padded):
        st = f.storage(union, {sid: len(ids) for s in statics for sid, ids in s.items()})
        seen.clear()
        f.prefill(st, firsts, statics, chunk=4096)  # each part in one forward
        stores.append(st)
        calls.append(list(seen))
    assert packed.kinds.get("grouped") and padded.kinds.get("grouped")
    real = [sum(len(p.static[p.first]) for p in preps), sum(len(ids) for p in preps for sid, ids in p.static.items() if sid != p.first)]
    assert calls[0] == [(1, n) for n in real], calls[0]  # the prompts, then the static rows: their real slots only
    assert len(calls[1]) == 2 and all(r * n > m for (r, n), m in zip(calls[1], real)), calls[1]  # padded
    _same_storage(*stores)
