"""Attention features: what the model's own attention asks for, checked once per model (Spec §11.6).

A list of tested families is not enough: a family can apply its rotary embedding with another
channel pairing (cohere: interleaved pairs), cap its attention logits (gemma2), add attention sinks
(gpt-oss), use a sliding window in some layers, or skip RoPE in some layers. Each of these is either
implemented exactly or refused with an error that names it, by the **RoPE probe**
(:func:`probe_rope`): one forward of a single token at several positions, through a capturing
attention function. A row of one token attends only to itself, so every layer's input is the same in
every row and only RoPE differs: the captured queries and keys at position ``p`` must be the
position-0 ones rotated by ``p``. The probe finds the channel pairing (rotate-half or interleaved)
and the rotated channels of every layer from the model's own rotary code, and checks the keywords
the model passes to its attention function (:func:`check_attention_kwargs`). The per-tick attention
call does not check them again. The numeric proof on top of it is :mod:`hogwild_ref.proof`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Shaped
from torch import Tensor

from .models import UnsupportedModelError
from .parallel import local_kv_heads
from .rope import RopeSpec

__all__ = [
    "AttentionFeatureError",
    "CompatibilityError",
    "PROOF_TOLERANCES",
    "RopeProbe",
    "check_attention_kwargs",
    "probe_rope",
]

#: Logit tolerance of the numeric proof per model dtype: max |engine - model| / max |model| over all
#: ticks (Spec §11.6). A wrong position, pairing or scale is an error of order 1e-2 to 1.
PROOF_TOLERANCES: dict[torch.dtype, float] = {
    # float64 models still get float32 RoPE angles from transformers, hence 1e-5, not float64 round-off
    torch.float64: 1e-5, torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2,
}
#: Positions of the RoPE probe; 0 is the reference (identity rotation).
PROBE_POSITIONS = (0, 1, 3, 17, 251)
PROBE_NAME = "hogwild_probe"


class CompatibilityError(UnsupportedModelError):
    """The model does not compute what hogwild_ref computes (Spec §11.6)."""


class AttentionFeatureError(CompatibilityError):
    """The model asks its attention function for a feature the hogwild attention does not implement."""


# ---------------------------------------------------------------------- attention keywords (Spec §11.6)
#: Keywords transformers passes to attention functions that carry no attention semantics.
_PLUMBING = frozenset({
    "position_ids", "cache_position", "use_cache", "past_key_values", "cache", "hogwild_cache",
    "output_attentions", "output_hidden_states", "return_dict", "position_embeddings", "layer_idx",
    "token_type_ids", "logits_to_keep", "output_router_logits",
})


def _value(v: Any) -> str:
    if isinstance(v, Tensor):
        return f"a tensor of shape {tuple(v.shape)}"
    return repr(v)


def check_attention_kwargs(module: Any, kwargs: Mapping[str, Any], *, dropout: float | None = 0.0,
                           attention_mask: Any = None) -> None:
    """Refuse every attention feature the hogwild attention function does not implement (Spec §11.6).

    ``kwargs`` are the keyword arguments the model passed to its attention function (besides
    ``scaling``, which every backend implements, and ``dropout``, given separately when the
    function takes it as a parameter). Implemented: any ``scaling``; ``sliding_window`` while every
    view fits inside the window (the forward step checks every tick's context against it);
    ``softcap``/``s_aux`` only when None; ``dropout`` only 0; ``is_causal`` only True. Anything else
    with a value other than None is refused, naming the keyword. ``attention_mask`` must be None:
    the mask function registered for the hogwild attention returns None, so a mask here is one the
    model built itself (e.g. doge's dynamic mask), which the hogwild attention would drop.

    Raises:
        AttentionFeatureError: naming the feature, the layer and what to do.
    """
    layer = getattr(module, "layer_idx", None)
    where = f"layer {layer}" if layer is not None else type(module).__name__
    if dropout is None:
        dropout = kwargs.get("dropout", 0.0)
    if dropout:
        raise AttentionFeatureError(
            f"attention dropout (p={dropout}) in {where}: the model is in training mode; call model.eval() first"
        )
    if attention_mask is not None:
        raise AttentionFeatureError(
            f"the model passes its own attention mask ({_value(attention_mask)}) to its attention function in "
            f"{where} (e.g. a dynamic or bidirectional mask); the hogwild attention builds its mask from the segment "
            "table and would drop it"
        )
    for key, value in kwargs.items():
        if key in _PLUMBING or key in ("dropout", "scaling") or value is None:
            continue
        if key == "softcap":
            raise AttentionFeatureError(
                f"attention logit softcapping (softcap={value}, e.g. gemma2's attn_logit_softcapping) in {where} "
                "is not implemented by the hogwild attention; use a model without attention logit softcapping"
            )
        if key in ("s_aux", "sinks"):
            raise AttentionFeatureError(
                f"attention sinks ({key}: {_value(value)}, e.g. gpt-oss) in {where} are not implemented by the "
                "hogwild attention; use a model without attention sinks"
            )
        if key == "is_causal":
            if value is False:
                raise AttentionFeatureError(
                    f"bidirectional attention (is_causal=False) in {where}: Hogwild workers decode causally; "
                    "use a causal decoder"
                )
            continue
        if key == "sliding_window":  # the forward step refuses a context past the window (Spec §11.6)
            continue
        raise AttentionFeatureError(
            f"the model passes the keyword {key!r} ({_value(value)}) to its attention function in {where}; "
            "the hogwild attention does not implement it, so this model cannot run exactly"
        )
    if getattr(module, "is_causal", True) is False:
        raise AttentionFeatureError(
            f"bidirectional attention (module.is_causal=False) in {where}: Hogwild workers decode causally; "
            "use a causal decoder"
        )


# ---------------------------------------------------------------------- RoPE probe
@dataclass(frozen=True)
class RopeProbe:
    """What the model's own rotary code does (Spec §11.6).

    Attributes:
        convention: ``"half"`` or ``"interleaved"``, the pairing that reproduces every layer.
        rotary_dim: channels that rotate (the first ``rotary_dim`` of each head).
        head_dim: channels of each query/key head.
        error: worst relative error of the chosen pairing over layers, positions, queries and keys.
        other_error: the same for the other pairing (large unless only one pair rotates).
        attention_kwargs: the keyword names the model passed to its attention function.
    """

    convention: str
    rotary_dim: int
    head_dim: int
    error: float
    other_error: float
    attention_kwargs: tuple[str, ...]


class _Capture:
    def __init__(self) -> None:
        self.queries: dict[int, Tensor] = {}
        self.keys: dict[int, Tensor] = {}
        self.kwargs: set[str] = set()
        self.error: Exception | None = None


_CAPTURE: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar("hogwild_probe", default=None)


def _probe_attention(module: Any, query: Tensor, key: Tensor, value: Tensor, attention_mask: Any,
                     *args: Any, **kwargs: Any) -> tuple[Tensor, None]:
    """Capturing attention for the probe: records the rotated q/k; a row of one token attends to itself."""
    cap = _CAPTURE.get()
    if cap is None:
        raise RuntimeError("the hogwild_probe attention runs only inside features.probe_rope")
    layer = getattr(module, "layer_idx", len(cap.queries))
    cap.queries[layer] = query.detach().clone()
    cap.keys[layer] = key.detach().clone()
    cap.kwargs.update(kwargs)
    if cap.error is None:
        try:
            check_attention_kwargs(module, kwargs, dropout=None, attention_mask=attention_mask)
        except AttentionFeatureError as exc:
            cap.error = exc
    if value.shape[1] and query.shape[1] % value.shape[1] == 0:
        value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
    return value.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(PROBE_NAME, _probe_attention)
    AttentionMaskInterface.register(PROBE_NAME, lambda *a, **k: None)


_register()


def relative_error(a: Shaped[Tensor, "*shape"], b: Shaped[Tensor, "*shape"]) -> float:
    a64, b64 = a.double(), b.double()
    return float((a64 - b64).abs().max() / b64.abs().max().clamp_min(1e-30))


def model_type(model: Any) -> str:
    return str(getattr(model.config, "model_type", type(model).__name__))


@dataclass
class _Switch:
    model: Any
    name: str

    def __enter__(self) -> None:
        self.previous = getattr(self.model.config, "_attn_implementation", None)
        self.model.set_attn_implementation(self.name)

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            self.model.set_attn_implementation(self.previous)


def probe_rope(model: Any, spec: RopeSpec) -> RopeProbe:
    """Derive the RoPE pairing and rotated channels from the model's own rotary code (Spec §11.6).

    ``spec`` comes from the config (:meth:`RopeSpec.from_config`: frequencies, attention scaling);
    the probe decides which of its pairings reproduces the model in every layer, for queries and
    keys, and refuses a model whose rotation neither reproduces (rotated channels elsewhere than
    first, a layer without RoPE, another head size) or that passes an unimplemented attention feature.
    """
    mt = model_type(model)
    param = next(model.parameters())
    vocab = model.get_input_embeddings().num_embeddings
    token = min(3, vocab - 1)
    # below the spec's position limit (LongRoPE's original context, Spec §8.1): past it the model's own
    # rotary embedding switches to its long factors, which Hogwild never uses
    P = torch.tensor([p for p in PROBE_POSITIONS if spec.max_position is None or p < spec.max_position], dtype=torch.long)
    ids = torch.full((len(P), 1), token, dtype=torch.long, device=param.device)
    cap = _Capture()
    reset = _CAPTURE.set(cap)
    try:
        with _Switch(model, PROBE_NAME), torch.inference_mode():
            model(input_ids=ids, position_ids=P[:, None].to(param.device), use_cache=False)
    except AttentionFeatureError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the model's own forward is a refusal
        raise CompatibilityError(
            f"{mt}: the model's forward with a registered attention function failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); hogwild_ref needs a decoder "
            "that calls transformers' attention interface"
        ) from exc
    finally:
        _CAPTURE.reset(reset)
    if cap.error is not None:
        raise AttentionFeatureError(f"{mt}: {cap.error}")
    if not cap.queries:
        raise CompatibilityError(
            f"{mt}: the model never called the registered attention function; hogwild_ref needs a decoder whose "
            "attention goes through transformers' AttentionInterface"
        )
    kv_heads = local_kv_heads(model)  # a tensor-parallel rank sees its share of the heads (Spec §11.8)
    errors = {"half": 0.0, "interleaved": 0.0}
    head_dims = set()
    for layer in sorted(cap.queries):
        for name, x in (("query", cap.queries[layer]), ("key", cap.keys[layer])):
            head_dims.add(x.shape[-1])
            if x.shape[-1] != spec.head_dim:
                raise CompatibilityError(
                    f"{mt}: layer {layer}'s {name} heads have {x.shape[-1]} channels, but the RoPE spec expects "
                    f"head_dim {spec.head_dim}; heads with separate rotary parts (e.g. multi-head latent attention) "
                    "are not supported"
                )
            if name == "key" and x.shape[1] != kv_heads:
                raise CompatibilityError(
                    f"{mt}: layer {layer} has {x.shape[1]} key/value heads but the config says {kv_heads}; "
                    "hogwild_ref sizes its cache from the config, so it cannot run this model"
                )
            x = x[:, :, 0].double().cpu()  # (P, H, D)
            if not bool(x.abs().max() > 0):  # all zero (an ablated projection): no position to find, and re-rotating
                continue                     # zero is exact; the end-to-end check (step 3) still runs
            x0 = x[0:1].expand_as(x)
            moved = (x - x0).abs().amax(dim=(0, 1)) > 1e-6 * x.abs().max().clamp_min(1e-30)
            if not bool(moved.any()):
                raise CompatibilityError(
                    f"{mt}: layer {layer} applies no rotary position embedding to its {'queries' if name == 'query' else 'keys'} (a NoPE layer); "
                    "Hogwild's key re-rotation would give such a layer positions it never had"
                )
            beyond = moved[spec.rotary_dim:]
            if bool(beyond.any()):
                raise CompatibilityError(
                    f"{mt}: layer {layer} rotates channels beyond the first {spec.rotary_dim} of each head "
                    "(the rotary dimension from the config); hogwild_ref rotates the first rotary_dim channels only"
                )
            for conv in errors:
                candidate = replace(spec, convention=conv)  # type: ignore[arg-type]
                moved_x = candidate.rerotate(x0, P[:, None])
                errors[conv] = max(errors[conv], relative_error(moved_x, x))
    best = min(errors, key=errors.__getitem__)
    other = "interleaved" if best == "half" else "half"
    tol = max(10 * PROOF_TOLERANCES.get(param.dtype, 1e-4), 1e-3)  # the other pairing is off by O(1)
    if errors[best] > tol:
        raise CompatibilityError(
            f"{mt}: the model's rotary embedding matches neither rotate-half nor interleaved pairs of the first "
            f"{spec.rotary_dim} channels at the config's frequencies (best: {best}, error {errors[best]:.2e} > "
            f"{tol:.0e}); hogwild_ref cannot shift its keys (seen: a norm applied to queries and keys after RoPE; a config "
            "edited without rebuilding the model's rotary embedding)"
        )
    return RopeProbe(best, spec.rotary_dim, spec.head_dim, errors[best], errors[other], tuple(sorted(cap.kwargs)))
