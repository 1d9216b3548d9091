"""Pre-packed CPU weights for the W-row decode step (Spec §9.6).

A tick feeds one token per worker, so every linear layer multiplies ``W`` rows by its weight. MKL's
general GEMM repacks the weight on every call and costs about twice a one-row product for
``W = 4`` (measured: SmolLM2's 49152 x 576 output layer, one thread, 22 ms for one row, 47 ms for
four). Packing each weight once for ``W`` rows (MKL's ``sgemm_pack``, what inductor's CPU freezing
does) brings ``W`` rows back to about one row's cost.

:class:`PackedLinear` is a ``TorchFunctionMode``: while it is active, ``torch.nn.functional.linear``
calls on float32 CPU weights of the model with exactly ``W`` rows go to the packed product; every
other call runs as usual. The model's modules are not touched. The packed copies cost one more copy
of the model's float32 linear weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["PackedLinear", "packing_available"]


def packing_available() -> bool:
    """Whether this torch build has MKL's packed GEMM."""
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


class PackedLinear(TorchFunctionMode):
    """Route the model's ``rows``-row float32 CPU linear layers to MKL-packed weights (Spec §9.6)."""

    def __init__(self, model: Any, rows: int):
        super().__init__()
        self.rows = rows
        self._packed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        with torch.no_grad():
            for module in model.modules():
                w = getattr(module, "weight", None)
                if isinstance(module, torch.nn.Linear) and w is not None and w.dtype == torch.float32 \
                        and w.device.type == "cpu" and id(w) not in self._packed:
                    self._packed[id(w)] = (w, torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), rows))

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.nn.functional.linear and len(args) >= 2:
            x, w = args[0], args[1]
            entry = self._packed.get(id(w))
            if entry is not None and entry[0] is w and x.dtype == torch.float32 and x.numel() == self.rows * x.shape[-1]:
                bias = args[2] if len(args) > 2 else kwargs.get("bias")
                out = torch.ops.mkl._mkl_linear(x.reshape(self.rows, x.shape[-1]), entry[1], w, bias, self.rows)
                return out.view(*x.shape[:-1], out.shape[-1])
        return func(*args, **kwargs)
