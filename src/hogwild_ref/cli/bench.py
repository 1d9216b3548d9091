"""``hogwild-ref bench``: ticks against the plain decode step, one layer's attention, end-to-end ticks/s."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..settings import BACKENDS, DTYPES, LAYOUTS
from .signals import write_out
from .common import (_check_device, _check_memory, _check_model_source, _check_threads, _load, _model_shape, console,
                     table_console)


def _check_bench(args: argparse.Namespace, what: str) -> None:
    """Every bench flag before anything is built or loaded (Spec §11.7): counts, threads, device, and a model
    whose weights and K/V must exceed this machine's memory (refused with the numbers)."""
    from ..bench import MODEL_SHAPES, attention_bytes
    from ..checks import SettingsError, check_int, check_workers
    from ..limits import DTYPE_BYTES, check_budget, check_fits_memory, shape_from_config

    unused = [flag for flag, dest, _, users in SCOPED_FLAGS if getattr(args, dest) is not None and what not in users]
    if unused:
        users = sorted({u for flag, _, _, us in SCOPED_FLAGS if flag in unused for u in us if u != "all"})
        them = "them" if len(unused) > 1 else "it"
        raise SettingsError(f"bench {what} does not use {', '.join(unused)} (for bench {' and bench '.join(users)}); "
                            f"drop {them}, or run that benchmark")
    for _, dest, default, _ in SCOPED_FLAGS:  # the defaults of the flags this benchmark uses
        if getattr(args, dest) is None:
            setattr(args, dest, default)
    check_int("steps", args.steps, 1, cli=True, fix=" (timed ticks per case)")
    check_int("ticks", args.ticks, 1, cli=True, fix=" (ticks per engine run)")
    for ctx in args.contexts or ():
        check_int("contexts", ctx, 1, cli=True, fix=" (context lengths in tokens)")
    for w in args.workers or ():
        check_workers(w, cli=True)
    for p in args.problems or ():
        check_int("problems", p, 1, cli=True, fix=" (problems per batch)")
    _check_device(args.device)
    if what == "ticks":
        if args.split:
            _check_split(args)
        name = args.model or "smollm2-135m"
        if name in MODEL_SHAPES:
            shape = shape_from_config({k: v for k, v in MODEL_SHAPES[name].items() if k != "family"})
        else:
            _check_model_source(name)
            shape = _model_shape(name)
        # (positions past the model's own are not refused: a tick's time does not depend on them)
        reach = max(args.contexts or [1024, 4096]) + max(args.workers or [1, 2, 4, 8]) * 64
        if not _device(args).startswith("cuda"):  # CPU: the weights and the largest case's K/V live in its memory
            dtype = args.dtype or "float32"
            # every problem of the largest batch holds the largest case's K/V
            tokens = reach * max(args.problems or [1])
            fixes = (["smaller --contexts"] + (["fewer --problems"] if max(args.problems or [1]) > 1 else [])
                     + (["a smaller --model (smollm2-135m)"] if name != "smollm2-135m" else [])
                     + (["--dtype bfloat16"] if dtype == "float32" else []))
            _check_memory(shape, dtype, tokens, f"bench ticks --model {name} ({dtype}, {tokens} positions)",
                          f"choose {', '.join(fixes)}, or a machine with more memory")
    if what in ("attention", "all"):  # its tensors are sized by --contexts and the largest W alone
        cuda = _device(args).startswith("cuda")
        dtype = args.dtype or ("bfloat16" if cuda else "float32")
        ctx, w = max(args.contexts or [1024, 4096]), max(args.workers or [1, 2, 4])
        must = attention_bytes(ctx, w, dtype_bytes=DTYPE_BYTES.get(dtype, 4))
        free = None
        if cuda:  # the device's free memory
            import torch

            free = int(torch.cuda.mem_get_info(torch.device(_device(args)))[0])
        check_fits_memory(must, f"bench attention at --contexts {ctx} with {w} workers ({dtype})",
                          "choose smaller --contexts or fewer --workers, or a machine with more memory", free)
    if what in ("engine", "all"):
        _check_model_source(args.model)
        shape = _model_shape(args.model)
        # an engine run of W workers spends --ticks ticks: past the model's positions it cannot (Spec §11.7)
        check_budget(shape and shape.context, args.ticks, 1, False, flag="--ticks")
    _check_threads(args)


