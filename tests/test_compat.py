"""The compatibility proof (Spec §11.6): RoPE pairing from the model's own rotary code, refused attention
features, the numeric proof against the model's own forward, and the survey of transformers' families.

Oracles: the model's own forward / ``generate`` (its own attention implementation and cache) and the
engine oracle; the pairing expected for each family is read from transformers' own
``apply_rotary_pos_emb`` / ``rotate_half`` source, not from hogwild_ref.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import replace

import pytest
import torch

import hogwild_ref
from hogwild_ref import proof as proof_mod
from hogwild_ref.attention import BACKENDS
from hogwild_ref.engine import Engine
from hogwild_ref.features import PROOF_TOLERANCES, AttentionFeatureError, CompatibilityError, check_attention_kwargs, probe_rope, relative_error
from hogwild_ref.forward import Forward
from hogwild_ref.proof import ensure_compatible, proof_of
from hogwild_ref.segments import Row, make_layout
from hogwild_ref.survey import survey, tiny_family_model
from hogwild_ref.models import UnsupportedModelError, check_supported, tiny_model
from hogwild_ref.scheduler import SchedulerConfig

logging.getLogger("transformers").setLevel(logging.ERROR)


def _family_model(family, seed=0, sharpen=1.0):
    model = tiny_family_model(family, seed=seed)
    if sharpen != 1.0:  # peaky attention, so that a position error shows in the logits
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("q_proj.weight", "k_proj.weight")):
                    p.mul_(sharpen)
    return model


def _pairing_from_source(family: str) -> str:
    """The pairing transformers' own code uses: interleaved if its RoPE helper slices ``::2``."""
    import importlib

    modeling = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    source = inspect.getsource(modeling.apply_rotary_pos_emb)
    helpers = [n for n in ("rotate_half", "rotate_every_two") if n in vars(modeling)]
    source += "".join(inspect.getsource(vars(modeling)[n]) for n in helpers)
    return "interleaved" if "::2" in source else "half"


# ---------------------------------------------------------------------- RoPE probe
@pytest.mark.parametrize("family,rotary_dim", [("llama", 16), ("phi3", 8), ("cohere", 16), ("glm", 8), ("gpt_neox", 4)])
def test_probe_derives_pairing_and_rotary_dim_from_the_model(family, rotary_dim):
    model = tiny_model(family) if family in ("llama", "phi3") else _family_model(family)
    probe = probe_rope(model, check_supported(model.config, allow_untested=True))
    assert probe.convention == _pairing_from_source(family)
    assert probe.rotary_dim == rotary_dim
    assert probe.error < 1e-5 < 0.1 < probe.other_error


def test_cohere_interleaved_runs_exactly(smollm_tokenizer):
    """Issue 9: cohere used to run with rotate-half. Now: W = 1 equals the model's own greedy decoding,
    and W = 2 combined (where a wrong pairing does not cancel) matches the engine oracle."""
    tok = smollm_tokenizer
    model = tiny_family_model("cohere", seed=1)
    model.resize_token_embeddings(len(tok))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(4.0)
    assert ensure_compatible(model, allow_untested=True).convention == "interleaved"

    sched = SchedulerConfig(max_ticks=12, boundary=lambda t: len(t) >= 12, collab_every=None, eos_token_ids=frozenset())
    one = Engine(model, tok, workers=1, layout="contiguous", scheduler=sched, finisher=False).run("Add 2 and 3.")
    w = one.workers[0]
    prefix = w.view_tokens[: w.generated_positions[0]]
    with torch.inference_mode():
        out = model.generate(torch.tensor([prefix]), max_new_tokens=11, do_sample=False,
                             attention_mask=torch.ones(1, len(prefix), dtype=torch.long), pad_token_id=0)
    assert out[0, len(prefix):].tolist() == w.tokens[:11]

    runs = {}
    for backend in ("oracle", "rotate_queries"):
        runs[backend] = Engine(model, tok, workers=2, layout="combined", backend=backend, scheduler=sched,
                               record_logits=True, finisher=False).run("Add 2 and 3.")
    assert [w.tokens for w in runs["oracle"].workers] == [w.tokens for w in runs["rotate_queries"].workers]
    for a, b in zip(runs["oracle"].logits, runs["rotate_queries"].logits):
        assert float((a - b).abs().max() / b.abs().max()) < 1e-4


