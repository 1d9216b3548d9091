"""Remembered compatibility proofs (Spec §11.6, "Remembered proofs").

A passed numeric proof of a model loaded from a local folder of weight files is recorded under the
cache root; a later *fresh* model object loaded from the same folder (a second process, as far as the
proof can tell: the in-process memo is per model object) skips :func:`hogwild_ref.proof.prove` and
runs with the same RoPE spec. Anything the proof's outcome depends on changes the key and proves
again; a failing proof is never recorded; a bad record or an unwritable cache only costs a proof.
Oracle: the count of ``prove`` calls and the files under the cache root, never a time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from hogwild_ref import proof as proof_mod
from hogwild_ref import records
from hogwild_ref.features import CompatibilityError
from hogwild_ref.models import converted_dir, tiny_model
from hogwild_ref.proof import PROOF_CACHE_ENV, ensure_compatible, proof_of, record_key


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """This test's own cache root; remembered proofs on."""
    root = tmp_path / "cache"
    monkeypatch.setenv("HOGWILD_CACHE_DIR", str(root))
    monkeypatch.delenv(PROOF_CACHE_ENV, raising=False)
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    """A tiny random-weight llama saved with ``save_pretrained``."""
    path = tmp_path / "model"
    tiny_model("llama", seed=5).save_pretrained(path)
    return path


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """The backends :func:`prove` ran on, in order."""
    seen: list[str] = []
    real = proof_mod.prove
    monkeypatch.setattr(proof_mod, "prove", lambda m, r, b, **k: seen.append(b) or real(m, r, b, **k))
    return seen


def fresh(folder: Path, dtype: torch.dtype = torch.float32):
    """A new model object loaded from ``folder`` (what a new process would hold)."""
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()


def same_rope(a, b) -> bool:
    fields = [f.name for f in dataclasses.fields(a) if f.name != "inv_freq"]
    return torch.equal(a.inv_freq, b.inv_freq) and all(getattr(a, f) == getattr(b, f) for f in fields)


def saved(cache: Path) -> list[Path]:
    return sorted((cache / "proofs").glob("*.json")) if (cache / "proofs").is_dir() else []


def test_a_fresh_model_from_the_same_folder_reuses_the_passed_proof(cache, folder, calls):
    first = fresh(folder)
    rope = ensure_compatible(first)
    assert calls == ["oracle", "rotate_queries"] and not proof_of(first).reused
    [path] = saved(cache)
    record = json.loads(path.read_text())
    assert record["key"] == path.stem == record_key(first, "rotate_queries")
    assert record["model_type"] == "llama" and record["convention"] == rope.convention
    assert record["errors"] == proof_of(first).errors and record["tolerance"] == proof_of(first).tolerance

    second = fresh(folder)
    assert same_rope(ensure_compatible(second), rope)
    assert calls == ["oracle", "rotate_queries"]  # not proven again
    proof = proof_of(second)
    assert proof is not None and proof.reused and proof.errors == proof_of(first).errors
    assert proof.probe == proof_of(first).probe  # the cheap checks still ran on the new object


def _touch_weights(folder, model):
    path = next(folder.glob("*.safetensors"))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    return fresh(folder)


