"""Batched matrix products of a tick's attention on the CPU through numpy's BLAS (Spec §9.6, "CPU
window products").

Each part of a one-token tick (the common window, the tail blocks) is read with two products per KV
head: the scores ``q · Kᵀ`` and the weighted values ``p · V``, each a few query rows (``W·g``: the
group's workers times the query heads of a KV head) against hundreds or thousands of keys. Such a
product reads its ``(len, D)`` operand once and does almost no arithmetic per element, so its speed
is the speed at which it streams that operand. The BLAS that numpy ships (OpenBLAS in numpy's
wheels), multiplying one matrix of the batch after the other in place, streams it faster than
PyTorch's CPU batched product (measured on this project's development CPU, one thread: the 30
layers' common-window products for 8 problems of 2 workers and a 386-key window, 20.6 ms through
``torch.matmul`` against 14.5 ms; a 16-row tick of SmolLM2-135M, ticks alternating in one run,
135.1 against 120.9 ms; at one problem, where the products are a small part of a tick, 2-row ticks
81.9 against 82.0 ms, level).

:func:`batched_matmul` is ``torch.matmul`` of two same-batch stacks of matrices, computed by numpy
reading the tensors' own memory (``Tensor.numpy()``, its result taken back without a copy) when both
are plain float32 or float64 CPU tensors that do not require grad, outside ``torch.compile``, and by
``torch.matmul`` otherwise. Each
matrix of the batch is one BLAS call on its own operands, so a group's result does not depend on the
other groups of the batch (a problem batched with others gets the products of its run alone, bit for
bit, Spec §13.3). numpy's BLAS is given torch's thread count (``torch.get_num_threads()``, through
``threadpoolctl``) before its first product and whenever torch's changes, so that ``--threads N``
holds for both libraries; this sets the thread count of that BLAS for the whole process.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["NUMPY_DTYPES", "batched_matmul", "numpy_applies"]

#: the dtypes whose products go through numpy's BLAS (numpy has no bfloat16; its float16 product
#: does not use BLAS)
NUMPY_DTYPES = (torch.float32, torch.float64)

_threads: list[int] = []  # the thread count last given to numpy's BLAS (none yet: empty)
#: threadpoolctl is a dependency; a tree run without installing it (``PYTHONPATH=src``) uses torch's product
_CAN_SET_THREADS = importlib.util.find_spec("threadpoolctl") is not None


def numpy_applies(a: Tensor, b: Tensor) -> bool:
    """Whether :func:`batched_matmul` computes ``a @ b`` through numpy: plain CPU tensors (no
    subclass) of one dtype of :data:`NUMPY_DTYPES`, with one batch shape, neither requiring grad (also
    under ``torch.no_grad``, where ``Tensor.numpy()`` refuses it too), outside ``torch.compile`` (which
    traces ``torch.matmul``); and ``threadpoolctl`` installed, to give numpy's BLAS torch's thread count."""
    if torch.compiler.is_compiling() or not _CAN_SET_THREADS:
        return False
    return (type(a) is Tensor and type(b) is Tensor and a.device.type == "cpu" and b.device.type == "cpu"
            and a.dtype == b.dtype and a.dtype in NUMPY_DTYPES and a.dim() == b.dim() >= 2
            and a.shape[:-2] == b.shape[:-2] and not (a.requires_grad or b.requires_grad))


def _match_threads() -> None:
    """Give numpy's BLAS torch's thread count, when it has not had it yet."""
    n = torch.get_num_threads()
    if _threads != [n]:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=n, user_api="blas")
        _threads[:] = [n]


def batched_matmul(a: Float[Tensor, "*batch m k"], b: Float[Tensor, "*batch k n"]) -> Float[Tensor, "*batch m n"]:
    """``torch.matmul(a, b)`` for two stacks of matrices with one batch shape (Spec §9.6, "CPU window
    products"): through numpy's BLAS, one matrix after the other on the tensors' own memory, when
    :func:`numpy_applies`; else ``torch.matmul``. The result is a new contiguous tensor either way."""
    if not numpy_applies(a, b):
        return torch.matmul(a, b)
    _match_threads()
    return torch.from_numpy(np.matmul(a.numpy(), b.numpy()))
