"""Resumable results: one JSON object per line, appended as units finish (Spec §13.5).

A row is keyed by ``(method, problem_id, workers, seed, budget)`` and carries the row format
version :data:`ROW_FORMAT`. :class:`ResultsLog` reads the rows already on disk: a line cut short by
an interruption (the bytes after the last newline) is dropped and the file truncated to its last
complete line; any other line that is not a valid row of this format — not JSON, a field missing or
of the wrong type (``"correct": "false"``), another format version — is refused with its line
number, since summarising such rows would report wrong accuracies.

:class:`OutDirLock` holds an OS lock (``fcntl.flock``) on ``.lock`` in the output directory, so
two evaluations never append to one ``results.jsonl`` at once. Under ``torchrun`` (``WORLD_SIZE``
above 1) each rank locks its own ``.lock.rank{RANK}``, so the ranks of one evaluation share the
directory while a second evaluation's rank ``r`` is refused by the first one's.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = ["ROW_FORMAT", "OutDirLock", "ResultsLog", "parse_rows", "replace_file", "row_key", "validate_row"]

Key = tuple[str, str, int, int, int]

#: The version of the row format written (2: the checker, answer kind and per-unit wall time and
#: tokens; 1: rows without a ``format`` field).
ROW_FORMAT = 2

_INT, _NUM, _STR, _BOOL, _LIST = "an integer", "a number", "a string", "true or false", "a list of integers"
_REQUIRED: dict[str, tuple[str, bool]] = {  # field: (type, may be null)
    "method": (_STR, False), "problem_id": (_STR, False), "workers": (_INT, False), "seed": (_INT, False),
    "budget": (_INT, False), "gold": (_STR, False), "answer": (_STR, True), "correct": (_BOOL, False),
    "ticks": (_INT, True), "finisher_ticks": (_INT, True), "tokens_per_worker": (_LIST, True),
    "seconds": (_NUM, True), "error": (_STR, True), "checker": (_STR, False), "check": (_STR, True),
    "kind": (_STR, False), "unit_seconds": (_NUM, True), "unit_tokens": (_INT, True),
}


def _is(value: Any, kind: str) -> bool:
    if kind == _BOOL:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == _INT:
        return isinstance(value, int)
    if kind == _NUM:
        return isinstance(value, (int, float))
    if kind == _STR:
        return isinstance(value, str)
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def validate_row(row: Any) -> str | None:
    """What is wrong with ``row`` as a results row of format :data:`ROW_FORMAT`, or None."""
    if not isinstance(row, dict):
        return f"it is a JSON {type(row).__name__}, not an object"
    version = row.get("format", 1)
    if version != ROW_FORMAT:
        return f"it has row format {version!r}, and this version of hogwild_ref reads and writes format {ROW_FORMAT}"
    for name, (kind, nullable) in _REQUIRED.items():
        if name not in row:
            return f"the field {name!r} is missing"
        value = row[name]
        if not (value is None and nullable) and not _is(value, kind):
            return f"{name!r} is {json.dumps(value)}, not {kind}"
    return None


def parse_rows(text: str, path: Path) -> list[dict[str, Any]]:
    """The rows of the complete lines ``text`` of the results file ``path`` (Spec §13.5); a line that is
    not a valid row is a ValueError naming the file and line: resuming would mix it in."""
    rows = []
    for i, line in enumerate(text.split("\n")):  # "\n" only: a row's strings may hold U+2028 (JSON keeps it raw)
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problem: str | None = f"it is not JSON ({exc.msg})"
        else:
            problem = validate_row(row)
        if problem is not None:
            raise ValueError(f"{path}:{i + 1} is not a results row: {problem}; resuming would mix it in. "
                             "Use another --out directory, or move the file away to start over")
        rows.append(row)
    return rows


def row_key(row: dict[str, Any]) -> Key:
    """The identity of a result row."""
    return (str(row["method"]), str(row["problem_id"]), int(row["workers"]), int(row["seed"]), int(row["budget"]))


class ResultsLog:
    """The JSONL results file of one evaluation directory (ValueError if it holds invalid rows)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: dict[Key, dict[str, Any]] = {}
        self.dropped = 0
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # bytes after the last newline: a line cut short
        try:
            text = data[:end].decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = data[: exc.start].count(b"\n") + 1
            raise ValueError(f"{self.path}:{bad} is not UTF-8: the file is damaged; move it away to start over, "
                             "or use another --out directory") from None
        rows = parse_rows(text, self.path)
        if end < len(data):
            self.dropped += 1
            with open(self.path, "r+b") as f:
                f.truncate(end)
        for row in rows:
            self.rows[row_key(row)] = row

    def has(self, key: Key, *, retry_errors: bool = False) -> bool:
        """Whether the row ``key`` is done (a row with an error counts unless ``retry_errors``)."""
        row = self.rows.get(key)
        return row is not None and not (retry_errors and row.get("error"))

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append ``rows`` and make them durable before returning (a later row replaces an earlier one)."""
        rows = list(rows)
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                self.rows[row_key(row)] = row
            f.flush()
            os.fsync(f.fileno())

    def all(self) -> list[dict[str, Any]]:
        """Every row, the latest one per key."""
        return list(self.rows.values())


def replace_file(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` whole or not at all (Spec §13.5): ``write`` fills a temporary file beside it (same
    suffix), which then replaces ``path``; an interruption leaves the old file, never a part."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


class OutDirLock:
    """An exclusive OS lock on an output directory (``DIR/.lock``), re-entrant within this process.

    ``acquire`` raises ValueError naming the holder's pid when another process holds it. The OS
    drops the lock when the holder exits, however it exits, so a killed evaluation never leaves a
    stale lock behind.
    """

    _held: dict[Path, list[Any]] = {}  # resolved lock file -> [its open file, depth]

    def __init__(self, directory: str | Path, name: str | None = None):
        self.directory = Path(directory)
        if name is None:  # under torchrun, rank 0 holds DIR/.lock (as one process does) and rank r DIR/.lock.rank{r}
            ranks, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK", "0")
            several = ranks.isdigit() and int(ranks) > 1 and rank not in ("", "0")
            name = f".lock.rank{rank}" if several else ".lock"
        self.name = name

    def acquire(self) -> None:
        import fcntl

        if self.directory.exists() and not self.directory.is_dir():
            raise ValueError(f"--out {self.directory} is a file; give a directory (it is created if missing)")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            key = self.directory.resolve() / self.name
            if key in self._held:
                self._held[key][1] += 1
                return
            f = open(key, "a+", encoding="utf-8")
        except OSError as exc:  # a file on the way, no permission, a read-only or virtual file system
            raise ValueError(f"--out {self.directory} cannot be created or written ({exc.strerror or exc}); give a "
                             "writable directory") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise ValueError(f"{self.directory} is in use by another evaluation (pid {holder}); wait for it to end, "
                             "or use another --out directory") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._held[key] = [f, 1]

    def release(self) -> None:
        key = self.directory.resolve() / self.name
        entry = self._held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self._held[key]
            with contextlib.suppress(OSError):  # the pid is this holder's only while it holds the lock
                entry[0].truncate(0)
            entry[0].close()  # closing the file drops the flock

    def __enter__(self) -> OutDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
