"""The compatibility proof: run a model only once it is shown to compute what the model computes (Spec §11.6).

A list of tested families is not enough: a family can apply its rotary embedding with another
channel pairing (cohere: interleaved pairs), cap its attention logits (gemma2), add attention sinks
(gpt-oss), use a sliding window in some layers, or skip RoPE in some layers. Each of these is either
implemented exactly here or refused with an error that names it. Before a model runs, on the model
object itself:

1. **RoPE probe** (:func:`probe_rope`): one forward of a single token at several positions, through a
   capturing attention function. A row of one token attends only to itself, so every layer's input
   is the same in every row and only RoPE differs: the captured queries and keys at position ``p``
   must be the position-0 ones rotated by ``p``. The probe finds the channel pairing
   (rotate-half or interleaved) and the rotated channels of every layer from the model's own
   rotary code, and collects the keywords the model passes to its attention function
   (:func:`check_attention_kwargs`).
2. **Numeric proof** (:func:`prove`): a short random input, one worker, run through the engine with
   the oracle backend and the backend that will be used; every tick's logits must equal the model's
   own forward (its own attention implementation) within the dtype's tolerance.

:func:`ensure_compatible` does both once per model object (and dtype, device and backend) and
returns the :class:`~hogwild_ref.rope.RopeSpec` the engine uses. Families outside the tested list
run only with ``allow_untested=True``, the switch that lets the proof stand in for the test suite.
"""

from __future__ import annotations

import contextvars
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor

from .models import SUPPORTED_FAMILIES, UnsupportedModelError, check_supported
from .rope import RopeSpec

