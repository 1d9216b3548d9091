"""The fast backend (Spec §9.6) against independent oracles.

* One layer: the arena store, the host plan and :func:`hogwild_ref.fast.decode_attention`, driven
  through a :class:`~hogwild_ref.ticks.DecodeTick` exactly as the model drives it (write, then attend), against the
  dense float64 attention oracle (Spec §9.1) for hypothesis-drawn tables of the layouts the fast
  path covers (W = 1..8, zero-token rows included), within Spec §10.
* Whole engine: greedy runs with ``backend="fast"`` are token-identical to the engine oracle
  (Spec §11.4) with logits within 1e-4, through flushes, step changes (multi-token fallback ticks).
* Compilation: a compiled decode step does not recompile from one tick to the next.
* The conformance suite's model vectors pass with ``fast`` as the reference adapter's backend.

``HOGWILD_TEST_DEVICE=cuda`` runs the one-layer and engine checks on a GPU (benchmarks/gpu.sh).
"""

from __future__ import annotations

import os
import types

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hogwild_ref.attention import TOLERANCES, oracle
from hogwild_ref.engine import Engine, FlushEvent
from hogwild_ref.models import tiny_model
from hogwild_ref.plan import plan_tick
from hogwild_ref.scheduler import SchedulerConfig
from hogwild_ref.segments import common_segment
from hogwild_ref.storage import Storage
from hogwild_ref.ticks import DecodeTick
from strategies import any_tables, preset_tables, stored_key_tolerance
from test_attention import ROPES

DEVICE = torch.device(os.environ.get("HOGWILD_TEST_DEVICE", "cpu"))
LOGIT_RTOL = 1e-4  # Spec §12.5 (model logits), as in test_engine

pytestmark = pytest.mark.usefixtures("single_thread")


