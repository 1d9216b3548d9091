"""``hogwild-ref conform [run|export|score|fuzz]``: the conformance vectors against an adapter (Spec §12.6)."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from typing import Any

from .common import console
from .signals import write_out

LEVEL_NAMES = ["rope", "attention", "model"]
#: the longest --adapter-timeout (seconds): a week
MAX_ADAPTER_TIMEOUT = 7 * 24 * 3600


def _opt(suppress: bool, default: Any) -> Any:
    """A subcommand's options leave unset values alone (so ``conform --level rope export DIR`` works)."""
    return argparse.SUPPRESS if suppress else default


def _adapter_options(p: Any, suppress: bool, fuzz: bool = False) -> None:
    who = p.add_mutually_exclusive_group()
    who.add_argument("--adapter", default=_opt(suppress, None), metavar="MODULE:FACTORY",
                     help="import MODULE and call FACTORY() for the adapter (default: the reference, "
                          "hogwild_ref.conformance:reference)")
    who.add_argument("--adapter-cmd", default=_opt(suppress, None), metavar="CMD",
                     help='an adapter in another process: the command line that starts it (e.g. ".venv/bin/python '
                          'examples/numpy_adapter.py"); it speaks the line protocol of Spec §12.7 on stdin/stdout')
    p.add_argument("--adapter-timeout", type=float, default=_opt(suppress, 600.0), metavar="S",
                   help="--adapter-cmd: seconds to wait for each reply (default 600); after the first timeout the "
                        "adapter is stopped and the remaining vectors are reported not run")
    p.add_argument("--scope", default=_opt(suppress, None), metavar="FILE",
                   help="a JSON scope file (Spec §12.3: {\"dtypes\": [...], \"layouts\": [...], ...}, or the adapter's "
                        "hello reply) that replaces the adapter's declared scope")


def _vector_options(p: Any, suppress: bool, levels: list[str] = LEVEL_NAMES) -> None:
    p.add_argument("--level", action="append", choices=levels, default=_opt(suppress, None),
                   help="run only this level (repeatable; default: every level)")
    p.add_argument("--vectors", default=_opt(suppress, None), metavar="DIR",
                   help="vector directory (default: spec/vectors/v3 of the hogwild_ref checkout, or the copy its wheel ships)")


def _run_options(p: Any, suppress: bool) -> None:
    _adapter_options(p, suppress)
    _vector_options(p, suppress)
    p.add_argument("--json", action="store_true", default=_opt(suppress, False),
                   help='print {"version", "passed", "failed", "out_of_scope", "skipped", "not_run", "vectors": [...]} '
                        "as JSON instead of a table")
    p.add_argument("--regenerate", action="store_true", default=_opt(suppress, False),
                   help="first rewrite the vectors (of the selected levels) with the reference's oracles, then run")


