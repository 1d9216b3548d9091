"""Bad input is refused before any model runs (Spec §11.7), Ctrl-C leaves the partial result, and the
CLI reports one line per problem with exit status 2 (issue 9).

The CLI cases run in-process with model loading forbidden (``no_loading``): every one of them must be
refused before a model loads.
"""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

import hogwild_ref
import hogwild_ref.models
from hogwild_ref.checks import ContextLengthWarning, SettingsError, check_settings
from hogwild_ref.cli import main
from hogwild_ref.engine import Engine, GenerationInterrupted, TokenEvent
from hogwild_ref.models import tiny_model
from hogwild_ref.scheduler import SchedulerConfig
from hogwild_ref.segments import SegmentTable


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    (d / "bad.toml").write_text('system = "unterminated\n')
    (d / "unknown.toml").write_text('sytem = "x"\n')
    (d / "nonstr.json").write_text('{"system": 3}')
    (d / "list.json").write_text("[1]")
    (d / "noproblem.toml").write_text('problem = "no placeholder"\n')
    (d / "finisher.toml").write_text('finisher = "the answer is"\n')
    (d / "notes.txt").write_text("hi")
    (d / "empty.gguf").write_bytes(b"")
    (d / "notamodel").mkdir()
    (d / "notamodel" / "readme.md").write_text("hi")
    return d


# (arguments after "generate", a word the one-line error must contain)
CLI_CASES = [
    (["--workers", "0"], "--workers"), (["--workers", "-2"], "--workers"), (["--workers", "2.5"], "--workers"),
    (["--max-ticks", "-1"], "--max-ticks"), (["--max-ticks", "-5"], "--max-ticks"), (["--max-ticks", "2.5"], "--max-ticks"),
    (["--max-steps", "-1"], "--max-ticks"), (["--top-k", "0"], "--top-k"), (["--top-k", "2.5"], "--top-k"),
    (["--top-p", "1.5"], "--top-p"), (["--top-p", "0"], "--top-p"), (["--top-p", "nan"], "--top-p"),
    (["--min-p", "1"], "--min-p"), (["--min-p", "-0.1"], "--min-p"), (["--temperature", "-1"], "--temperature"),
    (["--temperature", "nan"], "--temperature"), (["--temperature", "inf"], "--temperature"),
    (["--seed", "-1"], "--seed"), (["--seed", "x"], "--seed"), (["--threads", "0"], "--threads"),
    (["--threads", "-3"], "--threads"), (["--snapshots", "0"], "--snapshots"), (["--snapshots", "300"], "budget"),
    (["--max-ticks", "10", "--snapshots", "5", "11"], "tick 11"), (["--finisher-tokens", "0"], "--finisher-tokens"),
    (["--collab-every", "-1"], "--collab-every"), (["--layout", "diagonal"], "--layout"), (["--backend", "fast2"], "--backend"),
    (["--dtype", "float8"], "--dtype"), (["--device", "foo"], "--device"), (["--device", "cuda"], "CUDA"),
    ([""], "empty"), (["   "], "empty"), (["--model", "/nonexistent/dir"], "does not exist"),
    (["--model", "./no-such-dir"], "does not exist"), (["--model", "{d}/notamodel"], "not a model directory"),
    (["--model", "{d}/notes.txt"], "not a model"), (["--model", "/tmp/nonexistent.gguf"], "does not exist"),
    (["--prompts-file", "/nonexistent.toml"], "does not exist"), (["--prompts-file", "{d}/bad.toml"], "not valid TOML"),
    (["--prompts-file", "{d}/unknown.toml"], "sytem"), (["--prompts-file", "{d}/nonstr.json"], "must be strings"),
    (["--prompts-file", "{d}/list.json"], "table"), (["--prompts-file", "{d}/noproblem.toml"], "{problem}"),
    (["--prompts-file", "{d}/finisher.toml"], "boxed"), (["--prompts-file", "{d}/notes.txt"], ".toml or .json"),
    (["--prompts", "compactest"], "--prompts"), (["--bogus-flag"], "--bogus-flag"), (["--workers"], "--workers"),
    # found by newcomers: each reached the model (or a traceback) before
    (["--workers", "100000"], "--workers 1024 or less"), (["--seed", "18446744073709551615"], "give a seed <="),
    (["--device", "xpu"], "no xpu device"), (["--device", "meta"], "meta device"),
    (["--device-map", "{}"], "places no module"), (["--device-map", '{"": "cuda:0"}'], "CUDA is not available"),
    (["--device-map", '{"": "disk"}'], "not a torch device"), (["--max-ticks", "5", "--max-steps", "3"], "--max-ticks only"),
    (["What is \udcff\udcfe 2+3?"], "not valid text"), (["--prompts-file", "{d}"], "is a directory"),
]


