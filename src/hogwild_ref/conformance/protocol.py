"""The adapter protocol: how the conformance runner talks to an implementation (Spec §12.3).

An *adapter* connects one Hogwild implementation to the runner. It is an object with **one method
per conformance level** — :meth:`Adapter.rope`, :meth:`Adapter.attention`, :meth:`Adapter.model` —
each of which receives the inputs of one vector as plain Python values (``dict``, ``list``, ``int``,
``float``, ``str``; JSON-compatible) and ``torch`` tensors, and returns ``torch`` tensors. Nothing
from ``hogwild_ref`` appears in the signatures, so an adapter for an unrelated code base needs only
``torch``.

* A level whose method the adapter does not define is reported as *skipped* (Spec §12.3). The three
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
        config: dict[str, Any],
        convention: str,
        x: Tensor,
        positions: Tensor,
        y: Tensor,
        deltas: Tensor,
    ) -> Mapping[str, Tensor]:
        """Rotate at absolute positions and re-rotate by deltas.

        Args:
            config: the model's Hugging Face config as a dict (``PretrainedConfig.to_dict()``
                without ``transformers_version``; ``model_type`` names the architecture). The RoPE
                parameters — inverse frequencies, ``attention_scaling`` ``A``, rotary dimension
                ``d_r``, head dimension ``D`` — are the architecture's own (Spec §8.1): for
                example ``transformers.AutoConfig.for_model(**config)`` and the architecture's
                ``*RotaryEmbedding`` module. LongRoPE is pinned to its short factors (Spec §8.4).
            convention: ``"half"`` (rotate-half, Llama/NeoX) or ``"interleaved"`` (GPT-J pairs),
                Spec §8.3.
            x: ``(N, D)`` float32 head vectors.
            positions: ``(N,)`` int64 absolute positions ``>= 0``.
            y: ``(N, D)`` float32 head vectors (already rotated vectors, or any vectors).
            deltas: ``(N,)`` int64 position deltas (may be negative).

        Returns:
            ``{"rotated": rotate(x, positions), "rerotated": rerotate(y, deltas)}``, both ``(N, D)``:
            ``rotate`` is the model's rotation with ``A`` (Spec §8.2), ``rerotate`` the *pure*
            rotation without ``A`` (Spec §8.3); row ``i`` uses ``positions[i]`` / ``deltas[i]``.
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
            rope: ``{"config": <HF config dict>, "convention": "half" | "interleaved"}``, as for
                :meth:`RopeAdapter.rope`.
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
        layout: str,
        workers: int,
        static: dict[str, list[int]],
        ticks: list[dict[str, Any]],
    ) -> Tensor:
        """Run a small model over a Hogwild cache through a given trace; return the logits.

        Args:
            config: the model's Hugging Face config as a dict (as for :meth:`RopeAdapter.rope`).
            weights: the model's float32 parameters by their transformers ``state_dict`` names.
            layout: the preset (Spec §4) — ``"contiguous"``, ``"interleaved"`` or ``"combined"``.
            workers: ``W``.
            static: token ids of the static segments, by segment id. The prompt segment ``P``
                (``common``, or ``prompt`` for contiguous) comes first. Prefill them as Spec §4.4
                says: ``P`` alone as one row ``([P], len)``, then every other non-empty static
                segment ``s`` in one forward pass, each as its own row ``([P, s], len)``.
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
    (``getattr(adapter, level, None)``) and reports the vectors of missing levels as skipped.
    """
