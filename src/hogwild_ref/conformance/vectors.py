"""Conformance vectors: the file format and their deterministic generation (Spec §12.2, §12.4).

A vector is a pair of files in ``<vectors dir>/<level>/``:

* ``<name>.json`` — metadata: ``name``, ``level``, ``version`` (format version 2, Spec §1.4),
  ``generator`` (the library versions), ``description``, ``tolerance`` (and, for ``rope``,
  ``tolerance_per_position``, Spec §10.4), ``measure``, ``dtype``, ``features``, ``inputs`` (the
  non-tensor keyword arguments of the adapter method, among them the version-independent RoPE data
  ``rope``), ``tensors`` (what every tensor of the safetensors file is), and for the ``model`` level
  ``config`` (the model's transformers config dict);
* ``<name>.safetensors`` — tensors named ``input/...`` (given to the adapter) and ``expected/...``
  (never given to it).

:func:`generate_vectors` rebuilds every vector from fixed seeds with the reference's oracles: float64
rotations (``rope``), the dense float64 attention oracle of Spec §9.1 (``attention``) and the engine
oracle of Spec §11.4 run in float64 (``model``; with given static K/V for ``prefill=given`` vectors).
Expected values are stored in float32, JSON with a fixed key order and indentation, safetensors with
sorted tensor names and no metadata, so that regeneration reproduces the checked-in files byte for
byte.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from ..attention import TOLERANCES, oracle
from ..masks import plan_tick
from ..rope import RopeSpec
from ..segments import SegmentTable, make_layout, prompt_segment
from .protocol import LEVELS

__all__ = [
    "FORMAT",
    "SPEC_VERSION",
    "Vector",
    "generator_versions",
    "official_combined_table",
    "private_scratch_table",
    "prompt_segment",
    "rope_data",
    "generate_vectors",
    "dumps_json",
    "load_vector",
    "vector_names",
    "write_vector",
]

#: version of the vector format / specification the vectors are generated for (Spec §1.4, §12.2)
SPEC_VERSION = 2
#: directory name of this vector set under ``spec/vectors/``
FORMAT = "v2"

#: tolerances on the relative error of Spec §10.1 (attention: §10.2 by dtype; rope: §8.5 / §10.4,
#: per row ``ROPE_TOLERANCE + ROPE_TOLERANCE_PER_POSITION * (|p| + 1)``)
ROPE_TOLERANCE = 1e-6
ROPE_TOLERANCE_PER_POSITION = 2.0**-23
MODEL_TOLERANCE = 1e-4
#: a greedy token is marked exact when its logit beats the runner-up by this fraction of max|logits|
TOKEN_MARGIN = 1e-3

MEASURE_RELATIVE = "max|out - expected| / max|expected| per output (Spec §10.1); the vector's error is the worst output"
MEASURE_ROPE = (
    "per output and per row i: max_j |out[i, j] - expected[i, j]| / max|expected| (Spec §10.1), at most "
    "tolerance + tolerance_per_position * (|p_i| + 1) with p_i = positions[i] (rotated) or deltas[i] (rerotated) "
    "(Spec §10.4)"
)


@dataclass
class Vector:
    """One conformance vector: JSON metadata and named tensors (inputs and expected outputs)."""

    meta: dict[str, Any]
    tensors: dict[str, Tensor]

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def level(self) -> str:
        return str(self.meta["level"])

    def inputs(self, prefix: str) -> dict[str, Tensor]:
        """Tensors named ``input/<prefix>/<key>``, as ``{key: tensor}``."""
        head = f"input/{prefix}/"
        return {k[len(head):]: t for k, t in self.tensors.items() if k.startswith(head)}

    def expected(self, prefix: str) -> dict[str, Tensor]:
        """Tensors named ``expected/<prefix>/<key>``, as ``{key: tensor}``."""
        head = f"expected/{prefix}/"
        return {k[len(head):]: t for k, t in self.tensors.items() if k.startswith(head)}


# ---------------------------------------------------------------------- files
def write_vector(directory: Path, vector: Vector) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.safetensors`` into ``directory`` (deterministic bytes)."""
    from safetensors.torch import save

    directory.mkdir(parents=True, exist_ok=True)
    meta = dict(vector.meta)
    meta["tensors"] = {k: meta["tensors"][k] for k in sorted(meta["tensors"])}
    missing = set(vector.tensors) ^ set(meta["tensors"])
    if missing:
        raise ValueError(f"vector {vector.name}: tensors and their descriptions differ: {sorted(missing)}")
    jpath, tpath = directory / f"{vector.name}.json", directory / f"{vector.name}.safetensors"
    jpath.write_text(dumps_json(meta) + "\n", encoding="utf-8")
    tensors = {k: vector.tensors[k].detach().cpu().contiguous() for k in sorted(vector.tensors)}
    tpath.write_bytes(save(tensors))
    return jpath, tpath


