"""The ``hogwild-ref generate`` command line (Spec §11).

The CLI runs in-process (``hogwild_ref.cli.main``) with the session's embedded SmolLM2: the
loader is replaced by a spy that records what the CLI asked for and returns the already-loaded
model, so no test pays for a second load. Budgets are small (``--max-ticks 12``).
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter

import jsonschema
import pytest
import torch

import hogwild_ref
import hogwild_ref.models
from hogwild_ref.cli import main

PROBLEM = "What is 2 + 3? Give the answer in \\boxed{}."
MAX_STEPS = 12
#: worker names, Spec §7.2: Alice, Bob, Carol, Dave, ...
NAMES = ["Alice", "Bob", "Carol", "Dave"]
SENTINEL = "QQSENTINELQQ"

RESULT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["model", "layout", "backend", "ticks", "seconds", "prefill_seconds", "history_text", "answer",
                 "workers", "settings", "snapshots"],
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "layout": {"enum": ["contiguous", "interleaved", "combined"]},
        "backend": {"enum": ["fast", "rotate_queries", "rotate_keys", "oracle"]},
        "ticks": {"type": "integer", "minimum": 0},
        "seconds": {"type": "number", "minimum": 0},
        "history_text": {"type": "string"},
        "answer": {"type": ["string", "null"]},
        "reason": {"enum": ["boxed", "eos", "budget", "finisher", "interrupted", None]},
        "prefill_seconds": {"type": "number", "minimum": 0},
        "settings": {"type": "object", "required": ["workers", "layout", "backend", "max_ticks", "seed", "sampling", "prompts"]},
        "snapshots": {"type": "array"},
        "workers": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "text", "tokens", "view_tokens", "generated_positions"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "text": {"type": "string"},
                    "tokens": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "view_tokens": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "generated_positions": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                },
            },
        },
    },
}


@pytest.fixture
def loader_spy(monkeypatch, smollm):
    """Replace ``hogwild_ref.models.load`` (what ``cli._load`` calls) with a recorder returning ``smollm``."""
    calls: list[tuple] = []

    def fake_load(name_or_path=None, dtype=torch.float32, device="cpu"):
        calls.append((name_or_path, dtype, str(device)))
        return smollm

    monkeypatch.setattr(hogwild_ref.models, "load", fake_load)
    return calls


def _chat_start(tokenizer) -> str:
    """Text the chat template puts before the first user message (computed from the tokenizer itself)."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": SENTINEL}], tokenize=False, add_generation_prompt=True
    )
    start = rendered[: rendered.index(SENTINEL)]
    assert start, "the embedded tokenizer's chat template should put a header before the user content"
    return start


def _check_result(d: dict, *, workers: int, layout: str, tokenizer, eos: int | None) -> None:
    """Structural and semantic checks of one ``--json`` object, against the layout definitions."""
    jsonschema.Draft202012Validator.check_schema(RESULT_SCHEMA)
    jsonschema.Draft202012Validator(RESULT_SCHEMA).validate(d)
    assert d["layout"] == layout
    assert d["backend"] == "fast"  # the CLI default
    assert [w["name"] for w in d["workers"]] == NAMES[:workers]

    # --no-finisher: the run ends at the budget, or earlier with a stated reason
    ticks = d["ticks"]
    if ticks == MAX_STEPS:
        assert d["reason"] in ("budget", "boxed", "eos")
    else:
        assert 1 <= ticks < MAX_STEPS, ticks
        assert d["reason"] in ("boxed", "eos"), d["reason"]

    vocab = len(tokenizer)
    chat_start = _chat_start(tokenizer)
    fed: list[list[int]] = []  # per worker, the sampled tokens that were fed back (all but the last)
    for w in d["workers"]:
        toks = w["tokens"]
        # one sample per tick while active; every tick when nobody stopped
        assert 1 <= len(toks) <= ticks
        if d["reason"] == "budget" and eos not in toks:
            assert len(toks) == ticks
        assert all(0 <= t < vocab for t in toks)
        assert all(0 <= t < vocab for t in w["view_tokens"])
        fed.append([t for t in toks[:-1] if t != eos])

        gp = w["generated_positions"]
        assert gp == sorted(set(gp)), "generated positions must be distinct and increasing"
        assert all(0 <= i < len(w["view_tokens"]) for i in gp)

        view_text = tokenizer.decode(w["view_tokens"], skip_special_tokens=False)
        assert view_text.startswith(chat_start), view_text[:120]
        assert PROBLEM in view_text
        assert w["name"] in w["text"]

    all_fed = Counter(t for f in fed for t in f)
    for k, w in enumerate(d["workers"]):
        gen = [w["view_tokens"][i] for i in w["generated_positions"]]
        # every generated token of a view was sampled by some worker; a worker sees all its own fed tokens
        assert not Counter(gen) - all_fed
        assert not Counter(fed[k]) - Counter(gen)
        if layout in ("combined", "contiguous"):
            # every worker's output is in every view (Spec §4.3: history + all current steps; §4.1: all outputs)
            assert Counter(gen) == all_fed
        if layout == "contiguous":
            # [prompt, out_j for j != w ascending, out_w]
            expected = [t for j in range(workers) if j != k for t in fed[j]] + fed[k]
            assert gen == expected


