"""Extend ticks (Spec §9.6 "Several tokens", :mod:`hogwild_ref.extend`) against independent oracles.

* One layer: a grid of worker rows feeding 0..5 tokens each, written then attended through
  :class:`~hogwild_ref.ticks.ExtendTick` exactly as the model drives it, against the dense float64
  attention oracle (Spec §9.1) over the plan of Spec §3.6, for hypothesis-drawn tables of one problem
  and unions of several (every worker, or some workers of some problems), within Spec §10.
* Whole runs: a batch's step changes and finishers take extend ticks, and every problem's tokens and
  logits equal the engine oracle's (tests/test_batch.py, tests/test_fast.py).
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import hogwild_ref.ticks as ticks_mod
from hogwild_ref.attention import TOLERANCES, oracle
from hogwild_ref.batch import union_tables
from hogwild_ref.extend import extend_grid
from hogwild_ref.plan import plan_tick
from hogwild_ref.segments import Row, common_segment, decode_groups
from hogwild_ref.storage import Storage
from hogwild_ref.ticks import ExtendTick
from strategies import any_tables, preset_tables, stored_key_tolerance
from test_attention import ROPES
from test_fast import DEVICE, HEADS, _layer_config, filled_storage

pytestmark = pytest.mark.usefixtures("single_thread")


def check_extend_layer(table, counts, rope_name, hkv, group, dtype, seed, slack=3, score_bytes=None, keys_transposed=None):
    """One extend tick of one layer over ``table`` in which worker ``w`` feeds ``counts[w]`` tokens
    (the workers of ``counts`` form a grid) vs the dense oracle of the same rows; ``score_bytes``:
    the tick's score budget (:data:`~hogwild_ref.ticks.EXTEND_SCORE_BYTES`; 1: one query slot of one
    group at a time);
    ``keys_transposed``: the store's key layout (default: the device's)."""
    rope = ROPES[rope_name]
    workers = sorted(counts)
    rows = [Row(table.views[w], counts[w]) for w in workers]
    plan = plan_tick(table, rows, rope=rope)  # the oracle's plan: post-write lengths, positions, causal mask
    g = torch.Generator().manual_seed(seed)
    R, D, hq = len(rows), rope.head_dim, hkv * group
    n = max(1, max(counts.values()))

    def rnd(*shape):  # representable in dtype, kept in float64 for the oracle
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(torch.float64)

    q_pre = rnd(R, hq, n, D)
    k_pre = [rnd(hkv, L, D) for L in plan.sizes]
    vals = [rnd(hkv, L, D) for L in plan.sizes]
    scaling = D**-0.5
    ref = oracle(rope.rotate(q_pre, 0), [rope.rotate(k, 0) for k in k_pre], vals, plan, rope, scaling)

    storage = filled_storage(table, plan, rope, dtype, hkv, group, k_pre, vals, slack, keys_transposed)
    store = storage.stores[0]
    assert ExtendTick.workers(storage, rows) == workers
    tick = ExtendTick(storage, rows, rope, workers)
    assert tick.table == plan.table
    real = torch.arange(n)[None, :] < torch.tensor([counts[w] for w in workers])[:, None]  # (R, n)
    assert tick.positions.tolist() == plan.positions.tolist()  # padding slots too (Spec §3.6)

    def new(src, r, rotate):  # the new token i of row r: its K (rotated to its view position) or V; NaN in padding
        j, t0, c = plan.write_indices[r], plan.write_starts[r], counts[workers[r]]
        out = torch.full((hkv, n, D), float("nan"), dtype=dtype)
        if c:
            x = src[j][:, t0 : t0 + c].to(dtype)
            out[:, :c] = rope.rotate(x, plan.positions[r, :c]) if rotate else x
        return out

    k_new = torch.stack([new(k_pre, r, True) for r in range(R)])
    v_new = torch.stack([new(vals, r, False) for r in range(R)])
    q = rope.rotate(q_pre.to(dtype), plan.positions[:, None, :n])
    budget = ticks_mod.EXTEND_SCORE_BYTES if score_bytes is None else score_bytes
    stored = [(store.keys[j].clone(), store.values[j].clone()) for j in range(len(table.segments))]
    turns = []  # each attention turn's (rows, query slots)
    attend_turn = tick._attend

    def one_turn(store, q, *args):
        turns.append((q.shape[0], q.shape[2]))
        return attend_turn(store, q, *args)

    with torch.inference_mode(), mock.patch.object(ticks_mod, "EXTEND_SCORE_BYTES", budget), \
            mock.patch.object(tick, "_attend", one_turn):
        tick.write(0, store, k_new.to(DEVICE), v_new.to(DEVICE))
        out = tick.attend(0, store, q.to(DEVICE), scaling).cpu()
    per_group = table.workers // len(decode_groups(table).commons)
    locals_ = len({w % per_group for w in workers})  # each group's rows: the grid's local workers
    if score_bytes == 1:  # the least a turn takes: one query slot of one group's rows
        assert turns == [(locals_, 1)] * (R // locals_ * n), turns
    else:
        assert sum(rows * slots for rows, slots in turns) == R * n, turns
    # only the new tokens' slots were written: padding slots and zero-token rows write the trash (Spec §3.4)
    written = {(plan.write_indices[r], t) for r in range(R)
               for t in range(plan.write_starts[r], plan.write_starts[r] + counts[workers[r]])}
    for j, (k_old, v_old) in enumerate(stored):
        same = [t for t in range(k_old.shape[1]) if (j, t) not in written]
        assert torch.equal(store.keys[j][:, same], k_old[:, same]) and torch.equal(store.values[j][:, same], v_old[:, same])
    assert out.shape == q.shape and out.dtype == dtype
    slots = real[:, None, :].expand(R, hq, n)
    assert (out.permute(0, 2, 1, 3)[~real] == 0).all(), "padding slots and zero-token rows see nothing (Spec §3.4)"
    if not real.any():
        return
    want, got = ref[:, :, :n][slots].double(), out[slots].double()
    assert torch.isfinite(got).all()
    e = float((got - want).abs().max() / want.abs().max())
    assert e <= TOLERANCES[dtype], f"extend {dtype}: error {e:.3e} > {TOLERANCES[dtype]:.0e}"
    # every new key landed at its segment-local position (Spec §3.2)
    for r in range(R):
        j, t0, c = plan.write_indices[r], plan.write_starts[r], counts[workers[r]]
        for t in range(t0, t0 + c):
            stored = store.keys[j][:, t].cpu().double()
            local = rope.rotate(k_pre[j][:, t : t + 1], torch.tensor(t))[:, 0]
            tol = stored_key_tolerance(dtype, int(plan.positions[r, t - t0]), t)
            assert float((stored - local).abs().max()) <= tol * float(local.abs().max())


COUNTS = st.integers(0, 5)
#: extend score budgets: the default (one turn here), 1 byte (one query slot of one group a turn), a few slots a turn
BUDGETS = st.sampled_from([None, 1, 2**11, 2**13])


@settings(max_examples=120, deadline=None)
@given(
    data=st.data(),
    table=preset_tables(min_workers=1, max_workers=6, max_length=9),
    rope=st.sampled_from(list(ROPES)),
    heads=HEADS,
    dtype=st.sampled_from([torch.float64, torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_extend_layer_matches_oracle(data, table, rope, heads, dtype, seed):
    """One problem, some or every worker a row feeding 0..5 tokens (step changes next to one-token
    rows; the finisher's worker 0 alone), keys stored either way, its query slots attended in turns
    when the score budget is small."""
    assume(common_segment(table) is not None)
    workers = data.draw(st.lists(st.integers(0, table.workers - 1), min_size=1, unique=True), label="workers")
    counts = {w: data.draw(COUNTS, label="count") for w in sorted(workers)}
    check_extend_layer(table, counts, rope, *heads, dtype, seed, keys_transposed=data.draw(st.booleans(), label="layout"),
                       score_bytes=data.draw(BUDGETS, label="score bytes"))


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    table=any_tables(max_workers=5, max_length=6),
    rope=st.sampled_from(list(ROPES)),
    heads=HEADS,
    dtype=st.sampled_from([torch.float64, torch.float32]),
    seed=st.integers(0, 2**31 - 1),
)
def test_extend_layer_matches_oracle_explicit_tables(data, table, rope, heads, dtype, seed):
    """Explicit tables whose views share a first static segment: static segments anywhere in a view."""
    assume(common_segment(table) is not None)
    counts = {w: data.draw(COUNTS, label="count") for w in range(table.workers)}
    check_extend_layer(table, counts, rope, *heads, dtype, seed)


@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    table=preset_tables(min_workers=1, max_workers=4, max_length=9),
    problems=st.integers(2, 4),
    rope=st.sampled_from(list(ROPES)),
    heads=HEADS,
    seed=st.integers(0, 2**31 - 1),
    one_at_a_time=st.booleans(),
)
def test_extend_layer_matches_oracle_on_a_grid_of_a_union(data, table, problems, rope, heads, seed, one_at_a_time):
    """P problems side by side (Spec §13.3): the rows are some workers of some problems (the finisher's
    worker 0 of the live ones, or every worker of those that changed step); each reads only its own
    problem's keys, gathered when the grid leaves problems out, and attended one problem at a time
    when the score budget is exceeded (``one_at_a_time``: a budget of 1 byte)."""
    assume(common_segment(table) is not None)
    tables = [table] + [table.with_lengths({s.id: data.draw(st.integers(0, 9), label="length") for s in table.segments})
                        for _ in range(problems - 1)]
    union, _ = union_tables(tables)
    assert decode_groups(union) is not None
    W = table.workers
    groups = data.draw(st.lists(st.integers(0, problems - 1), min_size=1, unique=True), label="groups")
    locals_ = data.draw(st.lists(st.integers(0, W - 1), min_size=1, unique=True), label="locals")
    counts = {b * W + j: data.draw(COUNTS, label="count") for b in sorted(groups) for j in sorted(locals_)}
    check_extend_layer(union, counts, rope, *heads, torch.float64, seed, score_bytes=1 if one_at_a_time else None)


def test_extend_grid_takes_only_whole_grids_in_worker_order():
    assert extend_grid([0, 2, 4], 2) == ((0, 1, 2), (0,))
    assert extend_grid([2, 3, 6, 7], 2) == ((1, 3), (0, 1))
    assert extend_grid([0, 3], 2) is None  # worker 0 of group 0 and worker 1 of group 1: not every pair
    assert extend_grid([2, 0], 2) is None  # not in worker order


def test_extend_positions_go_to_the_models_device():
    """The tick's positions are the model's ``position_ids``: on the device it takes its inputs on, as
    every other tick's (found in review: they stayed on the host, which fails on a GPU)."""
    from hogwild_ref.segments import combined

    rope = ROPES[next(iter(ROPES))]
    table = combined(2, prompt_length=5, others_header=2, separator=1, own_header=2)
    storage = Storage(_layer_config(2, 1, rope.head_dim), table, rope, torch.float32, "cpu")
    rows = [Row(table.views[0], 3), Row(table.views[1], 1)]
    tick = ExtendTick(storage, rows, rope, [0, 1], device="meta")
    assert tick.positions.device.type == "meta" and tuple(tick.positions.shape) == (2, 3)
