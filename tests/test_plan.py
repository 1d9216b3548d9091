"""The per-tick plan: positions, locations and the dense mask against an independent restatement.

Restatement (Spec §3.2 write-before-read, §3.3 visibility): every row's new tokens are appended to its write
segment *before* anybody reads. Row r's linearised view is the concatenation of its segments at the
post-write lengths; a key is visible to a query iff the key is in the view and its view position is
<= the query's view position. Query i of row r is token ``old_len(write) + i`` of its write segment.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hogwild_ref.plan import dense_mask, plan_tick
from hogwild_ref.rope import RopeError, RopeSpec
from hogwild_ref.segments import Row, TableError, combined, contiguous, interleaved
from strategies import any_tables, tick_counts

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: see conftest.single_thread


def restate(table, rows):
    """Independent expectations for a tick: post-write lengths, query positions and visibility."""
    before = {s.id: s.length for s in table.segments}
    after = dict(before)
    for view, n in rows:
        after[view[-1]] += n
    order = [s.id for s in table.segments]  # storage (column) order
    col_start, c = {}, 0
    for sid in order:
        col_start[sid] = c
        c += after[sid]
    T = c
    out = []
    for view, n in rows:
        lin = [(sid, t) for sid in view for t in range(after[sid])]  # the linearised view
        vpos = {key: i for i, key in enumerate(lin)}
        w = view[-1]
        qpos = [vpos[(w, before[w] + i)] for i in range(n)]
        # equivalently: sum of post-write lengths before the write segment + old length + i
        assert qpos == [sum(after[s] for s in view[:-1]) + before[w] + i for i in range(n)]
        start = {}
        acc = 0
        for sid in view:
            start[sid] = acc
            acc += after[sid]
        visible = []
        for p in qpos:
            vis = [False] * T
            for (sid, t), vp in vpos.items():
                if vp <= p:
                    vis[col_start[sid] + t] = True
            visible.append(vis)
        out.append({"positions": qpos, "visible": visible, "start": start, "write": w})
    return after, order, T, out


def check_plan(table, rows):
    plan = plan_tick(table, [Row(tuple(v), n) for v, n in rows])
    after, order, T, exp = restate(table, rows)
    R = len(rows)
    n = max(1, max(k for _, k in rows))
    assert plan.segment_ids == tuple(order)
    assert plan.lengths.tolist() == [after[s] for s in order]
    assert {s.id: s.length for s in plan.table.segments} == after
    assert plan.n == n and plan.positions.shape == (R, n) and plan.loc.shape == (R, len(order), n)
    assert plan.new_tokens.tolist() == [k for _, k in rows]
    mask = dense_mask(plan)
    assert mask.shape == (R, n, T)
    for r, ((view, k), e) in enumerate(zip(rows, exp)):
        w = e["write"]
        assert plan.write_index[r] == order.index(w)
        assert plan.write_start[r] == table.length(w)
        assert plan.write_offset[r] == e["start"][w]
        assert plan.valid[r].tolist() == [i < k for i in range(n)]
        assert plan.in_view[r].tolist() == [s in view for s in order]
        for j, sid in enumerate(order):
            assert int(plan.offsets[r, j]) == e["start"].get(sid, 0)
        if k == 0:
            # a row without new tokens sees nothing and writes nothing
            assert plan.positions[r].tolist() == [0] * n
            assert (plan.loc[r] == -1).all()
            assert not mask[r].any()
            continue
        assert plan.positions[r, :k].tolist() == e["positions"]
        for i in range(n):
            src = min(i, k - 1)  # padded slots repeat the last real token
            assert int(plan.positions[r, i]) == e["positions"][src]
            for j, sid in enumerate(order):
                want = e["positions"][src] - e["start"][sid] if sid in view else -1
                assert int(plan.loc[r, j, i]) == want
            assert mask[r, i].tolist() == e["visible"][src]
    return plan


# ---------------------------------------------------------------------- worker ticks
@settings(max_examples=200)
@given(data=st.data(), table=any_tables(max_workers=6, max_length=8))
def test_worker_tick_against_restatement(data, table):
    counts = data.draw(tick_counts(table.workers, 4))
    rows = [(v, k) for v, k in zip(table.views, counts)]
    plan = check_plan(table, rows)
    # the int form of rows is the same tick
    plan2 = plan_tick(table, counts)
    assert torch.equal(plan2.positions, plan.positions) and torch.equal(plan2.loc, plan.loc)
    assert plan.table == table.append(counts)


@settings(max_examples=150)
@given(data=st.data(), table=any_tables(max_workers=5, max_length=8))
def test_explicit_rows_against_restatement(data, table):
    """Arbitrary rows: any subset of segments as write targets (prefill rows included), random views."""
    ids = [s.id for s in table.segments]
    writes = data.draw(st.lists(st.sampled_from(ids), min_size=1, max_size=min(4, len(ids)), unique=True))
    rows = []
    for w in writes:
        others = data.draw(st.permutations([s for s in ids if s != w]))
        keep = data.draw(st.integers(0, len(others)))
        rows.append((tuple(others[:keep]) + (w,), data.draw(st.integers(0, 4))))
    check_plan(table, rows)


def test_write_before_read_small():
    """Contiguous W=2, prompt 3; both workers feed 1 token: each sees the other's tick token."""
    t = contiguous(2, 3)
    plan = plan_tick(t, [1, 1])
    # worker 0's view [prompt(3), out_1(1), out_0(1)] -> its token at 4, out_1's token at 3
    assert plan.positions.tolist() == [[4], [4]]
    ids = plan.segment_ids  # prompt, out_0, out_1
    assert ids == ("prompt", "out_0", "out_1")
    m = dense_mask(plan)
    assert m.tolist() == [[[True] * 5], [[True] * 5]]
    # one worker idle: the idle one sees nothing, the other does not see a phantom token
    plan = plan_tick(t, [0, 2])
    assert plan.lengths.tolist() == [3, 0, 2]
    assert plan.positions.tolist() == [[0, 0], [3, 4]]
    assert dense_mask(plan).tolist() == [
        [[False] * 5, [False] * 5],
        [[True, True, True, True, False], [True] * 5],
    ]


