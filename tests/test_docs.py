"""Documentation and specification checks.

* ``mkdocs build --strict`` succeeds (broken links and anchors, griffe docstring warnings and
  missing pages all fail it) and produces the layout diagrams and the spec pages;
* every "Spec §N.M" cited in a docstring of ``src/hogwild_ref`` is a heading of ``spec/*.md``, and
  the spec has every section the code base relies on;
* every flag of every command (``hogwild-ref --help`` and below) is named in the README, docs/ or spec/;
* ``SegmentTable.to_dict()`` output validates against ``spec/schema/segment_table.schema.json`` and
  malformed documents are rejected (by the schema, or — for the invariants a schema cannot
  express — by ``SegmentTable.from_dict``).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hogwild_ref.segments import LAYOUTS, Segment, SegmentTable, TableError, make_layout

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "spec"
SCHEMA_PATH = SPEC / "schema" / "segment_table.schema.json"
LAYOUT_SVGS = [f"{layout}-w{w}.svg" for layout in LAYOUTS for w in (2, 4)]

#: Section numbers the code base and the task description rely on (their meaning is fixed).
REQUIRED_SECTIONS = (
    ["1", "2", "2.1", "2.2", "2.3", "2.4", "3", "3.1", "3.2", "3.3", "3.4", "3.5", "3.6"]
    + ["4", "4.1", "4.2", "4.3", "4.4", "4.5", "5", "5.1", "5.2"]
    + ["6", "6.1", "6.2", "6.3", "6.4", "6.5", "6.6", "7"]
    + ["8", "8.1", "8.2", "8.3", "8.4", "8.5", "9", "9.1", "9.2", "9.3", "9.4", "9.5"]
    + ["10", "11", "11.1", "11.3", "11.4", "12", "12.4"]
)

HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\s", re.MULTILINE)
# "Spec §2.3", and the further numbers of a list or range such as "Spec §2–§4" or "Spec §6.2, §6.4"
CITATION = re.compile(r"Spec §(\d+(?:\.\d+)?)((?:\s*(?:,|–|-|and)\s*§\d+(?:\.\d+)?)*)")
FURTHER = re.compile(r"§(\d+(?:\.\d+)?)")


# ---------------------------------------------------------------------- the command line in the docs
def _flags(parser, command: str = "hogwild-ref"):
    """(command, flag) for every long option of ``parser`` and of its subcommands, recursively."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _flags(sub, f"{command} {name}")
        elif action.help != argparse.SUPPRESS:  # a hidden flag (an old spelling) is not advertised
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    yield command, flag


#: the page about each command: a flag named anywhere there is documented for that command
COMMAND_PAGES = {"eval": "evaluation.md", "bench": "benchmarks.md", "conform": "testing-your-implementation.md",
                 "generate": "quickstart.md"}


def test_every_flag_is_documented():
    """A flag in ``--help`` that no page names is one a user finds only by chance (four of ``generate``'s
    were, found by a newcomer review). A flag counts as documented for a command on the command's own page
    (:data:`COMMAND_PAGES`) or where one paragraph (or table row) of the README, docs/ or spec/ names both
    (``eval``'s ``--top-p`` is not documented by ``generate``'s)."""
    from hogwild_ref.cli import build_parser

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted(SPEC.glob("*.md"))]
    paragraphs = [p for page in pages for p in re.split(r"\n\s*\n|\n(?=\|)", page.read_text(encoding="utf-8"))]
    missing = []
    for command, flag in _flags(build_parser()):
        word = command.split()[1] if " " in command else "hogwild-ref"
        named = re.compile(re.escape(flag) + r"(?![\w-])")
        own = COMMAND_PAGES.get(word)
        if own is not None and named.search((ROOT / "docs" / own).read_text(encoding="utf-8")):
            continue
        if not any(named.search(p) and re.search(rf"\b{word}\b", p) for p in paragraphs):
            missing.append(f"{command} {flag}")
    assert not missing, f"flags no paragraph names with their command: {sorted(set(missing))}"


# ---------------------------------------------------------------------- the build
@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


