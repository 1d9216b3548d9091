"""Checks of run settings before any model loads or runs (Spec §11.7).

Pure Python: no torch. Every check raises :class:`SettingsError` (a ``ValueError``) with one line
that names the setting, the value and the fix. The same checks serve the library
(:func:`hogwild_ref.generate`, :class:`hogwild_ref.engine.Engine`) and the CLI, which names its
flags instead (``cli=True``: ``--max-ticks`` rather than ``max_ticks``).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

__all__ = [
    "ContextLengthWarning",
    "SettingsError",
    "check_int",
    "check_ints",
    "check_problem",
    "check_sampling",
    "check_seed",
    "check_workers",
    "check_settings",
    "context_bound",
    "escaped",
    "flag_names",
    "flags_named",
    "unencodable",
    "warn_context",
]

from .segments import LAYOUTS


class SettingsError(ValueError):
    """A run setting is invalid (Spec §11.7)."""


class ContextLengthWarning(UserWarning):
    """The run may reach positions beyond the model's ``max_position_embeddings`` (Spec §11.7)."""


#: the most workers of one run (Spec §2.2: a table holds segments and views for every worker, each
#: view naming every worker's segments, so its size and every tick's plan grow with W^2)
MAX_WORKERS = 1024
#: the largest seed a torch generator takes (Spec §11.5: worker w is seeded seed + w)
MAX_SEED = 2**64 - 1


def _name(name: str, cli: bool) -> str:
    return "--" + name.replace("_", "-") if cli else name


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer as the settings take one (Spec §11.7): a Python or numpy
    integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int, *, cli: bool = False, fix: str = "") -> int:
    """``value`` must be an integer ``>= minimum`` (bools and floats such as 2.5 are refused)."""
    shown = _name(name, cli)
    if not is_int(value):
        raise SettingsError(f"{shown} must be an integer >= {minimum}; got {value!r}{fix}")
    if value < minimum:
        raise SettingsError(f"{shown} must be >= {minimum}; got {value}{fix}")
    return int(value)


