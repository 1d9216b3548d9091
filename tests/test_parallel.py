"""Past one device (Spec §11.8): layers spread over devices in one process, tensor parallel over processes.

No test machine here has two accelerators, so

* the ``device_map`` path is forced on the CPU: the layers report two device keys (``cpu`` and ``cpu:0``,
  distinct keys to torch, the same memory), so every per-device structure (stores, plan copies, decode
  buffers) exists twice and a copy missed or made per layer shows; the tokens and logits must equal the
  one-device run's exactly (the same arithmetic);
* tensor parallelism runs for real under ``torchrun`` with gloo on the CPU (2 processes, transformers'
  ``tp_plan="auto"``): tokens equal the one-process run's, logits within the engine's tolerance (the
  all-reduce sums in another order).

The embedded model over 3 processes (9 query heads, 3 K/V heads) is a manual check (docs/multi-device.md):
it takes about a minute on two cores.
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hogwild_ref.forward as forward_mod
from hogwild_ref.engine import Engine
from hogwild_ref.events import FlushEvent
from hogwild_ref.fast import DecodeBuffers, LayerInputs
from hogwild_ref.forward import Forward
from hogwild_ref.models import load, tiny_config, tiny_model
from hogwild_ref.parallel import check_compile, check_tensor_parallel, local_kv_heads
from hogwild_ref.plan import TickPlan
from hogwild_ref.scheduler import SchedulerConfig

HERE = Path(__file__).parent
SRC = HERE.parent / "src"
#: relative logit tolerance of the engine against itself (tests/test_engine.py's LOGIT_RTOL)
LOGIT_RTOL = 1e-4


def _char_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ["<unk>", "<eos>"] + sorted(set(string.printable))
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def _tiny(family: str, layers: int = 2):
    """A tiny random model whose greedy tokens vary (weights of std 0.2; at 0.08 they repeat one token)."""
    model = tiny_model(family, seed=2, vocab_size=128, num_hidden_layers=layers)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Tiny llama and qwen3 with a character tokenizer, saved for the subprocesses."""
    root = tmp_path_factory.mktemp("tiny-tp")
    tok = _char_tokenizer()
    paths = []
    for family in ("llama", "qwen3"):
        path = root / family
        _tiny(family).save_pretrained(path)
        tok.save_pretrained(path)
        paths.append(path)
    return paths


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def _torchrun(n: int, *args: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=HERE)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ---------------------------------------------------------------------- device_map (one process)
def _run(model, tok, **kwargs):
    """W = 4, combined, greedy, a step every 6 characters (flushes), a snapshot at tick 5, the finisher after 10 ticks."""
    sched = SchedulerConfig(max_ticks=10, boundary=lambda text: len(text) >= 6, collab_every=None, snapshot_ticks=(5,),
                            eos_token_ids=frozenset())
    engine = Engine(model, tok, workers=4, layout="combined", backend="fast", scheduler=sched, record_logits=True,
                    finisher=True, finisher_tokens=6, **kwargs)
    flushes = sum(isinstance(ev, FlushEvent) for ev in engine.stream("Add 2 and 3."))
    assert engine.result is not None
    return engine.result, flushes


def test_device_map_keeps_each_layer_on_its_device_and_copies_the_plan_once_per_device(monkeypatch, tmp_path):
    monkeypatch.setenv("HOGWILD_PROOF_CACHE", "0")  # the spread model is proven here, not remembered from `one`
    tok = _char_tokenizer()
    _tiny("llama", layers=4).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    one, tok = load(str(tmp_path))
    reference, ref_flushes = _run(one, tok, pack_weights=False)  # spread layers run unpacked: the same arithmetic
    assert ref_flushes >= 2

    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu",
                  **{f"model.layers.{i}": "cpu" for i in range(4)}}
    spread, tok = load(str(tmp_path), device_map=device_map)
    assert {p.device for p in spread.parameters()} == {torch.device("cpu")}  # transformers placed it (one device here)
    # the layers report two devices: layers 0-1 on "cpu", 2-3 on "cpu:0" (another key, the same memory)
    fake = [torch.device("cpu")] * 2 + [torch.device("cpu", 0)] * 2
    monkeypatch.setattr(forward_mod, "layer_devices", lambda model: list(fake))
    copies = {"plan": 0, "buffers": 0, "extend": 0}
    to, load_buffers, call, storage = TickPlan.to, DecodeBuffers.load, Forward.__call__, Forward.storage
    extend_to = LayerInputs.to

    def extend_to_device(inputs, device):
        copies["extend"] += 1
        return extend_to(inputs, device)

    def plan_to(self, device):
        copies["plan"] += 1
        return to(self, device)

    def buffers_load(self, plan):
        copies["buffers"] += 1
        return load_buffers(self, plan)

    per_tick: list[tuple[str, int]] = []
    storages = []

    def counted_call(self, st, rows, feeds, logits=True):
        before = dict(copies)
        out = call(self, st, rows, feeds, logits)
        kind = _last_kind(self)
        # a general tick plans on the home device (one copy) and copies to the others; a one-token tick loads
        # its host plan into each device's buffers; an extend tick moves its host plan's inputs to each device
        made = ((copies["buffers"] - before["buffers"]) if kind == "decode" else
                (copies["extend"] - before["extend"]) if kind == "extend" else 1 + copies["plan"] - before["plan"])
        per_tick.append((kind, made))
        return out

    def recorded_storage(self, *args, **kwargs):
        st = storage(self, *args, **kwargs)
        storages.append(st)
        return st

    monkeypatch.setattr(TickPlan, "to", plan_to)
    monkeypatch.setattr(DecodeBuffers, "load", buffers_load)
    monkeypatch.setattr(LayerInputs, "to", extend_to_device)
    monkeypatch.setattr(Forward, "__call__", counted_call)
    monkeypatch.setattr(Forward, "storage", recorded_storage)
    result, flushes = _run(spread, tok)

    # the proof ran with the map in place: its storage (the first) is spread too
    assert len(storages) >= 2
    for st in storages:
        assert [s.device for s in st.stores] == fake
        assert st.devices == [torch.device("cpu"), torch.device("cpu", 0)]
    run_storage = [st for st in storages if st.table.workers == 4][-1]  # not the shared prompt prefix's (Spec §4.4)
    assert set(run_storage.decode_buffers) == {torch.device("cpu"), torch.device("cpu", 0)}
    kinds = {k for k, _ in per_tick}
    assert {"general", "prefill", "decode", "extend"} <= kinds
    # the host plan is copied once per device per tick: 2 devices, 4 layers
    assert all(made == 2 for _, made in per_tick), per_tick
    assert flushes == ref_flushes
    assert [w.tokens for w in result.workers] == [w.tokens for w in reference.workers]
    assert result.logits is not None and reference.logits is not None
    for a, b in zip(result.logits, reference.logits, strict=True):
        assert torch.equal(a, b)


