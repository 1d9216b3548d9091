"""Segment table: segments, views, offsets, positions, layouts and flush (Spec §2–§4).

Pure Python, no torch. A :class:`SegmentTable` is an immutable value: every operation that changes
lengths returns a new table. It is the object the spec describes and serialises to JSON (Spec §2.4).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "LAYOUTS",
    "Segment",
    "SegmentTable",
    "TableError",
    "UnknownSegmentError",
    "Row",
    "common_segment",
    "DecodeGroups",
    "decode_groups",
    "prompt_segment",
    "combined",
    "contiguous",
    "interleaved",
    "make_layout",
]

SCHEMA_VERSION = 1
LAYOUTS = ("contiguous", "interleaved", "combined")


class TableError(ValueError):
    """A segment table, view or request that violates the invariants of Spec §2.3."""


class UnknownSegmentError(TableError, KeyError):
    """A segment id the table does not have (Spec §2.3); also a ``KeyError``, as a lookup by id."""

    __str__ = BaseException.__str__  # the message, not KeyError's repr of it


@dataclass(frozen=True)
class Segment:
    """One run of tokens stored once at segment-local positions ``0..length-1`` (Spec §2.1).

    ``writer`` is the worker that appends to it (its write segment), or ``None`` for a *static*
    segment (the prompt/history, headers, separators), which is prefilled before the first tick and
    otherwise only grows by flushes (Spec §4.4).
    """

    id: str
    length: int = 0
    writer: int | None = None


@dataclass(frozen=True)
class Row:
    """One batch row of a forward pass (Spec §3.1): a view and the number of new tokens it feeds.

    The write segment is ``view[-1]``; the row's new tokens are appended to it.
    """

    view: tuple[str, ...]
    new_tokens: int


@dataclass(frozen=True)
class SegmentTable:
    """Segments, per-worker views and the history segment (Spec §2).

    Invariants (Spec §2.3), checked by :meth:`validate` on construction:

    1. at least one worker; segment ids unique; lengths ``>= 0``;
    2. every id in a view names a segment, and no view repeats a segment;
    3. worker ``w``'s view ends with its write segment, the one segment whose writer is ``w``;
       every worker has exactly one write segment;
    4. the history segment, if any, is static and is the first segment of every view.
    """

    segments: tuple[Segment, ...]
    views: tuple[tuple[str, ...], ...]
    history: str | None = None
    layout: str | None = None
    _index: Mapping[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.segments))
        object.__setattr__(self, "views", tuple(tuple(v) for v in self.views))
        object.__setattr__(self, "_index", {s.id: i for i, s in enumerate(self.segments)})
        self.validate()

    # ------------------------------------------------------------------ invariants (Spec §2.3)
    def validate(self) -> None:
        """Raise :class:`TableError` naming the first broken invariant of Spec §2.3."""
        if len(self.views) < 1:
            raise TableError("a segment table needs at least one worker (one view); got 0 views")
        if len(self._index) != len(self.segments):
            ids = [s.id for s in self.segments]
            dup = next(sid for sid in ids if ids.count(sid) > 1)
            raise TableError(f"duplicate segment id {dup!r}: segment ids must be unique")
        for s in self.segments:
            if not isinstance(s.id, str):
                raise TableError(f"segment id {s.id!r} is not a string ({type(s.id).__name__}); segment ids are strings (Spec §2.4)")
            if not isinstance(s.length, int) or isinstance(s.length, bool) or s.length < 0:
                raise TableError(f"segment {s.id!r} has length {s.length!r}; lengths must be integers >= 0")
            if s.writer is not None and (not isinstance(s.writer, int) or isinstance(s.writer, bool)):
                raise TableError(f"segment {s.id!r} has writer {s.writer!r}; a writer is a worker index or null")
            if s.writer is not None and not 0 <= s.writer < len(self.views):
                raise TableError(
                    f"segment {s.id!r} has writer {s.writer}, but workers are 0..{len(self.views) - 1}"
                )
        writers: dict[int, str] = {}
        for s in self.segments:
            if s.writer is not None:
                if s.writer in writers:
                    raise TableError(
                        f"worker {s.writer} writes to two segments ({writers[s.writer]!r} and {s.id!r}); "
                        "each worker has exactly one write segment"
                    )
                writers[s.writer] = s.id
        for w, view in enumerate(self.views):
            if not view:
                raise TableError(f"worker {w} has an empty view; a view ends with the worker's write segment")
            for sid in view:
                if sid not in self._index:
                    raise TableError(f"worker {w}'s view names unknown segment {sid!r}; known: {sorted(self._index)}")
            if len(set(view)) != len(view):
                dup = next(sid for sid in view if view.count(sid) > 1)
                raise TableError(
                    f"worker {w}'s view repeats segment {dup!r}; a view is a sequence of distinct segments "
                    "(use distinct segments with the same text instead)"
                )
            if w not in writers:
                raise TableError(f"worker {w} has no write segment (no segment has writer={w})")
            if view[-1] != writers[w]:
                raise TableError(
                    f"worker {w}'s view must end with its write segment {writers[w]!r}, but ends with {view[-1]!r}"
                )
        if self.layout is not None and not isinstance(self.layout, str):
            raise TableError(f"layout {self.layout!r} must be a string or null")
        if self.history is not None:
            if not isinstance(self.history, str):
                raise TableError(f"history {self.history!r} must be a segment id (a string) or null")
            if self.history not in self._index:
                raise TableError(f"history segment {self.history!r} is not a segment of the table")
            if self[self.history].writer is not None:
                raise TableError(f"history segment {self.history!r} must be static (writer None)")
            for w, view in enumerate(self.views):
                if view[0] != self.history:
                    raise TableError(f"the history segment {self.history!r} must open every view; worker {w}'s does not")

    # ------------------------------------------------------------------ queries
    @property
    def workers(self) -> int:
        """Number of workers ``W`` (Spec §2.2)."""
        return len(self.views)

    def __getitem__(self, sid: str) -> Segment:
        return self.segments[self.index(sid)]

    def index(self, sid: str) -> int:
        """Position of segment ``sid`` in the table order (the storage order of Spec §2.1)."""
        try:
            return self._index[sid]
        except (KeyError, TypeError):
            raise UnknownSegmentError(f"unknown segment {sid!r}; the table's segments are "
                                      f"{', '.join(repr(s.id) for s in self.segments)}") from None

    def length(self, sid: str) -> int:
        """Length of segment ``sid``."""
        return self[sid].length

    def write_segment(self, w: int) -> str:
        """Worker ``w``'s write segment: the last segment of its view (Spec §2.3)."""
        self._check_worker(w)
        return self.views[w][-1]

    def _check_worker(self, w: Any) -> None:
        if not isinstance(w, int) or isinstance(w, bool) or not 0 <= w < len(self.views):
            raise TableError(f"worker {w!r} out of range; the table has {len(self.views)} workers "
                             f"(0..{len(self.views) - 1}), one per view (Spec §2.3)")

    def offsets(self, w: int) -> dict[str, int]:
        """``o_w(s)`` for every segment ``s`` of ``w``'s view (Spec §2.2).

        ``o_w(s)`` is the sum of the lengths of the segments before ``s`` in ``w``'s view.
        """
        self._check_worker(w)
        return view_offsets(self, self.views[w])

    def view_length(self, w: int) -> int:
        """Length of ``w``'s linearised view."""
        self._check_worker(w)
        return sum(self.length(s) for s in self.views[w])

    def next_positions(self, w: int, n: int) -> range:
        """View positions of ``n`` new tokens appended by ``w`` (Spec §2.2): they continue its view."""
        start = self.view_length(w)
        return range(start, start + n)

    def rows(self, new_tokens: Sequence[int]) -> tuple[Row, ...]:
        """The batch rows of a tick in which worker ``w`` feeds ``new_tokens[w]`` tokens (Spec §3.1)."""
        if len(new_tokens) != self.workers:
            raise TableError(f"new_tokens has {len(new_tokens)} entries; expected one per worker ({self.workers})")
        if any(isinstance(n, bool) or not hasattr(n, "__index__") or n < 0 for n in new_tokens):
            raise TableError(f"new token counts must be integers >= 0 (Spec §3.1); got {list(new_tokens)}")
        return tuple(Row(view, n) for view, n in zip(self.views, new_tokens, strict=True))

    # ------------------------------------------------------------------ updates (pure)
    def with_lengths(self, lengths: Mapping[str, int]) -> SegmentTable:
        """A copy with the given segment lengths replaced."""
        for sid in lengths:
            if sid not in self._index:
                raise TableError(f"unknown segment {sid!r}")
        segs = tuple(replace(s, length=lengths.get(s.id, s.length)) for s in self.segments)
        return replace(self, segments=segs)

    def append(self, new_tokens: Sequence[int]) -> SegmentTable:
        """Append ``new_tokens[w]`` tokens to every worker's write segment (one tick, Spec §3.1)."""
        if len(new_tokens) != self.workers:
            raise TableError(f"new_tokens has {len(new_tokens)} entries; expected one per worker ({self.workers})")
        if any(n < 0 for n in new_tokens):
            raise TableError(f"new token counts must be >= 0; got {list(new_tokens)}")
        return self.with_lengths(
            {self.write_segment(w): self.length(self.write_segment(w)) + n for w, n in enumerate(new_tokens) if n}
        )

    def grow(self, sid: str, n: int) -> SegmentTable:
        """Append ``n`` tokens to segment ``sid`` (prefill of a static segment, Spec §4.4)."""
        if n < 0:
            raise TableError(f"cannot grow segment {sid!r} by {n} tokens")
        return self.with_lengths({sid: self.length(sid) + n})

    def flush(self, w: int) -> SegmentTable:
        """Move worker ``w``'s finished step into the history segment (Spec §5.1).

        The history grows by the length of ``w``'s write segment, which becomes empty. (The K/V move
        with it, re-rotated by the old history length: see :func:`hogwild_ref.rope.RopeSpec.rerotate`.)
        """
        if self.history is None:
            raise TableError(
                f"layout {self.layout!r} has no history segment, so nothing can be flushed; "
                "use the interleaved or combined layout, or give the table a history segment"
            )
        own = self.write_segment(w)
        return self.with_lengths({self.history: self.length(self.history) + self.length(own), own: 0})

    # ------------------------------------------------------------------ JSON (Spec §2.4)
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form of Spec §2.4 (validated by ``spec/schema/segment_table.schema.json``)."""
        return {
            "version": SCHEMA_VERSION,
            "layout": self.layout,
            "history": self.history,
            "segments": [{"id": s.id, "length": s.length, "writer": s.writer} for s in self.segments],
            "views": [list(v) for v in self.views],
        }

    def to_json(self, **kwargs: Any) -> str:
        """Serialise to JSON (Spec §2.4)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegmentTable:
        """Inverse of :meth:`to_dict`; raises :class:`TableError` on malformed input.

        The documents ``spec/schema/segment_table.schema.json`` accepts (Spec §2.4) and that satisfy
        Spec §2.3, with defaults for a missing ``version``, ``history``, ``layout`` or ``writer``. Nothing
        is coerced (a length of 3.7, ``true`` for an integer, an infinite or NaN number, an integer
        segment id and an unknown key are refused, naming the field); an integer written with a zero
        fraction (``3.0``) is that integer, as JSON Schema counts it.
        """
        hint = "; see spec/schema/segment_table.schema.json"
        if not isinstance(data, Mapping):
            raise TableError(f"malformed segment table: a segment table document is a JSON object; got {type(data).__name__}{hint}")
        _known_keys("the segment table", data, ("version", "layout", "history", "segments", "views"), hint)
        version = data.get("version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise TableError(f"unsupported segment-table version {version!r}; expected {SCHEMA_VERSION}")
        segments, views = data.get("segments"), data.get("views")
        if not isinstance(segments, list) or not segments:
            raise TableError(f"malformed segment table: 'segments' must be a non-empty list of segments; got {segments!r}{hint}")
        if not isinstance(views, list) or not all(isinstance(v, list) for v in views):
            raise TableError(f"malformed segment table: 'views' must be a list of lists of segment ids; got {views!r}{hint}")
        segs = []
        for i, seg in enumerate(segments):
            if not isinstance(seg, Mapping):
                raise TableError(f"malformed segment table: segments[{i}] must be an object with id, length and writer; got {seg!r}{hint}")
            _known_keys(f"segments[{i}]", seg, ("id", "length", "writer"), hint)
            for key in ("id", "length"):
                if key not in seg:
                    raise TableError(f"malformed segment table: segments[{i}] has no {key!r}{hint}")
            sid, length, writer = seg["id"], seg["length"], seg.get("writer")
            if not isinstance(sid, str):
                raise TableError(f"malformed segment table: segments[{i}].id {sid!r} must be a string{hint}")
            if (length := _json_int(length)) is None:
                raise TableError(f"malformed segment table: segments[{i}].length {seg['length']!r} must be an integer >= 0{hint}")
            if writer is not None and (writer := _json_int(writer)) is None:
                raise TableError(f"malformed segment table: segments[{i}].writer {seg['writer']!r} must be a worker index (an integer) or null{hint}")
            segs.append(Segment(sid, length, writer))
        for w, view in enumerate(views):
            bad = [x for x in view if not isinstance(x, str)]
            if bad:
                raise TableError(f"malformed segment table: views[{w}] holds {bad[0]!r}; views list segment ids (strings){hint}")
        return cls(tuple(segs), tuple(tuple(v) for v in views), history=data.get("history"), layout=data.get("layout"))

    @classmethod
    def from_json(cls, text: str) -> SegmentTable:
        """Parse JSON produced by :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


def _json_int(x: Any) -> int | None:
    """A JSON integer as JSON Schema counts one (Spec §2.4): an int, or a float with a zero fraction
    (``3.0``); None for anything else (``true``, ``3.7``, NaN, infinities, strings)."""
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return x
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return None


def _known_keys(what: str, data: Mapping[str, Any], known: tuple[str, ...], hint: str) -> None:
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise TableError(f"malformed segment table: {what} has unknown key(s) {unknown}; known: {', '.join(known)}{hint}")


def view_offsets(table: SegmentTable, view: Iterable[str]) -> dict[str, int]:
    """Offsets of the segments of an arbitrary ``view`` over ``table`` (Spec §2.2)."""
    out: dict[str, int] = {}
    pos = 0
    for sid in view:
        out[sid] = pos
        pos += table.length(sid)
    return out


# ---------------------------------------------------------------------- layouts (Spec §4)
def _check_workers(workers: int) -> None:
    if not isinstance(workers, int) or workers < 1:
        raise TableError(f"workers must be an integer >= 1; got {workers!r}")


def contiguous(workers: int, prompt_length: int = 0) -> SegmentTable:
    """Token-wise layout (Spec §4.1): ``[prompt, out_j for j != w ascending, out_w]``. No history, no flush."""
    _check_workers(workers)
    segs = [Segment("prompt", prompt_length)] + [Segment(f"out_{j}", 0, j) for j in range(workers)]
    views = [["prompt", *(f"out_{j}" for j in range(workers) if j != w), f"out_{w}"] for w in range(workers)]
    return SegmentTable(tuple(segs), tuple(map(tuple, views)), history=None, layout="contiguous")


def interleaved(workers: int, prompt_length: int = 0) -> SegmentTable:
    """Step-wise layout (Spec §4.2): ``[common, cur_w]``; ``common`` = prompt + history."""
    _check_workers(workers)
    segs = [Segment("common", prompt_length)] + [Segment(f"cur_{j}", 0, j) for j in range(workers)]
    views = [("common", f"cur_{w}") for w in range(workers)]
    return SegmentTable(tuple(segs), tuple(views), history="common", layout="interleaved")


def combined(
    workers: int,
    prompt_length: int = 0,
    *,
    others_header: int = 0,
    separator: int = 0,
    own_header: int = 0,
) -> SegmentTable:
    """The paper's layout (Spec §4.3).

    Worker ``w`` sees ``[common, others_header, (cur_j, sep_j) for j != w ascending, own_header, cur_w]``.
    ``sep_j`` is a separator segment shown after worker ``j``'s unfinished step; the separators are
    distinct segments with the same text, so no view repeats a segment. The header and separator
    arguments are their token counts (static segments, prefilled once).
    """
    _check_workers(workers)
    segs = [Segment("common", prompt_length), Segment("others_header", others_header)]
    for j in range(workers):
        segs += [Segment(f"cur_{j}", 0, j), Segment(f"sep_{j}", separator)]
    segs.append(Segment("own_header", own_header))
    views = []
    for w in range(workers):
        view = ["common", "others_header"]
        for j in range(workers):
            if j != w:
                view += [f"cur_{j}", f"sep_{j}"]
        views.append((*view, "own_header", f"cur_{w}"))
    return SegmentTable(tuple(segs), tuple(views), history="common", layout="combined")


def make_layout(name: str, workers: int, prompt_length: int = 0, **static_lengths: int) -> SegmentTable:
    """Build a layout preset by name (Spec §4); raises :class:`TableError` for an unknown name."""
    if name == "contiguous":
        return contiguous(workers, prompt_length)
    if name == "interleaved":
        return interleaved(workers, prompt_length)
    if name == "combined":
        return combined(workers, prompt_length, **static_lengths)
    raise TableError(f"unknown layout {name!r}; choose one of {', '.join(LAYOUTS)} or give explicit views")


def prompt_segment(tab: SegmentTable) -> str:
    """The prompt segment ``P`` of Spec §4.4: the history, else the static segment opening every view."""
    if tab.history is not None:
        return tab.history
    first = tab.views[0][0]
    if tab[first].writer is not None or any(v[0] != first for v in tab.views):
        raise TableError("the table has no history and no static segment that opens every view; "
                         "Spec §4.4 defines no prefill for it")
    return first


def common_segment(table: SegmentTable) -> str | None:
    """The segment that opens every view, if one does (Spec §9.6): the history, or a shared prompt."""
    first = {view[0] for view in table.views}
    if len(first) != 1:
        return None
    sid = first.pop()
    return sid if table[sid].writer is None else None


@dataclass(frozen=True)
class DecodeGroups:
    """How the fast backend reads a table (Spec §9.6, "Several problems"): the workers in groups of
    consecutive workers, each group's views opened by a common segment of its own.

    Attributes:
        commons: table index of each group's common segment, in group order.
        tails: table indices of every other segment, in block order: group by group, each group's
            segments in table order (:attr:`per_group` of them).
        workers: workers per group.
    """

    commons: tuple[int, ...]
    tails: tuple[int, ...]
    workers: int

    @property
    def per_group(self) -> int:
        """Tail segments per group."""
        return len(self.tails) // len(self.commons)

    def members(self, b: int) -> list[int]:
        """Table indices of every segment of group ``b`` (its common segment and its tail), in table order."""
        return sorted((self.commons[b], *self.tails[b * self.per_group : (b + 1) * self.per_group]))


def decode_groups(table: SegmentTable) -> DecodeGroups | None:
    """The groups of the fast path (Spec §9.6), or None where it does not apply.

    One group when a static segment opens every view (:func:`common_segment`; every other segment is
    the tail, in table order). Otherwise, as in a union of several problems' tables (Spec §13.3):
    the workers fall into ``P >= 2`` runs of ``W / P`` consecutive workers whose views share a static
    first segment, every segment lies in the views of at most one group (one that no view reads joins
    the group of the segment before it in table order), and every group has as many tail segments.
    Then each group reads only its own common segment and tail: the attention is block-diagonal over
    the groups.
    """
    common = common_segment(table)
    if common is not None:
        j = table.index(common)
        return DecodeGroups((j,), tuple(i for i in range(len(table.segments)) if i != j), table.workers)
    firsts = [view[0] for view in table.views]
    openings = list(dict.fromkeys(firsts))
    P, W = len(openings), table.workers
    if P < 2 or W % P:
        return None
    n = W // P
    if firsts != [o for o in openings for _ in range(n)]:
        return None
    owner: dict[str, int] = {}
    for b, opening in enumerate(openings):
        if table[opening].writer is not None:
            return None
        for view in table.views[b * n : (b + 1) * n]:
            for sid in view:
                if owner.setdefault(sid, b) != b:
                    return None
    group = 0
    for seg in table.segments:  # a segment no view reads (never read) joins the group of the one before it
        group = owner.setdefault(seg.id, group)
    commons = tuple(table.index(o) for o in openings)
    tails = [[j for j, seg in enumerate(table.segments) if owner[seg.id] == b and j != commons[b]] for b in range(P)]
    if len({len(t) for t in tails}) != 1:
        return None
    return DecodeGroups(commons, tuple(j for t in tails for j in t), n)


def flush_into(table: SegmentTable, w: int, history: str) -> SegmentTable:
    """Move worker ``w``'s write segment into the static segment ``history`` (Spec §5.1, §13.3).

    :meth:`SegmentTable.flush` with an explicit history segment, for tables that hold several
    independent problems side by side (one history per problem, none of them opening every view):
    ``history`` grows by the length of ``w``'s write segment, which becomes empty. ``history`` must
    be a static segment that opens ``w``'s view.
    """
    if history not in table._index:
        raise TableError(f"history segment {history!r} is not a segment of the table")
    if table[history].writer is not None:
        raise TableError(f"history segment {history!r} must be static (writer None)")
    if not 0 <= w < table.workers:
        raise TableError(f"worker {w} out of range; the table has {table.workers} workers")
    if table.views[w][0] != history:
        raise TableError(f"segment {history!r} does not open worker {w}'s view; flush into the history of its own problem")
    own = table.write_segment(w)
    return table.with_lengths({history: table.length(history) + table.length(own), own: 0})