@pytest.mark.parametrize("args,word", CLI_CASES, ids=[" ".join(a) or "empty" for a, _ in CLI_CASES])
def test_cli_bad_input_is_one_line_exit_2_before_loading(capsys, no_loading, files, args, word):
    args = [a.replace("{d}", str(files)) for a in args]
    with pytest.raises(SystemExit) if _argparse_level(args) else _nothing() as exc:
        rc = main(["generate", *args, "--json"])
    if exc is not None and hasattr(exc, "value"):
        rc = exc.value.code
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    lines = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and word in lines[0], err
    assert "Traceback" not in err


def _argparse_level(args):
    return any(a in ("2.5", "x", "diagonal", "fast2", "float8", "compactest", "--bogus-flag") for a in args) or args == ["--workers"]


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_cli_counts_at_least_40_bad_inputs():
    assert len(CLI_CASES) + len(LIBRARY_CASES) >= 40


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"hogwild-ref {hogwild_ref.__version__}"


def test_cli_reports_a_failed_assertion_as_a_bug(capsys, monkeypatch):
    import hogwild_ref.cli as cli

    def broken(args):
        raise AssertionError("invariant")

    monkeypatch.setattr(cli, "cmd_generate", broken)
    rc = main(["generate", "x"])
    err = capsys.readouterr().err
    assert rc == 70
    assert "this is a bug" in err and not err.startswith("error:")


# ---------------------------------------------------------------------- library
LIBRARY_CASES = [
    (dict(max_ticks=2.5), "max_ticks"), (dict(max_ticks=-1), "max_ticks"), (dict(max_ticks=True), "max_ticks"),
    (dict(top_k=2.5), "top_k"), (dict(top_k=0), "top_k"), (dict(top_p=0.0), "top_p"), (dict(min_p=1.0), "min_p"),
    (dict(temperature=float("nan")), "temperature"), (dict(temperature="hot"), "temperature"),
    (dict(workers=0), "workers"), (dict(workers=True), "workers"), (dict(workers=1.0), "workers"),
    (dict(snapshots=[5], max_ticks=4), "beyond the budget"), (dict(snapshots=[0]), "snapshots"),
    (dict(snapshots=5), "snapshots"), (dict(finisher_tokens=0), "finisher_tokens"), (dict(seed=1.5), "seed"),
    (dict(collab_every=0), "None turns them off"), (dict(layout="diagonal"), "layout"), (dict(backend="nope"), "backend"),
    (dict(problem=""), "empty"), (dict(problem=" \n\t"), "empty"), (dict(problem=None), "string"),
    (dict(problem=123), "string"), (dict(workers=1025), "1024 or less"), (dict(seed=2**64 - 1), "give a seed <="),
    (dict(problem="2 + 3 \udcff"), "not valid text"),
]


@pytest.mark.parametrize("kwargs,word", LIBRARY_CASES, ids=[str(k) for k, _ in LIBRARY_CASES])
def test_library_bad_input_is_refused_before_the_model_runs(kwargs, word):
    class Untouchable:  # any use of the model fails the test
        def __getattr__(self, name):
            raise AssertionError(f"the model was used ({name}) for invalid settings")

    kwargs = dict(kwargs)
    problem = kwargs.pop("problem", "What is 1 + 1?")
    with pytest.raises(SettingsError, match=word):
        hogwild_ref.generate(Untouchable(), None, problem, **kwargs)


def test_settings_errors_are_value_errors_naming_the_fix():
    with pytest.raises(ValueError, match=r"None for no budget"):
        check_settings(max_ticks=-1)


def test_max_steps_is_a_deprecated_alias(smollm_tokenizer):
    model = tiny_model("llama", vocab_size=len(smollm_tokenizer))
    with pytest.warns(DeprecationWarning, match="max_ticks"):
        result = hogwild_ref.generate(model, smollm_tokenizer, "Add 1 and 2.", max_steps=2, finisher=False)
    assert result.ticks == 2 and result.settings["max_ticks"] == 2


