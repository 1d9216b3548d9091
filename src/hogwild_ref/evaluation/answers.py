"""Answer extraction, and correctness decided by HF's ``math-verify`` (Spec §13.1).

No torch (floor 1): ``math-verify`` and the sympy it runs on are imported when the first answer is
checked. The predicted answer is the content of the last *parseable* ``\\boxed{...}`` of a text: the
last complete box whose content is not empty after :func:`normalise`.

:func:`check_answer` decides whether a predicted answer is correct, by the problem's *kind*:

* ``"math"`` (MATH, MATH-500, LIMO, OlympiadBench, files by default): equal strings (whitespace and
  ``$`` aside) are correct at once, so identical tuples or intervals are never scored wrong; else
  both answers are parsed by ``math_verify.parse`` (each wrapped in ``\\boxed{}``) and compared by
  ``math_verify.verify``, with the gold answer first;
* ``"integer"`` (AIME, GSM8k's ``#### n``): both must be integers after :func:`normalise` (``033``,
  ``1,000`` and ``18.0`` are integers) and are compared as integers;
* ``"integers"`` (``builtin:arith``): an ordered, comma-separated list of integers, compared item by
  item.

``math-verify``'s own time limits use ``SIGALRM``, which works only in the main thread, so they are
off (``parsing_timeout=None``, ``timeout_seconds=None``); instead each check runs in a daemon thread
that is given :data:`CHECK_TIMEOUT` seconds. A check that runs past it is abandoned (the thread
ends on its own; it cannot be interrupted) and the answer counts as incorrect, with the reason
``"timeout"``: never an exception.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

from ..scheduler import _boxed_spans

__all__ = ["CHECK_TIMEOUT", "CHECKER", "KINDS", "Verdict", "answers_match", "check_answer", "checker_version",
           "extract_answer", "majority_vote", "normalise", "require_checker"]

#: The checker's package name; every result row records it with its version (:func:`checker_version`).
CHECKER = "math-verify"
#: Seconds one check may take before it is abandoned and counted as incorrect.
CHECK_TIMEOUT = 5.0
#: Answer kinds (see the module doc).
KINDS = ("math", "integer", "integers")

_TEXT_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_ASSIGN = re.compile(r"^[a-zA-Z]\w*\s*=\s*(?!=)")
_INTEGER = re.compile(r"([-+]?\d+)(?:\.0*)?")


def extract_answer(text: str | None) -> str | None:
    """Content of the last parseable ``\\boxed{...}`` of ``text`` (Spec §13.1), or None."""
    if not text:
        return None
    for a, b in reversed(_boxed_spans(text)):
        content = text[a:b].strip()
        if normalise(content):
            return content
    return None


def normalise(answer: str) -> str:
    """A canonical string form (Spec §13.1): LaTeX wrappers and spacing, ``$``, a leading
    ``x =``, degree and percent signs, thousands separators, a trailing period and all whitespace
    removed; ``\\dfrac``/``\\tfrac`` written ``\\frac``; lower case. Used to find a non-empty box and
    to read integers; correctness of ``"math"`` answers is math-verify's."""
    s = answer.strip()
    for _ in range(3):
        s = _TEXT_WRAPPERS.sub(r"\1", s)
    s = _SPACING.sub("", s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\%", "").replace("%", "").replace("\\$", "")
    s = s.strip().strip("$").strip()
    s = _ASSIGN.sub("", s)
    s = _THOUSANDS.sub("", s)
    s = s.rstrip(".").strip()
    return re.sub(r"\s+", "", s).lower()


@dataclass(frozen=True)
class Verdict:
    """Whether an answer is correct, and how that was decided.

    ``how`` is ``"string"`` (equal strings), ``"math-verify"``, ``"integer"``, ``"integers"``,
    ``"no answer"``, ``"not an integer"`` or ``"timeout"``.
    """

    correct: bool
    how: str


def require_checker() -> str:
    """``"math-verify==VERSION"``; a ValueError naming the pip command when it is not installed."""
    try:
        return f"{CHECKER}=={checker_version()}"
    except ImportError:
        raise ValueError("checking answers needs math-verify: pip install 'hogwild_ref[eval]' "
                         "(or pip install math-verify)") from None


@lru_cache(maxsize=1)
def checker_version() -> str:
    """The installed ``math-verify`` version (ImportError when it is not installed)."""
    import importlib.metadata

    import math_verify  # noqa: F401 - installed and importable, not only its metadata

    return importlib.metadata.version(CHECKER)


@lru_cache(maxsize=1)
def _math_verify() -> Any:
    import math_verify

    # its notice that our own time bound must replace the (disabled) SIGALRM one: we do (CHECK_TIMEOUT)
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return math_verify


@lru_cache(maxsize=8192)
def _parse(text: str) -> tuple[Any, ...]:
    mv = _math_verify()
    return tuple(mv.parse("\\boxed{" + text + "}", parsing_timeout=None))


def _plain(s: str) -> str:
    return re.sub(r"\s+", "", s).strip("$")


def _as_int(s: str) -> int | None:
    m = _INTEGER.fullmatch(normalise(s))
    return int(m.group(1)) if m else None


def _decide(predicted: str, gold: str, kind: str) -> Verdict:
    if kind == "integer":
        p, g = _as_int(predicted), _as_int(gold)
        if p is None or g is None:
            return Verdict(False, "not an integer")
        return Verdict(p == g, "integer")
    if kind == "integers":
        ps, gs = [_as_int(x) for x in predicted.split(",")], [_as_int(x) for x in gold.split(",")]
        if None in ps or None in gs:
            return Verdict(False, "not an integer")
        return Verdict(ps == gs, "integers")
    if _plain(predicted) == _plain(gold):
        return Verdict(True, "string")
    gold_parsed, pred_parsed = _parse(gold), _parse(predicted)
    if not gold_parsed or not pred_parsed:
        return Verdict(False, "math-verify")
    ok = _math_verify().verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None)
    return Verdict(bool(ok), "math-verify")


