"""C ← αAB + βC through numpy's own BLAS (gpumlp.blas) and every backend's ``gemm``."""

from __future__ import annotations

import numpy as np
import pytest

from gpumlp import blas
from gpumlp.backend import get_backend

LAYOUTS = {
    "A B": lambda A, B: (A, B),
    "Aᵀ view": lambda A, B: (np.ascontiguousarray(A.T).T, B),  # what backward passes: As[l].T
    "Bᵀ view": lambda A, B: (A, np.ascontiguousarray(B.T).T),
    "strided A": lambda A, B: (np.repeat(A, 2, axis=1)[:, ::2], B),  # neither C nor F: numpy's way
}


def backend(device: str):
    """The backend under test: numpy, the strict fake device (tests/fake_device.py) or CuPy."""
    if device == "fake":
        from fake_device import FAKE

        return FAKE
    return get_backend(device)


def numpy_blas_is_openblas() -> bool:
    return "openblas" in np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]


@pytest.mark.skipif(not numpy_blas_is_openblas(), reason="numpy here is not built on its bundled OpenBLAS")
def test_numpys_bundled_openblas_is_reached():
    assert blas.available()
    A, B, C = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32), np.ones((2, 4), np.float32)
    assert blas.gemm(A, B, C, 2.0, 1.0) and (C == 7).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("alpha, beta", [(1.0, 0.0), (-0.1, 1.0), (0.5, 0.9), (2.0, -1.0)])
@pytest.mark.parametrize("device", ["cpu", "fake", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_gemm_is_alpha_a_b_plus_beta_c_in_place(device, dtype, layout, alpha, beta):
    be = backend(device)
    rng = np.random.default_rng(0)
    A, B = LAYOUTS[layout](rng.standard_normal((7, 5)).astype(dtype), rng.standard_normal((5, 3)).astype(dtype))
    C0 = rng.standard_normal((7, 3)).astype(dtype)
    expected = alpha * (A.astype(np.float64) @ B.astype(np.float64)) + beta * C0
    C = be.asarray(C0.copy())
    out = be.gemm(be.asarray(A), be.asarray(B), C, alpha, beta)
    assert out is C
    np.testing.assert_allclose(be.to_numpy(C), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not blas.available(), reason="numpy's BLAS is out of reach here")
def test_gemm_finds_each_operand_where_it_starts():
    """Operands as training passes them: views into the middle of a bigger buffer (a batch of a
    gathered chunk, a layer's W inside theta), read-only ones (a memory-mapped dataset), and a
    product over k = 0 (C ← βC): each is read at its own address."""
    rng = np.random.default_rng(3)
    big = rng.standard_normal((40, 5)).astype(np.float32)
    A = big[17:24]  # (7, 5), starts 17 rows in
    theta = rng.standard_normal(100).astype(np.float32)
    B = theta[31:46].reshape(5, 3)  # (5, 3) at offset 31
    B.flags.writeable = False
    C0 = rng.standard_normal((11, 3)).astype(np.float32)
    C = C0.copy()[4:11]  # C-contiguous view at offset 4 rows
    C_start = C.copy()
    assert blas.gemm(A, B, C, -0.5, 2.0)
    np.testing.assert_allclose(C, 2 * C_start - 0.5 * (A.astype(np.float64) @ B), rtol=1e-5, atol=1e-5)
    assert blas.gemm(A.T[:0].T, B[:0], C, 1.0, 3.0)  # k = 0: no product, C is scaled
    np.testing.assert_allclose(C, 3 * (2 * C_start - 0.5 * (A.astype(np.float64) @ B)), rtol=1e-5, atol=1e-5)
    x = theta[50:60].copy()
    x.flags.writeable = False
    y = theta[60:70]
    y_start = y.copy()
    assert blas.axpby(2.0, x, 1.0, y)
    np.testing.assert_allclose(y, y_start + 2 * x, rtol=1e-6)


def test_without_numpys_blas_gemm_falls_back_to_numpy(monkeypatch):
    """Another BLAS build: blas.gemm declines and Backend.gemm computes the same with matmul."""
    monkeypatch.setattr(blas, "_routines", {})
    assert not blas.available()
    rng = np.random.default_rng(1)
    A, B, C = rng.random((4, 6), np.float32), rng.random((6, 2), np.float32), rng.random((4, 2), np.float32)
    assert not blas.gemm(A, B, C.copy(), 1.0, 0.0)
    for alpha, beta in ((1.0, 0.0), (-0.3, 0.0), (-0.3, 1.0), (0.7, 0.5)):
        out = C.copy()
        get_backend("cpu").gemm(A, B, out, alpha, beta)
        np.testing.assert_allclose(out, alpha * (A @ B) + beta * C, rtol=1e-6)


def test_gemm_declines_what_it_cannot_hand_to_blas():
    A, B = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    assert not blas.gemm(A, B, np.ones((4, 2), np.float32).T, 1.0, 0.0)  # C not C-contiguous
    assert not blas.gemm(A.astype(np.float64), B, np.ones((2, 4), np.float32), 1.0, 0.0)  # mixed dtypes
    assert not blas.gemm(A.astype(np.float16), B.astype(np.float16), np.ones((2, 4), np.float16), 1.0, 0.0)
    if blas.available():
        with pytest.raises(ValueError, match="shapes"):
            blas.gemm(A, B, np.ones((2, 5), np.float32), 1.0, 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alpha, beta", [(1.0, 1.0), (-0.1, 1.0), (1.0, 0.9), (-0.05, 0.95)])
@pytest.mark.parametrize("size", [5, 1 << 18])  # below and above AXPBY_BLAS_MIN: numpy's operators, then BLAS
@pytest.mark.parametrize("device", ["cpu", "fake", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_axpby_is_alpha_x_plus_beta_y_in_place(device, size, dtype, alpha, beta):
    be = backend(device)
    rng = np.random.default_rng(2)
    x, y0 = rng.standard_normal(size).astype(dtype), rng.standard_normal(size).astype(dtype)
    X, Y = be.asarray(x), be.asarray(y0.copy())
    assert be.axpby(alpha, X, beta, Y) is Y
    np.testing.assert_allclose(be.to_numpy(Y), alpha * x.astype(np.float64) + beta * y0, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(be.to_numpy(X), x)  # x is left alone


def test_axpby_without_numpys_blas_falls_back_to_numpy(monkeypatch):
    monkeypatch.setattr(blas, "_routines", {})
    x, y = np.arange(1 << 18, dtype=np.float32), np.ones(1 << 18, np.float32)
    assert not blas.axpby(2.0, x, 1.0, y.copy())
    get_backend("cpu").axpby(2.0, x, 0.5, y)
    np.testing.assert_array_equal(y, 2 * np.arange(1 << 18, dtype=np.float32) + 0.5)


def test_axpby_declines_what_it_cannot_hand_to_blas():
    x, y = np.ones(8, np.float32), np.ones(8, np.float32)
    assert not blas.axpby(1.0, x[::2], 1.0, y[:4])  # strided
    assert not blas.axpby(1.0, x.astype(np.float64), 1.0, y)  # mixed dtypes
    if blas.available():
        with pytest.raises(ValueError, match="shapes"):
            blas.axpby(1.0, x, 1.0, np.ones(9, np.float32))
