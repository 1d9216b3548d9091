"""The numeric compatibility proof: run a model only once it is shown to compute what the model computes (Spec §11.6).

Before a model runs, on the model object itself: the config's RoPE is checked
(:func:`~hogwild_ref.models.check_supported`), the RoPE probe (:func:`hogwild_ref.features.probe_rope`)
finds the channel pairing and checks the attention keywords, and then :func:`prove` runs a short random
input with one worker through the forward step (:class:`~hogwild_ref.forward.Forward`) with the oracle
backend and the backend that will be used: every tick's logits must equal the model's own forward (its
own attention implementation) within the dtype's tolerance.

:func:`ensure_compatible` does all of it once per model object (and dtype, device and backend) and
returns the :class:`~hogwild_ref.rope.RopeSpec` to run with. Families outside the tested list run only
with ``allow_untested=True``, the switch that lets the proof stand in for the test suite.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from .features import PROOF_TOLERANCES, CompatibilityError, RopeProbe, model_type, relative_error, probe_rope
from .forward import Forward
from .models import ALLOW_UNTESTED, SUPPORTED_FAMILIES, UnsupportedModelError, check_supported
from .rope import RopeSpec
from .segments import Row, make_layout

__all__ = ["PROOF_TOLERANCES", "Proof", "ensure_compatible", "proof_of", "prove"]


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
    """Worst relative logit error of the forward step with ``backend`` against the model's own forward (Spec §11.6).

    One worker, contiguous layout: a random prompt of :data:`PROOF_PROMPT` tokens is prefilled, then
    ticks feed :data:`PROOF_FEEDS` tokens into the worker's segment (several tokens in one tick
    included); each forward's last-slot logits are compared with the model's forward over the
    whole sequence. The worker's segment sits at offset ``PROOF_PROMPT`` of its view, so keys are
    stored re-rotated and queries rotated per segment, as in any run.
    """
    vocab = model.get_input_embeddings().num_embeddings
    gen = torch.Generator().manual_seed(seed)
    total = PROOF_PROMPT + sum(PROOF_FEEDS)
    ids = torch.randint(0, vocab, (total,), generator=gen).tolist()
    reference = _model_logits(model, ids)
    forward = Forward(model, rope, backend, compile=False)
    storage = forward.storage(make_layout("contiguous", 1))
    worst, start = 0.0, 0
    for view, n in [(("prompt",), PROOF_PROMPT), *((("prompt", "out_0"), k) for k in PROOF_FEEDS)]:
        logits = forward(storage, [Row(view, n)], [ids[start : start + n]])
        assert logits is not None
        start += n
        worst = max(worst, relative_error(logits[0], reference[start - 1]))
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


_PROOFS: weakref.WeakKeyDictionary[Any, dict[tuple[str, str, str], Proof]] = weakref.WeakKeyDictionary()


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
    proofs = _PROOFS.setdefault(model, {})
    key = _key(model, backend)
    if key in proofs:
        return proofs[key].rope
    t0 = time.perf_counter()
    mt = model_type(model)
    spec = check_supported(model.config, allow_untested=True)
    probe = probe_rope(model, spec)
    rope = replace(spec, convention=probe.convention)  # type: ignore[arg-type]
    tested = mt in SUPPORTED_FAMILIES
    allowed = allow_untested or getattr(model, ALLOW_UNTESTED, False) or any(not p.tested for p in proofs.values())
    if not tested and not allowed:
        raise UnsupportedModelError(
            f"model type {mt!r} is not among the tested families ({', '.join(SUPPORTED_FAMILIES)}). Pass "
            "allow_untested=True (CLI: --allow-untested) to run it once a compatibility proof on the model itself "
            "(its RoPE and attention checked against its own forward) passes"
        )
    dtype = next(model.parameters()).dtype
    tol = PROOF_TOLERANCES.get(dtype, PROOF_TOLERANCES[torch.float32])
    errors: dict[str, float] = {}
    for name in dict.fromkeys(("oracle", backend)):
        done = proofs.get(_key(model, name))
        errors[name] = done.errors[name] if done else _prove_or_refuse(model, rope, name, mt)
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
