"""``hogwild-ref eval``: accuracy against the forward-pass budget (Spec §13)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any

from ..settings import BACKENDS, DTYPES, LAYOUTS
from .common import _check_collab_every, _check_device, _check_model_source, _load, _model_shape, console

def _add_eval(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="accuracy against the forward-pass budget (Hogwild, 1-worker and self-consistency baselines)",
        description="Evaluate on a dataset: one Hogwild run per (problem, workers, seed), answers at every budget "
                    "by the finisher (Spec §13). Writes results.jsonl (resumable), summary.md/json and accuracy.png/svg.",
    )
    p.add_argument("--dataset", default="builtin:arith",
                   help="FILE.jsonl / .json / .parquet, a datasets save_to_disk folder, or builtin:arith (default) / builtin:arith-K")
    p.add_argument("--workers", "-w", type=int, nargs="+", default=[1, 2, 4], help="worker counts (1, the baseline, is always added)")
    p.add_argument("--budgets", type=int, nargs="+", default=[256, 512, 1024], help="budgets in ticks (forward passes)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--limit", type=int, default=None, help="first N problems of the dataset")
    p.add_argument("--field", action="append", default=[], metavar="KEY=COLUMN",
                   help="the column holding the problem, answer or id, for other schemas (e.g. --field problem=question)")
    p.add_argument("--split", default=None, help="the split of a save_to_disk DatasetDict folder (e.g. test)")
    p.add_argument("--answer-kind", choices=["auto", "math", "integer"], default="auto",
                   help="how answers are compared: math (math-verify), integer; auto: GSM8k and AIME files integer")
    p.add_argument("--layout", choices=LAYOUTS, default="combined")
    p.add_argument("--model", default=None, help="HF id, local directory or .gguf path (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--out", default=None, help="output directory (default: eval-out/<dataset>); rerun to resume")
    p.add_argument("--batch", type=int, default=4, help="problems per forward pass (1: one at a time; default 4)")
    p.add_argument("--no-self-consistency", action="store_true", help="skip the self-consistency baseline")
    p.add_argument("--sc-temperature", type=float, default=0.6, help="sampling temperature of self-consistency samples")
    p.add_argument("--temperature", type=float, default=0.0, help="Hogwild sampling temperature (0, the default, is greedy)")
    p.add_argument("--top-p", type=float, default=None, help="Hogwild top-p, in (0, 1] (with --temperature; not for self-consistency samples)")
    p.add_argument("--collab-every", type=int, default=1024, help="tokens between collaboration prompts (0 disables)")
    p.add_argument("--finisher-tokens", type=int, default=24, help="most tokens the finisher decodes at each budget")
    p.add_argument("--prompts", choices=["default", "compact"], default="default")
    p.add_argument("--backend", choices=BACKENDS, default="fast")
    p.add_argument("--retry-errors", action="store_true", help="rerun units whose rows recorded an error")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--allow-untested", action="store_true", help="try a model family outside the tested ones")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core, fewer on a busy machine, with a note)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dist-timeout", type=float, default=24 * 60, metavar="MINUTES",
                   help="under torchrun: how long ranks wait for each other, e.g. for the slowest at the end (default 1440)")


def _check_flags(args: argparse.Namespace, rank: int) -> bool:
    """The run-setting flags, named as flags, before anything loads (Spec §11.7); :class:`~hogwild_ref.evaluation.EvalConfig`
    checks the same settings for library callers. Returns whether it warned that the budget may pass the
    model's positions (rank 0 only)."""
    from ..checks import MAX_WORKERS, check_int, check_sampling, context_bound, warn_context
    from ..limits import check_budget, check_threads

    warned = False
    check_int("finisher_tokens", args.finisher_tokens, 1, cli=True)
    shape = _model_shape(args.model)  # from the config alone; None where that cannot be read cheaply
    if args.budgets and min(args.budgets) >= 1:  # (a budget below 1 is EvalConfig's to refuse)
        check_budget(shape and shape.context, max(args.budgets), args.finisher_tokens, True, flag="--budgets",
                     workers=max(args.workers) if args.workers and 1 <= max(args.workers) <= MAX_WORKERS else 1)
        # the prompt not counted: a lower bound; worker counts EvalConfig refuses get its one line, not a warning first
        if shape is not None and args.workers and 1 <= min(args.workers) and max(args.workers) <= MAX_WORKERS and rank == 0:
            warned = warn_context(context_bound(0, max(args.workers), max(args.budgets), args.finisher_tokens),
                                  shape.context, cli=True, budget="budgets") is not None
    _check_collab_every(args.collab_every)
    check_sampling(args.temperature, None, args.top_p, cli=True)
    if args.threads is not None:
        check_threads(args.threads)
    _check_device(args.device)
    _check_model_source(args.model)
    return warned


#: the longest --dist-timeout (minutes): a week
MAX_DIST_TIMEOUT = 7 * 24 * 60


