"""Evaluation datasets: files as users keep them offline, and built-in generated sets (Spec §13.1).

A dataset is a list of :class:`Problem` (``id``, ``problem``, ``answer``, answer ``kind``). Sources:

* JSON Lines (one object per line) or a JSON array, UTF-8 (a leading byte-order mark is accepted);
* a parquet file (``.parquet``; pyarrow, the ``eval`` extra): one file (the Hub's shards of a split
  joined first);
* a folder written by ``datasets``' ``save_to_disk`` (a ``Dataset``, or a ``DatasetDict`` of which
  only the split ``split`` is read; ``datasets``, the ``eval`` extra);
* ``builtin:arith`` / ``builtin:arith-K`` (below).

Field names (first found wins), unless ``fields`` names the column (``{"problem": "COL"}``):

* id: ``id``, ``ID``, ``unique_id``, ``problem_id``, ``idx`` — else ``"{file stem}-{record}"``;
* problem: ``problem``, ``question``, ``Problem``, ``Question``;
* answer: ``answer``, ``Answer``, ``final_answer``, ``expected_answer`` — else the last
  ``\\boxed{}`` of ``solution``/``Solution`` (MATH).

GSM8k's ``answer`` is a worked solution ending in ``#### 72``: the text after the last ``####`` is
the answer (thousands separators removed), and an integer. MATH-500 (``problem``/``answer``), LIMO
(``question``/``solution``/``answer``) and AIME files (``problem``/``answer``/``id`` or
``Problem``/``Answer``/``ID``) work as they are. A gold answer given as a list (OlympiadBench's
``final_answer``) is one answer in several parts, written ``a, b``: a one-item list is that item.

Answer kinds (how :func:`~hogwild_ref.evaluation.answers.check_answer` compares): ``kind="auto"``
makes GSM8k answers ``"integer"``, answers of a file whose path names AIME ``"integer"`` when they are
integers, built-in sets ``"integers"`` and everything else ``"math"``; ``"math"`` or ``"integer"``
set it for every problem.

Everything is checked here, before any model loads: malformed JSON (with its line), bytes that
are not UTF-8, CSV files, binary files named otherwise (parquet, gzip, zip, Arrow), folders that
are not ``save_to_disk`` folders, unknown columns (listing the ones there are), empty datasets and
splits, empty problems, duplicate ids, gold answers that are not text, numbers or lists of them,
problems over :data:`MAX_PROBLEM_BYTES`, and a split asked of a source that has none.

Built-in sets are generated deterministically in code, so the pipeline runs without downloads:
``builtin:arith`` — bundles of 5 independent one-step arithmetic word problems answered together
as ``\\boxed{a, b, c, d, e}`` (the "GSM8k x 5" style of the paper: obviously parallel work);
``builtin:arith-K`` bundles ``K`` questions (``K`` from 1 to 10).
"""

from __future__ import annotations

import json
import math
import random
import re
import warnings
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..checks import escaped, unencodable
from ..scheduler import extract_boxed

__all__ = ["MAX_PROBLEM_BYTES", "DatasetNotFoundError", "Problem", "arith_bundle", "builtin_arith", "load_dataset", "parse_fields",
           "problem_from_record"]

ID_FIELDS = ("id", "ID", "unique_id", "problem_id", "idx")
PROBLEM_FIELDS = ("problem", "question", "Problem", "Question")
ANSWER_FIELDS = ("answer", "Answer", "final_answer", "expected_answer")
SOLUTION_FIELDS = ("solution", "Solution")
FIELD_KEYS = ("id", "problem", "answer")
KIND_CHOICES = ("auto", "math", "integer")

#: How many problems a built-in set has (``--limit`` takes the first ones).
BUILTIN_SIZE = 200
#: A problem longer than this (UTF-8 bytes) is refused: at ~4 bytes a token, a MB is ~250k tokens,
#: beyond the context of every model this project runs (the longest, 131,072 tokens).
MAX_PROBLEM_BYTES = 1_000_000
_PIP = "pip install 'hogwild_ref[eval]'"


class DatasetNotFoundError(FileNotFoundError, ValueError):
    """The dataset path names nothing: a bad input, said in one line like the others (a ValueError),
    and a FileNotFoundError for callers that catch that. (Dataset files are the harness's, not the
    spec's: docs/evaluation.md, "Datasets".)"""


