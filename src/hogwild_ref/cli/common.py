"""Shared pieces of the command line: model loading and the device check, both before any work starts."""

from __future__ import annotations

import argparse
from typing import Any


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
    given = [name for name, v in (("--device", args.device), ("--device-map", args.device_map),
                                  ("--tp-plan", getattr(args, "tp_plan", None))) if v is not None]
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)} both place the model; give one of them (--device for one device, "
                         "--device-map for layers over several devices, --tp-plan auto under torchrun)")


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

