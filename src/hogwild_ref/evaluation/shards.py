"""Many processes, one result: the place of a process, its share of the work, results shards, merging (Spec §13.6).

Pure: no torch. :mod:`hogwild_ref.evaluation.distributed` supplies the torch.distributed side (a
:class:`Group` over a process group); a single process uses :class:`Solo`.

* :func:`place_from_env` reads torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
  ``LOCAL_WORLD_SIZE`` (absent: one process);
* :func:`assign` gives every unit of the plan to one rank: deterministic, disjoint, covering, and
  balanced by cost (the loads of two ranks differ by at most the largest cost);
* :func:`shard_name` / :func:`shard_paths` name the per-rank results files
  ``results.rank{r}-of-{N}.jsonl``; :func:`read_rows` reads any results file without changing it;
* :func:`merge_rows` merges results files into one row per key, in plan order, and
  :func:`write_rows` writes the merge durably (a temporary file renamed into place).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, TypeVar

from .results import Key, parse_rows, replace_file, row_key

__all__ = ["Group", "Place", "RankError", "Solo", "assign", "cpu_threads", "is_done", "merge_rows", "place_from_env",
           "rank_device", "read_rows", "shard_name", "shard_paths", "write_rows"]

T = TypeVar("T")

RESULTS = "results.jsonl"
_SHARD = re.compile(r"^results\.rank(\d+)-of-(\d+)\.jsonl$")


class RankError(RuntimeError):
    """One or more ranks failed a step that every rank must pass; raised on every rank (Spec §13.6)."""


@dataclass(frozen=True)
class Place:
    """Where this process stands among the processes of one evaluation (torchrun's environment)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1


def place_from_env(env: Mapping[str, str]) -> Place:
    """This process's :class:`Place` from torchrun's variables; without ``WORLD_SIZE``, one process."""
    if "WORLD_SIZE" not in env:
        return Place()
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        text = env.get(name, "0" if name in ("RANK", "LOCAL_RANK") else env["WORLD_SIZE"] if name == "LOCAL_WORLD_SIZE" else "")
        try:
            values[name] = int(text)
        except ValueError:
            raise ValueError(f"environment variable {name}={text!r} is not an integer; start many processes with "
                             "torchrun (torchrun --nproc-per-node N -m hogwild_ref eval ...)") from None
    place = Place(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], values["LOCAL_WORLD_SIZE"])
    if place.world < 1 or not 0 <= place.rank < place.world:
        raise ValueError(f"RANK={place.rank} WORLD_SIZE={place.world}: the rank must be in 0..WORLD_SIZE-1; "
                         "start many processes with torchrun")
    if place.local_world < 1 or not 0 <= place.local_rank < place.local_world:
        raise ValueError(f"LOCAL_RANK={place.local_rank} LOCAL_WORLD_SIZE={place.local_world}: the local rank must be "
                         "in 0..LOCAL_WORLD_SIZE-1; start many processes with torchrun")
    return place


def rank_device(requested: str | None, place: Place, cuda_devices: int) -> str | None:
    """The device of this rank among several: ``cuda:LOCAL_RANK`` on a machine with CUDA (or when
    ``cuda`` is asked for), else ``cpu``. One process keeps ``requested`` (None: the loader's default).
    Spec §13.6."""
    if place.world == 1:
        return requested
    if requested is None and not cuda_devices:
        return "cpu"
    if requested in (None, "cuda"):
        if place.local_rank >= cuda_devices:
            raise ValueError(f"local rank {place.local_rank} has no GPU: this machine has {cuda_devices} CUDA device(s); "
                             f"start at most {cuda_devices} processes per node (--nproc-per-node {cuda_devices}) or pass "
                             "--device cpu")
        return f"cuda:{place.local_rank}"
    if requested.split(":")[0] == "cuda":
        raise ValueError(f"--device {requested}: with several processes each takes cuda:LOCAL_RANK; pass --device cuda")
    return requested