def _add_conform(sub: Any) -> None:
    p = sub.add_parser(
        "conform",
        help="run the conformance vectors (Spec §12) against an implementation's adapter",
        description=(
            "Run the conformance vectors against an adapter; exit status 0 when every in-scope vector passed, 1 if "
            "any failed, 2 for usage errors. Subcommands: run (the default), export DIR, score DIR (offline, "
            "Spec §12.7), fuzz (differential testing with shrinking); `conform SUBCOMMAND --help` for each."
        ),
    )
    _run_options(p, suppress=False)
    actions = p.add_subparsers(dest="action", metavar="{run,export,score,fuzz}", parser_class=type(p))
    run = actions.add_parser("run", help="run the vectors against an adapter (the default)",
                             description="Run the conformance vectors against an adapter (Spec §12.6).")
    _run_options(run, suppress=True)
    export = actions.add_parser(
        "export", help="write the inputs of the vectors in scope for an offline run",
        description=("Write DIR/requests.jsonl (the hello line and one request per vector) and every vector's "
                     "inputs, DIR/<level>/<name>.inputs.safetensors, for the vectors of the chosen levels inside the "
                     "scope (Spec §12.7). Then: cd DIR && CMD < requests.jsonl > replies.jsonl; hogwild-ref conform "
                     "score DIR."))
    export.add_argument("dir", metavar="DIR", help="the exchange directory (created)")
    _vector_options(export, suppress=True)
    export.add_argument("--scope", default=argparse.SUPPRESS, metavar="FILE",
                        help="export only the vectors inside this scope (a scope object or the adapter's hello "
                             "reply, JSON; Spec §12.3); the others are reported out of scope by score")
    score = actions.add_parser(
        "score", help="score the outputs computed offline",
        description=("Score DIR/<level>/<name>.outputs.safetensors against the expected outputs like a live run "
                     "(Spec §12.7): the hello reply in DIR/replies.jsonl gives the levels and the scope, replies "
                     "with ok: false fail their vector, replies with skip skip it."))
    score.add_argument("dir", metavar="DIR", help="the exchange directory written by export")
    _vector_options(score, suppress=True)
    score.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the report as JSON")
    score.add_argument("--scope", default=argparse.SUPPRESS, metavar="FILE",
                       help="a JSON scope (or hello reply) that replaces the one in DIR/replies.jsonl, as for a live run")
    fuzz = actions.add_parser(
        "fuzz", help="differential testing against the reference, with shrinking",
        description=("Draw random cases (tables, layouts, W, zero-token rows, RoPE types, partial rotary, "
                     "conventions, GQA/MQA, dtypes within the declared scope), compare the adapter with the "
                     "reference's oracles, and on a mismatch shrink it to a minimal case and write it as a regular "
                     "vector (rerun with `conform --vectors DIR`)."))
    _adapter_options(fuzz, suppress=True)
    fuzz.add_argument("--level", action="append", choices=["rope", "attention"], default=argparse.SUPPRESS,
                      help="fuzz only this level (repeatable; default: both)")
    fuzz.add_argument("--examples", type=int, default=200, metavar="N", help="cases per level (default 200)")
    fuzz.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    fuzz.add_argument("--out", default="hogwild-fuzz", metavar="DIR",
                      help="where a shrunk failing case is written as a vector (default ./hogwild-fuzz)")


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _scope_arg(args: argparse.Namespace) -> tuple[list[str] | None, dict[str, list[str]] | None]:
    if getattr(args, "scope", None) is None:
        return None, None
    from ..conformance.scope import load_scope_file

    return load_scope_file(args.scope)


def _make_adapter(args: argparse.Namespace, levels: Any) -> tuple[Any, Any, str]:
    """The adapter of a run or fuzz: (adapter, process to close or None, name)."""
    from ..conformance import load_adapter

    name = args.adapter_cmd or args.adapter or "hogwild_ref.conformance:reference"
    if args.adapter_cmd is not None:
        from ..conformance.external import CommandAdapter

        if not 0 < args.adapter_timeout <= MAX_ADAPTER_TIMEOUT:  # nan fails this too
            raise ValueError(f"--adapter-timeout must be a number of seconds > 0 and <= {MAX_ADAPTER_TIMEOUT} "
                             f"(a week); got {args.adapter_timeout:g}")
        try:
            argv = shlex.split(args.adapter_cmd)
        except ValueError as exc:
            raise ValueError(f"--adapter-cmd {args.adapter_cmd!r} is not a valid command line: {exc}") from None
        adapter = CommandAdapter(argv, timeout=args.adapter_timeout, levels=levels)
        return adapter, adapter, name
    return load_adapter(name), None, name


