"""Tests of hogwild_ref.scheduler (Spec §6): unit tests and hypothesis property tests.

The property tests drive the scheduler with synthetic token streams through two toy
tokenizers (one id per character; and one that merges "\\n\\n" into a single id) and compare
it with an oracle written here from scratch: a boundary predicate written as a character
scanner + regex, a brace matcher written with counts, and a plain re-simulation of the
step-change rule. They also check the segmentation directly on the final transcript (each
finished chunk is the *shortest* one the predicate accepts) and the bookkeeping identity
"everything fed = flushed steps + current step".
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hogwild_ref import prompts
from hogwild_ref.scheduler import (
    FinishedStep,
    Scheduler,
    SchedulerConfig,
    _boxed_spans,
    extract_boxed,
    is_step_boundary,
)

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------
# Toy tokenizers
# ---------------------------------------------------------------------------------------------

EOS = 0  # "\x00": never produced by the pieces below


class CharTok:
    """One id per character."""

    name = "char"

    @staticmethod
    def encode(text: str) -> list[int]:
        return [ord(c) for c in text]

    @staticmethod
    def decode(ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


class MergeTok:
    """One id per character, except that "\\n\\n" is one id (greedy, left to right)."""

    name = "merge"
    NN = 0x110000  # outside Unicode, so no clash with a character id

    @classmethod
    def encode(cls, text: str) -> list[int]:
        out: list[int] = []
        for i, part in enumerate(text.split("\n\n")):
            if i:
                out.append(cls.NN)
            out.extend(ord(c) for c in part)
        return out

    @classmethod
    def decode(cls, ids: list[int]) -> str:
        return "".join("\n\n" if i == cls.NN else chr(i) for i in ids)


TOKENIZERS = [CharTok, MergeTok]

# ---------------------------------------------------------------------------------------------
# Oracles (written independently of the implementation)
# ---------------------------------------------------------------------------------------------

_ENDS = re.compile(r"(?s).*(\S)\s*\n\n")


def ref_boundary(text: str, punctuation: str = ".!?") -> bool:
    """Scan left to right toggling fence / math state; then a regex for the ending."""
    in_fence = in_math = False
    i = 0
    while i < len(text):
        if text.startswith("```", i):
            in_fence = not in_fence
            i += 3
        elif text.startswith("$$", i):
            in_math = not in_math
            i += 2
        else:
            i += 1
    if in_fence or in_math:
        return False
    m = _ENDS.fullmatch(text)
    return m is not None and m.group(1) in punctuation


def ref_boxed(text: str) -> str | None:
    """Last complete, non-blank \\boxed{...} via brace counts (no escaped braces in these streams)."""
    best = None
    for m in re.finditer(re.escape("\\boxed{"), text):
        rest = text[m.end() :]
        for n in range(len(rest)):
            head = rest[: n + 1]
            if head.count("}") == head.count("{") + 1:
                best = rest[:n] if rest[:n].strip() else best
                break
    return best


def fill_prefix(template: str, name: str, k: int) -> str:
    return template.replace("{name}", name).replace("{k}", str(k))


def simulate(tok, streams, cfg: SchedulerConfig, names):
    """Plain re-simulation of Spec §6.2–§6.5 over whole ticks.

    Returns a dict with per-tick records and the final state; the run stops at the first
    tick where generation is over (or when the streams run out).
    """
    W = len(streams)
    prefix = [tok.encode(fill_prefix(cfg.step_prefix, names[w], 1)) for w in range(W)]
    collab = tok.encode(cfg.collab_prompt) if cfg.collab_prompt is not None else []
    cur = [list(p) for p in prefix]
    gen = [[] for _ in range(W)]  # generated part of the current step
    k = [1] * W
    count = [0] * W
    stopped = [False] * W
    fed = [list(p) for p in prefix]  # all feeds returned so far, concatenated
    history: list[tuple[int, int, list[int]]] = []  # (worker, k, ids)
    ticks = []
    T = max(len(s) for s in streams)
    if cfg.max_ticks == 0:
        return dict(ticks=ticks, cur=cur, fed=fed, history=history, reason="budget", tick=0)
    reason = None
    for t in range(1, T + 1):
        feeds = [[] for _ in range(W)]
        flushes = []
        stops = []
        boxed = False
        for w in range(W):
            if stopped[w]:
                continue
            x = streams[w][t - 1]
            if x == EOS:
                stopped[w] = True
                stops.append(w)
                continue
            count[w] += 1
            if not cfg.steps:
                cur[w].append(x)
                gen[w].append(x)
                feeds[w] = [x]
                if cfg.stop_on_boxed and ref_boxed(tok.decode(gen[w])) is not None:
                    boxed = True
            elif ref_boundary(tok.decode(gen[w] + [x])):
                history.append((w, k[w], list(cur[w])))
                flushes.append(w)
                if cfg.stop_on_boxed and ref_boxed(tok.decode(cur[w])) is not None:
                    boxed = True
                k[w] += 1
                new = [x] + tok.encode(fill_prefix(cfg.step_prefix, names[w], k[w]))
                if cfg.collab_every is not None and count[w] >= cfg.collab_every:
                    new += collab
                    count[w] = 0
                cur[w] = new
                gen[w] = []
                feeds[w] = list(new)
            else:
                cur[w].append(x)
                gen[w].append(x)
                feeds[w] = [x]
            fed[w] += feeds[w]
        if boxed:
            reason = "boxed"
        elif all(stopped):
            reason = "eos"
        elif cfg.max_ticks is not None and t >= cfg.max_ticks:
            reason = "budget"
        hist_ids = [i for (_, _, ids) in history for i in ids]
        ticks.append(
            dict(
                feeds=feeds,
                flushes=flushes,
                stops=stops,
                reason=reason,
                history_text=tok.decode(hist_ids),
                current_texts=tuple(tok.decode(c) for c in cur),
            )
        )
        if reason is not None:
            break
    return dict(ticks=ticks, cur=cur, fed=fed, history=history, reason=reason, tick=len(ticks))


def run(tok, streams, cfg: SchedulerConfig):
    """Drive the scheduler with the streams; returns (scheduler, outcomes, initial feeds)."""
    W = len(streams)
    sch = Scheduler(W, tok.decode, tok.encode, cfg)
    init = sch.initial_feeds()
    outs = []
    stopped = [False] * W
    T = max(len(s) for s in streams)
    for t in range(T):
        if sch.done:
            break
        sampled = [None if stopped[w] else streams[w][t] for w in range(W)]
        out = sch.observe(sampled)
        for w in out.stopped:
            stopped[w] = True
        outs.append(out)
    return sch, outs, init


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

# Weighted by repetition: step ends (".\n\n" and its split forms) are common, fences and
# display math rarer (an open one blocks every boundary until it closes).
PIECES = (
    ["a", "b", "7", " ", ","] * 2
    + [".\n\n"] * 4
    + [".", "!", "?", "\n", "\n\n", "!\n\n"]
    + ["```", "$$"]
    + ["\\boxed{", "{", "}", "\\boxed{7}"]
)


@st.composite
def streams_st(draw, tok, max_workers=4, max_len=60):
    W = draw(st.integers(1, max_workers))
    T = draw(st.integers(1, max_len))
    streams = []
    for _ in range(W):
        pieces = draw(st.lists(st.sampled_from(PIECES), min_size=T, max_size=T))
        ids = [i for p in pieces for i in tok.encode(p)][:T]
        eos_at = draw(st.none() | st.integers(0, T - 1))
        if eos_at is not None:
            ids = ids[:eos_at] + [EOS]
        streams.append(ids)
    return streams


@st.composite
def config_st(draw, max_len=60, steps=True):
    return SchedulerConfig(
        step_prefix=draw(st.sampled_from(["**{name} [{k}]:** ", "[{k}] ", "", "{name}.\n\n"])),
        collab_prompt=draw(st.sampled_from([None, "?\n\n", "Overlap? "])),
        collab_every=draw(st.none() | st.integers(1, 8)),
        eos_token_ids=frozenset({EOS}),
        stop_on_boxed=draw(st.booleans()),
        max_ticks=draw(st.none() | st.integers(0, max_len + 3)),
        snapshot_ticks=tuple(draw(st.lists(st.integers(1, max_len + 3), max_size=4))),
        steps=steps,
    )


def case_st(steps=True):
    return st.sampled_from(TOKENIZERS).flatmap(
        lambda tok: st.tuples(st.just(tok), streams_st(tok), config_st(steps=steps))
    )


# ---------------------------------------------------------------------------------------------
# is_step_boundary: unit tests and agreement with the oracle
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("We get x = 2.\n\n", True),
        ("Done!\n\n", True),
        ("Is it?\n\n", True),
        ("Three newlines.\n\n\n", True),
        ("Space before the newlines. \n\n", True),
        ("One newline.\n", False),
        ("No punctuation\n\n", False),
        ("Comma,\n\n", False),
        ("\n\n", False),
        ("", False),
        ("Ends with text. More", False),
        ("Newline then space.\n\n ", False),
        ("```python\nx = 1.\n\n", False),  # open code fence
        ("```python\nx = 1\n```\nDone.\n\n", True),  # closed fence
        ("$$\nx = 1.\n\n", False),  # open display math
        ("$$ x = 1 $$ so done.\n\n", True),  # closed display math
        ("a.\r\n\r\n", False),  # only "\n\n" endings count
    ],
)
def test_is_step_boundary_examples(text, expected):
    assert is_step_boundary(text) is expected
    assert ref_boundary(text) is expected  # the oracle agrees on the hand-written cases


def test_is_step_boundary_custom_punctuation():
    assert not is_step_boundary("a;\n\n")
    assert is_step_boundary("a;\n\n", punctuation=";")
    assert not is_step_boundary("a.\n\n", punctuation="")


@pytest.mark.parametrize("tok", TOKENIZERS, ids=lambda t: t.name)
def test_boundary_on_text_not_tokens(tok):
    """"\\n" + "\\n" as two tokens and "\\n\\n" as one give the same decision (Spec §6.1)."""
    split = [*tok.encode("It is 4."), ord("\n"), ord("\n")]
    assert is_step_boundary(tok.decode(split))
    assert is_step_boundary(tok.decode(tok.encode("It is 4.\n\n")))


@PROPS
@given(st.text(alphabet="ab.!?,` $\n\t", max_size=40))
def test_is_step_boundary_matches_oracle(text):
    assert is_step_boundary(text) == ref_boundary(text)


# ---------------------------------------------------------------------------------------------
# extract_boxed
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("no answer", None),
        ("\\boxed{42}", "42"),
        ("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{1} then \\boxed{2", "1"),  # the later one is not complete
        ("\\boxed{", None),
        ("\\boxed{{}", None),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are content
        ("\\boxed{\\{}", "\\{"),  # ... even when unbalanced
        ("\\boxed{a\\}", None),
        ("\\boxed{}", None),  # blank: no answer (an echoed instruction)
        ("\\boxed{7} then put it in \\boxed{ }", "7"),
        # a line break \\ before a brace leaves the brace structure (an odd run of backslashes escapes it)
        ("\\boxed{a\\\\}", "a\\\\"),
        ("\\boxed{5} then \\boxed{x\\\\}", "x\\\\"),
        ("\\boxed{\\begin{matrix}1\\\\2\\\\\\end{matrix}}", "\\begin{matrix}1\\\\2\\\\\\end{matrix}"),
        ("\\boxed{a\\\\\\}}", "a\\\\\\}"),  # three: a line break, then an escaped brace
    ],
)
def test_extract_boxed_examples(text, expected):
    assert extract_boxed(text) == expected


@PROPS
@given(st.lists(st.sampled_from(["a", "{", "}", "\\boxed{", " "]), max_size=30).map("".join))
def test_extract_boxed_matches_oracle(text):
    assert extract_boxed(text) == ref_boxed(text)


def ref_spans(text: str) -> list[tuple[int, int]]:
    """Every complete box's content span, read box by box from its own start (Spec §6.4): braces
    nest; a backslash takes the character after it (as TeX reads a control symbol), so a brace after
    it is content, and after a line break ``\\\\`` is not."""
    spans = []
    for m in re.finditer(re.escape("\\boxed{"), text):
        depth, i = 1, m.end()
        while i < len(text):
            if text[i] == "\\":
                i += 2
                continue
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                spans.append((m.end(), i))
                break
            i += 1
    return spans


@PROPS
@given(st.lists(st.sampled_from(["a", "{", "}", "\\boxed{", "\\", "\\\\", "\\{", "\\}", "\\boxed"]), max_size=40)
       .map("".join))
def test_boxed_spans_match_box_by_box_reading(text):
    """The one-pass reading (linear also with many open boxes) finds the spans of the definition."""
    assert _boxed_spans(text) == ref_spans(text)


# ---------------------------------------------------------------------------------------------
# Scheduler: hand-checked scenarios
# ---------------------------------------------------------------------------------------------


def _feed_text(sch: Scheduler, text: str):
    """Single worker: sample `text` one character per tick; return the outcomes."""
    return [sch.observe([ord(c)]) for c in text]


def test_step_change_exact_char_tokenizer():
    cfg = SchedulerConfig(collab_every=None)
    sch = Scheduler(1, CharTok.decode, CharTok.encode, cfg)
    assert sch.initial_feeds() == [CharTok.encode("**Alice [1]:** ")]
    outs = _feed_text(sch, "Hi.\n\nOk")
    # "H", "i", ".", "\n": normal decode steps
    for out, c in zip(outs[:4], "Hi.\n"):
        assert out.feeds == [[ord(c)]] and out.flushes == [] and not out.done
    # the second "\n" is the closing token: flushed step excludes it; it is fed first, then prefix
    change = outs[4]
    assert change.flushes == [0]
    (step,) = change.finished_steps
    assert step == FinishedStep(0, 1, tuple(CharTok.encode("**Alice [1]:** Hi.\n")), "**Alice [1]:** Hi.\n")
    assert change.feeds == [CharTok.encode("\n**Alice [2]:** ")]
    assert sch.current_text(0) == "\n**Alice [2]:** Ok"
    assert sch.step_index(0) == 2
    assert sch.history == [step]
    assert sch.generated(0) == CharTok.encode("Hi.\n\nOk")


def test_closing_token_does_not_retrigger():
    """Newlines right after a step change are new-step text without punctuation (Spec §6.2)."""
    sch = Scheduler(1, MergeTok.decode, MergeTok.encode, SchedulerConfig(collab_every=None))
    outs = [sch.observe([t]) for t in [ord("x"), ord("."), MergeTok.NN, MergeTok.NN, MergeTok.NN]]
    assert [o.flushes for o in outs] == [[], [], [0], [], []]
    assert outs[2].feeds == [[MergeTok.NN, *MergeTok.encode("**Alice [2]:** ")]]
    sch = Scheduler(1, CharTok.decode, CharTok.encode, SchedulerConfig(collab_every=None))
    outs = _feed_text(sch, "x.\n\n\n\n\n")
    assert [o.flushes for o in outs] == [[], [], [], [0], [], [], []]


def test_flush_order_ties_lower_index_first():
    sch = Scheduler(3, CharTok.decode, CharTok.encode, SchedulerConfig(collab_every=None))
    streams = ["ab.\n\n", "a.\n\nb", "xy.\n\n"]
    outs = [sch.observe([ord(s[t]) for s in streams]) for t in range(5)]
    assert [o.flushes for o in outs] == [[], [], [], [1], [0, 2]]
    assert [(s.worker, s.index) for s in sch.history] == [(1, 1), (0, 1), (2, 1)]
    assert sch.history_text() == "**Bob [1]:** a.\n**Alice [1]:** ab.\n**Carol [1]:** xy.\n"


def test_collab_prompt_timing():
    cfg = SchedulerConfig(collab_prompt="C? ", collab_every=6)
    sch = Scheduler(1, CharTok.decode, CharTok.encode, cfg)
    outs = _feed_text(sch, "a.\n\nbcd.\n\ne.\n\n")
    changes = [o.feeds[0] for o in outs if o.flushes]
    # 4 tokens sampled at the first change (< 6): no prompt; 10 at the second: prompt; then
    # the counter restarts: 4 since then at the third: no prompt.
    assert [CharTok.decode(f) for f in changes] == [
        "\n**Alice [2]:** ",
        "\n**Alice [3]:** C? ",
        "\n**Alice [4]:** ",
    ]
    # exactly collab_every tokens since the last one is enough (">=")
    cfg = SchedulerConfig(collab_prompt="C? ", collab_every=4)
    sch = Scheduler(1, CharTok.decode, CharTok.encode, cfg)
    outs = _feed_text(sch, "a.\n\n")
    assert CharTok.decode(outs[-1].feeds[0]) == "\n**Alice [2]:** C? "
    # the collab prompt's own text is not boundary text
    cfg = SchedulerConfig(collab_prompt="Busy?\n\n", collab_every=1)
    sch = Scheduler(1, CharTok.decode, CharTok.encode, cfg)
    outs = _feed_text(sch, "a.\n\nb")
    assert [o.flushes for o in outs] == [[], [], [], [0], []]


def test_eos_stops_worker_without_flush():
    cfg = SchedulerConfig(eos_token_ids=frozenset({EOS}), collab_every=None)
    sch = Scheduler(2, CharTok.decode, CharTok.encode, cfg)
    o1 = sch.observe([ord("a"), EOS])
    assert o1.stopped == [1] and o1.feeds == [[ord("a")], []] and not o1.done
    with pytest.raises(ValueError, match="stopped"):
        sch.observe([ord("b"), ord("c")])
    o2 = sch.observe([EOS, None])
    assert o2.stopped == [0] and o2.done and o2.reason == "eos" and o2.flushes == []
    assert sch.generated(1) == [EOS]
    assert sch.current_text(0) == "**Alice [1]:** a"
    with pytest.raises(RuntimeError, match="over"):
        sch.observe([None, None])


def test_boxed_stop_only_on_finished_step():
    sch = Scheduler(1, CharTok.decode, CharTok.encode, SchedulerConfig(collab_every=None))
    outs = _feed_text(sch, "So \\boxed{4}.\n\n")
    assert not any(o.done for o in outs[:-1])  # complete box, but the step is not finished
    assert outs[-1].done and outs[-1].reason == "boxed" and outs[-1].flushes == [0]
    assert sch.answer() == "4"
    sch = Scheduler(1, CharTok.decode, CharTok.encode, SchedulerConfig(stop_on_boxed=False))
    outs = _feed_text(sch, "So \\boxed{4}.\n\n")
    assert not any(o.done for o in outs)


def test_a_blank_box_neither_stops_the_run_nor_is_its_answer():
    """Spec §6.4: a worker echoing the instruction "put the answer in \\boxed{}" ended the run ("boxed",
    answer ``''``), so neither the budget nor the finisher came (the evaluation then had no answer)."""
    sch = Scheduler(1, CharTok.decode, CharTok.encode, SchedulerConfig(collab_every=None))
    outs = _feed_text(sch, "Put the final answer in \\boxed{}.\n\n")
    assert not any(o.done for o in outs) and sch.answer() is None
    outs = _feed_text(sch, "So \\boxed{4}.\n\n")
    assert outs[-1].done and outs[-1].reason == "boxed" and sch.answer() == "4"


def test_answer_falls_back_to_current_text():
    sch = Scheduler(2, CharTok.decode, CharTok.encode, SchedulerConfig(collab_every=None))
    assert sch.answer() is None
    for a, b in zip("a.\n\n\\boxed{xy", "\\boxed{y} and"):
        sch.observe([ord(a), ord(b)])
    # nothing boxed in the history; worker 0's box is still open, worker 1's is complete
    assert sch.history_text() == "**Alice [1]:** a.\n"
    assert sch.answer() == "y"
    sch.observe([ord("}"), ord(".")])
    assert sch.answer() == "xy"  # now worker 0 (lower index) has a complete box too


def test_budget_exact_and_snapshots():
    cfg = SchedulerConfig(max_ticks=5, snapshot_ticks=(2, 5, 9), collab_every=None)
    sch = Scheduler(2, CharTok.decode, CharTok.encode, cfg)
    outs = [sch.observe([ord("a"), ord(c)]) for c in "b.\n\nc"]
    assert [o.done for o in outs] == [False] * 4 + [True]
    assert outs[-1].reason == "budget" and sch.tick == 5
    assert [o.snapshot is not None for o in outs] == [False, True, False, False, True]
    snap = outs[-1].snapshot
    assert snap.tick == 5 and snap.history_text == "**Bob [1]:** b.\n"
    assert snap.current_texts == ("**Alice [1]:** aaaaa", "\n**Bob [2]:** c")
    assert sch.snapshots == [outs[1].snapshot, snap]
    with pytest.raises(RuntimeError):
        sch.observe([1, 1])
    # max_ticks=0: over before the first tick
    sch = Scheduler(1, CharTok.decode, CharTok.encode, dataclasses.replace(cfg, max_ticks=0))
    assert sch.done and sch.reason == "budget"


def test_finisher_feed_and_templates():
    sch = Scheduler(1, CharTok.decode, CharTok.encode)
    assert CharTok.decode(sch.finisher_feed()) == prompts.DEFAULT_FINISHER
    assert prompts.DEFAULT_FINISHER.endswith("\\boxed{")
    t = dataclasses.replace(prompts.PromptTemplates(), step_prefix="<{name}:{k}> ", finisher="F{")
    cfg = SchedulerConfig.from_templates(t, collab_every=None)
    sch = Scheduler(1, CharTok.decode, CharTok.encode, cfg)
    assert CharTok.decode(sch.finisher_feed()) == "F{"
    assert CharTok.decode(sch.initial_feeds()[0]) == "<Alice:1> "
    # finisher text + continuation closes the box
    assert extract_boxed("F \\boxed{" + "12}") == "12"


def test_custom_names_and_boundary():
    cfg = SchedulerConfig(names=("X", "Y", "Z"), boundary=lambda s: s.endswith(";"))
    sch = Scheduler(2, CharTok.decode, CharTok.encode, cfg)
    assert [CharTok.decode(f) for f in sch.initial_feeds()] == ["**X [1]:** ", "**Y [1]:** "]
    out = sch.observe([ord(";"), ord("a")])
    assert out.flushes == [0]


def test_contiguous_layout():
    cfg = SchedulerConfig(steps=False, collab_every=1)
    sch = Scheduler(1, CharTok.decode, CharTok.encode, cfg)
    outs = _feed_text(sch, "a.\n\nb.\n\n")
    assert all(o.flushes == [] and o.feeds == [[ord(c)]] for o, c in zip(outs, "a.\n\nb.\n\n"))
    assert sch.current_text(0) == "**Alice [1]:** a.\n\nb.\n\n"
    outs = _feed_text(sch, "\\boxed{3}")
    assert not any(o.done for o in outs[:-1])
    assert outs[-1].done and outs[-1].reason == "boxed"  # the box closes at "}"
    assert sch.answer() == "3"


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Scheduler(0, CharTok.decode, CharTok.encode), "workers must be >= 1"),
        (
            lambda: Scheduler(3, CharTok.decode, CharTok.encode, SchedulerConfig(names=("A", "B"))),
            "2 names for 3 workers",
        ),
        (lambda: SchedulerConfig(collab_every=0), "collab_every=None to disable"),
        (lambda: SchedulerConfig(max_ticks=-1), "max_ticks=None for no budget"),
        (lambda: SchedulerConfig(snapshot_ticks=(0,)), "first tick is 1"),
        (lambda: Scheduler(2, CharTok.decode, CharTok.encode).observe([1]), "1 entries but there are 2"),
        (lambda: Scheduler(1, CharTok.decode, CharTok.encode).observe([None]), "must\\s+have sampled"),
        (lambda: Scheduler(1, CharTok.decode, CharTok.encode).observe([-3]), "negative"),
    ],
)
def test_validation_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_type_errors():
    with pytest.raises(TypeError, match="int token id"):
        Scheduler(1, CharTok.decode, CharTok.encode).observe(["a"])
    with pytest.raises(TypeError, match="callables"):
        Scheduler(1, None, CharTok.encode)


def test_module_is_pure_python():
    """scheduler and prompts must not import torch or transformers (docs/architecture.md: pure floor 1)."""
    src = Path(__file__).resolve().parents[1] / "src" / "hogwild_ref"
    for name in ("scheduler.py", "prompts.py"):
        tree = ast.parse((src / name).read_text())
        mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not mods & {"torch", "transformers", "numpy"}, (name, mods)


# ---------------------------------------------------------------------------------------------
# Scheduler: property tests against the oracle
# ---------------------------------------------------------------------------------------------


@PROPS
@given(case_st())
def test_scheduler_matches_reference(case):
    """Feeds, flushes (order), finished steps, stops, done/reason and snapshots per tick."""
    tok, streams, cfg = case
    sch, outs, init = run(tok, streams, cfg)
    ref = simulate(tok, streams, cfg, sch.names)
    W = len(streams)
    assert init == [tok.encode(fill_prefix(cfg.step_prefix, sch.names[w], 1)) for w in range(W)]
    assert len(outs) == ref["tick"] == sch.tick
    for t, (out, r) in enumerate(zip(outs, ref["ticks"]), start=1):
        assert out.feeds == r["feeds"], t
        assert out.flushes == r["flushes"] == sorted(r["flushes"]), t
        assert [s.worker for s in out.finished_steps] == out.flushes
        assert out.stopped == r["stops"], t
        assert out.reason == r["reason"], t
        assert out.done == (r["reason"] is not None), t
        if t in cfg.snapshot_ticks:
            assert out.snapshot is not None and out.snapshot.tick == t
            assert out.snapshot.history_text == r["history_text"]
            assert out.snapshot.current_texts == r["current_texts"]
            assert out.snapshot.answer == ref_boxed(r["history_text"])
        else:
            assert out.snapshot is None
    assert sch.done == (ref["reason"] is not None) and sch.reason == ref["reason"]
    assert [s.tick for s in sch.snapshots] == [t for t in range(1, sch.tick + 1) if t in cfg.snapshot_ticks]
    # the history: flush order across ticks, contents, indices
    assert [(s.worker, s.index, list(s.token_ids)) for s in sch.history] == ref["history"]
    assert all(s.text == tok.decode(list(s.token_ids)) for s in sch.history)
    assert [s for o in outs for s in o.finished_steps] == sch.history
    for w in range(W):
        assert sch.current_tokens(w) == ref["cur"][w]
        assert sch.generated(w) == streams[w][: len(sch.generated(w))]


@PROPS
@given(case_st())
def test_fed_stream_is_flushed_steps_plus_current(case):
    """Everything returned as feed for w = w's flushed steps + its current step (Spec §6.2)."""
    tok, streams, cfg = case
    sch, outs, init = run(tok, streams, cfg)
    for w in range(len(streams)):
        fed = list(init[w]) + [i for o in outs for i in o.feeds[w]]
        flushed = [i for s in sch.history if s.worker == w for i in s.token_ids]
        assert fed == flushed + sch.current_tokens(w)
        # each finished step after the first starts with its closing token, then the prefix
        mine = [s for s in sch.history if s.worker == w]
        assert [s.index for s in mine] == list(range(1, len(mine) + 1))
        if mine:
            pre1 = tok.encode(fill_prefix(cfg.step_prefix, sch.names[w], 1))
            assert list(mine[0].token_ids[: len(pre1)]) == pre1
        for prev, s in zip(mine, mine[1:]):
            pre = tok.encode(fill_prefix(cfg.step_prefix, sch.names[w], s.index))
            assert list(s.token_ids[1 : 1 + len(pre)]) == pre
        # the EOS token is never fed
        if sch.is_stopped(w):
            assert sch.generated(w)[-1] == EOS and EOS not in fed


