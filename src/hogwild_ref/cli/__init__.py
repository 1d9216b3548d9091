"""Command line: ``hogwild-ref generate | bench | conform | eval``."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn, Sequence

from .bench import _add_bench, cmd_bench, cmd_bench_ticks
from .conform import _add_conform, _print_conform_table, cmd_conform
from .eval import _add_eval, cmd_eval
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
    try:
        return handlers[args.command](args)
    except AssertionError:  # a failed internal check is a bug in hogwild_ref, not bad input
        import traceback

        traceback.print_exc()
        print("internal error: an assertion inside hogwild_ref failed; this is a bug, please report it with the "
              "traceback above", file=sys.stderr)
        return 70
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, RuntimeError, OSError) as exc:  # one-line errors for bad input
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    """The exception as one line: its message's first line, prefixed with the type where that helps."""
    text = str(exc).strip().splitlines()
    message = text[0] if text else type(exc).__name__
    if isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, ValueError):
        return f"{type(exc).__name__}: {message}"
    return message
