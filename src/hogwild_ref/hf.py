"""The transformers glue: a thin ``Cache`` subclass and the registered attention and mask functions (Spec §11.1).

Integration uses transformers' public surfaces only:

* :class:`HogwildCache` subclasses ``transformers.Cache``. It holds the run's
  :class:`~hogwild_ref.storage.Storage` and the tick of the forward in progress; its ``update()``
  hands each layer's new K/V to that tick (which stores them, every row before any attention runs,
  Spec §3.2). It plans nothing and has no modes;
* an attention function registered with ``AttentionInterface`` under ``"hogwild"`` hands each
  layer's queries to the same tick, which attends over the layer's store (Spec §9);
* a mask function registered with ``AttentionMaskInterface`` returns None: the tick is the mask.

The attention function does not re-check the model's attention keywords: the compatibility probe
(:func:`hogwild_ref.features.probe_rope`, Spec §11.6) checks them once per model, before its first run.
Importing this module registers the two functions; it has no other side effect.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.cache_utils import Cache, DynamicLayer

from .storage import Storage
from .ticks import Tick

__all__ = ["ATTN_IMPLEMENTATION", "HogwildCache", "Packing", "cache_keyword", "eos_token_ids", "layer_devices",
           "use_hogwild_attention"]

ATTN_IMPLEMENTATION = "hogwild"


class Packing:
    """A tick's real slots run as one packed sequence (Spec §11.2, "Packed slots"): the model's
    token-wise layers see ``(1, N)`` tokens, row ``r``'s ``counts[r]`` slots one after the other, while
    the tick still writes and attends ``(R, n)`` rows, the padding slots zero.

    Args:
        counts: the slots each row runs (at least 1: a row without tokens keeps its slot 0).
        n: the tick's width.
    """

    def __init__(self, counts: Sequence[int], n: int):
        c = torch.tensor(counts)
        starts = torch.cumsum(c, 0) - c
        self.shape = (len(counts), n)
        #: the packed index of each row's last slot, on the host (the output layer's ``logits_to_keep``)
        self.last = starts + c - 1
        rows = torch.repeat_interleave(torch.arange(len(counts)), c)
        slots = torch.arange(int(c.sum())) - torch.repeat_interleave(starts, c)
        self._index = {rows.device: (rows, slots)}

    def on(self, device: torch.device) -> tuple[Int[Tensor, " N"], Int[Tensor, " N"]]:
        """Each packed token's ``(row, slot)`` index ``(N,)``, on ``device`` (copied once per device, Spec §11.8)."""
        if device not in self._index:
            rows, slots = next(iter(self._index.values()))
            self._index[device] = (rows.to(device), slots.to(device))
        return self._index[device]

    def unpack(self, x: Float[Tensor, "1 H N D"]) -> Float[Tensor, "R H n D"]:
        """The packed heads as the tick's rows, padding slots zero (laid out as the model's own ``(R, n)`` heads)."""
        out = x.new_zeros(*self.shape, x.shape[1], x.shape[3])
        out[self.on(x.device)] = x[0].transpose(0, 1)
        return out.transpose(1, 2)

    def pack(self, y: Float[Tensor, "R H n D"]) -> Float[Tensor, "1 H N D"]:
        """The rows' real slots as the packed sequence."""
        return y.transpose(1, 2)[self.on(y.device)].transpose(0, 1)[None]