def test_context_beyond_max_position_embeddings_is_warned_up_front(smollm_tokenizer):
    model = tiny_model("llama", vocab_size=len(smollm_tokenizer), max_position_embeddings=64)
    engine = Engine(model, smollm_tokenizer, workers=2,
                    scheduler=SchedulerConfig(max_ticks=40, eos_token_ids=frozenset()), finisher=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = next(engine.stream("Add 1 and 2."))  # the warning comes before the first tick's event
    assert isinstance(first, TokenEvent) and first.tick == 1
    assert any(issubclass(w.category, ContextLengthWarning) and "64" in str(w.message) for w in caught)


@pytest.mark.parametrize("positions,warned", [(12, 1), (1 << 16, 0)])
def test_a_batch_beyond_max_position_embeddings_is_warned_once_per_runner(smollm_tokenizer, positions, warned):
    from hogwild_ref.batch import BatchItem, BatchRunner

    model = tiny_model("llama", vocab_size=len(smollm_tokenizer), max_position_embeddings=positions)
    engine = Engine(model, smollm_tokenizer, workers=2, scheduler=SchedulerConfig(eos_token_ids=frozenset()), finisher=False)
    problem = len(smollm_tokenizer("Add 2 and 5.")["input_ids"])  # the prompt holds the problem and more
    assert problem + 2 * 3 > 12  # so 2 workers x 3 ticks pass 12 positions, and stay far below 2^16
    runner = BatchRunner(engine, [3], finisher=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # two batches of one runner: one warning
            runner.run([BatchItem("Add 1 and 2.", 0), BatchItem("Add 2 and 5.", 0)])
    hits = [w for w in caught if issubclass(w.category, ContextLengthWarning)]
    assert len(hits) == warned and all(str(positions) in str(w.message) for w in hits)


# ---------------------------------------------------------------------- interruption
def _interrupt_after(n):
    count = [0]

    def on_event(event):
        if isinstance(event, TokenEvent):
            count[0] += 1
            if count[0] == n:
                raise KeyboardInterrupt

    return on_event


@pytest.mark.parametrize("where", ["on_event", "model"])
def test_ctrl_c_leaves_the_partial_result(smollm_tokenizer, monkeypatch, where):
    tok = smollm_tokenizer
    model = tiny_model("llama", seed=2, vocab_size=len(tok))
    sched = SchedulerConfig(max_ticks=40, boundary=lambda t: len(t) >= 12, collab_every=None, eos_token_ids=frozenset())
    full = Engine(model, tok, workers=2, scheduler=sched, finisher=False).run("Count.")
    engine = Engine(model, tok, workers=2, scheduler=sched, finisher=False)
    on_event = None
    if where == "on_event":
        on_event = _interrupt_after(2 * 9 + 1)  # during tick 10: ticks 1..9 are complete
    else:
        from hogwild_ref.forward import Forward

        real, calls = Forward.__call__, [0]

        def forward(self, storage, rows, feeds, logits=True):
            if logits:
                calls[0] += 1
                if calls[0] == 10:
                    raise KeyboardInterrupt
            return real(self, storage, rows, feeds, logits)

        monkeypatch.setattr(Forward, "__call__", forward)
    with pytest.raises(GenerationInterrupted) as exc:
        engine.run("Count.", on_event)
    partial = exc.value.result
    assert partial is engine.result and partial.reason == "interrupted"
    assert isinstance(exc.value, KeyboardInterrupt)
    assert partial.ticks == 9
    for p, f in zip(partial.workers, full.workers):
        assert p.tokens == f.tokens[:9]  # what each worker sampled up to the last completed tick
        assert f.text.startswith(p.text) and p.text
    assert full.history_text.startswith(partial.history_text)


def test_cli_ctrl_c_prints_partial_json_and_exits_130(capsys, monkeypatch, smollm):
    model, tok = smollm
    monkeypatch.setattr(hogwild_ref.models, "load", lambda *a, **k: smollm)

    from hogwild_ref.forward import Forward
    from hogwild_ref.proof import ensure_compatible

    ensure_compatible(model, backend="fast")  # proven once, before the counted forwards of the run
    real = Forward.__call__
    calls = [0]

    def forward(self, storage, rows, feeds, logits=True):
        if logits:
            calls[0] += 1
            if calls[0] == 4:
                raise KeyboardInterrupt
        return real(self, storage, rows, feeds, logits)

    monkeypatch.setattr(Forward, "__call__", forward)
    rc = main(["generate", "What is 2 + 3?", "--json", "--max-ticks", "20", "--device", "cpu", "--workers", "2"])
    out, err = capsys.readouterr()
    assert rc == 130
    d = json.loads(out)
    assert d["reason"] == "interrupted" and d["ticks"] == 3
    assert all(len(w["tokens"]) == 3 for w in d["workers"])
    assert "Traceback" not in err and "interrupted" in err


def test_cli_json_carries_settings_and_snapshots(capsys, monkeypatch, smollm, tmp_path):
    monkeypatch.setattr(hogwild_ref.models, "load", lambda *a, **k: smollm)
    (tmp_path / "p.toml").write_text('step_prefix = "[{name} {k}] "\n')
    rc = main(["generate", "What is 2 + 3?", "--json", "--max-ticks", "6", "--snapshots", "2", "5", "--seed", "3",
               "--temperature", "0.7", "--top-k", "5", "--finisher-tokens", "3", "--prompts-file", str(tmp_path / "p.toml"),
               "--device", "cpu", "--workers", "3", "--layout", "interleaved"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    d = json.loads(out)
    s = d["settings"]
    assert s["workers"] == 3 and s["layout"] == "interleaved" and s["backend"] == "fast"
    assert s["max_ticks"] == 6 and s["seed"] == 3 and s["finisher_tokens"] == 3
    assert s["sampling"] == {"temperature": 0.7, "top_k": 5, "top_p": None, "min_p": None}
    assert s["prompts"]["step_prefix"] == "[{name} {k}] " and s["snapshot_ticks"] == [2, 5]
    assert [snap["tick"] for snap in d["snapshots"]] == [2, 5]
    assert d["prefill_seconds"] >= 0
    assert all(w["text"].startswith(f"[{w['name']} 1] ") for w in d["workers"])


def test_one_settings_object_checked_when_built_names_flags_only_on_the_cli():
    from hogwild_ref import Settings
    from hogwild_ref.checks import SettingsError
    from hogwild_ref.settings import BACKENDS, LAYOUTS

    with pytest.raises(SettingsError, match=r"^workers must be >= 1; got 0"):
        Settings(workers=0)
    with pytest.raises(SettingsError, match=r"^--workers must be >= 1; got 0"):
        Settings.from_flags(workers=0)
    with pytest.raises(SettingsError, match="snapshot at tick 9 is beyond the budget of 8 ticks"):
        Settings(max_ticks=8, snapshots=(9,))
    s = Settings(workers=3, snapshots=[2])  # a list is kept as a tuple
    assert s.snapshots == (2,) and s.with_(seed=4).seed == 4 and s.seed == 0
    with pytest.raises(SettingsError, match="unknown backend"):
        s.with_(backend="flash")
    assert set(BACKENDS) == {"fast", "rotate_queries", "rotate_keys", "oracle"} and "combined" in LAYOUTS
    # the CLI's choices are the settings' choices, in every subcommand that takes them
    from hogwild_ref.cli import main

    for command in (["generate"], ["eval"], ["bench", "ticks"]):
        with pytest.raises(SystemExit):
            main([*command, "--layout", "spiral"])


def test_engine_keywords_override_a_settings_object_and_unknown_ones_are_refused(smollm_tokenizer):
    from hogwild_ref import Settings

    model = tiny_model("llama", seed=2, vocab_size=len(smollm_tokenizer))
    base = Settings(workers=3, max_ticks=5, seed=9, finisher=False)
    engine = Engine(model, smollm_tokenizer, base, workers=2)
    assert engine.workers == 2 and engine.settings.seed == 9 and engine.settings.max_ticks == 5
    with pytest.raises(TypeError, match="unexpected keyword"):
        Engine(model, smollm_tokenizer, base, wokers=2)
    result = hogwild_ref.generate(model, smollm_tokenizer, "Add 1 and 2.", settings=base)
    assert result.ticks <= 5 and len(result.workers) == 3 and result.settings["seed"] == 9 and result.settings["max_ticks"] == 5
    # generate's own keywords (workers, layout, max_ticks: positional parameters too) override it as well
    result = hogwild_ref.generate(model, smollm_tokenizer, "Add 1 and 2.", 2, "interleaved", 3, settings=base, seed=4)
    assert (len(result.workers), result.layout, result.settings["max_ticks"], result.settings["seed"]) == (2, "interleaved", 3, 4)
    assert result.ticks <= 3 and result.settings["finisher"] is False  # the rest as the object says
    # and without a settings object, the unset ones are Settings' defaults
    result = hogwild_ref.generate(model, smollm_tokenizer, "Add 1 and 2.", max_ticks=2, finisher=False)
    assert (len(result.workers), result.layout) == (Settings().workers, Settings().layout) == (2, "combined")


# ---------------------------------------------------------------------- found by newcomers
class _Untouchable:
    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name}) for invalid arguments")


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(settings="x"), TypeError, "settings must be a hogwild_ref.Settings"),
    (dict(settings={"workers": 1}), TypeError, "got dict"),
    (dict(templates="compact"), TypeError, "templates must be a PromptTemplates object"),
    (dict(templates="class"), TypeError, "got PromptTemplates"),
    (dict(on_event="x"), TypeError, "on_event must be a function"),
    (dict(max_steps=1, max_ticks=3), TypeError, "both max_steps and max_ticks"),
    (dict(table="T", layout="combined"), ValueError, "both a layout and an explicit table"),
    (dict(tokenizer=None), TypeError, "needs the model's tokenizer"),
])
def test_library_arguments_of_the_wrong_kind_are_named(smollm_tokenizer, kwargs, error, words):
    from hogwild_ref.prompts import PromptTemplates
    from hogwild_ref.segments import make_layout

    kwargs = dict(kwargs)
    if kwargs.get("templates") == "class":
        kwargs["templates"] = PromptTemplates
    if kwargs.get("table") == "T":
        kwargs["table"] = make_layout("combined", 2, 4)
    tokenizer = kwargs.pop("tokenizer", smollm_tokenizer)
    model = _Untouchable() if "on_event" not in kwargs else tiny_model("llama", vocab_size=len(smollm_tokenizer))
    with pytest.raises(error, match=words):
        hogwild_ref.generate(model, tokenizer, "What is 1 + 1?", **kwargs)