@dataclass(frozen=True)
class Problem:
    """One evaluation problem: a stable ``id``, the ``problem`` text, the gold ``answer`` and how
    answers are compared (``kind``: ``"math"``, ``"integer"`` or ``"integers"``, Spec §13.1)."""

    id: str
    problem: str
    answer: str
    kind: str = "math"


def parse_fields(specs: Sequence[str] | None) -> dict[str, str]:
    """``["problem=question", "answer=final"]`` as ``{"problem": "question", "answer": "final"}``."""
    fields: dict[str, str] = {}
    for spec in specs or ():
        key, sep, col = spec.partition("=")
        key, col = key.strip(), col.strip()
        if not sep or key not in FIELD_KEYS or not col:
            raise ValueError(f"--field {spec!r}: write KEY=COLUMN with KEY one of {', '.join(FIELD_KEYS)} "
                             "(e.g. --field problem=question)")
        if key in fields:
            raise ValueError(f"--field {key}= is given twice ({fields[key]!r} and {col!r}); give it once")
        fields[key] = col
    return fields


def _first(record: Mapping[str, Any], fields: tuple[str, ...]) -> Any:
    for f in fields:
        if f in record and record[f] is not None:
            return record[f]
    return None


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise ValueError(f"{where}: the gold answer {value!r} is a {type(value).__name__}; give text or a number")
    if isinstance(value, (float, Decimal)):
        if not math.isfinite(value):
            raise ValueError(f"{where}: the gold answer is {value}; give a finite number")
        integral = value == value.to_integral_value() if isinstance(value, Decimal) else value.is_integer()
        if integral:
            return str(int(value))  # its exact integer (Spec §13.1)
        # else a plain decimal, never 1e-05 (which math-verify does not equate with 0.00001): the
        # shortest decimal that reads back as the float (its repr), without trailing zeros
        text = format(Decimal(repr(value)) if isinstance(value, float) else value, "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(value).strip()


def _gold(value: Any, where: str) -> str:
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{where}: the gold answer is an empty list; give the answer")
        return ", ".join(_scalar(v, where) for v in value)
    return _scalar(value, where)


def problem_from_record(record: Mapping[str, Any], default_id: str, fields: Mapping[str, str] | None = None,
                        where: str | None = None) -> Problem:
    """A :class:`Problem` from one record in any of the supported field layouts (see the module doc);
    ``fields`` names the columns of ``id``/``problem``/``answer`` explicitly."""
    where = where or f"record {default_id}"
    if not isinstance(record, Mapping):
        json_type = {str: "a string", list: "an array", bool: "a boolean", int: "a number", float: "a number"}
        raise ValueError(f"{where} is {json_type.get(type(record), 'null')}, not a JSON object")
    fields = fields or {}
    has = ", ".join(map(str, record)) or "none"
    for key, col in fields.items():
        if col not in record:
            raise ValueError(f"{where} has no field {col!r} (--field {key}={col}); it has: {has}")
        if record[col] is None and key != "id":  # a null id takes the default id, as without --field
            raise ValueError(f"{where}: its {col!r} (--field {key}={col}) is null; every problem needs its {key}")
    pid = record[fields["id"]] if "id" in fields else _first(record, ID_FIELDS)
    problem = record[fields["problem"]] if "problem" in fields else _first(record, PROBLEM_FIELDS)
    if problem is None:
        raise ValueError(f"{where} has no problem text; expected one of the fields {', '.join(PROBLEM_FIELDS)} "
                         f"(it has: {has}); name the column with --field problem=COLUMN")
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError(f"{where}: the problem is {'empty' if isinstance(problem, str) else 'not text'}; "
                         "every problem needs its text")
    _check_text(problem, "problem", where)
    size = len(problem.encode("utf-8"))
    if size > MAX_PROBLEM_BYTES:
        raise ValueError(f"{where}: the problem is {size / 1e6:.1f} MB, about {size // 4:,} tokens at ~4 bytes a "
                         f"token, beyond any supported model's context (at most 131,072 tokens); problems over "
                         f"{MAX_PROBLEM_BYTES / 1e6:.0f} MB are refused: shorten it or leave it out")
    answer = record[fields["answer"]] if "answer" in fields else _first(record, ANSWER_FIELDS)
    kind = "math"
    if isinstance(answer, str) and "####" in answer:  # GSM8k: worked solution, then "#### 72"
        answer = re.sub(r"(?<=\d),(?=\d{3})", "", answer.rsplit("####", 1)[1].strip())
        kind = "integer" if _integral(answer) else "math"
    if answer is None:
        solution = _first(record, SOLUTION_FIELDS)
        answer = extract_boxed(solution) if isinstance(solution, str) else None
    if answer is None:
        raise ValueError(f"{where} has no answer; expected one of the fields {', '.join(ANSWER_FIELDS)}, or a "
                         f"solution with a \\boxed{{}} answer (it has: {has}); name the column with --field answer=COLUMN")
    gold = _gold(answer, where)
    if not gold:
        raise ValueError(f"{where}: the gold answer is empty; every problem needs its answer")
    if isinstance(pid, float) and math.isnan(pid):  # a null in a numeric column (pandas writes NaN): no id
        pid = None
    elif isinstance(pid, float) and pid.is_integer():  # an integer column with a null becomes float (pandas)
        pid = int(pid)
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid).strip()):
        raise ValueError(f"{where}: the id {pid!r} is not a non-empty string or integer")
    for what, text in (("id", pid), ("answer", gold)):
        _check_text(text, what, where)
    return Problem(str(pid) if pid is not None else default_id, problem, gold, kind)


