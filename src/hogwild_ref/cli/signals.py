"""Ctrl-C and SIGTERM for the commands (Spec §11.7): both end a command as ``KeyboardInterrupt``, so
that it keeps its partial result, but never where that would break something else.

* Inside an import (torch, transformers and their lazy modules load while a command starts), an
  exception raised by a handler escapes as another one (transformers turns it into
  ``ModuleNotFoundError``; inside torch's C++ an abort), so the signal is held and delivered again
  shortly, until the import is done.
* Inside :func:`deferred` (the final result being written), the signal is held until the block ends
  and then only recorded: the output is written whole, and the command exits with the signal's
  status (:func:`late`).

A second SIGTERM ends the process at once; every SIGINT that arrives outside those places raises.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any, Iterator

__all__ = ["deferred", "interrupts", "late", "write_out"]

#: how long a signal held during an import waits before it is delivered again
RETRY_S = 0.05

_held: list[int] = []  # signals held inside :func:`deferred`
_late: list[int] = []  # signals that arrived while a result was written (the command then completed)
_depth = [0]  # nesting of :func:`deferred`


def _importing(frame: FrameType | None) -> bool:
    """Whether the interrupted code runs inside an import."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def interrupts() -> Iterator[list[int]]:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` in the main thread (see the module); the list it
    yields records the signals raised. The previous handlers are restored afterwards. Off the main
    thread, nothing changes."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    _held.clear()
    _late.clear()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGTERM and signal.SIGTERM in received + _late:  # a second SIGTERM: end now
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if _depth[0]:
            _held.append(signum)
            return
        if _importing(frame):
            timer = threading.Timer(RETRY_S, os.kill, (os.getpid(), signum))
            timer.daemon = True
            timer.start()
            return
        received.append(signum)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs (a result being written); a signal that came is then
    recorded for :func:`late`, not raised."""
    _depth[0] += 1
    try:
        yield
    finally:
        _depth[0] -= 1
        if not _depth[0] and _held:
            _late.append(_held[0])
            _held.clear()


def late() -> int | None:
    """The signal that arrived while a result was written, if any: the command exits with its status."""
    return _late[0] if _late else None


def write_out(text: str, **print_kwargs: Any) -> None:
    """Print ``text`` to stdout and flush it, whole: a signal meanwhile waits (:func:`deferred`)."""
    with deferred():
        print(text, **print_kwargs)
        sys.stdout.flush()
