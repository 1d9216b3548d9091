"""What this machine and the model's config allow, checked before any model loads (Spec §11.7).

Pure: no torch, no transformers. The command line reads a model's *shape* (layers, K/V heads, head
size, context) from its ``config.json`` alone (:func:`shape_from_config`; the embedded model's is
:data:`EMBEDDED_SHAPE`), estimates the bytes a run must hold (:meth:`ModelShape.weight_bytes`,
:meth:`ModelShape.kv_bytes_per_token`) and compares them with this machine's available memory
(:func:`available_memory`). The rule (Spec §11.7): what a run *must* exceed — a budget that cannot be
spent within the model's positions, weights that do not fit — is refused with the numbers, naming the
flag; what it only *may* reach (the K/V of a budget spent in full: storage grows on demand and most
runs end early) is warned. The command line also refuses a budget beyond the model's context
(:func:`check_budget`), which the library only warns about.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checks import SettingsError

__all__ = [
    "EMBEDDED_SHAPE",
    "MAX_PROMPTS_FILE_BYTES",
    "ModelShape",
    "auto_threads",
    "available_memory",
    "check_budget",
    "check_fits_memory",
    "check_prompts_file_size",
    "check_threads",
    "gib",
    "shape_from_config",
    "usable_cores",
]

#: a prompts file holds a few short templates (Spec §7); anything larger is a mistake (a dataset, a log)
MAX_PROMPTS_FILE_BYTES = 1 << 20

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder that memory and context depend on (from its config)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    context: int | None
    tied: bool = False

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """K and V of one token in every layer: ``layers x kv_heads x head_dim x 2 x dtype bytes``."""
        return self.layers * self.kv_heads * self.head_dim * 2 * dtype_bytes

    def parameters(self) -> int:
        """Parameters of a Llama-style decoder of this shape (attention, gated MLP, embeddings, norms)."""
        attn = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        mlp = 3 * self.hidden * self.intermediate
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * (attn + mlp + 2 * self.hidden) + embed + self.hidden

    def weight_bytes(self, dtype_bytes: int) -> int:
        return self.parameters() * dtype_bytes


#: the embedded SmolLM2-135M-Instruct (its GGUF's metadata)
EMBEDDED_SHAPE = ModelShape(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64,
                            vocab=49152, context=8192, tied=True)


def shape_from_config(config: dict[str, Any]) -> ModelShape | None:
    """The shape of a decoder from its ``config.json`` as a dict; None when a size is missing."""
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        shape = ModelShape(
            layers=int(config["num_hidden_layers"]), hidden=hidden,
            intermediate=int(config.get("intermediate_size") or 4 * hidden), heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads), vocab=int(config["vocab_size"]),
            context=int(config["max_position_embeddings"]) if config.get("max_position_embeddings") else None,
            tied=bool(config.get("tie_word_embeddings", False)),
        )
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return shape


def read_config(path: str | Path) -> ModelShape | None:
    """:func:`shape_from_config` of a ``config.json`` file (None when it cannot be read)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return shape_from_config(data) if isinstance(data, dict) else None


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (``MemAvailable`` of ``/proc/meminfo``); None elsewhere."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def check_threads(threads: Any, *, flag: str = "--threads") -> int:
    """``threads`` must be an integer from 1 to this machine's core count: more threads than cores only
    slow a tick, and far more crash torch's thread pool."""
    from .checks import check_int

    n = check_int(flag.lstrip("-").replace("-", "_"), threads, 1, cli=flag.startswith("--"))
    cores = usable_cores()
    if n > cores:
        raise SettingsError(f"{flag} {n} is more than the {cores} CPU core(s) this process may use; "
                            f"give {flag} {cores} or fewer")
    return n


def auto_threads(default: int, load: float | None = None, cores: int | None = None) -> tuple[int | None, str | None]:
    """The torch thread count when the user gave none: ``(None, None)`` keeps torch's ``default``.

    On a busy machine (1-minute load average at or above the free cores) torch's default of one
    thread per core competes with the other processes and a tick slows several-fold; use the cores
    that are free (at least 1), with a note that says how to choose.
    """
    cores = cores if cores is not None else usable_cores()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):
            return None, None
    free = max(1, math.floor(cores - load + 0.5))
    if default <= 1 or free >= default:
        return None, None
    return free, (f"the machine is busy (load {load:.1f} on {cores} cores): using {free} torch thread(s) instead "
                  f"of {default}; pass --threads N to choose")


def check_budget(context: int | None, max_ticks: int | None, finisher_tokens: int, finisher: bool, *,
                 cli: bool = True, flag: str = "--max-ticks", workers: int = 1) -> None:
    """The command line refuses a budget or a finisher longer than the model's ``context`` (Spec §6.5,
    §11.7): every tick adds one token to each worker's view, so such a budget cannot be spent within the
    model's positions. (The library only warns: storage grows on demand and a run may end early.)
    ``flag`` is the budget's flag (``--budgets`` for ``eval``, whose largest budget is checked); with
    ``workers`` > 1 the fix also names the budget whose views stay within the positions."""
    if context is None:
        return
    ticks, fin = (f"{flag} ", "--finisher-tokens ") if cli else ("max_ticks=", "finisher_tokens=")
    if max_ticks is not None and max_ticks > context:
        raise SettingsError(
            f"{ticks}{max_ticks} cannot be spent: every tick adds a token to each worker's view and the model "
            f"has {context} positions; give {ticks}{context} or less"
            + (f" (with {workers} workers, whose tokens share a view in the combined and contiguous layouts, under "
               f"{context} / {workers} = {context // workers} less the prompt's tokens)" if workers > 1 else ""))
    if finisher and finisher_tokens > context:
        raise SettingsError(
            f"{fin}{finisher_tokens} is beyond the model's {context} positions; give {fin}{context} or less "
            "(the default is 24)")


def check_fits_memory(must: int, what: str, fix: str, available: int | None = None) -> None:
    """Refuse when ``must`` bytes exceed the available memory, with both numbers and ``fix``."""
    available = available if available is not None else available_memory()
    if available is not None and must > available:
        raise SettingsError(f"{what} needs about {gib(must)} of memory but this machine has {gib(available)} "
                            f"available; {fix}")


def check_prompts_file_size(path: str | Path) -> None:
    """A prompts file over :data:`MAX_PROMPTS_FILE_BYTES` is refused before it is read."""
    try:
        size = Path(path).stat().st_size
    except OSError:
        return  # the loader reports a missing file
    if size > MAX_PROMPTS_FILE_BYTES:
        raise SettingsError(f"--prompts-file {path} is {size:,} bytes; a prompts file holds a few short "
                            f"templates (at most {MAX_PROMPTS_FILE_BYTES:,} bytes, 1 MiB): give the templates' file")