def test_a_numpy_worker_count_runs_like_an_int(smollm_tokenizer):
    import numpy

    model = tiny_model("llama", vocab_size=len(smollm_tokenizer))
    a = hogwild_ref.generate(model, smollm_tokenizer, "Add 1 and 2.", workers=numpy.int64(2), max_ticks=2, finisher=False)
    b = hogwild_ref.generate(model, smollm_tokenizer, "Add 1 and 2.", workers=2, max_ticks=2, finisher=False)
    assert [w.tokens for w in a.workers] == [w.tokens for w in b.workers] and len(a.workers) == 2


def test_a_prompt_alone_beyond_the_context_says_so_not_lower_the_budget(smollm_tokenizer):
    model = tiny_model("llama", vocab_size=len(smollm_tokenizer), max_position_embeddings=64)
    engine = Engine(model, smollm_tokenizer, workers=2, max_ticks=1, finisher=False)
    with pytest.warns(ContextLengthWarning) as caught:
        next(engine.stream("Add 1 and 2. " * 20))
    message = str(caught[0].message)
    assert message.startswith("the prompt alone is ") and "max_position_embeddings of 64" in message
    assert "shorten the problem" in message and "budget" not in message


def test_the_embedded_model_names_all_load_it_and_a_missing_device_is_refused(monkeypatch):
    import torch

    from hogwild_ref.cli.common import _check_model_source
    from hogwild_ref.models import EMBEDDED_NAMES

    assert "embedded" in EMBEDDED_NAMES
    monkeypatch.setattr(hogwild_ref.models, "resolve_source", lambda name: pytest.fail(f"looked up {name!r}"))
    for name in EMBEDDED_NAMES:
        _check_model_source(name)  # never a path or a hub id
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device cuda: CUDA is not available"):
            hogwild_ref.models.load(None, device="cuda")


