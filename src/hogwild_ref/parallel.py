"""Past one device: tensor-parallel ranks and layers spread over devices (Spec §11.8).

transformers does the splitting; this module answers the few questions Hogwild must ask of it and
refuses what cannot run right, before the model runs:

* :func:`tp_size`, :func:`local_kv_heads` — how many processes share each layer's heads, and how many
  K/V heads this rank's attention sees (its storage is sized by them);
* :func:`check_tensor_parallel` — a config without a tensor-parallel plan, or heads that do not divide
  by the number of processes, is refused from the config alone (before any weight loads);
* :func:`check_compile` — the settings the fast backend's compiled step and packed CPU weights do not
  support (several devices or ranks) are refused; their defaults turn off there;
* :func:`share_tokens` — rank 0's sampled tokens, broadcast to every rank, so that all ranks' schedulers,
  flushes and finishers take the same decisions (Spec §11.5);
* :func:`is_main_process` — only rank 0 prints.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "COMPILE_MODES",
    "check_compile",
    "check_tensor_parallel",
    "is_main_process",
    "local_kv_heads",
    "share_tokens",
    "tp_size",
    "world_size",
]


def world_size() -> int:
    """Processes in this run: torch.distributed's world, else ``$WORLD_SIZE`` (set by torchrun), else 1."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_world_size())
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_process() -> bool:
    """Rank 0 (or a run without ranks): the process that prints."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank()) == 0
    return int(os.environ.get("RANK", "0") or 0) == 0


def tp_size(model: Any) -> int:
    """How many ranks share each layer's heads: transformers' tensor-parallel degree of ``model`` (1 without)."""
    return int(getattr(model, "_tp_size", None) or 1)


def local_kv_heads(model: Any) -> int:
    """K/V heads this rank's attention sees: the config's, divided by the tensor-parallel degree (Spec §11.8)."""
    config = model.config
    kv = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    return kv // tp_size(model)


def has_tp_plan(config: Any, model_class: Any = None) -> bool:
    """Whether transformers knows how to split this model: a non-empty ``base_model_tp_plan`` on the config
    (or a ``_tp_plan`` on the model class)."""
    return bool(getattr(config, "base_model_tp_plan", None) or getattr(model_class, "_tp_plan", None))


#: the projections that make a layer's query, key and value heads (a plan must split them by head)
_HEAD_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.qkv_proj")


def check_tensor_parallel(config: Any, processes: int) -> None:
    """Refuse, from the config alone, a model that ``processes`` ranks cannot split exactly (Spec §11.8).

    Each rank's attention must see whole K/V heads with all their query heads: the query and K/V head
    counts must both divide by ``processes``, and transformers must have a tensor-parallel plan for
    the family that splits the query, key and value projections by head (``colwise``; phi3's plan
    gathers its fused projection back on every rank). Raises ValueError naming the reason and the fix.
    """
    name = getattr(config, "model_type", "the model")
    if not has_tp_plan(config):
        raise ValueError(
            f"{name} has no tensor-parallel plan in transformers (its config's base_model_tp_plan is empty), so "
            "--tp-plan auto cannot split it; run it in one process, or spread its layers with --device-map auto"
        )
    gathered = sorted({style for key, style in (getattr(config, "base_model_tp_plan", None) or {}).items()
                       if key.endswith(_HEAD_PROJECTIONS) and style != "colwise"})
    if gathered:  # phi3: its fused projection is gathered back, so every rank computes every head
        raise ValueError(
            f"{name}'s tensor-parallel plan does not split its attention heads among the ranks ({', '.join(gathered)}), "
            "and Hogwild's attention needs each rank to hold its own whole heads; run it in one process, or spread "
            "its layers with --device-map auto"
        )
    hq = int(config.num_attention_heads)
    hkv = int(getattr(config, "num_key_value_heads", None) or hq)
    for what, count in (("key/value", hkv), ("query", hq)):
        if count % processes:
            choices = [n for n in range(1, hkv + 1) if hkv % n == 0 and hq % n == 0]
            raise ValueError(
                f"{name} has {count} {what} heads, which do not divide among {processes} processes: each "
                f"rank must hold whole heads; use --nproc-per-node {' or '.join(map(str, choices))}, "
                "or spread the layers with --device-map auto"
            )


#: the modes ``torch.compile`` takes, for a ``compile`` given as a string
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_compile(model: Any, devices: Sequence[torch.device], compile: bool | str | None,
                  pack_weights: bool | None) -> tuple[bool | str | None, bool | None]:
    """The forward step's ``compile`` and ``pack_weights`` for a model on ``devices`` (Spec §11.8).

    Several ranks (tensor parallel) or several layer devices (``device_map``): the compiled one-token
    step (``fullgraph=True``, with CUDA graphs on CUDA) and the packed CPU weights are not supported
    there; their defaults (None) turn off, an explicit request is refused with the reason.
    Returns ``(compile, pack_weights)``: as given on one device in one process (None: the forward step's
    default rule), else both False.
    """
    if compile is not None and not isinstance(compile, bool) and compile not in COMPILE_MODES:
        raise ValueError(f"compile must be True, False, None or a torch.compile mode ({', '.join(COMPILE_MODES)}); "
                         f"got {compile!r}")
    if pack_weights is not None and not isinstance(pack_weights, bool):
        raise ValueError(f"pack_weights must be True, False or None (the default rule); got {pack_weights!r}")
    tp, spread = tp_size(model), len(set(devices)) > 1
    if tp == 1 and not spread:
        return compile, pack_weights
    where = f"tensor parallel over {tp} processes" if tp > 1 else f"layers spread over {len(set(devices))} devices"
    if compile:
        raise ValueError(
            f"the fast backend's compiled step does not support {where} (its graph holds one device's buffers and "
            "no collective communication); leave compile unset (or False)"
        )
    if pack_weights:
        raise ValueError(f"packed CPU weights do not support {where}; leave pack_weights unset (or False)")
    return False, False


def share_tokens(model: Any, tokens: Sequence[int | None], device: Any) -> list[int | None]:
    """Rank 0's ``tokens`` on every rank of a tensor-parallel model (one broadcast; Spec §11.5, §11.8).

    Every rank computes the same logits (the all-reduce hands each rank the same sums) and samples them
    with the same seeds, but bitwise-equal results of a collective are not a promise of every backend:
    one broadcast of a few integers per tick makes all ranks' schedulers take rank 0's decisions, at no
    cost next to each layer's all-reduce. Without tensor parallelism ``tokens`` come back as given.
    """
    if tp_size(model) == 1 or not torch.distributed.is_initialized():
        return list(tokens)
    t = torch.tensor([-1 if x is None else int(x) for x in tokens], dtype=torch.long, device=device)
    torch.distributed.broadcast(t, src=0)
    return [None if x < 0 else int(x) for x in t.tolist()]
