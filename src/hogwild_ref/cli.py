"""Command line: ``hogwild-ref generate | bench | conform | eval``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn, Sequence

from .settings import BACKENDS, DTYPES, LAYOUTS

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
    p.add_argument("--layout", choices=LAYOUTS, default="combined")
    p.add_argument("--max-ticks", type=int, default=256,
                   help="budget in ticks (batched forward passes), the paper's budget (default 256)")
    p.add_argument("--max-steps", type=int, default=None, help="deprecated name of --max-ticks")
    p.add_argument("--model", default=None, help="HF id, local directory or .gguf path (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--backend", choices=BACKENDS, default="fast",
                   help="attention method (Spec §9): fast (default), rotate_queries, rotate_keys, or the slow oracle")
    p.add_argument("--collab-every", type=int, default=1024, help="tokens between collaboration prompts (0 disables)")
    p.add_argument("--no-finisher", action="store_true", help="do not force an answer when the budget ends")
    p.add_argument("--finisher-tokens", type=int, default=24, help="most tokens the finisher decodes (default 24)")
    p.add_argument("--snapshots", type=int, nargs="+", default=[], metavar="TICK",
                   help="record the state at these tick counts (within the budget)")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
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
    from .checks import check_int, check_problem
    from .prompts import PRESETS, load_templates
    from .settings import Settings

    if args.max_steps is not None:
        args.max_ticks = args.max_steps
    if args.collab_every is not None and args.collab_every < 0:
        raise ValueError(f"--collab-every must be >= 0 (0 disables the collaboration prompt); got {args.collab_every}")
    check_problem(args.problem)
    settings = Settings.from_flags(
        workers=args.workers, layout=args.layout, backend=args.backend, max_ticks=args.max_ticks, seed=args.seed,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        snapshots=tuple(args.snapshots), collab_every=args.collab_every or None, finisher=not args.no_finisher,
        finisher_tokens=args.finisher_tokens,
    )
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
        settings=settings,
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

    from .conformance import generate_vectors, load_adapter, run
    from .conformance.runner import default_vectors_dir

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
        from .conformance.external import export_vectors

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
            from .conformance.external import OutputsDirAdapter

            adapter: Any = OutputsDirAdapter(args.dir)
            name = f"outputs in {args.dir}"
        elif args.adapter_cmd is not None:
            from .conformance.external import CommandAdapter

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


def _add_bench(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks: Hogwild ticks vs a plain decode step, one layer's attention, end-to-end ticks/s")
    p.add_argument("what", nargs="?", choices=["ticks", "attention", "engine", "all"], default="all",
                   help="ticks: s/tick vs HF's single-sequence decode step at the same context (the fast "
                        "path's benchmark); attention: one layer per backend; engine: end-to-end ticks/s; "
                        "all: attention and engine (default)")
    p.add_argument("--what", dest="what_flag", choices=["attention", "engine", "all"], default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--contexts", "--ctx", type=int, nargs="+", default=None,
                   help="context lengths (ticks: 1024 4096; attention: 1024 4096)")
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help="W values (ticks: 1 2 4 8; engine: 1 2 4; attention uses the largest)")
    p.add_argument("--ticks", type=int, default=32, help="engine: ticks per run")
    p.add_argument("--steps", type=int, default=10, help="ticks: timed ticks per case (after 3 warm-up ticks)")
    p.add_argument("--layout", choices=LAYOUTS, default="combined", help="ticks: layout")
    p.add_argument("--backend", choices=[b for b in BACKENDS if b != "oracle"], default="fast", help="ticks: backend")
    p.add_argument("--compile", choices=["auto", "yes", "no"], default="auto",
                   help="ticks: compile the fast path (auto: on CUDA only)")
    p.add_argument("--model", default=None,
                   help="ticks: a random-weight shape (smollm2-135m, qwen2.5-7b, qwq-32b), 'embedded', or a "
                        "name/path (default smollm2-135m); engine: a model (default: the embedded SmolLM2)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="default: float32 on CPU, bfloat16 on CUDA (engine: float32)")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print JSON lines")


def cmd_bench_ticks(args: argparse.Namespace) -> int:
    import dataclasses

    import torch
    from rich.console import Console
    from rich.table import Table

    from .bench import MODEL_SHAPES, bench_ticks, machine, random_model

    err = Console(stderr=True)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
    name = args.model or "smollm2-135m"
    with err.status(f"building {name} ..."):
        if name in MODEL_SHAPES:
            model = random_model(name, dtype, device)
        else:
            args.dtype = str(dtype).removeprefix("torch.")
            args.model = None if name == "embedded" else name
            model, _ = _load(args)
    compile_: bool | str | None = {"auto": None, "yes": True, "no": False}[args.compile]
    if compile_ and device.startswith("cuda"):
        compile_ = "reduce-overhead"
    results = bench_ticks(model, workers=args.workers or [1, 2, 4, 8], contexts=args.contexts or [1024, 4096],
                          layout=args.layout, backend=args.backend, steps=args.steps, compile=compile_,
                          progress=lambda msg: err.log(msg))
    if args.json:
        for r in results:
            print(json.dumps(dataclasses.asdict(r)), flush=True)
        return 0
    table = Table(title=f"bench ticks: {name}, {args.layout}, {args.backend} — {machine()}")
    for col in ("ctx", "W", "s/tick", "HF step", "ratio", "compiled HF step", "ratio (compiled)", "floor", "tick/floor",
                "HF/floor", "peak mem"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(str(r.ctx), str(r.workers), f"{r.s_per_tick * 1e3:.1f} ms", f"{r.baseline_s_per_step * 1e3:.1f} ms",
                      f"{r.ratio:.2f}x", "-" if r.compiled_baseline_s_per_step is None else f"{r.compiled_baseline_s_per_step * 1e3:.1f} ms",
                      "-" if r.ratio_compiled is None else f"{r.ratio_compiled:.2f}x", f"{r.floor_s * 1e3:.1f} ms",
                      f"{r.ratio_floor:.2f}x", f"{r.baseline_ratio_floor:.2f}x", f"{r.peak_mem_bytes / 2**20:.0f} MiB")
    Console().print(table)
    if results:
        Console().print(f"floor = (weights {results[0].weight_bytes / 2**20:.0f} MiB + K/V read per tick) / read bandwidth "
                        f"{results[0].bandwidth / 1e9:.1f} GB/s, measured in this run")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from .bench import as_rows, bench_attention, bench_engine, machine

    if args.threads:
        torch.set_num_threads(args.threads)
    what = args.what_flag or args.what
    if what == "ticks":
        return cmd_bench_ticks(args)
    console = Console()
    rows: list[dict[str, Any]] = []
    workers = args.workers or [1, 2, 4]
    if what in ("attention", "all"):
        with console.status("attention ..."):
            dtype = getattr(torch, args.dtype) if args.dtype else None
            rows += [{"bench": "attention"} | r for r in as_rows(
                bench_attention(args.contexts or [1024, 4096], max(workers), dtype=dtype, device=args.device))]
    if what in ("engine", "all"):
        args.dtype = args.dtype or "float32"
        with console.status("loading model ..."):
            model, tokenizer = _load(args)
        with console.status("engine ..."):
            rows += [{"bench": "engine"} | r for r in as_rows(bench_engine(model, tokenizer, workers, args.ticks))]
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


def _add_eval(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="accuracy against the forward-pass budget (Hogwild, 1-worker and self-consistency baselines)",
        description="Evaluate on a dataset: one Hogwild run per (problem, workers, seed), answers at every budget "
                    "by the finisher (Spec §13). Writes results.jsonl (resumable), summary.md/json and accuracy.png/svg.",
    )
    p.add_argument("--dataset", default="builtin:arith", help="FILE.jsonl / FILE.json, or builtin:arith (default) / builtin:arith-K")
    p.add_argument("--workers", "-w", type=int, nargs="+", default=[1, 2, 4], help="worker counts (1, the baseline, is always added)")
    p.add_argument("--budgets", type=int, nargs="+", default=[256, 512, 1024], help="budgets in ticks (forward passes)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--limit", type=int, default=None, help="first N problems of the dataset")
    p.add_argument("--layout", choices=LAYOUTS, default="combined")
    p.add_argument("--model", default=None, help="HF id, local directory or .gguf path (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--out", default=None, help="output directory (default: eval-out/<dataset>); rerun to resume")
    p.add_argument("--batch", type=int, default=4, help="problems per forward pass (1: one at a time; default 4)")
    p.add_argument("--no-self-consistency", action="store_true", help="skip the self-consistency baseline")
    p.add_argument("--sc-temperature", type=float, default=0.6, help="sampling temperature of self-consistency samples")
    p.add_argument("--temperature", type=float, default=0.0, help="Hogwild sampling temperature (0, the default, is greedy)")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--collab-every", type=int, default=1024, help="tokens between collaboration prompts (0 disables)")
    p.add_argument("--finisher-tokens", type=int, default=24, help="most tokens the finisher decodes at each budget")
    p.add_argument("--prompts", choices=["default", "compact"], default="default")
    p.add_argument("--backend", choices=BACKENDS, default="fast")
    p.add_argument("--retry-errors", action="store_true", help="rerun units whose rows recorded an error")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--allow-untested", action="store_true", help="try a model family outside the tested ones")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_eval(args: argparse.Namespace) -> int:
    import re
    from pathlib import Path

    from rich.console import Console

    from .evaluation import EvalConfig, run_eval

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model_name = args.model or "SmolLM2-135M-Instruct (embedded GGUF)"
    cfg = EvalConfig(
        dataset=args.dataset, workers=tuple(args.workers), budgets=tuple(args.budgets), seeds=tuple(args.seeds),
        limit=args.limit, layout=args.layout, backend=args.backend, prompts=args.prompts, temperature=args.temperature,
        top_p=args.top_p, self_consistency=not args.no_self_consistency, sc_temperature=args.sc_temperature,
        collab_every=args.collab_every or None, finisher_tokens=args.finisher_tokens, batch=args.batch,
        retry_errors=args.retry_errors, model=f"{model_name} [{args.dtype}]", allow_untested=args.allow_untested,
    )
    out = Path(args.out) if args.out else Path("eval-out") / re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(args.dataset).stem)
    console = Console(stderr=True)
    with console.status("loading model ..."):
        model, tokenizer = _load(args)
    report = run_eval(model, tokenizer, cfg, out, progress=not args.no_progress, console=console)
    console.print(f"{report.problems} problems x {len(cfg.seeds)} seeds: {report.ran_units} units run, "
                  f"{report.skipped_units} already in {report.files['results']}")
    print(report.files["summary_md"].read_text(encoding="utf-8"))  # plain Markdown: any terminal width, copy-pasteable
    for name, path in report.files.items():
        console.print(f"{name}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from . import __version__

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


if __name__ == "__main__":
    sys.exit(main())
