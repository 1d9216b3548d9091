"""``hogwild-ref generate``: one Hogwild run with the live view (or ``--json``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..settings import BACKENDS, DTYPES, LAYOUTS
from .signals import write_out
from .common import (_check_collab_every, _check_device, _check_memory, _check_model_source, _check_placement, _check_threads,
                     _load, _model_shape, console)

DEFAULT_PROBLEM = (
    "A shop sells pencils at 3 dollars each and notebooks at 5 dollars each. "
    "Sam buys 4 pencils and 2 notebooks. How much does Sam pay in total?"
)


def _add_generate(sub: Any) -> None:
    p = sub.add_parser("generate", help="Hogwild generation with W workers over one shared cache")
    p.add_argument("problem", nargs="?", default=DEFAULT_PROBLEM, help="the problem (default: a small arithmetic problem)")
    p.add_argument("--workers", "-w", type=int, default=2, help="number of workers W >= 1 (default 2)")
    p.add_argument("--layout", choices=LAYOUTS, default="combined")
    p.add_argument("--max-ticks", type=int, default=None,
                   help="budget in ticks (batched forward passes), the paper's budget (default 256; 0: the finisher answers at once, Spec §6.5)")
    p.add_argument("--max-steps", type=int, default=None, help="deprecated name of --max-ticks")
    p.add_argument("--model", default=None, help="HF id, local directory or .gguf path (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (with --temperature; Spec §11.5)")
    p.add_argument("--top-p", type=float, default=None, help="keep the smallest set of tokens reaching probability p, in (0, 1]")
    p.add_argument("--min-p", type=float, default=None,
                   help="drop tokens below min-p times the most likely one's probability, in [0, 1)")
    p.add_argument("--backend", choices=BACKENDS, default="fast",
                   help="attention method (Spec §9): fast (default), rotate_queries, rotate_keys, or the slow oracle")
    p.add_argument("--collab-every", type=int, default=1024, help="tokens between collaboration prompts (0 disables)")
    p.add_argument("--no-finisher", action="store_true", help="do not force an answer when the budget ends")
    p.add_argument("--finisher-tokens", type=int, default=24, help="most tokens the finisher decodes (default 24)")
    p.add_argument("--snapshots", type=int, nargs="+", default=[], metavar="TICK",
                   help="record the state at these tick counts (within the budget)")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--device-map", default=None, metavar="MAP",
                   help="spread the layers over this process's devices: auto, balanced, sequential or a JSON object "
                        "of module name -> device (docs: Several devices)")
    p.add_argument("--tp-plan", choices=["auto"], default=None,
                   help="split every layer's heads over the processes of a torchrun launch (transformers' plan)")
    p.add_argument("--allow-untested", action="store_true",
                   help="run a family outside the tested ones once the compatibility proof on the model passes")
    p.add_argument("--prompts", choices=["default", "compact"], default="default",
                   help="prompt templates: default, or compact (short, for ~100M-parameter models)")
    p.add_argument("--prompts-file", default=None, metavar="PATH",
                   help="TOML or JSON file of prompt templates (fields of PromptTemplates) overriding --prompts")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core, fewer on a busy machine, with a note)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the live view")



def _generate_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Check every generate flag before anything loads (Spec §11.7); return generate()'s keywords."""
    from ..checks import check_int, check_problem
    from ..models import EMBEDDED_NAMES
    from ..limits import check_budget, check_prompts_file_size, check_threads
    from ..prompts import PRESETS, load_templates
    from ..settings import Settings

    if args.max_steps is not None and args.max_ticks is not None:
        raise ValueError("--max-steps is the deprecated name of --max-ticks; give --max-ticks only")
    if args.max_steps is not None:
        args.max_ticks = args.max_steps
    elif args.max_ticks is None:
        args.max_ticks = 256
    _check_collab_every(args.collab_every)
    check_problem(args.problem)
    settings = Settings.from_flags(
        workers=args.workers, layout=args.layout, backend=args.backend, max_ticks=args.max_ticks, seed=args.seed,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        snapshots=tuple(args.snapshots), collab_every=args.collab_every or None, finisher=not args.no_finisher,
        finisher_tokens=args.finisher_tokens,
    )
    if args.threads is not None:
        check_int("threads", args.threads, 1, cli=True)
        check_threads(args.threads)
    _check_device(args.device)
    _check_placement(args)
    _check_model_source(args.model)
    shape = _model_shape(args.model)
    check_budget(shape and shape.context, settings.max_ticks, settings.finisher_tokens, settings.finisher,
                 workers=settings.workers)
    _check_memory(shape, args.dtype, 0, f"--model {args.model or 'the embedded model'} "
                  f"({args.dtype})", "use a smaller model or --dtype bfloat16")
    if args.max_steps is not None:
        print("warning: --max-steps is deprecated, use --max-ticks (the budget counts ticks)", file=sys.stderr)
    templates = PRESETS[args.prompts]()
    if args.prompts_file is not None:
        check_prompts_file_size(args.prompts_file)
        templates = load_templates(args.prompts_file, templates)
    _check_threads(args)
    return dict(
        settings=settings,
        allow_untested=args.allow_untested,
        model_name="SmolLM2-135M-Instruct (embedded GGUF)" if args.model in EMBEDDED_NAMES else args.model,
        templates=templates,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    import warnings

    from ..checks import ContextLengthWarning, flag_names
    from ..engine import GenerationInterrupted, generate
    from ..live import LiveView
    from ..parallel import is_main_process

    kwargs = _generate_settings(args)
    if not is_main_process():  # tensor parallel: every rank runs, rank 0 prints (errors: every rank, on stderr)
        args.json, quiet = True, True
    else:
        quiet = False
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = console(stderr=args.json, quiet=quiet)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # keep stderr to our own lines (errors, warnings)
    with out.status("loading model ..."):
        model, tokenizer = _load(args)
    view = None
    try:
        with warnings.catch_warnings(), flag_names():  # the warnings name --max-ticks, not max_ticks
            warnings.simplefilter("always", ContextLengthWarning)  # one line each (cli._run's show_warning)
            if args.json:
                result = generate(model, tokenizer, args.problem, **kwargs)
            else:
                view = LiveView(out, args.workers, args.max_ticks, args.problem)
                with view:
                    result = generate(model, tokenizer, args.problem, on_event=view.on_event, **kwargs)
    except GenerationInterrupted as exc:
        if quiet:  # tensor parallel: rank 0 prints the partial result, the other ranks end quietly
            return 130
        if exc.result is None:
            print("interrupted before generation started", file=sys.stderr)
            return 130
        if args.json:
            write_out(json.dumps(exc.result.to_json_dict()), final=True)
        else:
            _print_partial(out, exc.result)
        print("interrupted: the partial result is above (reason: interrupted)", file=sys.stderr)
        return 130
    if args.json:
        if not quiet:
            write_out(json.dumps(result.to_json_dict()), final=True)
        return 0
    assert view is not None
    view.summary(result)
    return 0


def _print_partial(console: Any, result: Any) -> None:
    """Ctrl-C in the live view: the history and what every worker wrote, then the summary."""
    from rich.panel import Panel
    from rich.text import Text

    from ..live import LiveView

    console.print(Panel(Text(result.history_text or "(no finished steps)"), title="shared history (interrupted)"))
    for w in result.workers:
        console.print(Panel(Text(w.text or "(nothing yet)"), title=Text(f"{w.name} (interrupted)")))
    LiveView(console, len(result.workers), max(result.ticks, 1), "").summary(result)

