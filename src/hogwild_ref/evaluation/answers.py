"""Answer extraction, normalisation and comparison for evaluation (Spec §13.1).

Pure Python. The predicted answer is the content of the last *parseable* ``\\boxed{...}`` of a
text: the last complete box whose content is not empty after normalisation. Two answers match when
they split (at top-level commas and semicolons) into the same number of parts and every part
matches: numerically when both parse as numbers (relative tolerance :data:`REL_TOL`, absolute
:data:`ABS_TOL`), else as normalised strings.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Sequence

from ..scheduler import _boxed_spans

__all__ = ["ABS_TOL", "REL_TOL", "answers_match", "extract_answer", "majority_vote", "normalise", "parse_number", "split_parts"]

#: Numeric comparison: ``|a - b| <= max(REL_TOL * max(|a|, |b|), ABS_TOL)`` (``math.isclose``).
REL_TOL = 1e-6
ABS_TOL = 1e-9

_TEXT_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_ASSIGN = re.compile(r"^[a-zA-Z]\w*\s*=\s*(?!=)")
_FRAC = re.compile(r"^(-?)\\[dt]?frac\s*\{([^{}]+)\}\s*\{([^{}]+)\}$")
_SIMPLE_FRAC = re.compile(r"^(-?\d+)/(\d+)$")
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$")


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
    removed; ``\\dfrac``/``\\tfrac`` written ``\\frac``; lower case."""
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


def parse_number(part: str) -> Fraction | float | None:
    """The value of a normalised answer part: an integer, a decimal, ``a/b`` or ``\\frac{a}{b}``; else None."""
    s = part
    m = _FRAC.match(s)
    if m:
        num, den = parse_number(m.group(2)), parse_number(m.group(3))
        if num is None or den is None or den == 0:
            return None
        value = Fraction(num) / Fraction(den) if isinstance(num, Fraction) and isinstance(den, Fraction) else float(num) / float(den)
        return -value if m.group(1) else value
    m = _SIMPLE_FRAC.match(s)
    if m:
        den = int(m.group(2))
        return Fraction(int(m.group(1)), den) if den else None
    if _NUMBER.match(s):
        if re.fullmatch(r"[-+]?\d+", s):
            return Fraction(int(s))
        try:
            return Fraction(s) if "e" not in s else float(s)
        except (ValueError, ZeroDivisionError):
            return None
    return None


def split_parts(normalised: str) -> list[str]:
    """Split a normalised answer at commas and semicolons outside brackets (a list of answers)."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for c in normalised:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c in ",;" and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


def _part_match(a: str, b: str) -> bool:
    x, y = parse_number(a), parse_number(b)
    if x is not None and y is not None:
        return math.isclose(float(x), float(y), rel_tol=REL_TOL, abs_tol=ABS_TOL)
    return a == b


def answers_match(predicted: str | None, gold: str | None) -> bool:
    """Whether ``predicted`` equals ``gold`` (Spec §13.1); None never matches."""
    if predicted is None or gold is None:
        return False
    p, g = normalise(predicted), normalise(gold)
    if not p or not g:
        return False
    pp, gp = split_parts(p), split_parts(g)
    return len(pp) == len(gp) and all(_part_match(a, b) for a, b in zip(pp, gp))


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """Self-consistency (Spec §13.4): the most frequent answer, answers that match counting as one.

    ``None`` answers do not vote; a tie goes to the answer whose group appeared first. Returns the
    first answer of the winning group, or None when no answer voted.
    """
    groups: list[list[str]] = []
    for a in answers:
        if a is None or not normalise(a):
            continue
        for g in groups:
            if answers_match(a, g[0]):
                g.append(a)
                break
        else:
            groups.append([a])
    if not groups:
        return None
    best = max(range(len(groups)), key=lambda i: (len(groups[i]), -i))
    return groups[best][0]
