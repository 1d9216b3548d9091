"""Conformance suite: vectors, the adapter protocol, the runner and the reference adapter (Spec §12).

* :mod:`.protocol` — :class:`Adapter`: one method per level (``rope``, ``attention``, ``model``);
* :mod:`.reference` — :class:`ReferenceAdapter`, hogwild_ref itself as an adapter; the zero-argument
  factory :func:`reference` is what ``hogwild-ref conform --adapter hogwild_ref.conformance:reference``
  imports;
* :mod:`.vectors` — the vector format; :mod:`.generate` — :func:`generate_vectors` (deterministic), which runs one
  generator per level: :mod:`.vectors_rope`, :mod:`.vectors_attention`, :mod:`.vectors_model`;
* :mod:`.runner` — :func:`run` (returns a :class:`Report`, :mod:`.report`); :mod:`.scope` — declared
  scopes and :class:`SkipVector` (Spec §12.3);
* :mod:`.fuzz` — differential fuzzing with shrinking (Spec §12.8); :mod:`.pytest_plugin` — the vectors
  as pytest items (Spec §12.6);
* :mod:`.external` — adapters in another process (:class:`~.external.CommandAdapter`, the line
  protocol of Spec §12.7) and offline (:func:`~.external.export_vectors`,
  :class:`~.external.OutputsDirAdapter`).
"""

from __future__ import annotations

from .protocol import LEVELS, Adapter, AttentionAdapter, ModelAdapter, RopeAdapter
from .reference import ReferenceAdapter, reference
from .runner import Report, VectorResult, default_vectors_dir, load_adapter, run
from .scope import SkipVector
from .generate import generate_vectors
from .vectors import load_vector

__all__ = [
    "LEVELS",
    "Adapter",
    "AttentionAdapter",
    "ModelAdapter",
    "ReferenceAdapter",
    "Report",
    "RopeAdapter",
    "SkipVector",
    "VectorResult",
    "default_vectors_dir",
    "generate_vectors",
    "load_adapter",
    "load_vector",
    "reference",
    "run",
]
