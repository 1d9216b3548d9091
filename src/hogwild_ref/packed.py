"""Pre-packed CPU weights for the forward step's linear layers (Spec §9.6, "CPU linear layers").

A tick feeds one token per worker row, so every linear layer multiplies a few rows by its weight.
The plain GEMM re-reads the weight in its row-major form on every call, which suits a few rows
badly (measured: SmolLM2's 49152 x 576 output layer, one thread, 2 rows 18.7 ms plain against 9.4 ms
from a packed copy). oneDNN's linear with the weight reordered once into its blocked layout
(``mkldnn._reorder_linear_weight``, what inductor's CPU freezing uses) serves every row count from 2
up from one copy, at or below the plain product's cost, and computes each row the same way whatever
the other rows are (Spec §10: a problem batched with others gets the linear outputs of its run alone,
bit for bit). One row stays on the plain product, which is faster there.

:class:`PackedLinear` is a context manager: while it is entered, each float32 CPU ``nn.Linear`` of
the model that computes ``nn.Linear``'s own product (not a subclass with its own forward, such as a
LoRA or quantised layer or a router; not a layer given a forward of its own on the instance, such as
an offloading hook) answers a call of at least :data:`MIN_ROWS` rows from its packed weight, and
every other call as usual. It does so by shadowing the module's ``forward`` on the instance for the duration of
the block (restored on exit, also on an error): no module is replaced, hooks still run, and no other
torch call pays for it (a ``TorchFunctionMode`` would see every tensor operation of the step, about
six thousand a tick for a 30-layer model, in Python). The packed copies cost one more copy of the
model's float32 linear weights.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch import Tensor

__all__ = ["MIN_ROWS", "PackedLinear", "packable_bytes", "packing_available", "tensor_state"]

#: the fewest rows a call needs to be served packed (Spec §9.6 "CPU linear layers"): measured on this
#: project's development CPU (one thread, SmolLM2-135M's 30 layers of linear weights and its output
#: layer), one row took 44 ms through the plain product against 48 ms packed; 2 rows 67 against 52 ms,
#: 16 rows 119 against 97 ms
MIN_ROWS = 2


@functools.cache
def packing_available() -> bool:
    """Whether this torch build runs oneDNN's packed linear on this CPU: the ops exist, and a packed
    2 x 3 product gives the plain one's result (checked once)."""
    ops = torch.ops.mkldnn
    if not (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise")):
        return False
    try:
        w, x = torch.arange(6.0).reshape(2, 3), torch.ones(2, 3)
        out = ops._linear_pointwise(x, ops._reorder_linear_weight(w, MIN_ROWS), None, "none", [], "")
        return bool(torch.equal(out, torch.nn.functional.linear(x, w)))
    except RuntimeError:
        return False


def tensor_state(t: Tensor) -> tuple[int, int]:
    """What changes when a weight is edited (Spec §9.6 "CPU linear layers", §4.4 shared prefix): its
    version counter, in place (``torch.no_grad()`` ops, ``load_state_dict``), or its data pointer, given
    new data (``weight.data = ...``). An edit through ``weight.data`` in place changes neither and is
    not seen."""
    return t._version, t.data_ptr()


def _packable_layers(model: Any) -> list[torch.nn.Linear]:
    """The model's float32 CPU linear layers, each once: what :class:`PackedLinear` packs (Spec §9.6,
    "CPU linear layers"). A layer qualifies when its forward is ``nn.Linear``'s own (a subclass that
    computes more, such as a LoRA or quantised layer, or one that returns something else, such as a
    router, is left to its forward) and its weight is a plain parameter (not a parametrization)."""
    layers: dict[int, torch.nn.Linear] = {}
    for module in model.modules():
        w = module._parameters.get("weight") if _plain_linear(module) else None
        if w is not None and w.dtype == torch.float32 and w.device.type == "cpu":
            layers.setdefault(id(module), module)
    return list(layers.values())


def _plain_linear(module: torch.nn.Module) -> bool:
    """``module`` computes ``nn.Linear``'s product: an ``nn.Linear`` whose class keeps its forward and
    whose instance has none of its own."""
    return isinstance(module, torch.nn.Linear) and type(module).forward is torch.nn.Linear.forward \
        and "forward" not in module.__dict__


def packable_bytes(model: Any) -> int:
    """About the bytes :class:`PackedLinear` copies for ``model`` (Spec §9.6 "CPU linear layers"): its
    float32 CPU linear weights."""
    return sum(module.weight.numel() * 4 for module in _packable_layers(model))


class PackedLinear:
    """Route the model's float32 CPU linear layers to oneDNN-packed weights (Spec §9.6, "CPU linear
    layers"): every call of at least :data:`MIN_ROWS` rows, whatever its row count."""

    def __init__(self, model: Any):
        #: (module, the weight that was packed, its packed copy, the weight's :func:`tensor_state` then)
        #: for every packable linear layer
        self._layers: list[tuple[torch.nn.Module, Tensor, Tensor, tuple[int, int]]] = []
        self._saved: list[torch.nn.Module | None] = []  # the layers whose forward is shadowed while entered
        with torch.no_grad():
            for module in _packable_layers(model):
                w = module.weight
                packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), MIN_ROWS)
                self._layers.append((module, w, packed, tensor_state(w)))

    def current(self) -> bool:
        """Every layer still holds the weight that was packed, unchanged (:func:`tensor_state`), and was
        given no forward of its own since (Spec §9.6 "CPU linear layers"): else that layer answers from its
        own forward, and the caller packs again."""
        return all(module._parameters.get("weight") is w and tensor_state(w) == v and "forward" not in module.__dict__
                   for module, w, _, v in self._layers)

    @staticmethod
    def _forward(module: torch.nn.Module, weight: Tensor, packed: Tensor, state: tuple[int, int],
                 fallback: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """``module``'s forward while entered: the packed product for float32 calls of at least
        :data:`MIN_ROWS` rows of the weight that was packed while it is unchanged; ``fallback`` (its own
        forward) for every other call."""
        params = module._parameters  # read directly: nn.Module's __getattr__ costs microseconds a call
        linear = torch.ops.mkldnn._linear_pointwise.default

        def forward(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:  # x (..., d_in) -> (..., d_out)
            bias = params.get("bias")
            if args or kwargs or x.dtype != torch.float32 or params.get("weight") is not weight \
                    or tensor_state(weight) != state or (bias is not None and bias.dtype != torch.float32):
                return fallback(x, *args, **kwargs)
            d_in = x.shape[-1]
            if d_in == 0 or x.numel() < MIN_ROWS * d_in:  # fewer rows than MIN_ROWS (leading dims are rows)
                return fallback(x, *args, **kwargs)
            return linear(x, packed, bias, "none", [], "")  # any leading dims and strides, as F.linear

        return forward

    def __enter__(self) -> PackedLinear:
        if self._saved:
            raise RuntimeError("PackedLinear is already entered (it is not reentrant): a forward of this model is "
                               "already running, in another thread or around this call; run one forward at a time "
                               "per model (one thread per Engine and model, or processes)")
        for module, weight, packed, state in self._layers:
            if "forward" in module.__dict__:  # given a forward of its own since it was packed: that one answers
                continue
            module.__dict__["forward"] = self._forward(module, weight, packed, state, type(module).forward.__get__(module))
            self._saved.append(module)
        if not self._saved:
            self._saved.append(None)  # entered, with nothing to restore
        return self

    def __exit__(self, *exc: object) -> None:
        for module in self._saved:
            if module is not None:
                module.__dict__.pop("forward", None)
        self._saved.clear()
