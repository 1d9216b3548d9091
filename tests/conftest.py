"""Shared pytest configuration: hypothesis profiles.

The ``ci`` profile (the default) is deterministic (``derandomize=True``) so a failure reproduces on
every machine, has no deadline (CPU timings vary a lot between machines and the first example pays for
torch's lazy initialisation), and prints the ``@reproduce_failure`` blob of a failing example.
Select another profile with ``HYPOTHESIS_PROFILE=dev`` (random exploration, still no deadline).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session", autouse=True)
def single_thread():
    """Run the whole suite single-threaded.

    On a small shared CPU, intra-op threading makes each einsum/matmul on tiny tensors up to ~1000x
    slower (thread wake-up), and the models under test here are small. Restored afterwards.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_CACHE: dict[str, str | None] = {}


def pytest_configure(config):
    """The converted-model cache (hogwild_ref.models.converted_dir) of this session is a temporary folder,
    for subprocesses too, removed at the end: tests never write into the user's cache."""
    import tempfile

    _CACHE["previous"] = os.environ.get("HOGWILD_CACHE_DIR")
    _CACHE["dir"] = tempfile.mkdtemp(prefix="hogwild-test-cache-")
    os.environ["HOGWILD_CACHE_DIR"] = _CACHE["dir"]


def pytest_unconfigure(config):
    import shutil

    if _CACHE.get("dir"):
        shutil.rmtree(_CACHE["dir"], ignore_errors=True)
    if _CACHE.get("previous") is None:
        os.environ.pop("HOGWILD_CACHE_DIR", None)
    else:
        os.environ["HOGWILD_CACHE_DIR"] = _CACHE["previous"]  # type: ignore[assignment]


@pytest.fixture(scope="session")
def smollm():
    """The embedded SmolLM2-135M-Instruct (model, tokenizer), loaded once per session (fp32, CPU); the
    load converts the GGUF and fills the session's cache."""
    from hogwild_ref.models import load_default

    return load_default()


@pytest.fixture(scope="session")
def smollm_tokenizer():
    """The embedded SmolLM2 tokenizer alone (cheaper than the model)."""
    from transformers import AutoTokenizer

    from hogwild_ref.models import default_model_path

    directory, name = default_model_path()
    return AutoTokenizer.from_pretrained(directory, gguf_file=name)


@pytest.fixture(scope="session")
def char_tokenizer():
    """A character-level tokenizer built in-process (no files): for machines without the embedded
    model's package (the GPU check in benchmarks/gpu.sh)."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ["<unk>", "<eos>"] + sorted(set(string.printable))
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the CLI tries to load a model (bad arguments must be refused first)."""
    import hogwild_ref.models

    def refuse(*args, **kwargs):
        raise AssertionError("the CLI loaded a model for invalid arguments")

    monkeypatch.setattr(hogwild_ref.models, "load", refuse)
