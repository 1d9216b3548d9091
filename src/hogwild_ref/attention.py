"""Attention backends over segment-local K/V (Spec §9).

All backends compute, for every batch row ``r`` and query slot ``i`` of a tick, softmax attention
over the keys that the :class:`~hogwild_ref.plan.TickPlan` makes visible, in one softmax over all
segments of the row's view. Shapes:

* ``q``: ``(R, Hq, n, D)`` — the tick's queries, rotated at their view positions (as the model does);
* ``keys[j]``, ``values[j]``: ``(Hkv, L_j, D)`` — segment ``j`` (table order) with ``L_j >= lengths[j]``
  stored rows; keys rotated at segment-local positions ``0..L_j-1`` (Spec §2.1);
* result: ``(R, Hq, n, D)`` in ``q``'s dtype. ``Hq`` is a multiple of ``Hkv`` (GQA/MQA, Spec §9.4):
  K/V are never repeated per query head.

Backends:

* :func:`rotate_queries` (Spec §9.2): keys never move; the query is re-rotated once per segment by
  ``-o_r(s)``, so its dot product with key ``t`` sees the relative position ``p - o_r(s) - t``.
* :func:`rotate_keys` (Spec §9.3): the official implementation's method — re-rotate every segment by
  ``+o_r(s)`` and concatenate each row's view.
* :func:`oracle` (Spec §9.1): from position-0 (un-rotated) inputs, assemble each row's linearised
  view, rotate every key and query at its view position, causal mask over the view, float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from einops import rearrange
from jaxtyping import Bool, Float
from torch import Tensor

from .plan import TickPlan
from .rope import RopeSpec, Rotation

__all__ = ["BACKENDS", "Backend", "lse_merge", "oracle", "partial_attention", "rotate_keys", "rotate_queries", "TOLERANCES"]

#: Tolerance policy (Spec §10): max abs error of a backend against the oracle, relative to the
#: largest |value|, for attention outputs computed in each dtype.
TOLERANCES: dict[torch.dtype, float] = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}

Backend = Callable[..., Tensor]


def _group(q: Tensor, hkv: int) -> Tensor:
    if q.shape[1] % hkv:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {hkv} key/value heads")
    return rearrange(q, "r (k g) n d -> r k g n d", k=hkv)


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32, or float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def _masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last axis where ``mask`` is True; fully masked rows give zeros."""
    if scores.shape[-1] == 0:
        return torch.zeros_like(scores)
    scores = scores.masked_fill(~mask, float("-inf"))
    top = scores.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).min)
    e = torch.exp(scores - top)
    return e / e.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)


def rotate_queries(
    q: Float[Tensor, "R Hq n D"],
    keys: Sequence[Float[Tensor, "Hkv _L D"]],
    values: Sequence[Float[Tensor, "Hkv _L D"]],
    plan: TickPlan,
    rope: RopeSpec,
    scaling: float,
) -> Float[Tensor, "R Hq n D"]:
    """Attention with keys at segment-local positions and queries rotated per segment (Spec §9.2).

    Score of query ``(r, i)`` (at view position ``p``) against key ``t`` of segment ``s``:
    ``(R(p - o_r(s)) q) · (R(t) k)``. One softmax over all segments; K/V are read in place.
    """
    hkv = keys[0].shape[0]
    acc = _acc(q.dtype)
    rot = plan.query_rotation
    if rot is None or q.dtype == torch.float64:
        rot = rope.rotation(-plan.offsets, q.device, torch.float64 if q.dtype == torch.float64 else torch.float32)
    # every segment's query rotation at once: (R, S, Hq, n, D)
    qs = rope.apply(q[:, None], Rotation(rot.cos[:, :, None, None, :], rot.sin[:, :, None, None, :]))
    qs = rearrange(qs, "r s (k g) n d -> s r k g n d", k=hkv)
    lengths = plan.sizes
    # scores and the weighted sum in the accumulation dtype: rounding raw q·k to bf16 before the
    # softmax would cost ~1% of a score of 100 (Spec §10)
    scores = [
        torch.einsum("rkgnd,ktd->rkgnt", qs[j].to(acc), k[:, :L].to(acc))
        for j, (k, L) in enumerate(zip(keys, lengths, strict=True))
    ]
    p = _masked_softmax(torch.cat(scores, dim=-1) * scaling, plan.key_mask[:, None, None])
    starts = [sum(lengths[:j]) for j in range(len(lengths))]
    out = sum(
        (torch.einsum("rkgnt,ktd->rkgnd", p[..., s0 : s0 + L], v[:, :L].to(acc)) for s0, v, L in zip(starts, values, lengths, strict=True)),
        start=torch.zeros(p.shape[:-1] + (q.shape[-1],), dtype=acc, device=q.device),
    )
    return rearrange(out, "r k g n d -> r (k g) n d").to(q.dtype)


