"""Segment table: layouts, offsets, validation, JSON, and a stateful model of appends and flushes.

Oracles are restatements of Spec §2.2 and §4.1–§4.3 written from scratch here (view orders of the three layouts,
offsets as prefix sums, a token-list model of every segment), never the library's own helpers.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from hogwild_ref.segments import (
    LAYOUTS,
    Segment,
    SegmentTable,
    TableError,
    combined,
    contiguous,
    interleaved,
    make_layout,
    prompt_segment,
)
from strategies import any_tables, preset_tables, segment_tables, tick_counts

WORKERS = range(1, 9)


# ---------------------------------------------------------------------- from-scratch restatements
def expected_views(layout: str, W: int) -> list[list[str]]:
    """Spec §4.1–§4.3 (the layouts' views), restated for every worker."""
    views = []
    for w in range(W):
        others = [j for j in range(W) if j != w]  # ascending
        if layout == "contiguous":
            v = ["prompt"] + [f"out_{j}" for j in others] + [f"out_{w}"]
        elif layout == "interleaved":
            v = ["common", f"cur_{w}"]
        elif layout == "combined":
            v = ["common", "others_header"]
            for j in others:
                v += [f"cur_{j}", f"sep_{j}"]
            v += ["own_header", f"cur_{w}"]
        else:  # pragma: no cover
            raise AssertionError(layout)
        views.append(v)
    return views


def expected_writers(layout: str, W: int) -> dict[str, int | None]:
    """Segment id -> writer, for the whole table."""
    if layout == "contiguous":
        out: dict[str, int | None] = {"prompt": None}
        out.update({f"out_{j}": j for j in range(W)})
    elif layout == "interleaved":
        out = {"common": None}
        out.update({f"cur_{j}": j for j in range(W)})
    else:
        out = {"common": None, "others_header": None, "own_header": None}
        out.update({f"cur_{j}": j for j in range(W)})
        out.update({f"sep_{j}": None for j in range(W)})
    return out


def prefix_sums(table: SegmentTable, view) -> dict[str, int]:
    """o_w(s) recomputed: sum of the lengths of the segments before s in the view."""
    lengths = {s.id: s.length for s in table.segments}
    starts = [0, *itertools.accumulate(lengths[s] for s in view)]
    return {s: starts[i] for i, s in enumerate(view)}


# ---------------------------------------------------------------------- layouts
@pytest.mark.parametrize("W", WORKERS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_views_and_segments(layout, W):
    builders = {"contiguous": contiguous, "interleaved": interleaved, "combined": combined}
    for table in (builders[layout](W, 5), make_layout(layout, W, 5)):
        assert table.workers == W
        assert [list(v) for v in table.views] == expected_views(layout, W)
        assert {s.id: s.writer for s in table.segments} == expected_writers(layout, W)
        assert table.layout == layout
        assert table.history == (None if layout == "contiguous" else "common")
        prompt = "prompt" if layout == "contiguous" else "common"
        assert table.length(prompt) == 5
        for w in range(W):
            assert table.write_segment(w) == expected_views(layout, W)[w][-1]
            assert table[table.write_segment(w)].writer == w


@pytest.mark.parametrize("W", WORKERS)
def test_combined_static_lengths(W):
    table = combined(W, 7, others_header=3, separator=2, own_header=4)
    assert table.length("common") == 7
    assert table.length("others_header") == 3
    assert table.length("own_header") == 4
    assert all(table.length(f"sep_{j}") == 2 for j in range(W))
    assert all(table.length(f"cur_{j}") == 0 for j in range(W))
    # worker w's view: common(7) + others_header(3) + (W-1) * sep(2) + own_header(4), empty steps
    for w in range(W):
        assert table.view_length(w) == 7 + 3 + 2 * (W - 1) + 4
        assert list(table.next_positions(w, 3)) == [table.view_length(w) + i for i in range(3)]


@settings(max_examples=200)
@given(table=any_tables(max_workers=8, max_length=30))
def test_offsets_are_prefix_sums(table):
    for w in range(table.workers):
        view = table.views[w]
        expected = prefix_sums(table, view)
        assert table.offsets(w) == expected
        total = sum(s.length for s in table.segments if s.id in set(view))
        assert table.view_length(w) == total
        assert list(table.next_positions(w, 2)) == [total, total + 1]
        # token t of s sits at o_w(s) + t: the offsets tile 0..view_length-1 exactly once
        covered = sorted(expected[s] + t for s in view for t in range(table.length(s)))
        assert covered == list(range(total))


@settings(max_examples=100)
@given(data=st.data(), table=any_tables(max_workers=6))
def test_rows_and_append(data, table):
    counts = data.draw(tick_counts(table.workers))
    rows = table.rows(counts)
    assert [r.view for r in rows] == list(table.views)
    assert [r.new_tokens for r in rows] == counts
    after = table.append(counts)
    added = {table.views[w][-1]: counts[w] for w in range(table.workers)}
    for s in table.segments:
        assert after.length(s.id) == s.length + added.get(s.id, 0)
    assert after.views == table.views and after.history == table.history


# ---------------------------------------------------------------------- validation
def _seg(sid, length=0, writer=None):
    return Segment(sid, length, writer)


@pytest.mark.parametrize(
    "segments, views, match",
    [
        ([_seg("p"), _seg("a", 0, 0)], [("p", "ghost", "a")], r"unknown segment 'ghost'"),
        ([_seg("p"), _seg("a", 0, 0)], [("p", "p", "a")], r"repeats segment 'p'"),
        ([_seg("p"), _seg("a", 0, 0)], [("a", "p")], r"must end with its write segment 'a'.*ends with 'p'"),
        ([_seg("p", -1), _seg("a", 0, 0)], [("p", "a")], r"segment 'p' has length -1"),
        ([_seg("a", 0, 0), _seg("b", 0, 0)], [("b",)], r"worker 0 writes to two segments \('a' and 'b'\)"),
        ([_seg("p"), _seg("a", 0, 0)], [], r"at least one worker"),
        ([_seg("p"), _seg("a", 0, 0)], [("p", "a"), ("p", "a")], r"worker 1 has no write segment"),
        ([_seg("p"), _seg("p", 0, 0)], [("p",)], r"duplicate segment id 'p'"),
        ([_seg("p"), _seg("a", 0, 3)], [("p", "a")], r"writer 3, but workers are 0..0"),
        ([_seg("a", 0, 0)], [()], r"worker 0 has an empty view"),
    ],
    ids=[
        "unknown-segment",
        "duplicate-in-view",
        "write-not-last",
        "negative-length",
        "two-write-segments",
        "zero-workers",
        "worker-without-write-segment",
        "duplicate-id",
        "writer-out-of-range",
        "empty-view",
    ],
)
def test_invalid_tables_raise_clear_errors(segments, views, match):
    with pytest.raises(TableError, match=match):
        SegmentTable(tuple(segments), tuple(views))
    assert issubclass(TableError, ValueError)


def test_history_validation():
    segs = (_seg("h"), _seg("x"), _seg("a", 0, 0), _seg("b", 0, 1))
    with pytest.raises(TableError, match=r"history segment 'nope' is not a segment"):
        SegmentTable(segs, (("h", "a"), ("h", "b")), history="nope")
    with pytest.raises(TableError, match=r"must open every view; worker 1's does not"):
        SegmentTable(segs, (("h", "a"), ("x", "h", "b")), history="h")
    with pytest.raises(TableError, match=r"history segment 'a' must be static"):
        SegmentTable(segs, (("a",), ("a", "b")), history="a")



def test_prompt_segment():
    """Spec §4.4: the history, else the static segment that opens every view, else no prefill."""
    for layout, first in (("contiguous", "prompt"), ("interleaved", "common"), ("combined", "common")):
        assert prompt_segment(make_layout(layout, 2)) == first  # contiguous has no history: its static opener
    segs = (_seg("s"), _seg("x"), _seg("a", 0, 0), _seg("b", 0, 1))
    assert prompt_segment(SegmentTable(segs, (("s", "a"), ("s", "x", "b")))) == "s"
    with pytest.raises(ValueError, match=r"Spec §4.4 defines no prefill"):
        prompt_segment(SegmentTable(segs, (("s", "a"), ("x", "s", "b"))))  # no segment opens every view
    with pytest.raises(ValueError, match=r"Spec §4.4 defines no prefill"):
        prompt_segment(SegmentTable(segs, (("a",), ("s", "b"))))  # a write segment opens view 0

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bad", [0, -2])
def test_zero_workers_layout(layout, bad):
    with pytest.raises(TableError, match=rf"workers must be an integer >= 1; got {bad}"):
        make_layout(layout, bad)


def test_unknown_layout_name():
    with pytest.raises(TableError, match=r"unknown layout 'zigzag'.*contiguous, interleaved, combined"):
        make_layout("zigzag", 2)


def test_bad_updates_raise():
    t = interleaved(2, 3)
    with pytest.raises(TableError, match=r"new token counts must be >= 0"):
        t.append([1, -1])
    with pytest.raises(TableError, match=r"expected one per worker \(2\)"):
        t.append([1])
    with pytest.raises(TableError, match=r"expected one per worker \(2\)"):
        t.rows([1, 1, 1])
    with pytest.raises(TableError, match=r"cannot grow segment 'common' by -1"):
        t.grow("common", -1)
    with pytest.raises(TableError, match=r"unknown segment 'zzz'"):
        t.with_lengths({"zzz": 1})
    with pytest.raises(TableError, match=r"lengths must be integers >= 0"):
        t.with_lengths({"common": -4})


@pytest.mark.parametrize("W", WORKERS)
def test_flush_on_contiguous_raises(W):
    t = contiguous(W, 4).append([2] * W)
    for w in range(W):
        with pytest.raises(TableError, match=r"no history segment.*interleaved or combined"):
            t.flush(w)


# ---------------------------------------------------------------------- JSON (Spec §2.4)
UNICODE_IDS = st.text(min_size=1, max_size=6)
SCHEMA = Path(__file__).resolve().parents[1] / "spec" / "schema" / "segment_table.schema.json"


def _schema_validator():
    jsonschema = pytest.importorskip("jsonschema")
    if not SCHEMA.exists():
        pytest.skip(f"{SCHEMA} not present")
    schema = json.loads(SCHEMA.read_text())
    return jsonschema.Draft202012Validator(schema)


@settings(max_examples=200)
@given(table=st.one_of(segment_tables(ids=UNICODE_IDS, max_workers=8, max_length=1000), preset_tables(max_workers=8)))
def test_json_round_trip(table):
    text = table.to_json()
    data = json.loads(text)
    _schema_validator().validate(data)  # the normative structural schema of Spec §2.4
    # the serialised form, restated field by field
    assert data["version"] == 1
    assert data["layout"] == table.layout
    assert data["history"] == table.history
    assert data["segments"] == [{"id": s.id, "length": s.length, "writer": s.writer} for s in table.segments]
    assert data["views"] == [list(v) for v in table.views]
    back = SegmentTable.from_json(text)
    assert back == table
    assert back.segments == table.segments and back.views == table.views
    assert [back.offsets(w) for w in range(back.workers)] == [table.offsets(w) for w in range(table.workers)]
    assert SegmentTable.from_dict(json.loads(json.dumps(table.to_dict()))) == table


def test_from_json_rejects_malformed():
    good = interleaved(2, 1).to_dict()
    with pytest.raises(TableError, match=r"unsupported segment-table version 99"):
        SegmentTable.from_dict({**good, "version": 99})
    with pytest.raises(TableError, match=r"malformed segment table"):
        SegmentTable.from_dict({k: v for k, v in good.items() if k != "views"})
    bad_view = {**good, "views": [["common", "cur_0"], ["common", "ghost", "cur_1"]]}
    with pytest.raises(TableError, match=r"unknown segment 'ghost'"):
        SegmentTable.from_dict(bad_view)


@pytest.mark.parametrize(
    "field, value",
    [("writer", "0"), ("writer", [0]), ("length", "x")],
    ids=["writer-str", "writer-list", "length-not-a-number"],
)
def test_from_dict_malformed_fields_raise_table_error(field, value):
    """from_dict promises TableError on malformed input (Spec §2.3 rule 1: writer is a worker index).

    SRC BUG (segments.py): ``validate`` compares a non-int writer with ``0 <= writer`` and raises
    TypeError; ``from_dict`` converts lengths with ``int()`` but catches only KeyError/TypeError/
    AttributeError, so ``int("x")`` escapes as a plain ValueError.
    """
    data = interleaved(1, 1).to_dict()
    target = data["segments"][1] if field == "writer" else data["segments"][0]
    target[field] = value
    with pytest.raises(TableError):
        SegmentTable.from_dict(data)


# ---------------------------------------------------------------------- stateful model
class AppendFlushMachine(RuleBasedStateMachine):
    """Random ticks (per-worker counts incl. zeros), flushes and static prefills.

    The model keeps the token list of every segment; each token is a unique integer. A tick appends
    fresh tokens to each worker's write segment; a flush moves the worker's tokens to the end of the
    history and empties its segment. A contiguous table of the same W receives the same ticks and
    must refuse every flush.
    """

    @initialize(
        layout=st.sampled_from(["interleaved", "combined"]),
        W=st.integers(1, 6),
        prompt=st.integers(0, 5),
        statics=st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)),
    )
    def start(self, layout, W, prompt, statics):
        self.layout, self.W = layout, W
        self.fresh = itertools.count()
        if layout == "combined":
            oh, sep, own = statics
            self.table = combined(W, prompt, others_header=oh, separator=sep, own_header=own)
            init = {"common": prompt, "others_header": oh, "own_header": own}
            init.update({f"sep_{j}": sep for j in range(W)})
        else:
            self.table = interleaved(W, prompt)
            init = {"common": prompt}
        init.update({f"cur_{j}": 0 for j in range(W)})
        self.model = {sid: self._new(n) for sid, n in init.items()}
        self.contig = contiguous(W, prompt)
        self.cmodel = {"prompt": self._new(prompt), **{f"out_{j}": [] for j in range(W)}}
        self.created = sum(map(len, self.model.values()))
        self.ccreated = prompt

    def _new(self, n):
        return [next(self.fresh) for _ in range(n)]

    @rule(data=st.data())
    def tick(self, data):
        counts = data.draw(tick_counts(self.W, 4), label="counts")
        self.table = self.table.append(counts)
        self.contig = self.contig.append(counts)
        for w, n in enumerate(counts):
            self.model[f"cur_{w}"] += self._new(n)
            self.cmodel[f"out_{w}"] += self._new(n)
        self.created += sum(counts)
        self.ccreated += sum(counts)

    @rule(data=st.data())
    def flush(self, data):
        w = data.draw(st.integers(0, self.W - 1), label="w")
        old_len = self.table.length(f"cur_{w}")
        old_hist = self.table.length("common")
        self.table = self.table.flush(w)
        self.model["common"] += self.model[f"cur_{w}"]
        self.model[f"cur_{w}"] = []
        assert self.table.length(f"cur_{w}") == 0
        assert self.table.length("common") == old_hist + old_len
        with pytest.raises(TableError, match="no history segment"):
            self.contig.flush(w)

    @precondition(lambda self: self.layout == "combined")
    @rule(data=st.data())
    def prefill_static(self, data):
        sid = data.draw(st.sampled_from(["others_header", "own_header", *(f"sep_{j}" for j in range(self.W))]))
        n = data.draw(st.integers(0, 2))
        self.table = self.table.grow(sid, n)
        self.model[sid] += self._new(n)
        self.created += n

    # -------------------------------------------------------------- invariants
    @invariant()
    def lengths_match_model(self):
        assert {s.id: s.length for s in self.table.segments} == {k: len(v) for k, v in self.model.items()}
        assert {s.id: s.length for s in self.contig.segments} == {k: len(v) for k, v in self.cmodel.items()}

    @invariant()
    def tokens_conserved(self):
        assert sum(s.length for s in self.table.segments) == self.created
        all_tokens = [t for v in self.model.values() for t in v]
        assert len(set(all_tokens)) == len(all_tokens) == self.created
        assert sum(s.length for s in self.contig.segments) == self.ccreated

    @invariant()
    def linearisations_match_model(self):
        for table, model, layout in ((self.table, self.model, self.layout), (self.contig, self.cmodel, "contiguous")):
            for w, view in enumerate(expected_views(layout, self.W)):
                assert list(table.views[w]) == view
                model_lin = [t for sid in view for t in model[sid]]
                # the table's linearisation: token t of s at o_w(s) + t
                lin = [None] * table.view_length(w)
                offs = table.offsets(w)
                for sid in table.views[w]:
                    for t in range(table.length(sid)):
                        assert lin[offs[sid] + t] is None
                        lin[offs[sid] + t] = model[sid][t]
                assert lin == model_lin

    @invariant()
    def write_segments_last(self):
        for table in (self.table, self.contig):
            for w, view in enumerate(table.views):
                assert table.write_segment(w) == view[-1]
                assert table[view[-1]].writer == w
                assert [s.id for s in table.segments if s.writer == w] == [view[-1]]


AppendFlushMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30)
TestAppendFlush = AppendFlushMachine.TestCase


@pytest.mark.parametrize("call", [
    lambda t: t.offsets(-1), lambda t: t.offsets(2), lambda t: t.view_length(-1), lambda t: t.view_length(2),
    lambda t: t.next_positions(-1, 3), lambda t: t.offsets(True),
])
def test_a_worker_index_out_of_range_is_refused_not_read_from_the_end(call):
    """Spec §2.3: workers are ``0 .. W-1``. ``offsets(-1)`` used to answer for the last worker (Python's
    negative index) and ``offsets(W)`` raised a bare IndexError; both are a TableError naming the range,
    as ``write_segment`` and ``flush`` already gave."""
    table = combined(2, 5, others_header=1, separator=1, own_header=1)
    with pytest.raises(TableError, match="out of range; the table has 2 workers"):
        call(table)


@pytest.mark.parametrize("call", [
    lambda t: t.grow("zz", 1), lambda t: t.length("zz"), lambda t: t["zz"], lambda t: t.index("zz"),
    lambda t: t.index(["common"]),
])
def test_an_unknown_segment_id_is_a_table_error_naming_the_ids(call):
    """Spec §2.3: an id must name a segment; a bare KeyError said only ``'zz'``."""
    table = combined(2, 5)
    with pytest.raises(TableError, match="unknown segment .* the table's segments are 'common', "):
        call(table)


@pytest.mark.parametrize("counts", [[1, -1], [1, 1.0], [True, 0]])
def test_rows_take_counts_of_zero_or_more(counts):
    """Spec §3.1: a row feeds ``n_r >= 0`` tokens; ``rows`` built a row of -1 that only a later forward refused."""
    with pytest.raises(TableError, match="integers >= 0"):
        combined(2).rows(counts)


def test_an_unknown_segment_id_is_still_a_key_error():
    """Code that caught the lookup's KeyError goes on working; the message is the TableError's."""
    with pytest.raises(KeyError) as info:
        combined(2)["zz"]
    assert str(info.value).startswith("unknown segment 'zz'")
