"""Ctrl-C and SIGTERM for the commands (Spec §11.7): both end a command as ``KeyboardInterrupt``, so
that it keeps its partial result, but never where that would break something else.

* Inside an import (torch, transformers and their lazy modules load while a command starts), an
  exception raised by a handler escapes as another one (transformers turns it into
  ``ModuleNotFoundError``; inside torch's C++ an abort), so the first signal is held and sent again
  shortly, until the import is done.
* Inside :func:`write_out` (a result being written), the first signal is held until the text is
  written whole: then it is raised, or, for the command's final result, only recorded (:func:`late`),
  and the command exits with its status.

A second signal is never held: a second SIGTERM ends the process at once, a second SIGINT raises. A
signal whose disposition was "ignore" when the command started stays ignored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType
from typing import Iterator

__all__ = ["interrupts", "late", "write_out"]

#: how long a signal held during an import waits before it is sent again
RETRY_S = 0.05


class _State:
    """The signals of the running :func:`interrupts` block."""

    def __init__(self) -> None:
        self.active = False
        self.received: list[int] = []  # signals raised as KeyboardInterrupt
        self.held: list[int] = []  # the first signal, while it waits (an import, a write)
        self.late: list[int] = []  # a signal that came while the final result was written
        self.writing = 0  # nesting of write_out
        self.timer: threading.Timer | None = None

    def reset(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.__init__()  # type: ignore[misc]


_STATE = _State()


def _importing(frame: FrameType | None) -> bool:
    """Whether the interrupted code runs inside an import."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _resend(signum: int) -> None:
    """The timer's call: send the held signal again, while its command runs and it still waits."""
    if _STATE.active and _STATE.held == [signum]:
        _STATE.held.clear()
        _STATE.timer = None
        os.kill(os.getpid(), signum)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    s = _STATE
    again = bool(s.received or s.late or s.held)  # a re-sent signal finds ``held`` empty: it is the first
    if again and signum == signal.SIGTERM:  # a second SIGTERM: end now, as without the handler
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    if not again and s.writing:
        s.held[:] = [signum]
        return
    if not again and _importing(frame):
        s.held[:] = [signum]
        s.timer = threading.Timer(RETRY_S, _resend, (signum,))
        s.timer.daemon = True
        s.timer.start()
        return
    s.held.clear()
    s.received.append(signum)
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts() -> Iterator[list[int]]:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` in the main thread (see the module); the list it
    yields records the signals raised. The previous handlers are restored afterwards, a pending re-send
    cancelled. Off the main thread, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    _STATE.reset()
    _STATE.active = True
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:  # ignored when the command started (nohup, a background job)
            signal.signal(s, _on_signal)
    try:
        yield _STATE.received
    finally:
        _STATE.active = False
        for s, handler in previous.items():
            if handler is not signal.SIG_IGN:
                signal.signal(s, handler)
        keep = (_STATE.late or _STATE.held)[:1]  # came while the result was written, or still waiting
        _STATE.reset()
        _STATE.late[:] = keep  # honoured by the caller (:func:`late`)


def late() -> int | None:
    """The signal that came while the final result was written, or that still waited when the command
    ended: the command exits with its status."""
    return _STATE.late[0] if _STATE.late else None


def write_out(text: str, final: bool = False) -> None:
    """Print ``text`` to stdout, flushed, whole: a signal meanwhile waits for it. Then it is raised, or,
    for the command's ``final`` result, recorded for :func:`late`."""
    if threading.current_thread() is not threading.main_thread():
        print(text, flush=True)
        return
    _STATE.writing += 1
    try:
        print(text, flush=True)
    finally:
        _STATE.writing -= 1
    if not _STATE.writing and _STATE.held and _STATE.timer is None:
        signum = _STATE.held.pop()
        if final:
            _STATE.late.append(signum)
        else:
            _STATE.received.append(signum)
            raise KeyboardInterrupt
