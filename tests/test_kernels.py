"""The fused CUDA kernels (gpumlp/backends/kernels.py) against the numpy reference they replace.

Without a GPU: every kernel body is compiled, with ``nvcc`` for the device (float and double) where
nvcc exists, and for the host with nvcc or a C++ compiler; the host build then runs the *same*
CUDA C, element by element, inside ``CupyBackend``'s own methods (``HostCuda``, in
tests/standins/kernel_harness.py), and the results must match the numpy reference to rounding.
With a GPU (tests marked ``gpu``): the real ``CupyBackend`` against the CPU, kernel by kernel.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gpumlp.activations import ACTIVATIONS
from gpumlp.backends.cpu import CPU
from gpumlp.losses import LOSSES
from gpumlp.model import MLP
from gpumlp.optim import RULES
from gpumlp.training.loop import fit
from standins.kernel_harness import (
    CTYPES,
    NVCC,
    all_specs,
    c_name,
    c_source,
    params,
)


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_every_kernel_compiles_for_the_gpu_with_nvcc(tmp_path):
    """The CUDA C of every kernel, as __global__ functions in float and double, through nvcc's
    device compiler (for the oldest architecture it targets by default): a syntax or type error in a
    kernel body fails here, not at NVRTC time on someone's GPU."""
    src = tmp_path / "k.cu"
    src.write_text(c_source(all_specs()))
    out = subprocess.run(
        [NVCC, "-c", "-o", str(tmp_path / "k.o"), str(src)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stderr.count("warning") == 0, out.stderr[-4000:]


def cupy_form_source(specs) -> str:
    """Each kernel wrapped as CuPy 14 wraps an ElementwiseKernel before NVRTC compiles it: CuPy's own
    ``CArray`` and ``CIndexer`` (from the installed CuPy's headers), the ``CUPY_FOR`` loop over ``i``,
    ``const T x = _raw_x[_ind.get()]`` for an input, ``T &y = …`` for an output, a raw parameter as
    a 1-D ``CArray`` (gpumlp passes flat views) and a scalar as a plain value."""
    lines = ["#include <cassert>", "#include <cupy/carray.cuh>"]
    for T in ("float", "double"):
        lines.append(f"namespace k_{T} {{ typedef {T} T;")
        for name, spec in specs.items():
            args, prologue = [], []
            for p, t, raw, is_out in params(spec):
                ctype = CTYPES.get(t, "T")
                const = "" if is_out else "const "  # CuPy declares every input const, raw ones too
                if t == "int32":
                    args.append(f"{const}int {p}")
                elif raw:
                    args.append(f"{const}CArray<{ctype}, 1, true, true> {p}")
                elif p in SCALARS.get(name, ()):
                    args.append(f"{const}{ctype} {p}")
                else:
                    args.append(f"CArray<{ctype}, 1, true, true> _raw_{p}")
                    prologue.append(f"{ctype + ' &' if is_out else 'const ' + ctype} {p} = _raw_{p}[_ind.get()];")
            lines.append(f"__global__ void {name}({', '.join(args)}, CIndexer<1, true> _ind) {{")
            lines.append("  CUPY_FOR(i, _ind.size()) { _ind.set(i); " + " ".join(prologue))
            lines.append(spec[2])
            lines.append("  }\n}")
        lines.append("}")
    return "\n".join(lines) + "\n"


# The parameters gpumlp passes as numbers, not arrays (CuPy then makes them kernel arguments).
SCALARS = {"axpby": ("alpha", "beta"), "opt_sgd": ("lr",), "opt_momentum": ("lr", "mu"), "opt_nesterov": ("lr", "mu"),
           "opt_adam": ("b1", "b2", "eps_c", "step")}  # fmt: skip
SCALARS.update(
    {f"loss_{c_name(k)}": ("inv_n",) for k in LOSSES},
    dropout=("k", "threshold", "scale"),
    max_norm=("c",),
    affine_draw=("k", "shift", "rot", "scale", "shear"),
    elastic_field=("k",),
)


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_every_kernel_compiles_as_cupy_wraps_it(tmp_path):
    """The kernels inside CuPy's own kernel skeleton and headers (CArray's indexing and writes
    through raw arrays included), compiled by nvcc in float and double."""
    cupy = pytest.importorskip("cupy", reason="CuPy's headers come with CuPy")
    include = Path(cupy.__file__).parent / "_core" / "include"
    src = tmp_path / "cupy_form.cu"
    src.write_text(cupy_form_source(all_specs()))
    cmd = [NVCC, "-c", f"-I{include}", "-o", str(tmp_path / "c.o"), str(src)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_bias_and_activation_kernels_match_numpy(host_cuda, name):
    act = ACTIVATIONS[name]
    Z, b = rand(6, 5) * 4, rand(5, seed=1)
    np.testing.assert_allclose(
        host_cuda.bias_act(Z.copy(), b, act), CPU.bias_act(Z.copy(), b, act), rtol=1e-13, atol=1e-15
    )
    H, dA, M = CPU.bias_act(Z.copy(), b, act), rand(6, 5, seed=2), (rand(6, 5, seed=3) > 0) * 2.0
    for mask in (None, M):
        got = host_cuda.act_grad_mul(dA.copy(), H, act, mask)
        np.testing.assert_allclose(got, CPU.act_grad_mul(dA.copy(), H, act, mask), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_kernels_match_numpy(host_cuda, name):
    """The output layer's bias, function, loss and delta in one kernel per row, huge logits included."""
    Z, b = rand(7, 10) * 3, rand(10, seed=1)
    Z[0, 3] = 800.0  # exp would overflow without the shift
    Y = np.eye(10)[np.random.default_rng(2).integers(0, 10, 7)]
    rows, ref_rows = np.full(7, 0.25), np.full(7, 0.25)  # an accumulator that already holds 7 × 0.25
    delta = host_cuda.loss_delta(Z.copy(), b, Y, LOSSES[name], 7, rows)
    ref_delta = CPU.loss_delta(Z.copy(), b, Y, LOSSES[name], 7, ref_rows)
    assert np.isfinite(rows).all() and rows.sum() == pytest.approx(ref_rows.sum(), rel=1e-13)
    assert (rows > 0.25).all()  # the kernel adds each row's loss into its entry
    ref_total, _ = LOSSES[name].total_and_delta(np, Z + b, LOSSES[name].output(np, Z + b), Y)
    assert rows.sum() - 7 * 0.25 == pytest.approx(float(ref_total), rel=1e-12)
    np.testing.assert_allclose(delta, ref_delta, rtol=1e-12, atol=1e-15)


def test_dropout_mask_kernel_draws_the_same_bits_as_numpy(host_cuda):
    """The integer hash in CUDA C against gpumlp.backends.rng's array operations: identical masks (0 or
    exactly 1/(1−p)), for several draws and keep probabilities."""
    from gpumlp.backends.rng import DeviceRNG

    for p, coords in ((0.1, (1, 2, 0)), (0.5, (3, 7, 1)), (0.9, (2**33, 5, 2))):
        masks = [
            be.dropout_mask(DeviceRNG(be, 7, "dropout"), (9, 13), p, coords, np.float64) for be in (CPU, host_cuda)
        ]
        np.testing.assert_array_equal(masks[1], masks[0])
        assert set(np.unique(masks[0])) <= {0.0, 1 / (1 - p)} and 0 < np.count_nonzero(masks[0]) < masks[0].size


def test_max_norm_kernel_matches_numpy(host_cuda):
    W = rand(30, 7) * np.array([0.01, 0.1, 0.5, 1, 2, 5, 0])  # columns inside and outside the bound, one zero
    got, ref = host_cuda.max_norm_(W.copy(), 1.5), CPU.max_norm_(W.copy(), 1.5)
    np.testing.assert_allclose(got, ref, rtol=1e-14, atol=0)
    np.testing.assert_array_equal(got[:, :2], W[:, :2])  # within the bound: untouched
    assert np.linalg.norm(got, axis=0).max() <= 1.5 * (1 + 1e-12)


@pytest.mark.parametrize("kinds", ["shift", "affine", "elastic", "affine,elastic"])
def test_warp_kernel_matches_the_resample(host_cuda, kinds):
    """Augmentation's source coordinates and bilinear resample in one kernel, against
    Augmenter.reference_warp on the same drawn transforms (strong ones: pixels pulled from outside)."""
    from gpumlp.training.augment import AugmentConfig, Augmenter

    cfg = AugmentConfig(kinds=tuple(kinds.split(",")), shift=4.0, rotate=40.0, scale=0.3, shear=0.4, alpha=60.0)
    X = np.random.default_rng(0).random((6, 784))
    cpu, host = Augmenter(CPU, cfg, 3, np.float64), Augmenter(host_cuda, cfg, 3, np.float64)
    w = cpu.draw(6, 2, 5)
    ref = cpu.reference_warp(X, w)
    got = host.warp(X, w)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    assert 0 < np.count_nonzero(got == 0) and not np.array_equal(got, X)  # moved, some pixels from outside


@pytest.mark.parametrize("kinds", ["shift", "affine", "elastic", "shift,affine,elastic"])
def test_draw_kernels_match_the_reference_draw(host_cuda, kinds):
    """Augmentation's draws from the counter-based hash in CUDA C: the translations bit for bit
    (exact uniforms times one number), the affine matrices and elastic fields to rounding (cos/sin,
    the smoothing products)."""
    from gpumlp.training.augment import AugmentConfig, Augmenter

    cfg = AugmentConfig(kinds=tuple(kinds.split(",")), shift=3.0, rotate=25.0, scale=0.2, shear=0.3, alpha=50.0)
    ref = Augmenter(CPU, cfg, 11, np.float64).reference_draw(9, 4, 7)
    got = Augmenter(host_cuda, cfg, 11, np.float64).draw(9, 4, 7)
    for name, r, g in zip(ref._fields, ref, got):
        assert (r is None) == (g is None), name
        if r is not None and name == "t":
            np.testing.assert_array_equal(g, r)
        elif r is not None:
            np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12)


def test_axpby_kernel_matches_numpy(host_cuda):
    x, y = rand(300), rand(300, seed=1)
    np.testing.assert_allclose(host_cuda.axpby(-0.3, x, 0.9, y.copy()), CPU.axpby(-0.3, x, 0.9, y.copy()), rtol=1e-14)


def batches_by_take(X, Y, perm, b: int, count: int):
    """The numpy reference of the graph's gather: batch j is ``X.take(perm[j b : (j + 1) b])``."""
    return [
        (X.take(perm[j * b : (j + 1) * b], axis=0), Y.take(perm[j * b : (j + 1) * b], axis=0)) for j in range(count)
    ]


@pytest.mark.parametrize("d,k", [(7, 3), (4, 10)])  # Y's rows wider than X's too: threads write several
def test_next_batch_kernels_walk_the_permutation_like_take(host_cuda, d, k):
    """The gather kernel and the one-thread advance, run one batch after the other on the same
    buffers and counter, give exactly ``X.take(perm[pos : pos + b])`` and move pos by b each time;
    the reference ``Backend.next_batch`` the same."""
    rng = np.random.default_rng(0)
    n, b = 23, 5
    X, Y, perm = rng.random((n, d)), rng.random((n, k)), rng.permutation(n)  # perm: int64, as fit's
    for be in (host_cuda, CPU):
        pos, Xs, Ys = np.zeros(1, np.int64), np.full((b, d), np.nan), np.full((b, k), np.nan)
        for j, (Xr, Yr) in enumerate(batches_by_take(X, Y, perm, b, n // b)):
            be.next_batch(X, Y, perm, pos, Xs, Ys)
            np.testing.assert_array_equal(Xs, Xr)
            np.testing.assert_array_equal(Ys, Yr)
            assert pos.tolist() == [(j + 1) * b]


@pytest.mark.parametrize("optimizer", list(RULES))
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_training_through_the_kernels_matches_numpy(host_cuda, optimizer, weight_decay, monkeypatch):
    """Whole float64 runs: every fused operation of CupyBackend (activations, loss, optimiser with
    weight decay, SGD's spans around weight matrices fused into backward) in its host build, against
    the numpy reference. Same math; only the order of a few roundings differs."""
    monkeypatch.setattr("gpumlp.optim.FUSE_MIN_WEIGHTS", 200)  # W0, W1 of SGD fused, W2 not
    rng = np.random.default_rng(0)
    X, y = rng.random((120, 784)), rng.integers(0, 10, 120)
    thetas, losses = {}, {}
    for be in (CPU, host_cuda):
        for activation, loss in (("sigmoid", "mse"), ("relu", "ce")):
            m = MLP((784, 16, 12, 10), activation, loss, seed=1, device=be, dtype="float64")
            h = fit(m, X, y, epochs=2, batch_size=10, lr=0.05, seed=2, X_val=X[:20], y_val=y[:20],
                    optimizer=optimizer, weight_decay=weight_decay, dropout=0.2 if loss == "ce" else 0.0,
                    max_norm=0.5 if loss == "ce" else 0.0)  # fmt: skip
            thetas[be.name, activation] = m.theta.copy()
            losses[be.name, activation] = [e.train_loss for e in h]
    for activation in ("sigmoid", "relu"):
        np.testing.assert_allclose(thetas["hostcuda", activation], thetas["cpu", activation], rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(losses["hostcuda", activation], losses["cpu", activation], rtol=1e-10)
        assert not np.array_equal(thetas["cpu", activation], MLP((784, 16, 12, 10), activation, seed=1).theta)


def test_the_source_names_every_parameter_it_uses():
    """A cheap guard on the templates: each body uses each of its parameters."""
    for name, spec in all_specs().items():
        for p, *_ in params(spec):
            assert re.search(rf"\b{p}\b", spec[2]), (name, p)


# ---------------------------------------------------------------- on a real GPU


@pytest.fixture
def gpu():
    from gpumlp.backends.registry import get_backend

    return get_backend("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpu_kernels_match_numpy_one_by_one(gpu, dtype):
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
    d = np.dtype(dtype)
    Z, b, dA = rand(64, 16).astype(d) * 3, rand(16, seed=1).astype(d), rand(64, 16, seed=2).astype(d)
    M = ((rand(64, 16, seed=3) > 0) * 2.0).astype(d)
    for act in ACTIVATIONS.values():
        got = gpu.to_numpy(gpu.bias_act(gpu.asarray(Z), gpu.asarray(b), act))
        np.testing.assert_allclose(got, CPU.bias_act(Z.copy(), b, act), **tol)
        H = CPU.bias_act(Z.copy(), b, act)
        for mask in (None, M):
            dev_mask = None if mask is None else gpu.asarray(mask)
            got = gpu.to_numpy(gpu.act_grad_mul(gpu.asarray(dA), gpu.asarray(H), act, dev_mask))
            np.testing.assert_allclose(got, CPU.act_grad_mul(dA.copy(), H, act, mask), **tol)
    Y = np.eye(10, dtype=d)[np.random.default_rng(4).integers(0, 10, 64)]
    Zo, bo = Z[:, :10].copy(), b[:10].copy()
    for loss in LOSSES.values():
        rows, ref_rows = gpu.asarray(np.zeros(64, dtype=d)), np.zeros(64, dtype=d)
        delta = gpu.loss_delta(gpu.asarray(Zo), gpu.asarray(bo), gpu.asarray(Y), loss, 64, rows)
        ref_delta = CPU.loss_delta(Zo.copy(), bo, Y, loss, 64, ref_rows)
        assert float(gpu.to_numpy(rows.sum())) == pytest.approx(float(ref_rows.sum()), rel=tol["rtol"] * 10)
        np.testing.assert_allclose(gpu.to_numpy(delta), ref_delta, **tol)
    x, y = rand(1000).astype(d), rand(1000, seed=5).astype(d)
    np.testing.assert_allclose(gpu.to_numpy(gpu.axpby(0.3, gpu.asarray(x), 0.7, gpu.asarray(y))),
                               CPU.axpby(0.3, x, 0.7, y.copy()), **tol)  # fmt: skip


@pytest.mark.gpu
def test_gpu_dropout_and_max_norm_kernels_match_numpy(gpu):
    from gpumlp.backends.rng import DeviceRNG

    for dtype in (np.float32, np.float64):
        M = gpu.dropout_mask(DeviceRNG(gpu, 3, "dropout"), (128, 800), 0.3, (4, 9, 1), dtype)
        ref = CPU.dropout_mask(DeviceRNG(CPU, 3, "dropout"), (128, 800), 0.3, (4, 9, 1), dtype)
        np.testing.assert_array_equal(gpu.to_numpy(M), ref)  # integer hash: bit for bit
        W = (rand(784, 800) * 0.2).astype(dtype)
        got = gpu.to_numpy(gpu.max_norm_(gpu.asarray(W), 3.0))
        np.testing.assert_allclose(got, CPU.max_norm_(W.copy(), 3.0), rtol=1e-5 if dtype == np.float32 else 1e-12)
    from gpumlp.training.augment import AugmentConfig, Augmenter

    cfg = AugmentConfig(kinds=("affine", "elastic"), rotate=30.0, alpha=40.0)
    X = np.random.default_rng(0).random((64, 784)).astype(np.float32)
    w = Augmenter(CPU, cfg, 3).draw(64, 1, 2)
    ref = Augmenter(CPU, cfg, 3).reference_warp(X, w)
    dev = type(w)(*(None if v is None else gpu.asarray(v) for v in w))
    got = gpu.to_numpy(Augmenter(gpu, cfg, 3).warp(gpu.asarray(X), dev))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    drawn = Augmenter(gpu, cfg, 3).draw(64, 1, 2)  # the draw kernels: t bit for bit, A and D to rounding
    np.testing.assert_array_equal(gpu.to_numpy(drawn.t), w.t)
    np.testing.assert_allclose(gpu.to_numpy(drawn.A), w.A, rtol=0, atol=1e-6)
    np.testing.assert_allclose(gpu.to_numpy(drawn.D), w.D, rtol=1e-5, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpu_next_batch_kernels_match_take(gpu, dtype):
    """The graph's gather and advance on a GPU, batch after batch of MNIST's shape: bit for bit
    ``X.take(perm[pos : pos + b])`` on the host (a copy: no rounding), pos moved by b each time."""
    rng = np.random.default_rng(0)
    n, b = 1000, 64
    X, Y = rng.random((n, 784)).astype(dtype), np.eye(10, dtype=dtype)[rng.integers(0, 10, n)]
    perm = rng.permutation(n)
    dX, dY, dperm = gpu.asarray(X), gpu.asarray(Y), gpu.asarray(perm)
    pos, Xs, Ys = gpu.xp.zeros((1,), np.int64), gpu.xp.empty((b, 784), dtype), gpu.xp.empty((b, 10), dtype)
    for j, (Xr, Yr) in enumerate(batches_by_take(X, Y, perm, b, n // b)):
        gpu.next_batch(dX, dY, dperm, pos, Xs, Ys)
        np.testing.assert_array_equal(gpu.to_numpy(Xs), Xr)
        np.testing.assert_array_equal(gpu.to_numpy(Ys), Yr)
        assert gpu.to_numpy(pos).tolist() == [(j + 1) * b]


@pytest.mark.gpu
@pytest.mark.parametrize("optimizer", list(RULES))
def test_gpu_optimizer_kernels_match_numpy(gpu, optimizer):
    """Two float64 epochs with weight decay: the fused optimiser kernel against the numpy rule."""
    rng = np.random.default_rng(0)
    X, y = rng.random((200, 784)), rng.integers(0, 10, 200)
    thetas = {}
    for device in ("cpu", "cuda"):
        m = MLP((784, 32, 16, 10), "relu", "ce", seed=1, device=device, dtype="float64")
        fit(m, X, y, epochs=2, batch_size=10, lr=0.01, seed=2, optimizer=optimizer, weight_decay=1e-3)
        thetas[device] = m.be.to_numpy(m.theta)
    np.testing.assert_allclose(thetas["cuda"], thetas["cpu"], rtol=1e-7, atol=1e-10)
