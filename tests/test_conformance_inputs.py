"""``hogwild-ref conform`` against what authors of other implementations get wrong (Spec §12.3, §12.6, §12.7).

Each case is a mistake a newcomer made while writing an adapter from the docs: a module that fails on
import, an adapter that exits or returns complex numbers, a damaged vector directory, flags given twice
or with values no run can use. The oracle is the protocol itself: a mistake in the adapter fails its own
vectors (the others still run and are counted), bad input is one ``error:`` line with exit status 2,
and ``--json`` keeps stdout a single JSON object.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from hogwild_ref.cli import main
from hogwild_ref.conformance import ReferenceAdapter, run
from hogwild_ref.conformance.runner import default_vectors_dir

VECTORS = default_vectors_dir()
ROPE = sorted(p.stem for p in (VECTORS / "rope").glob("*.json"))


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> str:
    """Write an adapter module ``name`` into ``tmp_path`` and make it importable."""
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def _one_error_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "internal error" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("body, needles", [
    ("def f(:\n", ["SyntaxError", "line 1"]),
    ("undefined_name\n", ["NameError", "undefined_name"]),
    ("assert 1 == 2, 'adapter precondition'\n", ["AssertionError: adapter precondition"]),
    ("raise ValueError('mod boom')\n", ["ValueError: mod boom"]),
    ("import sys\nsys.exit(3)\n", ["SystemExit: 3"]),
])
def test_an_adapter_module_that_fails_on_import_is_one_usage_error(tmp_path: Path, monkeypatch, capsys,
                                                                    body: str, needles: list[str]) -> None:
    name = _module(tmp_path, monkeypatch, f"broken_import_{abs(hash(body))}", body)
    assert main(["conform", "--adapter", f"{name}:make", "--level", "rope"]) == 2
    _one_error_line(capsys.readouterr().err, f"cannot import adapter module {name!r}", *needles)


def test_an_adapter_given_as_a_file_path_names_the_module_form(capsys) -> None:
    assert main(["conform", "--adapter", "adapters/my_adapter.py:make", "--level", "rope"]) == 2
    _one_error_line(capsys.readouterr().err, "--adapter my_adapter:make")


class _ExitsOnThird(ReferenceAdapter):
    calls = 0

    def rope(self, **kw):
        type(self).calls += 1
        if type(self).calls == 3:
            sys.exit(0)
        return super().rope(**kw)


def test_sys_exit_inside_the_adapter_fails_that_vector_and_the_run_goes_on() -> None:
    report = run(_ExitsOnThird(), VECTORS, ["rope"])
    assert report.passed == len(ROPE) - 1 and report.failed == 1  # not a silent exit with status 0
    failed = next(r for r in report.results if r.status == "failed")
    assert failed.name == ROPE[2] and failed.failure == "raised" and failed.message.startswith("SystemExit: 0")


class _NotReal(ReferenceAdapter):
    """Right real parts, but complex or boolean or integer tensors."""

    def rope(self, **kw):
        out = super().rope(**kw)
        return {"rotated": torch.complex(out["rotated"], torch.full_like(out["rotated"], 1e3)),
                "rerotated": out["rerotated"].to(torch.int64)}

    def model(self, **kw):
        return super().model(**kw) > 0


def test_outputs_must_be_real_floating_tensors() -> None:
    report = run(_NotReal(), VECTORS, ["rope", "model"])
    assert report.passed == 0 and report.failed == len(report.results)  # no pass, and no crash on argmax of bools
    for r in report.results:
        assert r.failure == "mismatch", (r.name, r.failure)
        assert "outputs must have a real floating dtype" in (r.message or "")
    rope = next(r for r in report.results if r.level == "rope")
    assert "dtype complex64" in rope.message and "dtype int64" in rope.message
    assert "dtype bool" in next(r for r in report.results if r.level == "model").message


def test_a_level_given_twice_runs_and_exports_once(tmp_path: Path, capsys) -> None:
    assert main(["conform", "--level", "rope", "--level", "rope", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] == len(ROPE)
    assert main(["conform", "export", str(tmp_path / "x"), "--level", "rope", "--level", "rope"]) == 0
    capsys.readouterr()
    assert len((tmp_path / "x" / "requests.jsonl").read_text().splitlines()) == 1 + len(ROPE)


@pytest.mark.parametrize("argv, needles", [
    (["--adapter-cmd", "true", "--adapter-timeout", "nan"], ["--adapter-timeout", "got nan"]),
    (["--adapter-cmd", "true", "--adapter-timeout", "inf"], ["--adapter-timeout", "got inf"]),
    (["--adapter-cmd", "true", "--adapter-timeout", "1e12"], ["--adapter-timeout", "a week"]),
    (["--adapter-cmd", "python3 'unbalanced"], ["--adapter-cmd", "No closing quotation"]),
    (["export", ""], ["needs a directory"]),
])
def test_flag_values_no_run_can_use_are_one_usage_error(capsys, argv: list[str], needles: list[str]) -> None:
    assert main(["conform", *argv, "--level", "rope"]) == 2
    _one_error_line(capsys.readouterr().err, *needles)


def test_score_of_a_file_says_it_is_not_the_exchange_directory(tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("")
    assert main(["conform", "score", str(tmp_path / "afile")]) == 2
    _one_error_line(capsys.readouterr().err, "is a file")


def test_score_of_an_export_the_adapter_has_not_run_says_so(tmp_path: Path, capsys) -> None:
    # found by a newcomer: every vector was reported "out of scope: the adapter does not implement ..."
    assert main(["conform", "export", str(tmp_path / "x"), "--level", "rope"]) == 0
    capsys.readouterr()
    assert main(["conform", "score", str(tmp_path / "x")]) == 2
    _one_error_line(capsys.readouterr().err, "holds no replies.jsonl and no output files: run the adapter on the export first")


@pytest.mark.parametrize("damage, needles", [
    (lambda d: (d / "rope" / f"{ROPE[0]}.safetensors").write_text("garbage"), [f"{ROPE[0]}.json", "not a readable"]),
    (lambda d: (d / "rope" / "zz.json").write_text("{bad"), ["zz.json", "JSONDecodeError"]),
    (lambda d: ((d / "rope" / "zz.json").write_text('{"name": "zz"}'),
                shutil.copy(d / "rope" / f"{ROPE[0]}.safetensors", d / "rope" / "zz.safetensors")),
     ["zz.json", "no format version"]),
])
def test_a_damaged_vector_directory_names_the_file(tmp_path: Path, capsys, damage, needles: list[str]) -> None:
    shutil.copytree(VECTORS / "rope", tmp_path / "rope")
    damage(tmp_path)
    assert main(["conform", "--vectors", str(tmp_path), "--level", "rope"]) == 2
    _one_error_line(capsys.readouterr().err, *needles)


class _Chatty(ReferenceAdapter):
    def rope(self, **kw):
        print("debug: rope called")
        return super().rope(**kw)


def chatty() -> _Chatty:
    return _Chatty()


def test_json_stdout_stays_one_object_when_an_in_process_adapter_prints(capsys) -> None:
    assert main(["conform", "--adapter", "test_conformance_inputs:chatty", "--level", "rope", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["passed"] == len(ROPE)  # one JSON object, nothing else
    assert captured.err.count("debug: rope called") == len(ROPE)  # the prints went to stderr


class _InterruptedOnThird(ReferenceAdapter):
    calls = 0

    def rope(self, **kw):
        type(self).calls += 1
        if type(self).calls == 3:
            raise KeyboardInterrupt
        return super().rope(**kw)


def interrupted_on_third() -> _InterruptedOnThird:
    _InterruptedOnThird.calls = 0
    return _InterruptedOnThird()


def test_ctrl_c_with_json_prints_the_vectors_run_so_far(capsys) -> None:
    assert main(["conform", "--adapter", "test_conformance_inputs:interrupted_on_third", "--level", "rope",
                 "--json"]) == 130
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["interrupted"] is True and out["passed"] == 2
    # the vectors never reached are counted as not run (they read "0 not run", a pass to a script)
    assert out["not_run"] == len(ROPE) - 2 and [v["name"] for v in out["vectors"]] == ROPE
    assert all(v["status"] == "not_run" for v in out["vectors"][2:])
    assert captured.err.splitlines() == [f"interrupted: {len(ROPE) - 2} of {len(ROPE)} vectors not run", "interrupted"]


def test_ctrl_c_counts_the_vectors_not_reached_without_reading_them(tmp_path: Path, capsys) -> None:
    """The vectors an interrupt left are named from their files, not loaded: a damaged one among them
    turned the whole partial report into a bare "interrupted" (nothing on stdout)."""
    import shutil

    from hogwild_ref.conformance.runner import default_vectors_dir

    shutil.copytree(default_vectors_dir() / "rope", tmp_path / "rope")
    (tmp_path / "rope" / f"{ROPE[-1]}.safetensors").write_bytes(b"damaged")
    assert main(["conform", "--adapter", "test_conformance_inputs:interrupted_on_third", "--level", "rope",
                 "--vectors", str(tmp_path), "--json"]) == 130
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] == 2 and out["not_run"] == len(ROPE) - 2 and out["interrupted"] is True


def test_a_reply_that_is_not_json_is_named_when_the_adapter_times_out(tmp_path: Path, capsys) -> None:
    script = tmp_path / "a.py"
    script.write_text("import sys, time\nsys.stdin.readline()\nprint('hello there', flush=True)\ntime.sleep(60)\n")
    assert main(["conform", "--adapter-cmd", f'"{sys.executable}" "{script}"', "--level", "rope",
                 "--adapter-timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert "[adapter stdout] hello there" in err
    last = err.strip().splitlines()[-1]
    assert "1 line(s) that are not JSON reply objects (last: 'hello there')" in last and "flush" not in last


def test_score_warns_about_lines_of_replies_it_cannot_read(tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "x"
    assert main(["conform", "export", str(out_dir), "--level", "rope"]) == 0
    (out_dir / "replies.jsonl").write_text("{oops\n")
    main(["conform", "score", str(out_dir)])
    assert "replies.jsonl: 1 line(s) are not JSON objects and were ignored (first: '{oops')" in capsys.readouterr().err


def test_fuzz_refuses_an_out_it_could_not_write_before_fuzzing(tmp_path, capsys) -> None:
    """--out was first used when a shrunk failing case was written: the failure was lost in a
    NotADirectoryError (exit 2). It is checked before any case runs."""
    (tmp_path / "afile").write_text("")
    assert main(["conform", "fuzz", "--level", "rope", "--examples", "1", "--out", str(tmp_path / "afile")]) == 2
    _one_error_line(capsys.readouterr().err, "--out", "it is not a directory")
    assert main(["conform", "fuzz", "--level", "rope", "--examples", "1", "--out", str(tmp_path / "afile" / "sub")]) == 2
    _one_error_line(capsys.readouterr().err, "is not a directory")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_fuzz_refuses_an_out_where_nothing_can_be_created(capsys) -> None:
    """A review, as root: /proc passes os.access, so fuzzing ran, and the shrunk case was lost in a
    FileNotFoundError when it was written."""
    assert main(["conform", "fuzz", "--level", "rope", "--examples", "1", "--out", "/proc/hogwild-nope"]) == 2
    _one_error_line(capsys.readouterr().err, "--out /proc/hogwild-nope: nothing can be created in /proc")


def test_score_honours_scope_as_a_live_run_and_export_warns_about_an_earlier_runs_files(tmp_path, capsys) -> None:
    from test_conformance_v2 import answer_offline

    out_dir = tmp_path / "x"
    assert main(["conform", "export", str(out_dir), "--level", "rope"]) == 0
    answer_offline(out_dir)
    from hogwild_ref.conformance import load_vector
    from hogwild_ref.conformance.scope import vector_properties

    scope = tmp_path / "half.json"
    scope.write_text(json.dumps({"conventions": ["half"]}))
    half = {n for n in ROPE if vector_properties(load_vector(VECTORS / "rope" / f"{n}.json"))["conventions"] == "half"}
    assert 0 < len(half) < len(ROPE)
    for argv in (["conform", "--scope", str(scope), "score", str(out_dir), "--level", "rope", "--json"],
                 ["conform", "score", "--scope", str(scope), str(out_dir), "--level", "rope", "--json"]):
        capsys.readouterr()
        assert main(argv) == 0
        out = json.loads(capsys.readouterr().out)  # --scope was dropped: every exported vector was scored
        assert out["passed"] == len(half) and out["out_of_scope"] == len(ROPE) - len(half)
    assert main(["conform", "export", str(out_dir), "--level", "rope"]) == 0
    assert "still holds files of an earlier run (replies.jsonl, rope/*.outputs.safetensors)" in capsys.readouterr().err
