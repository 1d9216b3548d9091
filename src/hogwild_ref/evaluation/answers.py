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
  ``1,000`` and ``18.0`` are integers), read after their last ``=`` and, failing that, without a unit
  at their end (``m+n=33``, ``18\\text{ dollars}``, ``7 apples``), and are compared as integers;
* ``"integers"`` (``builtin:arith``): an ordered, comma-separated list of integers, compared item by
  item.

``math-verify``'s own time limits use ``SIGALRM``, which works only in the main thread, so they are
off (``parsing_timeout=None``, ``timeout_seconds=None``); and a check can spend minutes in one call
that holds the interpreter, where no watching thread can run. So math-verify runs in a child process
(:mod:`hogwild_ref.mathcheck`), given :data:`CHECK_TIMEOUT` seconds a check: a check that runs past it
is stopped (the child is killed; the next check starts another) and the answer counts as incorrect,
with the reason ``"timeout"``: never an exception.
"""

from __future__ import annotations

import atexit
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from ..mathcheck import Checker
from ..scheduler import _boxed_spans

__all__ = ["CHECK_TIMEOUT", "CHECKER", "KINDS", "Verdict", "answers_match", "check_answer", "checker_stack", "checker_version",
           "extract_answer", "majority_vote", "normalise", "require_checker"]

#: The checker's package name; every result row records it with its version (:func:`checker_version`).
CHECKER = "math-verify"
#: Seconds one check may take before it is stopped and counted as incorrect.
CHECK_TIMEOUT = 5.0
#: Answer kinds (see the module doc).
KINDS = ("math", "integer", "integers")

_TEXT_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
#: a unit at the end: 18\text{ dollars}, 18\,\mathrm{m}^2, 7 apples (words after a digit)
_UNIT = re.compile(r"(?:\\(?:text|textrm|mathrm|mbox)\s*\{[^{}]*\}(?:\^\{?[23]\}?)?|(?<=\d)(?:\s+[a-zA-Z]+)+)\s*\.?\s*$")
_ASSIGN = re.compile(r"^[a-zA-Z]\w*\s*=\s*(?!=)")
#: the last equals sign (not part of <=, >=, != or ==): an integer answer is what it is set to (m+n=33)
_LAST_EQUALS = re.compile(r"^.*(?<![<>!=])=(?!=)", re.DOTALL)
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
    s = answer.strip().replace("\u2212", "-")  # U+2212, the minus sign of typeset text
    for _ in range(3):
        s = _TEXT_WRAPPERS.sub(r"\1", s)
    s = _SPACING.sub("", s).replace("{,}", ",")  # 1{,}234: a thousands separator as LaTeX sets it
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
    ``"no answer"``, ``"not an integer"``, ``"timeout"`` or ``"checker error: ..."``.
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


def checker_stack() -> dict[str, str]:
    """The versions of what math-verify's verdicts rest on: math-verify, the LaTeX parser it pins
    (``latex2sympy2_extended``) and sympy, which it does not pin (Spec §13.1); ``"?"`` for one
    that is not installed."""
    import importlib.metadata

    versions = {}
    for name in (CHECKER, "latex2sympy2_extended", "sympy"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "?"
    return versions


@lru_cache(maxsize=1)
def checker_version() -> str:
    """The installed ``math-verify`` version (ImportError when it is not installed)."""
    import importlib.metadata

    import math_verify  # noqa: F401 - installed and importable, not only its metadata

    return importlib.metadata.version(CHECKER)


#: the child process that runs math-verify (started at the first check, stopped at exit)
_CHECKER = Checker()
atexit.register(_CHECKER.close)


def _plain(s: str) -> str:
    return re.sub(r"\s+", "", s).strip("$")


def _as_int(s: str) -> str | None:
    """The integer ``s`` writes (Spec §13.1, ``integer``), as its canonical decimal digits (no
    leading zeros, ``-`` for negatives, never ``-0``: compared as strings, so an integer of any
    length is read); else None. Also what ``s`` sets with its last ``=`` (``m+n=33``), and with a
    unit after it (``18\\text{ dollars}``, ``18\\,\\mathrm{m}^2``, ``7 apples``)."""
    value = _LAST_EQUALS.sub("", s, count=1)
    for form in (value, _UNIT.sub("", value)):
        m = _INTEGER.fullmatch(normalise(form))
        if m:
            digits = m.group(1).lstrip("+-").lstrip("0") or "0"
            return "-" + digits if m.group(1).startswith("-") and digits != "0" else digits
    return None


def _decide(predicted: str, gold: str, kind: str) -> Verdict:
    """The verdict of the integer kinds (Spec §13.1), which never call math-verify."""
    if kind == "integer":
        p, g = _as_int(predicted), _as_int(gold)
        if p is None or g is None:
            return Verdict(False, "not an integer")
        return Verdict(p == g, "integer")
    ps, gs = [_as_int(x) for x in predicted.split(",")], [_as_int(x) for x in gold.split(",")]  # "integers"
    if None in ps or None in gs:
        return Verdict(False, "not an integer")
    return Verdict(ps == gs, "integers")


def _verify(predicted: str, gold: str, timeout: float) -> Verdict:
    """math-verify's verdict, bounded by ``timeout`` seconds (:mod:`hogwild_ref.mathcheck`)."""
    result = _CHECKER.check(gold, predicted, timeout)
    if isinstance(result, str):
        return Verdict(False, result)
    return Verdict(result, "math-verify")


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
    return _verify(predicted, gold, timeout)


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
        for g in groups:  # the same text is the same answer, also when it is not one of the kind's forms
            if _plain(a) == _plain(g[0]) or answers_match(a, g[0], kind):
                g.append(a)
                break
        else:
            groups.append([a])
    if not groups:
        return None
    best = max(range(len(groups)), key=lambda i: (len(groups[i]), -i))
    return groups[best][0]