def _device(args: argparse.Namespace) -> str:
    """The device a benchmark runs on: ``--device``, else CUDA where there is one (as the run picks it)."""
    import torch

    return str(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _what(args: argparse.Namespace) -> str:
    """The benchmark: the positional name, or the older ``--what``; both, naming two, is refused."""
    from ..checks import SettingsError

    if args.what_flag and args.what and args.what != args.what_flag:
        raise SettingsError(f"bench {args.what} and --what {args.what_flag} name two benchmarks; give one "
                            f"(bench {args.what})")
    return str(args.what_flag or args.what or "all")


def _described(args: argparse.Namespace, **fields: Any) -> dict[str, Any]:
    """What a JSON result needs to be compared or rerun: hogwild_ref's version, the command, and ``fields``."""
    from .. import __version__

    return {"hogwild_ref": __version__, "command": getattr(args, "command_line", None)} | fields


def _check_split(args: argparse.Namespace) -> None:
    """``--split``: a known kernel, on eager ticks (a compiled step keeps the score-row path, Spec §9.6)."""
    import torch

    from ..checks import SettingsError
    from ..split import kernel_for

    try:
        kernel_for(args.split, "cpu")
    except ValueError as exc:
        raise SettingsError(f"--split: {exc}") from None
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if args.compile == "yes" or (args.compile == "auto" and cuda):
        raise SettingsError("--split times eager ticks (a compiled step keeps the score-row path): add --compile no")


#: (flag, dest, default, the benchmarks that use it): a flag given to another benchmark is refused, not
#: ignored; unset (None), it takes its default
SCOPED_FLAGS: tuple[tuple[str, str, Any, tuple[str, ...]], ...] = (
    ("--ticks", "ticks", 32, ("engine", "all")),
    ("--problems", "problems", [1], ("ticks",)),
    ("--steps", "steps", 10, ("ticks",)),
    ("--layout", "layout", "combined", ("ticks",)),
    ("--backend", "backend", "fast", ("ticks",)),
    ("--compile", "compile", "auto", ("ticks",)),
    ("--split", "split", False, ("ticks",)),
    ("--contexts", "contexts", None, ("ticks", "attention", "all")),
    ("--model", "model", None, ("ticks", "engine", "all")),
)


def _add_bench(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks: Hogwild ticks vs a plain decode step, one layer's attention, end-to-end ticks/s")
    p.add_argument("what", nargs="?", choices=["ticks", "attention", "engine", "all"], default=None,
                   help="ticks: s/tick vs HF's single-sequence decode step at the same context (the fast "
                        "path's benchmark); attention: one layer per backend; engine: end-to-end ticks/s; "
                        "all: attention and engine (default)")
    p.add_argument("--what", dest="what_flag", choices=["attention", "engine", "all"], default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--contexts", "--ctx", type=int, nargs="+", default=None,
                   help="context lengths (ticks: 1024 4096; attention: 1024 4096)")
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help="W values (ticks: 1 2 4 8; engine: 1 2 4; attention uses the largest)")
    p.add_argument("--ticks", type=int, default=None, help="engine: ticks per run (default 32)")
    p.add_argument("--problems", type=int, nargs="+", default=None, metavar="P",
                   help="ticks: problems per batch (P > 1: P problems side by side, compared with P one-problem runs)")
    p.add_argument("--steps", type=int, default=None, help="ticks: timed ticks per case (after 3 warm-up ticks; default 10)")
    p.add_argument("--layout", choices=LAYOUTS, default=None, help="ticks: layout (default combined)")
    p.add_argument("--backend", choices=[b for b in BACKENDS if b != "oracle"], default=None, help="ticks: backend (default fast)")
    p.add_argument("--compile", choices=["auto", "yes", "no"], default=None,
                   help="ticks: compile the fast path (auto, the default: on CUDA only)")
    p.add_argument("--split", nargs="?", const=True, default=None, metavar="KERNEL",
                   help="ticks: also time each one-problem case through the split common part (a fused kernel "
                        "with its LSE, merged by Spec §9.5), alternating with the score-row path on the same "
                        "storage; KERNEL: cpu_flash or flex (default: cpu_flash on CPU, flex on CUDA); eager "
                        "ticks only (--compile no)")
    p.add_argument("--model", default=None,
                   help="ticks: a random-weight shape (smollm2-135m, qwen2.5-7b, qwq-32b), 'embedded', or a "
                        "name/path (default smollm2-135m); engine: a model (default: the embedded SmolLM2)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="default: float32 on CPU, bfloat16 on CUDA (engine: float32)")
    p.add_argument("--device", default=None, help="default: cuda where there is one, else cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true",
                   help="print JSON: bench ticks one line per case, attention / engine / all one object")


def cmd_bench_ticks(args: argparse.Namespace) -> int:
    import dataclasses

    import torch
    from rich.text import Text

    from ..bench import MODEL_SHAPES, bench_ticks, random_model

    err = console(stderr=True)
    device = _device(args)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
    name = args.model or "smollm2-135m"
    with err.status(Text(f"building {name} ...")):
        if name in MODEL_SHAPES:
            model = random_model(name, dtype, device)
        else:
            args.dtype = str(dtype).removeprefix("torch.")
            args.model = None if name == "embedded" else name
            model, _ = _load(args)
    compile_: bool | str | None = {"auto": None, "yes": True, "no": False}[args.compile]
    if compile_ and device.startswith("cuda"):
        compile_ = "reduce-overhead"
    results: list[Any] = []
    described = _described(args, model=name, dtype=str(dtype).removeprefix("torch."), steps=args.steps)

    def measured(r: Any) -> None:  # --json: each case's line as soon as it is measured
        results.append(r)
        if args.json:
            write_out(json.dumps(dataclasses.asdict(r) | described))

    try:
        bench_ticks(model, workers=args.workers or [1, 2, 4, 8], contexts=args.contexts or [1024, 4096],
                    layout=args.layout, backend=args.backend, steps=args.steps, compile=compile_,
                    problems=args.problems, split=args.split, progress=lambda msg: err.log(msg, markup=False), on_result=measured)
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM: the cases measured so far are kept (printed)
        if results and not args.json:
            _print_ticks_table(results, name, args, interrupted=True)
        raise
    if not args.json:
        _print_ticks_table(results, name, args)
    return 0


def _print_ticks_table(results: list[Any], name: str, args: argparse.Namespace, interrupted: bool = False) -> None:
    """``bench ticks``' table, one row per case."""
    from rich.table import Table
    from rich.text import Text

    from ..bench import machine

    table = Table(title=Text(f"bench ticks: {name}, {args.layout}, {args.backend} — {machine()}"))
    batched = any(r.problems > 1 for r in results)
    split = any(r.split_s_per_tick is not None for r in results)
    columns = ("ctx", "W") + (("P", "tokens/s", "P runs alone", "batch/alone") if batched else ())
    columns += ("split s/tick", "split/score row") if split else ()
    for col in columns + ("s/tick", "HF step", "ratio", "compiled HF step", "ratio (compiled)", "floor", "tick/floor",
                          "HF/floor", "peak mem"):
        table.add_column(col, justify="right")
    for r in results:
        extra: tuple[str, ...] = (str(r.problems), f"{r.tokens_per_s:.1f}",
                 "-" if r.independent_s_per_tick is None else f"{r.independent_s_per_tick * 1e3:.1f} ms",
                 "-" if r.ratio_independent is None else f"{r.ratio_independent:.2f}x") if batched else ()
        if split:
            extra += ("-", "-") if r.split_s_per_tick is None or r.ratio_split is None else (
                f"{r.split_s_per_tick * 1e3:.1f} ms ({r.split_kernel})", f"{r.ratio_split:.2f}x")
        table.add_row(str(r.ctx), str(r.workers), *extra, f"{r.s_per_tick * 1e3:.1f} ms", f"{r.baseline_s_per_step * 1e3:.1f} ms",
                      f"{r.ratio:.2f}x", "-" if r.compiled_baseline_s_per_step is None else f"{r.compiled_baseline_s_per_step * 1e3:.1f} ms",
                      "-" if r.ratio_compiled is None else f"{r.ratio_compiled:.2f}x", f"{r.floor_s * 1e3:.1f} ms",
                      f"{r.ratio_floor:.2f}x", f"{r.baseline_ratio_floor:.2f}x", f"{r.peak_mem_bytes / 2**20:.0f} MiB")
    out = table_console(table)
    out.print(table)
    if results:
        out.print(f"floor = (weights {results[0].weight_bytes / 2**20:.0f} MiB + K/V read per tick) / read bandwidth "
                  f"{results[0].bandwidth / 1e9:.1f} GB/s, measured in this run")
    if interrupted:
        out.print(INTERRUPTED)


#: the last line of a table cut short by Ctrl-C or SIGTERM (on stdout, with the rows it has)
INTERRUPTED = "interrupted: only the cases above finished"


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from ..bench import as_rows, bench_attention, bench_engine

    what = _what(args)
    _check_bench(args, what)
    if args.threads:
        torch.set_num_threads(args.threads)
    if what == "ticks":
        return cmd_bench_ticks(args)
    out = console()
    rows: list[dict[str, Any]] = []
    workers = args.workers or [1, 2, 4]
    described = _described(args)
    try:
        if what in ("attention", "all"):
            device = _device(args)
            dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
            with out.status("attention ..."):
                bench_attention(args.contexts or [1024, 4096], max(workers), dtype=getattr(torch, dtype), device=device,
                                on_result=lambda r: rows.extend({"bench": "attention", "dtype": dtype} | x
                                                                for x in as_rows([r])))
        if what in ("engine", "all"):
            args.dtype = args.dtype or "float32"
            with out.status("loading model ..."):
                model, tokenizer = _load(args)
            described |= {"model": args.model or "SmolLM2-135M-Instruct (embedded GGUF)"}
            with out.status("engine ..."):  # each W's row as it is measured: an interruption keeps those done
                bench_engine(model, tokenizer, workers, args.ticks,
                             on_result=lambda r: rows.extend({"bench": "engine", "dtype": args.dtype} | x
                                                             for x in as_rows([r])))
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM: the parts that finished are kept (printed), then "interrupted"
        if rows:
            _print_rows(out, rows, args.json, described, interrupted=True)
        raise
    _print_rows(out, rows, args.json, described)
    return 0


def _print_rows(out: Any, rows: list[dict[str, Any]], as_json: bool, described: dict[str, Any],
                interrupted: bool = False) -> None:
    """The attention / engine results: one JSON object, or a table per benchmark."""
    from rich.table import Table

    from ..bench import machine

    if as_json:
        write_out(json.dumps({"machine": machine()} | described | {"results": rows}
                             | ({"interrupted": True} if interrupted else {})), final=True)
        return
    out.print(f"machine: {machine()}")
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
        table_console(table).print(table)
    if interrupted:
        out.print(INTERRUPTED)