def test_wrong_pairing_is_measured_by_the_numeric_proof():
    """The numeric proof alone catches a wrong pairing (here forced) on a model with peaky attention."""
    model = _family_model("cohere", sharpen=6.0)
    rope = ensure_compatible(model, allow_untested=True)
    assert proof_mod.prove(model, rope, "oracle") < 1e-4
    wrong = replace(rope, convention="half")
    assert proof_mod.prove(model, wrong, "oracle") > 1e-2


# ---------------------------------------------------------------------- attention features
class _Module:
    layer_idx = 3
    is_causal = True


@pytest.mark.parametrize("kwargs,word", [
    ({"softcap": 50.0}, "softcapping"),
    ({"s_aux": torch.zeros(4)}, "sinks"),
    ({"sinks": torch.zeros(4)}, "sinks"),
    ({"is_causal": False}, "bidirectional"),
    ({"indices": torch.zeros(2)}, "'indices'"),
    ({"alibi_slopes": torch.zeros(4)}, "'alibi_slopes'"),
    ({"dropout": 0.1}, "dropout"),
])
def test_unimplemented_attention_features_are_refused_by_name(kwargs, word):
    with pytest.raises(AttentionFeatureError, match=word) as exc:
        check_attention_kwargs(_Module(), kwargs, dropout=None)
    assert "layer 3" in str(exc.value)


def test_implemented_attention_keywords_pass():
    ok = {"scaling": 0.3, "dropout": 0.0, "sliding_window": None, "softcap": None, "s_aux": None,
          "position_ids": torch.zeros(1), "use_cache": True, "is_causal": True, "output_router_logits": False}
    check_attention_kwargs(_Module(), ok, dropout=None)


def test_sliding_window_is_refused_once_the_context_passes_it():
    """Full attention equals sliding-window attention while every view fits the window; the forward
    step refuses the first tick whose context passes it (the keyword itself is accepted)."""
    check_attention_kwargs(_Module(), {"sliding_window": 64})
    model = tiny_model("mistral", seed=1, sliding_window=32)
    forward = Forward(model, ensure_compatible(model), "rotate_queries")
    storage = forward.storage(make_layout("contiguous", 1))
    forward(storage, [Row(("prompt",), 32)], [[3] * 32])  # positions 0..31: inside the window
    with pytest.raises(ValueError, match="sliding window of 32"):
        forward(storage, [Row(("prompt", "out_0"), 1)], [[3]])


def test_a_mask_built_by_the_model_is_refused():
    with pytest.raises(AttentionFeatureError, match="own attention mask"):
        check_attention_kwargs(_Module(), {}, attention_mask=torch.zeros(1, 1, 2, 2))


def test_bidirectional_module_is_refused():
    class Bidirectional(_Module):
        is_causal = False

    with pytest.raises(AttentionFeatureError, match="bidirectional"):
        check_attention_kwargs(Bidirectional(), {})


@pytest.mark.parametrize("family,word", [("gemma2", "softcapping"), ("gpt_oss", "sinks")])
def test_families_with_unimplemented_features_are_refused(family, word):
    model = _family_model(family)
    with pytest.raises(AttentionFeatureError, match=word):
        ensure_compatible(model, allow_untested=True)


def test_a_model_in_training_mode_is_refused():
    model = tiny_model("llama")
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    model.train()
    with pytest.raises(AttentionFeatureError, match="eval"):
        ensure_compatible(model)


