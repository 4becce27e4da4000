"""C ← αAB + βC through numpy's own BLAS (gpumlp.backends.blas) and every backend's ``gemm``."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from gpumlp.backends import blas
from gpumlp.backends.blas import Blas
from gpumlp.backends.cpu import NumpyBackend
from gpumlp.backends.registry import get_backend
from gpumlp.errors import ConfigError
from gpumlp.model import MLP

LAYOUTS = {
    "A B": lambda A, B: (A, B),
    "Aᵀ view": lambda A, B: (np.ascontiguousarray(A.T).T, B),  # what backward passes: As[l].T
    "Bᵀ view": lambda A, B: (A, np.ascontiguousarray(B.T).T),
    "strided A": lambda A, B: (np.repeat(A, 2, axis=1)[:, ::2], B),  # neither C nor F: numpy's way
}


def backend(device: str):
    """The backend under test: numpy, the strict fake device (tests/fake_device.py) or CuPy."""
    if device == "fake":
        from standins.fake_device import FAKE

        return FAKE
    return get_backend(device)


@pytest.fixture(autouse=True)
def forget_libraries():
    """Each test looks for the libraries afresh, and leaves no library found under its patches behind."""
    blas._library.cache_clear()
    blas._chosen.cache_clear()
    yield
    blas._library.cache_clear()
    blas._chosen.cache_clear()


def numpy_blas_is_openblas() -> bool:
    return "openblas" in np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]


@pytest.mark.skipif(not numpy_blas_is_openblas(), reason="numpy here is not built on its bundled OpenBLAS")
def test_numpys_bundled_openblas_is_reached():
    assert Blas("numpy").available and Blas("numpy").name == "numpy"
    A, B, C = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32), np.ones((2, 4), np.float32)
    assert Blas("numpy").gemm(A, B, C, 2.0, 1.0) and (C == 7).all()


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


@pytest.mark.skipif(not blas.chosen().available, reason="numpy's BLAS is out of reach here")
def test_gemm_finds_each_operand_where_it_starts():
    """Operands as training passes them: views into the middle of a bigger buffer (a batch of a
    gathered chunk, a layer's W inside theta), read-only ones (a memory-mapped dataset), and a
    product over k = 0 (C ← βC): each is read at its own address."""
    b, rng = blas.chosen(), np.random.default_rng(3)
    big = rng.standard_normal((40, 5)).astype(np.float32)
    A = big[17:24]  # (7, 5), starts 17 rows in
    theta = rng.standard_normal(100).astype(np.float32)
    B = theta[31:46].reshape(5, 3)  # (5, 3) at offset 31
    B.flags.writeable = False
    C0 = rng.standard_normal((11, 3)).astype(np.float32)
    C = C0.copy()[4:11]  # C-contiguous view at offset 4 rows
    C_start = C.copy()
    assert b.gemm(A, B, C, -0.5, 2.0)
    np.testing.assert_allclose(C, 2 * C_start - 0.5 * (A.astype(np.float64) @ B), rtol=1e-5, atol=1e-5)
    assert b.gemm(A.T[:0].T, B[:0], C, 1.0, 3.0)  # k = 0: no product, C is scaled
    np.testing.assert_allclose(C, 3 * (2 * C_start - 0.5 * (A.astype(np.float64) @ B)), rtol=1e-5, atol=1e-5)
    x = theta[50:60].copy()
    x.flags.writeable = False
    y = theta[60:70]
    y_start = y.copy()
    assert b.axpby(2.0, x, 1.0, y)
    np.testing.assert_allclose(y, y_start + 2 * x, rtol=1e-6)


def test_without_numpys_blas_gemm_falls_back_to_numpy(monkeypatch):
    """Another BLAS build: Blas.gemm declines and the backend computes the same with matmul."""
    monkeypatch.setattr(blas, "_library", lambda name: {})  # neither library reachable
    none = Blas()
    assert not none.available and none.name == ""
    be = NumpyBackend("cpu", np, library=none)
    rng = np.random.default_rng(1)
    A, B, C = rng.random((4, 6), np.float32), rng.random((6, 2), np.float32), rng.random((4, 2), np.float32)
    assert not none.gemm(A, B, C.copy(), 1.0, 0.0)
    for alpha, beta in ((1.0, 0.0), (-0.3, 0.0), (-0.3, 1.0), (0.7, 0.5)):
        out = C.copy()
        be.gemm(A, B, out, alpha, beta)
        np.testing.assert_allclose(out, alpha * (A @ B) + beta * C, rtol=1e-6)


def test_gemm_declines_what_it_cannot_hand_to_blas():
    b, A, B = blas.chosen(), np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    assert not b.gemm(A, B, np.ones((4, 2), np.float32).T, 1.0, 0.0)  # C not C-contiguous
    assert not b.gemm(A.astype(np.float64), B, np.ones((2, 4), np.float32), 1.0, 0.0)  # mixed dtypes
    assert not b.gemm(A.astype(np.float16), B.astype(np.float16), np.ones((2, 4), np.float16), 1.0, 0.0)
    if b.available:
        with pytest.raises(ValueError, match="shapes"):
            b.gemm(A, B, np.ones((2, 5), np.float32), 1.0, 0.0)


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
    monkeypatch.setattr(blas, "_library", lambda name: {})  # neither library reachable
    none = Blas()
    x, y = np.arange(1 << 18, dtype=np.float32), np.ones(1 << 18, np.float32)
    assert not none.axpby(2.0, x, 1.0, y.copy())
    NumpyBackend("cpu", np, library=none).axpby(2.0, x, 0.5, y)
    np.testing.assert_array_equal(y, 2 * np.arange(1 << 18, dtype=np.float32) + 0.5)


def test_axpby_declines_what_it_cannot_hand_to_blas():
    b, x, y = blas.chosen(), np.ones(8, np.float32), np.ones(8, np.float32)
    assert not b.axpby(1.0, x[::2], 1.0, y[:4])  # strided
    assert not b.axpby(1.0, x.astype(np.float64), 1.0, y)  # mixed dtypes
    if b.available:
        with pytest.raises(ValueError, match="shapes"):
            b.axpby(1.0, x, 1.0, np.ones(9, np.float32))


# ---------------------------------------------------------------- which BLAS: numpy's own or Intel MKL


def mkl_installed() -> bool:
    return bool(blas.mkl_paths())


def use_blas(monkeypatch, choice: str) -> Blas:
    """The BLAS a fresh process with GPUMLP_BLAS=choice would choose (its libraries looked for again)."""
    monkeypatch.setenv("GPUMLP_BLAS", choice)
    blas._library.cache_clear()
    blas._chosen.cache_clear()
    return blas.chosen()


LIBRARIES = [
    pytest.param("numpy", marks=pytest.mark.skipif(not numpy_blas_is_openblas(), reason="numpy has no OpenBLAS")),
    pytest.param("mkl", marks=pytest.mark.skipif(not mkl_installed(), reason="pip install 'gpumlp[mkl]'")),
]


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_library_computes_gemm_and_axpby(monkeypatch, library, dtype):
    b = use_blas(monkeypatch, library)
    assert b.name == library and b.serves_products == (library == "mkl")
    rng = np.random.default_rng(4)
    for layout in LAYOUTS:
        A, B = LAYOUTS[layout](rng.standard_normal((9, 6)).astype(dtype), rng.standard_normal((6, 4)).astype(dtype))
        C0 = rng.standard_normal((9, 4)).astype(dtype)
        C = C0.copy()
        if b.gemm(A, B, C, -0.25, 0.5):
            np.testing.assert_allclose(C, 0.5 * C0 - 0.25 * (A.astype(np.float64) @ B), rtol=1e-5, atol=1e-5)
        else:
            assert layout == "strided A"  # the one layout BLAS cannot take
    x, y0 = rng.standard_normal(1000).astype(dtype), rng.standard_normal(1000).astype(dtype)
    y = y0.copy()
    assert b.axpby(3.0, x, -1.0, y)
    np.testing.assert_allclose(y, 3.0 * x.astype(np.float64) - y0, rtol=1e-5, atol=1e-5)


def test_gpumlp_blas_picks_the_library(monkeypatch):
    monkeypatch.setattr(blas, "mkl_paths", lambda: [])  # as on a machine without the mkl wheel
    b = use_blas(monkeypatch, "auto")
    assert b.name == ("numpy" if numpy_blas_is_openblas() else "") and not b.serves_products
    assert use_blas(monkeypatch, "NumPy ").name == b.name  # case and spaces do not matter
    with pytest.raises(
        ConfigError, match=r"GPUMLP_BLAS=mkl but Intel MKL is not installed, or incomplete: pip install 'gpumlp\[mkl\]'"
    ):
        use_blas(monkeypatch, "mkl")
    with pytest.raises(ConfigError, match="GPUMLP_BLAS='openblas' is not a BLAS gpumlp knows: use auto, mkl, numpy"):
        use_blas(monkeypatch, "openblas")


@pytest.mark.skipif(not mkl_installed(), reason="pip install 'gpumlp[mkl]'")
def test_auto_takes_mkl_when_installed(monkeypatch):
    b = use_blas(monkeypatch, "auto")
    assert b.name == "mkl" and b.serves_products
    b = use_blas(monkeypatch, "numpy")
    assert b.name == "numpy" and not b.serves_products
    assert Blas("mkl").name == "mkl" and Blas("numpy").name == "numpy"  # both, side by side in one process


def test_each_backend_owns_its_blas(monkeypatch):
    """Two CPU backends in one process, each calling its own library; the default one owns what
    GPUMLP_BLAS picks, and a choice gpumlp does not know is refused when the BLAS is made."""
    mine = Blas("numpy")
    assert NumpyBackend("cpu", np, library=mine).blas is mine
    monkeypatch.setenv("GPUMLP_BLAS", "numpy")
    assert NumpyBackend("cpu", np).blas.choice == "numpy"
    with pytest.raises(ConfigError, match="'blis' is not a BLAS gpumlp knows"):
        Blas("blis")


def test_matmul_function_sends_only_big_products_to_gemm(monkeypatch):
    """With a BLAS that serves products (MKL), forward and backward's products of m·n·k ≥
    MKL_MIN_MNK go through the BLAS's gemm (α = 1, β = 0, into ``out`` when given), smaller ones and
    any gemm declines through numpy. Checked with a recording gemm, so it runs without MKL."""
    calls = []

    def recording_gemm(A, B, C, alpha, beta):
        calls.append((A.shape, B.shape, alpha, beta))
        np.matmul(A, B, out=C)
        return True

    mm = NumpyBackend("cpu", np, library=SimpleNamespace(serves_products=True, gemm=recording_gemm)).matmul_function()
    assert mm is not np.matmul
    rng = np.random.default_rng(5)
    A, W = rng.random((128, 784), np.float32), rng.random((784, 100), np.float32)  # 10,035,200 ≥ 524,288
    np.testing.assert_array_equal(mm(A, W), A @ W)
    out = np.empty((784, 100), np.float32)
    assert mm(A.T, A[:, :100], out=out) is out  # a weight gradient Aᵀ·dZ into dW
    np.testing.assert_array_equal(out, A.T @ A[:, :100])
    assert calls == [((128, 784), (784, 100), 1.0, 0.0), ((784, 128), (128, 100), 1.0, 0.0)]
    small = rng.random((10, 16), np.float32), rng.random((16, 16), np.float32)
    np.testing.assert_array_equal(mm(*small), small[0] @ small[1])
    assert len(calls) == 2  # 10·16·16: numpy's matmul
    aliased = rng.random((784, 784), np.float32)
    expected = aliased @ aliased[:, :100]
    np.testing.assert_allclose(mm(aliased, aliased[:, :100].copy(), out=aliased[:, :100]), expected, rtol=1e-5)
    assert len(calls) == 2  # out overlaps an input: numpy's matmul, which copes, not gemm, which would not
    declining = SimpleNamespace(serves_products=True, gemm=lambda *args: False)  # e.g. mixed dtypes
    np.testing.assert_array_equal(NumpyBackend("cpu", np, library=declining).matmul_function()(A, W), A @ W)


def test_matmul_function_is_plain_matmul_without_mkl():
    numpy_only = NumpyBackend("cpu", np, library=SimpleNamespace(serves_products=False))
    assert numpy_only.matmul_function() is np.matmul  # nothing between numpy and its BLAS


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "size", [1000, (1 << 18) + 777]
)  # below AXPBY_BLAS_MIN; above, in pieces with a short last one
def test_axpby_chain_is_each_axpby_in_order_bit_for_bit(size, dtype):
    """Nesterov's three updates through ``axpby_chain`` (long vectors a piece at a time on the CPU)
    give exactly what three whole-vector ``axpby`` calls give, and the reference backend's chain."""
    from gpumlp.backends.base import Backend

    rng = np.random.default_rng(3)
    g, v, theta = (rng.standard_normal(size).astype(dtype) for _ in range(3))
    cpu = get_backend("cpu")
    expected = [v.copy(), theta.copy()]
    cpu.axpby(1.0, g, 0.95, expected[0])  # v ← μ v + g
    cpu.axpby(-0.15, g, 1.0, expected[1])  # θ ← θ − η g
    cpu.axpby(-0.15 * 0.95, expected[0], 1.0, expected[1])  # θ ← θ − η μ v
    for chain in (cpu.axpby_chain, lambda ops: Backend.axpby_chain(cpu, ops)):
        got = [v.copy(), theta.copy()]
        chain([(1.0, g, 0.95, got[0]), (-0.15, g, 1.0, got[1]), (-0.15 * 0.95, got[0], 1.0, got[1])])
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(expected[1], theta - 0.15 * (g + 0.95 * (0.95 * v + g)), rtol=1e-4, atol=1e-5)


def test_axpby_chain_without_numpys_blas_falls_back_to_numpy(monkeypatch):
    monkeypatch.setattr(blas, "_library", lambda name: {})  # neither library reachable
    x, y = np.arange(1 << 18, dtype=np.float32), np.ones(1 << 18, np.float32)
    NumpyBackend("cpu", np, library=Blas()).axpby_chain([(2.0, x, 0.5, y), (1.0, x, 1.0, y)])
    np.testing.assert_array_equal(y, 3 * np.arange(1 << 18, dtype=np.float32) + 0.5)


def test_a_wide_layer_at_a_small_batch_is_multiplied_in_small_kernel_pieces(monkeypatch):
    """On OpenBLAS's AVX-512 kernel sets on one thread, a layer's forward product that one small
    batch makes just too big for the small-matrix kernel (m·k·n > 100³) goes in equal column pieces
    that fit it; two threads, bigger batches, narrow layers, other kernel sets and MKL keep one product."""
    from gpumlp.backends import cpu as backend

    calls, matmul = [], np.matmul

    def recording_matmul(A, B, out=None):
        calls.append((A.shape, B.shape))
        return matmul(A, B, out=out)

    cpu = NumpyBackend("cpu", np, library=SimpleNamespace(serves_products=False))  # numpy's OpenBLAS
    monkeypatch.setattr(backend, "openblas_core", lambda: "skylakex")
    blas_threads = [1]
    monkeypatch.setattr(backend, "_openblas_threads", lambda: lambda: blas_threads[0])
    mm = cpu.layer_matmul_function(784, 300)
    assert mm is not np.matmul
    assert cpu.layer_matmul_function(784, 100) is np.matmul  # too narrow to cut in two pieces of 64
    rng = np.random.default_rng(6)
    W = rng.random((784, 300), np.float32)
    X10, X128 = rng.random((10, 784), np.float32), rng.random((128, 784), np.float32)
    expected = X10 @ W
    monkeypatch.setattr(np, "matmul", recording_matmul)
    Z = mm(X10, W)
    assert calls == [((10, 784), (784, 100))] * 3  # 10·784·100 ≤ 100³ < 10·784·300
    assert Z.shape == (10, 300) and Z.flags.c_contiguous and Z.dtype == np.float32
    np.testing.assert_allclose(Z, expected, rtol=1e-5)
    calls.clear()
    mm(X128, W)  # 128·784 per column: pieces of 9 columns would not pay
    mm(X10[:1], W)  # 1·784·300 ≤ 100³: already one small product
    blas_threads[0] = 2
    mm(X10, W)  # on two threads one product (the pieces would run on one)
    assert calls == [((128, 784), (784, 300)), ((1, 784), (784, 300)), ((10, 784), (784, 300))]
    monkeypatch.setattr(backend, "openblas_core", lambda: "haswell")  # no small-matrix kernel
    assert cpu.layer_matmul_function(784, 300) is recording_matmul
    monkeypatch.setattr(backend, "openblas_core", lambda: "skylakex")
    mkl = NumpyBackend("cpu", np, library=SimpleNamespace(serves_products=True, gemm=lambda *args: False))
    blas_threads[0], calls[:] = 1, []
    mkl.layer_matmul_function(784, 300)(X10, W)  # MKL's product function (here declining to numpy), uncut
    assert calls == [((10, 784), (784, 300))]


def test_a_wide_layers_input_gradient_at_a_small_batch_goes_in_small_kernel_pieces(monkeypatch):
    """The same kernel sets take dZ·Wᵀ by the small kernel only while m·n_in ≤ 1200 as well: at a
    small batch on one thread, backward's input gradient of a layer with ≥ 64 outputs goes in pieces
    of rows of W that fit, each into its columns of dA; narrow layers, batches over 18, two threads,
    other kernel sets and MKL keep one product. The model's gradients are the same to rounding."""
    from gpumlp.backends import cpu as backend

    calls, matmul = [], np.matmul

    def recording_matmul(A, B, out=None):
        calls.append((A.shape, B.shape, B.flags.f_contiguous))
        return matmul(A, B, out=out)

    cpu = NumpyBackend("cpu", np, library=SimpleNamespace(serves_products=False))  # numpy's OpenBLAS
    monkeypatch.setattr(backend, "openblas_core", lambda: "skylakex")
    blas_threads = [1]
    monkeypatch.setattr(backend, "_openblas_threads", lambda: lambda: blas_threads[0])
    rng = np.random.default_rng(7)
    W, W_narrow = rng.random((300, 100), np.float32), rng.random((300, 50), np.float32)
    dZ10, dZ32 = rng.random((10, 100), np.float32), rng.random((32, 100), np.float32)
    expected = dZ10 @ W.T
    monkeypatch.setattr(np, "matmul", recording_matmul)
    dA, narrow = cpu.input_grad_function(300, 100), cpu.input_grad_function(300, 50)
    got = dA(dZ10, W)
    assert calls == [((10, 100), (100, 100), True)] * 3  # 10·300 > 1200 ≥ 10·100: three pieces of 100 rows
    assert got.shape == (10, 300) and got.flags.c_contiguous and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    calls.clear()
    dA(dZ32, W)  # pieces of 37 rows would not pay
    narrow(dZ10[:, :50], W_narrow)  # 50 outputs: too few for pieces to pay
    dA(dZ10[:, :100], W[:100])  # 10·100 ≤ 1200: already the small kernel
    blas_threads[0] = 2
    dA(dZ10, W)  # on two threads one product
    assert calls == [((32, 100), (100, 300), True), ((10, 50), (50, 300), True)] + [
        ((10, 100), (100, 100), True),
        ((10, 100), (100, 300), True),
    ]
    monkeypatch.setattr(np, "matmul", matmul)
    blas_threads[0] = 1
    monkeypatch.setattr(backend, "openblas_core", lambda: "haswell")  # no small-matrix kernel: one product
    calls.clear()
    monkeypatch.setattr(np, "matmul", recording_matmul)
    cpu.input_grad_function(300, 100)(dZ10, W)
    assert calls == [((10, 100), (100, 300), True)]
    monkeypatch.setattr(np, "matmul", matmul)

    # In a network: the same gradients as one product gives, to float32 rounding.
    X, y = rng.random((10, 784)), rng.integers(0, 10, 10)
    grads = {}
    for core in ("skylakex", "haswell"):
        monkeypatch.setattr(backend, "openblas_core", lambda core=core: core)
        model = MLP((784, 300, 100, 10), "sigmoid", "mse", seed=3, device=cpu)
        grads[core] = model.loss_and_grads(X, y)[1]
    for k in grads["haswell"]:
        np.testing.assert_allclose(grads["skylakex"][k], grads["haswell"][k], rtol=1e-4, atol=1e-7)


def test_openblas_core_names_numpys_kernel_set():
    core = blas.openblas_core()
    assert core == core.lower() and core.strip() == core
    if numpy_blas_is_openblas():
        assert core  # e.g. "haswell", "skylakex", "zen", "neoversen1"


@pytest.mark.skipif(not mkl_installed(), reason="pip install 'gpumlp[mkl]'")
def test_training_with_mkl_matches_numpys_blas(monkeypatch):
    """The same network trained through MKL's products and numpy's: equal up to float32 rounding."""
    from gpumlp.model import MLP
    from gpumlp.training.loop import fit

    rng = np.random.default_rng(6)
    X, y = rng.random((400, 784), np.float32), rng.integers(0, 10, 400)
    thetas = []
    for library in ("numpy", "mkl"):
        model = MLP((784, 300, 10), "sigmoid", "mse", seed=1, device=NumpyBackend("cpu", np, library=Blas(library)))
        assert (model._matmul is np.matmul) == (library == "numpy")
        fit(model, X, y, epochs=2, batch_size=10, lr=1.0, seed=0)
        thetas.append(model.theta.copy())
    assert np.abs(thetas[0] - thetas[1]).max() < 1e-4
    assert not np.array_equal(thetas[0], thetas[1])  # it did go through another library


def test_only_a_complete_mkl_counts(monkeypatch, tmp_path):
    """libmkl_rt loads MKL's other libraries on its first call and ends the process when one is
    missing, so a folder with libmkl_rt but not its core, threading layer and Intel OpenMP is skipped
    (the files are only looked at here, never loaded)."""
    import site
    import sys
    import sysconfig

    lib = tmp_path / "lib"
    lib.mkdir()
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {"data": str(tmp_path)})
    monkeypatch.setattr(site, "ENABLE_USER_SITE", False)
    (lib / "libmkl_rt.so.3").touch()
    assert blas.mkl_paths() == []
    (lib / "libmkl_core.so.3").touch()
    (lib / "libmkl_intel_thread.so.3").touch()
    assert blas.mkl_paths() == []  # no Intel OpenMP (pip install mkl --no-deps)
    (lib / "libiomp5.so").touch()
    assert blas.mkl_paths() == [str(lib / "libmkl_rt.so.3")]
