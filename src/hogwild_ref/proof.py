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

A numeric proof that passed on a model loaded from a local folder of weight files is remembered across
processes (Spec §11.6, "Remembered proofs"): a small JSON record under the cache root
(:func:`~hogwild_ref.records.cache_root`), named by a key over the weight files, the config, the dtype,
the devices, the backend and the code and library versions; the next process with the same key runs
the cheap checks (config, RoPE probe, tested families) and skips :func:`prove`. ``HOGWILD_PROOF_CACHE=0``
turns this off.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
import weakref
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .features import PROOF_TOLERANCES, CompatibilityError, RopeProbe, model_type, relative_error, probe_rope
from .forward import Forward
from .models import ALLOW_UNTESTED, SUPPORTED_FAMILIES, UnsupportedModelError, check_supported
from .parallel import world_size
from .records import cache_root, digest, file_stamps, package_version, read_record, source_stamp, write_record
from .rope import RopeSpec
from .segments import Row, make_layout

__all__ = ["PROOF_CACHE_ENV", "PROOF_TOLERANCES", "Proof", "ensure_compatible", "proof_of", "prove", "record_key"]


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
        seconds: time :func:`ensure_compatible` took (the checks, and the numeric proof unless reused).
        reused: whether the numeric proof's errors were read from a record a passed proof left in the
            cache (Spec §11.6, "Remembered proofs") instead of measured in this process.
    """

    model_type: str
    rope: RopeSpec
    probe: RopeProbe
    errors: dict[str, float] = field(default_factory=dict)
    tolerance: float = 0.0
    tested: bool = True
    seconds: float = 0.0
    reused: bool = False


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
    forward = Forward(model, rope, backend, compile=False, pack_weights=False)  # no packed copy for a few forwards
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


_PROOFS: weakref.WeakKeyDictionary[Any, dict[tuple[str, tuple[Any, ...]], Proof]] = weakref.WeakKeyDictionary()


def proof_of(model: Any) -> Proof | None:
    """The latest proof recorded for ``model`` (any backend), or None."""
    proofs = _PROOFS.get(model)
    return next(reversed(proofs.values()), None) if proofs else None  # the latest


def _model_state(model: Any) -> tuple[Any, ...]:
    """What an in-process proof holds for besides its backend (Spec §11.6): the dtype and device, and
    the model's state that the proof's outcome depends on: its config (where the RoPE spec comes from),
    its modules (a layer replaced, e.g. by an adapter) and its rotary buffers (rebuilt or edited). A
    change to any of them proves again, where the earlier proof's RoPE spec was returned."""
    param = next(model.parameters())
    return (str(param.dtype), str(param.device), _config_text(model), tuple(id(m) for m in model.modules()),
            tuple(_rotary_state(model)))


def _config_text(model: Any) -> str:
    try:
        return str(model.config.to_json_string(use_diff=False))
    except (TypeError, ValueError):  # a config holding something JSON cannot write
        return repr(model.config.to_dict())


def _rotary_state(model: Any) -> list[tuple[tuple[float, ...], float]]:
    """Each rotary module's inverse frequencies and ``attention_scaling``: what the RoPE probe checks the
    model against (values, not versions: LongRoPE's module copies its frequencies in at every forward)."""
    out = []
    for module in model.modules():
        buf = module._buffers.get("inv_freq")
        if isinstance(buf, Tensor):
            out.append((tuple(buf.detach().double().cpu().tolist()), float(getattr(module, "attention_scaling", 1.0))))
    return out


#: environment variable: ``0`` turns the remembered proofs off (none is read or written), Spec §11.6
PROOF_CACHE_ENV = "HOGWILD_PROOF_CACHE"
#: the weight files of a model folder that the key of a remembered proof covers
WEIGHT_FILES = ("*.safetensors", "*.bin")
#: the format of a remembered proof; a change forgets every earlier record
RECORD_FORMAT = 1
_WARNED: list[bool] = []