@PROPS
@given(case_st())
def test_segmentation_from_transcript(case):
    """Recompute where steps must end from each worker's sampled transcript (Spec §6.1).

    Cut the sampled tokens (EOS excluded) into chunks, each ending in a closing token: a
    finished chunk is the *shortest* prefix of the remaining transcript whose text the
    predicate accepts; the trailing chunk is accepted by no prefix. The scheduler's
    finished steps must be exactly these chunks (minus the closing token), behind their
    prefix (+ collab prompt).
    """
    tok, streams, cfg = case
    sch, outs, _ = run(tok, streams, cfg)
    for w in range(len(streams)):
        gen = [x for x in sch.generated(w) if x != EOS]
        chunks, start = [], 0
        for i in range(len(gen)):
            if ref_boundary(tok.decode(gen[start : i + 1])):
                chunks.append(gen[start : i + 1])
                start = i + 1
        tail = gen[start:]
        mine = [s for s in sch.history if s.worker == w]
        assert len(mine) == len(chunks)
        closing = [None] + [c[-1] for c in chunks]
        for n, (s, chunk) in enumerate(zip(mine, chunks)):
            # the step's generated part is the chunk minus its closing token, at the end
            body = chunk[:-1]
            assert list(s.token_ids[len(s.token_ids) - len(body) :]) == body
            if closing[n] is not None:
                assert s.token_ids[0] == closing[n]
        cur = sch.current_tokens(w)
        if tail:
            assert cur[len(cur) - len(tail) :] == tail
        if chunks and not tail:
            assert cur[0] == chunks[-1][-1]


