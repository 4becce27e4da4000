"""``gpumlp.backends.cublas.raw_gemm``: cuBLAS called directly through ctypes, so a CUDA graph can capture the
products (CuPy refuses its own cuBLAS calls while a stream captures), tested without a GPU.

A stand-in libcublas (tests/standins/cublas.py, C++ built with the host compiler) has the entry points
``raw_gemm`` calls, with cuBLAS's signatures and column-major semantics, computing on host
pointers with a reference triple loop. It keeps the handle's state as cuBLAS does: setting a stream
resets the workspace to cuBLAS's own pool. A gemm is refused (CUBLAS_STATUS_NOT_INITIALIZED) unless
the stream and the pointer mode were set since the previous gemm, the pointer mode is host and a
workspace of the caller's own is in place; a leading dimension too small is CUBLAS_STATUS_INVALID_VALUE.
The real ctypes code of ``raw_gemm`` runs against it, on host arrays that expose ``data.ptr`` as
CuPy's do.
"""

from __future__ import annotations

import ctypes
import shutil
import types

import numpy as np
import pytest

from gpumlp.backends import cublas, probe
from gpumlp.errors import BackendUnavailable
from standins.fake_cupy import fake_cupy

CXX = shutil.which("c++") or shutil.which("g++")


def standin_value(lib, name: str, ctype=ctypes.c_void_p):
    return ctype.in_dll(lib, name).value


class HostArray(np.ndarray):
    """A host array that gives its first element's address as CuPy's ``a.data.ptr`` does."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)


HANDLE = 0x5EED


class HostStream:
    def __init__(self, ptr):
        self.ptr = ptr


def host_xp(stream_ptr=0):
    """An array module with what ``raw_gemm`` asks of CuPy: the handle, the current stream, alloc."""
    xp = types.SimpleNamespace(current=HostStream(stream_ptr), blocks=[])

    def alloc(nbytes):
        block = np.zeros(nbytes, np.uint8)
        xp.blocks.append(block)
        return types.SimpleNamespace(ptr=block.ctypes.data, block=block)

    xp.cuda = types.SimpleNamespace(
        device=types.SimpleNamespace(get_cublas_handle=lambda: HANDLE),
        get_current_stream=lambda: xp.current,
        alloc=alloc,
    )
    xp.ascontiguousarray = lambda a: np.ascontiguousarray(a).view(HostArray)
    return xp


def dev(a):
    return np.asarray(a).view(HostArray)


@pytest.fixture
def standin(cublas_standin, monkeypatch):
    """``raw_gemm``'s library is the stand-in (loaded with the real ``_Cublas``), no workspaces yet."""
    lib = ctypes.CDLL(str(cublas_standin))
    lib.standin_reset()  # (one library for the module: its state from the tests before)
    monkeypatch.setattr(cublas, "_LIB", cublas._Cublas(lib))
    monkeypatch.setattr(cublas, "_WORKSPACES", {})
    return lib


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (-0.5, 1.0), (2.0, 0.25)])
def test_every_transposition_and_accumulation_against_numpy(standin, dtype, ta, tb, alpha, beta):
    """A (5, 7) and B (7, 3), each either C-contiguous or the ``.T`` of one, into C (5, 3) with
    α, β: non-square everywhere, so a leading dimension or an operand order mixed up fails."""
    m, k, n = 5, 7, 3
    A = rand(k, m, seed=1).T if ta else rand(m, k, seed=1)  # (m, k)
    B = rand(n, k, seed=2).T if tb else rand(k, n, seed=2)  # (k, n)
    A, B, C0 = A.astype(dtype), B.astype(dtype), rand(m, n, seed=3).astype(dtype)
    assert A.flags.f_contiguous == ta and B.flags.f_contiguous == tb
    C = dev(C0.copy())
    out = cublas.raw_gemm(host_xp(), dev(A), dev(B), C, alpha, beta)
    want = alpha * (A.astype(np.float64) @ B.astype(np.float64)) + beta * C0.astype(np.float64)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-13)
    assert out is C and C.dtype == dtype
    np.testing.assert_allclose(np.asarray(C), want, **tol)
    assert standin_value(standin, "standin_gemms", ctypes.c_long) == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_views_at_an_offset_of_a_flat_theta(standin, dtype):
    """Training's products read and write views into the flat θ and gradient buffers: W (4, 3) at
    an odd offset, its ``.T``, and dW written in place at another offset, the rest untouched."""
    theta, grad = dev(rand(40, seed=4).astype(dtype)), dev(np.full(40, 7.0, dtype=dtype))
    W = theta[5:17].reshape(4, 3)  # (n_in, n_out)
    X, dZ = rand(6, 4, seed=5).astype(dtype), rand(6, 3, seed=6).astype(dtype)
    xp = host_xp()
    Z = cublas.raw_gemm(xp, dev(X), W, dev(np.empty((6, 3), dtype)), 1.0, 0.0)  # forward
    dA = cublas.raw_gemm(xp, dev(dZ), W.T, dev(np.empty((6, 4), dtype)), 1.0, 0.0)  # input gradient
    dW = grad[3:15].reshape(4, 3)
    cublas.raw_gemm(xp, dev(X).T, dev(dZ), dW, 1.0, 0.0)  # weight gradient, into the flat buffer
    Wh = np.asarray(W).astype(np.float64)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(np.asarray(Z), X @ Wh, **tol)
    np.testing.assert_allclose(np.asarray(dA), dZ @ Wh.T, **tol)
    np.testing.assert_allclose(np.asarray(grad[3:15]).reshape(4, 3), X.T @ dZ, **tol)
    assert (np.asarray(grad[:3]) == 7).all() and (np.asarray(grad[15:]) == 7).all()