def _change_config(folder, model):
    config = json.loads((folder / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5 if config.get("rms_norm_eps") != 1e-5 else 1e-6
    (folder / "config.json").write_text(json.dumps(config))
    return fresh(folder)


def _scale_in_memory(folder, model):
    model = fresh(folder)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
    return model


CHANGES = {
    "weight file touched": _touch_weights,
    "config changed": _change_config,
    "dtype": lambda folder, model: fresh(folder, torch.float64),
    "weights changed in memory": _scale_in_memory,
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_model_is_proven_again(cache, folder, calls, change):
    ensure_compatible(fresh(folder))
    assert len(calls) == 2
    changed = CHANGES[change](folder, None)
    ensure_compatible(changed)
    assert calls == ["oracle", "rotate_queries"] * 2 and not proof_of(changed).reused
    assert len(saved(cache)) == 2  # the changed model's proof is remembered beside the first


@pytest.mark.parametrize("what", ["torch", "transformers", "hogwild_ref source"])
def test_other_code_or_libraries_prove_again(cache, folder, calls, monkeypatch, what):
    ensure_compatible(fresh(folder))
    if what == "torch":
        monkeypatch.setattr(torch, "__version__", "0.0.1")
    elif what == "transformers":
        # the module object in sys.modules (transformers may have replaced the one imported first)
        monkeypatch.setattr(sys.modules["transformers"], "__version__", "0.0.1")
    else:
        stamp = records.source_stamp()
        monkeypatch.setattr(proof_mod, "source_stamp", lambda: (*stamp, ("new.py", 1, 1)))
    model = fresh(folder)
    ensure_compatible(model)
    assert calls == ["oracle", "rotate_queries"] * 2 and not proof_of(model).reused


def test_another_backend_is_proven_again(cache, folder, calls):
    ensure_compatible(fresh(folder))
    model = fresh(folder)
    ensure_compatible(model, backend="rotate_keys")
    assert calls == ["oracle", "rotate_queries", "oracle", "rotate_keys"]
    ensure_compatible(fresh(folder), backend="rotate_keys")
    ensure_compatible(fresh(folder))
    assert len(calls) == 4 and len(saved(cache)) == 2


def test_a_failing_proof_is_not_remembered(cache, folder, monkeypatch):
    monkeypatch.setattr(proof_mod, "prove", lambda *a, **k: 1.0)
    for _ in range(2):
        with pytest.raises(CompatibilityError, match="compatibility proof failed"):
            ensure_compatible(fresh(folder))
    assert saved(cache) == []


@pytest.mark.parametrize("damage", ["not json", "a list", "another key", "error above tolerance",
                                    "a backend missing", "another pairing"])
def test_a_bad_record_proves_again_without_error(cache, folder, calls, damage):
    ensure_compatible(fresh(folder))
    [path] = saved(cache)
    record = json.loads(path.read_text())
    if damage == "not json":
        path.write_text('{"key": "trunc')
    elif damage == "a list":
        path.write_text("[]")
    else:
        if damage == "another key":
            record["key"] = "0" * 64
        elif damage == "error above tolerance":
            record["errors"]["rotate_queries"] = 10 * record["tolerance"]
        elif damage == "a backend missing":
            del record["errors"]["oracle"]
        else:
            record["convention"] = "interleaved" if record["convention"] == "half" else "half"
        path.write_text(json.dumps(record))
    model = fresh(folder)
    ensure_compatible(model)
    assert calls == ["oracle", "rotate_queries"] * 2 and not proof_of(model).reused
    assert json.loads(path.read_text())["key"] == path.stem  # rewritten by the passed proof


def test_the_environment_switch_turns_remembering_off(cache, folder, calls, monkeypatch):
    ensure_compatible(fresh(folder))
    monkeypatch.setenv(PROOF_CACHE_ENV, "0")
    model = fresh(folder)
    ensure_compatible(model)
    assert calls == ["oracle", "rotate_queries"] * 2 and not proof_of(model).reused
    assert record_key(model, "rotate_queries") is None


def test_a_model_built_in_memory_is_never_remembered(cache, calls):
    model = tiny_model("llama", seed=5)
    assert record_key(model, "rotate_queries") is None
    ensure_compatible(model)
    assert calls == ["oracle", "rotate_queries"] and saved(cache) == []


def test_a_folder_without_weight_files_is_never_remembered(cache, folder, calls):
    model = fresh(folder)
    for path in folder.glob("*.safetensors"):
        path.unlink()
    assert record_key(model, "rotate_queries") is None
    ensure_compatible(model)
    assert saved(cache) == []


def test_an_unwritable_cache_warns_once_and_runs(tmp_path, folder, calls, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("HOGWILD_CACHE_DIR", str(blocker / "cache"))  # under a file: cannot be created
    monkeypatch.delenv(PROOF_CACHE_ENV, raising=False)
    monkeypatch.setattr(proof_mod, "_WARNED", [])
    with pytest.warns(UserWarning, match="could not remember the compatibility proof"):
        ensure_compatible(fresh(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ensure_compatible(fresh(folder))  # proven again, silently
    assert calls == ["oracle", "rotate_queries"] * 2


def test_the_cache_root_is_shared_with_the_converted_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HOGWILD_CACHE_DIR", str(tmp_path / "h"))
    assert records.cache_root() == tmp_path / "h" and converted_dir().parent == tmp_path / "h"
    monkeypatch.delenv("HOGWILD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert records.cache_root() == tmp_path / "x" / "hogwild_ref" and converted_dir().parent == records.cache_root()
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert records.cache_root() == Path.home() / ".cache" / "hogwild_ref"


def test_records_are_written_whole_and_bad_ones_read_as_none(tmp_path):
    path = tmp_path / "r" / "x.json"
    assert records.read_record(path) is None
    assert records.write_record(path, {"a": [1, 2.5]}) and records.read_record(path) == {"a": [1, 2.5]}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temporary file left
    assert not records.write_record(path, {"a": object()}) and records.read_record(path) == {"a": [1, 2.5]}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]
    assert records.digest({"b": 1, "a": 2}) == records.digest({"a": 2, "b": 1})