def _layer_config(hq: int, hkv: int, head_dim: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(num_hidden_layers=1, num_attention_heads=hq, num_key_value_heads=hkv,
                                 head_dim=head_dim, hidden_size=hq * head_dim)


def filled_storage(table, plan, rope, dtype, hkv, group, k_pre, vals, slack, keys_transposed=None) -> Storage:
    """One layer's storage for ``table`` (capacity: the post-write lengths of ``plan`` plus ``slack``)
    holding segment ``j``'s keys ``k_pre[j]`` (rotated to local positions, Spec §2.1) and values
    ``vals[j]``, every unused slot large finite garbage (reading one past a mask shows): keys of 1e4,
    values of a quarter of the dtype's largest, so that even the weight ``exp(-80)`` a masked key would
    get unzeroed (Spec §9.6) shows in float32 and bfloat16."""
    D = rope.head_dim
    caps = {s.id: plan.table.length(s.id) + slack for s in table.segments}
    storage = Storage(_layer_config(hkv * group, hkv, D), table, rope, dtype, DEVICE, caps, keys_transposed=keys_transposed)
    store = storage.stores[0]
    if keys_transposed is not None:
        assert store.keys_transposed == keys_transposed
    for buf in (store.k_common, store.k_tail, store.k_static):
        buf.fill_(1e4)
    for buf in (store.v_common, store.v_tail, store.v_static):
        buf.fill_(-torch.finfo(dtype).max / 4)
    for j, seg in enumerate(table.segments):
        if seg.length:
            local = rope.rotate(k_pre[j][:, : seg.length].to(dtype), torch.arange(seg.length))
            store.write(j, 0, local.to(DEVICE), vals[j][:, : seg.length].to(dtype).to(DEVICE))
    return storage


def check_fast_layer(table, counts, rope_name, hkv, group, dtype, seed, slack, split=True, keys_transposed=None):
    """One tick of one layer through the cache's fast path vs the dense oracle, and the same tick through
    the split path (``split``: the tick's option, True: the device's kernel); ``rope_name``: a name of
    ``ROPES`` or a RopeSpec; ``keys_transposed``: the store's key layout (default: the device's)."""
    rope = ROPES[rope_name] if isinstance(rope_name, str) else rope_name
    plan = plan_tick(table, counts, rope=rope)  # the oracle's plan (post-write lengths, positions)
    g = torch.Generator().manual_seed(seed)
    R, D, hq = table.workers, rope.head_dim, hkv * group

    def rnd(*shape):  # representable in dtype, kept in float64 for the oracle
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(torch.float64)

    q_pre = rnd(R, hq, 1, D)
    k_pre = [rnd(hkv, L, D) for L in plan.sizes]
    vals = [rnd(hkv, L, D) for L in plan.sizes]
    scaling = D**-0.5
    ref = oracle(rope.rotate(q_pre, 0), [rope.rotate(k, 0) for k in k_pre], vals, plan, rope, scaling)

    storage = filled_storage(table, plan, rope, dtype, hkv, group, k_pre, vals, slack, keys_transposed)
    store = storage.stores[0]
    assert DecodeTick.applies(storage, table.rows(counts))
    tick = DecodeTick(storage, counts, rope)
    positions = tick.positions
    assert positions.tolist() == plan.positions[:, :1].tolist() or not all(counts)
    k_new = torch.stack([
        rope.rotate(k_pre[plan.write_indices[r]][:, plan.write_starts[r] : plan.write_starts[r] + 1].to(dtype),
                    plan.positions[r, 0])
        if counts[r] else torch.full((hkv, 1, D), float("nan"), dtype=dtype)
        for r in range(R)
    ])
    v_new = torch.stack([
        vals[plan.write_indices[r]][:, plan.write_starts[r] : plan.write_starts[r] + 1].to(dtype)
        if counts[r] else torch.full((hkv, 1, D), float("nan"), dtype=dtype)
        for r in range(R)
    ])
    q = rope.rotate(q_pre.to(dtype), plan.positions[:, None, :1])
    with torch.inference_mode():
        tick.write(0, store, k_new.to(DEVICE), v_new.to(DEVICE))
        out = tick.attend(0, store, q.to(DEVICE), scaling).cpu()
        tick.split = split  # the same tick through the split path (fused common part + LSE merge, Spec §9.5)
        out_split = tick.attend(0, store, q.to(DEVICE), scaling).cpu()
    assert tick.table == plan.table
    active = torch.tensor(counts, dtype=torch.bool)
    err = 0.0
    for name, got_all in (("fast", out), ("fast split", out_split)):
        assert got_all.shape == q.shape and got_all.dtype == dtype
        assert (got_all[~active] == 0).all(), "a row without a new token must see nothing (Spec §3.4)"
        if not active.any():
            return 0.0
        want = ref[active].double()
        got = got_all[active].double()
        assert torch.isfinite(got).all()
        e = float((got - want).abs().max() / want.abs().max())
        assert e <= TOLERANCES[dtype], f"{name} {dtype}: error {e:.3e} > {TOLERANCES[dtype]:.0e}"
        err = max(err, e)
    # the new keys landed at their segment-local positions, nothing else was written (Spec §3.2, §3.4)
    for r in range(R):
        j, t = plan.write_indices[r], plan.write_starts[r]
        if counts[r]:
            stored = store.keys[j][:, t].cpu().double()
            local = rope.rotate(k_pre[j][:, t : t + 1], torch.tensor(t))[:, 0]
            tol = stored_key_tolerance(dtype, int(plan.positions[r, 0]), t)
            assert float((stored - local).abs().max()) <= tol * float(local.abs().max())
    return err


HEADS = st.sampled_from([(1, 1), (1, 4), (2, 1), (2, 2), (2, 4)])


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    table=preset_tables(min_workers=1, max_workers=8, max_length=9),
    rope=st.sampled_from(list(ROPES)),
    heads=HEADS,
    dtype=st.sampled_from([torch.float64, torch.float32]),
    seed=st.integers(0, 2**31 - 1),
    slack=st.integers(1, 70),
)
def test_fast_layer_matches_oracle_presets(data, table, rope, heads, dtype, seed, slack):
    assume(common_segment(table) is not None)
    counts = data.draw(st.lists(st.integers(0, 1), min_size=table.workers, max_size=table.workers), label="counts")
    check_fast_layer(table, counts, rope, *heads, dtype, seed, slack)


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    table=any_tables(max_workers=6, max_length=6),
    rope=st.sampled_from(list(ROPES)),
    heads=HEADS,
    dtype=st.sampled_from([torch.float64, torch.float32]),
    seed=st.integers(0, 2**31 - 1),
)
def test_fast_layer_matches_oracle_explicit_tables(data, table, rope, heads, dtype, seed):
    """Explicit tables whose views share a first static segment take the fast path too."""
    assume(common_segment(table) is not None)
    counts = data.draw(st.lists(st.integers(0, 1), min_size=table.workers, max_size=table.workers), label="counts")
    check_fast_layer(table, counts, rope, *heads, dtype, seed, 3)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    table=preset_tables(min_workers=1, max_workers=4, max_length=9),
    problems=st.integers(2, 4),
    rope=st.sampled_from(list(ROPES)),
    heads=HEADS,
    seed=st.integers(0, 2**31 - 1),
)
def test_fast_layer_matches_oracle_on_union_tables(data, table, problems, rope, heads, seed):
    """P problems side by side (Spec §13.3): each reads only its own common window and tail blocks
    (block-diagonal, Spec §9.6), and the whole union still equals the dense oracle over the union."""
    from hogwild_ref.batch import union_tables
    from hogwild_ref.segments import decode_groups

    assume(common_segment(table) is not None)
    tables = [table] + [table.with_lengths({s.id: data.draw(st.integers(0, 9), label="length") for s in table.segments})
                        for _ in range(problems - 1)]
    union, _ = union_tables(tables)
    groups = decode_groups(union)
    assert groups is not None and len(groups.commons) == problems and groups.workers == table.workers
    counts = data.draw(st.lists(st.integers(0, 1), min_size=union.workers, max_size=union.workers), label="counts")
    check_fast_layer(union, counts, rope, *heads, torch.float64, seed, 3)


