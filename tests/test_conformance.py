"""The conformance suite (Spec §12): the reference passes, mutants fail the right vectors.

* The reference adapter passes every checked-in vector; the vectors cover what §12.2 requires.
* Mutant adapters — subclasses of the reference adapter that get exactly one thing wrong — fail
  exactly the vectors that can see their mistake (derived from each vector's own metadata), and
  pass the others:

  (a) double ``attention_scaling`` on re-rotation (the official implementation's bug, Spec §8.3);
  (b) the write segment's offset off by one when new keys are stored (Spec §2.1, §3.5);
  (c) a non-causal own segment: multi-token rows see their own later tokens (Spec §3.2);
  (d) zero-token workers write their padding (the official implementation's bug, Spec §3.4);
  (e) other workers' segments in descending instead of ascending order (Spec §4.1, §4.3).

* Regenerating the vectors reproduces the checked-in files byte for byte.
* ``hogwild-ref conform``: the ``--json`` schema, exit codes, errors, skipped levels.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from hogwild_ref.cli import main
from hogwild_ref.conformance import LEVELS, ReferenceAdapter, Report, generate_vectors, load_vector, reference, run
from hogwild_ref.conformance.protocol import AttentionAdapter, ModelAdapter, RopeAdapter
from hogwild_ref.conformance.runner import default_vectors_dir, run_vector
from hogwild_ref.rope import RopeSpec
from hogwild_ref.segments import SegmentTable

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: see conftest.single_thread

VECTORS = default_vectors_dir()
META: dict[str, dict[str, Any]] = {
    p.stem: json.loads(p.read_text(encoding="utf-8")) for level in LEVELS for p in sorted((VECTORS / level).glob("*.json"))
}


def _names(pred: Callable[[dict[str, Any]], bool], level: str | None = None) -> set[str]:
    return {name for name, m in META.items() if (level is None or m["level"] == level) and pred(m)}


# ---------------------------------------------------------------------- mutants
class DoubleScaledRope(RopeSpec):
    """Every pure rotation multiplies by attention_scaling again (cos/sin tables that carry A)."""

    def apply(self, x, rot, scale=1.0):  # type: ignore[override]
        return super().apply(x, rot, self.attention_scaling if scale == 1.0 else scale)


class DoubleScaling(ReferenceAdapter):
    """(a) re-rotations (rerotate, the write re-rotation, per-segment query rotations, flushes) scale by A."""

    def make_rope(self, rope):
        spec = super().make_rope(rope)
        return DoubleScaledRope(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)})


class OffByOne(ReferenceAdapter):
    """(b) new keys are moved to local positions with o_r(write) + 1 instead of o_r(write)."""

    def make_plan(self, table, rows, rope, device):
        plan = super().make_plan(table, rows, rope, device)
        return dataclasses.replace(plan, write_offset=plan.write_offset + 1)


class NonCausalOwn(ReferenceAdapter):
    """(c) every query sees its whole write segment, including the row's later new tokens."""

    def make_plan(self, table, rows, rope, device):
        plan = super().make_plan(table, rows, rope, device)
        mask = plan.key_mask.clone()
        lengths = list(plan.sizes)
        starts = [sum(lengths[:j]) for j in range(len(lengths))]
        for r, (n, j) in enumerate(zip(plan.counts, plan.write_indices)):
            if n:
                mask[r, :, starts[j] : starts[j] + lengths[j]] = True
        return dataclasses.replace(plan, key_mask=mask)


class WritesPadding(ReferenceAdapter):
    """(d) a worker that feeds nothing still writes one padding token (id 0 / the padding slot)."""

    def tick_counts(self, new_tokens):
        return [max(1, n) for n in new_tokens]

    def tick_feeds(self, feeds):
        return [list(f) if f else [0] for f in feeds]


class DescendingOthers(ReferenceAdapter):
    """(e) the presets list the other workers' segments in descending worker order."""

    def make_table(self, layout, workers, lengths, table):
        tab = super().make_table(layout, workers, lengths, table)
        if table is not None or layout not in ("contiguous", "combined"):
            return tab
        views = []
        for w in range(workers):
            others = [j for j in reversed(range(workers)) if j != w]
            if layout == "contiguous":
                views.append(("prompt", *(f"out_{j}" for j in others), f"out_{w}"))
            else:
                mids = [sid for j in others for sid in (f"cur_{j}", f"sep_{j}")]
                views.append(("common", "others_header", *mids, "own_header", f"cur_{w}"))
        return SegmentTable(tab.segments, tuple(views), history=tab.history, layout=tab.layout)


