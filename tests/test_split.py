"""The split common part (Spec §9.5, §9.6, :mod:`hogwild_ref.split`): the fused kernels' outputs and
log-sum-exps against explicit float64 scores, and one-token ticks through each kernel against the dense
float64 oracle and ``decode_attention`` (the one-layer check of tests/test_fast.py).

The ``flex`` kernel is the CUDA form; on the CPU it runs compiled with ``backend="aot_eager"`` (inductor's
CPU flex template does not return the LSE), tiny shapes only. ``HOGWILD_TEST_DEVICE=cuda`` runs these
checks on a GPU (benchmarks/gpu.sh), where ``flex`` is inductor's Triton kernel.
"""

from __future__ import annotations

import time

import pytest
import torch
import transformers
from test_fast import DEVICE, LOGIT_RTOL, _engine, _rel, check_fast_layer

import hogwild_ref.ticks
from hogwild_ref.attention import TOLERANCES
from hogwild_ref.forward import Forward
from hogwild_ref.models import tiny_model
from hogwild_ref.rope import RopeSpec
from hogwild_ref.segments import combined
from hogwild_ref.split import KERNELS, common_attention, decode_attention_split, default_kernel, kernel_for, unsupported

pytestmark = pytest.mark.usefixtures("single_thread")

#: kernels that run on the test device
DEVICE_KERNELS = [k for k in KERNELS if unsupported(k, DEVICE, torch.float32, 16) is None]


def _rope16(kind: str) -> RopeSpec:
    """RoPE of head dim 16 (inductor's flex takes no smaller): rotate-half, or partial interleaved pairs."""
    if kind == "default":
        return RopeSpec.from_config(transformers.LlamaConfig(
            hidden_size=32, num_attention_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 100.0}))
    r = RopeSpec.from_config(transformers.StableLmConfig(
        hidden_size=32, num_attention_heads=2, num_key_value_heads=2, partial_rotary_factor=0.5,
        rope_parameters={"rope_type": "default", "rope_theta": 100.0}))
    return RopeSpec(r.inv_freq, r.attention_scaling, r.head_dim, "interleaved", r.rope_type, r.max_position)


ROPES16 = {k: _rope16(k) for k in ("default", "partial-interleaved")}
assert all(r.head_dim == 16 for r in ROPES16.values()) and ROPES16["partial-interleaved"].rotary_dim == 8


@pytest.mark.parametrize("kernel", DEVICE_KERNELS)
@pytest.mark.parametrize("L,M", [(1, 1), (17, 4), (64, 6), (130, 12), (257, 3)])
def test_common_attention_returns_natural_log_lse(kernel, L, M):
    """Spec §9.5: each kernel's output is the part's softmax output and its LSE the natural-log
    ``logsumexp`` of the scaled scores (a base-2 LSE would be off by a factor ln 2)."""
    g = torch.Generator().manual_seed(L * 31 + M)
    q, k, v = (torch.randn(2, n, 16, generator=g, dtype=torch.float64) for n in (M, L, L))
    scores = q @ k.transpose(-1, -2) * 0.3
    want_lse = torch.logsumexp(scores, dim=-1)
    want = torch.softmax(scores, dim=-1) @ v
    with torch.inference_mode():
        out, lse = common_attention(*(x.float().to(DEVICE) for x in (q, k, v)), 0.3, kernel)
    assert out.shape == (2, M, 16) and lse.shape == (2, M) and lse.dtype == torch.float32
    assert float((lse.cpu().double() - want_lse).abs().max()) <= 1e-5 * float(want_lse.abs().max())
    assert float((out.cpu().double() - want).abs().max()) <= TOLERANCES[torch.float32] * float(want.abs().max())


def test_split_refusals_name_the_fix():
    """The empty common segment is refused for every kernel (the CPU kernel dies with SIGFPE on it);
    flex refuses head dims below 16, cpu_flash other devices, every kernel float64; unknown names fail."""
    q = torch.zeros(2, 3, 16)
    for kernel in KERNELS:
        with pytest.raises(ValueError, match="non-empty common segment"):
            common_attention(q, torch.zeros(2, 0, 16), torch.zeros(2, 0, 16), 1.0, kernel)
    assert "head dim >= 16" in (unsupported("flex", "cpu", torch.float32, 8) or "")
    assert "CPU only" in (unsupported("cpu_flash", "cuda", torch.float32, 16) or "")
    assert "decode_attention" in (unsupported("flex", "cpu", torch.float64, 16) or "")
    with pytest.raises(ValueError, match="head dim >= 16"):
        common_attention(torch.zeros(2, 3, 8), torch.zeros(2, 4, 8), torch.zeros(2, 4, 8), 1.0, "flex")
    assert (default_kernel("cpu"), default_kernel("cuda")) == ("cpu_flash", "flex")
    assert kernel_for(False, "cuda") is None and kernel_for(True, "cuda") == "flex" and kernel_for("flex", "cpu") == "flex"
    with pytest.raises(ValueError, match="unknown split kernel"):
        kernel_for("sdpa", "cpu")


def _spy_kernels(monkeypatch) -> list[str]:
    """The kernel of every split attention the decode ticks run from now on (in a list that grows)."""
    used: list[str] = []
    real = hogwild_ref.ticks.decode_attention_split

    def spy(*args, **kwargs):
        used.append(args[-1])
        return real(*args, **kwargs)

    monkeypatch.setattr(hogwild_ref.ticks, "decode_attention_split", spy)
    return used


