"""RoPE: the central shift property, group law, scaling, refusals, and independent checks.

Oracles:
* the *RoPE oracle* of Spec §9.1: keep pre-RoPE keys, "recompute from scratch" = rotate them at
  their view positions;
* transformers' own rotary-embedding modules and ``apply_rotary_pos_emb`` of each architecture;
* a from-scratch complex-number formula of both pairing conventions.
"""

from __future__ import annotations

import cmath
import dataclasses
import functools
import importlib
import json
import logging
import math
import types
import zlib

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from hogwild_ref.rope import SUPPORTED_ROPE_TYPES, RopeError, RopeSpec
from strategies import any_tables

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: see conftest.single_thread

logging.getLogger("transformers").setLevel(logging.ERROR)

CONVENTIONS = ("half", "interleaved")


# ---------------------------------------------------------------------- configs
def _llama(rope_parameters, hidden=64, heads=4, max_pos=8192):
    return transformers.LlamaConfig(
        hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=2,
        max_position_embeddings=max_pos, rope_parameters=rope_parameters,
    )


CONFIGS = {
    "default": lambda: _llama({"rope_type": "default", "rope_theta": 10000.0}),
    "linear": lambda: _llama({"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}),
    "llama3": lambda: _llama({
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 1024,
    }),
    "yarn": lambda: _llama({
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 2048,
    }),
    "longrope": lambda: _llama({
        "rope_type": "longrope", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 2048,
        "short_factor": [1.0 + 0.1 * i for i in range(8)], "long_factor": [2.0 + 0.3 * i for i in range(8)],
    }),
    # partial rotary (the first rotary_dim channels rotate; the rest pass through)
    "phi3-partial": lambda: transformers.Phi3Config(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, partial_rotary_factor=0.5,
    ),
    "yarn-partial": lambda: transformers.StableLmConfig(
        hidden_size=48, num_attention_heads=4, num_key_value_heads=2, partial_rotary_factor=0.5,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                         "original_max_position_embeddings": 2048},
    ),
    "longrope-partial": lambda: _llama({
        "rope_type": "longrope", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 2048,
        "partial_rotary_factor": 0.5,
        "short_factor": [1.0 + 0.2 * i for i in range(4)], "long_factor": [3.0 + 0.3 * i for i in range(4)],
    }),
}
# rotary_dim as HF defines it for each case (head_dim * partial_rotary_factor)
EXPECTED_DIMS = {
    "default": (16, 16), "linear": (16, 16), "llama3": (16, 16), "yarn": (16, 16), "longrope": (16, 16),
    "phi3-partial": (16, 8), "yarn-partial": (12, 6), "longrope-partial": (16, 8),
}


@functools.cache
def spec(case: str, convention: str = "half") -> RopeSpec:
    r = RopeSpec.from_config(CONFIGS[case]())
    return dataclasses.replace(r, convention=convention)


def test_spec_shapes_and_types():
    for case, (hd, rd) in EXPECTED_DIMS.items():
        r = spec(case)
        assert (r.head_dim, r.rotary_dim) == (hd, rd), case
    assert {spec(c).rope_type for c in CONFIGS} == set(SUPPORTED_ROPE_TYPES)
    # YaRN/LongRoPE carry an attention scaling != 1; the test of double scaling needs that
    assert spec("yarn").attention_scaling == pytest.approx(0.1 * math.log(4.0) + 1.0)
    assert spec("yarn-partial").attention_scaling > 1.05
    assert spec("longrope").attention_scaling == pytest.approx(math.sqrt(1 + math.log(4.0) / math.log(2048)))
    assert spec("default").attention_scaling == 1.0


def test_default_inv_freq_formula():
    """theta^(-2i/d), written out (independent of transformers)."""
    r = spec("default")
    expected = torch.tensor([10000.0 ** (-2 * i / 16) for i in range(8)], dtype=torch.float64)
    torch.testing.assert_close(r.inv_freq, expected, rtol=1e-6, atol=0)  # HF builds it in fp32
    lin = spec("linear")
    torch.testing.assert_close(lin.inv_freq, expected / 4.0, rtol=1e-6, atol=0)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300)) if b.numel() else 0.0


def _gen(seed):
    return torch.Generator().manual_seed(seed)