def _check_text(value: Any, what: str, where: str) -> None:
    """Text that cannot be written as UTF-8: a lone surrogate, which JSON can spell (``"\\udce8"``)."""
    bad = unencodable(value) if isinstance(value, str) else None
    if bad is not None:
        raise ValueError(f"{where}: its {what} is not valid text: {bad[0]!r} at character {bad[1]} (a lone surrogate); "
                         "fix the record")


# ---------------------------------------------------------------------- reading files
#: leading bytes of binary files a dataset may come as, and what to do instead
_MAGIC = (
    (b"PAR1", "a parquet file: name it .parquet"),
    (b"\x1f\x8b", "gzip-compressed: decompress it first (gunzip)"),
    (b"PK\x03\x04", "a zip archive: extract it first"),
    (b"ARROW1", "an Arrow file: give the save_to_disk folder that holds it"),
    (b"\xff\xff\xff\xff", "an Arrow stream (a save_to_disk shard?): give the folder that holds it"),
)


def _decode(path: Path) -> str:
    data = path.read_bytes()
    for magic, what in _MAGIC:
        if data.startswith(magic):
            raise ValueError(f"{path} is {what}; a dataset file is .jsonl, .json or .parquet")
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (Windows editors) is accepted and dropped
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line} is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                         "save the file as UTF-8") from None


def _json_records(path: Path) -> list[tuple[Any, str]]:
    text = _decode(path)
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno} is not valid JSON ({exc.msg}); a .json dataset is one array "
                             "of objects") from None
        return [(r, f"{path} record {i + 1}") for i, r in enumerate(records)]
    _refuse_one_object(text, path)
    out = []
    # JSON Lines end a record at "\n" only: str.splitlines() would also split inside strings holding
    # U+2028, U+2029 or U+0085, which JSON writes unescaped (json.dumps(ensure_ascii=False))
    for i, line in enumerate(text.split("\n")):
        if line.strip():
            try:
                out.append((json.loads(line), f"{path}:{i + 1}"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i + 1} is not valid JSON ({exc.msg}); a dataset is one JSON object per "
                                 "line (or a JSON array)") from None
    return out