def rotate_keys(
    q: Float[Tensor, "R Hq n D"],
    keys: Sequence[Float[Tensor, "Hkv _L D"]],
    values: Sequence[Float[Tensor, "Hkv _L D"]],
    plan: TickPlan,
    rope: RopeSpec,
    scaling: float,
) -> Float[Tensor, "R Hq n D"]:
    """The official implementation's method (Spec §9.3): re-rotate each segment by ``+o_r(s)``.

    For each row, the segments of its view are rotated to their view positions and concatenated;
    the mask is causal over view positions. Costs a copy of the whole view per row per layer.
    """
    hkv = keys[0].shape[0]
    outs = []
    lengths = plan.sizes
    for r, row in enumerate(plan.rows):
        ks, vs, kpos = [], [], []
        for sid in row.view:
            j = plan.table.index(sid)
            o = plan.row_offsets[r][j]
            L = lengths[j]
            ks.append(rope.rerotate(keys[j][:, :L], o))
            vs.append(values[j][:, :L])
            kpos.append(torch.arange(o, o + L, device=q.device))
        k, v, kp = torch.cat(ks, dim=1), torch.cat(vs, dim=1), torch.cat(kpos)
        qr = _group(q[r : r + 1], hkv)
        s = torch.einsum("rkgnd,ktd->rkgnt", qr.to(_acc(q.dtype)), k.to(_acc(q.dtype))) * scaling
        mask = kp[None, :] <= plan.positions[r, :, None]  # (n, T)
        if not plan.counts[r]:
            mask = torch.zeros_like(mask)
        p = _masked_softmax(s, mask[None, None, None])
        outs.append(torch.einsum("rkgnt,ktd->rkgnd", p, v.to(_acc(q.dtype))))
    out = torch.cat(outs, dim=0)
    return rearrange(out, "r k g n d -> r (k g) n d").to(q.dtype)


def oracle(
    q0: Float[Tensor, "R Hq n D"],
    keys0: Sequence[Float[Tensor, "Hkv _L D"]],
    values: Sequence[Float[Tensor, "Hkv _L D"]],
    plan: TickPlan,
    rope: RopeSpec,
    scaling: float,
) -> Float[Tensor, "R Hq n D"]:
    """Dense from-scratch attention (Spec §9.1), float64.

    Inputs are in *position-0 form*: ``q0 = rope.rotate(q, 0)``, ``keys0[j] = rope.rotate(k, 0)``
    (un-rotated, with ``attention_scaling`` applied once, exactly what the model computes at
    position 0). Each row's view is linearised; every key is rotated at its view position
    ``0..T-1`` and every query at its view position, purely (no second scaling); a key is
    visible iff its view position is ``<=`` the query's.
    """
    hkv = keys0[0].shape[0]
    outs = []
    lengths = plan.sizes
    for r, row in enumerate(plan.rows):
        idx = [plan.table.index(sid) for sid in row.view]
        k = torch.cat([keys0[j][:, : lengths[j]] for j in idx], dim=1).double()
        v = torch.cat([values[j][:, : lengths[j]] for j in idx], dim=1).double()
        T = k.shape[1]
        view_pos = torch.arange(T, device=k.device)
        k = rope.rerotate(k, view_pos[None, :])
        qr = rope.rerotate(q0[r : r + 1].double(), plan.positions[r][None, None, :])
        s = torch.einsum("rkgnd,ktd->rkgnt", _group(qr, hkv), k) * scaling
        mask = view_pos[None, :] <= plan.positions[r, :, None]
        if not plan.counts[r]:
            mask = torch.zeros_like(mask)
        p = _masked_softmax(s, mask[None, None, None])
        outs.append(torch.einsum("rkgnt,ktd->rkgnd", p, v))
    out = torch.cat(outs, dim=0)
    return rearrange(out, "r k g n d -> r (k g) n d").to(q0.dtype)


def partial_attention(
    scores: Float[Tensor, "*batch m"], mask: Bool[Tensor, "*#batch m"], values: Float[Tensor, "*batch m D"]
) -> tuple[Float[Tensor, "*batch D"], Float[Tensor, "*batch"]]:
    """One part's softmax output and natural-log log-sum-exp over its visible keys (Spec §9.5).

    ``scores`` already include the scale. A part with no visible key gets ``lse = -inf`` and output 0.
    """
    z = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(z, dim=-1)
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    p = torch.exp(z - safe[..., None])
    out = (p[..., None] * values).sum(dim=-2)
    return out, lse


def lse_merge(
    outputs: Sequence[Float[Tensor, "*batch D"]], lses: Sequence[Float[Tensor, "*batch"]]
) -> Float[Tensor, "*batch D"]:
    """Merge per-part attention outputs by their natural-log log-sum-exps (Spec §9.5).

    ``O = Σ_s exp(lse_s - lse) O_s`` with ``lse = ln Σ_s exp(lse_s)``; parts with ``lse_s = -inf``
    weigh 0 and an all-empty query gives 0. Kernels returning base-2 LSEs must convert first
    (``lse_e = lse_2 · ln 2``).
    """
    lse = torch.stack(list(lses), dim=0)
    top = lse.amax(dim=0)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    w = torch.exp(lse - top)  # exp(-inf) = 0 for empty parts
    total = w.sum(dim=0)
    w = w / total.clamp_min(torch.finfo(w.dtype).tiny)
    return sum(wi[..., None] * oi for wi, oi in zip(w, outputs))


#: Backends by name; ``oracle`` takes position-0 inputs, the others model-rotated ones.
BACKENDS: dict[str, Backend] = {"oracle": oracle, "rotate_keys": rotate_keys, "rotate_queries": rotate_queries}
