"""``hogwild-ref conform``: the conformance vectors against an adapter (Spec §12)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _add_conform(sub: Any) -> None:
    p = sub.add_parser(
        "conform",
        help="run the conformance vectors (Spec §12) against an implementation's adapter",
        description=(
            "Run the conformance vectors against an adapter; exit status 1 if any vector fails. "
            "`conform export DIR` writes every vector's inputs for offline runs, `conform score DIR` scores "
            "the outputs computed there (Spec §12.7)."
        ),
    )
    p.add_argument("action", nargs="?", choices=["run", "export", "score"], default="run",
                   help="run (default), export DIR (write the inputs) or score DIR (score outputs computed offline)")
    p.add_argument("dir", nargs="?", default=None, metavar="DIR", help="export/score: the exchange directory")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--adapter", default=None, metavar="MODULE:FACTORY",
                     help="import MODULE and call FACTORY() for the adapter (default: the reference, "
                          "hogwild_ref.conformance:reference)")
    who.add_argument("--adapter-cmd", default=None, metavar="CMD",
                     help='an adapter in another process: the command line that starts it (e.g. "python '
                          'examples/numpy_adapter.py"); it speaks the line protocol of Spec §12.7 on stdin/stdout')
    p.add_argument("--adapter-timeout", type=float, default=600.0, metavar="S",
                   help="--adapter-cmd: seconds to wait for each reply (default 600)")
    p.add_argument("--level", action="append", choices=["rope", "attention", "model"], default=None,
                   help="run only this level (repeatable; default: every level)")
    p.add_argument("--vectors", default=None, metavar="DIR",
                   help="vector directory (default: spec/vectors/v2 of the hogwild_ref checkout)")
    p.add_argument("--json", action="store_true",
                   help='print {"version", "passed", "failed", "skipped", "vectors": [...]} as JSON instead of a table')
    p.add_argument("--regenerate", action="store_true",
                   help="first rewrite the vectors (of the selected levels) with the reference's oracles, then run")


def cmd_conform(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..conformance import generate_vectors, load_adapter, run
    from ..conformance.runner import default_vectors_dir

    if args.action != "run" and args.dir is None:
        print(f"error: conform {args.action} needs a directory: hogwild-ref conform {args.action} DIR", file=sys.stderr)
        return 2
    if args.action != "run" and (args.adapter or args.adapter_cmd):
        print(f"error: conform {args.action} takes no adapter: export writes the inputs, score reads the outputs "
              f"in DIR", file=sys.stderr)
        return 2
    if args.action == "run" and args.dir is not None:
        print(f"error: unexpected argument {args.dir!r}; did you mean `conform export {args.dir}` or "
              f"`conform score {args.dir}`?", file=sys.stderr)
        return 2
    try:
        if args.vectors is not None:
            directory = Path(args.vectors)
        else:
            directory = default_vectors_dir(must_exist=not args.regenerate)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.regenerate:
        written = generate_vectors(directory, args.level)
        print(f"wrote {len(written) // 2} vectors to {directory}", file=sys.stderr)
    if args.action == "export":
        from ..conformance.external import export_vectors

        try:
            requests = export_vectors(args.dir, directory, args.level)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"exported {len(requests)} vectors to {args.dir}: requests.jsonl and <level>/<name>.inputs.safetensors; "
              f"write <level>/<name>.outputs.safetensors, then run `hogwild-ref conform score {args.dir}`",
              file=sys.stderr)
        return 0
    name = args.adapter_cmd or args.adapter or "hogwild_ref.conformance:reference"
    closer = None
    try:
        if args.action == "score":
            from ..conformance.external import OutputsDirAdapter

            adapter: Any = OutputsDirAdapter(args.dir)
            name = f"outputs in {args.dir}"
        elif args.adapter_cmd is not None:
            from ..conformance.external import CommandAdapter

            adapter = closer = CommandAdapter(args.adapter_cmd, timeout=args.adapter_timeout,
                                              levels=args.level or ("rope", "attention", "model"))
        else:
            adapter = load_adapter(name)
        report = run(adapter, directory, args.level)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if closer is not None:
            closer.close()
    if args.json:
        print(json.dumps(report.to_json_dict()))
    else:
        _print_conform_table(report, name)
    if not report.failed and not report.passed:
        print(f"error: adapter {name!r} implements none of the levels run "
              "(methods rope / attention / model, Spec §12.3); nothing was checked", file=sys.stderr)
        return 1
    return 1 if report.failed else 0


def _print_conform_table(report: Any, adapter: str) -> None:
    """One line per vector; a failure's note is its first line, shortened (the full text is in --json)."""
    from rich.console import Console
    from rich.table import Table

    rows = []
    for r in report.results:
        err = "-" if r.max_abs_err is None else f"{r.max_abs_err:.3e}"
        result = r.status if r.failure is None else f"{r.status} ({r.failure})"
        note = r.message if r.message and r.status != "passed" else (r.worst or "")
        note = note.splitlines()[0] if note else ""
        note = note if len(note) <= 60 else note[:59] + "…"
        rows.append((r.name, r.level, result, err, f"{r.tol:.2g}", note, r.status))
    table = Table(title=f"conformance of {adapter} ({report.vectors_dir})")
    for i, (title, justify) in enumerate((("vector", "left"), ("level", "left"), ("result", "left"),
                                          ("error", "right"), ("tol", "right"))):
        width = max([len(title)] + [len(row[i]) for row in rows])
        table.add_column(title, justify=justify, no_wrap=True, min_width=width)  # type: ignore[arg-type]
    table.add_column("worst output / note", no_wrap=True, overflow="ellipsis")
    style = {"passed": "green", "failed": "bold red", "skipped": "yellow"}
    for name, level, result, err, tol, note, status in rows:
        table.add_row(name, level, f"[{style[status]}]{result}[/]", err, tol, note)
    console = Console(width=max(Console().width, 150))
    console.print(table)
    console.print(f"{report.passed} passed, {report.failed} failed, {report.skipped} skipped "
                  "(errors are max|out - expected| / max|expected|, Spec §10.1; rope tolerances grow with the "
                  "position, §10.4; --json has every output's error)")

