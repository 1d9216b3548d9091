"""Conformance vectors of the ``attention`` level: one tick of one layer (Spec §3, §9, §12.2).

Each case of :data:`ATTENTION_CASES` builds a segment table (a preset of Spec §4 or explicit views of
Spec §4.5), random pre-RoPE queries, keys and values rounded to the vector's dtype, and the expected
output of the dense float64 attention oracle of Spec §9.1 together with the write segments' stored
keys and values after the tick (Spec §2.1, §3.2). Tolerances by dtype are Spec §10.2's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from ..attention import TOLERANCES, oracle
from ..plan import plan_tick
from ..rope import Convention, RopeSpec
from ..segments import SegmentTable, make_layout
from .vectors import (
    SPEC_VERSION,
    Vector,
    YARN,
    config_dict,
    dtype_name,
    generator_versions,
    llama_config,
    official_combined_table,
    phi3_config,
    private_scratch_table,
    rope_data,
    rounded_randn,
    stablelm_yarn_partial_config,
)

__all__ = ["ATTENTION_CASES", "ATTENTION_CONFIGS", "AttentionCase", "attention_vector", "attention_vectors"]

MEASURE_RELATIVE = "max|out - expected| / max|expected| per output (Spec §10.1); the vector's error is the worst output"

#: RoPE/head configurations of the ``attention`` level (heads: Hq / Hkv; D = 16 unless noted)
ATTENTION_CONFIGS: dict[str, Callable[[], Any]] = {
    "llama-gqa": lambda: llama_config({"rope_type": "default", "rope_theta": 10000.0}),
    "llama-mqa": lambda: llama_config({"rope_type": "default", "rope_theta": 10000.0}, kv=1),
    "llama-mha": lambda: llama_config({"rope_type": "default", "rope_theta": 10000.0}, hidden=32, heads=2, kv=2),
    "llama-yarn-gqa": lambda: llama_config(dict(YARN)),
    "stablelm-yarn-partial": stablelm_yarn_partial_config,  # D = 12, 6 rotary channels, A = 1 + 0.1 ln 4
    "phi3-partial": lambda: phi3_config(),  # D = 16, 8 rotary channels
}


@dataclass(frozen=True)
class AttentionCase:
    name: str
    description: str
    config: str
    new_tokens: tuple[int, ...]
    layout: str | None = None
    workers: int = 0
    lengths: Mapping[str, int] | None = None
    table: Mapping[str, Any] | None = None
    convention: Convention = "half"
    dtype: torch.dtype = torch.float32
    scaling: float | None = None
    extra: tuple[str, ...] = ()
    heads: tuple[int, int] | None = None  # (Hq, Hkv) instead of the config's (fuzzing, Spec §12.2)


def _combined_lengths(common: int, others_header: int, sep: int, own_header: int, cur: Sequence[int]) -> dict[str, int]:
    lengths = {"common": common, "others_header": others_header, "own_header": own_header}
    for j, c in enumerate(cur):
        lengths[f"cur_{j}"] = c
        lengths[f"sep_{j}"] = sep
    return lengths


def _explicit_scratch_table() -> dict[str, Any]:
    """Three workers; each sees the others' steps in its own (non-ascending) order, then a private scratch segment."""
    segments = [{"id": "common", "length": 10, "writer": None}]
    segments += [{"id": f"scratch_{w}", "length": n, "writer": None} for w, n in enumerate((2, 3, 1))]
    segments += [{"id": "unused", "length": 4, "writer": None}]
    segments += [{"id": f"cur_{w}", "length": n, "writer": w} for w, n in enumerate((3, 5, 2))]
    views = [
        ["common", "cur_2", "cur_1", "scratch_0", "cur_0"],
        ["common", "cur_0", "cur_2", "scratch_1", "cur_1"],
        ["common", "cur_1", "cur_0", "scratch_2", "cur_2"],
    ]
    return {"version": 1, "layout": None, "history": "common", "segments": segments, "views": views}


def _explicit_no_history_table() -> dict[str, Any]:
    """Two workers, no history; the static segments appear in different orders in the two views."""
    segments = [
        {"id": "out_1", "length": 4, "writer": 1},
        {"id": "system", "length": 5, "writer": None},
        {"id": "notes", "length": 3, "writer": None},
        {"id": "out_0", "length": 2, "writer": 0},
    ]
    views = [["system", "out_1", "notes", "out_0"], ["notes", "system", "out_0", "out_1"]]
    return {"version": 1, "layout": None, "history": None, "segments": segments, "views": views}