def test_decode_groups_refuse_tables_whose_groups_are_not_block_diagonal():
    from hogwild_ref.batch import union_tables
    from hogwild_ref.segments import Segment, SegmentTable, decode_groups, make_layout

    a, b = make_layout("combined", 2), make_layout("combined", 3)
    assert decode_groups(union_tables([a, b])[0]) is None  # groups of unequal size
    assert decode_groups(union_tables([a, make_layout("interleaved", 2)])[0]) is None  # unequal tails
    shared = SegmentTable((Segment("c0"), Segment("c1"), Segment("x"), Segment("w0", 0, 0), Segment("w1", 0, 1)),
                          (("c0", "x", "w0"), ("c1", "x", "w1")))
    assert decode_groups(shared) is None  # "x" is read by both groups: not block-diagonal
    interleaved = SegmentTable((Segment("c0"), Segment("c1"), Segment("w0", 0, 0), Segment("w1", 0, 1),
                                Segment("w2", 0, 2), Segment("w3", 0, 3)),
                               (("c0", "w0"), ("c1", "w1"), ("c0", "w2"), ("c1", "w3")))
    assert decode_groups(interleaved) is None  # a group's workers are not consecutive
    groups = decode_groups(union_tables([a, a])[0])
    assert groups is not None and groups.commons == (0, 7) and groups.per_group == 6
    assert groups.members(1) == list(range(7, 14))  # problem 1: the union's second block of 7 segments


@pytest.mark.parametrize("keys_transposed", [False, True])
def test_fast_layer_w8_combined_deterministic(keys_transposed):
    """W = 8, combined, with both key layouts of the store (Spec §9.6 "Storage"): keys lying ``(cap, D)``
    per head, as on accelerators, and transposed, as on CPUs."""
    from hogwild_ref.segments import combined

    table = combined(8, 37, others_header=5, separator=2, own_header=4)
    table = table.with_lengths({f"cur_{w}": 3 * w + 1 for w in range(8)})
    for counts in ([1] * 8, [1, 0, 1, 0, 0, 1, 1, 0], [0] * 7 + [1]):
        check_fast_layer(table, counts, "yarn-partial-interleaved", 2, 4, torch.float32, 7, 5,
                         keys_transposed=keys_transposed)
        check_fast_layer(table, counts, "default", 2, 4, torch.float64, 8, 70, keys_transposed=keys_transposed)