def _last_kind(forward: Forward) -> str:
    """The kind of the tick the forward step served last (its ``kinds`` counter grew there)."""
    last = getattr(forward, "_seen_kinds", {})
    grown = [k for k, n in forward.kinds.items() if n != last.get(k, 0)]
    forward._seen_kinds = dict(forward.kinds)  # type: ignore[attr-defined]
    assert len(grown) == 1
    return grown[0]


# ---------------------------------------------------------------------- refusals
def test_tensor_parallel_refusals_name_the_reason():
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="no tensor-parallel plan"):
        check_tensor_parallel(GPT2Config(), 2)
    smol = tiny_config("llama", num_attention_heads=9, num_key_value_heads=3, hidden_size=72)
    with pytest.raises(ValueError, match="3 key/value heads, which do not divide among 2 processes.*1 or 3"):
        check_tensor_parallel(smol, 2)
    check_tensor_parallel(smol, 3)  # whole heads on every rank
    with pytest.raises(ValueError, match="2 key/value heads, which do not divide among 4"):
        check_tensor_parallel(tiny_config("llama", num_attention_heads=6, num_key_value_heads=2, hidden_size=96), 4)


def test_a_plan_that_gathers_the_heads_back_is_refused_from_the_config():
    """phi3's plan splits its fused qkv projection and gathers it back (``colwise_gather_output``): every
    rank then holds every head, and the run failed after the weights loaded with a message about the
    config's head count (a multi-device review). It is refused from the config, naming the style."""
    config = tiny_config("phi3", num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(ValueError, match=r"phi3's tensor-parallel plan does not split its attention heads .*"
                                         r"\(colwise_gather_output\).*--device-map auto"):
        check_tensor_parallel(config, 2)


def test_compile_and_packing_are_refused_past_one_device():
    model = tiny_model("llama")
    cpu = [torch.device("cpu")] * 2
    spread = [torch.device("cpu"), torch.device("cpu", 0)]
    assert check_compile(model, cpu, None, None) == (None, None)  # one device: the defaults stand
    assert check_compile(model, spread, None, None) == (False, False)
    with pytest.raises(ValueError, match="compiled step does not support layers spread over 2 devices"):
        check_compile(model, spread, True, None)
    with pytest.raises(ValueError, match="packed CPU weights do not support"):
        check_compile(model, spread, None, True)
    model._tp_size = 2  # what transformers sets on a tensor-parallel model
    assert local_kv_heads(model) == 1
    with pytest.raises(ValueError, match="tensor parallel over 2 processes"):
        Engine(model, None, workers=2, max_ticks=2, compile=True)


def test_placement_flags_are_checked_before_loading(capsys):
    from hogwild_ref.cli import main

    assert main(["generate", "--device", "cpu", "--device-map", "auto"]) == 2
    assert "--device and --device-map both place the model" in capsys.readouterr().err
    assert main(["generate", "--device-map", "{not json"]) == 2
    assert "JSON object of module name -> device" in capsys.readouterr().err
    with pytest.raises(ValueError, match="give one of them"):
        load("x", device_map="auto", tp_plan="auto")
    with pytest.raises(ValueError, match="use tp_plan='auto'"):
        load("x", tp_plan="colwise")


def test_tp_plan_in_one_process_says_that_nothing_is_split(monkeypatch, capsys):
    """Found by a newcomer: ``--tp-plan auto`` without torchrun ran silently in one process."""
    from hogwild_ref.cli import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr("hogwild_ref.models.load_default", lambda *a, **k: pytest.fail("loaded"))
    monkeypatch.setattr("hogwild_ref.cli.generate._load", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stop")))
    main(["generate", "--tp-plan", "auto", "--json", "--max-ticks", "2"])
    err = capsys.readouterr().err
    assert "note: --tp-plan splits the model over the processes of a torchrun launch, and this is one process" in err


def test_embedded_model_over_two_processes_is_refused_before_loading(monkeypatch, capsys):
    """What each rank of ``torchrun --nproc-per-node 2`` sees (WORLD_SIZE=2): the refusal, from the config
    (the GGUF's, or the session's converted copy when made), before any weight loads."""
    from hogwild_ref.cli import main

    loaded = []
    monkeypatch.setattr("hogwild_ref.models.load_default", lambda *a, **k: loaded.append(k))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["generate", "--tp-plan", "auto", "--json", "--max-ticks", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not loaded
    assert captured.err == ("error: llama has 3 key/value heads, which do not divide among 2 processes: each rank "
                            "must hold whole heads; use --nproc-per-node 1 or 3, or spread the layers with "
                            "--device-map auto\n")


# ---------------------------------------------------------------------- tensor parallel (torchrun, gloo)
def test_tensor_parallel_two_processes_give_the_one_process_tokens(tiny_dirs, tmp_path):
    out = tmp_path / "tp.json"
    proc = _torchrun(2, str(HERE / "tp_worker.py"), str(out), "--tp-plan", "auto", *map(str, tiny_dirs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    tp = json.loads(out.read_text())
    rank1 = json.loads((tmp_path / "tp.json.rank1").read_text())
    for path in tiny_dirs:
        model, tok = load(str(path))
        reference, flushes = _run(model, tok)
        got = tp[path.name]
        assert flushes >= 2 and got["flushes"] == flushes
        assert got["reason"] == reference.reason == "budget"
        assert got["tokens"] == [w.tokens for w in reference.workers]
        assert len(got["tokens"][0]) == 10 + 6  # the finisher decoded for worker 0
        assert rank1[path.name]["tokens"] == got["tokens"]
        snaps = [[s.tick, s.history_text, list(s.current_texts)] for s in reference.snapshots]
        assert len(snaps) == 1 and got["snapshots"] == snaps == rank1[path.name]["snapshots"]
        # storage sized by the local K/V heads: 2 heads over 2 ranks, one per rank, in every layer
        assert got["kv_heads"] and all(heads == [1, 1] for heads in got["kv_heads"])
        assert reference.logits is not None
        assert len(got["logits"]) == len(reference.logits)
        for a, b in zip(got["logits"], reference.logits, strict=True):
            assert _rel(torch.tensor(a), b) <= LOGIT_RTOL


def test_cli_under_torchrun_prints_once_and_matches_one_process(tiny_dirs):
    path = tiny_dirs[1]  # qwen3
    args = ["generate", "Add 2 and 3.", "--model", str(path), "--workers", "4", "--max-ticks", "8",
            "--prompts", "compact", "--json", "--threads", "1"]
    proc = _torchrun(2, "-m", "hogwild_ref", *args, "--tp-plan", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # rank 0 prints, rank 1 does not
    got = json.loads(lines[0])
    from hogwild_ref.engine import generate
    from hogwild_ref.prompts import PRESETS

    model, tok = load(str(path))
    ref = generate(model, tok, "Add 2 and 3.", workers=4, max_ticks=8, templates=PRESETS["compact"]())
    assert [w["tokens"] for w in got["workers"]] == [w.tokens for w in ref.workers]


def test_an_interrupted_tensor_parallel_run_prints_its_partial_result_once(capsys, monkeypatch, smollm_tokenizer):
    """Ctrl-C under ``torchrun ... generate --json --tp-plan auto`` printed the partial JSON once per rank
    (a multi-device review); rank 0 prints, as for a finished run, and every rank ends with 130."""
    import hogwild_ref.engine
    import hogwild_ref.models
    from hogwild_ref.cli import main
    from hogwild_ref.events import GenerationInterrupted, HogwildResult

    partial = HogwildResult(model="m", layout="combined", backend="fast", workers=[], history_text="", answer=None,
                            reason="interrupted", ticks=3, seconds=0.1, prefill_seconds=0.0)

    def interrupted(*args, **kwargs):
        raise GenerationInterrupted(partial)

    model = tiny_model("llama", vocab_size=len(smollm_tokenizer))
    monkeypatch.setattr(hogwild_ref.models, "load", lambda *a, **k: (model, smollm_tokenizer))
    monkeypatch.setattr(hogwild_ref.engine, "generate", interrupted)
    for rank, printed in (("1", 0), ("0", 1)):
        monkeypatch.setenv("RANK", rank)
        assert main(["generate", "x", "--json", "--device", "cpu", "--threads", "1"]) == 130
        out = capsys.readouterr().out
        assert len([line for line in out.splitlines() if line.startswith("{")]) == printed, (rank, out)
