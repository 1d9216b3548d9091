"""Command line: ``hogwild-ref generate | bench | conform``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn, Sequence

DEFAULT_PROBLEM = (
    "A shop sells pencils at 3 dollars each and notebooks at 5 dollars each. "
    "Sam buys 4 pencils and 2 notebooks. How much does Sam pay in total?"
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <problem> (see <prog> --help)``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _add_generate(sub: Any) -> None:
    p = sub.add_parser("generate", help="Hogwild generation with W workers over one shared cache")
    p.add_argument("problem", nargs="?", default=DEFAULT_PROBLEM, help="the problem (default: a small arithmetic problem)")
    p.add_argument("--workers", "-w", type=int, default=2, help="number of workers W >= 1 (default 2)")
    p.add_argument("--layout", choices=["contiguous", "interleaved", "combined"], default="combined")
    p.add_argument("--max-ticks", type=int, default=256,
                   help="budget in ticks (batched forward passes), the paper's budget (default 256)")
    p.add_argument("--max-steps", type=int, default=None, help="deprecated name of --max-ticks")
    p.add_argument("--model", default=None, help="HF id, local directory or .gguf path (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--backend", choices=["rotate_queries", "rotate_keys", "oracle"], default="rotate_queries")
    p.add_argument("--collab-every", type=int, default=1024, help="tokens between collaboration prompts (0 disables)")
    p.add_argument("--no-finisher", action="store_true", help="do not force an answer when the budget ends")
    p.add_argument("--finisher-tokens", type=int, default=24, help="most tokens the finisher decodes (default 24)")
    p.add_argument("--snapshots", type=int, nargs="+", default=[], metavar="TICK",
                   help="record the state at these tick counts (within the budget)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--allow-untested", action="store_true",
                   help="run a family outside the tested ones once the compatibility proof on the model passes")
    p.add_argument("--prompts", choices=["default", "compact"], default="default",
                   help="prompt templates: default, or compact (short, for ~100M-parameter models)")
    p.add_argument("--prompts-file", default=None, metavar="PATH",
                   help="TOML or JSON file of prompt templates (fields of PromptTemplates) overriding --prompts")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the live view")


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch

    from . import models

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if getattr(args, "allow_untested", False):
        return models.load(args.model, getattr(torch, args.dtype), device, allow_untested=True)
    return models.load(args.model, getattr(torch, args.dtype), device)


def _check_device(device: str | None) -> None:
    """Refuse a device torch does not know or this machine does not have, before loading."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a torch device; use cpu, cuda, cuda:0, mps, ...") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available on this machine; use --device cpu")


def _generate_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Check every generate flag before anything loads (Spec §11.7); return generate()'s keywords."""
    from .checks import check_int, check_settings
    from .prompts import PRESETS, load_templates

    if args.max_steps is not None:
        args.max_ticks = args.max_steps
    if args.collab_every is not None and args.collab_every < 0:
        raise ValueError(f"--collab-every must be >= 0 (0 disables the collaboration prompt); got {args.collab_every}")
    check_settings(problem=args.problem, workers=args.workers, layout=args.layout, backend=args.backend,
                   max_ticks=args.max_ticks, snapshots=args.snapshots, finisher_tokens=args.finisher_tokens,
                   collab_every=args.collab_every or None, seed=args.seed, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, cli=True)
    if args.threads is not None:
        check_int("threads", args.threads, 1, cli=True)
    _check_device(args.device)
    if args.model not in (None, "default", "smollm2"):
        from .models import resolve_source

        resolve_source(args.model)
    if args.max_steps is not None:
        print("warning: --max-steps is deprecated, use --max-ticks (the budget counts ticks)", file=sys.stderr)
    templates = PRESETS[args.prompts]()
    if args.prompts_file is not None:
        templates = load_templates(args.prompts_file, templates)
    return dict(
        workers=args.workers,
        layout=args.layout,
        max_ticks=args.max_ticks,
        backend=args.backend,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        seed=args.seed,
        snapshots=tuple(args.snapshots),
        collab_every=args.collab_every or None,
        finisher=not args.no_finisher,
        finisher_tokens=args.finisher_tokens,
        allow_untested=args.allow_untested,
        model_name=args.model or "SmolLM2-135M-Instruct (embedded GGUF)",
        templates=templates,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    import warnings

    from rich.console import Console

    from .checks import ContextLengthWarning
    from .engine import GenerationInterrupted, generate
    from .live import LiveView

    kwargs = _generate_settings(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    console = Console(stderr=args.json)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # keep stderr to our own lines (errors, warnings)
    hf_logging.disable_progress_bar()
    with console.status("loading model ..."):
        model, tokenizer = _load(args)
    view = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", ContextLengthWarning)
            warnings.showwarning = _show_warning
            if args.json:
                result = generate(model, tokenizer, args.problem, **kwargs)
            else:
                view = LiveView(console, args.workers, args.max_ticks, args.problem)
                with view:
                    result = generate(model, tokenizer, args.problem, on_event=view.on_event, **kwargs)
    except GenerationInterrupted as exc:
        if exc.result is None:
            print("interrupted before generation started", file=sys.stderr)
            return 130
        if args.json:
            print(json.dumps(exc.result.to_json_dict()))
        else:
            _print_partial(console, exc.result)
        print("interrupted: the partial result is above (reason: interrupted)", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result.to_json_dict()))
        return 0
    assert view is not None
    view.summary(result)
    return 0


def _show_warning(message: Any, *args: Any, **kwargs: Any) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _print_partial(console: Any, result: Any) -> None:
    """Ctrl-C in the live view: the history and what every worker wrote, then the summary."""
    from rich.panel import Panel
    from rich.text import Text

    from .live import LiveView

    console.print(Panel(Text(result.history_text or "(no finished steps)"), title="shared history (interrupted)"))
    for w in result.workers:
        console.print(Panel(Text(w.text or "(nothing yet)"), title=f"{w.name} (interrupted)"))
    LiveView(console, len(result.workers), max(result.ticks, 1), "").summary(result)


def _add_conform(sub: Any) -> None:
    p = sub.add_parser(
        "conform",
        help="run the conformance vectors (Spec §12) against an implementation's adapter",
        description="Run the conformance vectors against an adapter; exit status 1 if any vector fails.",
    )
    p.add_argument("--adapter", default="hogwild_ref.conformance:reference", metavar="MODULE:FACTORY",
                   help="import MODULE and call FACTORY() for the adapter (default: the reference, "
                        "hogwild_ref.conformance:reference)")
    p.add_argument("--level", action="append", choices=["rope", "attention", "model"], default=None,
                   help="run only this level (repeatable; default: every level)")
    p.add_argument("--vectors", default=None, metavar="DIR",
                   help="vector directory (default: spec/vectors/v1 of the hogwild_ref checkout)")
    p.add_argument("--json", action="store_true",
                   help='print {"passed", "failed", "skipped", "vectors": [...]} as JSON instead of a table')
    p.add_argument("--regenerate", action="store_true",
                   help="first rewrite the vectors (of the selected levels) with the reference's oracles, then run")


def cmd_conform(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .conformance import generate_vectors, load_adapter, run
    from .conformance.runner import default_vectors_dir

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
    adapter = load_adapter(args.adapter)
    try:
        report = run(adapter, directory, args.level)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json_dict()))
    else:
        _print_conform_table(report, args.adapter)
    if not report.failed and not report.passed:
        print(f"error: adapter {args.adapter!r} implements none of the levels run "
              "(methods rope / attention / model, Spec §12.3); nothing was checked", file=sys.stderr)
        return 1
    return 1 if report.failed else 0


