"""The floor map of :mod:`hogwild_ref` as data, its import graph read from the source, and the diagram.

Every module of ``src/hogwild_ref`` lives on one *floor* (1 to 5, :data:`FLOORS`); a module may import
modules on its own floor or below, never above, and no import cycle may exist (``docs/architecture.md``
explains the floors; ``tests/test_architecture.py`` enforces them with the functions below).

* :func:`import_graph` reads every ``import`` / ``from`` statement of every module under a package root
  with :mod:`ast` (module level and inside functions; relative imports resolved; statements under
  ``if TYPE_CHECKING:`` ignored). It imports nothing from the package, so it works on a broken tree;
* :func:`cycles`, :func:`upward_imports`, :func:`unplaced`, :func:`unresolved`, :func:`impure_imports`
  and :func:`long_files` are the checks, each a pure function of a graph (or a root) and the floor map;
* :func:`render_svg` draws one horizontal band per floor (floor 5 on top), one box per module and one
  thin arrow per import between modules. Upward imports are red; modules in the tree but not in the
  map sit in a red "unplaced" band; modules of the map not (yet) in the tree are dashed.

Run as a script (``python docs/gen_architecture.py [OUT_DIR]``) or as an MkDocs hook: ``mkdocs.yml``
lists this file under ``hooks:``, and :func:`on_pre_build` regenerates
``docs/assets/architecture/floors.svg`` before every build. The SVG is a build output: not committed.
"""

from __future__ import annotations

import ast
import sys
from html import escape
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_ROOT = ROOT / "src" / "hogwild_ref"
OUT_DIR = Path(__file__).resolve().parent / "assets" / "architecture"

#: Module (dotted, relative to ``hogwild_ref``; ``__init__`` is the package's own ``__init__.py``, a
#: sub-package is named by its folder) -> floor. A key ending in "." is a prefix rule for every module
#: of that sub-package; an exact key overrides it. The order is the left-to-right order of the diagram.
FLOORS: dict[str, int] = {
    # floor 1, pure: no torch, no transformers
    "segments": 1,
    "scheduler": 1,
    "prompts": 1,
    "checks": 1,
    "limits": 1,
    "settings": 1,
    "events": 1,
    "records": 1,
    "mathcheck": 1,
    "evaluation.answers": 1,
    "evaluation.summary": 1,
    "evaluation.datasets": 1,
    "evaluation.results": 1,
    "evaluation.shards": 1,
    # floor 1, kernels and data (torch allowed)
    "rope": 1,
    "sampling": 1,
    "store": 1,
    "packed": 1,
    "cpu_matmul": 1,
    "parallel": 1,
    "models": 1,
    "conformance.protocol": 1,
    # floor 2, one tick
    "plan": 2,
    "attention": 2,
    "fast": 2,
    "extend": 2,
    "split": 2,
    "ticks": 2,
    "storage": 2,
    "features": 2,
    "hf": 2,
    # floor 3, one forward step
    "forward": 3,
    # floor 4, one run
    "run": 4,
    "proof": 4,
    # floor 5, front doors
    "engine": 5,
    "batch": 5,
    "survey": 5,
    "bench": 5,
    "live": 5,
    "cli": 5,
    "cli.": 5,
    "__main__": 5,
    "__init__": 5,
    "conformance": 5,
    "conformance.": 5,
    "evaluation": 5,
    "evaluation.": 5,
}

#: Floor-1 modules that import no torch, transformers, jaxtyping or einops (imports under
#: ``if TYPE_CHECKING:`` do not count).
PURE: frozenset[str] = frozenset(
    {"segments", "scheduler", "prompts", "checks", "limits", "settings", "events", "records", "mathcheck"}
    | {"evaluation.answers", "evaluation.summary", "evaluation.datasets", "evaluation.results",
       "evaluation.shards"}
)

#: Distributions a pure module must not import.
HEAVY: frozenset[str] = frozenset({"torch", "transformers", "jaxtyping", "einops"})

