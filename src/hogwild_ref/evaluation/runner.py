"""The evaluation harness: accuracy against the forward-pass budget (Spec §13).

One *unit* is (method, problem, workers ``W``, seed):

* ``hogwild``: one Hogwild run of ``W`` workers (the run with ``W = 1`` is the single-worker
  baseline), snapshotted at every budget with the finisher applied at each snapshot (Spec §13.2);
* ``self_consistency`` (``W >= 2``): ``W`` independent single-worker samples at temperature
  ``sc_temperature``, each snapshotted the same way, and the majority answer at each budget
  (Spec §13.4). ``W`` samples for ``B`` ticks take ``B`` sequential forward passes of ``W`` rows:
  the same forward-pass budget as ``W`` Hogwild workers.

Units of one (method, ``W``, seed) run ``batch`` problems at a time in one forward
(:class:`~hogwild_ref.batch.BatchRunner`, Spec §13.3). Every unit writes one row per budget to
``results.jsonl`` as soon as its batch ends (Spec §13.5); a rerun skips the rows already there.
Under torchrun each rank runs its share of the units into its own results shard and rank 0 merges
the shards (:mod:`~hogwild_ref.evaluation.shards`, Spec §13.6).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..batch import BatchItem, BatchRunner, ItemResult
from ..checks import MAX_SEED, MAX_WORKERS, check_int, check_ints, check_sampling, escaped
from ..engine import Engine
from ..prompts import PRESETS
from ..settings import Settings
from .answers import CHECKER, check_answer, checker_stack, extract_answer, majority_vote, require_checker
from .datasets import Problem, load_dataset
from .results import ROW_FORMAT, OutDirLock, ResultsLog, replace_file, row_key
from .shards import Group, Solo, assign, is_done, merge_rows, read_rows, shard_name, shard_paths, write_rows
from .summary import Cell, format_markdown, format_throughput, summarise, throughput

__all__ = ["EvalConfig", "EvalReport", "Unit", "check_inputs", "plan_units", "run_eval"]

METHODS = ("hogwild", "self_consistency")


@dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluation (CLI: ``hogwild-ref eval``).

    ``workers`` gets 1 added (the baseline) unless ``baseline`` is False; ``self_consistency`` adds
    the majority-vote baseline for every ``W >= 2``. ``batch`` is the number of problems per forward
    (1: one problem at a time). Settings that change results (see :meth:`identity`) must match the
    ones an output directory was started with.
    """

    dataset: str = "builtin:arith"
    workers: tuple[int, ...] = (1, 2, 4)
    budgets: tuple[int, ...] = (256, 512, 1024)
    seeds: tuple[int, ...] = (0,)
    limit: int | None = None
    layout: str = "combined"
    backend: str = "fast"
    prompts: str = "default"
    temperature: float = 0.0
    top_p: float | None = None
    self_consistency: bool = True
    sc_temperature: float = 0.6
    baseline: bool = True
    collab_every: int | None = 1024
    finisher_tokens: int = 24
    batch: int = 4
    retry_errors: bool = False
    model: str = "default"
    allow_untested: bool = False
    fields: tuple[tuple[str, str], ...] = ()  # (key, column): --field problem=COL
    split: str | None = None
    answer_kind: str = "auto"

    def __post_init__(self) -> None:
        for name in ("workers", "budgets", "seeds"):  # integers only: 2.7 or "12" is not truncated or split (Spec §11.7)
            object.__setattr__(self, name, check_ints(name, getattr(self, name)))
        if not self.workers or min(self.workers) < 1:
            raise ValueError(f"workers must be counts >= 1; got {list(self.workers)}")
        if not self.budgets or min(self.budgets) < 1:
            raise ValueError(f"budgets must be tick counts >= 1; got {list(self.budgets)}")
        if not self.seeds:
            raise ValueError("give at least one seed")
        # the run settings a unit passes to the engine, checked as it checks them (Spec §11.7); seeds may be
        # negative (they seed the batch's generators, as earlier versions took them)
        check_int("finisher_tokens", self.finisher_tokens, 1)
        if self.collab_every is not None:
            check_int("collab_every", self.collab_every, 1, fix=" (tokens between collaboration prompts; None: off)")
        check_sampling(self.temperature, None, self.top_p)
        if len(set(self.seeds)) != len(self.seeds):
            dup = next(s for s in self.seeds if self.seeds.count(s) > 1)
            raise ValueError(f"--seeds repeats seed {dup}; give each seed once (a repeated seed reruns the same units)")
        same = next(((a, b) for a in self.seeds for b in self.seeds if a < 0 <= b and a % 2**64 == b), None)
        if same is not None:  # torch reads a negative seed s as 2^64 + s
            raise ValueError(f"--seeds gives {same[0]} and {same[1]}, which seed the same generators (a negative "
                             f"seed s is 2^64 + s); give each seed once")
        if self.top_p is not None and self.temperature == 0:
            warnings.warn("--top-p has no effect with --temperature 0: Hogwild runs are greedy (Spec §11.5), and "
                          "self-consistency samples are not filtered by it; give --temperature > 0 to filter Hogwild's "
                          "sampling", UserWarning, stacklevel=2)
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1 problems per forward; got {self.batch}")
        if self.prompts not in PRESETS:
            raise ValueError(f"unknown prompts {self.prompts!r}; choose one of {', '.join(PRESETS)}")
        if not math.isfinite(self.sc_temperature):  # NaN would also never match itself on resume
            raise ValueError(f"sc_temperature (--sc-temperature) must be a finite number > 0; got {self.sc_temperature}")
        if self.self_consistency and self.sc_temperature <= 0:
            raise ValueError(f"self-consistency needs --sc-temperature > 0 (greedy samples would all be the same); got "
                             f"{self.sc_temperature} (or turn it off with --no-self-consistency)")
        top = max(self.workers)
        if top > MAX_WORKERS:
            raise ValueError(f"workers (--workers) {top} is more than the {MAX_WORKERS} workers supported "
                             f"(Spec §11.7); give {MAX_WORKERS} or less")
        sampled = self.self_consistency and top > 1
        for seed in self.seeds:  # a Hogwild run seeds seed + w; a self-consistency sample seed * W + i (Spec §13.4)
            starts = (seed, seed * top) if sampled else (seed,)
            low, high = min(starts), max(starts) + top - 1
            if low < -(2**63) or high > MAX_SEED:
                raise ValueError(f"seed {seed} (--seeds) is out of range: with {top} workers the generators "
                                 f"it seeds reach {high if high > MAX_SEED else low}, outside -2^63 .. 2^64 - 1; give a smaller seed")

    def worker_counts(self) -> list[int]:
        return sorted(set(self.workers) | ({1} if self.baseline else set()))

    def identity(self) -> dict[str, Any]:
        """The settings a results row depends on (besides its key)."""
        keys = ("dataset", "layout", "backend", "prompts", "temperature", "top_p", "sc_temperature",
                "collab_every", "finisher_tokens", "model", "split", "answer_kind")
        # top-p filters only Hogwild's sampling: at temperature 0 it changes nothing, and binds nothing
        return {k: getattr(self, k) for k in keys} | {"fields": dict(self.fields), "row_format": ROW_FORMAT,
                                                      "dataset_file": self.dataset_file(),
                                                      "top_p": self.top_p if self.temperature > 0 else None}

    def dataset_file(self) -> str | None:
        """The dataset's absolute path (None for a built-in set): the same file, whatever the working
        directory it is typed from."""
        if self.dataset.startswith("builtin:"):
            return None
        return str(Path(self.dataset).expanduser().resolve())

    def load_problems(self) -> list[Problem]:
        """The dataset's problems (every check of :func:`~hogwild_ref.evaluation.datasets.load_dataset`)."""
        return load_dataset(self.dataset, self.limit, fields=dict(self.fields), split=self.split, kind=self.answer_kind)