@PROPS
@given(case_st(steps=False))
def test_contiguous_layout_properties(case):
    """steps=False: feed is always [sampled], no flushes, prefix only once (Spec §6.2)."""
    tok, streams, cfg = case
    sch, outs, init = run(tok, streams, cfg)
    ref = simulate(tok, streams, cfg, sch.names)
    assert sch.history == [] and all(o.flushes == [] for o in outs)
    assert [o.reason for o in outs] == [r["reason"] for r in ref["ticks"]]
    for w in range(len(streams)):
        gen = sch.generated(w)
        for t, o in enumerate(outs):
            if t < len(gen) and gen[t] != EOS:
                assert o.feeds[w] == [gen[t]]
            else:
                assert o.feeds[w] == []
        assert sch.current_tokens(w) == init[w] + [x for x in gen if x != EOS]


@PROPS
@given(
    st.sampled_from(TOKENIZERS),
    st.integers(1, 4),
    st.integers(1, 30),
    st.lists(st.sampled_from(["a", ".", "\n", "\n\n", "\\boxed{1}"]), min_size=40, max_size=40),
)
def test_budget_done_exactly_at_max_ticks(tok, W, max_ticks, pieces):
    """With no EOS and no boxed stop, done is False before max_ticks and True at it (Spec §6.5)."""
    ids = [i for p in pieces for i in tok.encode(p)][:40]
    ids += [ord("a")] * (40 - len(ids))
    cfg = SchedulerConfig(max_ticks=max_ticks, stop_on_boxed=False, collab_every=3)
    sch, outs, _ = run(tok, [ids] * W, cfg)
    assert [o.done for o in outs] == [False] * (max_ticks - 1) + [True]
    assert outs[-1].reason == "budget" and sch.tick == max_ticks