# ---------------------------------------------------------------------- numeric proof and gating
def test_proof_runs_once_per_model_and_backend(monkeypatch):
    model = tiny_model("qwen2", seed=3)
    calls = []
    real = proof_mod.prove
    monkeypatch.setattr(proof_mod, "prove", lambda m, r, b, **k: calls.append(b) or real(m, r, b, **k))
    ensure_compatible(model)
    ensure_compatible(model)
    assert calls == ["oracle", "rotate_queries"]
    ensure_compatible(model, backend="rotate_keys")
    assert calls == ["oracle", "rotate_queries", "rotate_keys"]
    proof = proof_of(model)
    assert proof is not None and proof.tested and set(proof.errors) >= {"oracle", "rotate_keys"}  # the latest
    assert all(e < proof.tolerance for e in proof.errors.values())


def _matches_its_own_forward(model, rope, ids):
    """One worker's prompt through the fast path (packed weights on) gives the last logits of the model's
    own forward on the same tokens, within the proof's float32 tolerance."""
    forward = Forward(model, rope, "fast", pack_weights=True)
    storage = forward.storage(make_layout("contiguous", 1))
    with torch.inference_mode():
        got = forward(storage, [Row(("prompt",), len(ids))], [ids])[0]
        want = model(torch.tensor([ids])).logits[0, -1]
    assert relative_error(got, want) < PROOF_TOLERANCES[torch.float32]


class _LoRA(torch.nn.Linear):
    """A loralib-style adapter: an ``nn.Linear`` subclass whose forward adds a low-rank product."""

    def __init__(self, base: torch.nn.Linear, rank: int = 4):
        super().__init__(base.in_features, base.out_features, bias=False)
        self.weight = base.weight
        self.a = torch.nn.Parameter(torch.randn(rank, base.in_features) * 0.3)
        self.b = torch.nn.Parameter(torch.randn(base.out_features, rank) * 0.3)

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight) + x @ self.a.T @ self.b.T


@pytest.mark.parametrize("kind", ["lora", "phimoe"])
def test_linear_subclasses_keep_their_forward_on_the_fast_path(kind):
    """Spec §9.6, "CPU linear layers": the packed CPU product replaced the forward of every ``nn.Linear``
    subclass, unseen by the proof (which runs unpacked): a LoRA-adapted model ran with logits off by
    ~1.6, PhiMoE (a router subclass returning a tuple) crashed on its first forward. Oracle: the model's
    own forward on the same tokens, one worker, packed weights on."""
    torch.manual_seed(0)
    if kind == "lora":
        model = tiny_model("llama", seed=2)
        for layer in model.model.layers:
            layer.self_attn.q_proj = _LoRA(layer.self_attn.q_proj)
    else:
        model = tiny_family_model("phimoe", seed=0)
    _matches_its_own_forward(model, ensure_compatible(model, allow_untested=True, backend="fast"), list(range(10, 22)))


def test_longrope_with_a_short_original_context_is_probed_below_it():
    """Spec §11.6 step 1: the probe's position 251 lay past a LongRoPE original context of 64, where the
    model's own rotary embedding switches to its long factors, so the model was refused as matching
    neither pairing; it runs, pinned to the short factors, below that context (Spec §8.1). Oracle: the
    model's own forward on the same tokens."""
    model = tiny_model("phi3", seed=3, max_position_embeddings=256, original_max_position_embeddings=64,
                       rope_parameters={"rope_type": "longrope", "short_factor": [1.0, 1.1, 1.2, 1.3],
                                        "long_factor": [2.0, 2.5, 3.0, 4.0], "original_max_position_embeddings": 64,
                                        "rope_theta": 10000.0})
    rope = ensure_compatible(model, backend="fast")
    assert rope.max_position == 64
    _matches_its_own_forward(model, rope, list(range(5, 55)))
    # its rotary module copies its frequencies in at every forward (a new tensor version each time): the
    # proof is still kept, not made again for every run
    calls = []
    real = proof_mod.prove
    proof_mod.prove = lambda m, r, b, **k: calls.append(b) or real(m, r, b, **k)
    try:
        assert ensure_compatible(model, backend="fast") is rope and calls == []
    finally:
        proof_mod.prove = real