@dataclass(frozen=True)
class Unit:
    """One Hogwild run, or one set of self-consistency samples, of one problem."""

    method: str
    problem: Problem
    workers: int
    seed: int

    def keys(self, budgets: Sequence[int]) -> list[tuple[str, str, int, int, int]]:
        return [(self.method, self.problem.id, self.workers, self.seed, b) for b in budgets]


@dataclass
class EvalReport:
    """What :func:`run_eval` produced."""

    rows: list[dict[str, Any]]
    cells: list[Cell]
    files: dict[str, Path]
    ran_units: int
    skipped_units: int
    seconds: float
    problems: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def plan_units(problems: Sequence[Problem], cfg: EvalConfig) -> list[Unit]:
    """Every unit of the evaluation, grouped by (method, workers, seed) so that batches can form."""
    units = []
    for method in METHODS:
        for W in cfg.worker_counts():
            if method == "self_consistency" and (not cfg.self_consistency or W < 2):
                continue
            for seed in cfg.seeds:
                units += [Unit(method, p, W, seed) for p in problems]
    return units


def _engine(model: Any, tokenizer: Any, cfg: EvalConfig, method: str, workers: int) -> Engine:
    """The engine of a method's units: Hogwild at ``--temperature`` (with ``--top-p``), self-consistency's
    single-worker samples at ``--sc-temperature``, unfiltered (Spec §13.4)."""
    hogwild = method == "hogwild"
    temperature = cfg.temperature if hogwild else cfg.sc_temperature
    settings = Settings(workers=workers if hogwild else 1, layout=cfg.layout, backend=cfg.backend, max_ticks=None,
                        temperature=temperature, top_p=cfg.top_p if hogwild and temperature > 0 else None,
                        collab_every=cfg.collab_every, finisher_tokens=cfg.finisher_tokens)
    return Engine(model, tokenizer, settings, templates=PRESETS[cfg.prompts](), allow_untested=cfg.allow_untested,
                  model_name=cfg.model)


