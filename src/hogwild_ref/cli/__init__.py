"""Command line: ``hogwild-ref generate | bench | conform | eval``."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import warnings
from typing import Any, Iterator, NoReturn, Sequence

from .bench import _add_bench, cmd_bench, cmd_bench_ticks
from .conform import _add_conform, _print_conform_table, cmd_conform
from .eval import _add_eval, cmd_eval
from .common import show_warning
from .generate import DEFAULT_PROBLEM, _add_generate, cmd_generate

__all__ = ["DEFAULT_PROBLEM", "main", "cmd_bench", "cmd_bench_ticks", "cmd_conform", "cmd_eval", "cmd_generate",
           "_print_conform_table"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <problem> (see <prog> --help)``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    from .. import __version__

    parser = _Parser(prog="hogwild-ref", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hogwild-ref {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_generate(sub)
    _add_conform(sub)
    _add_bench(sub)
    _add_eval(sub)
    args = parser.parse_args(argv)
    handlers = {"bench": cmd_bench, "conform": cmd_conform, "eval": cmd_eval, "generate": cmd_generate}
    with _sigterm_as_interrupt() as received:
        try:
            rc = _run(handlers[args.command], args)
        except BrokenPipeError:
            return _broken_pipe()
        if rc == 130 and received:  # SIGTERM ended the run like Ctrl-C: same partial result, its own status
            return 128 + signal.SIGTERM
        return rc


def _run(handler: Any, args: argparse.Namespace) -> int:
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            return int(handler(args))
    except AssertionError:  # a failed internal check is a bug in hogwild_ref, not bad input
        import traceback

        traceback.print_exc()
        print("internal error: an assertion inside hogwild_ref failed; this is a bug, please report it with the "
              "traceback above", file=sys.stderr)
        return 70
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except (ValueError, TypeError, RuntimeError, OSError) as exc:  # one-line errors for bad input
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[list[int]]:
    """SIGTERM (what ``timeout``, schedulers and ``kill`` send) raises ``KeyboardInterrupt`` in the main
    thread, so a command keeps its partial result exactly as for Ctrl-C; the list it yields records the
    signal, and the previous handler is restored afterwards. A second SIGTERM ends the process at once.
    Off the main thread, nothing changes."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def on_term(signum: int, frame: Any) -> None:
        if received:  # a second SIGTERM while the partial result is saved: end now, as without the handler
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        received.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def _broken_pipe() -> int:
    """The reader of stdout went away (``... --json | head``): end quietly, as Python's documentation on
    SIGPIPE recommends (point stdout at devnull so the interpreter's final flush cannot fail again)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
        pass
    return 128 + signal.SIGPIPE


def _one_line(exc: BaseException) -> str:
    """The exception as one line: its message's first line, prefixed with the type where that helps; a
    first line that ends with a colon announces the lines after it (a list of reasons), which are kept,
    joined by "; "."""
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    message = text[0] if text else type(exc).__name__
    if message.endswith(":") and len(text) > 1:
        message = f"{message} {'; '.join(text[1:])}"
    if isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, ValueError):
        return f"{type(exc).__name__}: {message}"
    return message
