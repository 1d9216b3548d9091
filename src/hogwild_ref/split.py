"""The split common part of a one-token tick (Spec §9.5, §9.6): a fused kernel with its log-sum-exp.

:func:`decode_attention_split` computes what :func:`~hogwild_ref.fast.decode_attention` computes, with
the common segment attended by a fused attention kernel that never materialises a score row and
returns the part's log-sum-exp, and the tail (scored as in ``decode_attention``) merged with it by
Spec §9.5. Every row that feeds a token sees all ``L`` keys of the common segment, so the common part
needs no mask: the ``R·g`` queries of each KV head are one non-causal sequence over its ``L`` keys.

Kernels (:data:`KERNELS`) for the common part, :func:`default_kernel` picks one from the device:

* ``"cpu_flash"`` (CPU only): PyTorch's CPU flash kernel,
  ``aten._scaled_dot_product_flash_attention_for_cpu``, which returns the natural-log LSE;
* ``"flex"`` (any device): ``torch.nn.attention.flex_attention`` with ``return_aux=AuxRequest(lse=True)``
  under ``torch.compile`` (the CUDA form: inductor's Triton flex-decoding kernel, split-KV). The
  public function returns the natural-log LSE (its kernels work in base 2; the wrapper multiplies by
  ``ln 2``; checked against ``torch.logsumexp`` of explicit scores). Inductor's CPU flex template does
  not return the LSE (torch 2.13: "``return_lse`` is not supported yet"), so on the CPU the same
  compiled call runs with ``backend="aot_eager"``: Dynamo traces the same wrapper as on CUDA, the
  attention itself is flex's unfused reference. Inductor's flex needs a head dim of at least 16
  (:func:`unsupported` says so before the call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .fast import StaticTail, _tail_part_scores, _tail_parts, _tail_values
from .rope import RopeSpec, Rotation

__all__ = ["KERNELS", "SPLIT_DTYPES", "common_attention", "decode_attention_split", "default_kernel", "kernel_for",
           "unsupported"]

#: the fused kernels of the common part (:func:`common_attention`)
KERNELS = ("cpu_flash", "flex")
#: dtypes the split path takes (the fused kernels' dtypes; float64 stays on the score-row path)
SPLIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: the smallest head dim inductor's flex kernels take
FLEX_MIN_HEAD_DIM = 16


def default_kernel(device: torch.device | str) -> str:
    """The common part's kernel on ``device``: ``"cpu_flash"`` on the CPU, ``"flex"`` elsewhere (CUDA)."""
    return "cpu_flash" if torch.device(device).type == "cpu" else "flex"


def kernel_for(split: bool | str | None, device: torch.device | str) -> str | None:
    """The kernel a ``split`` option (off, True for the device's default, or a kernel's name) runs on
    ``device``; None when off. Raises ValueError for an unknown name."""
    if not split:
        return None
    if split is True:
        return default_kernel(device)
    if split not in KERNELS:
        raise ValueError(f"unknown split kernel {split!r}; choose one of {', '.join(KERNELS)}")
    return str(split)