def _scaled(m: dict[str, Any]) -> bool:
    return "attention_scaling != 1" in m["features"]


def _multi(m: dict[str, Any]) -> bool:
    # model: prefill rows and some feeds are multi-token, but only the last slot's logits are compared, and the last
    # slot sees its whole row anyway; the earlier slots' mistake reaches it through a second layer only
    if m["level"] == "model":
        return m["config"]["num_hidden_layers"] >= 2
    return max(m["inputs"]["new_tokens"]) >= 2


def _zero(m: dict[str, Any]) -> bool:
    if m["level"] == "model":
        return any(not f for t in m["inputs"]["ticks"] for f in t["feeds"])
    return 0 in m["inputs"]["new_tokens"]


def _reordered(m: dict[str, Any]) -> bool:
    return m["inputs"]["layout"] in ("contiguous", "combined") and m["inputs"]["workers"] >= 3


#: mutant -> (levels it is run on, predicate: the vectors it must fail)
MUTANTS: dict[str, tuple[type[ReferenceAdapter], Callable[[dict[str, Any]], bool]]] = {
    "double-scaling": (DoubleScaling, _scaled),
    "off-by-one": (OffByOne, lambda m: m["level"] != "rope"),
    "non-causal-own": (NonCausalOwn, lambda m: m["level"] != "rope" and _multi(m)),
    "writes-padding": (WritesPadding, lambda m: m["level"] != "rope" and _zero(m)),
    "descending-others": (DescendingOthers, lambda m: m["level"] != "rope" and _reordered(m)),
}


# ---------------------------------------------------------------------- the reference
@pytest.fixture(scope="module")
def reference_report(single_thread) -> Report:
    return run(reference(), VECTORS)


def test_reference_adapter_passes_every_vector(reference_report: Report) -> None:
    failed = {r.name: (r.max_abs_err, r.message) for r in reference_report.results if not r.passed}
    assert not failed, f"the reference fails its own vectors: {failed}"
    assert reference_report.passed == len(META)
    for r in reference_report.results:  # comfortably inside the tolerance, not at its edge
        assert r.max_abs_err is not None and r.ratio is not None and r.ratio < 1 / 3, (r.name, r.max_abs_err, r.tol)


def test_vector_set_covers_spec_12_2() -> None:
    count = {level: len(_names(lambda m: True, level)) for level in LEVELS}
    assert count == {"rope": 14, "attention": 26, "model": 9}
    att = [m for m in META.values() if m["level"] == "attention"]
    for layout in ("contiguous", "interleaved", "combined"):
        ws = {m["inputs"]["workers"] for m in att if m["inputs"]["layout"] == layout}
        assert 1 in ws and max(ws) >= 3 and max(ws) == 4, (layout, ws)
    feats = {f for m in att for f in m["features"]}
    for needed in ("GQA", "MQA", "MHA", "zero-token row", "multi-token row", "empty segment", "partial rotary",
                   "attention_scaling != 1", "convention=interleaved", "dtype=bfloat16", "layout=explicit"):
        assert needed in feats, needed
    rope_types = {f for m in META.values() if m["level"] == "rope" for f in m["features"]}
    for needed in ("rope_type=default", "rope_type=linear", "rope_type=llama3", "rope_type=yarn",
                   "rope_type=longrope", "partial rotary", "convention=half", "convention=interleaved"):
        assert needed in rope_types, needed
    model = [m for m in META.values() if m["level"] == "model"]
    assert {(m["inputs"]["layout"], m["inputs"]["workers"]) for m in model} >= {
        ("interleaved", 2), ("interleaved", 3), ("combined", 2), ("combined", 3)}
    assert {m["config"]["model_type"] for m in model} >= {"llama", "phi3"}
    for m in model:
        ticks = m["inputs"]["ticks"]
        assert any(not f for t in ticks for f in t["feeds"]) and any(len(f) >= 2 for t in ticks for f in t["feeds"])
        if m["inputs"]["layout"] != "contiguous":
            assert any(t["flush"] for t in ticks) and any(len(t["flush"]) >= 2 for t in ticks)
        assert m["config"]["vocab_size"] == 256