CASES = list(CONFIGS)


# ---------------------------------------------------------------------- the central property
@settings(max_examples=250)
@given(
    table=any_tables(max_workers=6, max_length=16),
    case=st.sampled_from(CASES),
    convention=st.sampled_from(CONVENTIONS),
    dtype=st.sampled_from([torch.float64, torch.float32]),
    seed=st.integers(0, 2**31 - 1),
)
def test_rerotated_keys_equal_keys_recomputed_at_view_positions(table, case, convention, dtype, seed):
    """Keys stored at segment-local positions, re-rotated by o_w(s), == pre-RoPE keys rotated at o_w(s)+t."""
    rope = spec(case, convention)
    g = _gen(seed)
    pre = {s.id: torch.randn(2, s.length, rope.head_dim, generator=g, dtype=torch.float64).to(dtype)
           for s in table.segments}
    stored = {sid: rope.rotate(k, torch.arange(k.shape[1])) for sid, k in pre.items()}
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    for w, view in enumerate(table.views):
        o = 0  # offsets recomputed as prefix sums of the view
        offsets = table.offsets(w)
        for sid in view:
            assert offsets[sid] == o
            L = table.length(sid)
            shifted = rope.rerotate(stored[sid], o)
            scratch = rope.rotate(pre[sid], o + torch.arange(L))
            assert shifted.dtype == dtype and shifted.shape == pre[sid].shape
            assert _rel(shifted, scratch) <= tol, (w, sid, o, _rel(shifted, scratch))
            # pass-through channels are untouched
            assert torch.equal(shifted[..., rope.rotary_dim:], pre[sid][..., rope.rotary_dim:])
            o += L


@settings(max_examples=150)
@given(
    case=st.sampled_from([c for c in CASES if "longrope" not in c]),
    convention=st.sampled_from(CONVENTIONS),
    p=st.integers(0, 5000),
    o=st.integers(0, 100_000),
    seed=st.integers(0, 2**31 - 1),
)
def test_shift_property_large_offsets(case, convention, p, o, seed):
    """Same property far from the origin (fp64 angles; error grows like |angle| * 1e-16)."""
    rope = spec(case, convention)
    k = torch.randn(3, rope.head_dim, generator=_gen(seed), dtype=torch.float64)
    assert _rel(rope.rerotate(rope.rotate(k, p), o), rope.rotate(k, p + o)) <= 1e-9


@settings(max_examples=150)
@given(
    case=st.sampled_from(CASES),
    convention=st.sampled_from(CONVENTIONS),
    a=st.integers(-3000, 3000),
    b=st.integers(-3000, 3000),
    seed=st.integers(0, 2**31 - 1),
)
def test_group_law_identity_and_norm(case, convention, a, b, seed):
    rope = spec(case, convention)
    rd, s = rope.rotary_dim, rope.attention_scaling
    x = torch.randn(4, rope.head_dim, generator=_gen(seed), dtype=torch.float64)
    # group law and identity
    assert _rel(rope.rerotate(rope.rerotate(x, a), b), rope.rerotate(x, a + b)) <= 1e-9
    assert _rel(rope.rerotate(rope.rerotate(x, a), -a), x) <= 1e-9
    assert torch.equal(rope.rerotate(x, 0), x)
    # rerotate is a pure rotation: norm preserved on the rotated channels, pass channels untouched
    y = rope.rerotate(x, a)
    torch.testing.assert_close(y[:, :rd].norm(dim=-1), x[:, :rd].norm(dim=-1), rtol=1e-12, atol=0)
    assert torch.equal(y[:, rd:], x[:, rd:])
    # rotate applies attention_scaling exactly once
    p = abs(a) % 2048  # LongRoPE is pinned below 2048
    z = rope.rotate(x, p)
    torch.testing.assert_close(z[:, :rd].norm(dim=-1), s * x[:, :rd].norm(dim=-1), rtol=1e-12, atol=0)
    assert torch.equal(z[:, rd:], x[:, rd:])
    # ... and re-rotating a model-rotated key does NOT scale it again (the official code's YaRN bug)
    zz = rope.rerotate(z, abs(b))
    torch.testing.assert_close(zz[:, :rd].norm(dim=-1), s * x[:, :rd].norm(dim=-1), rtol=1e-12, atol=0)