def _refuse_one_object(text: str, path: Path) -> None:
    """A file that is one JSON object of columns or of a list of records (pandas' ``to_json()``, a
    ``{"data": [...]}`` wrapper) is not records: said so, with the form to write."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        return
    if isinstance(whole, dict) and whole and ("\n" in text.strip() or all(isinstance(v, (dict, list)) for v in whole.values())):
        lists = [k for k, v in whole.items() if isinstance(v, list)]
        hint = f" (its records are under {lists[0]!r}? write that list)" if len(lists) == 1 else ""
        raise ValueError(f"{path} is one JSON object, not records{hint}: give a JSON array of objects, or one object "
                         "per line (pandas: to_json(orient='records', lines=True))")


def _table_records(rows: list[dict[str, Any]], columns: Sequence[str], fields: Mapping[str, str],
                   what: str) -> list[tuple[Any, str]]:
    for key, col in fields.items():
        if col not in columns:
            raise ValueError(f"column {col!r} (--field {key}={col}) is not in {what}; its columns are: "
                             f"{', '.join(columns)}")
    return [(r, f"{what} row {i}") for i, r in enumerate(rows)]


def _parquet_records(path: Path, fields: Mapping[str, str]) -> list[tuple[Any, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"reading parquet needs pyarrow: {_PIP} (or pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow's errors (ArrowInvalid, OSError) as one line
        raise ValueError(f"{path} is not a readable parquet file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return _table_records(table.to_pylist(), table.column_names, fields, str(path))


def _disk_records(path: Path, fields: Mapping[str, str], split: str | None) -> list[tuple[Any, str]]:
    if not (path / "state.json").is_file() and not (path / "dataset_dict.json").is_file():
        raise ValueError(f"{path} is a directory but not a `datasets` save_to_disk folder (it has no state.json or "
                         "dataset_dict.json); give that folder, or a .jsonl/.json/.parquet file")
    try:
        import datasets
    except ImportError:
        raise ValueError(f"reading a save_to_disk folder needs datasets: {_PIP} (or pip install datasets)") from None
    what, folder, splits = str(path), path, []
    if (path / "dataset_dict.json").is_file():  # a DatasetDict: only the chosen split is read
        splits = _splits(path)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split is None or split not in splits:
            raise ValueError(f"{path} holds the splits {', '.join(splits)}; choose one with --split "
                             f"({'there is no split ' + repr(split) if split else 'none was given'})")
        folder, what = path / split, f"split {split!r} of {path}"
        if _no_shards(folder):  # (datasets writes an empty split without data files, and cannot read it back)
            raise ValueError(f"{what} is empty; choose another split ({', '.join(splits)})")
    elif split is not None:
        raise ValueError(f"{path} holds one dataset, not splits, so --split {split} does not apply; leave --split out")
    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as exc:  # noqa: BLE001 - a damaged folder, as one line
        raise ValueError(f"{folder} could not be read as a save_to_disk folder ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if len(ds) == 0 and splits:
        raise ValueError(f"{what} is empty; choose another split ({', '.join(splits)})")
    rows = ds.to_list()
    # a ClassLabel column holds class indices: read its label names ("7"), not the indices (0)
    labels = {c: f for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}
    for row in rows:
        for column, feature in labels.items():
            if isinstance(row.get(column), int):  # -1 is datasets' "no label": a missing value
                row[column] = feature.int2str(row[column]) if row[column] >= 0 else None
    return _table_records(rows, ds.column_names, fields, what)


def _splits(path: Path) -> list[str]:
    """The split names of a ``DatasetDict`` folder (its ``dataset_dict.json``)."""
    try:
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path / 'dataset_dict.json'} is damaged ({type(exc).__name__}); save the dataset again") from None
    if not isinstance(splits, list) or not all(isinstance(x, str) for x in splits):
        raise ValueError(f"{path / 'dataset_dict.json'} is damaged (no list of split names); save the dataset again")
    return splits


def _no_shards(folder: Path) -> bool:
    """A split folder whose ``state.json`` lists no data files (how ``datasets`` saves an empty split)."""
    try:
        return json.loads((folder / "state.json").read_text(encoding="utf-8")).get("_data_files") == []
    except (OSError, ValueError, AttributeError):
        return False


def _load_file(path: Path, fields: Mapping[str, str], split: str | None, kind: str) -> list[Problem]:
    if path.is_dir():
        records = _disk_records(path, fields, split)
    elif not path.is_file():
        raise DatasetNotFoundError(f"dataset {str(path)!r} does not exist; give a .jsonl/.json/.parquet file, a "
                                   "save_to_disk folder, or builtin:arith")
    elif split is not None:
        raise ValueError(f"--split applies to save_to_disk folders of several splits; {path} is one file, so "
                         "leave --split out (or give the split's own file)")
    elif path.suffix.lower() in (".csv", ".tsv"):
        raise ValueError(f"{path}: CSV is not read; convert it to JSON Lines (e.g. pandas: "
                         "pd.read_csv(f).to_json(out, orient='records', lines=True)) or parquet")
    elif path.suffix.lower() == ".parquet":
        records = _parquet_records(path, fields)
    else:
        records = _json_records(path)
    if not records:
        raise ValueError(f"{path} has no problems; give a dataset with at least one")
    stem = escaped(path.stem)  # a file name that is not UTF-8 (lone surrogates) with escapes
    problems = [problem_from_record(r, f"{stem}-{i}", fields, where) for i, (r, where) in enumerate(records)]
    seen: dict[str, str] = {}
    for p, (_, where) in zip(problems, records):
        if p.id in seen:
            raise ValueError(f"{where} repeats the id {p.id!r} of {seen[p.id]}; ids must be unique (results are keyed "
                             "by them)")
        seen[p.id] = where
    # AIME: a file or folder whose name (or a folder above it) starts a word with "aime" (aime24, aimo-...-aime)
    # (the absolute path, so that the kind does not depend on the working directory the path is typed from;
    # not resolved: a link named aime24.jsonl keeps its name)
    return _set_kind(problems, kind, re.search(r"(^|[^a-z])aime", str(path.absolute()).lower()) is not None)


def _integral(answer: str) -> bool:
    """Whether a gold answer is an integer as the ``integer`` kind reads it (Spec §13.1): thousands
    separators (``1,234``), a ``.0…`` after it (``18.0``) and a typeset minus (U+2212) allowed."""
    return re.fullmatch(r"[-+\u2212]?(\d+|\d{1,3}(,\d{3})+)(\.0+)?", answer.strip()) is not None


def _set_kind(problems: list[Problem], kind: str, aime: bool) -> list[Problem]:
    if kind == "math":
        return [Problem(p.id, p.problem, p.answer, "math") for p in problems]
    if kind == "integer":
        bad = next((p for p in problems if not _integral(p.answer)), None)
        if bad is not None:
            raise ValueError(f"problem {bad.id!r}: the gold answer {bad.answer!r} is not an integer "
                             "(--answer-kind integer); use --answer-kind math")
        return [Problem(p.id, p.problem, p.answer, "integer") for p in problems]
    if aime and all(_integral(p.answer) for p in problems):
        return [Problem(p.id, p.problem, p.answer, "integer") for p in problems]
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
    return Problem(f"arith{questions}-{index}", body, ", ".join(answers), "integers")


def builtin_arith(questions: int = 5, size: int = BUILTIN_SIZE) -> list[Problem]:
    """The built-in arithmetic set (see the module doc); deterministic."""
    return [arith_bundle(i, questions) for i in range(size)]


def load_dataset(spec: str, limit: int | None = None, *, fields: Mapping[str, str] | None = None,
                 split: str | None = None, kind: str = "auto") -> list[Problem]:
    """Load ``spec`` — a ``.jsonl``/``.json``/``.parquet`` file, a ``save_to_disk`` folder or
    ``builtin:NAME`` — keeping the first ``limit`` problems (see the module doc)."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1 (got {limit}); leave it out for the whole dataset")
    if kind not in KIND_CHOICES:
        raise ValueError(f"unknown answer kind {kind!r}; choose one of {', '.join(KIND_CHOICES)}")
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        m = re.fullmatch(r"arith(?:-(\d+))?", name)
        if not m or not 1 <= int(m.group(1) or 5) <= 10:
            raise ValueError(f"unknown built-in dataset {spec!r}; choose builtin:arith or builtin:arith-K (K = 1..10 questions)")
        if fields:
            raise ValueError("--field applies to dataset files, not to built-in sets")
        if split is not None:
            raise ValueError("--split applies to save_to_disk folders of several splits, not to built-in sets")
        if kind == "integer":  # (a folder made with it resumes: earlier versions recorded it silently)
            warnings.warn("--answer-kind integer does not change built-in sets: their answers are lists of integers, "
                          "checked as such (--answer-kind math compares them with math-verify)", stacklevel=2)
        problems = builtin_arith(int(m.group(1) or 5))
        if kind == "math":
            problems = [Problem(p.id, p.problem, p.answer, "math") for p in problems]
    else:
        problems = _load_file(Path(spec).expanduser(), dict(fields or {}), split, kind)
    return problems[:limit] if limit is not None else problems