def _items(unit: Unit) -> list[BatchItem]:
    if unit.method == "hogwild":
        return [BatchItem(unit.problem.problem, unit.seed)]
    # W independent samples; worker 0 of sample i samples with seed unit.seed * W + i
    return [BatchItem(unit.problem.problem, unit.seed * unit.workers + i) for i in range(unit.workers)]


def _unit_tokens(results: list[ItemResult]) -> int:
    """Tokens a unit generated: every worker's (sample's) tokens at its last budget, and the finisher's at each."""
    return sum(sum(r.budgets[-1].tokens) + sum(len(a.finisher_tokens) for a in r.budgets) for r in results if r.budgets)


def _rows(unit: Unit, results: list[ItemResult], budgets: Sequence[int], batch: int, checker: str,
          unit_seconds: float) -> list[dict[str, Any]]:
    rows = []
    error = next((r.error for r in results if r.error), None)
    kind, digest = unit.problem.kind, problem_hash(unit.problem)
    for B in budgets:
        snaps = [next((a for a in r.budgets if a.budget == B), None) for r in results]
        base = {"format": ROW_FORMAT, "method": unit.method, "problem_id": unit.problem.id, "workers": unit.workers,
                "seed": unit.seed, "budget": B, "gold": unit.problem.answer, "kind": kind, "checker": checker,
                "problem_hash": digest,
                "batch": batch, "unit_seconds": round(unit_seconds, 4),
                "unit_tokens": None if error is not None else _unit_tokens(results)}
        if error is not None or any(s is None for s in snaps):
            rows.append(base | {"answer": None, "correct": False, "check": None, "ticks": None, "finisher_ticks": None,
                                "tokens_per_worker": None, "seconds": None, "reason": None,
                                "error": error or "no result at this budget"})
            continue
        found = [s for s in snaps if s is not None]
        if unit.method == "hogwild":
            (s,) = found
            answer, tokens, extra = s.answer, list(s.tokens), {}
        else:
            samples = [s.answer for s in found]
            answer, tokens, extra = majority_vote(samples, kind), [s.tokens[0] for s in found], {"samples": samples}
        verdict = check_answer(answer, unit.problem.answer, kind)
        rows.append(base | {
            "answer": answer,
            "correct": verdict.correct,
            "check": verdict.how,
            "ticks": max(s.ticks for s in found),
            "finisher_ticks": max(len(s.finisher_tokens) for s in found),
            "tokens_per_worker": tokens,
            "seconds": round(max(s.seconds for s in found), 4),
            "reason": found[0].reason if unit.method == "hogwild" else None,
            "error": None,
        } | extra)
    return rows