def test_cli_output_into_a_file_ends_the_progress_line(capsys, monkeypatch, smollm):
    monkeypatch.setattr(hogwild_ref.models, "load", lambda *a, **k: smollm)
    assert main(["generate", "What is 2 + 3?", "--max-ticks", "2", "--device", "cpu", "--threads", "1",
                 "--snapshots", "2", "1", "2"]) == 0
    out = capsys.readouterr().out
    bar = next(line for line in out.splitlines() if line.startswith("ticks "))
    assert "Hogwild run" not in bar and "Hogwild run" in out
    # --snapshots without --json: each requested tick's answer is a row of the summary, each tick once
    assert [line.split("│")[1].strip() for line in out.splitlines() if "snapshot, tick" in line] == \
        ["snapshot, tick 1", "snapshot, tick 2"]


def test_snapshot_ticks_are_kept_once_each_in_order():
    from hogwild_ref import Settings

    assert Settings(max_ticks=8, snapshots=[4, 2, 4]).snapshots == (2, 4)


def test_a_schedulers_snapshot_beyond_its_budget_is_refused_as_the_settings_refuse_it(smollm_tokenizer):
    """``Engine(scheduler=SchedulerConfig(max_ticks=2, snapshot_ticks=(5,)))`` ran and recorded no
    snapshot, silently (a fuzzing review); ``generate(max_ticks=2, snapshots=(5,))`` refuses it. The
    scheduler's snapshots are the run's, checked against its budget, and recorded in the settings."""
    model = tiny_model("llama", vocab_size=len(smollm_tokenizer))
    with pytest.raises(SettingsError, match="snapshot at tick 5 is beyond the budget of 2 ticks"):
        Engine(model, smollm_tokenizer, scheduler=SchedulerConfig(max_ticks=2, snapshot_ticks=(5,)))
    engine = Engine(model, smollm_tokenizer, scheduler=SchedulerConfig(max_ticks=4, snapshot_ticks=(2,)))
    result = engine.run("What is 2 + 3?")
    assert [s.tick for s in result.snapshots] == [2] and engine.settings.snapshots == (2,)


