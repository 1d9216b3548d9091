"""RoPE as the model applies it, and pure re-rotation by a position delta (Spec §8).

:class:`RopeSpec` is built from a Hugging Face config with transformers' own RoPE parameter code
(the architecture's rotary-embedding module), so frequencies are never re-derived here.

* :meth:`RopeSpec.rotate` is what the model does at absolute positions, *including* the
  ``attention_scaling`` factor (YaRN, LongRoPE) that HF folds into cos/sin (Spec §8.2).
* :meth:`RopeSpec.rerotate` is a *pure* rotation by a delta: ``rerotate(rotate(x, p), d) ==
  rotate(x, p + d)``. It never applies ``attention_scaling`` again (Spec §8.3).

Angles and cos/sin are computed in float64, the rotation itself in float32, and the result is cast
once to the input dtype (Spec §8.5).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["RopeError", "RopeSpec", "SUPPORTED_ROPE_TYPES", "Rotation"]

#: rope types whose rotation is shift-invariant (a function of the position delta alone).
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "longrope")
Convention = Literal["half", "interleaved"]


class RopeError(ValueError):
    """A model or config whose positional encoding Hogwild cannot shift (Spec §8.4)."""


@dataclass(frozen=True)
class Rotation:
    """Precomputed cos/sin of a set of angles, shape ``(..., rotary_dim // 2)``, float32.

    Built once per tick (Spec §3.6) and applied in every layer with :meth:`RopeSpec.apply`.
    """

    cos: Tensor
    sin: Tensor

    def to(self, device: torch.device | str) -> Rotation:
        """This rotation's cos/sin on ``device`` (one copy per layer device per tick, Spec §11.8)."""
        return Rotation(self.cos.to(device, non_blocking=True), self.sin.to(device, non_blocking=True))


@dataclass(frozen=True)
class RopeSpec:
    """Everything needed to rotate query/key vectors exactly as the model does (Spec §8.1).

    Attributes:
        inv_freq: ``(rotary_dim // 2,)`` inverse frequencies from transformers' RoPE code.
        attention_scaling: factor HF multiplies into cos and sin (1.0 except YaRN/LongRoPE).
        head_dim: size of one head; the first ``rotary_dim`` channels are rotated.
        convention: ``"half"`` (rotate-half, Llama/NeoX: channel ``i`` pairs with ``i + rotary_dim/2``)
            or ``"interleaved"`` (GPT-J: channel ``2i`` pairs with ``2i + 1``).
        rope_type: the config's rope type.
        max_position: positions must stay below this (LongRoPE pinned to its short factors), or None.
    """

    inv_freq: Tensor
    attention_scaling: float = 1.0
    head_dim: int = 0
    convention: Convention = "half"
    rope_type: str = "default"
    max_position: int | None = None

    def __post_init__(self) -> None:
        inv = torch.as_tensor(self.inv_freq, dtype=torch.float64).detach().cpu()
        object.__setattr__(self, "inv_freq", inv)
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.rotary_dim)
        if self.rotary_dim > self.head_dim or self.rotary_dim % 2:
            raise RopeError(f"rotary_dim {self.rotary_dim} must be even and <= head_dim {self.head_dim}")
        if self.convention not in ("half", "interleaved"):
            raise RopeError(f"unknown RoPE convention {self.convention!r}; use 'half' or 'interleaved'")

    @property
    def rotary_dim(self) -> int:
        """Number of rotated channels (``partial_rotary_factor * head_dim``, Spec §8.1)."""
        return 2 * self.inv_freq.numel()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Any, *, convention: Convention = "half") -> RopeSpec:
        """Build the spec from a transformers config (Spec §8.1, §8.4).

        The config does not say which channels pair up; ``convention`` is rotate-half unless given.
        The engine derives it from the model's own rotary code (:func:`hogwild_ref.features.probe_rope`,
        Spec §11.6) and never relies on this default.

        Uses the architecture's own rotary-embedding module (``<Arch>RotaryEmbedding(config)``), so
        the inverse frequencies and ``attention_scaling`` are transformers' own. Refuses rope types
        that are not shift-invariant (``dynamic`` NTK) and unknown types; pins LongRoPE to its short
        factors and records ``original_max_position_embeddings`` as the position limit.
        """
        params = _rope_parameters(config)
        rope_type = str(params.get("rope_type", params.get("type", "default")) or "default")
        if "dynamic" in rope_type:
            raise RopeError(
                f"rope type {rope_type!r} (dynamic NTK scaling) changes the frequencies with the sequence length, "
                "so a rotation by a position delta is not a fixed rotation and cached keys cannot be shifted. "
                "Use a model or config with rope type default, linear, llama3, yarn or longrope."
            )
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise RopeError(
                f"rope type {rope_type!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)}); "
                "Hogwild needs a 1-D rotary embedding whose rotation depends only on the position delta"
            )
        module = _rotary_module(config)
        buffer = getattr(module, "inv_freq", None)
        if not isinstance(buffer, torch.Tensor):
            raise RopeError(
                f"the rotary embedding of model type {getattr(config, 'model_type', None)!r} ({type(module).__name__}) "
                "has no inv_freq buffer, so it does not follow transformers' RotaryEmbedding interface from which "
                "hogwild_ref reads the frequencies (e.g. GPT-J and CodeGen use their own sinusoidal tables)"
            )
        inv_freq = buffer.detach().to(torch.float64)
        scaling = float(getattr(module, "attention_scaling", 1.0))
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        max_position = None
        if rope_type == "longrope":
            # HF switches short/long factors on the current sequence length. Hogwild views have many
            # lengths at once, so we pin the short factors, valid below the original context size.
            max_position = int(params.get("original_max_position_embeddings")
                               or getattr(config, "original_max_position_embeddings", 0)
                               or config.max_position_embeddings)
            inv_freq = _longrope_short_inv_freq(config)
        return cls(inv_freq, scaling, int(head_dim), convention, rope_type, max_position)

    # ------------------------------------------------------------------ rotations
    def rotation(
        self,
        positions: Int[Tensor, "*shape"] | int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Rotation:
        """cos/sin for rotating by ``positions`` (absolute positions or deltas) (Spec §8.5).

        Angles are computed in float64; cos/sin are returned in ``dtype`` (float32 by default,
        float64 for the oracle).
        """
        pos = torch.as_tensor(positions, device=device)
        if isinstance(positions, bool) or pos.is_floating_point() or pos.is_complex() or pos.dtype == torch.bool:
            raise RopeError(f"positions must be integers (an int or an integer tensor), got {_what(positions)}: RoPE "
                            "rotates by whole positions (Spec §8.2)")
        pos = pos.to(torch.float64)
        angles = pos[..., None] * self.inv_freq.to(pos.device)
        return Rotation(angles.cos().to(dtype), angles.sin().to(dtype))

    def apply(
        self, x: Float[Tensor, "*batch head_dim"], rot: Rotation, scale: float = 1.0
    ) -> Float[Tensor, "*out head_dim"]:
        """Rotate ``x`` by a precomputed :class:`Rotation` (broadcast over ``x.shape[:-1]``), times ``scale``.

        The result has the broadcast shape of ``x.shape[:-1]`` and the rotation's leading shape.
        """
        if x.shape[-1] != self.head_dim:
            raise RopeError(f"last dimension of x is {x.shape[-1]}, expected head_dim {self.head_dim}")
        if not x.is_floating_point():
            raise RopeError(f"x must be a floating-point tensor (queries or keys), got {x.dtype}: its rotation would be "
                            "truncated to integers")
        rd, h = self.rotary_dim, self.rotary_dim // 2
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        xf = x.to(work)
        xr, xpass = xf[..., :rd], xf[..., rd:]
        cos, sin = rot.cos.to(x.device, work), rot.sin.to(x.device, work)
        if scale != 1.0:
            cos, sin = cos * scale, sin * scale
        if self.convention == "half":
            x1, x2 = xr[..., :h], xr[..., h:]
            out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        else:
            x1, x2 = xr[..., 0::2], xr[..., 1::2]
            out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        if xpass.shape[-1]:
            out = torch.cat((out, xpass.expand(*out.shape[:-1], xpass.shape[-1])), dim=-1)
        return out.to(x.dtype)

    def rotate(
        self, x: Float[Tensor, "*batch head_dim"], positions: Int[Tensor, "*positions"] | int
    ) -> Float[Tensor, "*out head_dim"]:
        """RoPE at absolute ``positions``, as the model applies it, ``attention_scaling`` included (Spec §8.2).

        ``positions`` broadcasts against ``x.shape[:-1]`` (e.g. ``(B, 1, n)`` for ``x`` of ``(B, H, n, D)``).
        """
        self.check_positions(positions)
        return self.apply(x, self.rotation(positions, x.device, _work(x)), self.attention_scaling)

    def rerotate(
        self, x: Float[Tensor, "*batch head_dim"], delta: Int[Tensor, "*deltas"] | int
    ) -> Float[Tensor, "*out head_dim"]:
        """Pure rotation by a position ``delta`` (Spec §8.3): no ``attention_scaling``.

        ``rerotate(rotate(x, p), d) == rotate(x, p + d)`` and ``rerotate(x, 0) == x``.
        """
        return self.apply(x, self.rotation(delta, x.device, _work(x)))

    def check_positions(self, positions: Tensor | int) -> None:
        """Raise :class:`RopeError` when a position reaches ``max_position`` (pinned LongRoPE, Spec §8.4)."""
        if self.max_position is None:
            return
        pos = torch.as_tensor(positions)
        top = int(pos.max()) if pos.numel() else -1
        if top >= self.max_position:
            raise RopeError(
                f"position {top} >= {self.max_position}: LongRoPE is pinned to its short factors, valid only "
                "below original_max_position_embeddings; use a shorter budget/prompt"
            )


# ---------------------------------------------------------------------- helpers
def _work(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _rope_parameters(config: Any) -> dict[str, Any]:
    params = getattr(config, "rope_parameters", None)
    if params is None:
        params = getattr(config, "rope_scaling", None) or {}
    if not isinstance(params, dict):
        raise RopeError(f"unexpected rope_parameters {params!r}")
    if params and all(isinstance(v, dict) for v in params.values()):
        raise RopeError(
            "this config has per-layer-type RoPE parameters (e.g. sliding/full attention layers with different "
            "RoPE); hogwild_ref supports one RoPE for all layers"
        )
    return dict(params)


def _rotary_module(config: Any) -> torch.nn.Module:
    """Instantiate the architecture's own ``*RotaryEmbedding`` module from transformers."""
    model_type = getattr(config, "model_type", None)
    try:
        modeling = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    except ImportError as exc:
        raise RopeError(
            f"cannot find transformers' modeling code for model_type {model_type!r}; "
            "hogwild_ref needs a transformers decoder with rotary position embeddings"
        ) from exc
    classes = [v for k, v in vars(modeling).items() if k.endswith("RotaryEmbedding") and isinstance(v, type)]
    if not classes:
        raise RopeError(
            f"model type {model_type!r} has no rotary position embedding; Hogwild shares KV across workers at "
            "different positions, which needs RoPE (absolute or learned position embeddings cannot be shifted)"
        )
    try:
        with torch.device("cpu"):
            return classes[0](config)
    except Exception as exc:  # noqa: BLE001 - a rotary module that cannot be built from this config
        raise RopeError(
            f"cannot build {classes[0].__name__} from this {model_type!r} config ({type(exc).__name__}: {exc}); "
            "hogwild_ref reads the RoPE frequencies from the architecture's own rotary module"
        ) from exc


def _longrope_short_inv_freq(config: Any) -> Tensor:
    """LongRoPE's inverse frequencies with the short factors (via transformers' own function)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, _ = ROPE_INIT_FUNCTIONS["longrope"](config, device=torch.device("cpu"), seq_len=None)
    return inv_freq.to(torch.float64)


def _what(value: Any) -> str:
    """A value's kind for a message: a tensor's dtype, else its Python type."""
    return f"a {value.dtype} tensor" if isinstance(value, Tensor) else f"{type(value).__name__} {value!r}"