def _same_path(a: Any, b: Any) -> bool:
    """Two dataset paths as typed that name the same file (``d.jsonl``, ``./d.jsonl``, ``dir/../d.jsonl``)."""
    return isinstance(a, str) and isinstance(b, str) and os.path.normpath(os.path.expanduser(a)) == \
        os.path.normpath(os.path.expanduser(b))


def _holds_rows(out: Path) -> bool:
    """Whether ``out`` holds results rows (its results file, or a rank's shard, not empty)."""
    return any(p.is_file() and p.stat().st_size > 0 for p in [out / "results.jsonl", *shard_paths(out)])


def _check_writable(path: Path) -> None:
    """A results file that exists can be appended to, and one that does not yet can be made in its folder
    (checked before any unit runs, so that none is lost)."""
    if not path.exists():
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=path.parent)
        except OSError as exc:
            raise ValueError(f"{path.parent} does not take new files ({exc.strerror}); make it writable, or use "
                             "another --out directory") from None
        os.close(fd)
        os.unlink(probe)
        return
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise ValueError(f"{path} cannot be written ({exc.strerror}); make it writable, or use another --out "
                         "directory") from None


def _check_identity(path: Path, cfg: EvalConfig, *, write: bool = True) -> None:
    ident = cfg.identity()
    if path.exists() and _holds_rows(path.parent):  # (settings of a run that kept no row bind nothing: replaced)
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path} is damaged (not JSON); use another --out directory, or move it away") from None
        if not isinstance(old, dict):
            raise ValueError(f"{path} is not an evaluation's config.json; use another --out directory")
        diff = {k: (old.get(k), v) for k, v in ident.items() if old.get(k) != v}
        file = diff.pop("dataset_file", (ident["dataset_file"],) * 2)  # (recorded since 0.1: None in older folders)
        # d.jsonl and ./d.jsonl name one file, and so do d.jsonl and its absolute path
        if "dataset" in diff and (_same_path(*diff["dataset"]) or file[0] is not None and file[0] == file[1]):
            del diff["dataset"]
        if "split" in diff and diff["split"][1] is None:  # the dataset loaded without a split: the recorded one chose
            del diff["split"]  # nothing (a file, a built-in set, a one-split folder; ignored then, refused now)
        if diff:
            what = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise ValueError(f"{path.parent} holds results made with other settings ({what}); "
                             "use another --out directory, or the same settings to resume")
    elif write:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, lambda tmp: tmp.write_text(json.dumps(ident, indent=2) + "\n", encoding="utf-8"))


def check_inputs(cfg: EvalConfig, out_dir: str | Path | None, problems: Sequence[Problem] | None = None) -> list[Problem]:
    """Everything about an evaluation that can be checked without the model (Spec §13.5): the checker is
    installed, the dataset loads (unless ``problems`` are given), and ``out_dir`` (unless None) is a
    directory no other evaluation holds, whose ``config.json`` and ``results.jsonl`` (when resuming)
    match ``cfg`` and are valid. Returns the problems."""
    require_checker()
    problems = list(problems) if problems is not None else cfg.load_problems()
    if out_dir is None:
        return problems
    out = Path(out_dir)
    with OutDirLock(out):
        _check_identity(out / "config.json", cfg, write=False)
        for path in [out / "results.jsonl", *shard_paths(out)]:
            _check_writable(path)
        rows = ResultsLog(out / "results.jsonl").all() + [r for p in shard_paths(out) for r in read_rows(p)]
        _check_golds(problems, rows, out, require_checker())
    return problems


