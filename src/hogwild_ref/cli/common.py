"""Shared pieces of the command line: model loading and the device check, both before any work starts, and
the one-line form of warnings."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any


def show_warning(message: Any, *args: Any, **kwargs: Any) -> None:
    """Every command prints a warning as one line, ``warning: <message>`` on stderr (Spec §11.7)."""
    print(f"warning: {message}", file=sys.stderr)


def console(**kwargs: Any) -> Any:
    """A rich ``Console`` (same arguments) for the commands. A reader that closes the pipe early
    (``... | head``) raises BrokenPipeError, which :func:`~hogwild_ref.cli.main` turns into status 141 as
    for every other write (rich itself exits with 1, which ``conform`` reserves for a failed vector); on a
    stream that cannot encode Unicode the spinner is drawn in ASCII."""
    return _console_class()(**kwargs)


def stdout_to_devnull() -> None:
    """After the reader of stdout went away: point stdout at devnull, so that the interpreter's last flush
    cannot fail again (Python's documentation on SIGPIPE; the command then ends with 141, as the README says)."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
        pass


@functools.cache
def _console_class() -> type:
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            stdout_to_devnull()
            raise BrokenPipeError

        def status(self, *args: Any, **kwargs: Any) -> Any:
            if not self.encoding.startswith("utf"):
                kwargs.setdefault("spinner", "line")
            return super().status(*args, **kwargs)

    return _Console


def table_console(table: Any) -> Any:
    """A console (:func:`console`) on stdout that prints ``table`` whole: a terminal's own width, or,
    into a file or a pipe, at least the table's natural width (rich's 80 columns there cut a wide table's
    headers and cells to an ellipsis)."""
    out = console()
    if out.is_terminal:
        return out
    natural = console(width=10_000).measure(table).maximum  # measured without a width limit
    return console(width=max(out.width, natural))


def _check_model_source(model: str | None) -> None:
    """``--model``: a local path that does not exist, or is not a model, is refused before anything loads
    (:func:`~hogwild_ref.models.resolve_source`); the embedded model's names and hub ids pass."""
    from ..models import EMBEDDED_NAMES

    if model not in EMBEDDED_NAMES:
        from ..models import resolve_source

        resolve_source(model)


def _check_collab_every(value: int | None) -> None:
    """``--collab-every``: a token count, 0 to turn the collaboration prompt off (Spec §6.3, §11.7)."""
    if value is not None and value < 0:
        raise ValueError(f"--collab-every must be >= 0 (0 disables the collaboration prompt); got {value}")


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch

    from .. import models

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    placement = {k: v for k in ("device_map", "tp_plan") if (v := getattr(args, k, None)) is not None}
    if getattr(args, "allow_untested", False):
        return models.load(args.model, getattr(torch, args.dtype), device, allow_untested=True, **placement)
    return models.load(args.model, getattr(torch, args.dtype), device, **placement)


def _parse_device_map(value: str | None) -> str | dict[str, str] | None:
    """``--device-map``: a strategy name of transformers (``auto``, ``balanced``, ``balanced_low_0``,
    ``sequential``) or a JSON object of module name -> device (Spec §11.8)."""
    if value is None or value in ("auto", "balanced", "balanced_low_0", "sequential"):
        return value
    import json

    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict) or not all(isinstance(k, str) and isinstance(v, (str, int)) for k, v in parsed.items()):
        raise ValueError(f"--device-map {value!r} is neither auto, balanced, balanced_low_0, sequential nor a JSON "
                         'object of module name -> device (e.g. \'{"model.embed_tokens": 0, "model.layers.0": 0, ...}\')')
    return parsed


def _check_placement(args: argparse.Namespace) -> None:
    """``--device-map`` and ``--tp-plan`` against ``--device`` and each other, before loading (Spec §11.8)."""
    args.device_map = _parse_device_map(getattr(args, "device_map", None))
    if args.device_map is not None:
        from ..models import check_device_map

        check_device_map(args.device_map, what="--device-map")
    given = [name for name, v in (("--device", args.device), ("--device-map", args.device_map),
                                  ("--tp-plan", getattr(args, "tp_plan", None))) if v is not None]
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)} both place the model; give one of them (--device for one device, "
                         "--device-map for layers over several devices, --tp-plan auto under torchrun)")
    if getattr(args, "tp_plan", None) is not None:
        from ..parallel import world_size

        if world_size() <= 1:
            print("note: --tp-plan splits the model over the processes of a torchrun launch, and this is one process: "
                  "the whole model runs here (start it with torchrun --nproc-per-node N)", file=sys.stderr)


def _check_device(device: str | None) -> None:
    """Refuse a device torch does not know or this machine does not have, before loading."""
    if device is None:
        return
    from ..models import check_device

    check_device(device, what="--device")



def _model_shape(model: str | None) -> Any:
    """The model's :class:`~hogwild_ref.limits.ModelShape` from its config alone (no weights): the embedded
    model's is known, a local directory's comes from its config.json, a hub id's from the local cache;
    None where it cannot be read cheaply (a .gguf file, a hub id not downloaded yet)."""
    from pathlib import Path

    from ..limits import EMBEDDED_SHAPE, read_config
    from ..models import EMBEDDED_NAMES

    if model in EMBEDDED_NAMES:
        return EMBEDDED_SHAPE
    path = Path(model).expanduser()
    if path.is_dir():
        return read_config(path / "config.json")
    if path.suffix == ".gguf" or path.exists():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json")
    except Exception:  # noqa: BLE001 - an id the hub library refuses is reported by the loader
        return None
    return read_config(cached) if isinstance(cached, str) else None


def _check_threads(args: argparse.Namespace) -> None:
    """``--threads`` within this machine's cores; when not given, fewer threads on a busy machine (with a note)."""
    import sys

    from ..limits import auto_threads, check_threads

    if args.threads is not None:
        check_threads(args.threads)
        return
    import torch

    threads, note = auto_threads(torch.get_num_threads())
    if threads is not None:
        args.threads = threads
        print(f"note: {note}", file=sys.stderr)


def _check_memory(shape: Any, dtype: str, tokens: int, what: str, fix: str) -> None:
    """Refuse before loading when the weights and the K/V of ``tokens`` positions must exceed this machine's memory."""
    from ..limits import DTYPE_BYTES, check_fits_memory

    if shape is None:
        return
    nbytes = DTYPE_BYTES.get(dtype, 4)
    check_fits_memory(shape.weight_bytes(nbytes) + shape.kv_bytes_per_token(nbytes) * tokens, what, fix)
