"""Conformance suite v2 (Spec §10.4, §12): real third-party implementations and any layout.

* transformers' own float32 rotary embedding + ``apply_rotary_pos_emb``, run as an adapter, passes
  every ``rope`` vector under the position-dependent tolerance of §10.4 (it failed the flat ``1e-5``
  of version 1); the reference with float32 angles everywhere passes every attention and model vector;
* an implementation that prefills static segments without the prompt in context (the official
  code's design) fails exactly the model vectors that assume §4.4's prefill and passes those that
  give the static K/V;
* version 1 vectors are refused with a message naming the fix;
* one mis-shaped output does not hide the errors of the others; the table keeps one line per vector;
* the out-of-process line protocol: the standalone NumPy example adapter (``examples/``) through
  ``--adapter-cmd`` and through ``conform export`` / ``conform score``; protocol failures;
* the engine runs explicit tables (Spec §4.5).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from hogwild_ref.cli import main
from hogwild_ref.conformance import LEVELS, ReferenceAdapter, load_vector, reference, run
from hogwild_ref.conformance.reference import config_from_dict
from hogwild_ref.conformance.runner import VersionError, default_vectors_dir
from hogwild_ref.rope import RopeSpec, Rotation
from hogwild_ref.segments import Row, SegmentTable

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]
VECTORS = default_vectors_dir()
EXAMPLE = ROOT / "examples" / "numpy_adapter.py"
META: dict[str, dict[str, Any]] = {
    p.stem: json.loads(p.read_text(encoding="utf-8")) for level in LEVELS for p in sorted((VECTORS / level).glob("*.json"))
}



def answer_offline(directory: Path) -> None:
    """The documented offline recipe (Spec §12.7): the NumPy example adapter reads
    ``directory/requests.jsonl`` and writes ``directory/replies.jsonl``; it must exit 0."""
    with open(directory / "requests.jsonl") as stdin, open(directory / "replies.jsonl", "w") as stdout:
        proc = subprocess.run([sys.executable, str(EXAMPLE)], cwd=directory, stdin=stdin, stdout=stdout,
                              stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr

def _names(level: str, pred=lambda m: True) -> set[str]:
    return {n for n, m in META.items() if m["level"] == level and pred(m)}


# ---------------------------------------------------------------------- transformers as an adapter (Spec §8.5, §10.4)
class TransformersRope:
    """transformers' own RoPE: ``<Arch>RotaryEmbedding`` (float32 angles) and the architecture's
    ``apply_rotary_pos_emb``. Interleaved pairs are handled by permuting channels (exact)."""

    def rope(self, *, rope, config, x, positions, y, deltas):
        cfg = config_from_dict(config)
        modeling = importlib.import_module(f"transformers.models.{cfg.model_type}.modeling_{cfg.model_type}")
        emb_cls = next(v for k, v in vars(modeling).items() if k.endswith("RotaryEmbedding") and isinstance(v, type))
        emb = emb_cls(cfg)
        scaling = float(getattr(emb, "attention_scaling", 1.0))

        def apply(v: torch.Tensor, pos: torch.Tensor, pure: bool) -> torch.Tensor:
            q = v[None, None]  # (1, 1, N, D)
            cos, sin = emb(q, pos[None])
            if pure:  # a re-rotation is the rotation without attention_scaling (Spec §8.3)
                cos, sin = cos / scaling, sin / scaling
            rd = cos.shape[-1]
            rot = q[..., :rd]
            if rope["convention"] == "interleaved":  # pairs (2i, 2i+1) -> (i, i + rd/2) and back
                perm = torch.cat([torch.arange(0, rd, 2), torch.arange(1, rd, 2)])
                rot = rot[..., perm]
            out, _ = modeling.apply_rotary_pos_emb(rot, rot, cos, sin)
            if rope["convention"] == "interleaved":
                out = out[..., torch.argsort(perm)]
            return torch.cat([out, q[..., rd:]], dim=-1)[0, 0]

        return {"rotated": apply(x, positions, False), "rerotated": apply(y, deltas, True)}


def test_transformers_float32_rope_passes_every_rope_vector() -> None:
    report = run(TransformersRope(), VECTORS, ["rope"])
    failed = {r.name: (r.max_abs_err, r.tol, r.message) for r in report.results if not r.passed}
    assert not failed, failed
    assert report.passed == len(_names("rope")) == 14
    worst = max(r.ratio for r in report.results)
    assert worst < 0.5, f"transformers' RoPE uses {worst:.2f} of the tolerance"
    # the flat float32 tolerance of version 1 (1e-5) would fail it: the rule change is what makes it pass
    flat = [r.name for r in report.results if max(o.err for o in r.outputs.values()) > 1e-5]
    assert len(flat) >= 6, flat


class Float32Angles(RopeSpec):
    """Angles ``p * theta`` in float32, as transformers computes them (Spec §8.5 allows it)."""

    def rotation(self, positions, device=None, dtype=torch.float32):  # type: ignore[override]
        pos = torch.as_tensor(positions, device=device).to(torch.float32)
        angles = pos[..., None] * self.inv_freq.to(torch.float32).to(pos.device)
        return Rotation(angles.cos().to(dtype), angles.sin().to(dtype))


class Float32AnglesAdapter(ReferenceAdapter):
    def make_rope(self, rope):
        spec = super().make_rope(rope)
        return Float32Angles(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)})


def test_float32_angles_pass_every_vector() -> None:
    report = run(Float32AnglesAdapter(), VECTORS)
    failed = {r.name: (r.max_abs_err, r.tol) for r in report.results if not r.passed}
    assert not failed, failed
    att = [r for r in report.results if r.level == "attention" and "dtype=float32" in META[r.name]["features"]]
    assert max(r.ratio for r in att) < 0.5


# ---------------------------------------------------------------------- prefill variants (Spec §4.4, §12.2)
class PrefillWithoutPrompt(ReferenceAdapter):
    """The official code's prefill: every static segment other than the prompt is computed alone
    (view ``[s]``, positions from 0), not in the prompt's context."""

    def _setup(self, *args, **kwargs):
        forward, storage, first = super()._setup(*args, **kwargs)
        spec_prefill = forward.prefill

        def prefill(storage, first, static, chunk=512):
            spec_prefill(storage, first, {first: static[first]}, chunk)
            others = [sid for sid in static if sid != first and static[sid]]
            if others:
                forward(storage, [Row((sid,), len(static[sid])) for sid in others], [static[sid] for sid in others],
                        logits=False)

        forward.prefill = prefill
        return forward, storage, first


