"""Resumable results: one JSON object per line, appended as units finish (Spec §13.5).

A row is keyed by ``(method, problem_id, workers, seed, budget)``. :class:`ResultsLog` reads the rows
already on disk (a line cut short by an interruption is dropped and the file truncated to its last
complete line), so an interrupted evaluation resumes without redoing finished rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

__all__ = ["ResultsLog", "row_key"]

Key = tuple[str, str, int, int, int]


def row_key(row: dict[str, Any]) -> Key:
    """The identity of a result row."""
    return (str(row["method"]), str(row["problem_id"]), int(row["workers"]), int(row["seed"]), int(row["budget"]))


class ResultsLog:
    """The JSONL results file of one evaluation directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: dict[Key, dict[str, Any]] = {}
        self.dropped = 0
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # bytes after the last newline: a line cut short
        if end < len(data):
            self.dropped += 1
            with open(self.path, "r+b") as f:
                f.truncate(end)
        for line in data[:end].decode("utf-8").splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                self.rows[row_key(row)] = row
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                self.dropped += 1

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