def cmd_conform(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..conformance import generate_vectors, run
    from ..conformance.runner import default_vectors_dir

    action = args.action or "run"
    if action in ("export", "score") and (args.adapter or args.adapter_cmd):
        return _error(f"conform {action} takes no adapter: export writes the inputs, score reads the outputs in DIR")
    if action in ("export", "score") and not args.dir.strip():
        return _error(f"conform {action} needs a directory: give DIR (e.g. conform {action} hogwild-exchange)")
    if action in ("export", "score") and Path(args.dir).exists() and not Path(args.dir).is_dir():
        return _error(f"{args.dir} is a file; " + ("conform score reads the directory that conform export wrote"
                      if action == "score" else "conform export writes a directory: give a new or existing directory"))
    if args.level:  # a level given twice runs (and is exported, regenerated) once
        args.level = list(dict.fromkeys(args.level))
    if action == "fuzz":
        return cmd_fuzz(args)
    try:
        directory = Path(args.vectors) if args.vectors is not None else default_vectors_dir(
            must_exist=not getattr(args, "regenerate", False))
        scope_levels, scope = _scope_arg(args)
    except (FileNotFoundError, ValueError) as exc:
        return _error(str(exc))
    levels = args.level or scope_levels
    if getattr(args, "regenerate", False):
        written = generate_vectors(directory, args.level)
        print(f"wrote {len(written) // 2} vectors to {directory}", file=sys.stderr)
    if action == "export":
        from ..conformance.external import export_vectors

        exchange = Path(args.dir)  # an earlier run's files there would be read by score as this export's
        stale = (["replies.jsonl"] if (exchange / "replies.jsonl").is_file() else []) + \
            sorted({f"{p.parent.name}/*.outputs.safetensors" for p in exchange.glob("*/*.outputs.safetensors")})
        try:
            requests = export_vectors(args.dir, directory, levels, scope)
        except FileNotFoundError as exc:
            return _error(str(exc))
        if stale:  # score would read them as this export's answers
            print(f"warning: {args.dir} still holds files of an earlier run ({', '.join(stale)}); remove them before "
                  "running the adapter again, or score reads them as this export's answers", file=sys.stderr)
        print(f"exported {len(requests)} vectors to {args.dir}: requests.jsonl and <level>/<name>.inputs.safetensors; "
              f"write <level>/<name>.outputs.safetensors (cd {args.dir} && CMD < requests.jsonl > replies.jsonl), "
              f"then run `hogwild-ref conform score {args.dir}`", file=sys.stderr)
        return 0
    closer = None
    results: list[Any] = []
    try:
        if action == "score":
            from ..conformance.external import OutputsDirAdapter

            adapter: Any = OutputsDirAdapter(args.dir)
            name = f"outputs in {args.dir}"
        else:
            adapter, closer, name = _make_adapter(args, levels or tuple(LEVEL_NAMES))
        if scope is not None:  # --scope replaces the declared scope, offline as live (Spec §12.6)
            adapter = _Scoped(adapter, scope)
        # with --json, stdout carries the report only: what an in-process adapter prints goes to stderr
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            report = run(adapter, directory, levels, on_result=results.append)
    except FileNotFoundError as exc:
        return _error(str(exc))
    except KeyboardInterrupt:  # Ctrl-C (and SIGTERM, which the CLI maps to it): stop the adapter, keep what ran
        if closer is not None:
            closer.close(kill=True)
            closer = None
        if results:
            from ..conformance.report import Report
            from ..conformance.runner import not_reached

            rest = not_reached(directory, levels, results, "interrupted")
            partial = Report(results + rest, directory)
            print(f"interrupted: {len(rest)} of {len(partial.results)} vectors not run", file=sys.stderr)
            if args.json:
                write_out(json.dumps(partial.to_json_dict() | {"interrupted": True}), final=True)
            else:
                _print_conform_table(partial, f"{name} (interrupted)")
        raise
    finally:
        if closer is not None:
            closer.close()
    if args.json:
        write_out(json.dumps(report.to_json_dict()), final=True)
    else:
        _print_conform_table(report, name)
    if not report.failed and not report.passed:
        print(f"error: adapter {name!r} ran none of the vectors: every vector is out of scope, skipped or not run "
              "(levels: methods rope / attention / model, Spec §12.3); nothing was checked", file=sys.stderr)
        return 1
    return 1 if report.failed else 0


def cmd_fuzz(args: argparse.Namespace) -> int:
    """``conform fuzz``: differential testing with shrinking (Spec §12.8)."""
    import shlex

    try:
        import hypothesis  # noqa: F401
    except ImportError:
        return _error("conform fuzz needs hypothesis: pip install 'hogwild-ref[fuzz]' (or pip install hypothesis)")
    from ..conformance.fuzz import FUZZ_LEVELS, fuzz, table_summary

    if args.examples < 1:
        return _error(f"--examples must be >= 1; got {args.examples}")
    unusable = _unwritable_dir(args.out)
    if unusable:  # checked before fuzzing: a shrunk failing case must find its place
        return _error(f"--out {args.out}: {unusable}; give a directory a case can be written to")
    levels = list(dict.fromkeys(getattr(args, "level", None) or FUZZ_LEVELS))
    try:
        _, scope = _scope_arg(args)
        adapter, closer, name = _make_adapter(args, levels)
    except FileNotFoundError as exc:
        return _error(str(exc))
    status = 0
    try:
        for level in levels:
            result = fuzz(adapter, level, args.examples, args.seed, scope, args.out)
            if result.vector is None:
                note = f" ({result.note})" if result.note else ""
                stopped = bool(result.note) and not str(result.note).startswith("the adapter does not implement")
                verdict = f"stopped after {result.examples} cases" if stopped else f"no mismatch in {result.examples} cases"
                print(f"{level}: {verdict} (seed {args.seed}){note}", file=sys.stderr)
                status = 1 if stopped else status  # gone, or not reproducible: nothing reliable was learnt
                continue
            status = 1
            assert result.result is not None
            how = f"--adapter-cmd {shlex.quote(args.adapter_cmd)}" if args.adapter_cmd else f"--adapter {name}"
            message = (result.result.message or "").splitlines()
            where = (f"written to {result.path}\n  rerun: hogwild-ref conform --vectors {shlex.quote(args.out)} "
                     f"--level {level} {how}" if result.path is not None else
                     f"not written ({result.note}): rerun with --seed {args.seed} and an --out that can be written")
            print(f"{level}: {name} fails a case (seed {args.seed}, {result.examples} cases run); shrunk to "
                  f"{table_summary(result.vector)}: {result.result.failure}"
                  f"{', ' + message[0] if message else ''} (worst error {result.result.max_abs_err}, tolerance "
                  f"{result.result.tol:.2g})\n  {where}", file=sys.stderr)
    except KeyboardInterrupt:
        if closer is not None:
            closer.close(kill=True)
            closer = None
        raise
    finally:
        if closer is not None:
            closer.close()
    return status


def _unwritable_dir(path: str) -> str | None:
    """Why ``path`` cannot be (or become) a writable directory, or None; nothing is left behind."""
    import os
    import tempfile
    from pathlib import Path

    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            return "it is not a directory"
        return None if os.access(p, os.W_OK) else "it is not writable"
    parent = p.parent
    while not parent.exists():  # the folder it would be created in
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK):
        return f"{parent} is not writable"
    try:  # os.access says yes to root everywhere, /proc included: create a folder there, and remove it
        os.rmdir(tempfile.mkdtemp(prefix=".hogwild-probe-", dir=parent))
    except OSError as exc:
        return f"nothing can be created in {parent} ({exc.strerror or exc})"
    return None