def test_vector_files_are_well_formed() -> None:
    total = sum(p.stat().st_size for p in VECTORS.rglob("*") if p.is_file())
    assert total < 5_000_000, f"spec/vectors/v3 is {total / 1e6:.1f} MB"
    for level in LEVELS:
        for path in sorted((VECTORS / level).glob("*.json")):
            vector = load_vector(path)
            m = vector.meta
            assert m["name"] == path.stem and m["level"] == level and m["version"] == 3
            if level == "model":
                assert m["inputs"]["prefill"] == ("given" if "prefill=given" in m["features"] else "spec")
            for key in ("description", "tolerance", "measure", "dtype", "features", "inputs", "tensors", "generator"):
                assert key in m, (path.name, key)
            assert ("config" in m) == (level == "model")
            assert set(vector.tensors) == set(m["tensors"]), path.name
            assert any(k.startswith("expected/") for k in vector.tensors)
    assert {p.suffix for p in VECTORS.rglob("*") if p.is_file()} == {".json", ".safetensors"}


def _pinned_stack() -> bool:
    """Whether torch and transformers are the versions in constraints.txt (the vectors' generator)."""
    import transformers

    pins = {}
    for line in (Path(__file__).resolve().parents[1] / "constraints.txt").read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and not name.startswith("#"):
            pins[name] = version
    return torch.__version__.split("+")[0] == pins.get("torch") and transformers.__version__ == pins.get("transformers")


#: Byte identity holds for the stack that generated the vectors; other versions may differ in the
#: last float bits or in config keys (then the semantic checks of the other tests still apply).
requires_pinned_stack = pytest.mark.skipif(
    not _pinned_stack(), reason="byte-identical regeneration needs the torch/transformers of constraints.txt"
)


