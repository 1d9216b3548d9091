"""Conformance v3 (Spec §12): declared scope, skips, offline parity, misbehaving adapters, friction fixes.

Expected sets are derived from the vectors' own JSON metadata (dtype, convention, layout, features),
never from the scope code under test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

import hogwild_ref.conformance as conformance
from hogwild_ref.cli import main
from hogwild_ref.conformance import LEVELS, ReferenceAdapter, load_vector, reference, run
from hogwild_ref.conformance.external import CommandAdapter
from hogwild_ref.conformance.runner import default_vectors_dir, run_vector
from hogwild_ref.conformance.scope import SkipVector
from test_conformance_v2 import answer_offline

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]
VECTORS = default_vectors_dir()
META: dict[str, dict[str, Any]] = {
    f"{level}/{p.stem}": json.loads(p.read_text(encoding="utf-8"))
    for level in LEVELS for p in sorted((VECTORS / level).glob("*.json"))
}


def _ids(pred, level: str | None = None) -> set[str]:
    return {k for k, m in META.items() if (level is None or m["level"] == level) and pred(m)}


def _report_ids(report, status: str) -> set[str]:
    return {f"{r.level}/{r.name}" for r in report.results if r.status == status}


class OnlyRopeScoped:
    """An in-process adapter of the rope level that declares float32 and the half convention only."""

    scope = {"dtypes": ["float32"], "conventions": ["half"]}

    def rope(self, **kw):
        return ReferenceAdapter().rope(**kw)


class SkipsYarn(ReferenceAdapter):
    def rope(self, **kw):
        if kw["rope"]["rope_type"] == "yarn":
            raise SkipVector("no YaRN in this kernel")
        return super().rope(**kw)


# ---------------------------------------------------------------------- scope and skip (in process)
def test_declared_scope_reports_out_of_scope_not_failed() -> None:
    report = run(OnlyRopeScoped(), VECTORS, ["rope"])
    outside = _ids(lambda m: m["inputs"]["rope"]["convention"] != "half" or m["dtype"] != "float32", "rope")
    assert outside and _report_ids(report, "out_of_scope") == outside
    assert report.ok and report.failed == 0 and _report_ids(report, "passed") == _ids(lambda m: True, "rope") - outside
    entry = report.to_json_dict()
    assert entry["out_of_scope"] == len(outside) and "convention 'interleaved'" in report["default-interleaved"].message


def test_scope_by_layout_and_feature_on_attention_vectors() -> None:
    adapter = ReferenceAdapter()
    scope = {"layouts": ["official-combined"], "unsupported_features": ["partial rotary"]}
    results = [run_vector(adapter, load_vector(VECTORS / "attention" / f"{k.split('/')[1]}.json"), scope)
               for k in sorted(_ids(lambda m: True, "attention"))]
    ran = {f"attention/{r.name}" for r in results if r.status != "out_of_scope"}
    assert ran == _ids(lambda m: "table=official-combined" in m["features"] and "partial rotary" not in m["features"],
                       "attention")
    assert all(r.status == "passed" for r in results if r.status != "out_of_scope")


def test_an_adapter_may_skip_one_vector_with_a_reason() -> None:
    report = run(SkipsYarn(), VECTORS, ["rope"])
    assert _report_ids(report, "skipped") == _ids(lambda m: m["inputs"]["rope"]["rope_type"] == "yarn", "rope")
    assert report.ok and report["yarn-half"].message == "no YaRN in this kernel"
    assert report["yarn-half"].to_json_dict()["skipped"] is True


def test_a_bad_scope_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scope = tmp_path / "scope.json"
    scope.write_text(json.dumps({"dtype": ["float32"]}))
    assert main(["conform", "--level", "rope", "--scope", str(scope)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown key 'dtype'" in err and "dtypes" in err and len(err.splitlines()) == 1


def test_every_shipped_vector_has_scope_values_a_scope_may_name() -> None:
    from hogwild_ref.conformance.scope import SCOPE_VALUES

    for key, allowed in SCOPE_VALUES.items():
        for name, meta in META.items():
            value = {"dtypes": meta["dtype"], "conventions": meta["inputs"]["rope"]["convention"],
                     "rope_types": meta["inputs"]["rope"]["rope_type"]}.get(key)
            if key == "layouts" and meta["level"] != "rope":
                tables = [f.removeprefix("table=") for f in meta.get("features", []) if f.startswith("table=")]
                value = meta["inputs"].get("layout") or (tables[0] if tables else "explicit")
            assert value is None or value in allowed, (name, key, value)


@pytest.mark.parametrize("scope, needle", [
    ({"dtypes": ["float32", "bf16"]}, "'dtypes' has 'bf16', which no vector can have; the values are float32, bfloat16"),
    ({"layouts": ["combined", "Interleaved"]}, "'layouts' has 'Interleaved', which no vector can have"),
    ({"rope_types": ["YaRN"]}, "'rope_types' has 'YaRN'"),
    ({"conventions": ["neox"]}, "'conventions' has 'neox'"),
    ({"prefill": ["none"]}, "'prefill' has 'none'"),
])
def test_a_misspelt_scope_value_is_refused_not_a_silent_skip(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            scope: dict[str, list[str]], needle: str) -> None:
    # found by a newcomer: a typo put every bfloat16 (or interleaved) vector out of scope, and the run exited 0
    path = tmp_path / "scope.json"
    path.write_text(json.dumps(scope))
    assert main(["conform", "--level", "attention", "--scope", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1


def test_an_adapters_own_scope_may_name_values_the_vectors_do_not_hold() -> None:
    # found in review: the typo guard of --scope files also failed adapters declaring a dtype of their own
    from hogwild_ref.conformance.scope import check_scope

    declared = {"dtypes": ["float32", "float8_e4m3fn"], "rope_types": ["default", "dynamic"]}
    assert check_scope(declared) == declared
    with pytest.raises(ValueError, match="'dtypes' has 'float8_e4m3fn', which no vector can have"):
        check_scope(declared, "scope file s.json", values=True)


def test_python_adapter_of_protocol_1_gets_a_version_hint() -> None:
    class Old:
        def rope(self, *, config, x, positions, y, deltas, convention):  # the version 1 signature
            raise AssertionError("never called")

    result = run_vector(Old(), load_vector(VECTORS / "rope" / "default-half.json"))
    assert result.status == "failed" and result.failure == "raised"
    assert "'convention'" in result.message and "protocol 3" in result.message
    assert "moved `convention` into `rope`" in result.message


def test_version_2_vectors_stay_readable() -> None:
    v2 = ROOT / "spec" / "vectors" / "v2"
    result = run_vector(reference(), load_vector(v2 / "model" / "llama-official5-w2-given-kv.json"))
    assert result.status == "passed" and result.ratio is not None and result.ratio < 1


# ---------------------------------------------------------------------- coverage (Spec §12.2, version 3)
def test_version_3_coverage_vectors() -> None:
    att = [m for m in META.values() if m["level"] == "attention"]
    partial_layouts = {m["inputs"]["layout"] or m["features"][-1] for m in att if "partial rotary" in m["features"]}
    assert {"contiguous", "table=official-combined"} <= partial_layouts
    assert len([m for m in att if "convention=interleaved" in m["features"]]) >= 3
    assert any("table=official-combined" in m["features"] and "attention_scaling != 1" in m["features"]
               and "flush" in m["features"] for m in META.values() if m["level"] == "model")


# ---------------------------------------------------------------------- out of process: hello, scope, skip
def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("import json, sys, time\n" + body)
    return f'"{sys.executable}" "{path}"'


HELLO_THEN = (
    "for line in sys.stdin:\n"
    "    r = json.loads(line)\n"
    "    if r['op'] == 'hello':\n"
    "        print(json.dumps({HELLO}), flush=True)\n"
    "        continue\n"
)


def test_hello_scope_and_skip_replies_through_the_line_protocol(tmp_path: Path, capsys) -> None:
    cmd = _script(tmp_path, "a.py", HELLO_THEN.replace("{HELLO}", "{'ok': True, 'protocol': 3, 'levels': ['rope'], "
                                                                  "'scope': {'conventions': ['interleaved']}}")
                  + "    print(json.dumps({'id': r['id'], 'skip': 'not today'}), flush=True)\n")
    rc = main(["conform", "--adapter-cmd", cmd, "--level", "rope", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1  # nothing was checked
    by = {e["name"]: e["status"] for e in out["vectors"]}
    assert {n for n, s in by.items() if s == "skipped"} == {k.split("/")[1] for k in _ids(
        lambda m: m["inputs"]["rope"]["convention"] == "interleaved", "rope")}
    assert out["out_of_scope"] == 7 and out["skipped"] == 7 and out["failed"] == 0


@pytest.mark.parametrize("hello, message", [
    ("{'ok': False, 'error': 'protocol 3 not supported; this adapter speaks [2]'}", "this adapter speaks [2]"),
    ("{'ok': True, 'protocol': 2, 'levels': ['rope']}", "speaks protocol 2, this runner protocol 3"),
    ("{'ok': True, 'levels': ['rope'], 'scope': {'layout': ['contiguous']}}", "unknown key 'layout'"),
])
def test_hello_refusals_are_one_line_errors(tmp_path: Path, capsys, hello: str, message: str) -> None:
    cmd = _script(tmp_path, "a.py", HELLO_THEN.replace("{HELLO}", hello))
    assert main(["conform", "--adapter-cmd", cmd, "--level", "rope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_a_stalled_hello_hints_at_flushing(tmp_path: Path, capsys) -> None:
    cmd = _script(tmp_path, "a.py", "out = open(1, 'w', buffering=65536, closefd=False)\nsys.stdin.readline()\n"
                                    "out.write(json.dumps({'ok': True, 'levels': ['rope']}) + '\\n')\n"
                                    "time.sleep(60)\n")  # no flush: the reply sits in the adapter's buffer
    assert main(["conform", "--adapter-cmd", cmd, "--level", "rope", "--adapter-timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert "did not answer the hello request" in err and "flush stdout" in err and len(err.strip().splitlines()) == 1


def test_an_adapter_that_hangs_is_given_up_after_one_timeout(tmp_path: Path, capsys) -> None:
    cmd = _script(tmp_path, "a.py", HELLO_THEN.replace("{HELLO}", "{'ok': True, 'levels': ['rope', 'attention']}")
                  + "    time.sleep(600)\n")
    rc = main(["conform", "--adapter-cmd", cmd, "--level", "rope", "--level", "attention", "--adapter-timeout", "1",
               "--json"])
    out = json.loads(capsys.readouterr().out)
    statuses = [e["status"] for e in out["vectors"]]
    assert rc == 1 and statuses[0] == "failed" and set(statuses[1:]) == {"not_run"}
    assert "no reply" in out["vectors"][0]["error"] and out["not_run"] == len(statuses) - 1


def test_non_utf8_output_fails_at_once_in_one_line(tmp_path: Path, capsys) -> None:
    cmd = _script(tmp_path, "a.py", HELLO_THEN.replace("{HELLO}", "{'ok': True, 'levels': ['rope']}")
                  + "    sys.stdout.buffer.write(b'\\xff\\xfe garbage\\n'); sys.stdout.flush(); time.sleep(600)\n")
    rc = main(["conform", "--adapter-cmd", cmd, "--level", "rope", "--adapter-timeout", "300", "--json"])
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    first = out["vectors"][0]
    assert rc == 1 and first["status"] == "failed" and "not UTF-8" in first["error"]
    assert {e["status"] for e in out["vectors"][1:]} == {"not_run"} and "Traceback" not in captured.err


def test_ctrl_c_stops_the_adapter_process(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[CommandAdapter] = []
    original = CommandAdapter.__init__

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        started.append(self)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(CommandAdapter, "__init__", record)
    monkeypatch.setattr(conformance, "run", interrupted)
    cmd = _script(tmp_path, "a.py", "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                  + HELLO_THEN.replace("{HELLO}", "{'ok': True, 'levels': ['rope']}") + "    time.sleep(600)\n")
    assert main(["conform", "--adapter-cmd", cmd, "--level", "rope"]) == 130
    assert len(started) == 1 and started[0].proc.poll() is not None


# ---------------------------------------------------------------------- offline parity (Spec §12.7)
def test_export_honours_level_and_scope_file_and_score_matches(tmp_path: Path, capsys) -> None:
    scope = tmp_path / "hello.json"
    scope.write_text(json.dumps({"ok": True, "levels": ["rope", "attention"], "scope": {"dtypes": ["float32"]}}))
    out_dir = tmp_path / "x"
    assert main(["conform", "export", str(out_dir), "--scope", str(scope)]) == 0
    capsys.readouterr()
    requests = [json.loads(line) for line in (out_dir / "requests.jsonl").read_text().splitlines()]
    inside = _ids(lambda m: m["level"] != "model" and m["dtype"] == "float32")
    assert requests[0] == {"op": "hello", "protocol": 3, "levels": ["rope", "attention"]}
    assert {r["id"] for r in requests[1:]} == inside
    answer_offline(out_dir)
    assert main(["conform", "score", str(out_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {f"{e['level']}/{e['name']}" for e in out["vectors"] if e["status"] == "passed"} == inside
    assert out["out_of_scope"] == len(META) - len(inside) and out["failed"] == 0
    # export --level writes only that level
    assert main(["conform", "export", str(tmp_path / "y"), "--level", "rope"]) == 0
    ids = [json.loads(line).get("id") for line in (tmp_path / "y" / "requests.jsonl").read_text().splitlines()[1:]]
    assert set(ids) == _ids(lambda m: True, "rope")


def test_tau_at_position_zero_is_stated_as_the_formula_gives_it() -> None:
    tau0 = 1e-6 + 2.0**-23 * (0 + 1)  # Spec §10.4: tolerance + tolerance_per_position * (|p| + 1)
    text = (ROOT / "spec" / "10-tolerances.md").read_text(encoding="utf-8")
    assert f"`{tau0:.3g}`".replace("e-06", "e-6") in text and "`1.2e-6` at `p = 0`" not in text


def test_subcommands_have_their_own_help(capsys) -> None:
    for action, needle in (("export", "requests.jsonl"), ("score", "replies.jsonl"), ("fuzz", "--examples")):
        with pytest.raises(SystemExit) as exc:
            main(["conform", action, "--help"])
        text = capsys.readouterr().out
        assert exc.value.code == 0 and f"hogwild-ref conform {action}" in text and needle in text, action
