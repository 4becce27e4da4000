"""``--cuda-graph`` (gpumlp/backends/graph.py, ``CupyBackend.capture``) without a GPU, and on one.

Without a GPU, ``CupyBackend``'s own code runs on the host harness of tests/test_kernels.py (its
kernels' CUDA C compiled for the host), with a stand-in ``cupy.cuda`` that emulates stream capture
as CUDA does it: while a stream captures, every kernel, product, reduction and copy is *recorded*,
with the very arrays and numbers it was given, and nothing runs; ``graph.launch()`` replays the
records. Every product goes through ``gpumlp.backends.cuda._raw_gemm``, the real ctypes code, into a
stand-in libcublas (tests/test_raw_gemm.py) whose gemm checks the handle's state when it is called
and is recorded as one launch, as cuBLAS enqueues it on the capturing stream. Device memory may not
be reserved while capturing (``cuda.alloc`` fails), and every array created while capturing must
come from the allocator the capture installed (CuPy's ``using_allocator``), i.e. from a block
reserved before it; anything else fails the test. Every array operation the emulation cannot record
(a numpy function on device arrays) fails too, so a step that would compute something at capture
time instead of in the graph cannot pass unnoticed.
"""

from __future__ import annotations

import contextlib
import ctypes
import types

import numpy as np
import pytest
from standins.kernel_harness import HostCuda, HostKernel, host_library  # noqa: F401  (host_library: a fixture)
from test_raw_gemm import cublas_standin  # noqa: F401  (a fixture)

from gpumlp.backends import cuda
from gpumlp.backends.base import CPU
from gpumlp.backends.cuda import CupyBackend
from gpumlp.backends.graph import GraphStep
from gpumlp.model import MLP
from gpumlp.optim import make_optimizer
from gpumlp.training.config import DEFAULT_RECIPE
from gpumlp.training.loop import TrainState, _make_step, _train_epoch, fit


class Device:
    """The emulated GPU: the records of the capture under way (None: not capturing), the allocator
    a capture installed, the launches counted outside captures, the blocks reserved."""

    def __init__(self):
        self.records = None
        self.allocator = None
        self.streams = []
        self.stream_ptrs = []
        self.gemms = []  # the stream each product was enqueued on (0: the default stream)
        self.launches = self.graph_launches = self.captures = 0
        self.blocks = []
        self.fail_capture = None  # a message: begin_capture raises it, as CuPy would

    def launch(self, work) -> None:
        """One kernel launch: recorded while capturing, else run now."""
        if self.records is not None:
            self.records.append(work)
        else:
            self.launches += 1
            work()

    def new(self, shape, dtype):
        """A new device array: from the capture's allocator while capturing (else a failure)."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if self.records is None:
            return np.empty(shape, dtype).view(DeviceArray)
        if self.allocator is None:
            raise AssertionError(f"an array {shape} was allocated while capturing, not from a block reserved before")
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = self.allocator(nbytes)
        return np.ndarray(shape, dtype, buffer=ptr.block, offset=ptr.offset).view(DeviceArray)


DEVICE = Device()


def _plain(a):
    return a.view(np.ndarray) if isinstance(a, DeviceArray) else a


class DeviceArray(np.ndarray):
    """numpy memory standing for device memory: every operation is a launch (recorded while capturing)."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kw):
        f, args = getattr(ufunc, method), [_plain(a) for a in inputs]
        if out is None and DEVICE.records is not None:  # a new array: from the capture's allocator
            shaped = f(*args, **kw)  # (on whatever the inputs hold now: only its shape and dtype are used)
            out = (DEVICE.new(np.shape(shaped), np.result_type(shaped)),)
        if out is not None:
            outs = tuple(_plain(o) for o in out)
            DEVICE.launch(lambda: f(*args, out=outs, **kw))
            return out[0] if len(out) == 1 else out
        DEVICE.launches += 1
        result = f(*args, **kw)
        return result.view(DeviceArray) if isinstance(result, np.ndarray) else result

    def __array_function__(self, func, types, args, kwargs):
        if DEVICE.records is not None:
            raise AssertionError(
                f"np.{func.__name__} on a device array while capturing: it would run now, not in the graph"
            )
        return super().__array_function__(func, types, args, kwargs)

    def __setitem__(self, key, value):
        target, value = self.view(np.ndarray), _plain(value)
        DEVICE.launch(lambda: target.__setitem__(key, value))

    def copy(self):
        out = DEVICE.new(self.shape, self.dtype)
        out[...] = self
        return out

    def astype(self, dtype):
        out = DEVICE.new(self.shape, dtype)
        out[...] = self
        return out

    @property
    def data(self):
        """cupy.ndarray.data: its ``ptr`` is the address of the view's first element."""
        return types.SimpleNamespace(ptr=self.ctypes.data)

    def take(self, indices, axis=None):
        if DEVICE.records is not None:
            raise AssertionError("take() while capturing: the graph gathers its batch with next_batch's kernel")
        DEVICE.launches += 1
        return self.view(np.ndarray).take(_plain(indices), axis=axis).view(DeviceArray)