@requires_pinned_stack
def test_regeneration_is_byte_identical(tmp_path: Path) -> None:
    generate_vectors(tmp_path)
    mine = {p.relative_to(tmp_path): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    checked_in = {p.relative_to(VECTORS): p.read_bytes() for p in sorted(VECTORS.rglob("*")) if p.is_file()}
    assert set(mine) == set(checked_in)
    differ = sorted(str(k) for k in mine if mine[k] != checked_in[k])
    assert not differ, f"regenerated vectors differ from spec/vectors/v3: {differ} (run `hogwild-ref conform --regenerate`)"


# ---------------------------------------------------------------------- mutants
@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_mutant_fails_exactly_the_vectors_that_see_its_mistake(mutant: str) -> None:
    cls, must_fail = MUTANTS[mutant]
    report = run(cls(), VECTORS)
    expected = _names(must_fail)
    assert expected, "a mutant must be caught by at least one vector"
    failed = report.names("failed")
    assert failed == expected, (
        f"{mutant}: not caught by {sorted(expected - failed)}; unexpectedly failed {sorted(failed - expected)}"
    )
    for r in report.results:  # caught by a clear margin, not by rounding
        if r.status == "failed":
            assert r.ratio is not None and r.ratio > 3, (r.name, r.max_abs_err, r.tol)
    if mutant == "double-scaling":  # the rope level isolates it: rotate is right, rerotate is wrong
        for name in _names(_scaled, "rope"):
            outputs = report[name].outputs
            assert outputs["rotated"].ok and outputs["rerotated"].ratio > 3
        assert expected == _names(_scaled) and _names(_scaled, "rope") and _names(_scaled, "model")
    if mutant == "off-by-one":  # visible in the attention output itself, not only in the stored keys
        for name in _names(lambda m: True, "attention"):
            assert report[name].outputs["out"].ratio > 3, name
    if mutant == "writes-padding":  # the extra stored token shows as a shape mismatch of the write segment
        for name in _names(_zero, "attention"):
            assert any(k.startswith("keys/") and math.isinf(v) for k, v in report[name].errors.items()), name


def test_double_scaling_attention_vectors_fail_on_attention_output_too() -> None:
    report = run(DoubleScaling(), VECTORS, ["attention"])
    for name in _names(_scaled, "attention"):
        assert report[name].errors["out"] > report[name].tol, name


# ---------------------------------------------------------------------- runner behaviour
class OnlyRope:
    def rope(self, **kwargs: Any) -> dict[str, torch.Tensor]:
        return ReferenceAdapter().rope(**kwargs)


class Broken(ReferenceAdapter):
    def rope(self, **kwargs: Any) -> dict[str, torch.Tensor]:
        if kwargs["config"]["model_type"] == "stablelm":
            raise NotImplementedError("no stablelm here")
        out = super().rope(**kwargs)
        if kwargs["rope"]["convention"] == "interleaved":
            del out["rerotated"]
        return out


def double_scaling() -> DoubleScaling:
    """Factory for the CLI tests (``--adapter test_conformance:double_scaling``)."""
    return DoubleScaling()


def test_missing_levels_are_out_of_scope_not_failed() -> None:
    report = run(OnlyRope(), VECTORS)
    assert report.ok and report.out_of_scope == len(_names(lambda m: m["level"] != "rope")) and report.skipped == 0
    assert report.passed == len(_names(lambda m: True, "rope"))
    entry = next(e for e in report.to_json_dict()["vectors"] if e["level"] == "model")
    assert entry == {"name": entry["name"], "level": "model", "status": "out_of_scope", "passed": None,
                     "max_abs_err": None, "tol": entry["tol"], "ratio": None, "failure": None, "outputs": {},
                     "out_of_scope": True, "error": "the adapter does not implement the model level"}


def test_adapter_exceptions_and_missing_outputs_fail_only_their_vector() -> None:
    report = run(Broken(), VECTORS, ["rope"])
    failed = report.names("failed")
    assert failed == {n for n in _names(lambda m: True, "rope") if n.startswith("yarn-partial") or n.endswith("interleaved")}
    by_name = {e["name"]: e for e in report.to_json_dict()["vectors"]}
    assert "NotImplementedError: no stablelm here" in by_name["yarn-partial-half"]["error"]
    assert "no 'rerotated'" in by_name["default-interleaved"]["error"]
    entry = by_name["default-interleaved"]
    assert entry["failure"] == "mismatch" and entry["outputs"]["rerotated"]["err"] is None
    assert entry["outputs"]["rotated"]["passed"] is True and entry["max_abs_err"] == entry["outputs"]["rotated"]["err"]
    assert by_name["yarn-partial-half"]["failure"] == "raised" and by_name["yarn-partial-half"]["max_abs_err"] is None
    assert by_name["default-half"]["passed"] is True


def test_runner_passes_inputs_only_with_the_protocol_signatures() -> None:
    import inspect

    seen: dict[str, set[str]] = {}

    class Spy(ReferenceAdapter):
        def rope(self, **kw):
            seen["rope"] = set(kw)
            return super().rope(**kw)

        def attention(self, **kw):
            seen["attention"] = set(kw)
            return super().attention(**kw)

        def model(self, **kw):
            seen["model"] = set(kw)
            return super().model(**kw)

    spy = Spy()
    for level in LEVELS:
        name = min(_names(lambda m: True, level))
        assert run_vector(spy, load_vector(VECTORS / level / f"{name}.json")).passed
    protocols = {"rope": RopeAdapter, "attention": AttentionAdapter, "model": ModelAdapter}
    for level, proto in protocols.items():
        params = set(inspect.signature(getattr(proto, level)).parameters) - {"self"}
        assert seen[level] == params, level
        assert isinstance(reference(), proto)


# ---------------------------------------------------------------------- CLI
def test_cli_json_schema_and_exit_code_zero(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["conform", "--level", "rope", "--level", "attention", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert set(out) == {"version", "passed", "failed", "out_of_scope", "skipped", "not_run", "vectors"}
    assert out["failed"] == 0 and out["skipped"] == 0 and out["passed"] == len(out["vectors"]) == 40
    assert out["out_of_scope"] == out["not_run"] == 0
    assert out["version"] == 3
    for entry in out["vectors"]:
        assert set(entry) == {"name", "level", "status", "passed", "max_abs_err", "tol", "ratio", "failure", "outputs"}
        assert entry["passed"] is True and entry["level"] in ("rope", "attention") and entry["failure"] is None
        assert isinstance(entry["max_abs_err"], float) and entry["max_abs_err"] <= entry["tol"]
        assert entry["outputs"] and all(o["passed"] and o["err"] <= o["tol"] and o["shape"] == o["expected_shape"]
                                        for o in entry["outputs"].values())


def test_cli_exit_code_one_on_failure(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["conform", "--adapter", "test_conformance:double_scaling", "--level", "rope", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert out["failed"] == len(_names(_scaled, "rope")) and out["passed"] + out["failed"] == 14
    assert {e["name"] for e in out["vectors"] if e["passed"] is False} == _names(_scaled, "rope")


def test_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["conform", "--adapter", "test_conformance:double_scaling", "--level", "rope"])
    text = capsys.readouterr().out
    assert rc == 1
    assert "yarn-half" in text and "failed" in text and "passed" in text
    assert (f"{14 - len(_names(_scaled, 'rope'))} passed, {len(_names(_scaled, 'rope'))} failed, 0 out of scope, "
            "0 skipped, 0 not run") in text


def test_cli_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["conform", "--vectors", str(tmp_path / "missing")]) == 2
    assert "--vectors" in capsys.readouterr().err
    assert main(["conform", "--adapter", "no_such_module_xyz:make"]) == 2
    assert "cannot import adapter module" in capsys.readouterr().err
    assert main(["conform", "--adapter", "hogwild_ref.conformance"]) == 2
    assert "module:factory" in capsys.readouterr().err


def test_cli_subprocess_exit_status() -> None:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "hogwild_ref.cli", "conform", "--level", "rope", "--json",
           "--adapter", "test_conformance:double_scaling"]
    proc = subprocess.run(cmd, cwd=Path(__file__).parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["failed"] == len(_names(_scaled, "rope")) and out["skipped"] == 0


@requires_pinned_stack
def test_cli_regenerate_into_a_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc = main(["conform", "--regenerate", "--vectors", str(tmp_path), "--level", "rope", "--json"])
    captured = capsys.readouterr()
    assert rc == 0 and json.loads(captured.out)["passed"] == 14
    assert "wrote 14 vectors" in captured.err
    for path in sorted((tmp_path / "rope").iterdir()):
        assert path.read_bytes() == (VECTORS / "rope" / path.name).read_bytes(), path.name


# ---------------------------------------------------------------------- JSON Schema of vectors (Spec §12.4)
def _vector_validator():
    """The vector schema, its ``$ref`` to the segment-table schema resolved by that schema's own ``$id``."""
    import jsonschema
    from referencing import Registry, Resource

    schema_dir = Path(__file__).resolve().parents[1] / "spec" / "schema"
    table = json.loads((schema_dir / "segment_table.schema.json").read_text())
    vector = json.loads((schema_dir / "conformance_vector.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(vector)
    # each schema registered under its own $id, as any validator given both files does
    registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in (table, vector))
    return jsonschema.Draft202012Validator(vector, registry=registry)


def test_every_vector_validates_against_the_schema() -> None:
    validator = _vector_validator()
    files = sorted(VECTORS.rglob("*.json"))
    assert len(files) >= 30
    for path in files:
        errors = list(validator.iter_errors(json.loads(path.read_text())))
        assert not errors, f"{path.name}: {errors[0].message}"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(level="kernel"),
        lambda d: d.pop("tolerance"),
        lambda d: d.update(tolerance=0),
        lambda d: d["tensors"].update({"output/x": "?"}),
        lambda d: d["inputs"]["ticks"][0].update(feeds="1 2 3") if d["level"] == "model" else d.update(version=1),
        lambda d: d["inputs"]["ticks"][0].update(extra=1) if d["level"] == "model" else d.update(dtype="int8"),
    ],
)
def test_schema_rejects_malformed_vectors(mutate) -> None:
    validator = _vector_validator()
    for level in ("rope", "attention", "model"):
        path = sorted((VECTORS / level).glob("*.json"))[0]
        data = json.loads(path.read_text())
        mutate(data)
        assert list(validator.iter_errors(data)), f"{level}: a malformed vector passed the schema"


def test_schema_checks_explicit_tables_with_the_segment_table_schema() -> None:
    validator = _vector_validator()
    explicit = [p for p in sorted((VECTORS / "attention").glob("*.json")) if json.loads(p.read_text())["inputs"]["table"]]
    assert explicit, "expected at least one attention vector with explicit views"
    data = json.loads(explicit[0].read_text())
    assert not list(validator.iter_errors(data))
    del data["inputs"]["table"]["views"]
    assert list(validator.iter_errors(data)), "a table without views passed"
