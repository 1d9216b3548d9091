"""The sdist and the wheel, built by setuptools from a copy of the repository's files.

A newcomer's review: ``conform`` failed from an installed wheel (the vectors of Spec §12.2 were not in
it), the sdist held neither ``spec/`` nor the Makefile, and no license text was shipped. The builds
run in a copy (they write ``build/`` and ``*.egg-info`` beside the sources), without network access.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from hogwild_ref.conformance.runner import default_vectors_dir
from hogwild_ref.conformance.vectors import FORMAT

ROOT = Path(__file__).resolve().parents[1]


def _tracked() -> list[str]:
    if not (ROOT / ".git").exists():
        pytest.skip("needs the repository's git checkout")
    return subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel), built by setuptools' own backend (PEP 517), the wheel from the sdist."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in filter(None, _tracked()):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)

    def build(kind: str, where: Path) -> Path:
        code = f"import sys; from setuptools import build_meta as b; print(b.build_{kind}(sys.argv[1]))"
        proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=where, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return out / proc.stdout.strip().splitlines()[-1]

    sdist = build("sdist", src)
    unpacked = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(sdist) as tar:
        tar.extractall(unpacked, filter="data")
    (top,) = unpacked.iterdir()
    return sdist, build("wheel", top)


def test_the_wheel_ships_the_conformance_vectors_and_the_license(built: tuple[Path, Path]) -> None:
    _, wheel = built
    names = set(zipfile.ZipFile(wheel).namelist())
    vectors = sorted(p.relative_to(ROOT / "spec" / "vectors" / FORMAT) for p in (ROOT / "spec" / "vectors" / FORMAT).rglob("*")
                     if p.is_file())
    assert len(vectors) > 40
    missing = [str(v) for v in vectors if f"hogwild_ref/conformance/vector_files/{FORMAT}/{v.as_posix()}" not in names]
    assert not missing, missing
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "spec/", "docs/")) for n in names)


def test_the_sdist_is_the_whole_project(built: tuple[Path, Path]) -> None:
    sdist, _ = built
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    tracked = {n for n in _tracked() if n and n != ".gitignore" and not (ROOT / n).is_symlink()}
    assert not sorted(tracked - names), sorted(tracked - names)[:20]  # every tracked file: spec, docs, Makefile, ...
    assert not any(n.startswith("docs/spec/") for n in names)  # a link to spec/: its files once, not twice


def test_setup_py_copies_the_current_vector_format() -> None:
    text = (ROOT / "setup.py").read_text()
    assert f'FORMAT = "{FORMAT}"' in text


def test_an_installed_copy_finds_its_shipped_vectors(tmp_path: Path) -> None:
    """The runner looks in the checkout first, then in the wheel's copy (what an install has)."""
    import hogwild_ref.conformance.runner as runner

    package = tmp_path / "site-packages" / "hogwild_ref" / "conformance"
    (package / "vector_files" / FORMAT).mkdir(parents=True)
    fake = package / "runner.py"
    code = compile(Path(runner.__file__).read_text(), str(fake), "exec")
    namespace: dict[str, object] = {"__file__": str(fake), "__name__": "hogwild_ref.conformance.runner",
                                    "__package__": "hogwild_ref.conformance"}
    exec(code, namespace)  # the module's own code, placed where an install puts it
    assert namespace["default_vectors_dir"]() == package / "vector_files" / FORMAT
    assert default_vectors_dir() == ROOT / "spec" / "vectors" / FORMAT
