"""Evaluation harness: accuracy against the forward-pass budget (Spec §13).

* :mod:`~hogwild_ref.evaluation.datasets` — JSONL/JSON, parquet and ``save_to_disk`` folders (GSM8k,
  MATH, LIMO, AIME field names, or ``--field``), checked before any model loads, and ``builtin:arith``;
* :mod:`~hogwild_ref.evaluation.answers` — the last parseable ``\\boxed{}``; correctness by HF's
  ``math-verify`` (integers for AIME and GSM8k); majority vote;
* :mod:`~hogwild_ref.evaluation.runner` — :func:`run_eval`: Hogwild runs snapshotted at every budget
  with the finisher, the 1-worker and self-consistency baselines, batched across problems
  (:mod:`hogwild_ref.batch`), resumable JSONL results;
* :mod:`~hogwild_ref.evaluation.shards` and :mod:`~hogwild_ref.evaluation.distributed` — one
  evaluation over many processes under torchrun: each rank's share, its results shard, rank 0's
  merge (Spec §13.6);
* :mod:`~hogwild_ref.evaluation.summary` and :mod:`~hogwild_ref.evaluation.plot` — accuracy with
  95% intervals, and its plot (matplotlib: the ``eval`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .answers import Verdict, answers_match, check_answer, extract_answer, majority_vote, normalise
from .datasets import Problem, load_dataset
from .summary import Cell, format_markdown, summarise, wilson_interval

if TYPE_CHECKING:
    from .runner import EvalConfig, EvalReport, run_eval

#: the runner's names load it (and torch) on first use, so the pure modules above stay importable
#: without torch through this package
_RUNNER = frozenset({"EvalConfig", "EvalReport", "run_eval"})


def __getattr__(name: str) -> Any:
    if name in _RUNNER:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'hogwild_ref.evaluation' has no attribute {name!r}")

__all__ = [
    "Cell",
    "EvalConfig",
    "EvalReport",
    "Problem",
    "Verdict",
    "answers_match",
    "check_answer",
    "extract_answer",
    "format_markdown",
    "load_dataset",
    "majority_vote",
    "normalise",
    "run_eval",
    "summarise",
    "wilson_interval",
]
