"""Token sampling: greedy, temperature, top-k, top-p, min-p; one seeded generator per worker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from .checks import check_sampling, plain_sampling

__all__ = ["NonFiniteLogits", "SamplingConfig", "sample", "sample_rows"]

#: below this temperature ``logits / temperature`` may overflow float32 (or the temperature itself
#: rounds to 0 there): :func:`filter_logits` then divides the logits less their maximum, in float64
STEEP_TEMPERATURE = 1e-20


class NonFiniteLogits(RuntimeError):
    """A row's logits hold NaN or are not finite where the token is chosen (Spec §11.5): greedy argmax
    would pick NaN's index (or token 0) and sampling has no distribution, so the tick stops here."""

    def __init__(self, row: int):
        super().__init__(f"the model's logits are not finite (NaN or inf) for row {row}: its weights or inputs hold "
                         "NaN/inf, or its dtype overflows (float16?); check the model, e.g. "
                         "all(p.isfinite().all() for p in model.parameters())")


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings. ``temperature == 0`` is greedy (argmax; ties: lowest id)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_k, self.top_p, self.min_p)  # as Settings checks them (Spec §11.7)
        plain_sampling(self)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def filter_logits(logits: Float[Tensor, " V"], cfg: SamplingConfig) -> Float[Tensor, " V"]:
    """Temperature, then top-k, top-p (nucleus) and min-p filtering (removed entries set to -inf), Spec §11.5.

    Below :data:`STEEP_TEMPERATURE` (``1e-20``), ``logits / temperature`` could overflow (or the
    temperature round to 0 in float32) and make every probability NaN; the logits are then divided
    after subtracting their maximum, in float64 (the same distribution, its largest entry 0). The
    choice is made on the host from the setting alone (no device sync); above it the plain quotient
    is computed exactly as always."""
    t = logits.float()
    if cfg.temperature < STEEP_TEMPERATURE:
        x = ((t - t.max()).double() / cfg.temperature).float()
    else:
        x = t / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < x.numel():
        kth = torch.topk(x, cfg.top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1:
        sorted_x, order = torch.sort(x, descending=True, stable=True)  # ties: lower ids first (Spec §11.5)
        probs = sorted_x.softmax(-1)
        drop = probs.cumsum(-1) - probs >= cfg.top_p  # keep the smallest prefix reaching top_p
        drop[0] = False  # which holds the most likely token (a top_p below float32's range would drop it)
        x = x.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    if cfg.min_p is not None and cfg.min_p > 0:
        probs = x.softmax(-1)
        x = x.masked_fill(probs < cfg.min_p * probs.max(), float("-inf"))
    return x


def sample(logits: Float[Tensor, " V"], cfg: SamplingConfig, generator: torch.Generator | None = None) -> int:
    """Sample one token id from ``logits`` (greedy when ``cfg.temperature == 0``): :func:`sample_rows`
    of one active row."""
    if not isinstance(logits, Tensor) or logits.dim() != 1:
        raise ValueError(f"sample() takes one row of logits of shape (V,); got {_shape(logits)} (sample_rows() takes (R, V))")
    token = sample_rows(logits[None], [True], cfg, [generator])[0]
    assert token is not None  # an active row gets a token
    return token


def _check_finite(finite: Sequence[bool | int], active: Sequence[bool]) -> None:
    """Raise :class:`NonFiniteLogits` for the first active row whose checked logit is not finite."""
    bad = next((r for r, (ok, on) in enumerate(zip(finite, active, strict=True)) if on and not ok), None)
    if bad is not None:
        raise NonFiniteLogits(bad)


def sample_rows(logits: Float[Tensor, "R V"], active: Sequence[bool], cfg: SamplingConfig,
                generators: Sequence[torch.Generator | None]) -> list[int | None]:
    """One token per active row, sampled on the logits' device; one copy of the ids to the host.

    Row ``r`` uses ``generators[r]`` (which must live on the logits' device); inactive rows give None.
    Greedy: one ``argmax`` over all rows. An active row whose chosen logit (greedy) or largest logit
    (sampling) is NaN or infinite raises :class:`NonFiniteLogits` (greedy: checked in the same copy).
    """
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ValueError(f"sample_rows() takes logits of shape (R, V); got {_shape(logits)}")
    if len(active) != logits.shape[0] or len(generators) != logits.shape[0]:
        raise ValueError(f"sample_rows(): logits have {logits.shape[0]} rows, so give {logits.shape[0]} active flags and "
                         f"generators; got {len(active)} and {len(generators)}")
    if cfg.greedy:
        ids = logits.argmax(dim=-1)
        chosen = logits.gather(-1, ids[:, None])[:, 0]  # argmax picks a NaN where a row holds one
        tokens, finite = torch.stack([ids, torch.isfinite(chosen).long()]).tolist()  # one copy to the host
        _check_finite(finite, active)
        return [t if on else None for t, on in zip(tokens, active, strict=True)]
    _check_finite(torch.isfinite(logits.amax(dim=-1)).tolist(), active)
    probs = torch.stack([
        filter_logits(logits[r], cfg).softmax(-1) if on else torch.ones_like(logits[r], dtype=torch.float32)
        for r, on in enumerate(active)
    ])
    ids = torch.cat([
        torch.multinomial(probs[r], 1, generator=generators[r]) if on else probs.new_zeros(1, dtype=torch.long)
        for r, on in enumerate(active)
    ])
    return [int(t) if on else None for t, on in zip(ids.tolist(), active, strict=True)]


def _shape(value: object) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else f"a {type(value).__name__}"