@pytest.mark.parametrize("kernel", DEVICE_KERNELS)
def test_split_layer_matches_oracle_and_decode_attention(kernel, monkeypatch):
    """One-token ticks of one layer (Hkv = 2, g = 2, D = 16) through the split path with ``kernel``:
    common segments of 1 to 130 tokens (not multiples of 16 or 128), 1 to 3 rows, tails of several
    lengths under their masks, rows without a new token; within Spec §10 of the float64 oracle, as
    ``decode_attention`` is, with the tolerances of tests/test_fast.py."""
    used = _spy_kernels(monkeypatch)
    cases = 0
    t = time.perf_counter()
    for L, workers, tails, counts in [
        (1, 1, [0], [1]),
        (17, 2, [3, 0], [1, 1]),
        (37, 3, [5, 1, 9], [1, 0, 1]),
        (64, 2, [16, 17], [0, 1]),
        (130, 3, [2, 20, 0], [1, 1, 1]),
        (130, 3, [2, 20, 0], [0, 0, 0]),
    ]:
        table = combined(workers, L, others_header=2, separator=1, own_header=3)
        table = table.with_lengths({f"cur_{w}": n for w, n in enumerate(tails)})
        for name, rope in ROPES16.items():
            for dtype in (torch.float32, torch.bfloat16):
                seed = L * 7 + workers + len(name)
                check_fast_layer(table, counts, rope, 2, 2, dtype, seed, slack=5, split=kernel)
                cases += 1
    assert cases == 24 and used == [kernel] * cases
    print(f"\n{kernel}: {cases} ticks in {time.perf_counter() - t:.1f} s")


def test_split_function_matches_decode_attention_directly():
    """decode_attention_split through each kernel matches decode_attention run in float64 on the same
    inputs (a row that sees no tail key, an inactive row; the CPU, where both kernels run)."""
    if DEVICE.type != "cpu":
        pytest.skip("cpu_flash runs on the CPU only")
    from hogwild_ref.fast import decode_attention
    from hogwild_ref.rope import Rotation

    rope = ROPES16["default"]
    g = torch.Generator().manual_seed(5)
    R, hkv, grp, D, L, St, C = 3, 2, 2, 16, 45, 2, 16
    q = torch.randn(R, hkv * grp, 1, D, generator=g)
    kc, vc = torch.randn(hkv, L, D, generator=g), torch.randn(hkv, L, D, generator=g)
    kt, vt = torch.randn(hkv, St, C, D, generator=g), torch.randn(hkv, St, C, D, generator=g)
    angles = torch.randn(R, St, 1, 1, rope.rotary_dim // 2, generator=g)
    rot = Rotation(torch.cos(angles), torch.sin(angles))
    tail_mask = torch.rand(R, St * C, generator=g) < 0.5
    tail_mask[1] = False  # a row that sees no tail key
    active = torch.tensor([1.0, 1.0, 0.0])
    common_mask = torch.ones(R, L, dtype=torch.bool)
    common_mask[2] = False
    common_mask[2, 0] = True  # an inactive row sees common key 0 (Spec §9.6)
    tail_seen = tail_mask.clone()
    tail_seen[2] = False
    rot64 = Rotation(rot.cos.double(), rot.sin.double())
    want = decode_attention(q.double(), kc.double()[None], vc.double()[None], kt.double(), vt.double(), rot64,
                            common_mask, tail_seen, active.double(), rope, 0.25)
    with torch.inference_mode():
        for kernel in KERNELS:
            got = decode_attention_split(q, kc, vc, kt, vt, rot, tail_mask, active, rope, 0.25, kernel)
            assert (got[2] == 0).all()
            err = float((got.double() - want).abs().max() / want.abs().max())
            assert err <= TOLERANCES[torch.float32], (kernel, err)


@pytest.mark.parametrize("kernel", DEVICE_KERNELS)
def test_split_engine_matches_engine_oracle(kernel, char_tokenizer, monkeypatch):
    """Forward(split=kernel) on a tiny model (head dim 16): every eager one-token tick's common part
    through ``kernel``, over a run with flushes: tokens identical to the engine oracle, logits within
    Spec §12.5's model tolerance."""
    model = tiny_model("qwen3", seed=4, vocab_size=len(char_tokenizer)).to(DEVICE)
    fast = _engine(model, char_tokenizer, "fast", 3, "combined", ticks=40, finisher=False)
    fast.forward.split = kernel
    used = _spy_kernels(monkeypatch)
    got = fast.run("What is 12 + 30?")
    decode = fast.forward.kinds.get("decode", 0)
    assert decode > 20 and used == [kernel] * (2 * decode)  # two layers per tick
    ref = _engine(model, char_tokenizer, "oracle", 3, "combined", ticks=40, finisher=False).run("What is 12 + 30?")
    assert [w.tokens for w in got.workers] == [w.tokens for w in ref.workers]
    for a, b in zip(got.logits, ref.logits, strict=True):
        assert _rel(a.cpu(), b.cpu()) <= LOGIT_RTOL


def test_forward_refuses_unknown_split_kernel():
    model = tiny_model("llama", seed=1)
    with pytest.raises(ValueError, match="unknown split kernel"):
        Forward(model, RopeSpec.from_config(model.config), split="sdpa")


@pytest.mark.skipif(DEVICE.type != "cuda" or not torch.cuda.is_available(), reason="needs CUDA (HOGWILD_TEST_DEVICE=cuda)")
def test_flex_is_the_default_split_kernel_on_cuda():
    """On CUDA, split=True runs flex (inductor's fused kernel) and matches decode_attention."""
    assert kernel_for(True, DEVICE) == "flex"
    table = combined(4, 300, others_header=2, separator=1, own_header=3)
    table = table.with_lengths({f"cur_{w}": 5 * w + 1 for w in range(4)})
    for dtype in (torch.float32, torch.bfloat16):
        check_fast_layer(table, [1, 1, 0, 1], ROPES16["default"], 2, 4, dtype, 11, slack=7, split=True)