def test_the_stream_workspace_and_pointer_mode_are_set_before_each_gemm(standin):
    """Each gemm runs on the stream current at its call, with the handle CuPy gives, the host
    pointer mode and gpumlp's own 32 MiB workspace (set after the stream, which resets it): the
    stand-in refuses a gemm otherwise, and reports what it saw."""
    xp = host_xp(stream_ptr=0x1000)
    A, B = dev(rand(3, 2)), dev(rand(2, 4))
    for stream in (0x1000, 0x2000, 0):  # a capture's stream, another, the legacy default stream
        xp.current = HostStream(stream)
        cublas.raw_gemm(xp, A, B, dev(np.empty((3, 4))), 1.0, 0.0)
        assert standin_value(standin, "standin_stream") == (stream or None)
        assert standin_value(standin, "standin_handle") == HANDLE
        assert standin_value(standin, "standin_mode", ctypes.c_int) == 0  # CUBLAS_POINTER_MODE_HOST
        assert standin_value(standin, "standin_workspace") == xp.blocks[0].ctypes.data
        assert standin_value(standin, "standin_workspace_size", ctypes.c_size_t) == 32 << 20
    assert len(xp.blocks) == 1  # one workspace for the handle, reserved at its first product


def test_a_refused_gemm_is_an_error_naming_the_call_and_status(standin, monkeypatch):
    """The stand-in's checks have teeth: a gemm without the stream set first (here: setting it does
    nothing) comes back CUBLAS_STATUS_NOT_INITIALIZED, and ``raw_gemm`` raises naming it."""
    monkeypatch.setattr(cublas._LIB, "set_stream", lambda h, s: 0)
    with pytest.raises(BackendUnavailable, match=r"cuBLAS's cublasDgemm_v2 failed on the GPU: "
                                                 r"CUBLAS_STATUS_NOT_INITIALIZED \(1\); .*--device cpu"):  # fmt: skip
        cublas.raw_gemm(host_xp(), dev(rand(2, 2)), dev(rand(2, 2)), dev(np.empty((2, 2))), 1.0, 0.0)


