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

