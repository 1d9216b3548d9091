"""Conformance vectors: the file format and what every level's generator shares (Spec §12.2, §12.4).

A vector is a pair of files in ``<vectors dir>/<level>/``:

* ``<name>.json`` — metadata: ``name``, ``level``, ``version`` (format version 3, Spec §1.4),
  ``generator`` (the library versions), ``description``, ``tolerance`` (and, for ``rope``,
  ``tolerance_per_position``, Spec §10.4), ``measure``, ``dtype``, ``features``, ``inputs`` (the
  non-tensor keyword arguments of the adapter method, among them the version-independent RoPE data
  ``rope``), ``tensors`` (what every tensor of the safetensors file is), and for the ``model`` level
  ``config`` (the model's transformers config dict);
* ``<name>.safetensors`` — tensors named ``input/...`` (given to the adapter) and ``expected/...``
  (never given to it).

:func:`generate_vectors` rebuilds every vector from fixed seeds with the reference's oracles, one
module per level: :mod:`.vectors_rope` (float64 rotations), :mod:`.vectors_attention` (the dense
float64 attention oracle of Spec §9.1) and :mod:`.vectors_model` (the engine oracle of Spec §11.4 run
in float64; with given static K/V for ``prefill=given`` vectors). This module holds what they share:
the :class:`Vector` type and its files, the RoPE data and generator versions every vector carries, the
tiny transformers configs and the explicit segment tables the levels build on. Expected values are
stored in float32, JSON with a fixed key order and indentation, safetensors with sorted tensor names
and no metadata, so that regeneration reproduces the checked-in files byte for byte.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor

from ..rope import RopeSpec

__all__ = [
    "FORMAT",
    "READABLE_VERSIONS",
    "SPEC_VERSION",
    "Vector",
    "generator_versions",
    "official_combined_table",
    "private_scratch_table",
    "rope_data",
    "dumps_json",
    "load_vector",
    "vector_names",
    "write_vector",
]

#: version of the vector format / specification the vectors are generated for (Spec §1.4, §12.2)
SPEC_VERSION = 3
#: directory name of this vector set under ``spec/vectors/``
FORMAT = "v3"
#: format versions the runner reads: version 2 vectors differ only in lacking the model level's ``prefill`` input
READABLE_VERSIONS = (2, 3)

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
def config_dict(config: Any) -> dict[str, Any]:
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


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@contextmanager
def deterministic() -> Iterator[None]:
    """One CPU thread and a private RNG state for the duration (reproducible bytes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(threads)


def rounded_randn(g: torch.Generator, dtype: torch.dtype) -> Callable[..., Tensor]:
    """Standard normal float64 numbers, rounded to ``dtype`` (so the oracle sees the adapter's inputs)."""

    def draw(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(torch.float64)

    return draw


# ---------------------------------------------------------------------- configs
# tiny transformers configs the rope and attention levels build their RoPE (and heads) from
def llama_config(rope_parameters: dict[str, Any], hidden: int = 64, heads: int = 4, kv: int = 2, max_pos: int = 8192) -> Any:
    import transformers

    return transformers.LlamaConfig(
        hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=max_pos,
        rope_parameters=rope_parameters,
    )


def phi3_config(rope_parameters: dict[str, Any] | None = None, partial: float = 0.5, max_pos: int = 4096,
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


def stablelm_yarn_partial_config() -> Any:
    import transformers

    # partial_rotary_factor is no field of transformers 5's StableLmConfig dataclass, but its __post_init__
    # takes it (as **kwargs) into rope_parameters; the typed signature does not show that
    return transformers.StableLmConfig(  # type: ignore[call-arg]
        hidden_size=48, num_attention_heads=4, num_key_value_heads=2, partial_rotary_factor=0.5,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                         "original_max_position_embeddings": 2048},
    )


#: YaRN RoPE parameters (attention_scaling != 1), shared by the rope, attention and model levels
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 2048}


# ---------------------------------------------------------------------- explicit tables (Spec §4.5)
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