def test_size_zero_and_strided_operands(standin):
    """No call for an empty product (k = 0 leaves β·C, BLAS's rule); an operand neither C- nor
    F-contiguous (a column slice) goes through a contiguous copy; mixed dtypes are refused."""
    xp = host_xp()
    C = dev(np.full((2, 3), 4.0))
    cublas.raw_gemm(xp, dev(np.empty((2, 0))), dev(np.empty((0, 3))), C, 1.0, 0.5)
    np.testing.assert_array_equal(np.asarray(C), np.full((2, 3), 2.0))
    cublas.raw_gemm(xp, dev(np.empty((2, 0))), dev(np.empty((0, 3))), C, 1.0, 0.0)
    np.testing.assert_array_equal(np.asarray(C), np.zeros((2, 3)))
    cublas.raw_gemm(xp, dev(np.empty((0, 4))), dev(np.empty((4, 3))), dev(np.empty((0, 3))), 1.0, 0.0)
    assert standin_value(standin, "standin_gemms", ctypes.c_long) == 0
    A = rand(4, 10, seed=7)[:, 1:8:2]  # (4, 4) strided
    B = rand(4, 3, seed=8)
    got = cublas.raw_gemm(xp, dev(A), dev(B), dev(np.empty((4, 3))), 1.0, 0.0)
    np.testing.assert_allclose(np.asarray(got), A @ B, rtol=1e-13)
    with pytest.raises(TypeError, match="one dtype"):
        cublas.raw_gemm(xp, dev(A.astype(np.float32)), dev(B), dev(np.empty((4, 3))), 1.0, 0.0)


def test_the_probe_check_accepts_a_correct_library_and_rejects_a_wrong_one(standin, monkeypatch):
    """``_check_raw_products`` (run by the probe on the GPU): exact products NN, NT, TN and β = 1 in
    float32 and float64 pass through the stand-in; a library whose sgemm leaves C as it was, or one
    that is missing, gives the reason instead."""
    xp = host_xp()
    xp.asarray, xp.empty = dev, lambda shape, dtype: dev(np.empty(shape, dtype))
    xp.asnumpy = np.asarray
    assert probe._check_raw_products(xp) is None
    assert standin_value(standin, "standin_gemms", ctypes.c_long) == 8  # 4 products × 2 dtypes
    gemm, scalar, name = cublas._LIB.gemm["f"]
    monkeypatch.setitem(cublas._LIB.gemm, "f", (lambda *a: 0, scalar, name))
    assert probe._check_raw_products(xp).startswith("a direct cuBLAS product was wrong (")
    monkeypatch.setattr(cublas, "_LIB", None)
    monkeypatch.setattr(cublas, "MAPS", "/nonexistent/maps")
    monkeypatch.setattr(cublas, "CUBLAS_SONAMES", ("libcublas-missing.so.0",))
    why = probe._check_raw_products(xp)
    assert why.startswith("cuBLAS could not be called directly (no libcublas could be loaded (")
    assert "libcublas-missing.so.0" in why and "\n" not in why


def test_the_library_cupy_loaded_is_found_in_the_memory_map(cublas_standin, tmp_path, monkeypatch):
    """``_find_cublas`` takes the libcublas the process has mapped (CuPy's: its handles are valid
    only there) before trying sonames; a library without cuBLAS's symbols is refused by name."""
    maps = tmp_path / "maps"
    maps.write_text(
        "7f0000000000-7f0000001000 r-xp 00000000 08:01 42   /opt/x/libcublasLt.so.12\n"
        f"7f0000001000-7f0000002000 r-xp 00000000 08:01 43   {cublas_standin}\n"
        "7f0000002000-7f0000003000 rw-p 00000000 00:00 0\n"
    )
    monkeypatch.setattr(cublas, "MAPS", str(maps))
    monkeypatch.setattr(cublas, "CUBLAS_SONAMES", ())
    lib = cublas._find_cublas()
    assert lib.set_stream(None, ctypes.c_void_p(0x77)) == 0
    assert lib.gemm["d"][2] == "cublasDgemm_v2"
    monkeypatch.setattr(cublas, "MAPS", "/nonexistent/maps")
    monkeypatch.setattr(cublas, "CUBLAS_SONAMES", ("libm.so.6",))
    with pytest.raises(AttributeError, match="cublasSetStream_v2"):
        cublas._find_cublas()


