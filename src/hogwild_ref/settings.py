"""One run's settings, validated once (Spec §11.7): the object that ``Engine``, ``generate``, the
batch runner, the eval runner and the CLI's ``generate`` / ``eval`` / ``bench`` share.

Pure: no torch. The CLI takes its choices from :data:`LAYOUTS`, :data:`BACKENDS` and :data:`DTYPES`,
so a new backend or layout appears in every command at once.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .checks import SettingsError, check_int, check_settings, flag_names, flags_named, plain_sampling
from .segments import LAYOUTS

__all__ = ["BACKENDS", "DTYPES", "LAYOUTS", "Settings"]

#: attention backends (Spec §9): ``fast`` (Spec §9.6: one-token ticks through the decode path, every other
#: forward through rotate_queries), the general ``rotate_queries`` and ``rotate_keys``, and the slow engine ``oracle``
BACKENDS = ("fast", "rotate_queries", "rotate_keys", "oracle")
#: model dtypes the CLI offers
DTYPES = ("float32", "bfloat16", "float16")

@dataclass(frozen=True)
class Settings:
    """What a Hogwild run does, checked once when built (Spec §11.7).

    Attributes:
        workers: number of workers ``W >= 1``.
        layout: a preset of Spec §4 (:data:`LAYOUTS`); with an explicit table the engine refuses any
            other than the default (the table's views are the layout, Spec §4.5).
        backend: one of :data:`BACKENDS` (Spec §9).
        max_ticks: the budget in ticks (batched forward passes, Spec §6.5); None: no budget; 0: straight to the finisher.
        seed: worker ``w`` samples with a generator on the model's device seeded ``seed + w``.
        temperature, top_k, top_p, min_p: sampling (``temperature == 0`` is greedy).
        snapshots: tick counts at which to record the state (within the budget, Spec §6.5).
        collab_every: tokens between collaboration prompts (None: off, Spec §6.3).
        finisher: force an answer when the budget ends without one (Spec §6.6), with at most
            ``finisher_tokens`` greedy tokens.
        prefill_chunk: most tokens per row in one prefill forward (bounds prefill memory, Spec §4.4).
    """

    workers: int = 2
    layout: str = "combined"
    backend: str = "fast"
    max_ticks: int | None = 256
    seed: int = 0
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    snapshots: tuple[int, ...] = ()
    collab_every: int | None = 1024
    finisher: bool = True
    finisher_tokens: int = 24
    prefill_chunk: int = 512

    def __post_init__(self) -> None:
        self.check(cli=flags_named())

    @classmethod
    def from_flags(cls, **values: Any) -> Settings:
        """Settings from command-line flags: the same checks, with errors naming the flags (``--max-ticks``)."""
        with flag_names():
            return cls(**values)

    def check(self, *, cli: bool = False, problem: Any = "x") -> None:
        """Every setting at once, in the order a user reads them; ``cli`` names the flags (``--max-ticks``)."""
        if isinstance(self.snapshots, list):
            object.__setattr__(self, "snapshots", tuple(self.snapshots))
        check_settings(problem=problem, workers=self.workers, layout=self.layout, backend=self.backend,
                       backends=BACKENDS, max_ticks=self.max_ticks, snapshots=self.snapshots,
                       finisher_tokens=self.finisher_tokens, collab_every=self.collab_every, seed=self.seed,
                       temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p, cli=cli)
        plain_sampling(self)
        ignored = [n for n in ("top_k", "top_p", "min_p") if getattr(self, n) is not None]
        if self.temperature == 0 and ignored:  # (transformers' generate warns alike)
            named = [f"--{n.replace('_', '-')}" if cli or flags_named() else n for n in ignored]
            warnings.warn(f"{' and '.join(named)} {'has' if len(named) == 1 else 'have'} no effect with temperature 0 "
                          "(greedy decoding, Spec §11.5); give a temperature > 0 to sample", UserWarning,
                          stacklevel=_caller_level())
        if not isinstance(self.finisher, bool):
            raise SettingsError(f"finisher must be True or False; got {self.finisher!r}")
        check_int("prefill_chunk", self.prefill_chunk, 1, cli=cli)
        for name in ("workers", "max_ticks", "finisher_tokens", "collab_every", "seed", "top_k", "prefill_chunk"):
            value = getattr(self, name)  # an integer of another type (numpy.int64) is stored as int
            if value is not None and type(value) is not int:
                object.__setattr__(self, name, int(value))
        # each requested tick once, in order: a snapshot is taken once per tick (Spec §6.5)
        object.__setattr__(self, "snapshots", tuple(sorted({int(t) for t in self.snapshots})))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names (the keywords :meth:`with_` and ``generate`` take)."""
        return tuple(f.name for f in fields(cls))

    def with_(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (checked again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, one key per field (a result's JSON records more, as the run used it:
        :meth:`hogwild_ref.engine.Engine.settings_dict`)."""
        data = asdict(self)
        data["snapshots"] = list(self.snapshots)
        return data


def _caller_level() -> int:
    """The ``stacklevel`` of a warning issued in :meth:`Settings.check` that names the first caller outside
    this package (and outside a dataclass's generated ``__init__``), as a warning should."""
    import sys
    from types import FrameType

    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and (frame.f_globals.get("__name__", "").startswith("hogwild_ref")
                                 or frame.f_code.co_filename == "<string>"):
        frame, level = frame.f_back, level + 1
    return level