class HogwildCache(Cache):
    """The model's view of a :class:`~hogwild_ref.storage.Storage` during one forward (Spec §11.1).

    The forward step (:mod:`hogwild_ref.forward`) keeps one cache per storage, sets :attr:`tick` before
    each call of the model, and passes the cache both as the model's cache keyword and as
    ``hogwild_cache`` (which transformers forwards to the attention function). It holds the storage's
    per-layer stores, not the storage itself, so that a cache kept per storage (a weak-keyed map)
    lets the storage, and with it the cache and its K/V, go when the run that made it ends.
    """

    def __init__(self, storage: Storage):
        # the layers only answer metadata questions (is_sliding, ...); the K/V live in the Storage
        super().__init__(layers=[DynamicLayer() for _ in storage.stores])
        self.stores = storage.stores
        self.tick: Tick | None = None
        #: set for a forward whose model runs on the tick's real slots only (:class:`Packing`)
        self.packing: Packing | None = None

    def _tick(self) -> Tick:
        if self.tick is None:
            raise RuntimeError("HogwildCache used outside a tick; run the model through hogwild_ref.forward.Forward")
        return self.tick

    def update(self, key_states: Float[Tensor, "B Hkv n Dk"], value_states: Float[Tensor, "B Hkv n Dv"], layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[Float[Tensor, "B Hkv n Dk"], Float[Tensor, "B Hkv n Dv"]]:
        """Hand the layer's new K/V ``(R, Hkv, n, D)`` (packed: ``(1, Hkv, N, D)``) to the tick (Spec §3.2);
        returns them unchanged (the attention function reads the store)."""
        k, v = (key_states, value_states) if self.packing is None else (self.packing.unpack(key_states), self.packing.unpack(value_states))
        self._tick().write(layer_idx, self.stores[layer_idx], k, v)
        return key_states, value_states

    def attend(self, layer_idx: int, query: Float[Tensor, "B Hq n D"], scaling: float) -> Float[Tensor, "B Hq n D"]:
        """The tick's attention for this layer (Spec §9), packed as the query came."""
        if self.packing is None:
            return self._tick().attend(layer_idx, self.stores[layer_idx], query, scaling)
        out = self._tick().attend(layer_idx, self.stores[layer_idx], self.packing.unpack(query), scaling)
        return self.packing.pack(out)

    def get_seq_length(self, layer_idx: int | None = 0, *args: Any, **kwargs: Any) -> int:
        """Informational (the forward step always passes explicit position ids): the longest view, or 0 in
        a one-token tick, where a Python int changing every tick would recompile a compiled step."""
        return self.tick.seq_length if self.tick is not None else 0

    def get_mask_sizes(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
        return self.get_seq_length(), 0


def hogwild_attention(module: Any, query: Float[Tensor, "B Hq n D"], key: Float[Tensor, "B Hkv n D"],
                      value: Float[Tensor, "B Hkv n D"], attention_mask: Any, scaling: float | None = None,
                      dropout: float = 0.0, **kwargs: Any) -> tuple[Float[Tensor, "B n Hq D"], None]:
    """Attention function registered as ``"hogwild"`` (Spec §11.1). Returns ``(R, n, Hq, D)`` as
    transformers' attention functions do."""
    cache: HogwildCache | None = kwargs.get("hogwild_cache")
    if cache is None:
        raise RuntimeError(
            "the 'hogwild' attention implementation needs the hogwild_cache keyword; "
            "run the model through hogwild_ref.forward.Forward"
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    out = cache.attend(module.layer_idx, query, scaling)
    return out.transpose(1, 2).contiguous(), None


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None


AttentionInterface.register(ATTN_IMPLEMENTATION, hogwild_attention)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _no_mask)


# ---------------------------------------------------------------------- model plumbing
@contextmanager
def use_hogwild_attention(model: Any) -> Iterator[None]:
    """Switch ``model`` to the ``"hogwild"`` attention implementation for the duration (Spec §11.1)."""
    previous = getattr(model.config, "_attn_implementation", None)
    if previous == ATTN_IMPLEMENTATION:  # already switched for the whole run
        yield
        return
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    try:
        yield
    finally:
        if previous is not None:
            model.set_attn_implementation(previous)


def cache_keyword(model: Any) -> str:
    """transformers 5.24 renamed ``past_key_values`` to ``cache``; support both (Spec §11.1)."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def layer_devices(model: Any) -> list[torch.device]:
    """The device of every decoder layer (a model spread with ``device_map`` keeps K/V beside its layer)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    default = next(model.parameters()).device
    if layers is None or len(layers) != model.config.num_hidden_layers:
        return [default] * model.config.num_hidden_layers
    return [next(layer.parameters(), torch.empty(0, device=default)).device for layer in layers]


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Tokens that end a worker (Spec §6.4): the tokenizer's EOS and the model's ``generation_config`` EOS ids.

    Chat models often end a turn with a token other than the tokenizer's EOS (Phi-3's ``<|end|>``,
    Llama 3's ``<|eot_id|>``); their generation config lists it.
    """
    ids: set[int] = set()
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen, int):
        ids.add(gen)
    elif isinstance(gen, (list, tuple)):
        ids.update(int(x) for x in gen)
    return frozenset(ids)