def test_a_device_without_direct_cublas_trains_without_graphs_and_says_why(monkeypatch):
    """The probe's verdict: where ``_check_raw_products`` fails, the backend keeps CuPy's products,
    captures no graphs, and ``--cuda-graph`` logs one line with the reason."""
    from gpumlp.backends.graph import graph_epoch
    from gpumlp.backends.registry import get_backend

    fake_cupy(1, monkeypatch=monkeypatch)
    monkeypatch.setattr(cublas, "_LIB", None)
    monkeypatch.setattr(cublas, "MAPS", "/nonexistent/maps")
    monkeypatch.setattr(cublas, "CUBLAS_SONAMES", ("libcublas-missing.so.0",))
    be = get_backend("cuda")
    assert not be.captures_graphs
    assert be.graph_unavailable.startswith("cuBLAS could not be called directly (no libcublas could be loaded")
    assert be.graph_unavailable.endswith("CuPy refuses its own cuBLAS calls while a stream captures, "
                                         "so a graph cannot hold the products")  # fmt: skip
    C = np.empty((2, 2), np.float32)
    be.gemm(np.eye(2, dtype=np.float32), np.full((2, 2), 3.0, np.float32), C)  # the fake's cupy.cublas.gemm
    np.testing.assert_array_equal(C, np.full((2, 2), 3.0))
    notes, plain = [], object()
    epoch = graph_epoch(types.SimpleNamespace(be=be), None, None, None, 10, plain, notes.append)
    assert epoch is plain and notes == [f"--cuda-graph: ignored: {be.graph_unavailable}"]
    from gpumlp.cli.bench import graph_line

    result = {
        "rows": [{"cuda_graph": False}],
        "machine": {"device": "cuda:0"},
        "graph_unavailable": be.graph_unavailable,
    }
    assert graph_line(result) == f"--cuda-graph: no row captured (cuda:0: {be.graph_unavailable})"
    monkeypatch.setattr(probe, "_check_raw_products", lambda cp: None)  # a library that passes
    be = get_backend("cuda")
    assert be.captures_graphs and be.graph_unavailable is None


# ---------------------------------------------------------------- on a real GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_direct_cublas_matches_cupy_and_replays_from_a_graph(dtype):
    """On a GPU: the probe found direct cuBLAS usable; ``raw_gemm`` agrees with ``cupy.matmul`` in
    the four transpositions with β accumulation; one captured in a CUDA graph (CuPy's own would
    raise NotImplementedError there) runs nothing at capture and, replayed, writes the uncaptured
    result bit for bit."""
    from gpumlp.backends.registry import get_backend

    be = get_backend("cuda")
    assert be.graph_unavailable is None and be.captures_graphs
    cp = be.xp
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    m, k, n = 33, 70, 17
    for ta in (False, True):
        for tb in (False, True):
            A = cp.asarray(rand(k, m, seed=1).T if ta else rand(m, k, seed=1), dtype=dtype)
            B = cp.asarray(rand(n, k, seed=2).T if tb else rand(k, n, seed=2), dtype=dtype)
            A, B = (A.T.copy().T if ta else A), (B.T.copy().T if tb else B)  # F-contiguous as .T views are
            C0 = cp.asarray(rand(m, n, seed=3), dtype=dtype)
            got = cublas.raw_gemm(cp, A, B, C0.copy(), -0.5, 1.0)
            np.testing.assert_allclose(cp.asnumpy(got), cp.asnumpy(C0 - 0.5 * cp.matmul(A, B)), **tol)
    A, B = cp.asarray(rand(m, k), dtype=dtype), cp.asarray(rand(n, k, seed=1), dtype=dtype).T
    eager = cublas.raw_gemm(cp, A, B, cp.empty((m, n), dtype=dtype), 1.0, 0.0)
    C = cp.zeros((m, n), dtype=dtype)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        cublas.raw_gemm(cp, A, B, C, 1.0, 0.0)
        graph = stream.end_capture()
    assert not bool(C.any())  # captured, not run
    graph.launch()
    cp.cuda.Device().synchronize()
    np.testing.assert_array_equal(cp.asnumpy(C), cp.asnumpy(eager))
