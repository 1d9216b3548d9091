"""Shared pieces of the command line: model loading and the device check, both before any work starts."""

from __future__ import annotations

import argparse
from typing import Any


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch

    from .. import models

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if getattr(args, "allow_untested", False):
        return models.load(args.model, getattr(torch, args.dtype), device, allow_untested=True)
    return models.load(args.model, getattr(torch, args.dtype), device)


def _check_device(device: str | None) -> None:
    """Refuse a device torch does not know or this machine does not have, before loading."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a torch device; use cpu, cuda, cuda:0, mps, ...") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available on this machine; use --device cpu")



def _model_shape(model: str | None) -> Any:
    """The model's :class:`~hogwild_ref.limits.ModelShape` from its config alone (no weights): the embedded
    model's is known, a local directory's comes from its config.json, a hub id's from the local cache;
    None where it cannot be read cheaply (a .gguf file, a hub id not downloaded yet)."""
    from pathlib import Path

    from ..limits import EMBEDDED_SHAPE, read_config

    if model in (None, "default", "smollm2", "embedded"):
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