ATTENTION_CASES: tuple[AttentionCase, ...] = (
    AttentionCase("contiguous-w1", "contiguous, one worker feeding one token", "llama-gqa", (1,),
                   layout="contiguous", workers=1, lengths={"prompt": 6, "out_0": 3}),
    AttentionCase("contiguous-w1-multi", "contiguous, one worker feeding four tokens (causal inside its own segment)",
                   "llama-gqa", (4,), layout="contiguous", workers=1, lengths={"prompt": 5, "out_0": 2}),
    AttentionCase("contiguous-w2-mha", "contiguous, two workers, one token each, MHA", "llama-mha", (1, 1),
                   layout="contiguous", workers=2, lengths={"prompt": 7, "out_0": 4, "out_1": 2}),
    AttentionCase("contiguous-w3-gqa", "contiguous, three workers with uneven feeds (2, 0, 1), GQA", "llama-gqa", (2, 0, 1),
                   layout="contiguous", workers=3, lengths={"prompt": 8, "out_0": 5, "out_1": 3, "out_2": 6}),
    AttentionCase("contiguous-w4-mqa", "contiguous, four workers (1, 3, 0, 2), an empty idle segment, MQA",
                   "llama-mqa", (1, 3, 0, 2), layout="contiguous", workers=4,
                   lengths={"prompt": 6, "out_0": 3, "out_1": 5, "out_2": 0, "out_3": 2}),
    AttentionCase("interleaved-w1-empty", "interleaved, one worker feeding three tokens into an empty segment",
                   "llama-gqa", (3,), layout="interleaved", workers=1, lengths={"common": 9, "cur_0": 0}),
    AttentionCase("interleaved-w2", "interleaved, two workers, one token each", "llama-gqa", (1, 1),
                   layout="interleaved", workers=2, lengths={"common": 10, "cur_0": 4, "cur_1": 2}),
    AttentionCase("interleaved-w3-gqa", "interleaved, three workers (0, 2, 1), one empty segment", "llama-gqa", (0, 2, 1),
                   layout="interleaved", workers=3, lengths={"common": 8, "cur_0": 3, "cur_1": 0, "cur_2": 5}),
    AttentionCase("interleaved-w4-yarn", "interleaved, four workers, YaRN (attention_scaling != 1)", "llama-yarn-gqa",
                   (1, 1, 1, 1), layout="interleaved", workers=4,
                   lengths={"common": 12, "cur_0": 2, "cur_1": 3, "cur_2": 1, "cur_3": 4}),
    AttentionCase("interleaved-w2-long-partial", "interleaved, two workers after a 1024-token history, partial rotary",
                   "phi3-partial", (1, 2), layout="interleaved", workers=2,
                   lengths={"common": 1024, "cur_0": 7, "cur_1": 3}),
    AttentionCase("combined-w1", "combined, one worker feeding two tokens; the headers sit between history and step",
                   "llama-gqa", (2,), layout="combined", workers=1, lengths=_combined_lengths(10, 4, 2, 3, (2,))),
    AttentionCase("combined-w2-example", "combined, two workers, the example of Spec §3.5 (one token each)",
                   "llama-gqa", (1, 1), layout="combined", workers=2, lengths=_combined_lengths(100, 8, 3, 7, (5, 9))),
    AttentionCase("combined-w2-example-uneven", "combined, the Spec §3.5 example with feeds (4, 0)",
                   "llama-gqa", (4, 0), layout="combined", workers=2, lengths=_combined_lengths(100, 8, 3, 7, (5, 9))),
    AttentionCase("combined-w3-yarn-partial", "combined, three workers (1, 3, 0), YaRN with partial rotary (D = 12)",
                   "stablelm-yarn-partial", (1, 3, 0), layout="combined", workers=3,
                   lengths=_combined_lengths(20, 4, 2, 3, (3, 6, 0))),
    AttentionCase("combined-w3-interleaved-pairs", "combined, three workers (1, 2, 1), GPT-J pairing, partial rotary",
                   "phi3-partial", (1, 2, 1), layout="combined", workers=3, convention="interleaved",
                   lengths=_combined_lengths(14, 3, 2, 4, (4, 1, 6))),
    AttentionCase("combined-w3-bf16", "combined, three workers (1, 1, 2), bfloat16 inputs", "llama-gqa", (1, 1, 2),
                   layout="combined", workers=3, dtype=torch.bfloat16, lengths=_combined_lengths(16, 4, 2, 3, (3, 5, 2))),
    AttentionCase("combined-w4-mqa", "combined, four workers (2, 1, 0, 3), empty segments, MQA, scaling 0.1",
                   "llama-mqa", (2, 1, 0, 3), layout="combined", workers=4, scaling=0.1,
                   lengths=_combined_lengths(16, 4, 2, 3, (5, 0, 2, 7))),
    AttentionCase("explicit-w3-scratch", "explicit views: other workers in per-view orders, private scratch segments, "
                   "a segment in no view", "llama-gqa", (1, 2, 1), table=_explicit_scratch_table()),
    AttentionCase("explicit-w2-no-history", "explicit views without a history; static segments in different orders",
                   "llama-mha", (2, 1), table=_explicit_no_history_table()),
    AttentionCase("official5-w2", "the official code's five-block combined layout [common, others_header, "
                   "other's step, own_header, own step] without separators, feeds (2, 1)", "llama-gqa", (2, 1),
                   table=official_combined_table(2, {"common": 40, "others_header": 6, "own_header": 5,
                                                     "cur_0": 7, "cur_1": 3}),
                   extra=("table=official-combined",)),
    AttentionCase("official5-w2-zero", "the official five-block layout, worker 1 idle (feeds (3, 0)), YaRN",
                   "llama-yarn-gqa", (3, 0),
                   table=official_combined_table(2, {"common": 25, "others_header": 4, "own_header": 6,
                                                     "cur_0": 2, "cur_1": 5}),
                   extra=("table=official-combined",)),
    AttentionCase("scratch-w2", "private scratch layout [common, other's step, scratch_w, own step], feeds (1, 2)",
                   "llama-gqa", (1, 2),
                   table=private_scratch_table(2, {"common": 12, "scratch_0": 4, "scratch_1": 2, "cur_0": 3,
                                                   "cur_1": 0}),
                   extra=("table=private-scratch",)),
    # version 3: partial rotary in the contiguous and five-block layouts, more interleaved (GPT-J) pairs
    AttentionCase("contiguous-w3-partial", "contiguous, three workers (1, 2, 0), partial rotary (8 of 16 channels)",
                   "phi3-partial", (1, 2, 0), layout="contiguous", workers=3,
                   lengths={"prompt": 9, "out_0": 4, "out_1": 2, "out_2": 5}),
    AttentionCase("official5-w2-yarn-partial", "the official five-block layout, YaRN with partial rotary (D = 12), "
                   "feeds (2, 1)", "stablelm-yarn-partial", (2, 1),
                   table=official_combined_table(2, {"common": 30, "others_header": 4, "own_header": 5,
                                                     "cur_0": 6, "cur_1": 2}),
                   extra=("table=official-combined",)),
    AttentionCase("interleaved-w2-yarn-interleaved-pairs", "interleaved, two workers (1, 2), GPT-J pairing, YaRN",
                   "llama-yarn-gqa", (1, 2), layout="interleaved", workers=2, convention="interleaved",
                   lengths={"common": 11, "cur_0": 3, "cur_1": 4}),
    AttentionCase("official5-w2-interleaved-pairs", "the official five-block layout, GPT-J pairing, partial rotary, "
                   "feeds (1, 3)", "phi3-partial", (1, 3), convention="interleaved",
                   table=official_combined_table(2, {"common": 18, "others_header": 3, "own_header": 4,
                                                     "cur_0": 5, "cur_1": 1}),
                   extra=("table=official-combined",)),
)