@pytest.mark.parametrize("kwargs, words", [
    ({"steps": "no"}, "steps must be True or False"),
    ({"stop_on_boxed": None}, "stop_on_boxed must be True or False"),
    ({"max_ticks": 1.5}, "max_ticks must be an int or None"),
    ({"max_ticks": "3"}, "max_ticks must be an int or None"),
    ({"collab_every": True}, "collab_every must be an int or None"),
    ({"eos_token_ids": 5}, "eos_token_ids must be a set of token ids"),
    ({"eos_token_ids": {"2"}}, "eos_token_ids must be a set of token ids"),
    ({"snapshot_ticks": (True,)}, "snapshot_ticks must be tick counts"),
])
def test_scheduler_settings_of_the_wrong_kind_are_named(kwargs, words):
    """A scheduler probe: ``steps="no"`` kept steps on (a truthy string), ``max_ticks=1.5`` ran two
    ticks, ``collab_every=True`` meant 1, and ``max_ticks="3"`` or ``eos_token_ids=5`` failed with
    Python's own TypeError; each is refused naming the setting."""
    with pytest.raises((TypeError, ValueError), match=words):
        SchedulerConfig(**kwargs)


def test_observe_refuses_a_mapping():
    """``observe({0: 97})`` iterated the mapping's keys and fed token 0 without a word."""
    sch = Scheduler(1, CharTok.decode, CharTok.encode, SchedulerConfig())
    with pytest.raises(TypeError, match="one token id"):
        sch.observe({0: 97})


def test_scheduler_settings_take_any_integer_and_any_iterable_of_ids():
    """The checks above keep what worked: a numpy integer budget is an int, and an iterator of EOS ids
    is read once (not emptied by the check)."""
    import numpy as np

    cfg = SchedulerConfig(max_ticks=np.int64(5), collab_every=np.int32(7), eos_token_ids=(t for t in [2, 3]))
    assert (cfg.max_ticks, cfg.collab_every, cfg.eos_token_ids) == (5, 7, frozenset({2, 3}))
    assert type(cfg.max_ticks) is int