def test_rerotate_identity_float32_and_batched_positions():
    rope = spec("yarn", "half")
    x = torch.randn(2, 3, 5, rope.head_dim, generator=_gen(1))
    assert torch.equal(rope.rerotate(x, 0), x)
    pos = torch.tensor([[[0, 4, 9, 100, 7]], [[3, 3, 3, 2000, 1]]])  # (B, 1, n) broadcast over heads
    out = rope.rotate(x, pos)
    for bi in range(2):
        for i in range(5):
            torch.testing.assert_close(out[bi, :, i], rope.rotate(x[bi, :, i], int(pos[bi, 0, i])), rtol=0, atol=0)


@pytest.mark.parametrize("case", ["default", "phi3-partial", "yarn-partial"])
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_apply_broadcasts_like_full_rotary(case, convention):
    """``apply`` broadcasts x against the rotation's batch shape, whatever the rotary fraction.

    rotate_queries relies on this: it rotates q[:, None] (R, 1, H, n, D) by every segment's rotation
    (R, S, 1, 1, rd/2) at once. With partial rotary the pass-through channels must broadcast too.
    SRC BUG (rope.py, RopeSpec.apply: ``torch.cat((out, xpass))`` with ``xpass`` not expanded): for
    partial rotary the cat fails with "Sizes of tensors must match", so rotate_queries crashes on every
    partial-rotary model (Phi-3, StableLM, ...) as soon as a view has 2+ segments.
    """
    rope = spec(case, convention)
    x = torch.randn(1, 2, rope.head_dim, generator=_gen(3), dtype=torch.float64)  # (1, H, D)
    deltas = torch.tensor([0, 5, -9])
    out = rope.apply(x, rope.rotation(deltas[:, None], dtype=torch.float64))  # rotation batch (3, 1)
    assert out.shape == (3, 2, rope.head_dim)
    for i, d in enumerate(deltas.tolist()):
        torch.testing.assert_close(out[i], rope.rerotate(x[0], d), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "params",
    [
        {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
        {"type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    ],
)
def test_dynamic_rope_is_refused(params):
    with pytest.raises(RopeError, match=r"rope type 'dynamic'.*not a fixed rotation"):
        RopeSpec.from_config(_llama(params))


def test_unknown_rope_type_is_refused():
    cfg = _llama({"rope_type": "default", "rope_theta": 10000.0})
    cfg.rope_parameters = {"rope_type": "spiral", "rope_theta": 10000.0}
    with pytest.raises(RopeError, match=r"rope type 'spiral' is not supported.*default, linear, llama3, yarn, longrope"):
        RopeSpec.from_config(cfg)


@pytest.mark.parametrize(
    "config, match",
    [
        (lambda: transformers.GPT2Config(n_embd=32, n_head=2, n_layer=1), r"model type 'gpt2' has no rotary"),
        (lambda: transformers.BertConfig(hidden_size=32, num_attention_heads=2), r"model type 'bert' has no rotary"),
        (lambda: types.SimpleNamespace(model_type="not_a_model", rope_parameters={}, hidden_size=8, num_attention_heads=1),
         r"cannot find transformers' modeling code for model_type 'not_a_model'"),
    ],
    ids=["gpt2", "bert", "unknown-model-type"],
)
def test_models_without_rope_are_refused(config, match):
    with pytest.raises(RopeError, match=match):
        RopeSpec.from_config(config())


def test_per_layer_rope_parameters_are_refused():
    cfg = types.SimpleNamespace(
        model_type="llama",
        rope_parameters={"full_attention": {"rope_type": "default"}, "sliding_attention": {"rope_type": "default"}},
    )
    with pytest.raises(RopeError, match=r"per-layer-type RoPE"):
        RopeSpec.from_config(cfg)


def test_longrope_is_pinned_below_original_context():
    rope = spec("longrope")
    assert rope.max_position == 2048
    x = torch.randn(2, rope.head_dim, dtype=torch.float64)
    rope.rotate(x, 2047)
    with pytest.raises(RopeError, match=r"position 2048 >= 2048"):
        rope.rotate(x, 2048)
    with pytest.raises(RopeError, match=r"position 3000 >= 2048"):
        rope.rotate(x, torch.tensor([1, 3000]))
    # pinned to the *short* factors: inv_freq = 1 / (short_factor_i * theta^(2i/d)), restated
    expected = torch.tensor([1.0 / ((1.0 + 0.1 * i) * 10000.0 ** (2 * i / 16)) for i in range(8)], dtype=torch.float64)
    torch.testing.assert_close(rope.inv_freq, expected, rtol=1e-6, atol=0)


def test_spec_construction_errors():
    with pytest.raises(RopeError, match=r"rotary_dim 8 must be even and <= head_dim 6"):
        RopeSpec(torch.ones(4), head_dim=6)
    # RopeError, or the runtime type check of the Literal annotation when the suite checks annotations
    with pytest.raises((RopeError, TypeError), match=r"spiral"):
        RopeSpec(torch.ones(4), head_dim=8, convention="spiral")  # type: ignore[arg-type]
    with pytest.raises(RopeError, match=r"last dimension of x is 5, expected head_dim 8"):
        RopeSpec(torch.ones(4), head_dim=8).rotate(torch.zeros(5), 0)


# ---------------------------------------------------------------------- independent: complex-number formula
@settings(max_examples=100)
@given(
    case=st.sampled_from(CASES),
    convention=st.sampled_from(CONVENTIONS),
    positions=st.lists(st.integers(0, 2000), min_size=1, max_size=4),
    seed=st.integers(0, 2**31 - 1),
)
def test_rotate_matches_complex_formula(case, convention, positions, seed):
    """Pairs rotate as complex numbers: z_i -> s * z_i * exp(j * p * theta_i).

    ``half`` (NeoX/Llama): z_i = x[i] + j x[i + rd/2];  ``interleaved`` (GPT-J): z_i = x[2i] + j x[2i+1].
    """
    rope = spec(case, convention)
    rd, hd, s = rope.rotary_dim, rope.head_dim, rope.attention_scaling
    theta = rope.inv_freq.tolist()
    x = torch.randn(len(positions), hd, generator=_gen(seed), dtype=torch.float64)
    got = rope.rotate(x, torch.tensor(positions))
    for row, p in enumerate(positions):
        v = x[row].tolist()
        exp = list(v)  # pass-through channels keep their values
        for i, th in enumerate(theta):
            a, b = (i, i + rd // 2) if convention == "half" else (2 * i, 2 * i + 1)
            z = complex(v[a], v[b]) * s * cmath.exp(1j * p * th)
            exp[a], exp[b] = z.real, z.imag
        torch.testing.assert_close(got[row], torch.tensor(exp, dtype=torch.float64), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------- independent: transformers' own RoPE
HF_CASES = {
    "llama": ("llama", lambda: _llama({"rope_type": "default", "rope_theta": 10000.0})),
    "qwen2": ("qwen2", lambda: transformers.Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2)),
    "qwen3": ("qwen3", lambda: transformers.Qwen3Config(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16)),
    "mistral": ("mistral", lambda: transformers.MistralConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2)),
    "phi3-partial": ("phi3", CONFIGS["phi3-partial"]),
    "llama-yarn": ("llama", CONFIGS["yarn"]),
    "llama-llama3": ("llama", CONFIGS["llama3"]),
    "llama-linear": ("llama", CONFIGS["linear"]),
    "phi3-longrope": ("phi3", lambda: transformers.Phi3Config(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
        original_max_position_embeddings=2048,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                         "short_factor": [1.0 + 0.1 * i for i in range(8)],
                         "long_factor": [2.0 + 0.3 * i for i in range(8)]})),
    "stablelm-yarn-partial": ("stablelm", CONFIGS["yarn-partial"]),
}


def _hf_rotate(arch, config, q, position_ids):
    """Rotate ``q`` (B, H, S, D) exactly as the architecture's attention layer does."""
    modeling = importlib.import_module(f"transformers.models.{arch}.modeling_{arch}")
    emb_cls = next(v for k, v in vars(modeling).items() if k.endswith("RotaryEmbedding") and isinstance(v, type))
    emb = emb_cls(config)
    cos, sin = emb(q, position_ids)
    if arch == "stablelm":  # StableLmAttention splits off the rotary channels itself
        rd = cos.shape[-1]
        rot, _ = modeling.apply_rotary_pos_emb(q[..., :rd], q[..., :rd], cos, sin)
        return torch.cat([rot, q[..., rd:]], dim=-1)
    out, _ = modeling.apply_rotary_pos_emb(q, q, cos, sin)
    return out


# HF computes the angles p * theta in float32 (inv_freq is float32, positions are cast to float32), we in
# float64. The fp32 product rounds the angle by up to ~p * theta * 2^-24 radians (theta <= 1), which moves a
# rotated pair by that much times its norm. So the comparison tolerance per position is
#     1e-6 (cos/sin/products in fp32)  +  2 * (p + 1) * 2^-24 (angle rounding)
# relative to max|x| (about 1e-5 at p ~ 40, 5e-4 at p = 4096). At positions < 128 this is <= 2.7e-5.
def _angle_tol(p: torch.Tensor) -> torch.Tensor:
    return 1e-6 + 2.0 * (p.double() + 1.0) * 2.0**-24


@pytest.mark.parametrize("name", list(HF_CASES))
@pytest.mark.parametrize("max_pos", [128, 4096], ids=["near", "far"])
def test_rotate_matches_transformers(name, max_pos):
    arch, make = HF_CASES[name]
    config = make()
    rope = RopeSpec.from_config(make())
    g = _gen(zlib.crc32(f"{name}/{max_pos}".encode()))  # deterministic (str hash is salted per process)
    B, H, S = 3, 2, 96
    q = torch.randn(B, H, S, rope.head_dim, generator=g)
    top = min(max_pos, rope.max_position or max_pos)
    position_ids = torch.randint(0, top, (B, S), generator=g)
    position_ids[0, :4] = torch.tensor([0, 1, 2, top - 1])
    ref = _hf_rotate(arch, config, q, position_ids)
    got = rope.rotate(q, position_ids[:, None, :])
    assert got.dtype == torch.float32 and got.shape == ref.shape
    scale = ref.abs().max()
    err = (got - ref).abs().amax(dim=(1, 3)) / scale  # (B, S) per position
    tol = _angle_tol(position_ids)
    assert bool((err <= tol).all()), f"worst err/tol {float((err / tol).max()):.3g} at pos {int(position_ids.flatten()[(err / tol).argmax()])}"
    if max_pos == 128:
        assert float(err.max()) <= 1e-5 * 3  # the ~1e-5 relative regime near the origin
    # pass-through channels identical
    assert torch.equal(got[..., rope.rotary_dim:], q[..., rope.rotary_dim:])


def test_shape_annotations_are_checked_at_run_time():
    """The suite runs with jaxtyping's import hook (pyproject addopts): a wrong shape is a TypeError."""
    spec = RopeSpec(torch.ones(4), head_dim=8)
    with pytest.raises(TypeError):
        spec.rotate(torch.zeros(3, 8, dtype=torch.int64), 0)  # Float annotation, integer tensor


def test_fractional_positions_and_integer_inputs_are_refused():
    """Found by a newcomer: ``rotate(x, tensor([1.5]))`` rotated by 1.5 positions, ``rerotate(x, True)`` by
    one, and an integer ``x`` came back truncated; RoPE rotates floating vectors by whole positions. Run
    as a user runs it: in a process without this suite's run-time annotation checks (which refuse
    these arguments before the function body)."""
    import subprocess
    import sys

    script = """
import torch
from transformers import LlamaConfig
from hogwild_ref.rope import RopeError, RopeSpec
spec = RopeSpec.from_config(LlamaConfig(hidden_size=64, num_attention_heads=4))
x = torch.ones(1, 16)
said = []
for bad in (torch.tensor([1.5]), 1.5, True, torch.tensor([True])):
    for f in (spec.rotate, spec.rerotate):
        try:
            f(x, bad)
        except RopeError as exc:
            said.append(str(exc).split(",")[0])
try:
    spec.rotate(torch.ones(1, 16, dtype=torch.long), 2)
except RopeError as exc:
    said.append(str(exc).split(",")[0])
assert torch.equal(spec.rotate(x, torch.tensor([2])), spec.rotate(x, 2))
import json
print(json.dumps(said))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    said = json.loads(out.stdout)
    assert said == ["positions must be integers (an int or an integer tensor)"] * 8 + [
        "x must be a floating-point tensor (queries or keys)"]
