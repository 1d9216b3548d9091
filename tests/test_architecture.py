"""The floors of the package (docs/architecture.md), checked on the import graph read from the source.

The graph and the checks are those of ``docs/gen_architecture.py`` (the same code draws the diagram):

* no import cycle among the modules of ``src/hogwild_ref``;
* no module imports a module on a higher floor;
* every module of the tree is placed on a floor (a new module must be added to ``FLOORS``), and every
  import of a module of the package names one that exists;
* the pure floor-1 modules import no torch, transformers, jaxtyping or einops (nor a module of the
  package that is not pure);
* no source file is longer than ``MAX_LINES`` lines.

Each check is first proven on a small package built in ``tmp_path`` (clean: nothing reported; with one
planted fault: exactly that fault reported), so a failure on the tree is the tree's, not the test's.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from docs_scripts import load_docs_script

ROOT = Path(__file__).resolve().parent.parent


gen = load_docs_script("gen_architecture")


# ---------------------------------------------------------------------- a synthetic package
#: Floors of the synthetic package: a prefix rule for the sub-package with one override.
SYN_FLOORS = {"__init__": 3, "low": 1, "kern": 1, "mid": 2, "top": 3, "sub": 3, "sub.": 3, "sub.leaf": 1}
SYN_PURE = {"low", "sub.leaf"}

_SYN_SOURCES = {
    "__init__.py": '"""pkg."""\n',
    "low.py": """\
        import json
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            import torch
            from . import top
        """,
    "kern.py": """\
        import torch
        from jaxtyping import Float

        from . import low
        """,
    "mid.py": """\
        from .kern import kernel


        def f():
            from pkg.low import value
            import pkg.sub.leaf
        """,
    "top.py": """\
        from . import mid
        from .sub import leaf
        from . import __version__
        """,
    "sub/__init__.py": "from .leaf import thing\n",
    "sub/leaf.py": "from ..low import value\n",
    "sub/other.py": "from ..mid import f\n",
}
SYN_FILES = {name: textwrap.dedent(text) for name, text in _SYN_SOURCES.items()}


def make_package(tmp_path: Path, **changes: str | None) -> Path:
    """The synthetic package ``pkg`` under ``tmp_path``; ``changes`` maps a file (``sub__leaf`` for
    ``sub/leaf.py``) to new text, or to None to leave it out."""
    files = dict(SYN_FILES)
    for key, text in changes.items():
        name = key.replace("__", "/", 1) if key.startswith("sub__") else key
        files[name + ".py"] = text  # type: ignore[assignment]
    root = tmp_path / "pkg"
    for name, text in files.items():
        if text is None:
            continue
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_graph_resolves_every_kind_of_import(tmp_path: Path) -> None:
    graph = gen.import_graph(make_package(tmp_path))
    assert graph.package == "pkg"
    assert sorted(graph.files) == ["__init__", "kern", "low", "mid", "sub", "sub.leaf", "sub.other", "top"]
    edges = {m: sorted(e) for m, e in graph.edges.items()}
    assert edges == {
        "__init__": [],
        "low": [],  # the TYPE_CHECKING imports do not count
        "kern": ["low"],  # from . import low: the module, not the package
        "mid": ["kern", "low", "sub.leaf"],  # absolute imports inside a function count
        "top": ["__init__", "mid", "sub.leaf"],  # from . import __version__: the package's __init__
        "sub": ["sub.leaf"],
        "sub.leaf": ["low"],  # ..low from a sub-package
        "sub.other": ["mid"],
    }
    assert sorted(graph.external["low"]) == ["json", "typing"]
    assert sorted(graph.external["kern"]) == ["jaxtyping", "torch"]
    assert graph.edges["mid"]["low"] == 5  # the line of the import


def test_floor_of_prefix_rules_and_overrides() -> None:
    assert gen.floor_of("sub.other", SYN_FLOORS) == 3  # prefix rule
    assert gen.floor_of("sub.leaf", SYN_FLOORS) == 1  # exact key wins
    assert gen.floor_of("sub", SYN_FLOORS) == 3
    assert gen.floor_of("subway", SYN_FLOORS) is None  # "sub." does not match "subway"
    assert gen.floor_of("conformance.vectors") == 5 and gen.floor_of("conformance.protocol") == 1


def test_cycle_check_on_a_synthetic_package(tmp_path: Path) -> None:
    assert gen.cycles(gen.import_graph(make_package(tmp_path / "clean"))) == []
    # top -> sub.other -> top, both on floor 3 (so only the cycle check sees it)
    bad = gen.import_graph(make_package(tmp_path / "bad", sub__other="from .. import top\n", top=SYN_FILES["top.py"] + "from .sub import other\n"))
    assert gen.cycles(bad) == [["sub.other", "top"]]
    assert gen.cycle_path(bad, ["sub.other", "top"]) == ["sub.other", "top", "sub.other"]
    assert gen.upward_imports(bad, SYN_FLOORS) == []


def test_floor_check_on_a_synthetic_package(tmp_path: Path) -> None:
    assert gen.upward_imports(gen.import_graph(make_package(tmp_path / "clean")), SYN_FLOORS) == []
    bad = gen.import_graph(make_package(tmp_path / "bad", kern=SYN_FILES["kern.py"] + "\n\ndef f():\n    from .mid import kernel\n"))
    assert gen.upward_imports(bad, SYN_FLOORS) == ["kern -> mid (floor 1 -> 2), line 8"]


def test_placement_check_on_a_synthetic_package(tmp_path: Path) -> None:
    assert gen.unplaced(gen.import_graph(make_package(tmp_path / "clean")), SYN_FLOORS) == []
    bad = gen.import_graph(make_package(tmp_path / "bad", new="from . import low\n"))
    assert gen.unplaced(bad, SYN_FLOORS) == ["new"]
    assert gen.upward_imports(bad, SYN_FLOORS) == []  # an unplaced module is the placement check's


def test_unresolved_import_check_on_a_synthetic_package(tmp_path: Path) -> None:
    assert gen.unresolved(gen.import_graph(make_package(tmp_path / "clean"))) == []
    bad = gen.import_graph(make_package(tmp_path / "bad", top=SYN_FILES["top.py"] + "from .gone import x\nimport pkg.sub.gone\n"))
    assert gen.unresolved(bad) == ["top imports gone (no such module), line 4", "top imports sub.gone (no such module), line 5"]
    assert "__init__" in bad.edges["top"] and "gone" not in bad.edges["top"]  # not mistaken for the package


def test_purity_check_on_a_synthetic_package(tmp_path: Path) -> None:
    assert gen.impure_imports(gen.import_graph(make_package(tmp_path / "clean")), SYN_PURE) == []
    bad = gen.import_graph(make_package(tmp_path / "bad", low=SYN_FILES["low.py"] + "\n\ndef f():\n    import einops.layers\n"))
    assert gen.impure_imports(bad, SYN_PURE) == ["low imports einops, line 10"]
    # a pure module importing a module of the package that is not pure (kern imports torch)
    bad = gen.import_graph(make_package(tmp_path / "bad2", sub__leaf="from ..low import value\nfrom .. import kern\n"))
    assert gen.impure_imports(bad, SYN_PURE) == ["sub.leaf imports kern (not pure), line 2"]


def test_length_check_on_a_synthetic_package(tmp_path: Path) -> None:
    assert gen.long_files(make_package(tmp_path / "clean", top="x = 1\n" * gen.MAX_LINES)) == []
    root = make_package(tmp_path / "bad", sub__other="x = 1\n" * (gen.MAX_LINES + 1))
    assert gen.long_files(root) == [f"sub/other.py: {gen.MAX_LINES + 1} lines"]


def test_the_diagram_has_one_box_per_module(tmp_path: Path) -> None:
    graph = gen.import_graph(make_package(tmp_path, new="from . import low\n"))
    svg = gen.render_svg(graph, SYN_FLOORS, SYN_PURE)
    assert svg.lstrip().startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert svg.count("<rect ") - svg.count('rx="6"') == len(graph.files)  # band rects have rx=6
    assert svg.count("</path>") == sum(len(e) for e in graph.edges.values())  # one arrow per import
    assert "unplaced (not in FLOORS)" in svg


# ---------------------------------------------------------------------- the tree
@pytest.fixture(scope="module")
def graph() -> Any:
    return gen.import_graph(gen.PACKAGE_ROOT)


def test_no_import_cycle(graph: Any) -> None:
    found = []
    for c in gen.cycles(graph):
        inside = [f"{a} -> {b} (line {line})" for a in c for b, line in sorted(graph.edges[a].items()) if b in c]
        found.append(f"cycle among {', '.join(c)}, e.g. {' -> '.join(gen.cycle_path(graph, c))}; its imports: {'; '.join(inside)}")
    assert not found, "import cycles in src/hogwild_ref:\n" + "\n".join(found)


def test_no_module_imports_a_higher_floor(graph: Any) -> None:
    found = gen.upward_imports(graph)
    assert not found, "upward imports (docs/architecture.md, the one-way rule):\n" + "\n".join(found)


def test_every_module_is_on_a_floor(graph: Any) -> None:
    found = gen.unplaced(graph)
    assert not found, f"modules not in FLOORS (docs/gen_architecture.py); place them on a floor: {found}"


def test_every_import_resolves(graph: Any) -> None:
    found = gen.unresolved(graph)
    assert not found, "imports of modules that do not exist:\n" + "\n".join(found)


def test_pure_modules_import_no_torch(graph: Any) -> None:
    assert gen.PURE <= {k for k, f in gen.FLOORS.items() if f == 1}, "a pure module must be on floor 1"
    found = gen.impure_imports(graph)
    assert not found, "pure floor-1 modules importing torch and friends:\n" + "\n".join(found)


def test_pure_modules_load_no_torch_when_imported() -> None:
    """The pure modules, each imported by its dotted name in a fresh interpreter (so the packages'
    ``__init__`` modules above it run too), leave torch and friends unloaded: the static check above
    reads each file's own imports only."""
    import json
    import subprocess
    import sys

    script = (
        "import importlib, json, sys\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        f"    out[name] = sorted(h for h in {sorted(gen.HEAVY)!r} if h in sys.modules)\n"
        "print(json.dumps(out))\n"
    )
    found = {}
    for name in sorted(gen.PURE):  # one interpreter each: an earlier import must not hide a later one's
        done = subprocess.run([sys.executable, "-c", script, f"hogwild_ref.{name}"], capture_output=True,
                              text=True, timeout=120, check=True)
        found.update({k: v for k, v in json.loads(done.stdout).items() if v})
    assert not found, f"pure modules that load heavy packages when imported: {found}"


