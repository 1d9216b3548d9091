"""The torch.distributed side of many-process evaluation: one process group, ranks that agree (Spec §13.6).

torchrun starts the processes and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
``LOCAL_WORLD_SIZE`` (and the rendezvous: ``MASTER_ADDR``/``MASTER_PORT``). :func:`rank_setup`
picks this rank's device (``cuda:LOCAL_RANK``, or the CPU with the node's cores split among its
processes); :func:`process_group` joins the default process group (NCCL on CUDA, gloo on the CPU)
only when there are several processes, and yields a :class:`~hogwild_ref.evaluation.shards.Group`
for :func:`~hogwild_ref.evaluation.runner.run_eval`. The work itself, the shards and their merge
are the pure :mod:`hogwild_ref.evaluation.shards`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Iterator, Mapping, TypeVar

from .shards import Group, Place, RankError, Solo, cpu_threads, place_from_env, rank_device

__all__ = ["DEFAULT_TIMEOUT", "RankError", "TorchGroup", "process_group", "rank_setup"]

T = TypeVar("T")

#: How long a rank waits for the others at a collective: the end of an evaluation waits for the slowest
#: rank, which may be hours behind (gloo's default, 30 minutes, is too short). ``--dist-timeout`` sets it.
DEFAULT_TIMEOUT = timedelta(hours=24)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class TorchGroup:
    """The ranks of the default process group (Spec §13.6)."""

    def __init__(self, place: Place):
        self.place = place

    @property
    def rank(self) -> int:
        return self.place.rank

    @property
    def world(self) -> int:
        return self.place.world

    def gather(self, value: Any) -> list[Any]:
        import torch.distributed as dist

        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def agree(self, step: Callable[[], T]) -> T:
        try:
            result, error = step(), None
        except Exception as exc:  # noqa: BLE001 - every rank learns of it below
            result, error = None, _one_line(exc)
        failed: dict[str, list[int]] = {}
        for r, e in enumerate(self.gather(error)):
            if e is not None:
                failed.setdefault(e, []).append(r)
        if failed:
            raise RankError("; ".join(_ranks(ranks, self.world) + f": {e}" for e, ranks in failed.items()))
        return result  # type: ignore[return-value]


def _ranks(ranks: list[int], world: int) -> str:
    if len(ranks) == world > 1:
        return f"all {world} ranks"
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} of {world}"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def rank_setup(device: str | None, threads: int | None,
               env: Mapping[str, str] | None = None) -> tuple[Place, str | None, int | None]:
    """This process's place, device and torch CPU threads (None: leave torch's choice), Spec §13.6."""
    import torch

    place = place_from_env(os.environ if env is None else env)
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = rank_device(device, place, cuda)
    on_cpu = device is None and not cuda or device is not None and torch.device(device).type == "cpu"
    return place, device, cpu_threads(_cores(), place, threads) if on_cpu else threads


@contextmanager
def process_group(place: Place, device: str | None, timeout: timedelta = DEFAULT_TIMEOUT) -> Iterator[Group]:
    """The processes of this evaluation: :class:`Solo` for one, else the default process group, joined
    through torchrun's environment (NCCL when ``device`` is CUDA, else gloo) and left on exit."""
    if place.world == 1:
        yield Solo()
        return
    import torch
    import torch.distributed as dist

    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(torch.device(device))  # type: ignore[arg-type]
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    try:
        yield TorchGroup(place)
    finally:
        dist.destroy_process_group()