def test_a_rebuilt_rotary_embedding_is_proven_again(smollm_tokenizer):
    """Spec §11.6: the proof of a model object was kept per dtype, device and backend only, so a model
    whose RoPE changed after its first run (config edited, rotary embedding rebuilt: a consistent model)
    kept the old frequencies; with 2 workers its tokens were silently wrong. Oracle: a copy of the
    changed model, a new object never proven, run the same way."""
    import copy

    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    model = tiny_model("llama", seed=7, vocab_size=len(smollm_tokenizer))
    with torch.no_grad():  # peaky attention, so that a position error shows in the tokens
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(4.0)
    before = ensure_compatible(model, backend="fast")
    model.config.rope_parameters["rope_theta"] = 37.0
    model.model.rotary_emb = LlamaRotaryEmbedding(model.config)
    after = ensure_compatible(model, backend="fast")
    assert not torch.equal(before.inv_freq, after.inv_freq)
    assert proof_of(model).rope is after  # the latest proof, not the first
    torch.testing.assert_close(after.inv_freq, model.model.rotary_emb.inv_freq.double(), rtol=1e-6, atol=0)
    fresh = copy.deepcopy(model)
    runs = [hogwild_ref.generate(m, smollm_tokenizer, "What is 7 * 6?", workers=2, max_ticks=12, finisher=False,
                                 backend="fast") for m in (model, fresh)]
    assert [w.tokens for w in runs[0].workers] == [w.tokens for w in runs[1].workers]


def test_a_backend_that_computes_something_else_is_refused_with_the_measured_error(monkeypatch):
    model = tiny_model("llama", seed=4)
    real = BACKENDS["rotate_queries"]
    monkeypatch.setitem(BACKENDS, "rotate_queries", lambda q, *a, **k: 1.5 * real(q, *a, **k))
    with pytest.raises(CompatibilityError, match=r"rotate_queries \d\.\d\de[-+]\d\d") as exc:
        ensure_compatible(model)
    assert "oracle" not in str(exc.value).split("by")[1].split("(")[0]  # the oracle itself passed


def test_engine_refuses_untested_family_unless_allowed_then_runs(smollm_tokenizer):
    model = tiny_family_model("olmo", seed=0)
    model.resize_token_embeddings(len(smollm_tokenizer))
    with pytest.raises(UnsupportedModelError, match="allow_untested"):
        Engine(model, smollm_tokenizer)
    result = hogwild_ref.generate(model, smollm_tokenizer, "Add 1 and 2.", workers=2, max_ticks=3, finisher=False,
                                  allow_untested=True)
    assert result.ticks == 3
    # allowed once for this model object: later engines need not repeat the switch
    Engine(model, smollm_tokenizer)


def test_load_passes_allow_untested(tmp_path, smollm_tokenizer):
    model = tiny_family_model("olmo", seed=0)
    model.resize_token_embeddings(len(smollm_tokenizer))
    model.save_pretrained(tmp_path)
    smollm_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="allow_untested"):
        hogwild_ref.load(str(tmp_path))
    loaded, tok = hogwild_ref.load(str(tmp_path), allow_untested=True)
    assert proof_of(loaded) is None  # loading loads; the proof runs once, before the first run
    Engine(loaded, tok)  # the choice made at load time is honoured without repeating the flag
    assert proof_of(loaded) is not None and not proof_of(loaded).tested


def test_vocabulary_smaller_than_the_tokenizer_is_a_clear_error(smollm_tokenizer):
    with pytest.raises(UnsupportedModelError, match="vocabulary has only 256"):
        hogwild_ref.generate(tiny_model("llama"), smollm_tokenizer, "x", max_ticks=2)


def test_not_a_model_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnsupportedModelError, match="not a model directory"):
        hogwild_ref.load(str(tmp_path))