class _Scoped:
    """An adapter whose declared scope is replaced by ``--scope FILE``."""

    def __init__(self, adapter: Any, scope: dict[str, list[str]]) -> None:
        self._adapter, self.scope = adapter, scope

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)


def _print_conform_table(report: Any, adapter: str) -> None:
    """One line per vector; a failure's note is its first line, shortened (the full text is in --json)."""
    from rich.table import Table
    from rich.text import Text

    rows = []
    for r in report.results:
        err = "-" if r.max_abs_err is None else f"{r.max_abs_err:.3e}"
        result = r.status.replace("_", " ") if r.failure is None else f"{r.status} ({r.failure})"
        note = r.message if r.message and r.status != "passed" else (r.worst or "")
        note = note.splitlines()[0] if note else ""
        note = note if len(note) <= 60 else note[:59] + "…"
        rows.append((r.name, r.level, result, err, f"{r.tol:.2g}", note, r.status))
    table = Table(title=Text(f"conformance of {adapter} ({report.vectors_dir})"))
    for i, (title, justify) in enumerate((("vector", "left"), ("level", "left"), ("result", "left"),
                                          ("error", "right"), ("tol", "right"))):
        width = max([len(title)] + [len(row[i]) for row in rows])
        table.add_column(title, justify=justify, no_wrap=True, min_width=width)  # type: ignore[arg-type]
    table.add_column("worst output / note", no_wrap=True, overflow="ellipsis")
    style = {"passed": "green", "failed": "bold red", "skipped": "yellow", "out_of_scope": "dim", "not_run": "magenta"}
    for name, level, result, err, tol, note, status in rows:
        # the adapter's messages and names as plain text (an error such as "index [x, y]" is not rich markup)
        table.add_row(Text(name), level, Text(result, style=style[status]), err, tol, Text(note))
    out = console(width=max(console().width, 150))
    out.print(table)
    out.print(f"{report.passed} passed, {report.failed} failed, {report.out_of_scope} out of scope, "
                  f"{report.skipped} skipped, {report.not_run} not run "
                  "(errors are max|out - expected| / max|expected|, Spec §10.1; rope tolerances grow with the "
                  "position, §10.4; --json has every output's error)")