def lost_contact(exc: BaseException) -> bool:
    """Whether ``exc`` is a process group's failure to reach another rank (a timeout, a closed
    connection, the rendezvous store), as torch.distributed and its backends raise it (Spec §13.6:
    the rows of finished batches are kept, and a rerun resumes)."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(s in text for s in (
        "gloo/transport", "Connection closed by peer", "Timed out waiting", "wait timeout after", "NCCL"))


def _first_line(exc: BaseException) -> str:
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return line if len(line) <= 160 else line[:159] + "…"


def _say_interrupted(out: Any) -> None:
    """One line on an interrupted evaluation: the rows its results file and any rank shards hold, and how
    to go on (Spec §13.5, §13.6)."""
    from ..evaluation.results import row_key
    from ..evaluation.shards import read_rows, shard_paths

    shards = shard_paths(out)
    try:
        kept = len({row_key(r) for p in [out / "results.jsonl", *shards] for r in read_rows(p)})
    except (OSError, ValueError):  # unreadable: say where they are all the same
        print(f"interrupted: the rows kept are in {out}; rerun the same command to resume", file=sys.stderr)
        return
    results = out / "results.jsonl"
    if not kept:
        print(f"interrupted before any problem's rows were complete: nothing kept in {out} (a batch's rows are written "
              "when it ends); rerun the same command to start again", file=sys.stderr)
        return
    if shards and not results.is_file():  # a first run under torchrun: only the ranks' shards exist so far
        where = f"{len(shards)} rank shard(s) in {out}"
    else:
        where = f"{results}" + (f" and {len(shards)} rank shard(s) beside it" if shards else "")
    print(f"interrupted: {kept} rows kept in {where}; rerun the same command to resume (the batch that was running "
          "is run again)", file=sys.stderr)


def cmd_eval(args: argparse.Namespace) -> int:
    import re
    from contextlib import nullcontext
    from datetime import timedelta
    from pathlib import Path

    from ..checks import ContextLengthWarning
    from ..evaluation import EvalConfig, run_eval
    from ..evaluation.datasets import parse_fields
    from ..evaluation.distributed import RankError, process_group, rank_setup
    from ..evaluation.results import OutDirLock
    from ..evaluation.runner import check_inputs
    from ..evaluation.shards import place_from_env

    rank = place_from_env(os.environ).rank
    if _check_flags(args, rank) or rank != 0:  # said once, up front, by rank 0: the runners need not repeat it
        warnings.filterwarnings("ignore", category=ContextLengthWarning)
    for flag, value in (("--out", args.out), ("--dataset", args.dataset)):
        if value is not None and not str(value).strip():
            raise ValueError(f"{flag} is empty; give a path (or omit {flag} for its default)")
    if not 0 < args.dist_timeout <= MAX_DIST_TIMEOUT:  # nan and inf too
        raise ValueError(f"--dist-timeout must be a positive number of minutes, at most {MAX_DIST_TIMEOUT} (a week); "
                         f"got {args.dist_timeout}")
    model_name = args.model or "SmolLM2-135M-Instruct (embedded GGUF)"
    cfg = EvalConfig(
        dataset=args.dataset, workers=tuple(args.workers), budgets=tuple(args.budgets), seeds=tuple(args.seeds),
        limit=args.limit, layout=args.layout, backend=args.backend, prompts=args.prompts, temperature=args.temperature,
        top_p=args.top_p, self_consistency=not args.no_self_consistency, sc_temperature=args.sc_temperature,
        collab_every=args.collab_every or None, finisher_tokens=args.finisher_tokens, batch=args.batch,
        retry_errors=args.retry_errors, model=f"{model_name} [{args.dtype}]", allow_untested=args.allow_untested,
        fields=tuple(parse_fields(args.field).items()), split=args.split, answer_kind=args.answer_kind,
    )
    out = Path(args.out) if args.out else Path("eval-out") / re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(args.dataset).stem)
    place, args.device, threads = rank_setup(args.device, args.threads)  # under torchrun: this rank's (Spec §13.6)
    if threads:
        import torch

        torch.set_num_threads(threads)
    err = console(stderr=True)
    # everything about the inputs before the model loads: the dataset (before --out is created), then --out
    # and a results file to resume, under the directory's lock, held to the end
    problems = check_inputs(cfg, None)
    lock = OutDirLock(out)
    try:
        with process_group(place, args.device, timedelta(minutes=args.dist_timeout)) as group:
            try:
                # every rank takes its lock on --out and checks the folder, together: one refused (another
                # evaluation holds it) stops them all at once, instead of leaving the others waiting for it
                def claim() -> None:
                    lock.acquire()
                    check_inputs(cfg, out, problems)

                group.agree(claim)
                with err.status("loading model ...") if place.rank == 0 else nullcontext():
                    model, tokenizer = group.agree(lambda: _load(args))
                report = run_eval(model, tokenizer, cfg, out, progress=not args.no_progress, console=err,
                                  problems=problems, group=group)
            finally:
                lock.release()
    except RankError:
        if place.rank != 0:
            return 2  # rank 0 says it, once
        raise
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the rows of every finished batch are on disk (Spec §13.5)
        if place.rank == 0:
            _say_interrupted(out)
        return 130
    except Exception as exc:
        if place.world > 1 and lost_contact(exc):  # gloo's or the store's own words name no rank and no fix
            raise RuntimeError(f"rank {place.rank} of {place.world} lost contact with the other ranks "
                               f"({_first_line(exc)}): a rank was killed or stopped, or another waited longer "
                               f"than --dist-timeout ({args.dist_timeout:g} minutes); the rows of finished "
                               "batches are kept: rerun the same command to resume") from None
        raise
    if place.rank != 0:
        return 0
    # soft_wrap: a path is never broken over two lines (rich wraps at 80 columns when writing to a log file)
    err.print(f"{report.problems} problems x {len(cfg.seeds)} seeds: {report.ran_units} units run, "
                  f"{report.skipped_units} already in {report.files['results']}", soft_wrap=True, markup=False)
    print(report.files["summary_md"].read_text(encoding="utf-8"))  # plain Markdown: any terminal width, copy-pasteable
    for name, path in report.files.items():
        err.print(f"{name}: {path}", soft_wrap=True, markup=False)
    return 0

