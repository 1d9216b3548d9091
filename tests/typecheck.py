"""The runtime type checker of the test suite (pyproject ``--jaxtyping-packages``): beartype, except inside
``torch.compile`` tracing, where tensors are fake and the compiled graph must not carry checks."""

from __future__ import annotations

import functools
from typing import Any

import torch
from beartype import beartype


def checked(obj: Any) -> Any:
    """beartype ``obj``; a checked function skips its checks while torch.compile traces it."""
    if isinstance(obj, type):
        return beartype(obj)
    fast = obj
    slow = beartype(obj)
    if slow is fast:
        return fast

    @functools.wraps(fast)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return fast(*args, **kwargs)
        return slow(*args, **kwargs)

    return wrapper