@pytest.mark.parametrize("keys_transposed", [False, True])
def test_both_key_layouts_store_the_same_segments(keys_transposed):
    """Segment views, one-token scatters (the trash included) and growth read and write the same keys
    whichever way the store lays them out in memory (Spec §9.6 "Storage"), in the written and the
    static tail alike; growth zeroes what it does not copy."""
    from hogwild_ref.store import SegmentStore

    g = torch.Generator().manual_seed(3)
    store = SegmentStore([5, 2, 2, 2], 2, 4, torch.float64, "cpu", common=0, keys_transposed=keys_transposed,
                         static=[1, 3])
    assert store.tail_segments == [2] and store.static_segments == [1, 3]
    with pytest.raises(ValueError, match="static"):
        store.slot(3, 0)  # no one-token tick writes a static segment
    want = {j: torch.randn(2, n, 4, generator=g, dtype=torch.float64) for j, n in ((0, 5), (1, 2), (2, 1), (3, 2))}
    for j, k in want.items():
        store.write(j, 0, k, -k)
    # one token per row through the fast path's scatter: row 0 to segment 2 slot 1, row 1 to the trash
    slots = torch.tensor([store.slot(2, 1), -1])
    new = torch.randn(2, 2, 4, generator=g, dtype=torch.float64)  # (Hkv, R, D)
    store.scatter(store.scatter_index(slots), new, -new)
    want[2] = torch.cat([want[2], new[:, :1]], dim=1)
    store.reserve(0, 11)  # the common buffers grow ...
    store.reserve(2, 3)  # ... and the written tail ...
    assert store.block == 4 and store.static_block == 2  # ... alone
    store.reserve(3, 3)  # ... and the static tail, alone
    assert store.capacities[0] == 11 and store.block == 4 and store.static_block == 4
    for j, k in want.items():
        n = k.shape[1]
        assert torch.equal(store.keys[j][:, :n], k) and torch.equal(store.values[j][:, :n], -k), j
        assert not store.keys[j][:, n:].any() and not store.values[j][:, n:].any(), j  # zero where nothing was stored
    # the last block of both flat tail buffers, written by row 1 before the growth: (C, D) values, and
    # keys (D, pitch) stored transposed (rows padded to cache lines, Spec §9.6 "Storage") or (C, D)
    k_trash, v_trash = store.head_dim * store.key_pitch(store.block), store.block * store.head_dim
    assert not store._k_flat[-k_trash:].any() and not store._v_flat[-v_trash:].any()
    strided = store.k_common.stride(-1) != 1 and store.k_tail.stride(-1) != 1
    assert strided == keys_transposed


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_transposed_key_rows_start_on_cache_lines(dtype):
    """Stored transposed (a CPU store), each head dimension's row of keys starts a whole number of
    64-byte lines after the previous one, in the common buffer and both tail parts, before and after
    they grow (Spec §9.6 "Storage"): a 514-slot window read with rows 515 floats apart took 549 us for
    8 problems' scores, 327 us at 528 (numpy's product, data out of the cache). The padding is
    zeros that no segment view covers."""
    from hogwild_ref.store import KEY_ROW_BYTES, SegmentStore

    size = dtype.itemsize
    store = SegmentStore([514, 11, 75, 4, 75], 3, 64, dtype, "cpu", common=0, keys_transposed=True, static=[1, 3])

    def check() -> None:
        for k in (store.k_common, store.k_tail, store.k_static):
            assert k.stride(-2) == 1  # slots along the row
            assert k.stride(-1) * size % KEY_ROW_BYTES == 0 and k.stride(-1) >= k.shape[-2], k.stride()
            assert k.data_ptr() % KEY_ROW_BYTES == 0
        assert store.key_pitch(store.block) == store.k_tail.stride(-1)

    check()
    assert store.k_common.shape[-2] == 514 and store.k_common.stride(-1) * size >= 515 * size
    store.reserve(0, 600)
    store.reserve(2, 90)
    store.reserve(1, 13)
    check()
    flat = store._k_flat.view(-1, 64, store.k_tail.stride(-1))  # (blocks + 1, D, pitch)
    assert not flat[..., store.block:].any()  # the padding past each block: zeros
    plain = SegmentStore([514, 11, 75, 4, 75], 3, 64, dtype, "cpu", common=0, keys_transposed=False, static=[1, 3])
    assert plain.k_common.stride(-1) == 1 and plain.key_pitch(515) == 515  # (len, D) rows: nothing to pad