def check_answer(predicted: str | None, gold: str | None, kind: str = "math", *,
                 timeout: float = CHECK_TIMEOUT) -> Verdict:
    """Whether ``predicted`` answers a problem whose gold answer is ``gold`` (Spec §13.1).

    Decided by ``kind`` (see the module doc) within ``timeout`` seconds; a check that takes longer
    is incorrect with ``how="timeout"``. No answer (None or empty) is never correct.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; choose one of {', '.join(KINDS)}")
    if predicted is None or gold is None or not normalise(predicted) or not normalise(gold):
        return Verdict(False, "no answer")
    if kind != "math":
        return _decide(predicted, gold, kind)
    if _plain(predicted) == _plain(gold):  # cheap, and never subject to the parser's limits
        return Verdict(True, "string")
    _math_verify()  # import in this thread: an import is not a check, and must not count against the bound
    box: list[Verdict | BaseException] = []

    def work() -> None:
        try:
            box.append(_decide(predicted, gold, kind))
        except BaseException as exc:  # noqa: BLE001 - reported below as this answer's verdict
            box.append(exc)

    t = threading.Thread(target=work, name="answer-check", daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        return Verdict(False, "timeout")
    result = box[0]
    if isinstance(result, BaseException):
        return Verdict(False, f"checker error: {type(result).__name__}")
    return result


def answers_match(predicted: str | None, gold: str | None, kind: str = "math") -> bool:
    """Whether ``predicted`` is correct for ``gold`` (:func:`check_answer`'s verdict)."""
    return check_answer(predicted, gold, kind).correct


def majority_vote(answers: Sequence[str | None], kind: str = "math") -> str | None:
    """Self-consistency (Spec §13.4): the most frequent answer, answers that match counting as one.

    ``None`` answers do not vote; a tie goes to the answer whose group appeared first. Returns the
    first answer of the winning group, or None when no answer voted.
    """
    groups: list[list[str]] = []
    for a in answers:
        if a is None or not normalise(a):
            continue
        for g in groups:
            if answers_match(a, g[0], kind):
                g.append(a)
                break
        else:
            groups.append([a])
    if not groups:
        return None
    best = max(range(len(groups)), key=lambda i: (len(groups[i]), -i))
    return groups[best][0]