def problem_hash(problem: Problem) -> str:
    """A short digest of a problem's text, recorded in its rows (``problem_hash``): rows resume only for
    the text they were made from (Spec §13.5)."""
    return hashlib.sha256(problem.problem.encode("utf-8")).hexdigest()[:16]


def _check_golds(problems: Sequence[Problem], rows: Iterable[dict[str, Any]], out: Path, checker: str) -> None:
    """Rows to resume were made from each problem's text, and scored against its gold answer and kind
    as the dataset gives them now, by this checker (Spec §13.5); a row whose problem text, gold or
    checker differs (the file was edited, is read otherwise by this version: numbers, labels, AIME
    detection; math-verify was upgraded) would mix two runs or two scorings in one summary: refused."""
    by_id = {p.id: (p, problem_hash(p)) for p in problems}
    for row in rows:
        p, digest = by_id.get(str(row.get("problem_id")), (None, None))
        if p is None:
            continue
        if row.get("checker") != checker:
            raise ValueError(f"the results in {out} were checked by {row.get('checker')}, and this installation has "
                             f"{checker}: install that version to resume, or use another --out directory to score anew")
        if row.get("problem_hash", digest) != digest:
            raise ValueError(f"problem {p.id!r} has another text in the dataset now than in the results in {out}: the "
                             "dataset changed since; use another --out directory to run it anew")
        if row.get("gold") != p.answer or row.get("kind") != p.kind:
            raise ValueError(f"problem {p.id!r} has the gold answer {row.get('gold')!r} ({row.get('kind')}) in the results in "
                             f"{out} but {p.answer!r} ({p.kind}) in the dataset now: the dataset, or how "
                             "its answers are read, changed since; use another --out directory to score it anew")


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class _Progress:
    """A rich progress bar with ETA over row-ticks (rows x budget), or nothing. On a console that is not a
    terminal (a log file, a scheduler's output) a bar shows nothing until the end: there a plain line says
    the same every :attr:`PLAIN_EVERY_S` seconds, and once at the end."""

    PLAIN_EVERY_S = 30.0

    def __init__(self, total: int, units: int, enabled: bool, console: Any = None):
        self.bar = None
        self.units, self.done_units = units, 0
        self.plain = bool(enabled and total and console is not None and not console.is_terminal
                          and not console.is_jupyter)  # a notebook draws the bar
        self.console, self.total, self.done = console, total, 0.0
        self.t0 = self.last = time.monotonic()
        if enabled and total and not self.plain:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                                transient=False)
            self.task = self.bar.add_task(self._desc(""), total=total)
            self.bar.start()

    def _desc(self, what: str) -> str:
        return f"eval {self.done_units}/{self.units} units {what}".rstrip()

    def advance(self, n: float, what: str = "") -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=n, description=self._desc(what))
        elif self.plain:
            self.done += n
            if time.monotonic() - self.last >= self.PLAIN_EVERY_S:
                self._line()

    def _line(self) -> None:
        self.last = now = time.monotonic()
        elapsed = now - self.t0
        eta = elapsed * (self.total - self.done) / self.done if self.done else None
        self.console.print(f"{self._desc('')}, {100 * self.done / self.total:.0f}%, {_clock(elapsed)} elapsed, ETA "
                           f"{_clock(eta) if eta is not None else '?'}", markup=False, highlight=False)

    def units_done(self, n: int) -> None:
        self.done_units += n
        self.advance(0)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif self.plain:
            self._line()


def run_eval(
    model: Any,
    tokenizer: Any,
    cfg: EvalConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    console: Any = None,
    plot: bool = True,
    on_unit: Callable[[Unit], None] | None = None,
    problems: Sequence[Problem] | None = None,
    group: Group | None = None,
) -> EvalReport:
    """Run (or resume) the evaluation ``cfg`` into ``out_dir``; write results, summary and plot (Spec §13).

    Files: ``results.jsonl`` (one row per unit and budget), ``config.json`` (the settings results
    depend on), ``summary.md`` and ``summary.json`` (the requested rows only), ``accuracy.png`` and
    ``accuracy.svg`` (when ``plot``). ``on_unit`` is called before each unit's batch runs. ``problems``:
    those :func:`check_inputs` returned (else the dataset is loaded here). The directory is locked
    (:class:`~hogwild_ref.evaluation.results.OutDirLock`) while this runs. With a ``group`` of several
    processes (Spec §13.6), each rank runs its share into its own shard and rank 0 merges them and
    writes the summary; the other ranks return their own rows only.
    """
    lock = OutDirLock(out_dir)
    lock.acquire()
    try:
        return _run_eval(model, tokenizer, cfg, Path(out_dir), progress, console, plot, on_unit, problems, group or Solo())
    finally:
        lock.release()


