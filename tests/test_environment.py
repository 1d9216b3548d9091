"""What users' machines do to the commands: streams that cannot carry Unicode, a reader that closes the
pipe early, a closed stdout, file names that are not UTF-8, and the converted-model cache (an empty
``HOME``, a relative ``XDG_CACHE_HOME``, a copy damaged on disk, a disk that fills while it is written).

Each case is what a command or the library does there, checked from outside: exit statuses and what the
streams carry (subprocesses), or the files and warnings the library leaves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from hogwild_ref import records
from hogwild_ref.models import tiny_model

ROOT = Path(__file__).resolve().parent.parent
CONFORM_ROPE = [sys.executable, "-m", "hogwild_ref", "conform", "--level", "rope"]  # 14 vectors, no model


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "COLUMNS")}
    return env | {"PYTHONPATH": str(ROOT / "src")} | extra


# ---------------------------------------------------------------------- streams
def test_an_ascii_only_stdout_gets_escapes_instead_of_an_error():
    """``PYTHONIOENCODING=ascii`` (or an ASCII locale): the help and the conformance table, whose texts
    carry "§" and box drawing, are written whole with escapes, and the statuses are the commands' own."""
    env = _env(PYTHONIOENCODING="ascii")
    helped = subprocess.run([sys.executable, "-m", "hogwild_ref", "generate", "--help"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert helped.returncode == 0, helped.stderr
    assert "\\xa7" in helped.stdout and "Traceback" not in helped.stderr  # "§" as an escape
    table = subprocess.run(CONFORM_ROPE, capture_output=True, text=True, env=env, timeout=300)
    assert table.returncode == 0, table.stderr
    assert "14 passed, 0 failed" in table.stdout and "Spec \\xa710.1" in table.stdout


def test_a_table_into_a_pipe_closed_early_ends_with_141():
    """``hogwild-ref conform | head`` where the reader has gone: status 141 (128 + SIGPIPE), as ``--json``
    gives, not rich's 1, which ``conform`` uses for a failed vector."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(CONFORM_ROPE, stdout=write, stderr=subprocess.PIPE, text=True, env=_env(), timeout=300)
    finally:
        os.close(write)
    assert done.returncode == 128 + signal.SIGPIPE, done.stderr
    assert "Traceback" not in done.stderr


def test_a_closed_stdout_is_refused_in_one_line():
    """``hogwild-ref ... >&-``: Python has no stdout, and every result would be lost silently."""
    done = subprocess.run(["sh", "-c", 'exec "$0" "$@" >&-', *CONFORM_ROPE], stderr=subprocess.PIPE, text=True,
                          env=_env(), timeout=120)
    assert done.returncode == 2
    assert done.stderr == "error: stdout is closed; redirect it to a file or to /dev/null\n"


def test_the_conversion_bar_of_transformers_stays_out_of_stderr():
    """transformers' GGUF loader draws its own tqdm bar; the commands show their own progress, so a
    redirected stderr does not fill with its carriage returns (tqdm reads its settings when imported: a
    fresh process)."""
    script = """if True:
        import sys
        import hogwild_ref.cli as cli

        def converts(args):
            from tqdm.auto import tqdm

            for _ in tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
                pass
            return 0

        cli.cmd_generate = converts
        sys.exit(cli.main(["generate", "x"]))
    """
    env = {k: v for k, v in _env().items() if k != "TQDM_DISABLE"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


# ---------------------------------------------------------------------- file names
def test_a_dataset_file_name_that_is_not_utf8_gets_a_summary(smollm_tokenizer, tmp_path):
    """A dataset whose file name holds a byte that is not UTF-8 (Python reads it as a lone surrogate): the
    rows, the summary and the plot are all written, the name shown with an escape."""
    from hogwild_ref.evaluation import EvalConfig, run_eval

    name = os.fsdecode(b"probl\xe8mes.jsonl")
    path = tmp_path / name
    path.write_text(json.dumps({"problem": "What is 2 + 3?", "answer": "5"}) + "\n", encoding="utf-8")
    model = tiny_model("llama", seed=11, vocab_size=len(smollm_tokenizer))
    cfg = EvalConfig(dataset=str(path), workers=(1,), budgets=(2,), self_consistency=False, prompts="compact",
                     finisher_tokens=2)
    report = run_eval(model, smollm_tokenizer, cfg, tmp_path / "out", progress=False)
    assert len(report.rows) == 1 and report.rows[0]["error"] is None
    assert "probl\\udce8mes.jsonl" in report.files["summary_md"].read_text(encoding="utf-8")
    assert json.loads(report.files["summary_json"].read_text())["title"].startswith(str(tmp_path))
    assert report.files["png"].read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------- the cache folder
def test_the_cache_never_lands_in_the_current_folder(monkeypatch, tmp_path):
    """An empty ``HOME`` counts as unset, and a relative ``XDG_CACHE_HOME`` is ignored (the XDG base
    directory specification): either way the cache is an absolute path under the user's home."""
    import pwd

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HOGWILD_CACHE_DIR", raising=False)
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    monkeypatch.setenv("HOME", "")
    assert records.cache_root() == home / ".cache" / "hogwild_ref"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert records.cache_root() == tmp_path / "h" / ".cache" / "hogwild_ref"


@pytest.fixture
def cached_copy(smollm_tokenizer, tmp_path, monkeypatch):
    """A converted-model cache holding a tiny model, with the embedded model's conversion replaced by that
    tiny model (the same files as the real cache, in a second)."""
    import hogwild_ref.models as models

    model = tiny_model("llama", seed=2, vocab_size=len(smollm_tokenizer))
    cached = tmp_path / "cache" / "converted"
    monkeypatch.setattr(models, "converted_dir", lambda: cached)
    conversions: list[int] = []

    def convert():
        conversions.append(1)
        return tiny_model("llama", seed=2, vocab_size=len(smollm_tokenizer)), smollm_tokenizer

    monkeypatch.setattr(models, "_convert", convert)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        models.load_default()  # converts and caches
    assert conversions == [1] and (cached / "model.safetensors").is_file()
    return models, cached, conversions, model


@pytest.mark.parametrize("damage", ["weights cut short", "weights empty", "tokenizer cut short", "weights gone"])
def test_a_damaged_cache_is_converted_again(cached_copy, damage):
    models, cached, conversions, model = cached_copy
    weights, tokenizer = cached / "model.safetensors", cached / "tokenizer.json"
    if damage == "weights cut short":
        os.truncate(weights, weights.stat().st_size // 2)
    elif damage == "weights empty":
        os.truncate(weights, 0)
    elif damage == "tokenizer cut short":
        os.truncate(tokenizer, tokenizer.stat().st_size // 2)
    else:
        weights.unlink()
    assert models.cache_damage(cached) is not None
    with pytest.warns(UserWarning, match=f"the cached converted model in {cached} is damaged"):
        again, tok = models.load_default()
    assert conversions == [1, 1]
    assert models.cache_damage(cached) is None  # written again, whole
    for name, p in model.named_parameters():
        assert (p == dict(again.named_parameters())[name]).all(), name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        models.load_default()  # read from the repaired cache, silently
    assert conversions == [1, 1]


def test_a_failure_that_is_not_damage_is_raised_and_nothing_is_converted(cached_copy, monkeypatch):
    """A load from an intact cache that fails for another reason (memory, a device) is the caller's
    error: raised as it is, with no second conversion."""
    models, cached, conversions, _ = cached_copy

    def fails(*args):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(models, "_load_converted", fails)
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        models.load_default()
    assert conversions == [1] and models.cache_damage(cached) is None


def test_a_disk_that_fills_while_the_cache_is_written_costs_a_warning(cached_copy, monkeypatch):
    """safetensors reports a full disk as its own error, not an OSError; the run goes on with the
    converted model, which is not cached."""
    from safetensors import SafetensorError

    models, cached, conversions, _ = cached_copy
    monkeypatch.setattr(models, "converted_dir", lambda: cached.parent / "other")
    real = models._convert

    def convert_then_fill():
        model, tok = real()

        def full(*args, **kwargs):
            raise SafetensorError("Error while serializing: No space left on device (os error 28)")

        model.save_pretrained = full
        return model, tok

    monkeypatch.setattr(models, "_convert", convert_then_fill)
    with pytest.warns(UserWarning, match="could not cache the converted embedded model .*No space left"):
        model, _ = models.load_default()
    assert model is not None and not (cached.parent / "other").exists()


def test_a_damaged_cache_in_a_folder_that_cannot_change_is_said_and_a_placed_load_is_refused(cached_copy, monkeypatch):
    """A damaged copy in a read-only cache (a review of the repair): it cannot be removed, so every start
    converts again — said once a start — and a load with a device map, which must read the cached copy,
    is refused with the fix instead of failing on the damaged file."""
    import tempfile

    models, cached, conversions, _ = cached_copy
    os.truncate(cached / "model.safetensors", 1000)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(cached.parent))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        models.load_default()
    texts = [str(w.message) for w in said]
    assert any("is damaged" in t for t in texts) and any("could not remove the damaged copy" in t for t in texts), texts
    assert conversions == [1, 1]
    with pytest.raises(models.UnsupportedModelError, match="set HOGWILD_CACHE_DIR to a writable folder"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models.load_default(device_map="cpu")


def test_a_copy_another_process_moved_away_leaves_no_folder_behind(cached_copy):
    """Two processes repairing one damaged cache: the second finds it gone; nothing is left beside it."""
    models, cached, _, _ = cached_copy
    before = sorted(p.name for p in cached.parent.iterdir())
    models._discard(cached.parent / "gone")
    assert sorted(p.name for p in cached.parent.iterdir()) == before


def test_no_home_at_all_is_one_line_naming_the_fix(monkeypatch):
    import pwd

    def unknown(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.delenv("HOGWILD_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", "")
    monkeypatch.setattr(pwd, "getpwuid", unknown)
    with pytest.raises(RuntimeError, match="set HOGWILD_CACHE_DIR"):
        records.cache_root()