def test_the_cli_context_warning_names_the_flag(capsys, monkeypatch, smollm_tokenizer):
    """Under ``generate`` the warning said "lower the budget (max_ticks)", the library's name (a
    newcomer's report); the command line's run names its flag."""
    problem = "What is 2 + 3?"
    prep = Engine(tiny_model("llama", vocab_size=len(smollm_tokenizer)), smollm_tokenizer, workers=2).prepare(problem)
    prompt = max(sum(len(prep.static[s]) for s in view if s in prep.static) for view in prep.table.views)
    model = tiny_model("llama", vocab_size=len(smollm_tokenizer), max_position_embeddings=prompt + 8)
    monkeypatch.setattr(hogwild_ref.models, "load", lambda *a, **k: (model, smollm_tokenizer))
    assert main(["generate", problem, "--json", "--max-ticks", "6", "--workers", "2", "--device", "cpu",
                 "--threads", "1", "--allow-untested", "--model", "embedded"]) == 0
    out, err = capsys.readouterr()
    assert "lower the budget (--max-ticks) or the number of workers" in err, err
    assert json.loads(out)["model"] == "SmolLM2-135M-Instruct (embedded GGUF)"  # not "embedded"


def test_an_explicit_table_of_none_goes_with_a_layout(smollm_tokenizer):
    model = tiny_model("llama", vocab_size=len(smollm_tokenizer))
    result = hogwild_ref.generate(model, smollm_tokenizer, "Add 1 and 2.", 2, "combined", table=None, max_ticks=1,
                                  finisher=False)
    assert result.ticks == 1  # a caller forwarding an optional table is not refused


# ---------------------------------------------------------------------- found by a library review
def test_batch_runner_refuses_what_engine_run_refuses(smollm_tokenizer):
    """A blank or non-string problem, a non-integer seed or an item that is not a BatchItem is refused
    before anything runs, as Engine.run refuses it (the runner ran ``None`` as the text "None")."""
    from hogwild_ref.batch import BatchItem, BatchRunner

    model = tiny_model("llama", seed=2, vocab_size=len(smollm_tokenizer))
    runner = BatchRunner(Engine(model, smollm_tokenizer, workers=2, max_ticks=2, finisher=False), [2], finisher=False)
    for items, needle in [([BatchItem(None)], "the problem must be a string"),  # type: ignore[arg-type]
                          ([BatchItem("2+3?"), BatchItem("   ")], "the problem is empty"),
                          ([BatchItem("2+3?", seed="1")], "seed must be an integer"),  # type: ignore[arg-type]
                          (["2+3?"], "items must be a list of BatchItem"),
                          ("2+3?", "items must be a list of BatchItem")]:
        with pytest.raises((SettingsError, TypeError), match=needle):
            runner.run(items)  # type: ignore[arg-type]


@pytest.mark.parametrize("budgets", ["12", [2.7], [True], 64, [float("nan")]])
def test_budget_and_worker_lists_take_integers_only(budgets, smollm_tokenizer):
    """BatchRunner's budgets and EvalConfig's workers, budgets and seeds: "12" was split into 1 and 2,
    2.7 truncated to 2, True taken as 1; an int or NaN failed deep inside. Each is one clear error now."""
    from hogwild_ref.batch import BatchRunner
    from hogwild_ref.evaluation import EvalConfig

    model = tiny_model("llama", seed=2, vocab_size=len(smollm_tokenizer))
    engine = Engine(model, smollm_tokenizer, workers=2, max_ticks=2, finisher=False)
    with pytest.raises(SettingsError, match="budgets must be a list of integers"):
        BatchRunner(engine, budgets)
    for name in ("workers", "budgets", "seeds"):
        with pytest.raises(SettingsError, match=f"{name} must be a list of integers"):
            EvalConfig(**{name: budgets})
    assert EvalConfig(workers=[2], budgets=(4, 8), seeds=range(2)).seeds == (0, 1)


@pytest.mark.parametrize("greedy", [True, False])
def test_nan_logits_stop_the_run_with_one_clear_error(greedy, smollm_tokenizer):
    """A NaN in the output layer made greedy decoding emit token 0 at every tick without a word (and
    sampling fail inside torch.multinomial): the tick now raises NonFiniteLogits, naming the row."""
    from hogwild_ref.sampling import NonFiniteLogits

    model = tiny_model("llama", seed=3, vocab_size=len(smollm_tokenizer))
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLogits, match=r"logits are not finite \(NaN or inf\) for row"):
        hogwild_ref.generate(model, smollm_tokenizer, "2+3?", max_ticks=4, finisher=False,
                             temperature=0.0 if greedy else 1.0)


def test_sampling_checks_the_chosen_and_the_largest_logit():
    """Oracle: a row holding NaN (greedy picks it), an all-NaN row (argmax gives 0), +inf; finite rows
    and inactive rows pass untouched."""
    from hogwild_ref.sampling import NonFiniteLogits, SamplingConfig, sample, sample_rows

    ok = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    assert sample_rows(ok, [True, True], SamplingConfig(), gens) == [1, 0]
    for bad in (torch.tensor([0.0, float("nan"), 1.0]), torch.full((3,), float("nan")), torch.tensor([0.0, float("inf"), 1.0])):
        rows = torch.stack([ok[0], bad])
        for cfg in (SamplingConfig(), SamplingConfig(temperature=1.0)):
            with pytest.raises(NonFiniteLogits, match="for row 1"):
                sample_rows(rows, [True, True], cfg, gens)
            assert sample_rows(rows, [True, False], cfg, gens)[1] is None  # an inactive row is not read
            with pytest.raises(NonFiniteLogits):
                sample(bad, cfg, gens[0])