def _run_eval(model: Any, tokenizer: Any, cfg: EvalConfig, out: Path, progress: bool, console: Any, plot: bool,
              on_unit: Callable[[Unit], None] | None, given: Sequence[Problem] | None, group: Group) -> EvalReport:
    t0 = time.perf_counter()
    checker = require_checker()
    progress = progress and group.rank == 0
    budgets = sorted(set(cfg.budgets))

    def prepare() -> tuple[list[Problem], list[Unit], list[Unit], ResultsLog, dict[Any, dict[str, Any]]]:
        problems = list(given) if given is not None else cfg.load_problems()
        if group.rank == 0:
            _check_identity(out / "config.json", cfg)
        # every rank reads every results file before any rank writes (the agreement below)
        log = ResultsLog(out / ("results.jsonl" if group.world == 1 else shard_name(group.rank, group.world)))
        others = [read_rows(p) for p in [out / "results.jsonl", *shard_paths(out)] if p != log.path]
        known = {row_key(r): r for r in merge_rows([log.all(), *others])}
        _check_golds(problems, known.values(), out, checker)  # (library callers skip check_inputs)
        for path in {log.path, out / "results.jsonl"}:
            _check_writable(path)
        units = plan_units(problems, cfg)
        owners = assign([u.workers for u in units], group.world)
        todo = [u for u, r in zip(units, owners) if r == group.rank
                and not all(is_done(known.get(k), cfg.retry_errors) for k in u.keys(budgets))]
        return problems, units, todo, log, known

    problems, units, todo, log, known = group.agree(prepare)
    groups: dict[tuple[str, int, int], list[Unit]] = {}
    for u in todo:
        groups.setdefault((u.method, u.workers, u.seed), []).append(u)
    bar = _Progress(sum(u.workers * budgets[-1] for u in todo), len(todo), progress, console)
    try:
        for (method, W, seed), us in groups.items():
            engine = _engine(model, tokenizer, cfg, method, W)
            runner = BatchRunner(engine, budgets, extract=extract_answer)
            for start in range(0, len(us), cfg.batch):
                chunk = us[start : start + cfg.batch]
                rows = _run_chunk(runner, chunk, budgets, bar, on_unit, f"{method} W={W} seed={seed}", checker)
                # a unit run again for an added budget keeps the rows it has (an error now never replaces them)
                log.append([r for r in rows if not is_done(known.get(row_key(r)), cfg.retry_errors)])
                bar.units_done(len(chunk))
    finally:
        bar.close()
    done = group.gather(len(todo))  # waits for every rank (Spec §13.6)
    ran = sum(done)
    wanted = [k for u in units for k in u.keys(budgets)]
    files = {"results": out / "results.jsonl", "config": out / "config.json"}
    if group.rank != 0:
        return EvalReport(rows=log.all(), cells=[], files={"shard": log.path}, ran_units=len(todo), skipped_units=0,
                          seconds=time.perf_counter() - t0, problems=len(problems))
    shards = shard_paths(out)
    unseen = [shard_name(r, group.world) for r, n in enumerate(done) if n and group.world > 1
              and not (out / shard_name(r, group.world)).is_file()]
    if unseen:
        raise RuntimeError(f"rank 0 cannot see {', '.join(unseen)} in {out}, where other ranks wrote rows: with several "
                           "nodes --out must be on a file system every node shares (or copy every node's shards into "
                           "one folder and rerun there)")
    found = log.rows
    if shards or group.world > 1:  # rank 0 merges every shard into results.jsonl, then removes them
        merged = merge_rows([read_rows(p) for p in [out / "results.jsonl", *shards]], wanted)
        if shards:
            write_rows(out / "results.jsonl", merged)
            for p in shards:
                p.unlink()
        found = {row_key(r): r for r in merged}
    if not shards:  # (a merge has just written one row per key)
        _one_row_per_key(out / "results.jsonl", wanted)
    rows = [found[k] for k in wanted if k in found]
    cells = summarise(rows)
    files["summary_md"] = out / "summary.md"
    title = f"{escaped(cfg.dataset)}, {len(problems)} problems, seeds {list(cfg.seeds)}, {cfg.layout} layout, model {cfg.model}"
    speed = throughput(rows)
    stack = checker_stack()
    on = ", ".join(f"{k}=={v}" for k, v in stack.items() if k != CHECKER)
    markdown = f"# {title}\n\nAnswers checked by {checker} ({on}).\n\n" + format_markdown(cells) + "\n" + format_throughput(speed)
    replace_file(files["summary_md"], lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
    files["summary_json"] = out / "summary.json"
    summary = json.dumps({"title": title, "checker": checker, "checker_versions": stack, "cells": [c.to_dict() for c in cells],
                          "throughput": [t.to_dict() for t in speed]}, indent=2) + "\n"
    replace_file(files["summary_json"], lambda tmp: tmp.write_text(summary, encoding="utf-8"))
    if plot:
        from .plot import plot_accuracy

        png, svg = plot_accuracy(cells, out / "accuracy", title=title)
        files["png"], files["svg"] = png, svg
    return EvalReport(rows=rows, cells=cells, files=files, ran_units=ran, skipped_units=len(units) - ran,
                      seconds=time.perf_counter() - t0, problems=len(problems))


def _one_row_per_key(path: Path, order: Sequence[Any]) -> None:
    """Rewrite ``path`` with one row per key when a later row replaced an earlier one there (a retried
    error's row; a file written before reruns kept the rows they had), Spec §13.5."""
    rows = read_rows(path)
    if len(rows) > len({row_key(r) for r in rows}):
        write_rows(path, merge_rows([rows], order))


def _run_chunk(runner: BatchRunner, chunk: list[Unit], budgets: list[int], bar: _Progress,
               on_unit: Callable[[Unit], None] | None, what: str, checker: str) -> list[dict[str, Any]]:
    """Rows of ``chunk``'s units, run as one batch; if the batch fails, each unit alone (Spec §13.5)."""
    items: list[BatchItem] = []
    spans: list[tuple[int, int]] = []
    for u in chunk:
        if on_unit is not None:
            on_unit(u)
        its = _items(u)
        spans.append((len(items), len(items) + len(its)))
        items += its
    rows_per_item = runner.engine.workers
    total = len(items) * rows_per_item * budgets[-1]
    state = {"active": len(items), "advanced": 0}

    def on_tick(tick: int, active: int) -> None:
        step = state["active"] * rows_per_item
        state["advanced"] += step
        state["active"] = active
        bar.advance(step, what)

    t0 = time.perf_counter()
    try:
        results = runner.run(items, on_tick)
    except Exception as exc:  # noqa: BLE001 - isolate the failing problem, record its error
        bar.advance(-state["advanced"], what)
        if len(chunk) > 1:
            return [row for u in chunk for row in _run_chunk(runner, [u], budgets, bar, None, what, checker)]
        bar.advance(total, what)
        err = ItemResult(chunk[0].problem.problem, chunk[0].seed, error=f"{type(exc).__name__}: {exc}")
        return _rows(chunk[0], [err], budgets, 1, checker, time.perf_counter() - t0)
    share = (time.perf_counter() - t0) / len(chunk)  # the units of one batch share its wall time equally
    bar.advance(total - state["advanced"], what)
    return [row for u, (a, b) in zip(chunk, spans)
            for row in _rows(u, results[a:b], budgets, len(chunk), checker, share)]

