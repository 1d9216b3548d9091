"""Evaluation datasets: JSONL files in common layouts, and built-in generated sets (Spec §13.1).

A dataset is a list of :class:`Problem` (``id``, ``problem``, ``answer``). Files are JSON Lines (one
object per line) or a JSON array. Field names (first found wins):

* id: ``id``, ``ID``, ``unique_id``, ``problem_id``, ``idx`` — else ``"{file stem}-{line}"``;
* problem: ``problem``, ``question``, ``Problem``, ``Question``;
* answer: ``answer``, ``Answer``, ``final_answer``, ``expected_answer`` — else the last
  ``\\boxed{}`` of ``solution``/``Solution`` (MATH).

GSM8k's ``answer`` is a worked solution ending in ``#### 72``: the text after the last ``####`` is
the answer (thousands separators removed). MATH, LIMO (``question``/``solution``/``answer``) and AIME
files (``problem``/``answer`` or ``Problem``/``Answer``, ids ``id``/``ID``) work as they are.

Built-in sets are generated deterministically in code, so the pipeline runs without downloads:
``builtin:arith`` — bundles of 5 independent one-step arithmetic word problems answered together
as ``\\boxed{a, b, c, d, e}`` (the "GSM8k x 5" style of the paper: obviously parallel work);
``builtin:arith-K`` bundles ``K`` questions (``K`` from 1 to 10).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..scheduler import extract_boxed

__all__ = ["Problem", "arith_bundle", "builtin_arith", "load_dataset", "problem_from_record"]

ID_FIELDS = ("id", "ID", "unique_id", "problem_id", "idx")
PROBLEM_FIELDS = ("problem", "question", "Problem", "Question")
ANSWER_FIELDS = ("answer", "Answer", "final_answer", "expected_answer")
SOLUTION_FIELDS = ("solution", "Solution")

#: How many problems a built-in set has (``--limit`` takes the first ones).
BUILTIN_SIZE = 200


@dataclass(frozen=True)
class Problem:
    """One evaluation problem: a stable ``id``, the ``problem`` text and the gold ``answer``."""

    id: str
    problem: str
    answer: str


def _first(record: Mapping[str, Any], fields: tuple[str, ...]) -> Any:
    for f in fields:
        if f in record and record[f] is not None:
            return record[f]
    return None


def problem_from_record(record: Mapping[str, Any], default_id: str) -> Problem:
    """A :class:`Problem` from one record in any of the supported field layouts (see the module doc)."""
    if not isinstance(record, Mapping):
        raise ValueError(f"record {default_id} is a {type(record).__name__}, not a JSON object")
    pid = _first(record, ID_FIELDS)
    problem = _first(record, PROBLEM_FIELDS)
    if problem is None:
        raise ValueError(f"record {default_id} has no problem text; expected one of the fields {', '.join(PROBLEM_FIELDS)} "
                         f"(it has {', '.join(record) or 'none'})")
    answer = _first(record, ANSWER_FIELDS)
    if isinstance(answer, str) and "####" in answer:  # GSM8k: worked solution, then "#### 72"
        answer = re.sub(r"(?<=\d),(?=\d{3})", "", answer.rsplit("####", 1)[1].strip())
    if answer is None:
        solution = _first(record, SOLUTION_FIELDS)
        answer = extract_boxed(solution) if isinstance(solution, str) else None
    if answer is None:
        raise ValueError(f"record {default_id} has no answer; expected one of the fields {', '.join(ANSWER_FIELDS)}, "
                         f"or a solution with a \\boxed{{}} answer (it has {', '.join(record) or 'none'})")
    return Problem(str(pid) if pid is not None else default_id, str(problem), str(answer).strip())


def _load_file(path: Path) -> list[Problem]:
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {str(path)!r} does not exist; give a .jsonl/.json file or builtin:arith")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        records = json.loads(text)
    else:
        records = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{i + 1} is not valid JSON ({exc.msg}); a dataset is one JSON object per line") from None
    problems = [problem_from_record(r, f"{path.stem}-{i}") for i, r in enumerate(records)]
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{path} has two problems with id {dup!r}; ids must be unique (results are keyed by them)")
    return problems


# ---------------------------------------------------------------------- builtin:arith
_TEMPLATES: tuple[tuple[str, Callable[[random.Random], tuple[dict[str, int], int]]], ...] = (
    ("{name} has {a} apples and buys {b} more. How many apples does {name} have now?",
     lambda r: (lambda a, b: ({"a": a, "b": b}, a + b))(r.randint(2, 60), r.randint(2, 40))),
    ("A box holds {a} pens. How many pens are in {b} boxes?",
     lambda r: (lambda a, b: ({"a": a, "b": b}, a * b))(r.randint(2, 12), r.randint(2, 9))),
    ("{name} had {a} stickers and gave away {b}. How many stickers are left?",
     lambda r: (lambda b, c: ({"a": b + c, "b": b}, c))(r.randint(2, 30), r.randint(1, 30))),
    ("{a} cookies are shared equally by {b} children. How many cookies does each child get?",
     lambda r: (lambda b, c: ({"a": b * c, "b": b}, c))(r.randint(2, 9), r.randint(2, 9))),
    ("A train has {a} cars with {b} seats each, and {c} seats are taken. How many seats are free?",
     lambda r: (lambda a, b, c: ({"a": a, "b": b, "c": c}, a * b - c))(r.randint(2, 6), r.randint(10, 20), r.randint(1, 19))),
)
_NAMES = ("Tom", "Mia", "Sam", "Lea", "Ben", "Ava", "Max", "Zoe")


def arith_bundle(index: int, questions: int = 5) -> Problem:
    """Problem ``index`` of ``builtin:arith-{questions}``: independent word problems answered together."""
    rng = random.Random(10_007 * questions + index)
    lines, answers = [], []
    for q in range(questions):
        template, make = _TEMPLATES[rng.randrange(len(_TEMPLATES))]
        values, answer = make(rng)
        text = template.format(name=_NAMES[rng.randrange(len(_NAMES))], **values)
        lines.append(f"{q + 1}. {text}" if questions > 1 else text)
        answers.append(str(answer))
    if questions == 1:
        body = lines[0] + " Put the answer in \\boxed{}."
    else:
        body = (f"Answer these {questions} independent questions.\n" + "\n".join(lines)
                + f"\nGive the {questions} answers in order, separated by commas, in one \\boxed{{}}.")
    return Problem(f"arith{questions}-{index}", body, ", ".join(answers))


def builtin_arith(questions: int = 5, size: int = BUILTIN_SIZE) -> list[Problem]:
    """The built-in arithmetic set (see the module doc); deterministic."""
    return [arith_bundle(i, questions) for i in range(size)]


def load_dataset(spec: str, limit: int | None = None) -> list[Problem]:
    """Load ``spec`` — a ``.jsonl``/``.json`` file or ``builtin:NAME`` — keeping the first ``limit`` problems."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 (got {limit}); leave it out for the whole dataset")
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        m = re.fullmatch(r"arith(?:-(\d+))?", name)
        if not m or not 1 <= int(m.group(1) or 5) <= 10:
            raise ValueError(f"unknown built-in dataset {spec!r}; choose builtin:arith or builtin:arith-K (K = 1..10 questions)")
        problems = builtin_arith(int(m.group(1) or 5))
    else:
        problems = _load_file(Path(spec).expanduser())
    return problems[:limit] if limit is not None else problems