class Pointer:
    """cupy.cuda.MemoryPointer: a block and an offset into it."""

    def __init__(self, block, offset=0):
        self.block, self.offset = block, offset

    def __add__(self, offset):
        return Pointer(self.block, self.offset + int(offset))

    @property
    def ptr(self):
        return self.block.ctypes.data + self.offset


def _alloc(nbytes):
    """cupy.cuda.alloc: device memory reserved now (cudaMalloc), never while capturing."""
    if DEVICE.records is not None:
        raise AssertionError("device memory was reserved while capturing")
    DEVICE.blocks.append(nbytes)
    return Pointer(np.zeros(nbytes, np.uint8))


@contextlib.contextmanager
def _using_allocator(allocator):
    previous, DEVICE.allocator = DEVICE.allocator, allocator
    try:
        yield
    finally:
        DEVICE.allocator = previous


class Graph:
    def __init__(self, records):
        self.records = records

    def launch(self, stream=None):
        assert DEVICE.records is None and not DEVICE.streams, "a graph launches on the training's stream"
        DEVICE.launches += 1
        DEVICE.graph_launches += 1
        for work in self.records:
            work()


class Stream:
    def __init__(self, non_blocking=False):
        assert non_blocking, "capture on a stream of its own, which the default stream does not wait on"
        self.ptr = 0x100000 + 16 * len(DEVICE.stream_ptrs)  # a cudaStream_t, never the default stream's 0
        DEVICE.stream_ptrs.append(self.ptr)

    def __enter__(self):
        DEVICE.streams.append(self)
        return self

    def __exit__(self, *exc):
        DEVICE.streams.pop()

    def begin_capture(self, mode=None):
        if DEVICE.fail_capture:
            raise RuntimeError(DEVICE.fail_capture)
        assert DEVICE.records is None and DEVICE.streams[-1] is self
        DEVICE.records = []

    def end_capture(self):
        records, DEVICE.records = DEVICE.records, None
        DEVICE.captures += 1
        return Graph(records)


LEGACY_STREAM = types.SimpleNamespace(ptr=0)
CUBLAS_HANDLE = 0xB1A5


def current_stream():
    return DEVICE.streams[-1] if DEVICE.streams else LEGACY_STREAM