def unsupported(kernel: str, device: torch.device | str, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why ``kernel`` cannot attend the common part of ``dtype`` K/V with ``head_dim`` on ``device``
    (one line naming the fix), or None when it can."""
    device = torch.device(device)
    if kernel not in KERNELS:
        return f"unknown split kernel {kernel!r}; choose one of {', '.join(KERNELS)}"
    if dtype not in SPLIT_DTYPES:
        return f"the split path takes {', '.join(map(str, SPLIT_DTYPES))}, not {dtype}; use decode_attention"
    if kernel == "cpu_flash" and device.type != "cpu":
        return f"the cpu_flash kernel runs on the CPU only, not {device.type}; use kernel 'flex'"
    if kernel == "flex" and head_dim < FLEX_MIN_HEAD_DIM:
        return f"flex attention needs a head dim >= {FLEX_MIN_HEAD_DIM}, not {head_dim}; use kernel 'cpu_flash' or decode_attention"
    return None


#: ``torch.compile(flex_attention)`` per device type, compiled once per process
_FLEX: dict[str, Callable[..., Any]] = {}


def _flex(device_type: str) -> Callable[..., Any]:
    fn = _FLEX.get(device_type)
    if fn is None:
        from torch.nn.attention.flex_attention import flex_attention

        # inductor's CPU template refuses the LSE (torch 2.13): trace the same call, run flex's reference
        backend = "aot_eager" if device_type == "cpu" else "inductor"
        fn = _FLEX[device_type] = torch.compile(flex_attention, backend=backend, fullgraph=True)
    return fn


def common_attention(
    q: Float[Tensor, "Hkv M D"], k: Float[Tensor, "Hkv L D"], v: Float[Tensor, "Hkv L D"], scaling: float, kernel: str,
) -> tuple[Float[Tensor, "Hkv M D"], Float[Tensor, "Hkv M"]]:
    """Non-causal attention of ``M`` queries per KV head over all ``L`` keys of that head, through the
    fused ``kernel`` (:data:`KERNELS`), and its natural-log log-sum-exp (Spec §9.5), float32 or wider.
    ``L`` must be at least 1 (PyTorch's CPU kernel dies with SIGFPE on an empty sequence)."""
    if k.shape[1] == 0:
        raise ValueError("the split common part needs a non-empty common segment; use decode_attention")
    why = unsupported(kernel, q.device, q.dtype, q.shape[-1])
    if why is not None:
        raise ValueError(why)
    if k.stride(-1) != 1:  # keys stored transposed (a CPU store, Spec §9.6): the fused kernels want D contiguous
        k = k.contiguous()
    if kernel == "cpu_flash":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q[None], k[None], v[None], 0.0, False, attn_mask=None, scale=scaling)
    else:
        from torch.nn.attention.flex_attention import AuxRequest

        out, aux = _flex(q.device.type)(q[None], k[None], v[None], scale=scaling, return_aux=AuxRequest(lse=True))
        lse = aux.lse  # natural log: flex_attention converts its kernels' base-2 LSE (Spec §9.5)
    acc = torch.promote_types(q.dtype, torch.float32)
    return out[0].to(acc), lse[0].to(acc)


def decode_attention_split(
    q: Float[Tensor, "R Hq 1 D"],
    k_common: Float[Tensor, "Hkv L D"],
    v_common: Float[Tensor, "Hkv L D"],
    k_tail: Float[Tensor, "Hkv St C D"],
    v_tail: Float[Tensor, "Hkv St C D"],
    query_rotation: Rotation,
    tail_mask: Bool[Tensor, "R T"],
    active: Float[Tensor, " R"],
    rope: RopeSpec,
    scaling: float,
    kernel: str | None = None,
    k_static: Float[Tensor, "Hkv Ss Cs D"] | None = None,
    v_static: Float[Tensor, "Hkv Ss Cs D"] | None = None,
    static: StaticTail | None = None,
) -> Float[Tensor, "R Hq 1 D"]:
    """:func:`~hogwild_ref.fast.decode_attention` with the common part split off (Spec §9.5, §9.6).

    ``k_common`` / ``v_common`` hold exactly the common segment's ``L >= 1`` stored keys (no window
    padding): every row that feeds a token sees all of them, so the common part is one fused,
    non-causal attention of the ``R·g`` queries of each KV head over ``L`` keys
    (:func:`common_attention` with ``kernel``, default :func:`default_kernel` of ``q``'s device),
    which returns its natural-log log-sum-exp. The tail is scored as in ``decode_attention`` under
    ``tail_mask`` (``T = St·C``), and with it the static tail (``k_static`` / ``v_static`` and
    ``static``, as there); the parts are merged by their log-sum-exps
    (:func:`~hogwild_ref.attention.lse_merge`'s rule, §9.5). Rows with ``active == 0`` return zeros.
    One group only (one common segment opening every view).
    """
    R, Hq, _, D = q.shape
    hkv = k_common.shape[0]
    g = Hq // hkv
    acc = torch.promote_types(q.dtype, torch.float32)
    qg = q.view(R, hkv, g, D)
    # common part: queries of all rows as one sequence per KV head, fused kernel with LSE
    qc = qg.permute(1, 0, 2, 3).reshape(hkv, R * g, D)
    out_c, lse_c = common_attention(qc, k_common, v_common, scaling, kernel or default_kernel(q.device))
    # tail parts: masked scores (hkv, S, R·g, C), block by block, with their LSE
    parts = _tail_parts(k_tail, v_tail, query_rotation, tail_mask, k_static, v_static, static)
    scores = [_tail_part_scores(qg.to(acc)[None], k, rotation, mask, rope)[0] * scaling
              for k, _, rotation, mask in parts]
    lse_t = torch.logsumexp(torch.stack([torch.logsumexp(st, dim=(1, 3)) for st in scores]), dim=0)  # -inf: no tail key
    top = torch.maximum(lse_c, lse_t)  # lse_c is finite: the common part is never empty
    w_c, w_t = torch.exp(lse_c - top), torch.exp(lse_t - top)
    out = w_c[..., None] * out_c
    for st, (_, v, _, _) in zip(scores, parts):  # each part's weights on the merged scale (0 where masked)
        out = out + _tail_values(torch.exp(st - top[:, None, :, None])[None], v)[0]
    out = out / (w_c + w_t)[..., None]
    out = out.view(hkv, R, g, D).permute(1, 0, 2, 3) * active[:, None, None, None]
    return out.reshape(R, Hq, 1, D).to(q.dtype)