def _weights_sample(params: list[Tensor]) -> str:
    """A digest of every parameter's shape and 8 of its values, evenly spaced: a model changed in
    memory after it was loaded (weights scaled, replaced, re-initialised) gets another key."""
    shapes = [list(p.shape) for p in params]
    samples = [p.detach().reshape(-1)[:: max(1, p.numel() // 8)][:8].float().cpu() for p in params]
    return digest([shapes, torch.cat(samples).tolist() if samples else []])


def record_key(model: Any, backend: str) -> str | None:
    """The key of ``model``'s remembered proof with ``backend``, or None when it is not remembered (Spec §11.6).

    Only a model loaded from a local folder holding weight files (:data:`WEIGHT_FILES`) is remembered,
    in one process (not under ``torchrun``), with no weights on the ``meta`` device, unless
    ``$HOGWILD_PROOF_CACHE`` is ``0``. The key is the sha256 of: the record format, hogwild_ref's version
    and the (path, size, mtime_ns) of every ``.py`` file of it, the torch, transformers and Python
    versions, the model class, its config (``to_json_string``) and attention implementation, the
    parameters' dtypes and devices (and GPU names), the backend, the folder and each weight file's
    name, size and mtime_ns, a sample of the weights as they are in memory, and the rotary modules'
    inverse frequencies and attention scaling.
    """
    if os.environ.get(PROOF_CACHE_ENV, "").strip() == "0" or world_size() > 1:
        return None
    source = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    if not isinstance(source, (str, os.PathLike)) or not str(source) or not Path(source).is_dir():
        return None
    directory = Path(source).resolve()
    weights = file_stamps(directory, WEIGHT_FILES)
    params = list(model.parameters())
    devices = sorted({p.device for p in params}, key=str)
    if not weights or not params or any(d.type == "meta" for d in devices):
        return None
    import transformers

    gpus = [torch.cuda.get_device_name(d) for d in devices if d.type == "cuda"]
    return digest({
        "format": RECORD_FORMAT,
        "hogwild_ref": [package_version(), source_stamp()],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "config": model.config.to_json_string(use_diff=False),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "dtypes": sorted({str(p.dtype) for p in params}),
        "devices": [[str(d) for d in devices], gpus],
        "backend": backend,
        "weights": [str(directory), weights],
        "sample": _weights_sample(params),
        "rotary": _rotary_state(model),
    })


def _record_path(key: str) -> Path:
    return cache_root() / "proofs" / f"{key}.json"


def _recorded_errors(key: str, mt: str, convention: str, names: list[str], tol: float) -> dict[str, float] | None:
    """The errors a passed proof recorded under ``key``; None (prove again) when the record is missing,
    unreadable, for another key, model type or pairing, lacks a backend or records an error above ``tol``."""
    record = read_record(_record_path(key))
    if record is None or record.get("key") != key or record.get("model_type") != mt:
        return None
    if record.get("convention") != convention or not isinstance(record.get("errors"), dict):
        return None
    try:
        errors = {name: float(record["errors"][name]) for name in names}
    except (KeyError, TypeError, ValueError):
        return None
    return errors if all(math.isfinite(e) and 0.0 <= e <= tol for e in errors.values()) else None


def _remember(key: str, proof: Proof) -> None:
    """Write a passed proof's record (atomically); a cache that cannot be written is reported once per process."""
    import transformers

    record = {
        "key": key,
        "model_type": proof.model_type,
        "convention": proof.probe.convention,
        "errors": proof.errors,
        "tolerance": proof.tolerance,
        "seconds": round(proof.seconds, 3),
        "versions": {"hogwild_ref": package_version(), "torch": torch.__version__, "transformers": transformers.__version__},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = _record_path(key)
    if not write_record(path, record) and not _WARNED:
        _WARNED.append(True)
        warnings.warn(f"could not remember the compatibility proof in {path.parent}; the next start proves the "
                      f"model again (set HOGWILD_CACHE_DIR to a writable folder, or {PROOF_CACHE_ENV}=0)", stacklevel=3)


def ensure_compatible(model: Any, *, allow_untested: bool = False, backend: str = "rotate_queries") -> RopeSpec:
    """Prove, once per model object, dtype, device and backend, that Hogwild runs ``model`` exactly (Spec §11.6);
    again after its config, its modules or its rotary buffers changed.

    Order of the checks (the first failing one is reported): the config's RoPE
    (:func:`~hogwild_ref.models.check_supported`: no RoPE, dynamic NTK, ...); the RoPE probe
    (pairing, rotated channels, attention features); the tested-family list, unless
    ``allow_untested`` (or an earlier proof of this model object allowed it); the numeric proof of
    the oracle and ``backend`` against the model's own forward. The numeric proof is skipped when an
    earlier process left a passed proof's record under this model's :func:`record_key` (Spec §11.6,
    "Remembered proofs"); a proof that passes here is recorded.

    Returns:
        the :class:`RopeSpec` to run the model with.

    Raises:
        UnsupportedModelError: naming the reason; a :class:`CompatibilityError` with the measured error when the numeric proof fails.
    """
    proofs = _PROOFS.setdefault(model, {})
    state = _model_state(model)  # proofs are keyed (backend, state)
    if (backend, state) in proofs:
        return proofs[(backend, state)].rope
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
    names = list(dict.fromkeys(("oracle", backend)))
    errors = {name: done.errors[name] for name in names if (done := proofs.get((name, state)))}
    stored = record_key(model, backend) if len(errors) < len(names) else None
    recorded = _recorded_errors(stored, mt, probe.convention, names, tol) if stored else None
    for name in names:
        if name not in errors:
            errors[name] = recorded[name] if recorded else _prove_or_refuse(model, rope, name, mt)
    bad = {k: v for k, v in errors.items() if not v <= tol}
    if bad:
        worst = ", ".join(f"{k} {v:.2e}" for k, v in bad.items())
        raise CompatibilityError(
            f"{mt}: the compatibility proof failed: on a short random input with one worker the engine's logits "
            f"differ from the model's own forward by {worst} (relative; tolerance {tol:.0e} for {dtype}). "
            "The model does something in attention that hogwild_ref does not reproduce; it cannot run exactly"
        )
    proof = Proof(mt, rope, probe, errors, tol, tested, time.perf_counter() - t0, reused=recorded is not None)
    if stored and recorded is None:
        _remember(stored, proof)
    for old in [k for k in proofs if k[1] != state]:  # proofs of the model before it changed
        del proofs[old]
    for name in errors:
        proofs.setdefault((name, state), proof)
    return rope
