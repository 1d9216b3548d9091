"""The reference adapter: hogwild_ref itself behind the adapter protocol (Spec §12.3).

:class:`ReferenceAdapter` runs every level with the reference's own code paths:

* ``rope``: :class:`~hogwild_ref.rope.RopeSpec` built from the config (``rotate`` / ``rerotate``);
* ``attention``: the segment table (:mod:`~hogwild_ref.segments`), the tick plan
  (:func:`~hogwild_ref.plan.plan_tick`) and a one-layer :class:`~hogwild_ref.storage.Storage` driven by a
  :class:`~hogwild_ref.ticks.GeneralTick` (``write`` stores the new keys at local positions, ``attend``
  runs the rotate-queries backend);
* ``model``: a transformers model driven tick by tick by the forward step
  (:class:`~hogwild_ref.forward.Forward`: prefill as Spec §4.4, flushes with ``Storage.flush``).

With ``backend="oracle"`` the ``model`` level runs the engine oracle (Spec §11.4) instead; the vector
generator uses that, in float64, to produce the expected logits.

The ``make_*`` / ``tick_*`` methods are the adapter's only decisions (``make_plan`` is the planner of
every general tick, at both levels). They exist so that tests can
derive *mutant* adapters (subclasses that get one thing wrong) and check that the vectors catch them.
"""

from __future__ import annotations

import types
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..forward import Forward
from ..plan import TickPlan, plan_tick
from ..rope import RopeSpec
from ..segments import Row, SegmentTable, make_layout, prompt_segment
from ..storage import Storage
from ..ticks import GeneralTick

__all__ = ["ReferenceAdapter", "config_from_dict", "reference", "rope_spec"]


def config_from_dict(config: Mapping[str, Any]) -> Any:
    """A transformers config from the dict stored in a vector (``PretrainedConfig.to_dict()`` form)."""
    from transformers import AutoConfig

    data = dict(config)
    data.pop("transformers_version", None)
    model_type = data.pop("model_type")
    return AutoConfig.for_model(model_type, **data)