def dumps_json(value: Any, indent: int = 0) -> str:
    """JSON with two-space indentation, except that lists without objects stay on one line."""
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {dumps_json(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        return "[\n" + ",\n".join(inner + dumps_json(v, indent + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def load_vector(json_path: Path | str) -> Vector:
    """Read a vector from its JSON file and the safetensors file next to it."""
    from safetensors.torch import load

    jpath = Path(json_path)
    meta = json.loads(jpath.read_text(encoding="utf-8"))
    tpath = jpath.with_suffix(".safetensors")
    if not tpath.is_file():
        raise FileNotFoundError(f"{tpath} is missing (every vector is a .json + .safetensors pair)")
    return Vector(meta, dict(load(tpath.read_bytes())))


def vector_names(directory: Path | str, level: str) -> list[Path]:
    """The JSON files of one level in a vector directory, sorted by name."""
    return sorted((Path(directory) / level).glob("*.json"))


# ---------------------------------------------------------------------- helpers
def _config_dict(config: Any) -> dict[str, Any]:
    """A config as the JSON-ready dict stored in vectors (``to_dict()`` minus the library version)."""
    data = config.to_dict()
    data.pop("transformers_version", None)
    return json.loads(json.dumps(data))  # plain JSON types (e.g. int dict keys become strings)


def rope_data(spec: RopeSpec) -> dict[str, Any]:
    """The version-independent RoPE of a vector (Spec §12.4, normative): what ``rotate``/``rerotate`` need.

    ``inv_freq`` are the float64 values of transformers' float32 inverse frequencies (JSON floats
    round-trip exactly), so an implementation needs neither transformers nor a config parser.
    """
    return {
        "convention": spec.convention,
        "rope_type": spec.rope_type,
        "head_dim": spec.head_dim,
        "rotary_dim": spec.rotary_dim,
        "attention_scaling": spec.attention_scaling,
        "max_position": spec.max_position,
        "inv_freq": [float(x) for x in spec.inv_freq.tolist()],
    }


def generator_versions() -> dict[str, str]:
    """The library versions a vector was generated with (Spec §12.2); torch without its local build tag."""
    import transformers

    from .. import __version__

    return {
        "hogwild_ref": __version__,
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
    }


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@contextmanager
def _deterministic() -> Iterator[None]:
    """One CPU thread and a private RNG state for the duration (reproducible bytes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(threads)


def _rnd(g: torch.Generator, dtype: torch.dtype) -> Callable[..., Tensor]:
    """Standard normal float64 numbers, rounded to ``dtype`` (so the oracle sees the adapter's inputs)."""

    def draw(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(torch.float64)

    return draw


# ---------------------------------------------------------------------- configs
def _llama(rope_parameters: dict[str, Any], hidden: int = 64, heads: int = 4, kv: int = 2, max_pos: int = 8192) -> Any:
    import transformers

    return transformers.LlamaConfig(
        hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=max_pos,
        rope_parameters=rope_parameters,
    )


def _phi3(rope_parameters: dict[str, Any] | None = None, partial: float = 0.5, max_pos: int = 4096,
          original: int = 4096) -> Any:
    import transformers

    kwargs: dict[str, Any] = dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, partial_rotary_factor=partial,
        max_position_embeddings=max_pos, original_max_position_embeddings=original, pad_token_id=0,
        bos_token_id=1, eos_token_id=2,
    )
    if rope_parameters is not None:
        kwargs["rope_parameters"] = rope_parameters
    return transformers.Phi3Config(**kwargs)


def _stablelm_yarn_partial() -> Any:
    import transformers

    return transformers.StableLmConfig(
        hidden_size=48, num_attention_heads=4, num_key_value_heads=2, partial_rotary_factor=0.5,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                         "original_max_position_embeddings": 2048},
    )


_YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 2048}

#: RoPE configurations of the ``rope`` level: every supported rope type, partial rotary, A != 1
ROPE_CONFIGS: dict[str, Callable[[], Any]] = {
    "default": lambda: _llama({"rope_type": "default", "rope_theta": 10000.0}, max_pos=32768),
    "linear": lambda: _llama({"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}, max_pos=32768),
    "llama3": lambda: _llama({
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 1024,
    }, max_pos=32768),
    "yarn": lambda: _llama(dict(_YARN)),
    "longrope": lambda: _phi3({
        "rope_type": "longrope", "rope_theta": 10000.0, "factor": 4.0,
        "short_factor": [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7],
        "long_factor": [2.0, 2.3, 2.6, 2.9, 3.2, 3.5, 3.8, 4.1],
    }, partial=1.0, max_pos=8192, original=2048),
    "partial": lambda: _phi3(max_pos=32768, original=32768),
    "yarn-partial": _stablelm_yarn_partial,
}

#: RoPE/head configurations of the ``attention`` level (heads: Hq / Hkv; D = 16 unless noted)
ATTENTION_CONFIGS: dict[str, Callable[[], Any]] = {
    "llama-gqa": lambda: _llama({"rope_type": "default", "rope_theta": 10000.0}),
    "llama-mqa": lambda: _llama({"rope_type": "default", "rope_theta": 10000.0}, kv=1),
    "llama-mha": lambda: _llama({"rope_type": "default", "rope_theta": 10000.0}, hidden=32, heads=2, kv=2),
    "llama-yarn-gqa": lambda: _llama(dict(_YARN)),
    "stablelm-yarn-partial": _stablelm_yarn_partial,  # D = 12, 6 rotary channels, A = 1 + 0.1 ln 4
    "phi3-partial": lambda: _phi3(),  # D = 16, 8 rotary channels
}


# ---------------------------------------------------------------------- level: rope
def _rope_vector(case: str, convention: str, seed: int) -> Vector:
    config = ROPE_CONFIGS[case]()
    spec = RopeSpec.from_config(config, convention=convention)  # type: ignore[arg-type]
    limit = spec.max_position or int(config.max_position_embeddings)
    g = torch.Generator().manual_seed(seed)
    fixed_pos = [0, 1, 2, 3, 5, 8, 13, 100, 1000, limit // 2, limit - 2, limit - 1]
    pos = torch.tensor(fixed_pos + torch.randint(0, limit, (36,), generator=g).tolist(), dtype=torch.long)
    fixed_delta = [0, 1, -1, 7, -7, 100, -100, limit - 1, -(limit - 1), 12345 % limit, -(4321 % limit), 2]
    delta = torch.tensor(fixed_delta + torch.randint(-limit + 1, limit, (36,), generator=g).tolist(), dtype=torch.long)
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
        "name": f"{case}-{convention}",
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
        "inputs": {"rope": rope_data(spec), "config": _config_dict(config)},
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


def _rope_vectors() -> list[Vector]:
    out = []
    for i, case in enumerate(ROPE_CONFIGS):
        for j, convention in enumerate(("half", "interleaved")):
            out.append(_rope_vector(case, convention, seed=1000 + 10 * i + j))
    return out


# ---------------------------------------------------------------------- level: attention
@dataclass(frozen=True)
class _AttentionCase:
    name: str
    description: str
    config: str
    new_tokens: tuple[int, ...]
    layout: str | None = None
    workers: int = 0
    lengths: Mapping[str, int] | None = None
    table: Mapping[str, Any] | None = None
    convention: str = "half"
    dtype: torch.dtype = torch.float32
    scaling: float | None = None
    extra: tuple[str, ...] = ()


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


def official_combined_table(workers: int = 2, lengths: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The official code's combined layout: ``[common, others_header, cur_j (j != w), own_header, cur_w]``.

    Five blocks at ``W = 2``; unlike the preset of Spec §4.3 there are no separators.
    """
    lengths = dict(lengths or {})
    segments = [{"id": "common", "length": lengths.get("common", 0), "writer": None},
                {"id": "others_header", "length": lengths.get("others_header", 0), "writer": None}]
    segments += [{"id": f"cur_{w}", "length": lengths.get(f"cur_{w}", 0), "writer": w} for w in range(workers)]
    segments += [{"id": "own_header", "length": lengths.get("own_header", 0), "writer": None}]
    views = [["common", "others_header", *(f"cur_{j}" for j in range(workers) if j != w), "own_header", f"cur_{w}"]
             for w in range(workers)]
    return {"version": 1, "layout": None, "history": "common", "segments": segments, "views": views}


def private_scratch_table(workers: int = 2, lengths: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Each worker sees the others' steps, then a private static scratch segment, then its own step."""
    lengths = dict(lengths or {})
    segments = [{"id": "common", "length": lengths.get("common", 0), "writer": None}]
    segments += [{"id": f"scratch_{w}", "length": lengths.get(f"scratch_{w}", 0), "writer": None} for w in range(workers)]
    segments += [{"id": f"cur_{w}", "length": lengths.get(f"cur_{w}", 0), "writer": w} for w in range(workers)]
    views = [["common", *(f"cur_{j}" for j in range(workers) if j != w), f"scratch_{w}", f"cur_{w}"]
             for w in range(workers)]
    return {"version": 1, "layout": None, "history": "common", "segments": segments, "views": views}


ATTENTION_CASES: tuple[_AttentionCase, ...] = (
    _AttentionCase("contiguous-w1", "contiguous, one worker feeding one token", "llama-gqa", (1,),
                   layout="contiguous", workers=1, lengths={"prompt": 6, "out_0": 3}),
    _AttentionCase("contiguous-w1-multi", "contiguous, one worker feeding four tokens (causal inside its own segment)",
                   "llama-gqa", (4,), layout="contiguous", workers=1, lengths={"prompt": 5, "out_0": 2}),
    _AttentionCase("contiguous-w2-mha", "contiguous, two workers, one token each, MHA", "llama-mha", (1, 1),
                   layout="contiguous", workers=2, lengths={"prompt": 7, "out_0": 4, "out_1": 2}),
    _AttentionCase("contiguous-w3-gqa", "contiguous, three workers with uneven feeds (2, 0, 1), GQA", "llama-gqa", (2, 0, 1),
                   layout="contiguous", workers=3, lengths={"prompt": 8, "out_0": 5, "out_1": 3, "out_2": 6}),
    _AttentionCase("contiguous-w4-mqa", "contiguous, four workers (1, 3, 0, 2), an empty idle segment, MQA",
                   "llama-mqa", (1, 3, 0, 2), layout="contiguous", workers=4,
                   lengths={"prompt": 6, "out_0": 3, "out_1": 5, "out_2": 0, "out_3": 2}),
    _AttentionCase("interleaved-w1-empty", "interleaved, one worker feeding three tokens into an empty segment",
                   "llama-gqa", (3,), layout="interleaved", workers=1, lengths={"common": 9, "cur_0": 0}),
    _AttentionCase("interleaved-w2", "interleaved, two workers, one token each", "llama-gqa", (1, 1),
                   layout="interleaved", workers=2, lengths={"common": 10, "cur_0": 4, "cur_1": 2}),
    _AttentionCase("interleaved-w3-gqa", "interleaved, three workers (0, 2, 1), one empty segment", "llama-gqa", (0, 2, 1),
                   layout="interleaved", workers=3, lengths={"common": 8, "cur_0": 3, "cur_1": 0, "cur_2": 5}),
    _AttentionCase("interleaved-w4-yarn", "interleaved, four workers, YaRN (attention_scaling != 1)", "llama-yarn-gqa",
                   (1, 1, 1, 1), layout="interleaved", workers=4,
                   lengths={"common": 12, "cur_0": 2, "cur_1": 3, "cur_2": 1, "cur_3": 4}),
    _AttentionCase("interleaved-w2-long-partial", "interleaved, two workers after a 1024-token history, partial rotary",
                   "phi3-partial", (1, 2), layout="interleaved", workers=2,
                   lengths={"common": 1024, "cur_0": 7, "cur_1": 3}),
    _AttentionCase("combined-w1", "combined, one worker feeding two tokens; the headers sit between history and step",
                   "llama-gqa", (2,), layout="combined", workers=1, lengths=_combined_lengths(10, 4, 2, 3, (2,))),
    _AttentionCase("combined-w2-example", "combined, two workers, the example of Spec §3.5 (one token each)",
                   "llama-gqa", (1, 1), layout="combined", workers=2, lengths=_combined_lengths(100, 8, 3, 7, (5, 9))),
    _AttentionCase("combined-w2-example-uneven", "combined, the Spec §3.5 example with feeds (4, 0)",
                   "llama-gqa", (4, 0), layout="combined", workers=2, lengths=_combined_lengths(100, 8, 3, 7, (5, 9))),
    _AttentionCase("combined-w3-yarn-partial", "combined, three workers (1, 3, 0), YaRN with partial rotary (D = 12)",
                   "stablelm-yarn-partial", (1, 3, 0), layout="combined", workers=3,
                   lengths=_combined_lengths(20, 4, 2, 3, (3, 6, 0))),
    _AttentionCase("combined-w3-interleaved-pairs", "combined, three workers (1, 2, 1), GPT-J pairing, partial rotary",
                   "phi3-partial", (1, 2, 1), layout="combined", workers=3, convention="interleaved",
                   lengths=_combined_lengths(14, 3, 2, 4, (4, 1, 6))),
    _AttentionCase("combined-w3-bf16", "combined, three workers (1, 1, 2), bfloat16 inputs", "llama-gqa", (1, 1, 2),
                   layout="combined", workers=3, dtype=torch.bfloat16, lengths=_combined_lengths(16, 4, 2, 3, (3, 5, 2))),
    _AttentionCase("combined-w4-mqa", "combined, four workers (2, 1, 0, 3), empty segments, MQA, scaling 0.1",
                   "llama-mqa", (2, 1, 0, 3), layout="combined", workers=4, scaling=0.1,
                   lengths=_combined_lengths(16, 4, 2, 3, (5, 0, 2, 7))),
    _AttentionCase("explicit-w3-scratch", "explicit views: other workers in per-view orders, private scratch segments, "
                   "a segment in no view", "llama-gqa", (1, 2, 1), table=_explicit_scratch_table()),
    _AttentionCase("explicit-w2-no-history", "explicit views without a history; static segments in different orders",
                   "llama-mha", (2, 1), table=_explicit_no_history_table()),
    _AttentionCase("official5-w2", "the official code's five-block combined layout [common, others_header, "
                   "other's step, own_header, own step] without separators, feeds (2, 1)", "llama-gqa", (2, 1),
                   table=official_combined_table(2, {"common": 40, "others_header": 6, "own_header": 5,
                                                     "cur_0": 7, "cur_1": 3}),
                   extra=("table=official-combined",)),
    _AttentionCase("official5-w2-zero", "the official five-block layout, worker 1 idle (feeds (3, 0)), YaRN",
                   "llama-yarn-gqa", (3, 0),
                   table=official_combined_table(2, {"common": 25, "others_header": 4, "own_header": 6,
                                                     "cur_0": 2, "cur_1": 5}),
                   extra=("table=official-combined",)),
    _AttentionCase("scratch-w2", "private scratch layout [common, other's step, scratch_w, own step], feeds (1, 2)",
                   "llama-gqa", (1, 2),
                   table=private_scratch_table(2, {"common": 12, "scratch_0": 4, "scratch_1": 2, "cur_0": 3,
                                                   "cur_1": 0}),
                   extra=("table=private-scratch",)),
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
    feats += [f"convention={convention}", f"dtype={_dtype_name(dtype)}"]
    return feats


def _attention_vector(case: _AttentionCase, seed: int) -> Vector:
    config = ATTENTION_CONFIGS[case.config]()
    spec = RopeSpec.from_config(config, convention=case.convention)  # type: ignore[arg-type]
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
    rnd = _rnd(torch.Generator().manual_seed(seed), case.dtype)

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

    dt = _dtype_name(case.dtype)
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
            "config": _config_dict(config),
            "scaling": scaling,
        },
        "tensors": desc,
    }
    return Vector(meta, tensors)


def _attention_vectors() -> list[Vector]:
    return [_attention_vector(case, seed=2000 + i) for i, case in enumerate(ATTENTION_CASES)]


# ---------------------------------------------------------------------- level: model
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
               "three workers", "llama", "interleaved", 3, {"rope_parameters": dict(_YARN), "max_position_embeddings": 8192}),
    _ModelCase("llama-official5-w2", "tiny Llama, the official code's five-block combined layout (explicit table "
               "[common, others_header, other's step, own_header, own step], no separators), two workers",
               "llama", None, 2, {}, table=lambda: official_combined_table(2), extra=("table=official-combined",)),
    _ModelCase("llama-official5-w2-given-kv", "tiny Llama, the official five-block layout with the static segments' "
               "K/V given (any prefill design can run it), two workers", "llama", None, 2, {},
               table=lambda: official_combined_table(2), given_kv=True, extra=("table=official-combined",)),
    _ModelCase("llama-scratch-w2", "tiny Llama, private scratch layout (explicit table [common, other's step, "
               "scratch_w, own step]), two workers", "llama", None, 2, {}, table=lambda: private_scratch_table(2),
               extra=("table=private-scratch",)),
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
    config = _config_dict(model.config)
    weights = {k: v.detach().to(torch.float32).clone() for k, v in model.state_dict().items()}
    vocab = int(model.config.vocab_size)
    tab = _model_table(case)
    table_dict = tab.to_dict() if case.table is not None else None
    static, ticks = _model_trace(tab, vocab, seed + 1)
    spec = RopeSpec.from_config(model.config)
    rope = rope_data(spec)
    # the engine oracle (Spec §11.4), run in float64
    engine_oracle = ReferenceAdapter(backend="oracle", dtype=torch.float64)
    common = dict(config=config, weights=weights, rope=rope, layout=case.layout, workers=case.workers,
                  table=table_dict, static=static, ticks=ticks)
    static_keys = static_values = None
    if case.given_kv:
        # the static segments' K/V as the Spec §4.4 prefill computes them (float64 oracle), in the stored form of
        # Spec §2.1, rounded to float32; the expected logits are computed from exactly these rounded K/V
        kv = engine_oracle.prefill_kv(config=config, weights=weights, rope=rope, layout=case.layout,
                                      workers=case.workers, table=table_dict, static=static)
        static_keys = {sid: k.float() for sid, (k, _) in kv.items()}
        static_values = {sid: v.float() for sid, (_, v) in kv.items()}
    logits = engine_oracle.model(**common, static_keys=static_keys, static_values=static_values)
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
                   "static": static, "ticks": ticks},
        "tensors": desc,
    }
    return Vector(meta, tensors)


def spec_heads(config: Any) -> tuple[int, int]:
    """``(Hkv, D)`` of a transformers config."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads), int(head_dim)


def _model_vectors() -> list[Vector]:
    return [_model_vector(case, seed=3000 + 10 * i) for i, case in enumerate(MODEL_CASES)]


BUILDERS: dict[str, Callable[[], list[Vector]]] = {
    "rope": _rope_vectors,
    "attention": _attention_vectors,
    "model": _model_vectors,
}


# ---------------------------------------------------------------------- generation
def generate_vectors(out_dir: Path | str, levels: Sequence[str] | None = None) -> list[Path]:
    """(Re)generate the conformance vectors into ``out_dir/<level>/`` and return the files written.

    Existing ``*.json`` / ``*.safetensors`` files of the regenerated levels are removed first, so the
    directory holds exactly the current vector set. Deterministic: the same library versions give
    the same bytes.
    """
    out = Path(out_dir)
    levels = list(levels) if levels else list(LEVELS)
    for level in levels:
        if level not in BUILDERS:
            raise ValueError(f"unknown level {level!r}; choose from {', '.join(LEVELS)}")
    written: list[Path] = []
    with _deterministic():
        for level in levels:
            vectors = BUILDERS[level]()
            directory = out / level
            if directory.is_dir():
                for old in sorted(directory.iterdir()):
                    if old.suffix in (".json", ".safetensors") and old.is_file():
                        old.unlink()
            for vector in vectors:
                written.extend(write_vector(directory, vector))
    return written