def test_no_source_file_is_too_long() -> None:
    found = gen.long_files(gen.PACKAGE_ROOT)
    assert not found, f"source files over {gen.MAX_LINES} lines:\n" + "\n".join(found)


#: a jaxtyping shape annotation of a torch tensor (every dtype family jaxtyping offers)
SHAPED = re.compile(
    r"\b(Float|Int|Bool|Shaped|Num|Real|Inexact|Integer|UInt|Complex|Key|(?:BFloat|Float|Int|UInt)\d+)\[(?:torch\.)?Tensor,")


def test_every_module_with_shape_annotations_is_type_checked_at_run_time() -> None:
    """jaxtyping shapes are checked (beartype) in the test run for every module that has them: the
    pytest ``--jaxtyping-packages`` option in pyproject.toml names each one."""
    import re
    import tomllib

    addopts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]["ini_options"]["addopts"]
    listed = set(re.search(r"--jaxtyping-packages=(\S+)", addopts).group(1).split(","))  # type: ignore[union-attr]
    annotated = {
        "hogwild_ref." + ".".join(path.relative_to(gen.PACKAGE_ROOT).with_suffix("").parts)
        for path in gen.PACKAGE_ROOT.rglob("*.py")
        if SHAPED.search(path.read_text(encoding="utf-8"))
    }
    assert annotated, "no shape annotations found: the scan is broken"
    missing = sorted(annotated - listed)
    assert not missing, f"modules with jaxtyping shapes not checked at run time (add them to --jaxtyping-packages): {missing}"


