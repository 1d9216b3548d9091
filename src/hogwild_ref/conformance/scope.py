"""Declared scope: which vectors an implementation claims to cover (Spec §12.3, §12.7).

An adapter may declare, next to its levels, the **scope** it supports: a mapping whose keys name a
property of a vector and whose values list the accepted values (every key is optional; an absent
key accepts everything)::

    {"dtypes": ["float32"],                      # the vector's dtype
     "conventions": ["half"],                    # RoPE pairing convention (Spec §8.3)
     "rope_types": ["default", "yarn"],          # RoPE type (Spec §8.4)
     "layouts": ["contiguous", "official-combined"],  # preset, named table, or "explicit" (any table)
     "prefill": ["given"],                       # model level: "spec" (§4.4) or "given" static K/V
     "unsupported_features": ["partial rotary"]} # any vector listing one of these features

A vector outside the declared scope is reported *out of scope*, not failed; so is every vector of a
level the adapter does not implement. An adapter may also refuse one vector with a reason
(:class:`SkipVector` in-process, a ``{"id": ..., "skip": "<reason>"}`` reply out of process): it is
reported *skipped*. Neither counts as a failure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..rope import SUPPORTED_ROPE_TYPES
from ..segments import LAYOUTS
from .vectors import Vector
from .vectors_rope import CONVENTIONS

__all__ = ["SCOPE_KEYS", "SCOPE_VALUES", "SkipVector", "check_scope", "load_scope_file", "out_of_scope", "vector_properties"]

#: the keys a scope may have (Spec §12.3)
SCOPE_KEYS = ("dtypes", "conventions", "rope_types", "layouts", "prefill", "unsupported_features")


#: the values each scope key can match (Spec §12.3, §12.4): a value outside them is a typo
#: (``bf16``, ``Interleaved``) that would put vectors out of scope unnoticed, so it is a usage error
SCOPE_VALUES: dict[str, tuple[str, ...]] = {
    "dtypes": ("float32", "bfloat16", "float16", "float64"),
    "conventions": CONVENTIONS,
    "rope_types": SUPPORTED_ROPE_TYPES,
    "layouts": (*LAYOUTS, "official-combined", "private-scratch", "explicit"),
    "prefill": ("spec", "given"),
}

_NAMES = {"dtypes": "dtype", "conventions": "convention", "rope_types": "rope type", "layouts": "layout",
          "prefill": "prefill"}


class SkipVector(Exception):
    """Raised by an in-process adapter that cannot run one vector (Spec §12.3): the vector is skipped."""


def vector_properties(vector: Vector) -> dict[str, str]:
    """The scope properties of a vector (Spec §12.3): one value per scope key except ``unsupported_features``."""
    meta, inputs = vector.meta, vector.meta["inputs"]
    features = [str(f) for f in meta.get("features", [])]
    props = {
        "dtypes": str(meta["dtype"]),
        "conventions": str(inputs["rope"]["convention"]),
        "rope_types": str(inputs["rope"]["rope_type"]),
    }
    if vector.level != "rope":
        layout = inputs.get("layout")
        if layout is None:
            named = [f.removeprefix("table=") for f in features if f.startswith("table=")]
            layout = named[0] if named else "explicit"
        props["layouts"] = str(layout)
    if vector.level == "model":
        prefill = inputs.get("prefill")
        if prefill is None:  # format version 2: the feature says it
            prefill = "given" if "prefill=given" in features else "spec"
        props["prefill"] = str(prefill)
    return props


def check_scope(scope: Any, where: str = "the adapter's scope", *, values: bool = False) -> dict[str, list[str]]:
    """Validate a declared scope; raise ValueError naming the problem and the fix. ``values``: also
    refuse a value no vector can have (:data:`SCOPE_VALUES`), for a scope a person typed (``--scope
    FILE``); an adapter may declare more than this suite's vectors hold (a dtype of its own)."""
    if scope is None:
        return {}
    if not isinstance(scope, Mapping):
        raise ValueError(f"{where} must be a JSON object like {{\"dtypes\": [\"float32\"]}}; got {scope!r}")
    out: dict[str, list[str]] = {}
    for key, accepted in scope.items():
        if key not in SCOPE_KEYS:
            raise ValueError(f"{where} has an unknown key {key!r}; the keys are {', '.join(SCOPE_KEYS)} (Spec §12.3)")
        if not isinstance(accepted, list) or not all(isinstance(v, str) for v in accepted):
            raise ValueError(f"{where}: {key!r} must be a list of strings; got {accepted!r}")
        unknown = [v for v in accepted if key in SCOPE_VALUES and v not in SCOPE_VALUES[key]]
        if values and unknown:
            raise ValueError(f"{where}: {key!r} has {unknown[0]!r}, which no vector can have; the values are "
                             f"{', '.join(SCOPE_VALUES[key])} (Spec §12.3)")
        out[str(key)] = list(accepted)
    return out


def out_of_scope(scope: Mapping[str, list[str]] | None, vector: Vector) -> str | None:
    """Why ``vector`` is outside ``scope`` (a sentence), or None when it is inside."""
    if not scope:
        return None
    props = vector_properties(vector)
    for key, value in props.items():
        accepted = scope.get(key)
        if accepted is None:
            continue
        if key == "layouts" and value not in ("contiguous", "interleaved", "combined") and "explicit" in accepted:
            continue  # "explicit" accepts every explicit table, named or not
        if value not in accepted:
            return f"{_NAMES[key]} {value!r} is not in the declared scope ({key}: {accepted})"
    unsupported = set(scope.get("unsupported_features", []))
    hit = [f for f in vector.meta.get("features", []) if f in unsupported]
    if hit:
        return f"feature {hit[0]!r} is declared unsupported"
    return None


def load_scope_file(path: Path | str) -> tuple[list[str] | None, dict[str, list[str]]]:
    """Read a scope file: a scope object, or a hello reply ``{"levels": [...], "scope": {...}}``.

    Returns ``(levels or None, scope)``; errors are ValueError with the fix.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"scope file {p} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"scope file {p} is not JSON ({exc}); write a scope object or the adapter's hello reply") from None
    if isinstance(data, dict) and ("levels" in data or "scope" in data or "ok" in data):
        levels = data.get("levels")
        from .protocol import LEVELS

        if levels is not None and (not isinstance(levels, list) or not all(lv in LEVELS for lv in levels)):
            raise ValueError(f"scope file {p}: 'levels' must be a subset of {list(LEVELS)}; got {levels!r}")
        return levels, check_scope(data.get("scope"), f"scope file {p}", values=True)
    return None, check_scope(data, f"scope file {p}", values=True)