def cpu_threads(cores: int, place: Place, requested: int | None) -> int | None:
    """Torch CPU threads of this process: ``requested``, else the node's cores split among its processes
    (None for one process: torch's own choice)."""
    if requested:
        return requested
    if place.world == 1:
        return None
    return max(1, cores // place.local_world)


class Group(Protocol):
    """The processes of one evaluation, as the runner needs them (Spec §13.6)."""

    @property
    def rank(self) -> int: ...

    @property
    def world(self) -> int: ...

    def agree(self, step: Callable[[], T]) -> T:
        """Run ``step`` on every rank; if it fails on any, raise :class:`RankError` on every rank."""
        ...

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank; waits for all ranks."""
        ...


class Solo:
    """One process: rank 0 of 1 (steps run as they are, their exceptions unchanged)."""

    rank = 0
    world = 1

    def agree(self, step: Callable[[], T]) -> T:
        return step()

    def gather(self, value: Any) -> list[Any]:
        return [value]


def assign(costs: Sequence[int], world: int) -> list[int]:
    """The rank that runs each unit: unit ``i`` of cost ``costs[i]`` (in plan order) goes to the rank with
    the least cost so far, the lowest such rank on a tie (Spec §13.6).

    A function of ``costs`` and ``world`` only, so every rank (and every rerun with the same plan and
    ``world``) computes the same assignment; the totals of two ranks differ by at most ``max(costs)``.
    """
    if world < 1:
        raise ValueError(f"world size must be >= 1; got {world}")
    loads = [0] * world
    owners = []
    for cost in costs:
        rank = min(range(world), key=lambda r: (loads[r], r))
        owners.append(rank)
        loads[rank] += cost
    return owners


def shard_name(rank: int, world: int) -> str:
    """The results shard of ``rank`` in a run of ``world`` processes."""
    return f"results.rank{rank}-of-{world}.jsonl"


def shard_paths(out: Path) -> list[Path]:
    """Every results shard in ``out``, ordered by (world size, rank)."""
    found = []
    if out.is_dir():
        for path in out.iterdir():
            m = _SHARD.match(path.name)
            if m and path.is_file():
                found.append(((int(m.group(2)), int(m.group(1))), path))
    return [p for _, p in sorted(found)]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The complete rows of a results file, without changing it (a line cut short at the end is left
    out: it is being written, or was cut by a kill); no file: no rows. A complete line that is not a
    valid row (Spec §13.5) is a ValueError naming the file and line, as for ``results.jsonl``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    complete = data[: data.rfind(b"\n") + 1]
    return parse_rows(complete.decode("utf-8", errors="replace"), path)


def is_done(row: dict[str, Any] | None, retry_errors: bool) -> bool:
    """Whether ``row`` finishes its key: it exists, and has no error unless errors are retried (Spec §13.5)."""
    return row is not None and not (retry_errors and row.get("error"))


def merge_rows(sources: Iterable[Iterable[dict[str, Any]]], order: Sequence[Key] = ()) -> list[dict[str, Any]]:
    """One row per key from ``sources`` (each a results file's rows in file order), Spec §13.6.

    Within a source a later row replaces an earlier one (Spec §13.5); across sources a row without an
    error replaces one with an error, and otherwise the first source's row stays. Rows come out in
    ``order`` (the plan's keys), then every other key in sorted order.
    """
    merged: dict[Key, dict[str, Any]] = {}
    for source in sources:
        latest: dict[Key, dict[str, Any]] = {}
        for row in source:
            latest[row_key(row)] = row
        for key, row in latest.items():
            old = merged.get(key)
            if old is None or (old.get("error") and not row.get("error")):
                merged[key] = row
    rank = {key: i for i, key in enumerate(order)}
    keys = sorted(merged, key=lambda k: (0, rank[k], k) if k in rank else (1, 0, k))
    return [merged[k] for k in keys]


def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Replace ``path`` by ``rows``, one JSON object per line, durably: a temporary file in the same
    folder, flushed to disk, renamed over ``path`` (a reader sees the old file or the new one)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    replace_file(path, write)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - folders cannot be opened on some systems
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