def test_combined_sees_other_steps_this_tick():
    t = combined(3, 4, others_header=2, separator=1, own_header=2).append([2, 0, 1])
    rows = list(zip(t.views, [1, 3, 0]))
    plan = check_plan(t, rows)
    # worker 0: common 4, hdr 2, cur_1 (0 + 3 new), sep 1, cur_2 1, sep 1, own 2, cur_0 old 2 -> 4+2+3+1+1+1+2+2
    assert int(plan.positions[0, 0]) == 16
    assert plan.positions[1].tolist() == [4 + 2 + 3 + 1 + 1 + 1 + 2 + i for i in range(3)]


# ---------------------------------------------------------------------- errors
def test_two_rows_writing_one_segment_raise():
    t = interleaved(2, 3)
    with pytest.raises(TableError, match=r"rows 0 and 1 both write segment 'cur_0'"):
        plan_tick(t, [Row(("common", "cur_0"), 1), Row(("cur_0",), 2)])
    with pytest.raises(TableError, match=r"both write segment 'common'"):
        plan_tick(t, [Row(("common",), 1), Row(("common",), 1), Row(("common", "cur_1"), 1)])


def test_two_writing_rows_after_an_idle_row_raise():
    """Spec §3.1 rule 3: two rows that both feed tokens must not share a write segment.

    SRC BUG (plan.py, the ``writes`` check in plan_tick): each row is compared only with the FIRST row
    that names the segment; when that first row feeds 0 tokens, two later feeding rows pass unchecked and
    their new tokens get overlapping positions.
    """
    t = interleaved(2, 3)
    with pytest.raises(TableError, match=r"both write segment 'cur_0'"):
        plan_tick(t, [Row(("common", "cur_0"), 0), Row(("common", "cur_0"), 1), Row(("cur_0",), 2)])


def test_bad_rows_raise():
    t = interleaved(2, 3)
    with pytest.raises(TableError, match=r"feeds -1 tokens"):
        plan_tick(t, [Row(("common", "cur_0"), -1)])
    with pytest.raises(TableError, match=r"repeats a segment"):
        plan_tick(t, [Row(("common", "common", "cur_0"), 1)])
    with pytest.raises(TableError, match=r"at least one row"):
        plan_tick(t, [])
    with pytest.raises(TableError, match=r"expected one per worker \(2\)"):
        plan_tick(t, [1])
    with pytest.raises(TableError, match=r"row 0's view names unknown segment 'ghost'"):
        plan_tick(t, [Row(("ghost", "cur_0"), 1)])
    # Spec §2.3 rule 3, which §3.1 rule 1 applies to rows: a view is non-empty (was an IndexError)
    for n in (0, 1):
        with pytest.raises(TableError, match=r"row 1's view is empty"):
            plan_tick(t, [Row(("common", "cur_0"), 1), Row((), n)])


# ---------------------------------------------------------------------- rope tables on the plan
def test_query_rotation_and_longrope_limit():
    rope = RopeSpec(torch.tensor([1.0, 0.25]), head_dim=4)
    t = combined(2, 5, others_header=1, separator=1, own_header=1).append([2, 3])
    plan = plan_tick(t, [1, 1], rope=rope)
    rot = plan.query_rotation
    assert rot is not None and rot.cos.shape == (2, len(plan.segment_ids), 2)
    for r in range(2):
        for j in range(len(plan.segment_ids)):
            o = int(plan.offsets[r, j])
            for f, th in enumerate([1.0, 0.25]):
                assert float(rot.cos[r, j, f]) == pytest.approx(math.cos(-o * th), abs=1e-6)
                assert float(rot.sin[r, j, f]) == pytest.approx(math.sin(-o * th), abs=1e-6)
    pinned = RopeSpec(torch.tensor([1.0]), head_dim=2, rope_type="longrope", max_position=8)
    plan_tick(interleaved(1, 7), [1], rope=pinned)  # position 7 is fine
    with pytest.raises(RopeError, match=r"position 8 >= 8"):
        plan_tick(interleaved(1, 7), [2], rope=pinned)