def test_a_hub_id_that_cannot_be_fetched_names_the_fix(monkeypatch):
    # found by a newcomer: "error: OSError: We couldn't connect to 'https://huggingface.co' ..." and no fix
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network, as in these tests
    with pytest.raises(UnsupportedModelError, match=r"'no-such-org/no-such-model' is taken as a hub id, and it could "
                       r"not be fetched \(.*\); give a local model directory \(hf download no-such-org/no-such-model"):
        hogwild_ref.load("no-such-org/no-such-model")


# ---------------------------------------------------------------------- every RoPE family transformers ships
#: expected outcomes of some families (the reason is part of the expectation). The survey's models
#: are built like checkpoints (8 layers, every parameter random): at 2 layers with unit norm weights,
#: SmolLM3 and Cohere2 (a NoPE layer every fourth) and Hunyuan (q/k norms after RoPE) passed, where their
#: real checkpoints are refused. (PhiMoE passed the proof and crashed on its first packed forward:
#: test_linear_subclasses_keep_their_forward_on_the_fast_path.)
EXPECTED = {
    "llama": "runs", "qwen2": "runs", "qwen3": "runs", "mistral": "runs", "phi3": "runs", "cohere": "runs",
    "glm": "runs", "gpt_neox": "runs", "gemma2": "softcapping", "gpt_oss": "sinks", "gptj": "inv_freq",
    "deepseek_v2": "head_dim", "diffllama": "compatibility proof failed", "doge": "own attention mask",
    "smollm3": "layer 3 applies no rotary", "cohere2": "layer 3 applies no rotary",
    "hunyuan_v1_dense": "norm applied to queries and keys after RoPE", "phimoe": "runs",
}


@pytest.mark.slow
def test_survey_of_every_rope_family():
    """Every RoPE causal-LM family either runs (proof passed, engine == model within tolerance) or is
    refused with an UnsupportedModelError naming the reason; nothing else escapes."""
    rows = {r["family"]: r for r in survey()}
    assert len(rows) >= 60
    runs = [f for f, r in rows.items() if r["outcome"] == "runs"]
    assert len(runs) >= 30
    for family, expected in EXPECTED.items():
        row = rows[family]
        if expected == "runs":
            assert row["outcome"] == "runs", row
        else:
            assert row["outcome"] == "refused" and expected in row["detail"], row


def _without_rope_in(model, layer: int):
    """``model`` with layer ``layer`` given cos 1, sin 0: a NoPE layer (as SmolLM3's every fourth)."""
    attn = model.model.layers[layer].self_attn
    own = attn.forward

    def forward(*args, **kwargs):
        cos, sin = kwargs["position_embeddings"]
        kwargs["position_embeddings"] = (torch.ones_like(cos), torch.zeros_like(sin))
        return own(*args, **kwargs)

    attn.forward = forward
    return model


def test_a_nope_layer_is_refused_by_the_rope_probe():
    model = _without_rope_in(tiny_model("llama", seed=5), 1)
    with pytest.raises(CompatibilityError, match="layer 1 applies no rotary position embedding to its queries"):
        ensure_compatible(model)


@pytest.mark.parametrize("projection", ["q_proj", "k_proj"])
def test_an_ablated_projection_runs_and_matches_the_oracle(projection, smollm_tokenizer):
    """A projection zeroed in one layer (an ablation study) carries no position: the probe skips it
    (Spec §11.6 step 1) where it called the layer NoPE and refused the model. Oracle: the ``oracle``
    backend (from scratch) gives the same greedy tokens."""
    model = tiny_model("llama", seed=5, vocab_size=len(smollm_tokenizer))
    with torch.no_grad():
        getattr(model.model.layers[0].self_attn, projection).weight.zero_()
    runs = [hogwild_ref.generate(model, smollm_tokenizer, "What is 7 * 6?", max_ticks=6, finisher=False, backend=b)
            for b in ("fast", "oracle")]
    assert [w.tokens for w in runs[0].workers] == [w.tokens for w in runs[1].workers]