def _other_static_in_views(m: dict[str, Any]) -> bool:
    inputs = m["inputs"]
    table = SegmentTable.from_dict(inputs["table"]) if inputs["table"] else None
    if table is None:
        from hogwild_ref.segments import make_layout

        table = make_layout(inputs["layout"], inputs["workers"])
    first = table.history or table.views[0][0]
    seen = {sid for view in table.views for sid in view}
    return any(sid != first and sid in seen and ids for sid, ids in inputs["static"].items())


def test_other_prefill_fails_spec_prefill_vectors_and_passes_given_kv() -> None:
    report = run(PrefillWithoutPrompt(), VECTORS, ["model"])
    given = _names("model", lambda m: "prefill=given" in m["features"])
    assert given == {"llama-official5-w2-given-kv", "llama-yarn-official5-w2-given-kv"}
    must_fail = _names("model", lambda m: "prefill=spec" in m["features"] and _other_static_in_views(m))
    assert {"llama-official5-w2", "llama-scratch-w2", "llama-combined-w3", "phi3-combined-w2"} <= must_fail
    assert report.names("failed") == must_fail
    assert given <= report.names("passed")
    for name in must_fail:
        assert report[name].ratio > 3, (name, report[name].max_abs_err)


def test_given_static_kv_are_the_spec_prefill_kv() -> None:
    """The K/V a given-kv vector carries are what §4.4's prefill computes (fast path, float32)."""
    vector = load_vector(VECTORS / "model" / "llama-official5-w2-given-kv.json")
    inputs = vector.meta["inputs"]
    kv = ReferenceAdapter().prefill_kv(config=vector.meta["config"], weights=vector.inputs("weights"), rope=inputs["rope"],
                                       layout=inputs["layout"], workers=inputs["workers"], table=inputs["table"],
                                       static=inputs["static"])
    assert set(kv) == set(vector.inputs("static_keys")) == set(inputs["static"])
    for sid, (k, v) in kv.items():
        ek, ev = vector.inputs("static_keys")[sid], vector.inputs("static_values")[sid]
        assert k.shape == ek.shape and float((k - ek).abs().max() / ek.abs().max()) < 1e-5, sid
        assert float((v - ev).abs().max() / ev.abs().max()) < 1e-5, sid