def _attention_features(spec: RopeSpec, tab: SegmentTable, new_tokens: Sequence[int], hq: int, hkv: int,
                        dtype: torch.dtype, convention: str) -> list[str]:
    feats = [f"layout={tab.layout or 'explicit'}", f"W={tab.workers}"]
    feats.append("MQA" if hkv == 1 else ("MHA" if hq == hkv else "GQA"))
    if any(n == 0 for n in new_tokens):
        feats.append("zero-token row")
    if any(n >= 2 for n in new_tokens):
        feats.append("multi-token row")
    if len(set(new_tokens)) > 1:
        feats.append("uneven feeds")
    if any(s.length == 0 for s in tab.segments):
        feats.append("empty segment")
    if spec.rotary_dim < spec.head_dim:
        feats.append("partial rotary")
    if spec.attention_scaling != 1.0:
        feats.append("attention_scaling != 1")
    feats += [f"convention={convention}", f"dtype={dtype_name(dtype)}"]
    return feats


def attention_vector(case: AttentionCase, seed: int,
                     configs: Mapping[str, Callable[[], Any]] = ATTENTION_CONFIGS) -> Vector:
    """The ``attention`` vector of one case, tensors drawn from ``seed`` (Spec §12.2)."""
    config = configs[case.config]()
    if case.heads is not None:  # same head dimension, other head counts (the config stays consistent)
        head_dim = int(config.hidden_size) // int(config.num_attention_heads)
        config.num_attention_heads, config.num_key_value_heads = case.heads
        config.hidden_size = head_dim * case.heads[0]
    spec = RopeSpec.from_config(config, convention=case.convention)
    hq, hkv, D = int(config.num_attention_heads), int(config.num_key_value_heads), spec.head_dim
    if case.table is not None:
        tab = SegmentTable.from_dict(case.table)
    else:
        assert case.layout is not None and case.lengths is not None
        tab = make_layout(case.layout, case.workers).with_lengths(dict(case.lengths))
    W, counts = tab.workers, list(case.new_tokens)
    lengths = {s.id: s.length for s in tab.segments}
    plan = plan_tick(tab, tab.rows(counts), spec)
    n = plan.n
    scaling = case.scaling if case.scaling is not None else D**-0.5
    rnd = rounded_randn(torch.Generator().manual_seed(seed), case.dtype)

    # pre-RoPE vectors (rounded to the vector's dtype); old tokens, then this tick's new tokens
    old_k = {sid: rnd(hkv, L, D) for sid, L in lengths.items()}
    old_v = {sid: rnd(hkv, L, D) for sid, L in lengths.items()}
    q_pre, k_pre, v_pre = rnd(W, hq, n, D), rnd(W, hkv, n, D), rnd(W, hkv, n, D)
    full_k, full_v = dict(old_k), dict(old_v)
    for w, c in enumerate(counts):
        sid = tab.write_segment(w)
        full_k[sid] = torch.cat([full_k[sid], k_pre[w, :, :c]], dim=1)
        full_v[sid] = torch.cat([full_v[sid], v_pre[w, :, :c]], dim=1)

    # the oracle (Spec §9.1) from position-0 inputs, in float64
    ids = plan.segment_ids
    out = oracle(spec.rotate(q_pre, 0), [spec.rotate(full_k[s], 0) for s in ids], [full_v[s] for s in ids],
                 plan, spec, scaling)

    def stored(k: Tensor) -> Tensor:  # the stored form of Spec §2.1: A R(t) k at local positions
        return spec.rotate(k, torch.arange(k.shape[1]))

    dt = dtype_name(case.dtype)
    tensors: dict[str, Tensor] = {
        "input/q": q_pre.to(case.dtype), "input/k": k_pre.to(case.dtype), "input/v": v_pre.to(case.dtype),
    }
    desc: dict[str, str] = {
        "input/q": f"({W}, {hq}, {n}, {D}) {dt}: the new tokens' queries before RoPE; slot i of row w is real iff i < new_tokens[w]",
        "input/k": f"({W}, {hkv}, {n}, {D}) {dt}: the new tokens' keys before RoPE",
        "input/v": f"({W}, {hkv}, {n}, {D}) {dt}: the new tokens' values",
        "expected/out": f"({W}, {hq}, {n}, {D}) float32: attention output (only real query slots are compared)",
    }
    for sid, L in lengths.items():
        tensors[f"input/keys/{sid}"] = stored(old_k[sid]).to(case.dtype)
        tensors[f"input/values/{sid}"] = old_v[sid].to(case.dtype)
        desc[f"input/keys/{sid}"] = f"({hkv}, {L}, {D}) {dt}: stored keys of {sid} before the tick (Spec §2.1)"
        desc[f"input/values/{sid}"] = f"({hkv}, {L}, {D}) {dt}: stored values of {sid} before the tick"
    tensors["expected/out"] = out.float()
    for w in range(W):
        sid = tab.write_segment(w)
        L = full_k[sid].shape[1]
        tensors[f"expected/keys/{sid}"] = stored(full_k[sid]).float()
        tensors[f"expected/values/{sid}"] = full_v[sid].float()
        desc[f"expected/keys/{sid}"] = f"({hkv}, {L}, {D}) float32: stored keys of worker {w}'s write segment after the tick"
        desc[f"expected/values/{sid}"] = f"({hkv}, {L}, {D}) float32: stored values of worker {w}'s write segment after the tick"

    meta = {
        "name": case.name,
        "level": "attention",
        "version": SPEC_VERSION,
        "generator": generator_versions(),
        "description": (
            f"{case.description}. One tick of one attention layer: build the views, place the new tokens "
            "at their view positions (Spec §3.5), rotate q and k there (Spec §8.2), write every row's real "
            "slots at local positions before attending (Spec §3.2, §3.4), attend (Spec §3.3, §9)."
        ),
        "tolerance": TOLERANCES[case.dtype],
        "measure": MEASURE_RELATIVE + "; out over real query slots only",
        "dtype": dt,
        "features": _attention_features(spec, tab, counts, hq, hkv, case.dtype, case.convention) + list(case.extra),
        "inputs": {
            "layout": case.layout if case.table is None else None,
            "workers": W,
            "lengths": lengths,
            "table": tab.to_dict() if case.table is not None else None,
            "new_tokens": counts,
            "rope": rope_data(spec),
            "config": config_dict(config),
            "scaling": scaling,
        },
        "tensors": desc,
    }
    return Vector(meta, tensors)


def attention_vectors() -> list[Vector]:
    """The ``attention`` vectors: one per case of :data:`ATTENTION_CASES` (Spec §12.2)."""
    return [attention_vector(case, seed=2000 + i) for i, case in enumerate(ATTENTION_CASES)]