def test_tail_parts_are_read_to_their_own_windows():
    """An eager tick reads the written tail to its longest segment and the static tail (headers,
    separators) to its own (Spec §9.6): a 70-token step does not make a 3-token header cost 80 slots."""
    from hogwild_ref.fast import plan_decode
    from hogwild_ref.segments import combined

    table = combined(2, 40, others_header=2, separator=1, own_header=3).with_lengths({"cur_0": 70, "cur_1": 5})
    rope = ROPES["default"]
    storage = Storage(_layer_config(4, 2, rope.head_dim), table, rope, capacities={"cur_0": 128})
    store = storage.stores[0]
    assert [table.segments[j].id for j in store.tail_segments] == ["cur_0", "cur_1"]
    assert [table.segments[j].id for j in store.static_segments] == ["others_header", "sep_0", "sep_1", "own_header"]
    plan = plan_decode(table, [1, 1], rope, store)
    assert (plan.tail_window, plan.static_window) == (80, 16)  # 71 and 3 tokens, rounded up to 16
    slots = 40 + 2 * 80 + 4 * 16  # the common segment exactly, then each part to its window
    assert storage.decode_read_bytes() == 2 * slots * 2 * rope.head_dim * 4  # keys and values, Hkv = 2, float32
    assert (store.block, store.static_block) == (128, 64)  # each part's capacity: its largest segment's
    whole = 64 + 2 * 128 + 4 * 64  # a compiled step: the rounded common window, whole blocks
    assert storage.decode_read_bytes(compiled=True) == 2 * whole * 2 * rope.head_dim * 4


def test_store_growth_keeps_contents():
    """A write past a segment's capacity re-allocates the arena and keeps every segment's keys."""
    from hogwild_ref.segments import combined
    from hogwild_ref.store import SegmentStore

    table = combined(2, 4)
    store = SegmentStore([4, 1, 2, 1, 2, 1, 1], 1, 2, torch.float64, "cpu", common=0)
    assert store.capacities == [4] + [2] * 6  # tail blocks of one capacity
    for j in range(7):
        store.write(j, 0, torch.full((1, 1, 2), float(j)), torch.full((1, 1, 2), -float(j)))
    assert store.reserve(table.index("cur_0"), 9)
    assert store.generation == 1 and store.block == 9 and store.k_tail.shape == (1, 6, 9, 2)
    for j in range(7):
        assert float(store.keys[j][0, 0, 0]) == j and float(store.values[j][0, 0, 0]) == -j
    assert [float(x) for x in store.k_tail[0, :, 0, 0]] == [float(j) for j in store.tail_segments]
    assert store.slot(store.tail_segments[2], 5) == 2 * 9 + 5


# ---------------------------------------------------------------------- engine
def boundary(text: str) -> bool:
    return len(text) >= 12


def _engine(model, tok, backend, workers, layout, ticks=24, compile=False, boundary=boundary, **kw):
    sched = SchedulerConfig(max_ticks=ticks, boundary=boundary, collab_every=kw.pop("collab_every", None),
                            eos_token_ids=frozenset())
    return Engine(model, tok, workers=workers, layout=layout, backend=backend, scheduler=sched,
                  record_logits=True, compile=compile, **kw)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("family", ["llama", "qwen3", "phi3"])
@pytest.mark.parametrize("layout,workers", [("combined", 1), ("combined", 4), ("combined", 8), ("interleaved", 3),
                                            ("contiguous", 2)])