# ---------------------------------------------------------------------- versions, results, table
def test_version_1_vectors_are_refused_with_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    v1 = ROOT / "spec" / "vectors" / "v1"
    with pytest.raises(VersionError, match="spec/vectors/v3"):
        run(reference(), v1, ["rope"])
    assert main(["conform", "--vectors", str(v1), "--level", "rope"]) == 2
    assert "version 1" in capsys.readouterr().err


def test_every_vector_carries_version_independent_rope_and_generator() -> None:
    for name, m in META.items():
        rope = m["inputs"]["rope"]
        assert 2 * len(rope["inv_freq"]) == rope["rotary_dim"] <= rope["head_dim"], name
        assert rope["convention"] in ("half", "interleaved") and rope["attention_scaling"] > 0, name
        assert set(m["generator"]) == {"hogwild_ref", "torch", "transformers"}, name
        config = m["config"] if m["level"] == "model" else m["inputs"]["config"]
        spec = RopeSpec.from_config(config_from_dict(config), convention=rope["convention"])
        assert spec.inv_freq.tolist() == rope["inv_freq"] and spec.attention_scaling == rope["attention_scaling"], name


class HalfBroken(ReferenceAdapter):
    """Returns one write segment with a wrong length and drops another output; raises on one vector."""

    def attention(self, **kw):
        out = super().attention(**kw)
        if kw["table"] is not None and kw["table"]["segments"][1]["id"] == "others_header":
            raise RuntimeError("first line of the failure\nsecond line\nthird line with details")
        sid = sorted(out["keys"])[0]
        out["keys"][sid] = out["keys"][sid][:, :-1]
        del out["values"][sorted(out["values"])[-1]]
        return out


def test_one_mismatch_does_not_hide_the_other_outputs(capsys: pytest.CaptureFixture[str]) -> None:
    report = run(HalfBroken(), VECTORS, ["attention"])
    r = report["combined-w3-yarn-partial"]
    assert r.failure == "mismatch"
    entry = r.to_json_dict()
    outs = entry["outputs"]
    assert outs["keys/cur_0"]["error"].startswith("shape") and outs["keys/cur_0"]["err"] is None
    assert outs["keys/cur_0"]["shape"][1] == outs["keys/cur_0"]["expected_shape"][1] - 1
    assert "no values['cur_2']" in outs["values/cur_2"]["error"]
    for key in ("out", "keys/cur_1", "keys/cur_2", "values/cur_0", "values/cur_1"):  # still measured
        assert outs[key]["passed"] and outs[key]["err"] <= outs[key]["tol"], key
    raised = report["official5-w2"].to_json_dict()
    assert raised["failure"] == "raised" and "third line with details" in raised["error"]
    assert raised["outputs"] == {} and raised["max_abs_err"] is None


def test_table_has_one_line_per_vector_when_the_adapter_raises(capsys: pytest.CaptureFixture[str]) -> None:
    from hogwild_ref.cli import _print_conform_table

    report = run(HalfBroken(), VECTORS, ["attention"])
    _print_conform_table(report, "half-broken")
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith("│")]
    assert len(lines) == len(report.results) == 26
    assert "first line of the failure" in text and "second line" not in text
    assert "failed (raised)" in text and "failed (mismatch)" in text


# ---------------------------------------------------------------------- out of process (Spec §12.7)
def _numpy_cmd() -> str:
    return f'"{sys.executable}" "{EXAMPLE}"'


def _check_numpy_result(out: dict[str, Any]) -> None:
    by_level = {level: [e for e in out["vectors"] if e["level"] == level] for level in LEVELS}
    assert out["failed"] == 0 and out["passed"] == len(by_level["rope"]) + len(by_level["attention"]) == 40
    assert all(e["status"] == "out_of_scope" for e in by_level["model"]) and out["out_of_scope"] == 9
    assert out["skipped"] == out["not_run"] == 0
    assert all(e["ratio"] < 0.5 for e in by_level["rope"] + by_level["attention"])


