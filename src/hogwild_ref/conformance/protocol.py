"""The adapter protocol: how the conformance runner talks to an implementation (Spec §12.3).

An *adapter* connects one Hogwild implementation to the runner. It is an object with **one method
per conformance level** — :meth:`Adapter.rope`, :meth:`Adapter.attention`, :meth:`Adapter.model` —
each of which receives the inputs of one vector as plain Python values (``dict``, ``list``, ``int``,
``float``, ``str``; JSON-compatible) and ``torch`` tensors, and returns ``torch`` tensors. Nothing
from ``hogwild_ref`` appears in the signatures, so an adapter for an unrelated code base needs only
``torch``.

* A level whose method the adapter does not define is reported *out of scope* (Spec §12.3). The three
  single-level protocols :class:`RopeAdapter`, :class:`AttentionAdapter` and :class:`ModelAdapter`
  let a type checker check an adapter that implements only some levels.
* The runner calls every method with **keyword arguments**, never gives expected outputs, and
  treats an exception as a failure of that one vector.
* Returned tensors may have any floating dtype and live on any device; the runner moves them to the
  CPU and compares them in float64 against the expected ones.

The runner imports an adapter with ``hogwild-ref conform --adapter module:factory``: it imports
``module`` and calls ``factory()`` without arguments. The reference adapter is
``hogwild_ref.conformance:reference``.

Names used below (Spec §1.3): ``W`` workers, ``n = max(1, max(new_tokens))`` query slots per row,
``Hq``/``Hkv`` query and key/value heads, ``D`` head dimension, ``V`` vocabulary size, ``T`` ticks.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["LEVELS", "Adapter", "AttentionAdapter", "ModelAdapter", "RopeAdapter"]

#: conformance levels, in the order they build on each other (Spec §12.1)
LEVELS = ("rope", "attention", "model")


@runtime_checkable
class RopeAdapter(Protocol):
    """An adapter that implements the ``rope`` level (Spec §8)."""

    def rope(
        self,
        *,
        rope: dict[str, Any],
        config: dict[str, Any],
        x: Tensor,
        positions: Tensor,
        y: Tensor,
        deltas: Tensor,
    ) -> Mapping[str, Tensor]:
        """Rotate at absolute positions and re-rotate by deltas.

        Args:
            rope: the vector's RoPE, version-independent and normative (Spec §12.4):
                ``{"convention": "half" | "interleaved", "inv_freq": [θ_0, ..., θ_{h-1}],
                "attention_scaling": A, "rotary_dim": d_r, "head_dim": D, "rope_type": str,
                "max_position": int | None}``. ``inv_freq`` are transformers' float32 inverse
                frequencies (as float64 numbers); the first ``d_r = 2h`` channels are rotated
                (Spec §8.1), pairs per the convention (Spec §8.3).
            config: the model's Hugging Face config as a dict (transformers 5 ``to_dict()`` form,
                without ``transformers_version``); informative here — for implementations that
                build their RoPE from a config. Where the two disagree, ``rope`` is right.
            x: ``(N, D)`` float32 head vectors.
            positions: ``(N,)`` int64 absolute positions ``>= 0``.
            y: ``(N, D)`` float32 head vectors (already rotated vectors, or any vectors).
            deltas: ``(N,)`` int64 position deltas (may be negative).

        Returns:
            ``{"rotated": rotate(x, positions), "rerotated": rerotate(y, deltas)}``, both ``(N, D)``:
            ``rotate`` is the model's rotation with ``A`` (Spec §8.2), ``rerotate`` the *pure*
            rotation without ``A`` (Spec §8.3); row ``i`` uses ``positions[i]`` / ``deltas[i]``.
            Row ``i`` is held to a tolerance that grows with ``|p_i|`` (Spec §10.4), so float32
            angles pass.
        """
        ...


@runtime_checkable
class AttentionAdapter(Protocol):
    """An adapter that implements the ``attention`` level: one tick of one layer (Spec §2, §3, §9)."""

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
    ) -> Mapping[str, Any]:
        """Run one generation tick of one attention layer over a segment cache.

        Args:
            layout: the preset (``"contiguous"``, ``"interleaved"`` or ``"combined"``) whose
                segments and views the adapter must build itself for ``workers`` workers
                (Spec §4; segment ids as there), or ``None`` when ``table`` gives explicit views.
            workers: ``W``.
            lengths: every segment's length *before* the tick, by segment id.
            table: ``None`` for a preset; otherwise the segment table in the JSON form of
                Spec §2.4 (explicit views, Spec §4.5), with the same lengths as ``lengths``.
            new_tokens: ``[n_0, ..., n_{W-1}]``, the tokens worker ``w`` feeds this tick (``>= 0``);
                the tick's rows are the workers' rows (Spec §3.1).
            rope: the RoPE data, as for :meth:`RopeAdapter.rope` (normative).
            config: the HF config dict the RoPE data came from (informative).
            scaling: the attention scale (score = ``scaling * q·k``).
            q: ``(W, Hq, n, D)`` the new tokens' queries *before* RoPE (the attention layer's
                projections); slot ``i`` of row ``w`` is real iff ``i < n_w``, the rest is padding.
            k: ``(W, Hkv, n, D)`` the new tokens' keys before RoPE (same slots).
            v: ``(W, Hkv, n, D)`` the new tokens' values.
            keys: for every segment id, ``(Hkv, lengths[id], D)``: its stored keys in the stored
                form of Spec §2.1 (rotated at local positions ``0..len-1``, times ``A``).
            values: for every segment id, ``(Hkv, lengths[id], D)``: its stored values.

        The adapter computes every new token's view position (Spec §3.5, offsets from the
        post-write lengths), applies the model's RoPE to ``q`` and ``k`` there, writes the real
        slots of every row into its write segment before any row attends (Spec §3.2; zero-token
        rows and padding slots write nothing, Spec §3.4), and attends (Spec §3.3, §9).

        Returns:
            ``{"out": (W, Hq, n, D), "keys": {id: (Hkv, L, D)}, "values": {id: (Hkv, L, D)}}``:
            the attention output (padding slots and zero-token rows are ignored), and for every
            worker's write segment its stored keys (stored form, Spec §2.1) and values *after*
            the tick — ``L`` is its post-tick length. Further segments in ``keys``/``values`` are
            ignored.
        """
        ...


@runtime_checkable
class ModelAdapter(Protocol):
    """An adapter that implements the ``model`` level: a teacher-forced Hogwild run (Spec §3–§5, §11)."""

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
        prefill: str,
        static_keys: dict[str, Tensor] | None,
        static_values: dict[str, Tensor] | None,
        ticks: list[dict[str, Any]],
    ) -> Tensor:
        """Run a small model over a Hogwild cache through a given trace; return the logits.

        Args:
            config: the model's Hugging Face config as a dict (as for :meth:`RopeAdapter.rope`).
            weights: the model's float32 parameters by their transformers ``state_dict`` names.
            rope: the model's RoPE data (as for :meth:`RopeAdapter.rope`; normative where a
                rebuilt config would differ, e.g. under transformers 4).
            layout: the preset (Spec §4) — ``"contiguous"``, ``"interleaved"`` or ``"combined"`` —
                or ``None`` when ``table`` gives explicit views.
            workers: ``W``.
            table: ``None`` for a preset; otherwise the segment table in the JSON form of Spec §2.4
                (explicit views, Spec §4.5; all lengths 0).
            static: token ids of the static segments, by segment id. The prompt segment ``P``
                (the history, or the static segment opening every view) comes first.
            prefill: ``"spec"``: prefill the static segments as Spec §4.4 says (``static_keys`` is
                ``None``); ``"given"``: load ``static_keys``/``static_values`` and prefill nothing
                (format version 3; it says explicitly what the presence of ``static_keys`` implies).
            static_keys: ``None``: prefill the static segments as Spec §4.4 says (``P`` alone as
                one row ``([P], len)``, then every other non-empty static segment ``s`` in one
                forward pass, each as its own row ``([P, s], len)``). Otherwise, for every static
                segment, ``(layers, Hkv, len, D)`` keys in the stored form of Spec §2.1: load them
                (with ``static_values``) and do not prefill (Spec §12.2), so an implementation with
                another prefill design can run the vector.
            static_values: ``None``, or the static segments' values, ``(layers, Hkv, len, D)``.
            ticks: the generation ticks in order; tick ``t`` is
                ``{"feeds": [ids of worker 0, ..., ids of worker W-1], "flush": [w, ...]}``:
                worker ``w`` feeds ``feeds[w]`` (possibly empty: a zero-token row that writes
                nothing, Spec §3.4), then, after the forward pass, the listed workers' write
                segments are flushed into the history in the listed order (Spec §5).

        Returns:
            ``(T, W, V)`` logits: row ``w`` of tick ``t`` holds the logits of worker ``w``'s last
            fed token of that tick (slot ``n_w - 1``, Spec §11.2 step 5). Entries of workers that
            fed nothing are ignored.
        """
        ...


class Adapter(RopeAdapter, AttentionAdapter, ModelAdapter, Protocol):
    """An adapter that implements every level (Spec §12.3).

    Adapters may implement any subset: the runner looks each method up by the level's name
    (``getattr(adapter, level, None)``) and reports the vectors of missing levels as out of scope.
    Adapters in another process speak the line protocol of Spec §12.7 instead
    (:mod:`hogwild_ref.conformance.external`).
    """