@pytest.mark.slow
def test_mkdocs_build_strict_renders_spec_and_diagrams(site: Path) -> None:
    for name in LAYOUT_SVGS:
        svg = site / "assets" / "layouts" / name
        assert svg.is_file(), f"missing generated diagram {name}"
        text = svg.read_text(encoding="utf-8")
        assert text.lstrip().startswith("<svg") and text.rstrip().endswith("</svg>")
    floors = site / "assets" / "architecture" / "floors.svg"  # docs/gen_architecture.py, the floor diagram
    assert floors.is_file() and floors.read_text(encoding="utf-8").rstrip().endswith("</svg>")
    # the spec pages come from spec/ through the docs/spec symlink
    for md in sorted(SPEC.glob("*.md")):
        page = "spec/index.html" if md.stem == "index" else f"spec/{md.stem}/index.html"
        assert (site / page).is_file(), f"spec page {md.name} was not rendered"
    assert (site / "spec" / "schema" / "segment_table.schema.json").is_file()
    for page in ("quickstart", "testing-your-implementation", "models", "benchmarks", "architecture", "api"):
        assert (site / page / "index.html").is_file()
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert "hogwild_ref.segments" in api and "SegmentTable" in api


def test_generated_diagrams_follow_the_views() -> None:
    """The diagram generator draws one box per segment of every view (no drift from the code)."""
    from docs_scripts import load_docs_script

    gen_layouts = load_docs_script("gen_layouts")
    for layout in LAYOUTS:
        for w in (1, 2, 3, 4):
            table = gen_layouts.example_table(layout, w)
            svg = gen_layouts.render_svg(layout, w)
            assert svg.count("<rect ") == sum(len(v) for v in table.views)
            for worker, view in enumerate(table.views):
                for sid, offset in table.offsets(worker).items():
                    assert f"{sid}: length {table.length(sid)}, offset {offset} " in svg


# ---------------------------------------------------------------------- spec sections
def _spec_sections() -> set[str]:
    found: set[str] = set()
    for md in SPEC.glob("*.md"):
        found.update(HEADING.findall(md.read_text(encoding="utf-8")))
    return found


def _cited_sections() -> dict[str, set[str]]:
    cited: dict[str, set[str]] = {}
    for py in sorted((ROOT / "src" / "hogwild_ref").rglob("*.py")):
        for m in CITATION.finditer(py.read_text(encoding="utf-8")):
            numbers = [m.group(1), *FURTHER.findall(m.group(2))]
            for n in numbers:
                cited.setdefault(n, set()).add(py.name)
    return cited


def test_spec_has_every_cited_section() -> None:
    sections = _spec_sections()
    cited = _cited_sections()
    assert cited, "no 'Spec §' citations found in src/hogwild_ref"
    missing = {n: sorted(files) for n, files in cited.items() if n not in sections}
    assert not missing, f"sections cited in docstrings but missing from spec/*.md: {missing}"


def test_spec_has_required_sections_once() -> None:
    counts: dict[str, int] = {}
    for md in SPEC.glob("*.md"):
        for n in HEADING.findall(md.read_text(encoding="utf-8")):
            counts[n] = counts.get(n, 0) + 1
    assert not [n for n in REQUIRED_SECTIONS if n not in counts], "required spec sections missing"
    assert not {n: c for n, c in counts.items() if c > 1}, "a section number is used twice"


# ---------------------------------------------------------------------- JSON schema
@pytest.fixture(scope="module")
def validator() -> object:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.Draft202012Validator
    cls.check_schema(schema)
    return cls(schema)


def _tables() -> list[SegmentTable]:
    tables = []
    for layout in LAYOUTS:
        for w in (1, 2, 3, 4):
            kwargs = {"others_header": 8, "separator": 3, "own_header": 7} if layout == "combined" else {}
            t = make_layout(layout, w, 100, **kwargs)
            tables.append(t)
            grown = t.append([j + 1 for j in range(w)])
            tables.append(grown)
            if grown.history is not None:
                tables.append(grown.flush(w - 1))
    explicit = SegmentTable(
        (Segment("p", 10), Segment("scratch_0", 2, None), Segment("a", 3, 0), Segment("b", 0, 1)),
        (("p", "scratch_0", "b", "a"), ("p", "a", "b")),
        history="p",
        layout=None,
    )
    tables.append(explicit)
    return tables


