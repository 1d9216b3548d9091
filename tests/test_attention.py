"""Attention backends against the dense oracle, a hand-computed case, and torch.compile.

Inputs are built from pre-RoPE q/k as the model would produce them: the backends get queries rotated at
their view positions and keys stored at segment-local positions; the oracle gets the position-0 forms
and rotates everything at view positions itself (Spec §9.1, the oracle). The oracle is always
evaluated in float64 on the same numbers (pre-RoPE vectors rounded to the tested dtype, then upcast),
so the float32 error is the backend's own error.

Storage capacity beyond each segment's length is filled with NaN: a backend that reads past a
segment's length, or attends to a masked key, produces NaN and fails.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from hogwild_ref.attention import TOLERANCES, oracle, rotate_keys, rotate_queries
from hogwild_ref.plan import plan_tick
from hogwild_ref.rope import RopeSpec
from hogwild_ref.segments import LAYOUTS, Row, combined, contiguous, interleaved
from strategies import any_tables, preset_tables, tick_counts

BACKENDS = {"rotate_keys": rotate_keys, "rotate_queries": rotate_queries}
DTYPES = (torch.float64, torch.float32)
WORST: dict[tuple[str, str], float] = defaultdict(float)


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: see conftest.single_thread


@pytest.fixture(scope="module", autouse=True)
def _report_worst_errors():
    yield
    if WORST:
        print("\nworst error / max|oracle| per backend and dtype:")
        for (name, dt), err in sorted(WORST.items()):
            print(f"  {name:15s} {dt:15s} {err:.3e}  (tolerance {TOLERANCES[getattr(torch, dt.split('.')[-1])]:.0e})")


# ---------------------------------------------------------------------- RoPE specs (small heads)
def _rope(kind: str) -> RopeSpec:
    if kind == "default":
        cfg = transformers.LlamaConfig(hidden_size=16, num_attention_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 100.0})
    elif kind == "yarn":
        cfg = transformers.LlamaConfig(
            hidden_size=16, num_attention_heads=2, max_position_embeddings=512,
            rope_parameters={"rope_type": "yarn", "rope_theta": 100.0, "factor": 4.0, "original_max_position_embeddings": 128},
        )
    elif kind == "partial":
        cfg = transformers.Phi3Config(hidden_size=24, num_attention_heads=2, num_key_value_heads=2, partial_rotary_factor=0.5)
    elif kind == "yarn-partial-interleaved":
        cfg = transformers.StableLmConfig(
            hidden_size=24, num_attention_heads=2, num_key_value_heads=2, partial_rotary_factor=0.5, max_position_embeddings=512,
            rope_parameters={"rope_type": "yarn", "rope_theta": 100.0, "factor": 4.0, "original_max_position_embeddings": 128},
        )
        r = RopeSpec.from_config(cfg)
        return RopeSpec(r.inv_freq, r.attention_scaling, r.head_dim, "interleaved", r.rope_type, r.max_position)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return RopeSpec.from_config(cfg)


ROPES = {k: _rope(k) for k in ("default", "yarn", "partial", "yarn-partial-interleaved")}
assert ROPES["partial"].rotary_dim < ROPES["partial"].head_dim
assert ROPES["yarn"].attention_scaling > 1.1


# ---------------------------------------------------------------------- inputs
def make_inputs(table, counts, rope, hkv, group, dtype, seed, pad=2, plan_rope=True):
    plan = plan_tick(table, counts, rope=rope if plan_rope else None)
    g = torch.Generator().manual_seed(seed)
    R, n = plan.positions.shape
    D = rope.head_dim

    def rnd(*shape):  # values representable in `dtype`, kept as float64 for the oracle
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(torch.float64)

    q_pre = rnd(R, hkv * group, n, D)
    k_pre = [rnd(hkv, L, D) for L in plan.lengths.tolist()]
    vals = [rnd(hkv, L, D) for L in plan.lengths.tolist()]
    nan = torch.full((hkv, pad, D), float("nan"), dtype=torch.float64)

    def store(x):  # storage capacity beyond the segment length holds garbage
        return torch.cat([x, nan], dim=1)

    q = rope.rotate(q_pre.to(dtype), plan.positions[:, None, :])
    keys = [store(rope.rotate(k.to(dtype), torch.arange(k.shape[1])).double()).to(dtype) for k in k_pre]
    values = [store(v).to(dtype) for v in vals]
    q0 = rope.rotate(q_pre, 0)
    keys0 = [store(rope.rotate(k, 0)) for k in k_pre]
    values0 = [store(v) for v in vals]
    return plan, (q, keys, values), (q0, keys0, values0)


def check_backends(table, counts, rope, hkv, group, dtype, seed, plan_rope=True):
    plan, (q, keys, values), (q0, keys0, values0) = make_inputs(table, counts, rope, hkv, group, dtype, seed, plan_rope=plan_rope)
    scaling = rope.head_dim**-0.5
    ref = oracle(q0, keys0, values0, plan, rope, scaling)
    assert ref.dtype == torch.float64
    valid = plan.valid  # (R, n)
    if not bool(valid.any()):
        return
    ref_valid = ref.permute(0, 2, 1, 3)[valid]  # (#valid, Hq, D)
    assert torch.isfinite(ref_valid).all()
    scale = float(ref_valid.abs().max())
    for name, fn in BACKENDS.items():
        out = fn(q, keys, values, plan, rope, scaling)
        assert out.shape == q.shape and out.dtype == dtype, name
        got = out.permute(0, 2, 1, 3)[valid].double()
        assert torch.isfinite(got).all(), f"{name} produced non-finite values (read past a segment or masked key?)"
        err = float((got - ref_valid).abs().max()) / scale
        key = (name, str(dtype))
        WORST[key] = max(WORST[key], err)
        assert err <= TOLERANCES[dtype], f"{name} {dtype}: error {err:.3e} > {TOLERANCES[dtype]:.0e}"


HEADS = st.sampled_from([(1, 1), (1, 4), (2, 1), (2, 2), (2, 4), (1, 2)])  # (Hkv, Hq/Hkv): MQA, GQA, MHA


# ---------------------------------------------------------------------- properties
@settings(max_examples=300)
@given(
    data=st.data(),
    table=any_tables(max_workers=6, max_length=6),
    rope=st.sampled_from(list(ROPES)),
    heads=HEADS,
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31 - 1),
    plan_rope=st.booleans(),
)
def test_backends_match_oracle_random_tables(data, table, rope, heads, dtype, seed, plan_rope):
    counts = data.draw(tick_counts(table.workers, 3), label="counts")
    check_backends(table, counts, ROPES[rope], *heads, dtype, seed, plan_rope)


@pytest.mark.parametrize("layout", LAYOUTS)
@settings(max_examples=100)
@given(
    data=st.data(),
    rope=st.sampled_from(list(ROPES)),
    heads=HEADS,
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31 - 1),
)
def test_backends_match_oracle_presets(layout, data, rope, heads, dtype, seed):
    table = data.draw(preset_tables(layouts=(layout,), max_workers=6, max_length=8), label="table")
    counts = data.draw(tick_counts(table.workers, 4), label="counts")
    check_backends(table, counts, ROPES[rope], *heads, dtype, seed)


def reference_attention(q0, keys0, values, plan, rope, scaling):
    """Dense attention written out loop by loop (independent of the library's oracle and its grouping).

    For every row r, valid query slot i and query head h: key/value head ``h // G`` (HF's repeat_kv),
    the row's view linearised at post-write lengths, every key rotated purely to its view position,
    the query to its view position, softmax over the keys at view positions <= the query's.
    """
    R, Hq, n, D = q0.shape
    hkv = keys0[0].shape[0]
    G = Hq // hkv
    out = torch.zeros(R, Hq, n, D, dtype=torch.float64)
    index = {sid: j for j, sid in enumerate(plan.segment_ids)}
    for r, row in enumerate(plan.rows):
        lin = [(index[sid], t) for sid in row.view for t in range(plan.table.length(sid))]
        for i in range(row.new_tokens):
            p = int(plan.positions[r, i])
            for h in range(Hq):
                kv = h // G
                qv = rope.rerotate(q0[r, h, i].double(), p)
                ks = [rope.rerotate(keys0[j][kv, t].double(), vp) for vp, (j, t) in enumerate(lin) if vp <= p]
                vs = [values[j][kv, t].double() for vp, (j, t) in enumerate(lin) if vp <= p]
                w = torch.softmax(torch.stack([qv @ k for k in ks]) * scaling, dim=0)
                out[r, h, i] = sum(wi * v for wi, v in zip(w, vs))
    return out


@settings(max_examples=60)
@given(
    data=st.data(),
    table=any_tables(max_workers=4, max_length=4),
    rope=st.sampled_from(list(ROPES)),
    heads=st.sampled_from([(1, 2), (2, 2), (1, 3), (2, 1)]),
    seed=st.integers(0, 2**31 - 1),
)
def test_oracle_and_backends_match_loop_reference(data, table, rope, heads, seed):
    """The library oracle itself, and GQA head grouping, against a loop-by-loop restatement."""
    counts = data.draw(tick_counts(table.workers, 2), label="counts")
    rope = ROPES[rope]
    plan, (q, keys, values), (q0, keys0, values0) = make_inputs(table, counts, rope, *heads, torch.float64, seed)
    scaling = rope.head_dim**-0.5
    ref = reference_attention(q0, keys0, values0, plan, rope, scaling)
    valid = plan.valid
    if not bool(valid.any()):
        return
    want = ref.permute(0, 2, 1, 3)[valid]
    scale = float(want.abs().max())
    for name, got in (
        ("oracle", oracle(q0, keys0, values0, plan, rope, scaling)),
        ("rotate_keys", rotate_keys(q, keys, values, plan, rope, scaling)),
        ("rotate_queries", rotate_queries(q, keys, values, plan, rope, scaling)),
    ):
        err = float((got.permute(0, 2, 1, 3)[valid] - want).abs().max()) / scale
        assert err <= TOLERANCES[torch.float64], f"{name}: {err:.3e}"


# deterministic coverage of the required corners: W = 1..6 in every layout, empty segments (zero-length
# headers, idle workers' empty steps), uneven counts and workers with zero new tokens, GQA and MQA.
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("heads", [(2, 2), (2, 4), (1, 3)], ids=["gqa2", "gqa4", "mqa"])
@pytest.mark.parametrize("W", range(1, 7))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_backends_match_oracle_corners(layout, W, heads, dtype):
    build = {"contiguous": contiguous, "interleaved": interleaved}.get(layout)
    table = build(W, 5) if build else combined(W, 5, others_header=0, separator=1, own_header=2)
    table = table.append([(w * 2) % 3 for w in range(W)])  # some workers' segments stay empty
    counts = [(w * 5 + 1) % 4 for w in range(W)]  # 1, 2, 3, 0, 1, 2: uneven, with zeros
    rope = ROPES["partial"] if W % 2 else ROPES["yarn"]
    check_backends(table, counts, rope, *heads, dtype, seed=W)


@pytest.mark.parametrize("counts", [[1, 0], [0, 0]], ids=["one-idle-row", "no-keys-at-all"])
@pytest.mark.parametrize("backend", ["oracle", "rotate_keys", "rotate_queries"])
def test_row_with_empty_view_attends_nothing(backend, counts):
    """Spec §3.4: a zero-token row sees nothing (the reference returns zeros) -- even when its view is empty.

    SRC BUG (attention.py, _masked_softmax: ``scores.amax(dim=-1)`` on an empty key axis): a row whose
    view holds no key at all (interleaved(2, 0), counts [1, 0]: worker 1 is idle over empty segments)
    raises IndexError in oracle and rotate_keys; a tick with no stored key at all ([0, 0]) raises in
    all three backends.
    """
    rope = RopeSpec(torch.tensor([1.0]), head_dim=2)
    plan = plan_tick(interleaved(2, 0), counts, rope=rope)
    q = torch.ones(2, 1, 1, 2, dtype=torch.float64)
    kv = [torch.ones(1, L, 2, dtype=torch.float64) for L in plan.lengths.tolist()]
    fn = {"oracle": oracle, "rotate_keys": rotate_keys, "rotate_queries": rotate_queries}[backend]
    out = fn(q, kv, kv, plan, rope, 1.0)
    assert out.shape == q.shape
    assert torch.equal(out[1], torch.zeros_like(out[1]))  # the idle row attends nothing


# ---------------------------------------------------------------------- hand-computed case
def _rot(v, angle):
    """2-D rotation by `angle` radians, written out."""
    c, s = math.cos(angle), math.sin(angle)
    return (v[0] * c - v[1] * s, v[0] * s + v[1] * c)


def test_hand_computed_write_before_read():
    """W=2, contiguous, head_dim 2 (one rotary pair, theta = 0.5 rad per position).

    Before the tick: prompt = [P], out_0 = [A0] (worker 0 decoded one token), out_1 = [] (worker 1 idle).
    Tick: both workers feed one token (A1 and B0). Write-before-read: worker 0's query (A1) sees B0.
      worker 0's view [prompt, out_1, out_0] = [P@0, B0@1, A0@2, A1@3]; its query sits at 3.
      worker 1's view [prompt, out_0, out_1] = [P@0, A0@1, A1@2, B0@3]; its query sits at 3.
    Score (R(3θ)q)·(R(tθ)k) = q·R((t-3)θ)k; scaling 1/sqrt(2).
    """
    theta = 0.5
    P, A0, A1, B0 = (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, -1.0)  # pre-RoPE keys
    vP, vA0, vA1, vB0 = (1.0, 0.0), (0.0, 1.0), (2.0, 0.0), (0.0, 10.0)  # values
    q_w0, q_w1 = (1.0, 0.5), (-1.0, 1.0)  # pre-RoPE queries of A1 and B0

    def attend(q, keys):  # keys: (pre-RoPE key, value, relative angle t-3 in units of theta)
        scores = [sum(a * b for a, b in zip(q, _rot(k, d * theta))) / math.sqrt(2.0) for k, _, d in keys]
        e = [math.exp(x - max(scores)) for x in scores]
        z = sum(e)
        return [sum(ei * v[c] for ei, (_, v, _) in zip(e, keys)) / z for c in range(2)]

    expected_w0 = attend(q_w0, [(P, vP, -3), (B0, vB0, -2), (A0, vA0, -1), (A1, vA1, 0)])
    expected_w1 = attend(q_w1, [(P, vP, -3), (A0, vA0, -2), (A1, vA1, -1), (B0, vB0, 0)])
    # if worker 0 did not see B0 (no write-before-read) its output would be quite different
    stale_w0 = attend(q_w0, [(P, vP, -2), (A0, vA0, -1), (A1, vA1, 0)])
    assert abs(expected_w0[1] - stale_w0[1]) > 0.5

    # model-side inputs, rotated by hand: keys at segment-local positions, queries at view position 3
    rope = RopeSpec(torch.tensor([theta]), head_dim=2)
    table = contiguous(2, 1).append([1, 0])
    plan = plan_tick(table, [1, 1], rope=rope)
    assert plan.segment_ids == ("prompt", "out_0", "out_1")
    assert plan.positions.tolist() == [[3], [3]]
    T = lambda rows: torch.tensor(rows, dtype=torch.float64)[None]  # (Hkv=1, L, 2)
    keys = [T([_rot(P, 0)]), T([_rot(A0, 0), _rot(A1, theta)]), T([_rot(B0, 0)])]
    values = [T([vP]), T([vA0, vA1]), T([vB0])]
    q = torch.tensor([[[_rot(q_w0, 3 * theta)]], [[_rot(q_w1, 3 * theta)]]], dtype=torch.float64)  # (R=2, H=1, n=1, 2)
    keys0 = [T([P]), T([A0, A1]), T([B0])]
    q0 = torch.tensor([[[q_w0]], [[q_w1]]], dtype=torch.float64)
    expected = torch.tensor([[[expected_w0]], [[expected_w1]]], dtype=torch.float64)
    s = 2**-0.5
    for name, out in (
        ("rotate_keys", rotate_keys(q, keys, values, plan, rope, s)),
        ("rotate_queries", rotate_queries(q, keys, values, plan, rope, s)),
        ("oracle", oracle(q0, keys0, values, plan, rope, s)),
    ):
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


# ---------------------------------------------------------------------- torch.compile
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_rotate_queries_under_torch_compile():
    torch._dynamo.reset()
    rope = ROPES["yarn"]
    table = combined(3, 5, others_header=1, separator=1, own_header=2).append([2, 0, 3])
    plan, (q, keys, values), _ = make_inputs(table, [1, 2, 0], rope, 2, 2, torch.float32, seed=7)
    s = rope.head_dim**-0.5
    eager = rotate_queries(q, keys, values, plan, rope, s)
    compiled = torch.compile(rotate_queries)
    t0 = time.perf_counter()
    out = compiled(q, keys, values, plan, rope, s)
    elapsed = time.perf_counter() - t0
    print(f"\ntorch.compile(rotate_queries): first call {elapsed:.1f} s")
    v = plan.valid.any(dim=1)
    torch.testing.assert_close(out[v], eager[v], rtol=1e-5, atol=1e-6)
    # same lengths, different views (so different offsets/positions, same shapes): the compiled graph
    # must not have baked in the first tick's offsets (and this call need not recompile)
    rows = [Row((v[0], *reversed(v[1:-1]), v[-1]), n) for v, n in zip(table.views, [1, 2, 0])]
    plan2, (q2, keys2, values2), _ = make_inputs(table, rows, rope, 2, 2, torch.float32, seed=8)
    assert torch.equal(plan2.lengths, plan.lengths) and not torch.equal(plan2.offsets, plan.offsets)
    t0 = time.perf_counter()
    out2 = compiled(q2, keys2, values2, plan2, rope, s)
    print(f"torch.compile(rotate_queries): second tick (other offsets) {time.perf_counter() - t0:.2f} s")
    v2 = plan2.valid.any(dim=1)
    torch.testing.assert_close(out2[v2], rotate_queries(q2, keys2, values2, plan2, rope, s)[v2], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- Spec §9.5 log-sum-exp merge
@settings(max_examples=150)
@given(
    sizes=st.lists(st.integers(0, 6), min_size=1, max_size=5),
    seed=st.integers(0, 2**31 - 1),
    density=st.floats(0.0, 1.0),
)
def test_lse_merge_of_parts_equals_one_softmax(sizes, seed, density):
    """Splitting the keys into parts, attending per part and merging by LSE is one softmax (Spec §9.5)."""
    from hogwild_ref.attention import lse_merge, partial_attention

    g = torch.Generator().manual_seed(seed)
    m, d = sum(sizes), 3
    z = torch.randn(2, m, generator=g, dtype=torch.float64) * 4
    v = torch.randn(2, m, d, generator=g, dtype=torch.float64)
    mask = torch.rand(2, m, generator=g, dtype=torch.float64) < density
    # independent single softmax, written out by hand per query
    expected = torch.zeros(2, d, dtype=torch.float64)
    for i in range(2):
        vis = [t for t in range(m) if mask[i, t]]
        if vis:
            e = torch.exp(z[i, vis] - z[i, vis].max())
            expected[i] = (e[:, None] * v[i, vis]).sum(0) / e.sum()
    outs, lses, start = [], [], 0
    for size in sizes:
        sl = slice(start, start + size)
        o, lse = partial_attention(z[:, sl], mask[:, sl], v[:, sl])
        outs.append(o)
        lses.append(lse)
        start += size
    got = lse_merge(outs, lses)
    assert torch.allclose(got, expected, atol=1e-12, rtol=1e-10)