class StandinGemm:
    """The stand-in's gemm as cuBLAS runs it: checked when called (its status returned then), and
    its computation one launch, recorded while the stream captures and replayed with the graph."""

    def __init__(self, lib, api: str, compute: str, scalar):
        self.api, self.enqueue, self.compute = getattr(lib, api), lib.standin_enqueue, getattr(lib, compute)
        p, vp, i = ctypes.POINTER(scalar), ctypes.c_void_p, ctypes.c_int
        self.compute.argtypes = (vp, i, i, i, i, i, p, vp, i, vp, i, p, vp, i)
        self.lib = lib

    def __call__(self, h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
        args = (h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)
        if DEVICE.records is None:
            DEVICE.launches += 1
            status = self.api(*args)
        else:
            status = self.enqueue(h, ta, tb, m, n, k, lda, ldb, ldc)
            if status == 0:
                DEVICE.records.append(lambda: self.compute(*args))  # alpha, beta: kept alive by the byrefs
        if status == 0:
            assert (ctypes.c_void_p.in_dll(self.lib, "standin_stream").value or 0) == current_stream().ptr
            DEVICE.gemms.append(current_stream().ptr)
        return status


class CapturingKernel(HostKernel):
    def __call__(self, *args):
        DEVICE.launch(lambda: HostKernel.__call__(self, *args))
        return args[-1]


class GraphXP(types.ModuleType):
    """The array module: numpy's, with device arrays made through ``DEVICE``."""

    def __getattr__(self, name):
        return getattr(np, name)

    def empty(self, shape, dtype=float):
        return DEVICE.new(shape, dtype)

    def empty_like(self, a):
        return DEVICE.new(a.shape, a.dtype)

    def zeros(self, shape, dtype=float):
        a = DEVICE.new(shape, dtype)
        a[...] = 0  # a memset: a launch
        return a

    def zeros_like(self, a):
        return self.zeros(a.shape, a.dtype)


class GraphHostCuda(HostCuda):
    """CupyBackend's own methods, capture included, over the emulated device: its products are
    CupyBackend's (an empty array and ``_raw_gemm``), each gemm a launch of the stand-in cuBLAS."""

    compiles_kernels = True  # as on CuPy: fit warms up before the capture
    matmul_function, gemm = CupyBackend.matmul_function, CupyBackend.gemm

    def asarray(self, a, dtype=None):
        if isinstance(a, DeviceArray) and (dtype is None or a.dtype == dtype):
            return a
        assert DEVICE.records is None, "a transfer while capturing"
        return np.array(_plain(a), dtype=dtype).view(DeviceArray)

    def to_numpy(self, a):
        assert DEVICE.records is None, "a read back to the host while capturing"
        return np.array(_plain(a))

    def synchronize(self):
        assert DEVICE.records is None, "a synchronisation while capturing"


@pytest.fixture
def graph_cuda(host_library, cublas_standin, monkeypatch):  # noqa: F811
    global DEVICE
    DEVICE = Device()
    HostKernel.library = host_library
    xp = GraphXP("graph_xp")
    xp.ElementwiseKernel = CapturingKernel
    xp.cuda = types.SimpleNamespace(Stream=Stream, alloc=_alloc, using_allocator=_using_allocator,
                                    get_current_stream=current_stream,
                                    device=types.SimpleNamespace(get_cublas_handle=lambda: CUBLAS_HANDLE))  # fmt: skip
    lib = ctypes.CDLL(str(cublas_standin))
    lib.standin_reset()
    blas = cuda._Cublas(lib)  # the real ctypes bindings, their gemm run as the emulated device runs it
    blas.gemm = {c: (StandinGemm(lib, name, f"standin_{c}gemm".replace("fgemm", "sgemm"), scalar), scalar, name)
                 for c, (_, scalar, name) in blas.gemm.items()}  # fmt: skip
    monkeypatch.setattr(cuda, "_LIB", blas)
    monkeypatch.setattr(cuda, "_WORKSPACES", {})
    monkeypatch.setattr(cuda, "_KERNELS", {})
    monkeypatch.setattr(cuda, "_MATMUL_FP32", False)
    return GraphHostCuda("hostcuda", xp)


def train(be, cuda_graph: bool, notes: list | None = None, epochs=3, n=95, progress: list | None = None, **recipe):
    """A float64 run of 784-16-12-10 on n random images in batches of 10 (the last one partial);
    ``progress`` gets ``on_progress``'s calls (after every batch)."""
    rng = np.random.default_rng(0)
    X, y = rng.random((n, 784)), rng.integers(0, 10, n)
    activation, loss = ("sigmoid", "mse") if recipe.get("optimizer", "sgd") == "sgd" else ("relu", "ce")
    m = MLP((784, 16, 12, 10), activation, loss, seed=1, device=be, dtype="float64")
    state = TrainState()
    h = fit(m, X, y, epochs=epochs, batch_size=10, lr=0.05, seed=2, X_val=X[:20], y_val=y[:20], state=state,
            cuda_graph=cuda_graph, log=(notes if notes is not None else []).append,
            on_progress=None if progress is None else lambda *a: progress.append(a), **recipe)  # fmt: skip
    return be.to_numpy(m.theta), [(e.train_loss, e.val_loss, e.val_accuracy) for e in h], state


RECIPES = {
    "sgd, weight decay, fused W0": dict(optimizer="sgd", weight_decay=1e-3),
    "momentum, step schedule": dict(optimizer="momentum", schedule="step", step_size=1, gamma=0.5),
    "nesterov, max-norm, weight decay": dict(optimizer="nesterov", max_norm=0.5, weight_decay=1e-3),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_training_with_the_graph_is_bit_identical(graph_cuda, name, monkeypatch):
    """Three epochs of 9 whole batches and a partial one: with the graph, the same parameters,
    losses, validation, progress reports and optimiser state bit for bit, every whole batch one
    graph launch, one capture per learning rate (the step schedule changes it every epoch)."""
    monkeypatch.setattr("gpumlp.optim.FUSE_MIN_WEIGHTS", 1000)  # SGD's W0 stepped inside backward's gemm
    recipe = RECIPES[name]
    progress, g_progress = [], []
    theta, history, state = train(graph_cuda, False, progress=progress, **recipe)
    assert DEVICE.graph_launches == 0
    notes = []
    g_theta, g_history, g_state = train(graph_cuda, True, notes, progress=g_progress, **recipe)
    assert notes == []
    assert g_progress == progress and [p[1] for p in progress[:10]] == list(range(1, 11))  # the partial batch's too
    assert DEVICE.graph_launches == 3 * 9  # the partial batch of 5 ran uncaptured
    assert DEVICE.captures == (3 if "schedule" in recipe else 1)
    np.testing.assert_array_equal(g_theta, theta)
    assert g_history == history
    assert g_state.optimizer == state.optimizer  # the step count t included
    for k, v in state.arrays.items():
        np.testing.assert_array_equal(g_state.arrays[k], v)
    assert not np.array_equal(theta, MLP((784, 16, 12, 10), seed=1, dtype="float64").theta)  # it trained


@pytest.mark.parametrize("name", list(RECIPES))
def test_training_through_the_direct_cublas_products_matches_the_cpu(graph_cuda, name, monkeypatch):
    """The products of whole runs through ``_raw_gemm`` (forward, input and weight gradients, SGD's
    step inside backward with β = 1 − ηλ) and the stand-in cuBLAS, with and without the graph,
    against the numpy reference on the CPU: same math, other roundings."""
    monkeypatch.setattr("gpumlp.optim.FUSE_MIN_WEIGHTS", 1000)
    ref, ref_history, _ = train(CPU, False, **RECIPES[name])
    for flag in (False, True):
        theta, history, _ = train(graph_cuda, flag, **RECIPES[name])
        np.testing.assert_allclose(theta, ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.array(history), np.array(ref_history), rtol=1e-9)
    assert DEVICE.gemms and DEVICE.graph_launches == 3 * 9


def test_a_run_continued_with_the_graph_is_the_uninterrupted_run(graph_cuda):
    """Two epochs with the graph, then fit continues the same state to four (a new capture on the
    buffers the first run left): bit for bit the four epochs of an uncaptured run."""
    theta, history, _ = train(graph_cuda, False, epochs=4, optimizer="momentum")
    rng = np.random.default_rng(0)
    X, y = rng.random((95, 784)), rng.integers(0, 10, 95)
    m = MLP((784, 16, 12, 10), "relu", "ce", seed=1, device=graph_cuda, dtype="float64")
    state, notes = TrainState(), []
    for epochs in (2, 4):
        h = fit(m, X, y, epochs=epochs, batch_size=10, lr=0.05, seed=2, X_val=X[:20], y_val=y[:20], state=state,
                optimizer="momentum", cuda_graph=True, log=notes.append)  # fmt: skip
    assert notes == [] and DEVICE.captures == 2 and DEVICE.graph_launches == 4 * 9
    np.testing.assert_array_equal(graph_cuda.to_numpy(m.theta), theta)
    assert [(e.train_loss, e.val_loss, e.val_accuracy) for e in h] == history


def step_parts(be, sizes=(784, 16, 16, 10), activation="sigmoid", loss="mse", n=10, **recipe):
    """A network's step (the reference network by default), its optimiser, n images X (n, 784) and
    targets Y (n, 10) on ``be``, and a loss vector for batches of 10."""
    m = MLP(sizes, activation, loss, device=be, dtype="float64")
    r = {**DEFAULT_RECIPE, **recipe}
    opt = make_optimizer(r["optimizer"], m, weight_decay=r["weight_decay"], fuse=True)
    rng = np.random.default_rng(0)
    X, Y = m.inputs(rng.random((n, 784))), m.one_hot(rng.integers(0, 10, n))
    return m, opt, _make_step(m, opt, r, seed=0), X, Y, be.xp.zeros((10,), dtype=X.dtype)


@pytest.mark.parametrize(
    "network,uncaptured",
    [
        (dict(), 17),  # the reference network: 784-16-16-10 sigmoid mse SGD
        (dict(sizes=(784, 800, 10), activation="relu", loss="ce"), 11),  # W0's SGD step inside backward's gemm
        (dict(activation="tanh", optimizer="nesterov", weight_decay=1e-4, max_norm=3.0), 20),  # + 3 max-norm kernels
    ],
)
@pytest.mark.parametrize("n", [40, 45])  # 4 whole batches of 10, and a partial one of 5
def test_a_whole_batch_is_one_launch(graph_cuda, network, uncaptured, n):
    """Batch 10, counted on CupyBackend's own code: a step uncaptured is the launches the fake device
    counts (tests/test_launches.py); with the graph, an epoch is 3 launches of its own (the loss
    vector zeroed, the permutation copied into the graph's buffer, the position zeroed), then one
    graph launch per whole batch, its gather inside, and nothing else; a partial batch is its two
    gathers and the uncaptured step."""
    m, opt, step, X, Y, losses = step_parts(graph_cuda, n=n, **network)
    step(X[:10], Y[:10], 0.1, 1, 0, losses)  # the warm-up: first uses outside the count
    DEVICE.launches = 0
    step(X[:10], Y[:10], 0.1, 1, 1, losses)
    assert DEVICE.launches == uncaptured
    graph = GraphStep(m, opt, X, Y, 10, _train_epoch, log=pytest.fail)
    perm = graph_cuda.asarray(np.random.default_rng(1).permutation(n))  # (n,) as fit's, on the device
    graph.train_epoch(graph_cuda, step, X, Y, perm, 10, 0.1, 1, 1, losses)  # captures, then launches
    DEVICE.launches, DEVICE.graph_launches = 0, 0
    graph.train_epoch(graph_cuda, step, X, Y, perm, 10, 0.1, 2, 1, losses)
    whole, partial = n // 10, (2 + uncaptured if n % 10 else 0)
    assert (DEVICE.launches, DEVICE.graph_launches, DEVICE.captures) == (3 + whole + partial, whole, 1)
    assert opt.t == 2 + 2 * -(-n // 10)  # the capture's own call to step() does not count


def test_bench_times_the_rows_a_graph_can_replay_through_one(graph_cuda, monkeypatch, mnist_dir):
    """``gpumlp bench --cuda-graph``: a row whose recipe the graph replays trains through it (a graph
    launch per whole batch, in the warm-up and the timed run), a row it cannot (dropout) without; the
    report says which."""
    import functools

    from gpumlp.cli import bench

    monkeypatch.setattr(bench, "MLP", functools.partial(MLP, dtype="float64"))  # the harness computes in float64
    sgd = bench.BenchConfig("tiny-sgd", (784, 8, 10), "sigmoid", "mse", 3.0, 10, 60)
    dropout = bench.BenchConfig("tiny-dropout", (784, 8, 10), "relu", "ce", 0.1, 10, 60, 1, (("dropout", 0.2),))
    result = bench.run_bench(graph_cuda, repeats=1, configs=[sgd, dropout], data_dir=mnist_dir, extras=False,
                             sgemm_n=16, cuda_graph=True)  # fmt: skip
    assert [(r["cuda_graph"], r["notes"]) for r in result["rows"]] == [(True, []), (False, [])]
    assert DEVICE.graph_launches == 2 * 6  # warm-up and one timed run of 60 images in batches of 10
    assert "--cuda-graph: rows 1 trained with a CUDA graph" in bench.format_bench(result)


def test_the_step_creates_its_arrays_from_a_block_reserved_before_capture(graph_cuda):
    """No device memory is reserved while capturing, and the harness fails an array created then
    that does not come from the capture's block; a block too small for the step is replaced by a
    bigger one before capturing again, and the graph is still the exact step."""
    with pytest.raises(AssertionError, match="allocated while capturing"):  # the harness's check has teeth
        with Stream(non_blocking=True) as s:
            s.begin_capture()
            try:
                graph_cuda.xp.empty((10, 16))
            finally:
                s.end_capture()
    m, opt, step, X, Y, losses = step_parts(graph_cuda, optimizer="momentum")
    step(X, Y, 0.1, 1, 0, losses)
    eager, eager_losses = m.theta.copy(), losses.copy()
    DEVICE.blocks.clear()
    captured = graph_cuda.capture(lambda: step(X, Y, 0.1, 1, 1, losses), 512)
    assert DEVICE.blocks[0] == 512 and len(DEVICE.blocks) > 1 and DEVICE.blocks[-1] > 512
    np.testing.assert_array_equal(m.theta, eager)  # capturing ran nothing
    captured.launch()  # the second step
    step(X, Y, 0.1, 1, 2, losses)  # and a third, uncaptured; against three uncaptured steps of a twin:
    m2, opt2, step2, *_ = step_parts(graph_cuda, optimizer="momentum")
    losses2 = m2.be.xp.zeros((10,), dtype=X.dtype)
    for batch in range(3):
        step2(X, Y, 0.1, 1, batch, losses2)
    np.testing.assert_array_equal(m.theta, m2.theta)
    np.testing.assert_array_equal(losses, losses2)
    assert not np.array_equal(m.theta, eager) and not np.array_equal(losses, eager_losses)


def test_a_failed_capture_trains_without_the_graph_and_says_so_once(graph_cuda):
    theta, history, _ = train(graph_cuda, False)
    DEVICE.fail_capture = "operation not permitted when stream is capturing"
    notes = []
    g_theta, g_history, _ = train(graph_cuda, True, notes)
    assert notes == [
        "--cuda-graph: capturing the training step failed (operation not permitted when stream is capturing); "
        "training without a graph"
    ]
    assert DEVICE.graph_launches == 0
    np.testing.assert_array_equal(g_theta, theta)
    assert g_history == history


def test_the_products_are_enqueued_on_the_capturing_stream_and_replayed(graph_cuda):
    """Every product of the step goes through ``_raw_gemm``: uncaptured on the default stream, while
    capturing on the capture's own stream (the stand-in checks the handle's state at each call), each
    recorded as one launch and replayed by the graph: 8 for 784-16-16-10 (3 forward, 3 weight
    gradients, 2 input gradients)."""
    m, opt, step, X, Y, losses = step_parts(graph_cuda, optimizer="momentum")
    step(X, Y, 0.1, 1, 0, losses)
    assert DEVICE.gemms == [0] * 8 and len(DEVICE.blocks) >= 1  # the workspace: reserved at the first product
    DEVICE.gemms.clear()
    captured = graph_cuda.capture(lambda: step(X, Y, 0.1, 1, 1, losses), 1 << 20)
    assert DEVICE.gemms == [DEVICE.stream_ptrs[-1]] * 8 and DEVICE.stream_ptrs[-1] != 0
    before = m.theta.copy()
    captured.launch()
    assert not np.array_equal(m.theta, before)


def test_a_product_refused_while_capturing_trains_without_the_graph_with_its_reason(graph_cuda, monkeypatch):
    """CuPy's own cuBLAS refuses a capturing stream (cublas.pyx's setStream): were a product to
    raise so, the capture ends (its own error, cudaErrorStreamCaptureInvalidated, swallowed), the
    note gives the product's reason, and training goes on without a graph, bit for bit."""
    theta, history, _ = train(graph_cuda, False)
    real = cuda._raw_gemm

    def refusing(xp, A, B, C, alpha, beta):
        if DEVICE.records is not None:
            raise NotImplementedError("calling cuBLAS API during stream capture is currently unsupported")
        return real(xp, A, B, C, alpha, beta)

    def invalidated(self):
        DEVICE.records = None
        raise RuntimeError("cudaErrorStreamCaptureInvalidated: operation failed due to a previous error")

    monkeypatch.setattr(cuda, "_raw_gemm", refusing)
    monkeypatch.setattr(Stream, "end_capture", invalidated)
    notes = []
    g_theta, g_history, _ = train(graph_cuda, True, notes)
    assert notes == [
        "--cuda-graph: capturing the training step failed (calling cuBLAS API during stream capture is "
        "currently unsupported); training without a graph"
    ]
    assert DEVICE.records is None and not DEVICE.streams and DEVICE.graph_launches == 0
    np.testing.assert_array_equal(g_theta, theta)
    assert g_history == history


def test_on_the_cpu_the_flag_is_ignored_with_a_note():
    notes = []
    runs = [train(CPU, flag, notes, epochs=1)[0] for flag in (False, True)]
    assert notes == ["--cuda-graph: ignored on cpu (CUDA graphs need --device cuda)"]
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("recipe", [dict(optimizer="adam"), dict(dropout=0.2), dict(augment="shift")])
def test_recipes_a_graph_would_replay_wrongly_are_refused(recipe):
    from gpumlp.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^--cuda-graph cannot capture .*drop --cuda-graph") as e:
        train(CPU, True, **recipe)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- on a real GPU


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(RECIPES))
def test_gpu_training_with_the_graph_matches_without(name):
    """On a GPU: the graph captured by CUDA itself, against the same run uncaptured (float64). The
    same kernels in the same order: equal to the last bits (cuBLAS may choose another algorithm
    inside a graph, hence a tolerance: the same routine with the same workspace is expected to be
    bit-equal); and the graph really ran, its products included (no fallback note)."""
    from gpumlp.backends.registry import get_backend

    be = get_backend("cuda")
    assert be.captures_graphs, be.graph_unavailable  # the probe called cuBLAS directly: products capturable
    theta, history, _ = train(be, False, **RECIPES[name])
    notes = []
    g_theta, g_history, _ = train(be, True, notes, **RECIPES[name])
    assert notes == []
    np.testing.assert_allclose(g_theta, theta, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.array(g_history, dtype=float), np.array(history, dtype=float), rtol=1e-12)
