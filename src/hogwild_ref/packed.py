"""Pre-packed CPU weights for the W-row decode step (Spec §9.6).

A tick feeds one token per worker, so every linear layer multiplies ``W`` rows by its weight. MKL's
general GEMM repacks the weight on every call and costs about twice a one-row product for
``W = 4`` (measured: SmolLM2's 49152 x 576 output layer, one thread, 22 ms for one row, 47 ms for
four). Packing each weight once for ``W`` rows (MKL's ``sgemm_pack``, what inductor's CPU freezing
does) brings ``W`` rows back to about one row's cost. A few row counts multiply slower from their own
pack than from a larger one with zero rows added, so those are packed for more rows and padded
(:func:`pack_size`).

:class:`PackedLinear` is a context manager: while it is entered, each float32 CPU ``nn.Linear`` of
the model answers a call whose row count packs to the copy's size (:func:`pack_size`) from its packed
weight, and every other call as usual. It does so by shadowing the module's ``forward`` on the instance for the duration of the
block (restored on exit, also on an error): no module is replaced, hooks still run, and no other
torch call pays for it (a ``TorchFunctionMode`` would see every tensor operation of the step, about
six thousand a tick for a 30-layer model, in Python). The packed copies cost one more copy of the
model's float32 linear weights.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

__all__ = ["PackedLinear", "pack_size", "packable_bytes", "packing_available", "tensor_state"]


def packing_available() -> bool:
    """Whether this torch build has MKL's packed GEMM."""
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


def pack_size(rows: int) -> int:
    """The rows a packed copy serving ``rows``-row calls is packed for (Spec §9.6 "CPU linear layers"):
    ``rows``, except 3 (packed for 4) and 5 to 7 (packed for 8), whose calls get zero rows added.

    Measured on this project's development CPU (one thread, SmolLM2-135M's 30 layers of linear
    weights, each count against a pack for it): MKL's product from a pack for 3 rows took 61.7 ms
    against 42.8 ms from a pack for 4 rows; for 5, 6 and 7 rows 68.6-72.4 ms against 49.1-50.1 ms
    from a pack for 8, and packing for them took 4-5 times as long (266-317 ms against 59 ms, four of
    the model's weights). Counts of 1, 2, 4 and 8 or more were fastest from their own pack."""
    if rows == 3:
        return 4
    if 5 <= rows <= 7:
        return 8
    return rows


_MISSING = object()


def tensor_state(t: Tensor) -> tuple[int, int]:
    """What changes when a weight is edited (Spec §9.6 "CPU linear layers", §4.4 shared prefix): its
    version counter, in place (``torch.no_grad()`` ops, ``load_state_dict``), or its data pointer, given
    new data (``weight.data = ...``). An edit through ``weight.data`` in place changes neither and is
    not seen."""
    return t._version, t.data_ptr()


def _packable_layers(model: Any) -> list[torch.nn.Linear]:
    """The model's float32 CPU ``nn.Linear`` layers, each once: what :class:`PackedLinear` packs."""
    layers: dict[int, torch.nn.Linear] = {}
    for module in model.modules():
        w = getattr(module, "weight", None)
        if isinstance(module, torch.nn.Linear) and w is not None and w.dtype == torch.float32 \
                and w.device.type == "cpu":
            layers.setdefault(id(module), module)
    return list(layers.values())


def packable_bytes(model: Any) -> int:
    """About the bytes :class:`PackedLinear` copies for ``model`` (Spec §9.6 "CPU linear layers"): its
    float32 CPU linear weights."""
    return sum(module.weight.numel() * 4 for module in _packable_layers(model))


class PackedLinear:
    """Route the model's ``rows``-row float32 CPU linear layers to MKL-packed weights (Spec §9.6).

    The weights are packed for :func:`pack_size` ``(rows)`` rows (:attr:`size`), and every call with a
    row count of that pack size is served, with zero rows added up to it (their outputs dropped)."""

    def __init__(self, model: Any, rows: int):
        #: the rows the weights are packed for (:func:`pack_size`)
        self.size = pack_size(rows)
        #: (module, the weight that was packed, its packed copy, the weight's :func:`tensor_state` then)
        #: for every packable linear layer
        self._layers: list[tuple[torch.nn.Module, Tensor, Tensor, tuple[int, int]]] = []
        self._saved: list[Any] = []
        with torch.no_grad():
            for module in _packable_layers(model):
                w = module.weight
                self._layers.append((module, w, torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), self.size),
                                     tensor_state(w)))

    def current(self) -> bool:
        """Every layer still holds the weight that was packed, unchanged (:func:`tensor_state`; Spec §9.6
        "CPU linear layers"): else that layer answers from its own forward, and the caller packs again."""
        return all(module.weight is w and tensor_state(w) == v for module, w, _, v in self._layers)

    def _forward(self, module: torch.nn.Module, weight: Tensor, packed: Tensor, state: tuple[int, int],
                 fallback: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """``module``'s forward while entered: the packed product for float32 calls whose row count packs
        to :attr:`size` (:func:`pack_size`) of the weight that was packed while it is unchanged, with zero
        rows added up to :attr:`size`; ``fallback`` (its own forward) for every other call."""
        size = self.size

        def forward(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:  # x (..., d_in) -> (..., d_out)
            d_in = x.shape[-1]
            n = x.numel() // d_in if d_in else 0
            if args or kwargs or module.weight is not weight or tensor_state(weight) != state or x.dtype != torch.float32 \
                    or n == 0 or pack_size(n) != size:
                return fallback(x, *args, **kwargs)
            rows = x.reshape(n, d_in)
            if n < size:
                rows = torch.cat((rows, rows.new_zeros(size - n, d_in)))
            out = torch.ops.mkl._mkl_linear(rows, packed, weight, module.bias, size)
            return out[:n].view(*x.shape[:-1], out.shape[-1])

        return forward

    def __enter__(self) -> PackedLinear:
        if self._saved:
            raise RuntimeError("PackedLinear is already entered (it is not reentrant)")
        for module, weight, packed, state in self._layers:
            old = module.__dict__.get("forward", _MISSING)
            self._saved.append(old)
            fallback = old if old is not _MISSING else type(module).forward.__get__(module)
            module.__dict__["forward"] = self._forward(module, weight, packed, state, fallback)
        return self

    def __exit__(self, *exc: object) -> None:
        for (module, _, _, _), old in zip(self._layers, self._saved):
            if old is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = old
        self._saved.clear()