def test_the_api_reference_lists_every_module(graph: Any) -> None:
    """docs/api.md has a ``::: hogwild_ref.<module>`` entry for every module of the tree but the CLI's and
    the packages' ``__init__`` (which re-export their modules' names), both ways (a review found four
    modules the docs point to missing from it)."""
    import re

    listed = set(re.findall(r"^::: hogwild_ref\.([\w.]+)$", (ROOT / "docs" / "api.md").read_text(), re.M))
    modules = {m for m, path in graph.files.items() if path.name != "__init__.py" and m != "__main__"
               and not m.startswith("cli.")}
    assert not modules - listed, f"modules missing from docs/api.md: {sorted(modules - listed)}"
    assert not listed - modules, f"docs/api.md lists modules that do not exist: {sorted(listed - modules)}"


def test_the_readmes_module_map_matches_the_floors() -> None:
    """README.md's "Layout of the repository" names each top-level module on its floor's line, as
    ``FLOORS`` places it (parenthesised words are comments; ``name/`` is a sub-package)."""
    import re

    text = (ROOT / "README.md").read_text()
    block = text[text.index("src/hogwild_ref/   "):text.index("\nspec/ ")]
    named: dict[int, set[str]] = {}
    for floor, rest in re.findall(r"^\s+([1-5]) (.*)$", block, re.M):
        named[int(floor)] = {w.strip().rstrip("/") for w in re.sub(r"\([^)]*\)", "", rest).split("·") if w.strip()}
    wanted: dict[int, set[str]] = {}
    for module, floor in gen.FLOORS.items():
        if "." not in module and module not in ("__init__", "__main__"):
            wanted.setdefault(floor, set()).add(module)
    assert named == wanted