def _single_json(out: str) -> dict:
    obj, end = json.JSONDecoder().raw_decode(out.lstrip())
    assert out.lstrip()[end:].strip() == "", "stdout must hold exactly one JSON object"
    assert isinstance(obj, dict)
    return obj


def test_generate_json_combined_three_workers(capsys, loader_spy, smollm):
    _, tokenizer = smollm
    rc = main(["generate", PROBLEM, "--json", "--workers", "3", "--max-ticks", str(MAX_STEPS), "--no-finisher",
               "--layout", "combined", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    # the CLI asked for the embedded default in float32 on the requested device
    assert loader_spy == [(None, torch.float32, "cpu")]
    d = _single_json(out)
    _check_result(d, workers=3, layout="combined", tokenizer=tokenizer, eos=tokenizer.eos_token_id)
    assert "SmolLM2" in d["model"]


def test_generate_live_view_without_tty(capsys, loader_spy):
    rc = main(["generate", PROBLEM, "--workers", "2", "--max-ticks", str(MAX_STEPS), "--no-finisher",
               "--layout", "interleaved", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert len(loader_spy) == 1
    assert "Hogwild run" in out
    assert "ticks" in out
    assert "Alice" in out and "Bob" in out
    assert "interleaved" in out
    assert "stopped by" in out
    # the summary's ticks row carries a number within the budget
    m = re.search(r"\bticks\b\W+(\d+)\s*\W*$", out, re.MULTILINE)
    assert m is not None, out[-2000:]
    ticks = int(m.group(1))
    assert 1 <= ticks <= MAX_STEPS
    # the progress bar of the final frame agrees with the summary
    assert re.search(rf"\b{ticks}/{MAX_STEPS}\b", out), out[-2000:]
    # the live view printed no JSON
    assert not out.lstrip().startswith("{")


def test_the_live_view_leaves_the_end_of_sequence_token_out(smollm):
    """A newcomer's ``make demo``: both worker panels ended in ``<|im_end|>``, which no worker's text
    holds (Spec §6.4). The README's example, whose workers stop at EOS, through the live view."""
    from rich.console import Console

    from hogwild_ref.events import TokenEvent
    from hogwild_ref.live import LiveView
    from hogwild_ref.prompts import PromptTemplates

    model, tokenizer = smollm
    view = LiveView(Console(file=io.StringIO(), width=200), 2, 64, "What is 2 + 3?")
    events = []
    result = hogwild_ref.generate(model, tokenizer, "What is 2 + 3?", workers=2, layout="combined", max_ticks=64,
                                  templates=PromptTemplates.compact(), on_event=lambda e: (events.append(e), view.on_event(e)))
    assert result.reason == "eos"
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert [e.eos for e in tokens] == [e.token in {tokenizer.eos_token_id} for e in tokens]
    assert any(e.eos for e in tokens)
    eos_text = tokenizer.decode([tokenizer.eos_token_id])
    assert all(eos_text not in text for text in view.current), view.current
    assert any(text.endswith("= 5") for text in view.current), view.current  # the text up to the EOS is there


def test_generate_contiguous_library_json(smollm):
    """``--layout contiguous`` through the library: the same JSON object, round-tripped."""
    model, tokenizer = smollm
    result = hogwild_ref.generate(model, tokenizer, PROBLEM, workers=2, layout="contiguous", max_ticks=MAX_STEPS,
                                  finisher=False)
    d = json.loads(json.dumps(result.to_json_dict()))
    _check_result(d, workers=2, layout="contiguous", tokenizer=tokenizer, eos=tokenizer.eos_token_id)
    assert d["history_text"] == ""  # contiguous: no steps, nothing is flushed


@pytest.mark.parametrize("flag,value", [("--workers", "0"), ("--workers", "-2"), ("--max-ticks", "-1"),
                                        ("--max-ticks", "-5")])
def test_bad_numbers_exit_2_naming_the_flag(capsys, no_loading, flag, value):
    rc = main(["generate", "x", flag, value, "--json"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert flag in err
    assert out == ""


@pytest.mark.parametrize("args,word", [(["--temperature", "-1"], "--temperature"), (["--top-p", "1.5"], "--top-p"),
                                       (["--top-k", "0"], "--top-k")])
def test_bad_sampling_settings_exit_2(capsys, no_loading, args, word):
    """Refused before the model loads (issue 9), naming the flag."""
    rc = main(["generate", "x", "--json", "--max-ticks", "2", "--device", "cpu", *args])
    out, err = capsys.readouterr()
    assert rc == 2
    assert any(line.startswith("error:") and word in line for line in err.splitlines()), err
    assert out == ""


def test_unknown_layout_is_an_argparse_error(capsys, no_loading):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "x", "--layout", "diagonal"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--layout" in err and "diagonal" in err


def test_missing_subcommand_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


def test_every_command_prints_a_warning_as_one_line(capsys, monkeypatch):
    """A library warning during any command (here: eval's packing giving way to memory, raised from
    inside the command) reaches stderr as ``warning: <message>``, not Python's file:line form."""
    import warnings

    from hogwild_ref import cli

    def handler(args):
        warnings.warn("not packing the linear weights: a test", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setitem(cli.main.__globals__, "cmd_eval", handler)
    assert main(["eval", "--limit", "1"]) == 0
    assert capsys.readouterr().err == "warning: not packing the linear weights: a test\n"


def test_bench_ticks_prints_its_table_whole_into_a_file(capsys, monkeypatch):
    """Written to a file or a pipe (not a terminal), the wide ``bench ticks`` table keeps every header
    and cell whole, where rich's default 80 columns cut them to an ellipsis."""
    import hogwild_ref.bench

    tiny = hogwild_ref.models.tiny_model("llama", seed=0, vocab_size=256)
    monkeypatch.setattr(hogwild_ref.bench, "random_model", lambda name, dtype, device: tiny)
    rc = main(["bench", "ticks", "--ctx", "32", "--workers", "2", "--problems", "2", "--steps", "1", "--threads", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "…" not in out
    for header in ("P runs alone", "batch/alone", "compiled HF step", "ratio (compiled)", "tick/floor", "peak mem"):
        assert header in out, header
    assert re.search(r"│ +32 │ 2 │ 2 │", out), out


def test_eval_from_the_library_and_from_the_command_line_share_every_default(tmp_path, monkeypatch):
    """``EvalConfig()`` (the library) and ``hogwild-ref eval`` with no options describe the same
    evaluation: the library's default backend was once the general ``rotate_queries`` path while the
    command's was ``fast``, so the same evaluation ran several times slower from Python."""
    import dataclasses

    import hogwild_ref.cli.eval as cli_eval
    import hogwild_ref.evaluation as evaluation
    from hogwild_ref.evaluation import EvalConfig

    seen = []

    def stop(model, tokenizer, cfg, out, **kwargs):
        seen.append(cfg)
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "run_eval", stop)
    monkeypatch.setattr(cli_eval, "_load", lambda args: (None, None))
    main(["eval", "--out", str(tmp_path / "out")])
    assert len(seen) == 1
    library = EvalConfig()
    for f in dataclasses.fields(EvalConfig):
        if f.name != "model":  # the command names the checkpoint and dtype it loaded
            assert getattr(seen[0], f.name) == getattr(library, f.name), f.name


def test_bench_all_interrupted_during_the_engine_keeps_the_attention_results(capsys, monkeypatch):
    """Ctrl-C (or SIGTERM) in ``bench all`` after the attention part finished: its results are printed
    (``--json``: the one object, marked interrupted), then ``interrupted``, exit 130."""
    import hogwild_ref.bench as bench
    import hogwild_ref.cli.bench as cli_bench

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "bench_attention", lambda *a, on_result, **k: on_result("measured"))
    monkeypatch.setattr(bench, "as_rows", lambda results: [{"case": r} for r in results])
    monkeypatch.setattr(bench, "bench_engine", stop)
    monkeypatch.setattr(cli_bench, "_load", lambda args: (None, None))
    assert main(["bench", "all", "--json", "--threads", "1"]) == 130
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert data["results"] == [{"bench": "attention", "dtype": "float32", "case": "measured"}] and data["interrupted"] is True
    assert err.strip().splitlines()[-1] == "interrupted"


@pytest.mark.parametrize("message, line", [
    ("Couldn't instantiate the backend tokenizer from one of:\n(1) a serialization file,\n(2) a slow tokenizer\n"
     "You need to have sentencepiece installed.",
     "error: Couldn't instantiate the backend tokenizer from one of: (1) a serialization file,; (2) a slow tokenizer; "
     "You need to have sentencepiece installed."),
    ("first line\nsecond line", "error: first line"),
])
def test_an_error_whose_first_line_announces_a_list_keeps_the_list(capsys, monkeypatch, message, line):
    """transformers' tokenizer error is a first line ending with a colon and the reasons below it: the
    one-line error once kept only "...from one of:" (a newcomer's report); other messages keep their first line."""
    import hogwild_ref.cli as cli

    def broken(args):
        raise ValueError(message)

    monkeypatch.setattr(cli, "cmd_generate", broken)
    assert main(["generate", "x"]) == 2
    assert capsys.readouterr().err.strip() == line


@pytest.mark.parametrize("as_json", [True, False])
def test_bench_ticks_interrupted_keeps_the_cases_measured(capsys, monkeypatch, as_json):
    """Ctrl-C in ``bench ticks`` after the first case: that case is printed (a JSON line as it is
    measured with --json, the table without), then ``interrupted``, exit 130."""
    import hogwild_ref.bench as bench

    real = bench._time_problems
    calls = [0]

    def second_interrupts(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "_time_problems", second_interrupts)
    argv = ["bench", "ticks", "--ctx", "32", "--workers", "1", "2", "--steps", "1", "--threads", "1", "--compile", "no"]
    assert main(argv + (["--json"] if as_json else [])) == 130
    out, err = capsys.readouterr()
    if as_json:
        lines = out.strip().splitlines()
        assert len(lines) == 1 and json.loads(lines[0])["workers"] == 1
    else:
        assert re.search(r"│ +32 │ 1 │", out) and not re.search(r"│ +32 │ 2 │", out), out
    assert err.strip().splitlines()[-1] == "interrupted"


def test_the_live_summary_prints_answers_as_text_not_markup(smollm):
    """An answer such as ``[/]`` made rich raise MarkupError after the run (a traceback, no summary), and
    ``[x, y]`` printed as an empty cell: the summary's values are plain text."""
    import dataclasses

    from rich.console import Console

    from hogwild_ref.live import LiveView
    from hogwild_ref.scheduler import Snapshot

    model, tokenizer = smollm
    result = hogwild_ref.generate(model, tokenizer, "What is 2 + 3?", workers=2, layout="combined", max_ticks=2,
                                  finisher=False)
    for answer in ("[/]", "[x, y]", r"\frac{[k]}{2}", "[bold]5[/bold]"):
        out = io.StringIO()
        view = LiveView(Console(file=out, width=200), 2, 2, "What is 2 + 3?")
        view.summary(dataclasses.replace(result, answer=answer, model="m[/]",
                                         snapshots=[Snapshot(1, "", ("", ""), answer)]))
        printed = out.getvalue()
        assert printed.count(f"│ {answer} ") == 2 and "│ m[/] " in printed, printed  # the answer, the snapshot's