def check_ints(name: str, values: Any) -> tuple[int, ...]:
    """``values`` must be a list (any iterable but a string) of integers, each as :func:`check_int` takes
    one (bools and floats such as 2.7 are refused, not truncated; a string is not split into digits)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise SettingsError(f"{name} must be a list of integers; got {values!r}")
    values = tuple(values)
    bad = next((v for v in values if not is_int(v)), None)
    if bad is not None:
        raise SettingsError(f"{name} must be a list of integers; got {bad!r} in {list(values)!r}")
    return tuple(int(v) for v in values)


def _check_real(name: str, value: Any, cli: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise SettingsError(f"{_name(name, cli)} must be a finite number; got {value!r}")
    return float(value)


def check_problem(problem: Any) -> str:
    """The problem must be a non-empty string with some non-whitespace text, encodable as UTF-8 (a
    command-line argument with bytes that are not UTF-8 arrives holding lone surrogates)."""
    if not isinstance(problem, str):
        raise SettingsError(f"the problem must be a string of text; got {type(problem).__name__}")
    if not problem.strip():
        raise SettingsError("the problem is empty; give the problem text to solve")
    bad = unencodable(problem)
    if bad is not None:
        raise SettingsError(f"the problem is not valid text: {bad[0]!r} at character {bad[1]} "
                            "(bytes that are not UTF-8?); give the problem as UTF-8 text")
    return problem


def unencodable(text: str) -> tuple[str, int] | None:
    """The first characters of ``text`` that UTF-8 cannot write (lone surrogates: the bytes of a command-line
    argument or file name that are not UTF-8, or JSON's ``"\\udce8"``) and where they start; None if none
    (an input check of Spec §11.7)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return text[exc.start:exc.end], exc.start
    return None


def escaped(text: str) -> str:
    """``text`` with what UTF-8 cannot write (see :func:`unencodable`) as backslash escapes, for a title or a
    name written to a results file (Spec §13.5)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_sampling(temperature: Any = 0.0, top_k: Any = None, top_p: Any = None, min_p: Any = None,
                   *, cli: bool = False) -> None:
    """Temperature ``>= 0`` (0 is greedy), ``top_k`` an integer ``>= 1``, ``top_p`` in (0, 1], ``min_p`` in [0, 1)."""
    t = _check_real("temperature", temperature, cli)
    if t < 0:
        raise SettingsError(f"{_name('temperature', cli)} must be >= 0 (0 is greedy); got {temperature}")
    if top_k is not None:
        check_int("top_k", top_k, 1, cli=cli)
    if top_p is not None:
        p = _check_real("top_p", top_p, cli)
        if not 0 < p <= 1:
            raise SettingsError(f"{_name('top_p', cli)} must be in (0, 1]; got {top_p}")
    if min_p is not None:
        m = _check_real("min_p", min_p, cli)
        if not 0 <= m < 1:
            raise SettingsError(f"{_name('min_p', cli)} must be in [0, 1); got {min_p}")


def plain_sampling(settings: Any) -> None:
    """Write a checked frozen dataclass's sampling fields as Python numbers (``float``, and ``int``
    for ``top_k``): a ``Fraction`` or NumPy temperature then divides tensors and writes to JSON."""
    for name, kind in (("temperature", float), ("top_k", int), ("top_p", float), ("min_p", float)):
        value = getattr(settings, name)
        if value is not None and type(value) is not kind:
            object.__setattr__(settings, name, kind(value))


def check_settings(
    *,
    problem: Any = "x",
    workers: Any = 2,
    layout: Any = "combined",
    backend: Any = "fast",
    backends: Sequence[str] = ("fast", "oracle", "rotate_keys", "rotate_queries"),
    max_ticks: Any = 256,
    snapshots: Any = (),
    finisher_tokens: Any = 24,
    collab_every: Any = None,
    seed: Any = 0,
    temperature: Any = 0.0,
    top_k: Any = None,
    top_p: Any = None,
    min_p: Any = None,
    cli: bool = False,
) -> None:
    """Every run setting at once, in the order a user reads them (Spec §11.7).

    ``max_ticks`` is the budget in ticks: an integer ``>= 0`` (Spec §6.5: 0 ends generation before
    the first tick, so only the finisher answers; the library also takes None: no budget).
    Snapshot ticks must lie within the budget. ``collab_every`` is None (off) or ``>= 1``.
    """
    check_problem(problem)
    check_workers(workers, cli=cli)
    if layout not in LAYOUTS:
        raise SettingsError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if backend not in backends:
        raise SettingsError(f"unknown backend {backend!r}; choose one of {', '.join(backends)}")
    if max_ticks is not None or cli:
        check_int("max_ticks", max_ticks, 0, cli=cli,
                  fix=" (the budget in ticks; 0 goes straight to the finisher)" if cli else
                  " (the budget in ticks; None for no budget, 0 goes straight to the finisher)")
    if isinstance(snapshots, (str, bytes)) or not isinstance(snapshots, Sequence):
        raise SettingsError(f"{_name('snapshots', cli)} must be a list of tick counts; got {snapshots!r}")
    for t in snapshots:
        check_int("snapshots", t, 1, cli=cli, fix=" (a tick count; the first tick is 1)")
        if max_ticks is not None and t > max_ticks:
            raise SettingsError(
                f"snapshot at tick {t} is beyond the budget of {max_ticks} ticks; lower it or raise "
                f"{_name('max_ticks', cli)}"
            )
    check_int("finisher_tokens", finisher_tokens, 1, cli=cli)
    if collab_every is not None:
        check_int("collab_every", collab_every, 1, cli=cli, fix=" (tokens between collaboration prompts; 0 turns them off)"
                  if cli else " (tokens between collaboration prompts; None turns them off)")
    check_seed(seed, workers, cli=cli)
    check_sampling(temperature, top_k, top_p, min_p, cli=cli)


def check_workers(workers: Any, *, cli: bool = False) -> None:
    """``workers`` an integer from 1 to :data:`MAX_WORKERS` (Spec §2.2: a table grows with its square)."""
    check_int("workers", workers, 1, cli=cli)
    if workers > MAX_WORKERS:
        raise SettingsError(f"{_name('workers', cli)} {workers} is more than the {MAX_WORKERS} workers supported: the "
                            f"segment table and every tick's plan grow with the square of the worker count (Spec §2.2); "
                            f"give {_name('workers', cli)} {MAX_WORKERS} or less")


def check_seed(seed: Any, workers: int, minimum: int = 0, *, cli: bool = False) -> None:
    """``seed`` an integer ``>= minimum`` whose workers' seeds ``seed + w`` (Spec §11.5) stay ``<= 2^64 - 1``,
    the largest a torch generator takes."""
    check_int("seed", seed, minimum, cli=cli)
    if seed + workers - 1 > MAX_SEED:
        raise SettingsError(f"{_name('seed', cli)} {seed} is too large: worker w samples with the seed {seed} + w, "
                            f"which must stay <= 2^64 - 1; give a seed <= {MAX_SEED - workers + 1}")


def context_bound(prompt_tokens: int, workers: int, max_ticks: int | None, finisher_tokens: int = 0) -> int | None:
    """Positions a run reaches at least when it uses its whole budget (Spec §11.7).

    Every worker's view holds the prompt and its own fed tokens; in the combined and contiguous
    layouts every other worker's tokens too. This is ``prompt + workers * max_ticks + finisher``,
    a lower estimate for runs that spend the budget (step headers add more).
    """
    if max_ticks is None:
        return None
    return prompt_tokens + workers * max_ticks + finisher_tokens


_FLAG_NAMES: contextvars.ContextVar[bool] = contextvars.ContextVar("hogwild_flag_names", default=False)


def flags_named() -> bool:
    """Whether the code runs inside :func:`flag_names` (Spec §11.7: the CLI names its flags)."""
    return _FLAG_NAMES.get()


@contextlib.contextmanager
def flag_names() -> Iterator[None]:
    """Within this block the library's checks and run-time warnings name command-line flags
    (``--max-ticks``, Spec §11.7): :meth:`Settings.from_flags <hogwild_ref.settings.Settings.from_flags>`
    and the CLI's runs use it."""
    token = _FLAG_NAMES.set(True)
    try:
        yield
    finally:
        _FLAG_NAMES.reset(token)