__all__ = [
    "AttentionFeatureError",
    "CompatibilityError",
    "PROOF_TOLERANCES",
    "Proof",
    "RopeProbe",
    "check_attention_kwargs",
    "ensure_compatible",
    "proof_of",
    "probe_rope",
    "prove",
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
    view fits inside the window (checked against the tick plan when the hogwild cache is given);
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
        if key == "sliding_window":
            _check_window(int(value), kwargs.get("hogwild_cache"), where)
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


def _check_window(window: int, cache: Any, where: str) -> None:
    """Full attention equals sliding-window attention while every view fits in the window."""
    plan = getattr(cache, "plan", None)
    top = getattr(plan, "max_position", None)
    if top is not None and top + 1 > window:
        raise AttentionFeatureError(
            f"the context reached {top + 1} tokens, beyond the sliding window of {window} in {where}; "
            "hogwild_ref implements full attention only: use a smaller budget or a model without "
            "sliding-window attention"
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
        raise RuntimeError("the hogwild_probe attention runs only inside compat.probe_rope")
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


def _rel(a: Tensor, b: Tensor) -> float:
    a64, b64 = a.double(), b.double()
    return float((a64 - b64).abs().max() / b64.abs().max().clamp_min(1e-30))


def _model_type(model: Any) -> str:
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
    mt = _model_type(model)
    param = next(model.parameters())
    vocab = model.get_input_embeddings().num_embeddings
    token = min(3, vocab - 1)
    P = torch.tensor(PROBE_POSITIONS, dtype=torch.long)
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
    kv_heads = getattr(model.config, "num_key_value_heads", None) or getattr(model.config, "num_attention_heads", None)
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
            x0 = x[0:1].expand_as(x)
            moved = (x - x0).abs().amax(dim=(0, 1)) > 1e-6 * x.abs().max().clamp_min(1e-30)
            if not bool(moved.any()):
                raise CompatibilityError(
                    f"{mt}: layer {layer} applies no rotary position embedding to its {name}s (a NoPE layer); "
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
                errors[conv] = max(errors[conv], _rel(moved_x, x))
    best = min(errors, key=errors.__getitem__)
    other = "interleaved" if best == "half" else "half"
    tol = max(10 * PROOF_TOLERANCES.get(param.dtype, 1e-4), 1e-3)  # the other pairing is off by O(1)
    if errors[best] > tol:
        raise CompatibilityError(
            f"{mt}: the model's rotary embedding matches neither rotate-half nor interleaved pairs of the first "
            f"{spec.rotary_dim} channels at the config's frequencies (best: {best}, error {errors[best]:.2e} > "
            f"{tol:.0e}); hogwild_ref cannot shift its keys"
        )
    return RopeProbe(best, spec.rotary_dim, spec.head_dim, errors[best], errors[other], tuple(sorted(cap.kwargs)))


# ---------------------------------------------------------------------- numeric proof
@dataclass(frozen=True)
class Proof:
    """The outcome of a compatibility proof (Spec §11.6).

    Attributes:
        model_type: the config's model type.
        rope: the RoPE spec the engine uses (convention from the probe).
        probe: what the RoPE probe found.
        errors: per backend, worst relative logit error against the model's own forward.
        tolerance: the dtype's tolerance (:data:`PROOF_TOLERANCES`).
        tested: whether the family is among the tested ones (else it runs on ``allow_untested``).
        seconds: time the proof took.
    """

    model_type: str
    rope: RopeSpec
    probe: RopeProbe
    errors: dict[str, float] = field(default_factory=dict)
    tolerance: float = 0.0
    tested: bool = True
    seconds: float = 0.0


#: feeds of the proof: a prompt of PROOF_PROMPT tokens, then ticks feeding these many tokens
PROOF_PROMPT = 7
PROOF_FEEDS = (3, 1, 1, 2, 1)


def _model_logits(model: Any, ids: list[int]) -> Tensor:
    """The model's own forward (its configured attention implementation) over one sequence."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids], device=device), use_cache=False)
    return out.logits[0].float().cpu()


def prove(model: Any, rope: RopeSpec, backend: str, *, seed: int = 0) -> float:
    """Worst relative logit error of the engine with ``backend`` against the model's own forward (Spec §11.6).

    One worker, contiguous layout: a random prompt of :data:`PROOF_PROMPT` tokens is prefilled, then
    ticks feed :data:`PROOF_FEEDS` tokens into the worker's segment (several tokens in one tick
    included); each forward's last-slot logits are compared with the model's forward over the
    whole sequence. The worker's segment sits at offset ``PROOF_PROMPT`` of its view, so keys are
    stored re-rotated and queries rotated per segment, as in any run.
    """
    from .cache import make_cache
    from .engine import Engine
    from .segments import Row, make_layout

    vocab = model.get_input_embeddings().num_embeddings
    gen = torch.Generator().manual_seed(seed)
    total = PROOF_PROMPT + sum(PROOF_FEEDS)
    ids = torch.randint(0, vocab, (total,), generator=gen).tolist()
    reference = _model_logits(model, ids)
    engine = Engine(model, None, workers=1, layout="contiguous", backend=backend, finisher=False)
    cache = make_cache(model.config, make_layout("contiguous", 1), rope, backend, engine.dtype, engine.device)
    worst, start = 0.0, 0
    for view, n in [(("prompt",), PROOF_PROMPT), *((("prompt", "out_0"), k) for k in PROOF_FEEDS)]:
        logits = engine.forward_rows(cache, [Row(view, n)], [ids[start : start + n]])
        assert logits is not None
        start += n
        worst = max(worst, _rel(logits[0], reference[start - 1]))
    return worst


def _prove_or_refuse(model: Any, rope: RopeSpec, backend: str, mt: str) -> float:
    """:func:`prove`, turning a failure of the engine on this model into a refusal that names it."""
    try:
        return prove(model, rope, backend)
    except UnsupportedModelError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CompatibilityError(
            f"{mt}: the compatibility proof could not run the engine ({backend}) on this model "
            f"({type(exc).__name__}: {first}); its attention does not fit hogwild_ref's cache"
        ) from exc


# ---------------------------------------------------------------------- entry point
_PROOFS: weakref.WeakKeyDictionary[Any, dict[tuple[str, str, str], Proof]] = weakref.WeakKeyDictionary()
_IN_PROOF: contextvars.ContextVar[dict[int, RopeSpec] | None] = contextvars.ContextVar("hogwild_in_proof", default=None)


def proof_of(model: Any) -> Proof | None:
    """The proof recorded for ``model`` (any backend), or None."""
    proofs = _PROOFS.get(model)
    return next(iter(proofs.values()), None) if proofs else None


def _key(model: Any, backend: str) -> tuple[str, str, str]:
    param = next(model.parameters())
    return (str(param.dtype), str(param.device), backend)


def ensure_compatible(model: Any, *, allow_untested: bool = False, backend: str = "rotate_queries") -> RopeSpec:
    """Prove, once per model object, dtype, device and backend, that Hogwild runs ``model`` exactly (Spec §11.6).

    Order of the checks (the first failing one is reported): the config's RoPE
    (:func:`~hogwild_ref.models.check_supported`: no RoPE, dynamic NTK, ...); the RoPE probe
    (pairing, rotated channels, attention features); the tested-family list, unless
    ``allow_untested`` (or an earlier proof of this model object allowed it); the numeric proof of
    the oracle and ``backend`` against the model's own forward.

    Returns:
        the :class:`RopeSpec` to run the model with.

    Raises:
        UnsupportedModelError: naming the reason; a :class:`CompatibilityError` with the measured error when the numeric proof fails.
    """
    inside = _IN_PROOF.get() or {}
    if id(model) in inside:
        return inside[id(model)]
    proofs = _PROOFS.setdefault(model, {})
    key = _key(model, backend)
    if key in proofs:
        return proofs[key].rope
    t0 = time.perf_counter()
    mt = _model_type(model)
    spec = check_supported(model.config, allow_untested=True)
    probe = probe_rope(model, spec)
    rope = replace(spec, convention=probe.convention)  # type: ignore[arg-type]
    tested = mt in SUPPORTED_FAMILIES
    allowed = allow_untested or any(not p.tested for p in proofs.values())
    if not tested and not allowed:
        raise UnsupportedModelError(
            f"model type {mt!r} is not among the tested families ({', '.join(SUPPORTED_FAMILIES)}). Pass "
            "allow_untested=True (CLI: --allow-untested) to run it once a compatibility proof on the model itself "
            "(its RoPE and attention checked against its own forward) passes"
        )
    dtype = next(model.parameters()).dtype
    tol = PROOF_TOLERANCES.get(dtype, PROOF_TOLERANCES[torch.float32])
    errors: dict[str, float] = {}
    token = _IN_PROOF.set({**inside, id(model): rope})
    try:
        for name in dict.fromkeys(("oracle", backend)):
            done = proofs.get(_key(model, name))
            errors[name] = done.errors[name] if done else _prove_or_refuse(model, rope, name, mt)
    finally:
        _IN_PROOF.reset(token)
    bad = {k: v for k, v in errors.items() if not v <= tol}
    if bad:
        worst = ", ".join(f"{k} {v:.2e}" for k, v in bad.items())
        raise CompatibilityError(
            f"{mt}: the compatibility proof failed: on a short random input with one worker the engine's logits "
            f"differ from the model's own forward by {worst} (relative; tolerance {tol:.0e} for {dtype}). "
            "The model does something in attention that hogwild_ref does not reproduce; it cannot run exactly"
        )
    proof = Proof(mt, rope, probe, errors, tol, tested, time.perf_counter() - t0)
    for name in errors:
        proofs.setdefault(_key(model, name), proof)
    return rope


# ---------------------------------------------------------------------- survey of transformers' families
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


def tiny_family_model(model_type: str, max_parameters: int = 5_000_000, seed: int = 0) -> Any:
    """A tiny random-weight causal LM of ``model_type`` (eval mode), or raise ``ValueError`` when none builds."""
    from transformers import AutoModelForCausalLM

    from .models import tiny_family_config

    config = tiny_family_config(model_type)
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
