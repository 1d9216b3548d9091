"""Command line: ``hogwild-ref generate | bench | conform | spec``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

DEFAULT_PROBLEM = (
    "A shop sells pencils at 3 dollars each and notebooks at 5 dollars each. "
    "Sam buys 4 pencils and 2 notebooks. How much does Sam pay in total?"
)


def _add_generate(sub: Any) -> None:
    p = sub.add_parser("generate", help="Hogwild generation with W workers over one shared cache")
    p.add_argument("problem", nargs="?", default=DEFAULT_PROBLEM, help="the problem (default: a small arithmetic problem)")
    p.add_argument("--workers", "-w", type=int, default=2, help="number of workers W >= 1 (default 2)")
    p.add_argument("--layout", choices=["contiguous", "interleaved", "combined"], default="combined")
    p.add_argument("--max-steps", type=int, default=192,
                   help="budget in ticks (batched forward passes), the paper's budget (default 192)")
    p.add_argument("--model", default=None, help="HF id, local directory or .gguf path (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--backend", choices=["rotate_queries", "rotate_keys", "oracle"], default="rotate_queries")
    p.add_argument("--collab-every", type=int, default=1024, help="tokens between collaboration prompts (0 disables)")
    p.add_argument("--no-finisher", action="store_true", help="do not force an answer when the budget ends")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--allow-untested", action="store_true", help="try a model family outside the tested ones")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the live view")


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch

    from .models import load

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load(args.model, getattr(torch, args.dtype), device)


def cmd_generate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .engine import generate
    from .live import LiveView

    if args.workers < 1:
        print(f"error: --workers must be >= 1 (got {args.workers})", file=sys.stderr)
        return 2
    if args.max_steps < 1:
        print(f"error: --max-steps must be >= 1 (got {args.max_steps})", file=sys.stderr)
        return 2
    console = Console(stderr=args.json)
    with console.status("loading model ..."):
        model, tokenizer = _load(args)
    kwargs = dict(
        workers=args.workers,
        layout=args.layout,
        max_steps=args.max_steps,
        backend=args.backend,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        seed=args.seed,
        collab_every=args.collab_every or None,
        finisher=not args.no_finisher,
        allow_untested=args.allow_untested,
        model_name=args.model or "SmolLM2-135M-Instruct (embedded GGUF)",
    )
    if args.json:
        result = generate(model, tokenizer, args.problem, **kwargs)
        print(json.dumps(result.to_json_dict()))
        return 0
    view = LiveView(console, args.workers, args.max_steps, args.problem)
    with view:
        result = generate(model, tokenizer, args.problem, on_event=view.on_event, **kwargs)
    view.summary(result)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hogwild-ref", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    args = parser.parse_args(argv)
    handlers = {"generate": cmd_generate}
    try:
        return handlers[args.command](args)
    except (ValueError, RuntimeError) as exc:  # clear one-line errors for bad input
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