def test_wrong_argument_types_get_one_line_each(smollm_tokenizer):
    model = tiny_model("llama", seed=2, vocab_size=len(smollm_tokenizer))
    for bad_model in (None, "default"):
        with pytest.raises(TypeError, match="model must be a transformers causal LM"):
            hogwild_ref.generate(bad_model, smollm_tokenizer, "x", max_ticks=2)
    with pytest.raises(TypeError, match="settings must be a hogwild_ref.Settings"):
        hogwild_ref.generate(model, smollm_tokenizer, "x", settings={"workers": 2}, max_ticks=3)
    with pytest.raises(ValueError, match="compile must be True, False, None or a torch.compile mode"):
        hogwild_ref.generate(model, smollm_tokenizer, "x", max_ticks=2, compile="yes")
    with pytest.raises(ValueError, match="pack_weights must be True, False or None"):
        hogwild_ref.generate(model, smollm_tokenizer, "x", max_ticks=2, pack_weights="no")


def test_a_second_forward_of_one_model_at_once_names_the_cause(smollm_tokenizer):
    """An engine run from two threads (or a forward inside a forward) used to fail with "PackedLinear is
    already entered"; the message now says what is wrong and what to do."""
    from hogwild_ref.packed import PackedLinear, packing_available

    if not packing_available():
        pytest.skip("no oneDNN packed linear")
    packed = PackedLinear(tiny_model("llama", seed=2, vocab_size=len(smollm_tokenizer)))
    with packed, pytest.raises(RuntimeError, match="run one forward at a time per model"):
        packed.__enter__()


def test_a_results_json_records_what_a_rerun_needs(smollm_tokenizer):
    """A reproduction review: the JSON of a run lacked the problem, the dtype (which changes the tokens),
    the versions, an explicit table with its static texts, and recorded the templates' step prefix where
    a given scheduler's was used. Each is recorded as the run used it, and a rerun from the record
    (settings, prompts, table) gives the same tokens."""
    from hogwild_ref.prompts import PromptTemplates
    from hogwild_ref.segments import make_layout

    model = tiny_model("llama", vocab_size=len(smollm_tokenizer)).to(torch.bfloat16)
    sched = SchedulerConfig.from_templates(PromptTemplates.compact(), names=("Ann", "Bo"), max_ticks=6,
                                           step_prefix="<{name} #{k}> ", collab_every=None)
    result = Engine(model, smollm_tokenizer, workers=2, scheduler=sched, prefill_chunk=7).run("What is 2 + 3?")
    d = result.to_json_dict()
    s = d["settings"]
    assert d["problem"] == "What is 2 + 3?"
    assert (s["dtype"], s["device"], s["prefill_chunk"]) == ("bfloat16", "cpu", 7)
    assert s["prompts"]["step_prefix"] == "<{name} #{k}> " and s["names"] == ["Ann", "Bo"]
    assert s["eos_token_ids"] == [smollm_tokenizer.eos_token_id] and s["stop_on_boxed"] is True
    assert s["versions"]["torch"] == torch.__version__ and set(s["versions"]) == {"hogwild_ref", "torch", "transformers"}
    assert all(w["text"].startswith(f"<{w['name']} #1> ") for w in d["workers"])

    table = make_layout("interleaved", 2)
    static = {"others_header": "Others:\n"} if any(seg.id == "others_header" for seg in table.segments) else {}
    first = Engine(model, smollm_tokenizer, table=table, static_texts=static, max_ticks=4).run("Add 3 and 4.")
    rec = first.to_json_dict()["settings"]
    assert SegmentTable.from_dict(rec["table"]).to_dict() == table.to_dict() and rec["static_texts"] == static
    again = Engine(model, smollm_tokenizer, table=SegmentTable.from_dict(rec["table"]), static_texts=rec["static_texts"],
                   max_ticks=rec["max_ticks"]).run(first.problem)
    assert [w.tokens for w in again.workers] == [w.tokens for w in first.workers]