def _print_conform_table(report: Any, adapter: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"conformance of {adapter} ({report.vectors_dir})")
    table.add_column("vector", no_wrap=True)
    table.add_column("level")
    table.add_column("result")
    table.add_column("error", justify="right")
    table.add_column("tol", justify="right")
    table.add_column("worst output / note", overflow="fold", min_width=12)
    style = {"passed": "green", "failed": "bold red", "skipped": "yellow"}
    for r in report.results:
        err = "-" if r.max_abs_err is None else f"{r.max_abs_err:.3e}"
        note = r.message if r.message else (r.worst or "")
        table.add_row(r.name, r.level, f"[{style[r.status]}]{r.status}[/]", err, f"{r.tol:.0e}", note)
    console = Console()
    console.print(table)
    console.print(f"{report.passed} passed, {report.failed} failed, {report.skipped} skipped "
                  "(errors are max|out - expected| / max|expected|, Spec §10.1)")


def _add_bench(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks: one layer's attention per backend, and end-to-end ticks/s")
    p.add_argument("--what", choices=["attention", "engine", "all"], default="all")
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096], help="attention: history lengths")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="engine: W values (attention uses the largest)")
    p.add_argument("--ticks", type=int, default=32, help="engine: ticks per run")
    p.add_argument("--model", default=None, help="engine: model (default: the embedded SmolLM2)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="default: float32 for the engine; attention: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print JSON lines")


def cmd_bench(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from .bench import as_rows, bench_attention, bench_engine, machine

    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    rows: list[dict[str, Any]] = []
    if args.what in ("attention", "all"):
        with console.status("attention ..."):
            dtype = getattr(torch, args.dtype) if args.dtype else None
            rows += [{"bench": "attention"} | r for r in as_rows(
                bench_attention(args.contexts, max(args.workers), dtype=dtype, device=args.device))]
    if args.what in ("engine", "all"):
        args.dtype = args.dtype or "float32"
        with console.status("loading model ..."):
            model, tokenizer = _load(args)
        with console.status("engine ..."):
            rows += [{"bench": "engine"} | r for r in as_rows(bench_engine(model, tokenizer, args.workers, args.ticks))]
    if args.json:
        print(json.dumps({"machine": machine(), "results": rows}))
        return 0
    console.print(f"machine: {machine()}")
    for kind in ("attention", "engine"):
        sel = [r for r in rows if r["bench"] == kind]
        if not sel:
            continue
        table = Table(title=kind)
        for key in sel[0]:
            if key != "bench":
                table.add_column(key)
        for r in sel:
            table.add_row(*(f"{v:.3g}" if isinstance(v, float) else str(v) for k, v in r.items() if k != "bench"))
        console.print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from . import __version__

    parser = _Parser(prog="hogwild-ref", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hogwild-ref {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_generate(sub)
    _add_conform(sub)
    _add_bench(sub)
    args = parser.parse_args(argv)
    handlers = {"bench": cmd_bench, "conform": cmd_conform, "generate": cmd_generate}
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


if __name__ == "__main__":
    sys.exit(main())
