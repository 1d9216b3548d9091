"""The family survey: the compatibility proof on a tiny model of every RoPE family of transformers (Spec §11.6)."""

from __future__ import annotations

from typing import Any, Iterator

import torch

from .models import UnsupportedModelError, tiny_family_config
from .proof import ensure_compatible, proof_of

__all__ = ["rope_families", "survey", "tiny_family_model"]


def rope_families() -> list[str]:
    """Causal-LM model types of the installed transformers whose modeling code has a rotary embedding."""
    import importlib

    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    found = []
    for mt in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        try:
            modeling = importlib.import_module(f"transformers.models.{mt}.modeling_{mt}")
        except Exception:  # noqa: BLE001 - families without an importable modeling module
            continue
        if any(k.endswith("RotaryEmbedding") for k in vars(modeling)):
            found.append(mt)
    return found


#: layers of a survey model: enough for the per-layer patterns of real checkpoints to appear (a layer
#: without RoPE every fourth, local and global layers alternating in fours, a dense first layer)
SURVEY_LAYERS = 8


def tiny_family_model(model_type: str, max_parameters: int = 20_000_000, seed: int = 0,
                      layers: int = SURVEY_LAYERS) -> Any:
    """A tiny random-weight causal LM of ``model_type`` (eval mode), or raise ``ValueError`` when none builds.

    Like a trained checkpoint in what the compatibility proof can see (Spec §11.6): ``layers`` layers,
    so that per-layer patterns appear, and every parameter random, the one-dimensional ones (norm
    weights, biases) too: a norm weight of exactly 1 commutes with a rotation, which hides a norm
    applied after RoPE.
    """
    from transformers import AutoModelForCausalLM

    config = tiny_family_config(model_type, num_hidden_layers=layers)
    if getattr(config, "text_config", None) is not None:
        raise ValueError("a composite (multimodal) config")
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    size = sum(p.numel() for p in meta.parameters())
    if size > max_parameters:
        raise ValueError(f"the tiny config still has {size:,} parameters")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
            else:
                p.add_(torch.randn_like(p), alpha=0.2)
    return model


def survey(families: list[str] | None = None) -> Iterator[dict[str, str]]:
    """Run the compatibility proof on a tiny model of every RoPE family (Spec §11.6).

    Yields ``{"family", "outcome", "detail"}`` with outcome ``"runs"``, ``"refused"`` or ``"not built"``.
    """
    import logging
    import warnings

    logging.getLogger("transformers").setLevel(logging.ERROR)
    for mt in families or rope_families():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = tiny_family_model(mt)
        except Exception as exc:  # noqa: BLE001 - a config that does not build tiny offline
            yield {"family": mt, "outcome": "not built", "detail": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]}
            continue
        try:
            rope = ensure_compatible(model, allow_untested=True)
        except UnsupportedModelError as exc:
            yield {"family": mt, "outcome": "refused", "detail": str(exc)}
            continue
        proof = proof_of(model)
        assert proof is not None
        errs = ", ".join(f"{k} {v:.1e}" for k, v in proof.errors.items())
        yield {"family": mt, "outcome": "runs",
               "detail": f"{rope.convention} pairs, rotary_dim {rope.rotary_dim}/{rope.head_dim}, errors {errs}"}
