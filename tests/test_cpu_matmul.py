"""cpu_matmul.batched_matmul (Spec §9.6, "CPU window products"): ``torch.matmul`` of two same-batch
stacks of matrices, through numpy's BLAS for plain float32/float64 CPU tensors, else through torch.

The oracle is the product in float64 (for float64 inputs, in float64 too) with the rounding bound of a
length-``k`` dot product (Higham, Accuracy and Stability of Numerical Algorithms, §3.1): each entry
within ``γ_k·Σ|a_i·b_i|`` of the exact value, ``γ_k = k·u / (1 - k·u)``, ``u`` the unit roundoff of
the dtype (twice that between two computed results), the bound Spec §10 allows a product.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hogwild_ref.cpu_matmul import batched_matmul, numpy_applies

UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}


def _within_rounding_bound(got: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``got`` is ``a @ b`` within twice the dot-product bound of its dtype (module docstring)."""
    k = a.shape[-1]
    u = UNIT_ROUNDOFF[a.dtype]
    gamma = k * u / (1 - k * u)
    exact = torch.matmul(a.double(), b.double())
    scale = torch.matmul(a.double().abs(), b.double().abs())
    assert got.shape == exact.shape and got.dtype == a.dtype
    err = (got.double() - exact).abs()
    assert bool((err <= 2 * gamma * scale).all()), float((err - 2 * gamma * scale).max())


def _stored_keys(batch: tuple[int, ...], n: int, k: int, spare: int, dtype: torch.dtype) -> torch.Tensor:
    """A ``(*batch, k, n)`` operand laid out as the store lays out CPU keys (Spec §9.6): the transpose
    of ``(*batch, D = k, capacity)`` rows read up to ``n`` of ``n + spare`` slots."""
    buf = torch.randn(*batch, k, n + spare, dtype=dtype)
    return buf[..., :n]


@settings(max_examples=60, deadline=None)
@given(batch=st.lists(st.integers(0, 3), max_size=3).map(tuple), m=st.integers(0, 24), k=st.integers(0, 80),
       n=st.integers(0, 300), spare=st.integers(0, 9), dtype=st.sampled_from([torch.float32, torch.float64]),
       permuted=st.booleans())
def test_products_are_within_the_rounding_bound_of_the_float64_product(batch: tuple[int, ...], m: int, k: int, n: int,
                                                                        spare: int, dtype: torch.dtype, permuted: bool) -> None:
    """Strided operands as the fast path hands them over (queries from a permuted copy or a permuted
    view, keys as the transposed view of a buffer with spare capacity), empty dimensions included:
    numpy computes them, within the bound; the result is contiguous."""
    a = torch.randn(*batch, m, k, dtype=dtype)
    if permuted:  # a (.., k, m) buffer read transposed
        a = torch.randn(*batch, k, m, dtype=dtype).transpose(-1, -2)
    b = _stored_keys(batch, n, k, spare, dtype)
    assert numpy_applies(a, b)
    got = batched_matmul(a, b)
    assert got.is_contiguous()
    _within_rounding_bound(got, a, b)


@settings(max_examples=30, deadline=None)
@given(groups=st.integers(1, 9), m=st.integers(1, 24), k=st.integers(1, 64), n=st.integers(1, 700),
       pick=st.integers(0, 8))
def test_a_matrix_of_the_batch_is_computed_the_same_whatever_the_batch(groups: int, m: int, k: int, n: int,
                                                                         pick: int) -> None:
    """One group's product, alone or among others, is the same bit for bit (Spec §13.3: a problem batched
    with others gets the products of its run alone)."""
    a = torch.randn(groups, 3, m, k)
    b = _stored_keys((groups, 3), n, k, 5, torch.float32)
    i = pick % groups
    together = batched_matmul(a, b)[i]
    alone = batched_matmul(a[i : i + 1], b[i : i + 1])[0]
    assert torch.equal(together, alone)


@pytest.mark.parametrize("case", ["bfloat16", "float16", "two dtypes", "grad", "grad under no_grad", "meta"])
def test_other_inputs_are_torchs_product(case: str) -> None:
    """What numpy does not compute as torch would (no bfloat16; float16 without BLAS; two dtypes, which
    torch refuses; tensors that require grad, with autograd on or off; tensors without memory) is
    ``torch.matmul``'s, bit for bit (its error for two dtypes)."""
    a, b = torch.randn(2, 3, 5, 7), torch.randn(2, 3, 7, 4)
    if case in ("bfloat16", "float16"):
        a, b = a.to(getattr(torch, case)), b.to(getattr(torch, case))
    elif case == "two dtypes":  # torch does not promote: its own error
        b = b.double()
        assert not numpy_applies(a, b)
        with pytest.raises(RuntimeError, match="scalar type|dtype"):
            torch.matmul(a, b)
        with pytest.raises(RuntimeError, match="scalar type|dtype"):
            batched_matmul(a, b)
        return
    elif case in ("grad", "grad under no_grad"):
        a.requires_grad_(True)
    elif case == "meta":
        a, b = a.to("meta"), b.to("meta")
    assert not numpy_applies(a, b)
    if case == "grad under no_grad":  # a leaf that requires grad, in a block without autograd
        with torch.no_grad():
            assert not numpy_applies(a, b)
            assert torch.equal(batched_matmul(a, b), torch.matmul(a, b))
        return
    got = batched_matmul(a, b)
    want = torch.matmul(a, b)
    assert got.shape == want.shape and got.dtype == want.dtype
    if case == "meta":
        assert got.device.type == "meta"
    else:
        assert torch.equal(got, want)
    if case == "grad":
        got.sum().backward()
        assert a.grad is not None


def test_under_torch_compile_the_product_is_traced_as_torchs() -> None:
    """A compiled caller (the engine's compiled decode step, ``fullgraph=True``) traces ``torch.matmul``:
    no graph break, the compiled result within the bound."""
    torch._dynamo.reset()
    a, b = torch.randn(2, 3, 6, 16), _stored_keys((2, 3), 50, 16, 3, torch.float32)
    compiled = torch.compile(lambda x, y: batched_matmul(x, y) * 2, fullgraph=True, backend="eager")
    _within_rounding_bound(compiled(a, b) / 2, a, b)


def test_numpys_blas_is_given_torchs_thread_count() -> None:
    """``--threads N`` holds for numpy's BLAS too: it takes torch's thread count at its next product."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]:
        pytest.skip("threadpoolctl finds no BLAS behind numpy")
    before = torch.get_num_threads()
    a, b = torch.randn(1, 2, 3), torch.randn(1, 3, 2)
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            batched_matmul(a, b)
            counts = {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}
            assert counts == {n}
    finally:
        torch.set_num_threads(before)
        batched_matmul(a, b)

