"""Conformance vectors of the ``model`` level: prefill, ticks and flushes of a tiny model (Spec §4.4, §5, §12.2).

Each case of :data:`MODEL_CASES` is a tiny transformers model with fixed weights, a segment table and a
teacher-forced trace of ticks and flushes; the expected logits are the engine oracle's (Spec §11.4),
run in float64 by :class:`~.reference.ReferenceAdapter` (``backend="oracle"``). ``prefill=given``
vectors also carry the static segments' K/V as the Spec §4.4 prefill computes them (Spec §12.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from ..rope import RopeSpec
from ..segments import SegmentTable, make_layout, prompt_segment
from .vectors import (
    SPEC_VERSION,
    Vector,
    YARN,
    config_dict,
    generator_versions,
    official_combined_table,
    private_scratch_table,
    rope_data,
)

__all__ = ["MODEL_CASES", "MODEL_TOLERANCE", "TOKEN_MARGIN", "model_vectors", "spec_heads"]

#: tolerance on the relative error of the logits (Spec §10.1 measure)
MODEL_TOLERANCE = 1e-4
#: a greedy token is marked exact when its logit beats the runner-up by this fraction of max|logits|
TOKEN_MARGIN = 1e-3

#: per tick: (new-token counts of workers 0, 1, 2; workers whose step ends at that tick, flushed in order)
_TRACE = (
    ((1, 1, 1), ()),
    ((1, 3, 1), ()),
    ((2, 0, 1), ()),
    ((1, 1, 1), (0,)),
    ((4, 1, 0), (1,)),  # worker 0 feeds closing token + next step prefix; worker 2 idle
    ((1, 3, 2), (0, 2)),  # two steps end at one tick: ascending worker order (Spec §5.2)
    ((3, 1, 2), ()),
    ((1, 0, 1), (2,)),
    ((1, 2, 3), (0, 1)),
    ((1, 1, 0), ()),
)


@dataclass(frozen=True)
class _ModelCase:
    name: str
    description: str
    family: str
    layout: str | None
    workers: int
    overrides: Mapping[str, Any]
    table: Callable[[], dict[str, Any]] | None = None  # explicit views (Spec §4.5) instead of a preset
    given_kv: bool = False  # the vector carries its static segments' K/V (Spec §12.2): no prefill needed
    extra: tuple[str, ...] = ()


MODEL_CASES: tuple[_ModelCase, ...] = (
    _ModelCase("llama-interleaved-w2", "tiny Llama, interleaved layout, two workers", "llama", "interleaved", 2, {}),
    _ModelCase("llama-combined-w3", "tiny Llama, combined layout, three workers", "llama", "combined", 3, {}),
    _ModelCase("llama-contiguous-w3", "tiny Llama, contiguous layout, three workers (no flushes)", "llama",
               "contiguous", 3, {}),
    _ModelCase("phi3-combined-w2", "tiny Phi-3 (partial rotary), combined layout, two workers", "phi3", "combined", 2,
               {"bos_token_id": 1, "eos_token_id": 2}),
    _ModelCase("llama-yarn-interleaved-w3", "tiny Llama with YaRN RoPE (attention_scaling != 1), interleaved layout, "
               "three workers", "llama", "interleaved", 3, {"rope_parameters": dict(YARN), "max_position_embeddings": 8192}),
    _ModelCase("llama-official5-w2", "tiny Llama, the official code's five-block combined layout (explicit table "
               "[common, others_header, other's step, own_header, own step], no separators), two workers",
               "llama", None, 2, {}, table=lambda: official_combined_table(2), extra=("table=official-combined",)),
    _ModelCase("llama-official5-w2-given-kv", "tiny Llama, the official five-block layout with the static segments' "
               "K/V given (any prefill design can run it), two workers", "llama", None, 2, {},
               table=lambda: official_combined_table(2), given_kv=True, extra=("table=official-combined",)),
    _ModelCase("llama-scratch-w2", "tiny Llama, private scratch layout (explicit table [common, other's step, "
               "scratch_w, own step]), two workers", "llama", None, 2, {}, table=lambda: private_scratch_table(2),
               extra=("table=private-scratch",)),
    # version 3: what an implementation limited to the official layout can run with YaRN and flushes
    _ModelCase("llama-yarn-official5-w2-given-kv", "tiny Llama with YaRN RoPE (attention_scaling != 1), the official "
               "five-block layout, static K/V given, flushes, two workers (one layer, a narrow MLP: a small file)",
               "llama", None, 2,
               {"rope_parameters": dict(YARN), "max_position_embeddings": 8192, "num_hidden_layers": 1,
                "intermediate_size": 32},
               table=lambda: official_combined_table(2), given_kv=True, extra=("table=official-combined",)),
)


def _model_table(case: _ModelCase) -> SegmentTable:
    if case.table is not None:
        return SegmentTable.from_dict(case.table())
    assert case.layout is not None
    return make_layout(case.layout, case.workers)


def _model_trace(tab: SegmentTable, vocab: int, seed: int) -> tuple[dict[str, list[int]], list[dict[str, Any]]]:
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=g).tolist()

    first = prompt_segment(tab)
    static = {first: ids(12)}
    sizes = {"others_header": 4, "own_header": 3}
    for seg in tab.segments:  # every other static segment in table order (2 tokens unless named above)
        if seg.writer is None and seg.id != first:
            static[seg.id] = ids(sizes.get(seg.id, 2))
    ticks = []
    for counts, flushes in _TRACE:
        feeds = [ids(c) for c in counts[: tab.workers]]
        flush = [w for w in flushes if w < tab.workers] if tab.history is not None else []
        ticks.append({"feeds": feeds, "flush": flush})
    return static, ticks


def _model_vector(case: _ModelCase, seed: int) -> Vector:
    from ..models import tiny_model
    from .reference import ReferenceAdapter

    model = tiny_model(case.family, seed=seed, **dict(case.overrides))
    config = config_dict(model.config)
    weights = {k: v.detach().to(torch.float32).clone() for k, v in model.state_dict().items()}
    vocab = int(model.config.vocab_size)
    tab = _model_table(case)
    table_dict = tab.to_dict() if case.table is not None else None
    static, ticks = _model_trace(tab, vocab, seed + 1)
    spec = RopeSpec.from_config(model.config)
    rope = rope_data(spec)
    # the engine oracle (Spec §11.4), run in float64
    engine_oracle = ReferenceAdapter(backend="oracle", dtype=torch.float64)
    static_keys: dict[str, Tensor] | None = None
    static_values: dict[str, Tensor] | None = None
    if case.given_kv:
        # the static segments' K/V as the Spec §4.4 prefill computes them (float64 oracle), in the stored form of
        # Spec §2.1, rounded to float32; the expected logits are computed from exactly these rounded K/V
        kv = engine_oracle.prefill_kv(config=config, weights=weights, rope=rope, layout=case.layout,
                                      workers=case.workers, table=table_dict, static=static)
        static_keys = {sid: k.float() for sid, (k, _) in kv.items()}
        static_values = {sid: v.float() for sid, (_, v) in kv.items()}
    logits = engine_oracle.model(config=config, weights=weights, rope=rope, layout=case.layout, workers=case.workers,
                                 table=table_dict, static=static, static_keys=static_keys, static_values=static_values,
                                 ticks=ticks)
    T, W = logits.shape[:2]
    fed = torch.tensor([[len(f) > 0 for f in t["feeds"]] for t in ticks])
    top2 = logits.topk(2, dim=-1).values
    margin = (top2[..., 0] - top2[..., 1]) > TOKEN_MARGIN * float(logits[fed].abs().max())
    tokens = torch.where(fed & margin, logits.argmax(-1), torch.full((T, W), -1, dtype=torch.long))
    features = [f"family={model.config.model_type}", f"layout={case.layout or 'explicit'}", f"W={case.workers}",
                "zero-token row", "multi-token row", f"rope_type={spec.rope_type}",
                "prefill=given" if case.given_kv else "prefill=spec"]
    if any(t["flush"] for t in ticks):
        features.append("flush")
    if any(len(t["flush"]) > 1 for t in ticks):
        features.append("two flushes after one tick")
    if spec.rotary_dim < spec.head_dim:
        features.append("partial rotary")
    if spec.attention_scaling != 1.0:
        features.append("attention_scaling != 1")
    features += list(case.extra)
    tensors = {f"input/weights/{k}": v for k, v in weights.items()}
    desc = {f"input/weights/{k}": f"{tuple(v.shape)} float32: parameter {k}" for k, v in weights.items()}
    hkv, D = spec_heads(model.config)
    layers = int(model.config.num_hidden_layers)
    for sid in (static_keys or {}):
        assert static_keys is not None and static_values is not None
        L = static_keys[sid].shape[2]
        tensors[f"input/static_keys/{sid}"] = static_keys[sid]
        tensors[f"input/static_values/{sid}"] = static_values[sid]
        desc[f"input/static_keys/{sid}"] = (f"({layers}, {hkv}, {L}, {D}) float32: per layer, the stored keys of static "
                                            f"segment {sid} (Spec §2.1 form) as the Spec §4.4 prefill computes them")
        desc[f"input/static_values/{sid}"] = f"({layers}, {hkv}, {L}, {D}) float32: per layer, the values of {sid}"
    tensors["expected/logits"] = logits.float()
    tensors["expected/tokens"] = tokens
    desc["expected/logits"] = (f"({T}, {W}, {vocab}) float32: logits of each worker's last fed token per tick "
                               "(rows of workers that fed nothing are not compared)")
    desc["expected/tokens"] = (f"({T}, {W}) int64: greedy token (argmax) per tick and worker where it is decisive, "
                               "else -1; marked tokens must match exactly")
    prefill = (
        "Load the given static K/V (input/static_keys, input/static_values) instead of prefilling (Spec §12.2)"
        if case.given_kv else "Prefill the static segments as Spec §4.4 says (each in the context of the prompt segment)"
    )
    meta = {
        "name": case.name,
        "level": "model",
        "version": SPEC_VERSION,
        "generator": generator_versions(),
        "description": (
            f"{case.description}. {prefill}, then run the ticks with the given "
            "feeds (teacher forcing: zero-token workers write nothing, Spec §3.4; multi-token feeds are causal) and "
            "flush the listed workers after each tick, in order (Spec §5). Expected: the engine oracle's "
            "(Spec §11.4) last-slot logits per worker per tick, computed in float64."
        ),
        "tolerance": MODEL_TOLERANCE,
        "measure": (
            "max|logits - expected| / max|expected| over the (tick, worker) rows that fed tokens (Spec §10.1 "
            "measure); additionally the argmax must equal every expected token that is not -1"
        ),
        "dtype": "float32",
        "features": features,
        "config": config,
        "inputs": {"layout": case.layout, "workers": case.workers, "table": table_dict, "rope": rope,
                   "static": static, "prefill": "given" if case.given_kv else "spec", "ticks": ticks},
        "tensors": desc,
    }
    return Vector(meta, tensors)


def spec_heads(config: Any) -> tuple[int, int]:
    """``(Hkv, D)`` of a transformers config."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads), int(head_dim)


def model_vectors() -> list[Vector]:
    """The ``model`` vectors: one per case of :data:`MODEL_CASES` (Spec §12.2)."""
    return [_model_vector(case, seed=3000 + 10 * i) for i, case in enumerate(MODEL_CASES)]