def warn_context(bound: int | None, limit: int | None, *, cli: bool = False, budget: str = "max_ticks",
                 prompt: int | None = None) -> str | None:
    """Warn (and return the message) when ``bound`` passes the model's ``max_position_embeddings``;
    ``budget`` names the setting that holds the budget (``budgets`` for an evaluation), as its flag
    when ``cli`` or inside :func:`flag_names` (the command line's run). When the ``prompt`` alone (its
    tokens in a worker's view) passes it, the warning says so: no budget helps."""
    cli = cli or flags_named()
    if limit is not None and prompt is not None and prompt > limit:
        message = (f"the prompt alone is {prompt} tokens in a worker's view (the problem, the prompt templates and "
                   f"every worker's headers), beyond the model's max_position_embeddings of {limit}; quality "
                   "degrades past it: shorten the problem, or use fewer workers")
        warnings.warn(message, ContextLengthWarning, stacklevel=3)
        return message
    if bound is None or limit is None or bound <= limit:
        return None
    message = (
        f"this run may reach about {bound} positions (prompt + workers x budget), beyond the model's "
        f"max_position_embeddings of {limit}; quality degrades past it: lower the budget "
        f"({_name(budget, cli)}) or the number of workers"
    )
    warnings.warn(message, ContextLengthWarning, stacklevel=3)
    return message