@pytest.mark.parametrize("given", [{"max_ticks": 5}, {"snapshots": (2,)}, {"collab_every": 7}])
def test_a_setting_given_twice_with_a_scheduler_must_agree(smollm_tokenizer, given):
    """``generate(max_ticks=5, scheduler=...)`` ran with the scheduler's budget (None: no budget) and
    recorded that, dropping the keyword silently; the scheduler is used as given, so a keyword that
    disagrees with it is refused, and one that agrees is accepted."""
    model = tiny_model("llama", vocab_size=len(smollm_tokenizer))
    sched = SchedulerConfig(max_ticks=4, snapshot_ticks=(3,), collab_every=None)
    with pytest.raises(SettingsError, match="disagree; the scheduler is used as given"):
        hogwild_ref.generate(model, smollm_tokenizer, "What is 2 + 3?", scheduler=sched, **given)
    with pytest.raises(SettingsError, match="disagree"):
        Engine(model, smollm_tokenizer, scheduler=sched, **given)
    Engine(model, smollm_tokenizer, scheduler=sched, max_ticks=4, snapshots=[3, 3], collab_every=None)


@pytest.mark.parametrize("backend", ["fast", "rotate_queries"])
@pytest.mark.parametrize("case, error, words", [
    ("short feed", ValueError, ["row 0 feeds 3 new tokens", "holds 1"]),
    ("long feed", ValueError, ["row 0 feeds 1 new tokens", "holds 3"]),
    ("fewer feeds", ValueError, ["got 1 feeds for 2 rows"]),
    ("no rows", ValueError, ["at least one row"]),
    ("list view", TypeError, ["tuple of segment ids"]),
    ("str view", TypeError, ["tuple of segment ids"]),
    ("id past the vocabulary", ValueError, ["token id 99999", "0 .. 255"]),
    ("negative id", ValueError, ["token id -1"]),
])
def test_a_forward_whose_feeds_disagree_with_its_rows_is_refused(backend, case, error, words):
    """Spec §3.1: row ``r`` feeds its ``n_r`` tokens. A feed shorter than its row used to leave cache
    slots unwritten (fast) or filled with token 0 (general backends), and a longer one was cut short or
    crashed inside torch; every such forward is now refused in one line before anything is written."""
    from hogwild_ref.engine import Prepared
    from hogwild_ref.forward import Forward
    from hogwild_ref.segments import Row, combined

    torch.manual_seed(0)
    model = tiny_model("llama", seed=1, vocab_size=256)
    engine = Engine(model, None, workers=2, layout="combined", finisher=False)
    table = combined(2)
    forward = Forward(model, engine.rope, backend)
    storage = forward.storage(table, engine.capacities(Prepared(table, "common", {"common": [1, 2, 3]})))
    forward(storage, [Row(("common",), 3)], [[1, 2, 3]], logits=False)
    before = storage.table
    v0, v1 = table.views
    rows, feeds = {
        "short feed": ([Row(v0, 3)], [[9]]),
        "long feed": ([Row(v0, 1)], [[9, 8, 7]]),
        "fewer feeds": ([Row(v0, 1), Row(v1, 1)], [[9]]),
        "no rows": ([], []),
        "list view": ([Row(list(v0), 1)], [[9]]),  # type: ignore[arg-type]
        "str view": ([Row("common", 1)], [[9]]),  # type: ignore[arg-type]
        "id past the vocabulary": ([Row(v0, 1)], [[99999]]),
        "negative id": ([Row(v0, 1)], [[-1]]),
    }[case]
    with pytest.raises(error) as info:
        forward(storage, rows, feeds)
    assert all(w in str(info.value) for w in words), str(info.value)
    assert "\n" not in str(info.value)
    assert storage.table == before, "nothing was written"


@pytest.mark.parametrize("capacities, words", [({"zz": 10}, "capacities name ['zz']"), ({"common": -3}, ">= 0")])
def test_storage_capacities_must_name_segments_and_be_counts(capacities, words):
    """A misspelt segment id in ``capacities`` reserved nothing, and a negative count was taken, both
    without a word (Spec §9.6: the slots reserved per segment)."""
    from hogwild_ref.forward import Forward
    from hogwild_ref.segments import combined

    model = tiny_model("llama", seed=1, vocab_size=256)
    forward = Forward(model, Engine(model, None, workers=2).rope, "fast")
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        forward.storage(combined(2), capacities)


@pytest.mark.parametrize("texts, words", [({"note": 5}, "static_texts['note'] must be the segment's text"),
                                          ({"note": None}, "static_texts['note'] must be the segment's text"),
                                          ([("note", "x")], "must be a dict of segment id -> text")])
def test_static_texts_of_the_wrong_kind_are_named(smollm_tokenizer, texts, words):
    """A static text that is not a str reached the tokenizer, whose error named neither ``static_texts``
    nor the segment; a list of pairs was reported as naming segments that do not exist."""
    from hogwild_ref.segments import Segment

    table = SegmentTable((Segment("P", 0), Segment("note", 0), Segment("a", 0, 0)), (("P", "note", "a"),))
    model = tiny_model("llama", seed=1, vocab_size=len(smollm_tokenizer))
    with pytest.raises(TypeError, match=re.escape(words)):
        Engine(model, smollm_tokenizer, workers=1, table=table, static_texts=texts)

