"""Conformance vectors of the ``rope`` level: ``rotate`` and ``rerotate`` (Spec §8.2, §8.3, §12.2).

One vector per RoPE configuration of :data:`ROPE_CONFIGS` (every supported rope type, partial rotary,
``attention_scaling != 1``) and pairing convention; the expected rotations are computed in float64.
The tolerance grows with the position (Spec §8.5, §10.4), so float32 angles pass.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..rope import Convention, RopeSpec
from .vectors import (
    SPEC_VERSION,
    Vector,
    YARN,
    config_dict,
    generator_versions,
    llama_config,
    phi3_config,
    rope_data,
    stablelm_yarn_partial_config,
)

__all__ = ["CONVENTIONS", "ROPE_CONFIGS", "ROPE_TOLERANCE", "ROPE_TOLERANCE_PER_POSITION", "rope_vector", "rope_vectors"]

#: tolerance on the relative error of Spec §10.1 (Spec §8.5, §10.4), per row
#: ``ROPE_TOLERANCE + ROPE_TOLERANCE_PER_POSITION * (|p| + 1)``
ROPE_TOLERANCE = 1e-6
ROPE_TOLERANCE_PER_POSITION = 2.0**-23

MEASURE_ROPE = (
    "per output and per row i: max_j |out[i, j] - expected[i, j]| / max|expected| (Spec §10.1), at most "
    "tolerance + tolerance_per_position * (|p_i| + 1) with p_i = positions[i] (rotated) or deltas[i] (rerotated) "
    "(Spec §10.4)"
)

#: the pairing conventions every rope configuration is generated in (Spec §8.1, §8.3)
CONVENTIONS: tuple[Convention, ...] = ("half", "interleaved")

#: RoPE configurations of the ``rope`` level: every supported rope type, partial rotary, A != 1
ROPE_CONFIGS: dict[str, Callable[[], Any]] = {
    "default": lambda: llama_config({"rope_type": "default", "rope_theta": 10000.0}, max_pos=32768),
    "linear": lambda: llama_config({"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}, max_pos=32768),
    "llama3": lambda: llama_config({
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 1024,
    }, max_pos=32768),
    "yarn": lambda: llama_config(dict(YARN)),
    "longrope": lambda: phi3_config({
        "rope_type": "longrope", "rope_theta": 10000.0, "factor": 4.0,
        "short_factor": [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7],
        "long_factor": [2.0, 2.3, 2.6, 2.9, 3.2, 3.5, 3.8, 4.1],
    }, partial=1.0, max_pos=8192, original=2048),
    "partial": lambda: phi3_config(max_pos=32768, original=32768),
    "yarn-partial": stablelm_yarn_partial_config,
}


def _rope_vector(case: str, convention: Convention, seed: int) -> Vector:
    config = ROPE_CONFIGS[case]()
    spec = RopeSpec.from_config(config, convention=convention)
    limit = spec.max_position or int(config.max_position_embeddings)
    g = torch.Generator().manual_seed(seed)
    fixed_pos = [0, 1, 2, 3, 5, 8, 13, 100, 1000, limit // 2, limit - 2, limit - 1]
    pos = torch.tensor(fixed_pos + torch.randint(0, limit, (36,), generator=g).tolist(), dtype=torch.long)
    fixed_delta = [0, 1, -1, 7, -7, 100, -100, limit - 1, -(limit - 1), 12345 % limit, -(4321 % limit), 2]
    delta = torch.tensor(fixed_delta + torch.randint(-limit + 1, limit, (36,), generator=g).tolist(), dtype=torch.long)
    return rope_vector(f"{case}-{convention}", config, convention, pos, delta, g)


def rope_vector(name: str, config: Any, convention: Convention, pos: torch.Tensor, delta: torch.Tensor,
                g: torch.Generator) -> Vector:
    """A ``rope`` vector of ``config`` at the given positions and deltas, vectors drawn from ``g`` (Spec §12.2)."""
    spec = RopeSpec.from_config(config, convention=convention)
    limit = spec.max_position or int(config.max_position_embeddings)
    N, D = pos.numel(), spec.head_dim
    x = torch.randn(N, D, generator=g, dtype=torch.float64).float()
    y = torch.randn(N, D, generator=g, dtype=torch.float64).float()
    rotated = spec.rotate(x.double(), pos).float()
    rerotated = spec.rerotate(y.double(), delta).float()
    features = [f"rope_type={spec.rope_type}", f"convention={convention}"]
    if spec.rotary_dim < spec.head_dim:
        features.append("partial rotary")
    if spec.attention_scaling != 1.0:
        features.append("attention_scaling != 1")
    meta = {
        "name": name,
        "level": "rope",
        "version": SPEC_VERSION,
        "generator": generator_versions(),
        "description": (
            f"RoPE of a {config.model_type} config with rope type {spec.rope_type!r} "
            f"(head_dim {spec.head_dim}, rotary_dim {spec.rotary_dim}, attention_scaling {spec.attention_scaling:.6g}), "
            f"{convention!r} convention: rotate(x, positions) includes attention_scaling (Spec §8.2); "
            "rerotate(y, deltas) is a pure rotation (Spec §8.3). Positions up to the model's limit; the "
            "tolerance grows with the position, so float32 angles pass (Spec §8.5, §10.4)."
        ),
        "tolerance": ROPE_TOLERANCE,
        "tolerance_per_position": ROPE_TOLERANCE_PER_POSITION,
        "measure": MEASURE_ROPE,
        "dtype": "float32",
        "features": features,
        "inputs": {"rope": rope_data(spec), "config": config_dict(config)},
        "tensors": {
            "input/x": f"({N}, {D}) float32: vectors to rotate",
            "input/positions": f"({N},) int64: absolute positions, 0 <= p < {limit}",
            "input/y": f"({N}, {D}) float32: vectors to re-rotate",
            "input/deltas": f"({N},) int64: position deltas",
            "expected/rotated": f"({N}, {D}) float32: rotate(x[i], positions[i]) = A R(p) x (Spec §8.2)",
            "expected/rerotated": f"({N}, {D}) float32: rerotate(y[i], deltas[i]) = R(d) y, no A (Spec §8.3)",
        },
    }
    tensors = {
        "input/x": x, "input/positions": pos, "input/y": y, "input/deltas": delta,
        "expected/rotated": rotated, "expected/rerotated": rerotated,
    }
    return Vector(meta, tensors)


def rope_vectors() -> list[Vector]:
    """The ``rope`` vectors: every configuration of :data:`ROPE_CONFIGS` in both pairing conventions (Spec §12.2)."""
    out = []
    for i, case in enumerate(ROPE_CONFIGS):
        for j, convention in enumerate(CONVENTIONS):
            out.append(_rope_vector(case, convention, seed=1000 + 10 * i + j))
    return out