def test_to_dict_validates_against_schema(validator: object) -> None:
    for table in _tables():
        doc = table.to_dict()
        errors = sorted(validator.iter_errors(doc), key=str)  # type: ignore[attr-defined]
        assert not errors, f"{table.layout} W={table.workers}: {errors[0].message}"
        # the JSON text round-trips too
        assert SegmentTable.from_json(table.to_json()) == table
        validator.validate(json.loads(table.to_json()))  # type: ignore[attr-defined]


def _base() -> dict:
    return make_layout("combined", 2, 100, others_header=8, separator=3, own_header=7).to_dict()


def _mutate(path: list, value: object = None, delete: bool = False) -> dict:
    doc = copy.deepcopy(_base())
    target = doc
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


SCHEMA_INVALID = {
    "missing version": _mutate(["version"], delete=True),
    "wrong version": _mutate(["version"], 2),
    "missing views": _mutate(["views"], delete=True),
    "missing history key": _mutate(["history"], delete=True),
    "extra top-level key": _mutate(["extra"], 1),
    "negative length": _mutate(["segments", 0, "length"], -1),
    "fractional length": _mutate(["segments", 0, "length"], 2.5),
    "string length": _mutate(["segments", 0, "length"], "3"),
    "boolean length": _mutate(["segments", 0, "length"], True),
    "negative writer": _mutate(["segments", 2, "writer"], -1),
    "string writer": _mutate(["segments", 2, "writer"], "0"),
    "missing writer": _mutate(["segments", 2, "writer"], delete=True),
    "extra segment key": _mutate(["segments", 2, "colour"], "red"),
    "numeric id": _mutate(["segments", 0, "id"], 5),
    "no segments": _mutate(["segments"], []),
    "no views": _mutate(["views"], []),
    "empty view": _mutate(["views", 0], []),
    "view repeats a segment": _mutate(["views", 0], ["common", "cur_1", "cur_1", "cur_0"]),
    "view is not a list": _mutate(["views", 0], "common"),
    "history not a string": _mutate(["history"], 0),
    "layout not a string": _mutate(["layout"], 3),
    "not an object": [],
}

# Structurally fine (the schema accepts them) but breaking an invariant of spec §2.3.
INVARIANT_INVALID = {
    "duplicate segment id": _mutate(["segments", 1, "id"], "common"),
    "view names an unknown segment": _mutate(["views", 0, 1], "nope"),
    "view does not end with the write segment": _mutate(
        ["views", 0], ["common", "others_header", "cur_0", "sep_1", "own_header", "cur_1"]
    ),
    "worker without a write segment": _mutate(["segments", 4, "writer"], None),
    "writer out of range": _mutate(["segments", 4, "writer"], 7),
    "history not first": _mutate(["views", 1], ["others_header", "common", "cur_0", "sep_0", "own_header", "cur_1"]),
    "history not static": _mutate(["history"], "cur_0"),
    "history unknown": _mutate(["history"], "nope"),
}


@pytest.mark.parametrize("path, value", [(["version"], 1.0), (["segments", 0, "length"], 100.0),
                                         (["segments", 2, "writer"], 0.0), (["segments", 1, "length"], 8.0)])
def test_an_integer_with_a_zero_fraction_is_an_integer_for_schema_and_reader(validator: object, path: list,
                                                                           value: float) -> None:
    """Spec §2.4: JSON Schema counts ``100.0`` as an integer, and the reader agrees (it refused it, so a
    document the schema accepted and §2.3 allows was refused); it reads back as the integer."""
    doc = _mutate(path, value)
    assert validator.is_valid(doc)  # type: ignore[attr-defined]
    table = SegmentTable.from_dict(doc)
    assert table == SegmentTable.from_dict(_base())
    assert json.loads(table.to_json()) == _base() and all(type(s["length"]) is int for s in table.to_dict()["segments"])


@pytest.mark.parametrize("name", sorted(SCHEMA_INVALID))
def test_schema_rejects_malformed(validator: object, name: str) -> None:
    assert not validator.is_valid(SCHEMA_INVALID[name]), name  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(INVARIANT_INVALID))
def test_invariants_beyond_the_schema_are_rejected_by_from_dict(validator: object, name: str) -> None:
    doc = INVARIANT_INVALID[name]
    assert validator.is_valid(doc), f"{name}: expected the schema to accept it (structure is fine)"  # type: ignore[attr-defined]
    with pytest.raises(TableError):
        SegmentTable.from_dict(doc)