FLOOR_NAMES = {
    1: "floor 1: pure data and kernels",
    2: "floor 2: one tick",
    3: "floor 3: one forward step",
    4: "floor 4: one run",
    5: "floor 5: front doors",
}

#: Longest source file (lines) the package accepts.
MAX_LINES = 600


# ---------------------------------------------------------------------- the graph
class ImportGraph(NamedTuple):
    """The import graph of one package, read from its source (a named tuple: a file loaded as a hook or by
    path is not in ``sys.modules``, which a dataclass would need).

    Attributes:
        package: the package's import name (the root folder's name).
        files: module -> source file, for every module of the package.
        edges: module -> {imported module of the package: line of the first such import}.
        external: module -> {imported top-level name outside the package: line of the first import}.
        missing: module -> {module of the package it imports that has no file: line of the first import}.
    """

    package: str
    files: dict[str, Path]
    edges: dict[str, dict[str, int]]
    external: dict[str, dict[str, int]]
    missing: dict[str, dict[str, int]]


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()  # a sub-package is named by its folder; the root's own __init__ stays "__init__"
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` at any depth, except the bodies of ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path = PACKAGE_ROOT) -> ImportGraph:
    """The import graph of the package whose folder is ``root`` (every ``*.py`` under it).

    An import names the most specific module of the package it reaches: ``from .x import y`` is an edge
    to ``x.y`` when ``x/y.py`` exists, else to ``x``; ``from . import __version__`` is an edge to the
    package's ``__init__``. An import of a module of the package that has no file goes to ``missing``.
    Dynamic imports (``importlib.import_module``) are not seen.
    """
    root = Path(root)
    package = root.name
    files = {_module_name(root, p): p for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts}
    graph = ImportGraph(package, files, {m: {} for m in files}, {m: {} for m in files}, {m: {} for m in files})

    for module, path in files.items():
        is_package = path.name == "__init__.py"
        here = module.split(".") if module != "__init__" else []
        base = here if is_package else here[:-1]  # the package a relative import starts from
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _imports(tree):
            targets: list[tuple[str | None, str]] = []  # (dotted name inside the package or None, external name)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    head, _, rest = alias.name.partition(".")
                    targets.append((rest or "__init__", "") if head == package else (None, head))
            else:
                if node.level:
                    up = node.level - 1
                    if up > len(base):
                        continue  # beyond the package: not ours to resolve
                    prefix = base[: len(base) - up] + (node.module.split(".") if node.module else [])
                    stem = ".".join(prefix)
                else:
                    head, _, rest = (node.module or "").partition(".")
                    if head != package:
                        targets.append((None, head))
                        stem = None
                    else:
                        stem = rest
                if stem is not None:
                    for alias in node.names:
                        sub = f"{stem}.{alias.name}" if stem else alias.name
                        targets.append((sub if sub in files else stem or "__init__", ""))
            for dotted, name in targets:
                if dotted is None:
                    found, target = graph.external[module], name
                elif dotted in files:
                    found, target = graph.edges[module], dotted
                else:  # a module of the package that does not exist (renamed or removed)
                    found, target = graph.missing[module], dotted
                if target != module:
                    found[target] = min(found.get(target, node.lineno), node.lineno)
    return graph


# ---------------------------------------------------------------------- the checks
def floor_of(module: str, floors: Mapping[str, int] = FLOORS) -> int | None:
    """The floor of ``module``: its exact key, else the longest prefix rule ("conformance.") it falls
    under, else None (unplaced)."""
    if module in floors:
        return floors[module]
    rules = [k for k in floors if k.endswith(".") and module.startswith(k)]
    return floors[max(rules, key=len)] if rules else None


def cycles(graph: ImportGraph) -> list[list[str]]:
    """The import cycles: every strongly connected component of more than one module (Tarjan), each
    sorted, the list sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph.files) + 100))
    try:
        for v in sorted(graph.files):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found)


def cycle_path(graph: ImportGraph, component: Iterable[str]) -> list[str]:
    """One shortest import cycle inside ``component`` (a strongly connected component), from its first
    module back to it: ``["a", "b", "a"]``."""
    members = sorted(component)
    start = members[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.edges.get(v, {})):
                if w not in members:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    return []


def upward_imports(graph: ImportGraph, floors: Mapping[str, int] = FLOORS) -> list[str]:
    """Every import of a module on a higher floor, as ``"a -> b (floor x -> y), line n"``. Imports from
    or to unplaced modules are left to :func:`unplaced`."""
    found = []
    for a in sorted(graph.edges):
        fa = floor_of(a, floors)
        for b, line in sorted(graph.edges[a].items()):
            fb = floor_of(b, floors)
            if fa is not None and fb is not None and fb > fa:
                found.append(f"{a} -> {b} (floor {fa} -> {fb}), line {line}")
    return found


def unplaced(graph: ImportGraph, floors: Mapping[str, int] = FLOORS) -> list[str]:
    """The modules of the tree that the floor map does not place."""
    return sorted(m for m in graph.files if floor_of(m, floors) is None)


def impure_imports(graph: ImportGraph, pure: Iterable[str] = PURE, heavy: Iterable[str] = HEAVY) -> list[str]:
    """What breaks the purity of the pure modules: an import of a heavy distribution (torch,
    transformers, jaxtyping, einops), as ``"a imports torch, line n"``, or of a module of the package
    that is not itself pure (it could import them in turn), as ``"a imports rope (not pure), line n"``."""
    pure, heavy = set(pure), set(heavy)
    found = []
    for m in sorted(pure & set(graph.files)):
        found += [f"{m} imports {name}, line {line}" for name, line in sorted(graph.external[m].items()) if name in heavy]
        found += [f"{m} imports {b} (not pure), line {line}" for b, line in sorted(graph.edges[m].items()) if b not in pure]
    return found


def unresolved(graph: ImportGraph) -> list[str]:
    """Every import of a module of the package that has no file, as ``"a imports b (no such module), line n"``."""
    return [f"{a} imports {b} (no such module), line {line}" for a in sorted(graph.missing) for b, line in sorted(graph.missing[a].items())]


def long_files(root: Path = PACKAGE_ROOT, limit: int = MAX_LINES) -> list[str]:
    """The source files under ``root`` longer than ``limit`` lines, as ``"path: n lines"``."""
    root = Path(root)
    found = []
    for p in sorted(root.rglob("*.py")):
        n = len(p.read_text(encoding="utf-8").splitlines())
        if n > limit:
            found.append(f"{p.relative_to(root).as_posix()}: {n} lines")
    return found


# ---------------------------------------------------------------------- the diagram
BOX_W = 128
BOX_H = 26
GAP_X = 14
GAP_Y = 22
PER_ROW = 9
BAND_PAD = 16
BAND_GAP = 34
LEFT = 150
TOP = 44
LEGEND = 46

PURE_FILL = "#e8f1e4"
HEAVY_FILL = "#dde6f3"
UNPLACED_FILL = "#f6dcdc"
BAND_FILLS = {1: "#f7f7f4", 2: "#f4f6f9", 3: "#f7f4f9", 4: "#f9f6f1", 5: "#f3f7f7", 0: "#fbecec"}


def _ordered(floors: Mapping[str, int], graph: ImportGraph) -> dict[int, list[str]]:
    """Floor -> modules in diagram order (map order, then the tree's sub-package modules); floor 0
    holds the unplaced modules."""
    bands: dict[int, list[str]] = {f: [] for f in sorted(set(floors.values()))}
    bands[0] = []
    for key, f in floors.items():
        if key.endswith("."):
            bands[f].extend(m for m in sorted(graph.files) if m.startswith(key) and m not in floors)
        else:
            bands[f].append(key)
    bands[0] = unplaced(graph, floors)
    return bands


def render_svg(graph: ImportGraph, floors: Mapping[str, int] = FLOORS, pure: Iterable[str] = PURE) -> str:
    """The SVG text of the floor diagram of ``graph``."""
    pure = set(pure)
    bands = _ordered(floors, graph)
    order = [f for f in sorted(bands, reverse=True) if f > 0] + ([0] if bands[0] else [])
    width = LEFT + PER_ROW * (BOX_W + GAP_X) + 20
    boxes: dict[str, tuple[float, float]] = {}  # module -> (x, y) of the top-left corner
    band_rects = []
    y = TOP
    for f in order:
        mods = bands[f]
        rows = max(1, -(-len(mods) // PER_ROW))
        height = 2 * BAND_PAD + rows * BOX_H + (rows - 1) * GAP_Y
        band_rects.append((f, y, height))
        for i, m in enumerate(mods):
            r, c = divmod(i, PER_ROW)
            in_row = min(PER_ROW, len(mods) - r * PER_ROW)
            x0 = LEFT + (PER_ROW - in_row) * (BOX_W + GAP_X) / 2  # centre short rows
            boxes[m] = (x0 + c * (BOX_W + GAP_X), y + BAND_PAD + r * (BOX_H + GAP_Y))
        y += height + BAND_GAP
    height = y - BAND_GAP + LEGEND
    title = "hogwild_ref: modules by floor and the imports between them (read from the source)"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" role="img">',
        f"<title>{escape(title)}</title>",
        "<defs>"
        '<marker id="arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="6" markerHeight="6" orient="auto">'
        '<path d="M0,0 L8,4 L0,8 z" fill="#5b6470"/></marker>'
        '<marker id="arrow-up" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" orient="auto">'
        '<path d="M0,0 L8,4 L0,8 z" fill="#d62728"/></marker>'
        '<marker id="arrow-loop" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" orient="auto">'
        '<path d="M0,0 L8,4 L0,8 z" fill="#e07b00"/></marker>'
        "</defs>",
        f'<text x="4" y="20" font-size="14" font-weight="bold" fill="#222">{escape(title)}</text>',
    ]
    for f, by, bh in band_rects:
        label = FLOOR_NAMES.get(f, f"floor {f}") if f else "unplaced (not in FLOORS)"
        out.append(f'<rect x="2" y="{by}" width="{width - 4}" height="{bh}" rx="6" fill="{BAND_FILLS.get(f, "#f5f5f5")}"/>')
        words = label.split(": ")
        for k, part in enumerate(words):
            out.append(
                f'<text x="10" y="{by + 20 + 14 * k}" font-size="{12 if k == 0 else 10}" '
                f'font-weight="{"bold" if k == 0 else "normal"}" fill="#333">{escape(part)}</text>'
            )

    # edges, under the boxes: from the importer to the imported module
    outgoing: dict[str, list[str]] = {m: sorted(t for t in graph.edges.get(m, {}) if t in boxes) for m in boxes}
    incoming: dict[str, list[str]] = {m: [] for m in boxes}
    for a in sorted(boxes):
        for b in outgoing[a]:
            incoming[b].append(a)
    in_cycle = {m: k for k, component in enumerate(cycles(graph)) for m in component}
    drawn = []
    for a in sorted(boxes):
        fa = floor_of(a, floors)
        for b in outgoing[a]:
            fb = floor_of(b, floors)
            up = fa is not None and fb is not None and fb > fa
            loop = a in in_cycle and in_cycle[a] == in_cycle.get(b)
            ax, ay = boxes[a]
            bx, by = boxes[b]
            # spread the ends along the box edges so that parallel edges stay apart
            sx = ax + BOX_W * (outgoing[a].index(b) + 1) / (len(outgoing[a]) + 1)
            tx = bx + BOX_W * (incoming[b].index(a) + 1) / (len(incoming[b]) + 1)
            if by > ay:  # target below: bottom -> top
                sy, ty = ay + BOX_H, by
                path = f"M{sx:.1f},{sy} C{sx:.1f},{sy + 30} {tx:.1f},{ty - 30} {tx:.1f},{ty}"
            elif by < ay:  # target above: top -> bottom
                sy, ty = ay, by + BOX_H
                path = f"M{sx:.1f},{sy} C{sx:.1f},{sy - 30} {tx:.1f},{ty + 30} {tx:.1f},{ty}"
            else:  # same row: an arc above it
                sy = ty = ay
                lift = min(BAND_PAD - 3, 6 + abs(tx - sx) / 40)  # stays inside the band
                path = f"M{sx:.1f},{sy} C{sx:.1f},{sy - lift:.1f} {tx:.1f},{ty - lift:.1f} {tx:.1f},{ty}"
            if up:
                style = 'stroke="#d62728" stroke-width="1.6" marker-end="url(#arrow-up)"'
            elif loop:
                style = 'stroke="#e07b00" stroke-width="1.4" marker-end="url(#arrow-loop)"'
            else:
                style = 'stroke="#5b6470" stroke-opacity="0.45" stroke-width="0.9" marker-end="url(#arrow)"'
            what = f"{a} imports {b}" + (f" (upward: floor {fa} -> {fb})" if up else "") + (" (in an import cycle)" if loop else "")
            drawn.append((up or loop, f'<path d="{path}" fill="none" {style}><title>{escape(what)}</title></path>'))
    out.extend(p for _, p in sorted(drawn, key=lambda d: d[0]))  # faults drawn last, on top

    for m, (x, y0) in boxes.items():
        present = m in graph.files
        heavy = bool(HEAVY & set(graph.external.get(m, {})))
        fill = UNPLACED_FILL if floor_of(m, floors) is None else (PURE_FILL if m in pure or not heavy else HEAVY_FILL)
        stroke = "#222" if present else "#888"
        dash = "" if present else ' stroke-dasharray="4 3"'
        lines = len(graph.files[m].read_text(encoding="utf-8").splitlines()) if present else 0
        tip = f"{m}: {lines} lines" if present else f"{m}: planned (not in the tree)"
        size = 11 if len(m) * 11 * 0.58 <= BOX_W - 6 else 9
        out.append(
            f'<rect x="{x:.1f}" y="{y0}" width="{BOX_W}" height="{BOX_H}" rx="4" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="1"{dash}><title>{escape(tip)}</title></rect>'
        )
        out.append(
            f'<text x="{x + BOX_W / 2:.1f}" y="{y0 + BOX_H / 2 + 4}" font-size="{size}" text-anchor="middle" '
            f'fill="{"#222" if present else "#777"}">{escape(m)}</text>'
        )
    legend = [
        "green box: imports no torch/transformers itself; blue box: imports torch or transformers; dashed box: planned, not in the tree;",
        "grey arrow: an import (importer -> imported), allowed on the same floor or downwards; red arrow: an upward import; "
        "orange arrow: an import inside a cycle.",
    ]
    for k, text in enumerate(legend):
        out.append(f'<text x="4" y="{height - LEGEND + 18 + 14 * k}" font-size="10" fill="#555">{escape(text)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def generate(out_dir: Path = OUT_DIR, root: Path = PACKAGE_ROOT) -> list[Path]:
    """Write ``floors.svg`` into ``out_dir`` (only if its content changed, so that ``mkdocs serve`` does
    not rebuild in a loop). Returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "floors.svg"
    text = render_svg(import_graph(root))
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return [path]


def on_pre_build(config: Any, **kwargs: Any) -> None:
    """MkDocs hook: regenerate the diagram before the files are collected."""
    generate(Path(config["docs_dir"]) / "assets" / "architecture")


if __name__ == "__main__":
    for p in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR):
        print(p)
