"""A pytest plugin: the conformance vectors as test items of another project's suite (Spec §12.6).

Enable it with ``-p hogwild_ref.conformance.pytest_plugin`` (or ``pytest_plugins = [...]`` in a
``conftest.py``) and put one test module in the suite that imports the test function::

    # tests/test_hogwild_conformance.py
    from hogwild_ref.conformance.pytest_plugin import test_hogwild_vector  # noqa: F401

    pytest -p hogwild_ref.conformance.pytest_plugin --hogwild-adapter-cmd "python my_adapter.py" \\
           [--hogwild-level rope] [--hogwild-vectors DIR] [--hogwild-xfail known-defects.txt]

Each vector is one test item with the id ``<level>/<name>``. A vector outside the adapter's declared
scope (or of a level it lacks), one the adapter skips, and one not run (the adapter was gone) is a
*skip* with the reason; a failing vector fails with the runner's message. The xfail file lists
known defects, one ``<level>/<name>`` per line (``#`` starts a comment): those vectors are expected
to fail (strictly: once fixed, they fail the run until the line is removed). Without
``--hogwild-adapter-cmd`` or ``--hogwild-adapter`` the items are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

__all__ = ["read_xfail_file", "test_hogwild_vector"]


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("hogwild", "Hogwild! Inference conformance (hogwild_ref, Spec §12)")
    group.addoption("--hogwild-adapter-cmd", default=None, metavar="CMD",
                    help="the command that starts an out-of-process adapter (line protocol, Spec §12.7)")
    group.addoption("--hogwild-adapter", default=None, metavar="MODULE:FACTORY",
                    help="an in-process adapter factory (Spec §12.3)")
    group.addoption("--hogwild-adapter-timeout", type=float, default=600.0, metavar="S",
                    help="seconds to wait for each reply of --hogwild-adapter-cmd (default 600)")
    group.addoption("--hogwild-level", action="append", default=None, choices=["rope", "attention", "model"],
                    help="only this level (repeatable; default: every level)")
    group.addoption("--hogwild-vectors", default=None, metavar="DIR",
                    help="vector directory (default: spec/vectors/v3 of the hogwild_ref checkout, or the copy its wheel ships)")
    group.addoption("--hogwild-xfail", default=None, metavar="FILE",
                    help="known defects: one <level>/<name> per line; those vectors are expected to fail")


def read_xfail_file(path: Path | str) -> dict[str, str]:
    """``{"<level>/<name>": reason}`` from an xfail file (a comment after the id is the reason)."""
    out: dict[str, str] = {}
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        entry, _, comment = raw.partition("#")
        entry = entry.strip()
        if not entry:
            continue
        if entry.count("/") != 1:
            raise pytest.UsageError(f"{path}:{number}: expected <level>/<name>, got {entry!r}")
        out[entry] = comment.strip() or f"listed in {path}"
    return out


def _usage_error(message: str) -> Any:
    """End the session at once with one line and pytest's usage-error status (4): a bad option is said
    once, not as a collection traceback or one error per vector."""
    pytest.exit(f"hogwild conformance: {message}", returncode=pytest.ExitCode.USAGE_ERROR)


def _vectors(config: Any) -> tuple[list[Path], list[str], dict[str, str]]:
    """The run's vector files, their ids and the known defects (``--hogwild-xfail``), checked."""
    from .runner import vector_paths

    try:
        _, paths = vector_paths(config.getoption("hogwild_vectors"), config.getoption("hogwild_level"))
        xfail_file = config.getoption("hogwild_xfail")
        known = read_xfail_file(xfail_file) if xfail_file else {}
    except (OSError, ValueError) as exc:
        raise pytest.UsageError(f"hogwild conformance: {exc}") from None
    ids = [f"{p.parent.name}/{p.stem}" for p in paths]
    unknown = sorted(set(known) - set(ids))
    if unknown:
        raise pytest.UsageError(f"hogwild conformance: {xfail_file} names vectors that are not in the run: "
                                f"{', '.join(unknown)}")
    return paths, ids, known


def pytest_configure(config: Any) -> None:
    """A bad ``--hogwild-xfail`` file or vector directory is a usage error said once, before collection."""
    if config.getoption("hogwild_xfail") or config.getoption("hogwild_vectors"):
        _vectors(config)


def pytest_generate_tests(metafunc: Any) -> None:
    if "hogwild_vector_path" not in metafunc.fixturenames:
        return
    paths, ids, known = _vectors(metafunc.config)
    params = [pytest.param(p, id=vid, marks=[pytest.mark.xfail(reason=known[vid], strict=True)] if vid in known else [])
              for p, vid in zip(paths, ids)]
    metafunc.parametrize("hogwild_vector_path", params)


@pytest.fixture(scope="session")
def hogwild_adapter(pytestconfig: Any) -> Iterator[Any]:
    """The adapter under test, started once per session (and stopped at its end)."""
    cmd, factory = pytestconfig.getoption("hogwild_adapter_cmd"), pytestconfig.getoption("hogwild_adapter")
    if cmd and factory:
        _usage_error("give --hogwild-adapter-cmd or --hogwild-adapter, not both")
    if not cmd and not factory:
        pytest.skip("no adapter: pass --hogwild-adapter-cmd CMD or --hogwild-adapter MODULE:FACTORY")
    if cmd:
        from .external import CommandAdapter

        try:
            adapter = CommandAdapter(cmd, timeout=pytestconfig.getoption("hogwild_adapter_timeout"),
                                     levels=pytestconfig.getoption("hogwild_level") or ("rope", "attention", "model"))
        except ValueError as exc:  # it does not start, or refuses the hello
            _usage_error(str(exc))
        try:
            yield adapter
        finally:
            adapter.close()
    else:
        from .runner import load_adapter

        try:
            adapter = load_adapter(factory)
        except ValueError as exc:  # not importable, or its factory raised
            _usage_error(str(exc))
        yield adapter


def test_hogwild_vector(hogwild_vector_path: Path, hogwild_adapter: Any) -> None:
    """One conformance vector against the adapter (Spec §12.5): pass, fail with the reason, or skip."""
    from .runner import load_checked, run_vector

    result = run_vector(hogwild_adapter, load_checked(hogwild_vector_path))
    if result.status in ("out_of_scope", "skipped", "not_run"):
        pytest.skip(f"{result.status.replace('_', ' ')}: {result.message}")
    if result.status == "failed":
        ratio = "" if result.ratio is None else f", error {result.max_abs_err:.3g} = {result.ratio:.3g} x tolerance"
        pytest.fail(f"{result.level}/{result.name} failed ({result.failure}{ratio}): {result.message or ''}",
                    pytrace=False)
