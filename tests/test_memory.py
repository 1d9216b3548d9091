"""Memory follows the tokens a run holds, never its budget (Spec §9.6).

Oracles: the same run with a small budget (storage, tokens), and the engine oracle (Spec §11.4) for a
run whose segments grow many times from their first capacities.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from hogwild_ref.engine import Engine, FlushEvent, TokenEvent
from hogwild_ref.models import tiny_model
from hogwild_ref.scheduler import SchedulerConfig
from hogwild_ref.store import SegmentStore

pytestmark = pytest.mark.usefixtures("single_thread")


def _run_ticks(model, tok, budget: int, ticks: int, monkeypatch, backend: str = "fast", workers: int = 4):
    """The first ``ticks`` ticks of a run with budget ``budget``: (storage bytes, tokens per worker, flushes)."""
    sched = SchedulerConfig(max_ticks=budget, boundary=lambda t: len(t) >= 12, collab_every=None, eos_token_ids=frozenset())
    engine = Engine(model, tok, workers=workers, layout="combined", backend=backend, scheduler=sched, finisher=False)
    made = []
    real = engine.forward.storage
    monkeypatch.setattr(engine.forward, "storage", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    tokens: list[list[int]] = [[] for _ in range(workers)]
    flushes = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a budget of 100,000 ticks passes the model's context: warned, not refused
        events = engine.stream("Count the letters.")
        for ev in events:
            if isinstance(ev, TokenEvent):
                if ev.tick > ticks:
                    break
                tokens[ev.worker].append(ev.token)
            flushes += isinstance(ev, FlushEvent)
        events.close()
    return made[0].nbytes(), tokens, flushes


def test_storage_follows_the_tokens_not_the_budget(smollm_tokenizer, monkeypatch):
    model = tiny_model("llama", seed=3, vocab_size=len(smollm_tokenizer), max_position_embeddings=4096)
    small, tokens_small, flushes = _run_ticks(model, smollm_tokenizer, 100, 60, monkeypatch)
    huge, tokens_huge, _ = _run_ticks(model, smollm_tokenizer, 100_000, 60, monkeypatch)
    assert flushes > 4, "the run should flush steps (and grow its history) within 60 ticks"
    assert tokens_huge == tokens_small and all(len(t) == 60 for t in tokens_small)
    assert huge <= 1.2 * small, f"storage {huge / 2**20:.1f} MiB with a huge budget vs {small / 2**20:.1f} MiB"


def test_a_run_that_grows_many_times_equals_the_engine_oracle(smollm_tokenizer):
    """From 64-slot segments to several hundred tokens of history: every growth keeps what was stored."""
    tok = smollm_tokenizer
    model = tiny_model("qwen2", seed=5, vocab_size=len(tok), max_position_embeddings=4096)
    sched = SchedulerConfig(max_ticks=150, boundary=lambda t: len(t) >= 40, collab_every=None, eos_token_ids=frozenset())
    runs = {}
    for backend in ("fast", "oracle"):
        engine = Engine(model, tok, workers=3, layout="combined", backend=backend, scheduler=sched, finisher=False,
                        record_logits=True)
        runs[backend] = engine.run("Count the letters.")
    fast, ref = runs["fast"], runs["oracle"]
    assert fast.table is not None and fast.table.length("common") > 4 * 64, "the history did not grow past its first capacity"
    assert [w.tokens for w in fast.workers] == [w.tokens for w in ref.workers]
    assert fast.logits is not None and ref.logits is not None
    worst = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(fast.logits, ref.logits))
    assert worst <= 1e-4  # Spec §12.5 (model logits)


def test_store_growth_is_geometric_and_touches_only_what_filled():
    store = SegmentStore([8, 2, 2], kv_heads=2, head_dim=4, dtype=torch.float32, device="cpu", common=0)
    k = torch.arange(2 * 8 * 4, dtype=torch.float32).view(2, 8, 4)
    store.write(0, 0, k, -k)
    store.write(1, 0, k[:, :2], k[:, :2])
    tail = store.k_tail
    store.write(0, 8, k[:, :1], k[:, :1])  # the common segment fills: it doubles, the tail stays
    assert store.capacities[0] == 16 and store.k_tail is tail
    assert torch.equal(store.keys[0][:, :8], k) and torch.equal(store.values[0][:, :8], -k)
    common = store.k_common
    store.write(2, 0, k[:, :5], k[:, :5])  # a tail segment passes its block: every block grows, the common stays
    assert store.block == 5 and store.k_common is common  # at least double (4) and at least what is asked (5)
    assert torch.equal(store.keys[1][:, :2], k[:, :2]) and torch.equal(store.keys[2][:, :5], k[:, :5])
    assert store.generation == 2


# ---------------------------------------------------------------------- the converted-model cache
def test_second_load_reads_the_cache_and_equals_the_gguf_conversion(smollm, monkeypatch):
    """The session's first load converted the GGUF and filled the cache (conftest points it at a temporary
    folder); a second load reads the cache, and gives the same weights and the same tokenizer."""
    import hogwild_ref.models as models

    model, tok = smollm
    cached = models.converted_dir()
    assert (cached / "config.json").is_file() and any(cached.glob("*.safetensors"))
    monkeypatch.setattr(models, "default_model_path", lambda: pytest.fail("the GGUF was read again"))
    again, tok2 = models.load_default()
    assert set(dict(again.named_parameters())) == set(dict(model.named_parameters()))
    for name, p in model.named_parameters():
        assert torch.equal(p, dict(again.named_parameters())[name]), name
    text = "Alice and Bob: what is 17 * 23?\n\n**Alice [1]:** "
    assert tok2(text)["input_ids"] == tok(text)["input_ids"]
    assert tok2.eos_token_id == tok.eos_token_id and tok2.chat_template == tok.chat_template