def test_numpy_example_adapter_through_adapter_cmd(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["conform", "--adapter-cmd", _numpy_cmd(), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    _check_numpy_result(out)


def test_numpy_example_adapter_through_export_and_score(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conform", "export", str(tmp_path)]) == 0
    capsys.readouterr()
    requests = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert requests[0]["op"] == "hello" and len(requests) == 1 + len(META)
    assert not any("expected" in name for p in tmp_path.rglob("*.safetensors") for name in _tensor_names(p))
    answer_offline(tmp_path)
    # score reads the hello reply: the model level is out of scope, as live (Spec §12.7)
    assert main(["conform", "score", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    _check_numpy_result(out)
    assert main(["conform", "score", str(tmp_path), "--json", "--level", "rope", "--level", "attention"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] == 40 and out["failed"] == 0
    # a missing output file fails its vector only, with a message that names the file
    (tmp_path / "rope" / "yarn-half.outputs.safetensors").unlink()
    assert main(["conform", "score", str(tmp_path), "--json", "--level", "rope"]) == 1
    out = json.loads(capsys.readouterr().out)
    failed = [e for e in out["vectors"] if e["passed"] is False]
    assert [e["name"] for e in failed] == ["yarn-half"] and "yarn-half.outputs.safetensors" in failed[0]["error"]
    assert failed[0]["failure"] == "mismatch"  # an output missing (Spec §12.5); it read "raised"


def _tensor_names(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return list(f.keys())


def test_adapter_cmd_failures_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conform", "--adapter-cmd", "no-such-adapter-binary-xyz", "--level", "rope"]) == 2
    assert "cannot start adapter command" in capsys.readouterr().err
    assert main(["conform", "--adapter-cmd", f'"{sys.executable}" -c pass', "--level", "rope"]) == 2
    assert "did not answer the hello request" in capsys.readouterr().err
    # an adapter that answers every vector with ok: false, after some noise on stdout
    script = tmp_path / "refuse.py"
    script.write_text(
        "import json, sys\n"
        "print('loading weights...')\n"
        "for line in sys.stdin:\n"
        "    r = json.loads(line)\n"
        "    reply = {'ok': True, 'levels': ['rope']} if r['op'] == 'hello' else "
        "{'id': r['id'], 'ok': False, 'error': 'kernel not built for ' + r['id']}\n"
        "    print(json.dumps(reply), flush=True)\n"
    )
    rc = main(["conform", "--adapter-cmd", f'"{sys.executable}" "{script}"', "--json"])
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert rc == 1 and out["failed"] == 14 and out["out_of_scope"] == len(META) - 14 and out["skipped"] == 0
    assert all(e["failure"] == "raised" and f"kernel not built for rope/{e['name']}" in e["error"]
               for e in out["vectors"] if e["level"] == "rope")
    # the message is the adapter's: no "(at external.py:271)", a line of the runner's that says nothing of it
    assert not any("(at " in e["error"] for e in out["vectors"] if e["level"] == "rope")
    assert "[adapter stdout] loading weights..." in captured.err


def test_a_wrong_out_of_process_adapter_fails_numerically(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Through the line protocol, outputs are scored like in-process ones: no rotation at all fails."""
    script = tmp_path / "identity.py"
    script.write_text(
        "import json, sys\n"
        "from safetensors.numpy import load_file, save_file\n"
        "for line in sys.stdin:\n"
        "    r = json.loads(line)\n"
        "    if r['op'] == 'hello':\n"
        "        print(json.dumps({'ok': True, 'levels': ['rope']}), flush=True)\n"
        "        continue\n"
        "    t = load_file(r['tensors'])\n"
        "    save_file({'rotated': t['x'], 'rerotated': t['y']}, r['output'])\n"
        "    print(json.dumps({'id': r['id'], 'ok': True, 'output': r['output']}), flush=True)\n"
    )
    rc = main(["conform", "--adapter-cmd", f'"{sys.executable}" "{script}"', "--level", "rope", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and out["failed"] == 14
    for entry in out["vectors"]:
        assert entry["failure"] == "numeric" and entry["ratio"] > 100, entry["name"]
        # which output failed, by how much (Spec §12.5: every vector that did not pass has an error)
        failing = [k for k, o in entry["outputs"].items() if not o["passed"]]
        assert failing and all(re.search(rf"{k}: error \S+ is \S+ x its tolerance", entry["error"]) for k in failing)
        assert entry["outputs"]["rotated"]["shape"] == entry["outputs"]["rotated"]["expected_shape"]


def test_conform_export_and_score_need_a_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["conform", "export"])
    assert exc.value.code == 2 and "required: DIR" in capsys.readouterr().err
    assert main(["conform", "score", str(tmp_path / "missing")]) == 2
    assert "conform export" in capsys.readouterr().err
    assert main(["conform", "--adapter-cmd", "x", "score", str(tmp_path)]) == 2
    assert "takes no adapter" in capsys.readouterr().err
    for argv in (["conform", "score", str(tmp_path), "--adapter-cmd", "x"], ["conform", "run", str(tmp_path)]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith("error: unrecognized arguments") and len(err.splitlines()) == 1


# ---------------------------------------------------------------------- engine with explicit tables (Spec §4.5)
def _engine_run(model, tok, backend, **kwargs):
    from hogwild_ref.engine import Engine
    from hogwild_ref.scheduler import SchedulerConfig

    sched = SchedulerConfig(max_ticks=14, boundary=lambda text: len(text) >= 10, collab_every=None,
                            eos_token_ids=frozenset())
    engine = Engine(model, tok, workers=2, backend=backend, scheduler=sched, record_logits=True, finisher=False, **kwargs)
    return engine.run("What is 2 + 3?")


def test_engine_explicit_table_equals_the_preset(smollm_tokenizer) -> None:
    """The combined preset given as an explicit table with the preset's static texts runs identically."""
    from hogwild_ref.models import tiny_model
    from hogwild_ref.prompts import PromptTemplates, segment_texts
    from hogwild_ref.segments import make_layout

    model = tiny_model("llama", seed=7, vocab_size=len(smollm_tokenizer))
    preset = _engine_run(model, smollm_tokenizer, "rotate_queries", layout="combined")
    table = SegmentTable.from_dict(make_layout("combined", 2).to_dict() | {"layout": None})
    explicit = _engine_run(model, smollm_tokenizer, "rotate_queries", table=table,
                           static_texts=segment_texts(PromptTemplates(), 2))
    assert explicit.layout == "explicit"
    assert [w.tokens for w in explicit.workers] == [w.tokens for w in preset.workers]
    assert all(torch.equal(a, b) for a, b in zip(explicit.logits, preset.logits))


def test_engine_private_scratch_table_matches_the_engine_oracle(smollm_tokenizer) -> None:
    from hogwild_ref.conformance.vectors import private_scratch_table
    from hogwild_ref.models import tiny_model

    model = tiny_model("qwen2", seed=8, vocab_size=len(smollm_tokenizer))
    table = SegmentTable.from_dict(private_scratch_table(2))
    texts = {"scratch_0": "Scratch of Alice:", "scratch_1": "Scratch of Bob, notes:"}
    oracle = _engine_run(model, smollm_tokenizer, "oracle", table=table, static_texts=texts)
    fast = _engine_run(model, smollm_tokenizer, "rotate_queries", table=table, static_texts=texts)
    assert [w.tokens for w in fast.workers] == [w.tokens for w in oracle.workers]
    worst = max(float((f - o).abs().max() / o.abs().max()) for f, o in zip(fast.logits, oracle.logits))
    assert worst < 1e-4
    assert all(any(t in w.view_tokens for t in smollm_tokenizer(texts[f'scratch_{i}'], add_special_tokens=False)['input_ids'])
               for i, w in enumerate(fast.workers))  # each view holds its own scratch segment


def test_engine_rejects_bad_explicit_tables(smollm_tokenizer) -> None:
    from hogwild_ref.conformance.vectors import private_scratch_table
    from hogwild_ref.engine import Engine
    from hogwild_ref.models import tiny_model

    model = tiny_model("llama", seed=1, vocab_size=len(smollm_tokenizer))
    table = SegmentTable.from_dict(private_scratch_table(2))
    with pytest.raises(ValueError, match="workers=2"):
        Engine(model, smollm_tokenizer, workers=3, table=table)
    with pytest.raises(ValueError, match="not static segments"):
        Engine(model, smollm_tokenizer, workers=2, table=table, static_texts={"cur_0": "x"})
    with pytest.raises(ValueError, match="lengths 0"):
        Engine(model, smollm_tokenizer, workers=2, table=table.with_lengths({"common": 3}))
    with pytest.raises(ValueError, match="explicit table"):
        Engine(model, smollm_tokenizer, workers=2, static_texts={"scratch_0": "x"})
