"""The hogwild-ref command line: generate, bench, conform and eval (hogwild-ref COMMAND --help for each)."""

from __future__ import annotations

import argparse
import io
import os
import shlex
import signal
import sys
import warnings
from typing import Any, NoReturn, Sequence

from .bench import _add_bench, cmd_bench, cmd_bench_ticks
from .conform import _add_conform, _print_conform_table, cmd_conform
from .eval import _add_eval, cmd_eval
from .common import show_warning, stdout_to_devnull
from .signals import interrupts, late
from .generate import DEFAULT_PROBLEM, _add_generate, cmd_generate

__all__ = ["DEFAULT_PROBLEM", "build_parser", "main", "cmd_bench", "cmd_bench_ticks", "cmd_conform", "cmd_eval", "cmd_generate",
           "_print_conform_table"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <problem> (see <prog> --help)``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: ``hogwild-ref`` and its four commands."""
    from .. import __version__

    parser = _Parser(prog="hogwild-ref", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hogwild-ref {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_generate(sub)
    _add_conform(sub)
    _add_bench(sub)
    _add_eval(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if not _streams_ready():
        return 2
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["hogwild-ref", *(sys.argv[1:] if argv is None else argv)])
    handlers = {"bench": cmd_bench, "conform": cmd_conform, "eval": cmd_eval, "generate": cmd_generate}
    _quiet_hub_bars()
    with interrupts() as received:
        try:
            rc = _run(handlers[args.command], args, received)
        except BrokenPipeError:
            return _broken_pipe()
    signum = late()
    if rc == 0 and signum is not None:  # the result was written whole (or the signal came at the very end)
        print("interrupted", file=sys.stderr)
        return 128 + signum
    if rc == 130 and signal.SIGTERM in received:  # SIGTERM ended the run like Ctrl-C: its own status
        return 128 + signal.SIGTERM
    return rc


def _streams_ready() -> bool:
    """stdout and stderr as the commands need them. A closed stdout (``>&-``: Python then has none) is
    refused, since every result would be lost; text a stream's encoding cannot carry (an ASCII locale or
    ``PYTHONIOENCODING=ascii``; a file name that is not UTF-8) is written as backslash escapes, as Python
    writes it to stderr, instead of failing after the work is done."""
    if sys.stdout is None:
        if sys.stderr is not None:
            print("error: stdout is closed; redirect it to a file or to /dev/null", file=sys.stderr)
        return False
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors in ("strict", "surrogateescape"):
            stream.reconfigure(errors="backslashreplace")
    return True


def _quiet_hub_bars() -> None:
    """transformers' and the hub's own progress bars (loading weights, converting the GGUF) are off: the
    commands show their own progress, and a bar's carriage returns land in a redirected stderr as is."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is imported
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF conversion calls tqdm itself
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _run(handler: Any, args: argparse.Namespace, received: Sequence[int] = ()) -> int:
    """Run a command; its exceptions as exit statuses: 130 for Ctrl-C and SIGTERM (and for whatever a
    signal made the interrupted code raise), 70 for a failed internal assertion (a bug), 2 with one line
    for bad input."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            return int(handler(args))
    except (BrokenPipeError, SystemExit):
        raise
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) or (received and _caused_by_interrupt(exc)):
            print("interrupted", file=sys.stderr)
            return 130
        if isinstance(exc, AssertionError):  # a failed internal check is a bug in hogwild_ref, not bad input
            import traceback

            traceback.print_exc()
            print("internal error: an assertion inside hogwild_ref failed; this is a bug, please report it with the "
                  "traceback above", file=sys.stderr)
            return 70
        if isinstance(exc, (ValueError, TypeError, RuntimeError, OSError)):  # one-line errors for bad input
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            return 2
        raise


def _caused_by_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while a KeyboardInterrupt was handled, or from one (transformers' lazy
    modules turn an interrupted import into ModuleNotFoundError)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _broken_pipe() -> int:
    """The reader of stdout went away (``... --json | head``): end quietly, as Python's documentation on
    SIGPIPE recommends."""
    stdout_to_devnull()
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