class ReferenceAdapter:
    """The reference implementation as a conformance adapter (all three levels).

    Args:
        backend: attention backend of the ``model`` level: ``"rotate_queries"`` (default),
            ``"rotate_keys"``, or ``"oracle"`` (the engine oracle, Spec §11.4).
        dtype: dtype the ``model`` level runs the model in (float32 by default; the vector
            generator runs the oracle in float64).
    """

    def __init__(self, backend: str = "rotate_queries", dtype: torch.dtype = torch.float32) -> None:
        self.backend = backend
        self.dtype = dtype

    # ------------------------------------------------------------------ decisions (hooks)
    def make_rope(self, rope: Mapping[str, Any]) -> RopeSpec:
        """The RoPE of a vector: its version-independent data (Spec §12.4), which is normative."""
        return rope_spec(rope)

    def make_table(
        self, layout: str | None, workers: int, lengths: Mapping[str, int], table: Mapping[str, Any] | None
    ) -> SegmentTable:
        """The segment table: a preset built from its name (Spec §4), or the explicit one (Spec §4.5)."""
        if table is not None:
            built = SegmentTable.from_dict(table)
        else:
            if layout is None:
                raise ValueError("a vector needs a layout name or an explicit table")
            built = make_layout(layout, workers)
        if built.workers != workers:
            raise ValueError(f"the table has {built.workers} workers, the vector says {workers}")
        return built.with_lengths(dict(lengths)) if lengths else built

    def make_plan(self, table: SegmentTable, rows: Sequence[Row], rope: RopeSpec, device: Any) -> TickPlan:
        """The plan of a general tick (Spec §3.6): positions, offsets, write offsets, the key mask."""
        return plan_tick(table, rows, rope, device)

    def tick_counts(self, new_tokens: Sequence[int]) -> list[int]:
        """The new-token count each row writes in an ``attention`` tick (Spec §3.1)."""
        return list(new_tokens)

    def tick_feeds(self, feeds: Sequence[Sequence[int]]) -> list[list[int]]:
        """The token ids each worker feeds in a ``model`` tick (Spec §3.1)."""
        return [list(f) for f in feeds]

    # ------------------------------------------------------------------ level: rope (Spec §8)
    def rope(self, *, rope: dict[str, Any], config: dict[str, Any], x: Tensor, positions: Tensor, y: Tensor,
             deltas: Tensor) -> dict[str, Tensor]:
        """``rotate(x, positions)`` with ``attention_scaling`` and the pure ``rerotate(y, deltas)``."""
        spec = self.make_rope(rope)
        return {"rotated": spec.rotate(x, positions), "rerotated": spec.rerotate(y, deltas)}

    # ------------------------------------------------------------------ level: attention (Spec §3, §9)
    def attention(
        self,
        *,
        layout: str | None,
        workers: int,
        lengths: dict[str, int],
        table: dict[str, Any] | None,
        new_tokens: list[int],
        rope: dict[str, Any],
        config: dict[str, Any],
        scaling: float,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        keys: dict[str, Tensor],
        values: dict[str, Tensor],
    ) -> dict[str, Any]:
        """One tick of one layer through the reference's cache and rotate-queries backend."""
        spec = self.make_rope(rope)
        tab = self.make_table(layout, workers, lengths, table)
        counts = self.tick_counts(new_tokens)
        hq, hkv, head_dim = q.shape[1], k.shape[1], q.shape[-1]
        layer = types.SimpleNamespace(
            num_hidden_layers=1, num_attention_heads=hq, num_key_value_heads=hkv, head_dim=head_dim,
            hidden_size=hq * head_dim,
        )
        storage = Storage(layer, tab, spec, q.dtype, "cpu")
        store = storage.stores[0]
        for j, seg in enumerate(tab.segments):
            if seg.length:
                store.write(j, 0, keys[seg.id][:, : seg.length], values[seg.id][:, : seg.length])
        tick = GeneralTick(storage, tab.rows(counts), spec, "rotate_queries", "cpu", self.make_plan)
        n = tick.plan.n
        if q.shape[2] < n:
            raise ValueError(f"q has {q.shape[2]} query slots; the tick needs {n}")
        q, k, v = q[:, :, :n], k[:, :, :n], v[:, :, :n]
        # the model's RoPE at the view positions (Spec §8.2), then write-before-read (Spec §3.2)
        pos = tick.positions[:, None, :]
        tick.write(0, store, spec.rotate(k, pos), v)
        out = tick.attend(0, store, spec.rotate(q, pos), scaling)
        after = storage.table = tick.table
        writes = {after.write_segment(w) for w in range(after.workers)}
        return {
            "out": out,
            "keys": {sid: store.keys[after.index(sid)][:, : after.length(sid)] for sid in writes},
            "values": {sid: store.values[after.index(sid)][:, : after.length(sid)] for sid in writes},
        }

    # ------------------------------------------------------------------ level: model (Spec §4.4, §5, §11)
    def _setup(self, config: dict[str, Any], weights: dict[str, Tensor], rope: dict[str, Any], layout: str | None,
               workers: int, table: dict[str, Any] | None) -> tuple[Forward, Storage, str]:
        """The model's forward step (with the vector's RoPE), an empty storage and the prompt segment."""
        from transformers import AutoModelForCausalLM

        cfg = config_from_dict(config)
        with torch.random.fork_rng(devices=[]):  # from_config initialises (and we overwrite) weights
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        model.load_state_dict({name: t.to(torch.float32) for name, t in weights.items()}, strict=True)
        model = model.to(self.dtype).eval()
        tab = self.make_table(layout, workers, {}, table)
        forward = Forward(model, self.make_rope(rope), self.backend, compile=False, pack_weights=False,
                          planner=self.make_plan)
        return forward, forward.storage(tab), prompt_segment(tab)

    def prefill_kv(self, *, config: dict[str, Any], weights: dict[str, Tensor], rope: dict[str, Any],
                   layout: str | None, workers: int, table: dict[str, Any] | None,
                   static: dict[str, list[int]]) -> dict[str, tuple[Tensor, Tensor]]:
        """The static segments' K/V after the Spec §4.4 prefill: ``{id: (keys, values)}``, each
        ``(layers, Hkv, len, D)``, keys in the stored form of Spec §2.1 (used by the vector generator)."""
        forward, storage, first = self._setup(config, weights, rope, layout, workers, table)
        forward.prefill(storage, first, static)
        return {sid: storage.segment_kv(sid) for sid in static}

    def model(
        self,
        *,
        config: dict[str, Any],
        weights: dict[str, Tensor],
        rope: dict[str, Any],
        layout: str | None,
        workers: int,
        table: dict[str, Any] | None,
        static: dict[str, list[int]],
        static_keys: dict[str, Tensor] | None,
        static_values: dict[str, Tensor] | None,
        ticks: list[dict[str, Any]],
        prefill: str | None = None,
    ) -> Tensor:
        """Prefill (``prefill="spec"``) or load the given static K/V (``"given"``), then the trace's ticks
        and flushes, through the forward step over the vector's table (Spec §12.3). ``None``: given
        iff ``static_keys`` is."""
        if prefill not in (None, "spec", "given"):
            raise ValueError(f"prefill must be 'spec' or 'given', got {prefill!r}")
        if (prefill == "given") != (static_keys is not None) and prefill is not None:
            raise ValueError(f"prefill={prefill!r} but static_keys is {'absent' if static_keys is None else 'given'}")
        forward, storage, first = self._setup(config, weights, rope, layout, workers, table)
        if static_keys is not None:
            if static_values is None or set(static_values) != set(static_keys):
                raise ValueError("static_keys and static_values must name the same segments")
            storage.load(static_keys, static_values)
        else:
            if first not in static:
                raise ValueError(f"the trace gives no tokens for the prompt segment {first!r}")
            forward.prefill(storage, first, static)
        logits: list[Tensor] = []
        for tick in ticks:
            feeds = self.tick_feeds(tick["feeds"])
            out = forward(storage, storage.table.rows([len(f) for f in feeds]), feeds)
            assert out is not None
            logits.append(out.detach().float().cpu())
            for w in tick.get("flush", []):
                storage.flush(int(w))
        return torch.stack(logits)


def rope_spec(rope: Mapping[str, Any]) -> RopeSpec:
    """A :class:`RopeSpec` from a vector's version-independent RoPE data (Spec §12.4)."""
    try:
        return RopeSpec(
            torch.tensor(rope["inv_freq"], dtype=torch.float64), float(rope["attention_scaling"]),
            int(rope["head_dim"]), rope["convention"], str(rope.get("rope_type", "default")), rope.get("max_position"),
        )
    except KeyError as exc:
        raise ValueError(f"the vector's rope data lacks {exc}; version 2 vectors carry inv_freq, attention_scaling, "
                         "rotary_dim, head_dim and convention (Spec §12.4)") from exc


def reference() -> ReferenceAdapter:
    """Zero-argument factory of the reference adapter (``--adapter hogwild_ref.conformance:reference``)."""
    return ReferenceAdapter()

