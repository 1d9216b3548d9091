"""hogwild_ref: the reference implementation of Hogwild! Inference (arXiv 2504.06261).

Several copies ("workers") of one LLM generate in parallel over one shared, concurrently updated
KV cache made of segments; RoPE lets every worker read every segment at its own positions.

The pure modules (:mod:`hogwild_ref.segments`, :mod:`hogwild_ref.scheduler`,
:mod:`hogwild_ref.prompts`, :mod:`hogwild_ref.settings`, :mod:`hogwild_ref.events` and the others
listed in docs/architecture.md, among them the evaluation's answers, datasets and summary) import no
torch; the torch-facing names below load lazily.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Engine", "HogwildResult", "Settings", "generate", "load", "load_default", "__version__"]

_LAZY = {
    "Engine": "hogwild_ref.engine",
    "HogwildResult": "hogwild_ref.events",
    "Settings": "hogwild_ref.settings",
    "generate": "hogwild_ref.engine",
    "load": "hogwild_ref.models",
    "load_default": "hogwild_ref.models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hogwild_ref' has no attribute {name!r}")
