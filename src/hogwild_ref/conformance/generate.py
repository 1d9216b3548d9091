"""Generation of the conformance vectors, level by level (Spec §12.2).

Each level's builder lives in its own module (:mod:`.vectors_rope`, :mod:`.vectors_attention`,
:mod:`.vectors_model`); the format they share is :mod:`.vectors`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from .protocol import LEVELS
from .vectors import Vector, deterministic, write_vector
from .vectors_attention import attention_vectors
from .vectors_model import model_vectors
from .vectors_rope import rope_vectors

__all__ = ["generate_vectors", "level_builders"]


def level_builders() -> dict[str, Callable[[], list[Vector]]]:
    """The vector builder of each level (Spec §12.2)."""
    return {"rope": rope_vectors, "attention": attention_vectors, "model": model_vectors}


def generate_vectors(out_dir: Path | str, levels: Sequence[str] | None = None) -> list[Path]:
    """(Re)generate the conformance vectors into ``out_dir/<level>/`` and return the files written.

    Existing ``*.json`` / ``*.safetensors`` files of the regenerated levels are removed first, so the
    directory holds exactly the current vector set. Deterministic: the same library versions give
    the same bytes.
    """
    out = Path(out_dir)
    levels = list(levels) if levels else list(LEVELS)
    builders = level_builders()
    for level in levels:
        if level not in builders:
            raise ValueError(f"unknown level {level!r}; choose from {', '.join(LEVELS)}")
    written: list[Path] = []
    with deterministic():
        for level in levels:
            vectors = builders[level]()
            directory = out / level
            if directory.is_dir():
                for old in sorted(directory.iterdir()):
                    if old.suffix in (".json", ".safetensors") and old.is_file():
                        old.unlink()
            for vector in vectors:
                written.extend(write_vector(directory, vector))
    return written