def test_fast_engine_matches_engine_oracle(family, layout, workers, char_tokenizer):
    model = tiny_model(family, seed=3, vocab_size=len(char_tokenizer)).to(DEVICE)
    ref = _engine(model, char_tokenizer, "oracle", workers, layout, collab_every=4).run("What is 7 * 6?")
    fast = _engine(model, char_tokenizer, "fast", workers, layout, collab_every=4).run("What is 7 * 6?")
    assert [w.tokens for w in fast.workers] == [w.tokens for w in ref.workers]
    assert [w.view_tokens for w in fast.workers] == [w.view_tokens for w in ref.workers]
    for a, b in zip(fast.logits, ref.logits, strict=True):
        for w in range(a.shape[0]):
            assert _rel(a[w].cpu(), b[w].cpu()) <= LOGIT_RTOL


@pytest.mark.slow
def test_compiled_decode_step_recompiles_only_when_storage_grows(char_tokenizer):
    """Spec §9.6: one graph for every one-token tick between two re-allocations of the storage — growing
    segments, flushes and a growing common window included; a re-allocation (geometric growth, so
    O(log n) of them over a run) costs at most one compilation."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    model = tiny_model("llama", seed=1, vocab_size=len(char_tokenizer)).to(DEVICE)
    torch._dynamo.reset()
    counters.clear()
    engine = _engine(model, char_tokenizer, "fast", 2, "combined", ticks=60, compile=True,
                     boundary=lambda text: len(text) >= 24, finisher=False)
    made = []
    real_storage = engine.forward.storage
    engine.forward.storage = lambda *a, **k: made.append(real_storage(*a, **k)) or made[-1]  # type: ignore[method-assign]
    flushes = 0
    for event in engine.stream("What is 12 + 30?"):
        flushes += isinstance(event, FlushEvent)
    got = engine.result
    assert got.ticks == 60 and flushes >= 2
    growths = made[0].stores[0].generation
    graphs = counters["stats"]["unique_graphs"]
    assert 1 <= graphs <= 1 + growths and growths <= 3, (graphs, growths)
    ref = _engine(model, char_tokenizer, "oracle", 2, "combined", ticks=60,
                  boundary=lambda text: len(text) >= 24, finisher=False).run("What is 12 + 30?")
    assert [w.tokens for w in got.workers] == [w.tokens for w in ref.workers]
    for a, b in zip(got.logits, ref.logits, strict=True):
        assert _rel(a.cpu(), b.cpu()) <= LOGIT_RTOL


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the conformance vectors run on the CPU")
def test_conformance_model_vectors_pass_with_fast_backend():
    from hogwild_ref.conformance import run
    from hogwild_ref.conformance.reference import ReferenceAdapter

    report = run(ReferenceAdapter(backend="fast"), None, ["model"])
    assert report.passed >= 5 and report.failed == 0, [r.message for r in report.results if r.status == "failed"]


def test_split_common_part_engine_matches_engine_oracle(char_tokenizer):
    """Forward(split=True): every one-token tick's common part through the fused CPU kernel, merged with
    the tail by log-sum-exp (Spec §9.5), over a run with flushes: tokens identical to the engine oracle,
    logits within Spec §12.5's model tolerance."""
    if DEVICE.type != "cpu":
        pytest.skip("the split path is the CPU's")
    model = tiny_model("qwen3", seed=4, vocab_size=len(char_tokenizer))
    fast = _engine(model, char_tokenizer, "fast", 3, "combined", ticks=40, finisher=False)
    fast.forward.split = True
    got = fast.run("What is 12 + 30?")
    assert fast.forward.kinds.get("decode", 0) > 20
    ref = _engine(model, char_tokenizer, "oracle", 3, "combined", ticks=40, finisher=False).run("What is 12 + 30?")
    assert [w.tokens for w in got.workers] == [w.tokens for w in ref.workers]
    for a, b in zip(got.logits, ref.logits, strict=True):
        assert _rel(a, b) <= LOGIT_RTOL
