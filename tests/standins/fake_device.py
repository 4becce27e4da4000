"""A strict fake accelerator for the tests: numpy underneath, but its arrays behave like CuPy's
in every way that matters for host/device bugs, and louder.

``FakeArray`` has no ``__array__``, ``__float__``, ``__int__``, ``__bool__`` or ``item()``: passing
one to a numpy function, ``np.savez``, ``float()``, or mixing it with a host ``np.ndarray`` raises
``DeviceMixError`` — the mistakes that work on numpy and crash only on a real GPU. Python and numpy
*scalars* mix freely, as with CuPy. The module ``xp`` offers the functions gpumlp calls on device
arrays; ``xp.asarray`` and ``xp.asnumpy`` are the only ways across, and they are counted, as are
``synchronize`` calls, so tests can check how often the hot loop crosses between host and device.

``counters.ops`` counts array operations, each of which would be one kernel launch on a GPU (views
and slices are free). ``FakeBackend`` is the backend subclass that drives it: like ``CupyBackend`` it
counts each fused operation as one launch (``FAKE``), or runs the reference's separate operations
(``FAKE_UNFUSED``, what the CUDA path launched before the fused kernels). With ``counters.strict``,
an operation outside ``be.activate()`` raises, as it would run on the wrong GPU of a cuda:N run.
"""

from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass

import numpy as np

from gpumlp.backends.base import Backend


class DeviceMixError(TypeError):
    """A host array met a device array, or a device array was read implicitly on the host."""


class Counters:
    def __init__(self):
        self.reset()

    def reset(self):
        self.to_device = self.to_host = self.syncs = self.ops = 0
        self.paused = self.scope = 0  # inside a fused operation; inside be.activate()
        self.strict = False


counters = Counters()


def _launch():
    """One array operation: a kernel launch on a GPU."""
    if counters.paused:
        return
    counters.ops += 1
    if counters.strict and not counters.scope:
        raise DeviceMixError("an array operation ran outside be.activate(): on cuda:N it would run on another GPU")


def _unwrap(x):
    if isinstance(x, FakeArray):
        return x._a
    if isinstance(x, np.ndarray):
        raise DeviceMixError(f"a host numpy array {x.shape} was mixed with a device array; move it with be.asarray")
    if isinstance(x, (list, tuple)):
        raise DeviceMixError("a host list was mixed with a device array; move it with be.asarray")
    return x  # Python or numpy scalar, slice, Ellipsis, None


def _wrap(a):
    return FakeArray(a) if isinstance(a, np.ndarray) else FakeArray(np.asarray(a))


def _refuse(what):
    def method(self, *args, **kwargs):
        raise DeviceMixError(f"{what} on a device array: read it with be.to_numpy (a sync point)")

    return method


class FakeArray:
    __array_ufunc__ = None  # numpy ufuncs on a device array: refused (numpy then raises TypeError)

    def __init__(self, a: np.ndarray):
        self._a = a

    def __array_function__(self, func, types, args, kwargs):
        raise DeviceMixError(f"np.{func.__name__} was called on a device array; use be.xp or be.to_numpy")

    __array__ = _refuse("numpy conversion (__array__)")
    __float__ = _refuse("float()")
    __int__ = _refuse("int()")
    __index__ = _refuse("use as an index")
    __bool__ = _refuse("truth test")
    item = _refuse(".item()")
    tolist = _refuse(".tolist()")
    __iter__ = _refuse("iteration")

    shape = property(lambda self: self._a.shape)
    ndim = property(lambda self: self._a.ndim)
    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    T = property(lambda self: FakeArray(self._a.T))

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"FakeArray(shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key):
        if any(isinstance(k, FakeArray) for k in (key if isinstance(key, tuple) else (key,))):
            _launch()  # a gather; a slice is a view
        return _wrap(self._a[_unwrap_key(key)])

    def __setitem__(self, key, value):
        _launch()
        self._a[_unwrap_key(key)] = _unwrap(value)

    def reshape(self, *shape):
        return FakeArray(self._a.reshape(*shape))

    def copy(self):
        _launch()
        return FakeArray(self._a.copy())

    def astype(self, dtype):
        _launch()
        return FakeArray(self._a.astype(dtype))

    def take(self, indices, axis=None):
        _launch()
        return FakeArray(self._a.take(_unwrap(indices), axis=axis))

    def sum(self, axis=None, out=None, keepdims=False):
        _launch()
        if out is not None:
            self._a.sum(axis=axis, out=_unwrap(out), keepdims=keepdims)
            return out
        return _wrap(self._a.sum(axis=axis, keepdims=keepdims))

    def max(self, axis=None, keepdims=False):
        _launch()
        return _wrap(self._a.max(axis=axis, keepdims=keepdims))

    def min(self, axis=None, keepdims=False):
        return _wrap(self._a.min(axis=axis, keepdims=keepdims))


def _unwrap_key(key):
    if isinstance(key, tuple):
        return tuple(_unwrap(k) for k in key)
    return _unwrap(key)


def _binary(op):
    def forward(self, other):
        _launch()
        return _wrap(op(self._a, _unwrap(other)))

    def reverse(self, other):
        _launch()
        return _wrap(op(_unwrap(other), self._a))

    def inplace(self, other):
        _launch()
        self._a[...] = op(self._a, _unwrap(other))
        return self

    return forward, reverse, inplace


for _name, _op in {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "truediv": np.true_divide,
    "matmul": np.matmul,
    "pow": np.power,
    "xor": np.bitwise_xor,
    "and": np.bitwise_and,
    "rshift": np.right_shift,
    "lshift": np.left_shift,
}.items():
    _f, _r, _i = _binary(_op)
    setattr(FakeArray, f"__{_name}__", _f)
    setattr(FakeArray, f"__r{_name}__", _r)
    setattr(FakeArray, f"__i{_name}__", _i)
for _name, _op in {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater}.items():
    setattr(FakeArray, f"__{_name}__", _binary(_op)[0])
FakeArray.__ge__ = _binary(np.greater_equal)[0]
FakeArray.__neg__ = lambda self: (_launch(), FakeArray(-self._a))[1]
FakeArray.__hash__ = None


# ---------------------------------------------------------------- the array module


def _asarray(a, dtype=None):
    if isinstance(a, FakeArray):  # already on the device: no transfer
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    counters.to_device += 1
    return FakeArray(np.array(a, dtype=dtype))  # a copy, as a real transfer makes


def _asnumpy(a):
    if not isinstance(a, FakeArray):
        raise DeviceMixError("asnumpy of something that is not a device array")
    counters.to_host += 1
    return a._a.copy()


def _unary(f):
    return lambda x, out=None: _wrap(f(_unwrap(x))) if out is None else (f(_unwrap(x), out=_unwrap(out)), out)[1]


def _matmul(a, b, out=None):
    if out is None:
        return _wrap(np.matmul(_unwrap(a), _unwrap(b)))
    np.matmul(_unwrap(a), _unwrap(b), out=_unwrap(out))
    return out


def _binary_out(f):
    def op(a, b, out=None):
        if out is None:
            return _wrap(f(_unwrap(a), _unwrap(b)))
        f(_unwrap(a), _unwrap(b), out=_unwrap(out))
        return out

    return op


def _need_device(*arrays):
    for a in arrays:
        if not isinstance(a, FakeArray):
            raise DeviceMixError(f"expected device arrays, got {type(a).__name__}")


def _vdot(a, b):
    _need_device(a, b)
    return _wrap(np.vdot(a._a, b._a))


def _gemm(a, b, c, alpha, beta):
    """C ← αAB + βC: on a GPU one cuBLAS call; here the CPU backend's, on the arrays underneath."""
    _need_device(a, b, c)
    from gpumlp.backends.cpu import CPU

    CPU.gemm(a._a, b._a, c._a, alpha, beta)
    return c


def _axpby(alpha, x, beta, y):
    """y ← αx + βy: on a GPU elementwise kernels; here the CPU backend's, on the arrays underneath."""
    _need_device(x, y)
    from gpumlp.backends.cpu import CPU

    CPU.axpby(alpha, x._a, beta, y._a)
    return y


def _synchronize():
    counters.syncs += 1


xp = types.ModuleType("fake_xp")
xp.__dict__.update(
    asarray=_asarray,
    asnumpy=_asnumpy,
    synchronize=_synchronize,
    tanh=_unary(np.tanh),
    exp=_unary(np.exp),
    sqrt=_unary(np.sqrt),
    log=_unary(np.log),
    maximum=_binary_out(np.maximum),
    minimum=lambda a, b: _wrap(np.minimum(_unwrap(a), _unwrap(b))),
    multiply=_binary_out(np.multiply),
    divide=_binary_out(np.divide),
    add=_binary_out(np.add),
    subtract=_binary_out(np.subtract),
    greater=_binary_out(np.greater),
    matmul=_matmul,
    gemm=_gemm,
    axpby=_axpby,
    vdot=_vdot,
    stack=lambda arrays: _wrap(np.stack([_unwrap(_need_device(a) or a) for a in arrays])),
    argmax=lambda a, axis=None: (_need_device(a), _wrap(np.argmax(a._a, axis=axis)))[1],
    eye=lambda n, dtype=None: FakeArray(np.eye(n, dtype=dtype)),
    zeros=lambda shape, dtype=None: FakeArray(np.zeros(shape, dtype=dtype)),
    arange=lambda *args, dtype=None: FakeArray(np.arange(*args, dtype=dtype)),
    zeros_like=lambda a: (_need_device(a), FakeArray(np.zeros_like(a._a)))[1],
    float32=np.float32,
    float64=np.float64,
    int64=np.int64,
    int32=np.int32,
    uint32=np.uint32,
    finfo=np.finfo,  # cupy.finfo is numpy's: a host record of the type, no launch
)


@dataclass(frozen=True)
class FakeBackend(Backend):
    """The strict fake device as a backend: numpy's arithmetic under a device's rules."""

    fused: bool = True  # each fused operation one launch, as on CupyBackend; else the reference's operations

    def gemm(self, A, B, C, alpha: float = 1.0, beta: float = 0.0):
        return self.xp.gemm(A, B, C, alpha, beta)  # one cuBLAS call on a GPU

    def axpby(self, alpha, x, beta, y):
        if not self.fused:
            return super().axpby(alpha, x, beta, y)  # xp operations, as CuPy ran it before its kernel
        return self.xp.axpby(alpha, x, beta, y)

    def activate(self):
        return _scope()

    def synchronize(self) -> None:
        self.xp.synchronize()

    def bias_act(self, Z, b, act):
        return self._as_launches(1, super().bias_act, Z, b, act)

    def act_grad_mul(self, dA, H, act, M=None):
        return self._as_launches(1, super().act_grad_mul, dA, H, act, M)

    def loss_delta(self, Z, b, Y, loss, n, losses):
        return self._as_launches(1, super().loss_delta, Z, b, Y, loss, n, losses)  # the row kernel, into losses

    def augment_draw(self, aug, b, coords):
        kinds = aug.cfg.kinds
        launches = ("shift" in kinds or "affine" in kinds) + 4 * ("elastic" in kinds)  # kernels, 2 products, −E
        return self._as_launches(launches, super().augment_draw, aug, b, coords)

    def warp_images(self, aug, X, w):
        return self._as_launches(1, super().warp_images, aug, X, w)

    def max_norm_(self, W, c):
        return self._as_launches(1, super().max_norm_, W, c)

    def dropout_mask(self, rng, shape, p, coords, dtype):
        return self._as_launches(1, super().dropout_mask, rng, shape, p, coords, dtype)

    def optimizer_step(self, opt, lr):
        return self._as_launches(len(opt.decay_spans()), super().optimizer_step, opt, lr)  # one per span

    def _as_launches(self, launches: int, f, *args):
        """``f`` computed by the reference on the fake arrays (still strict), counted as CupyBackend's kernels."""
        if not self.fused:
            return f(*args)
        for _ in range(launches):
            _launch()
        counters.paused += 1
        try:
            return f(*args)
        finally:
            counters.paused -= 1


@contextlib.contextmanager
def _scope():
    counters.scope += 1
    try:
        yield
    finally:
        counters.scope -= 1


FAKE = FakeBackend("fake", xp)
FAKE_UNFUSED = FakeBackend("fake", xp, fused=False)


# ---------------------------------------------------------------- added for gpumlp.training.augment


def _clip(a, lo, hi, out=None):
    _need_device(a)
    if out is None:
        return _wrap(np.clip(a._a, _unwrap(lo), _unwrap(hi)))
    np.clip(a._a, _unwrap(lo), _unwrap(hi), out=_unwrap(out))
    return out


def _empty(shape, dtype=None):
    """Uninitialised, as on a GPU: floats are NaN here, so reading an unwritten element shows."""
    a = np.empty(shape, dtype=dtype)
    if a.dtype.kind == "f":
        a.fill(np.nan)
    return FakeArray(a)


def _concatenate(arrays):
    for a in arrays:
        _need_device(a)
    return FakeArray(np.concatenate([a._a for a in arrays]))


xp.__dict__.update(floor=_unary(np.floor), cos=_unary(np.cos), sin=_unary(np.sin), clip=_clip, empty=_empty)
xp.__dict__.update(concatenate=_concatenate, empty_like=lambda a: (_need_device(a), _empty(a.shape, a.dtype))[1])


def _counted(f):
    def op(*args, **kwargs):
        _launch()
        return f(*args, **kwargs)

    op.__name__ = f.__name__
    return op


# Every function of the module is one launch (asarray and asnumpy: a copy between host and device).
for _name, _f in list(xp.__dict__.items()):
    if callable(_f) and not isinstance(_f, type) and not _name.startswith("_") and _name != "synchronize":
        setattr(xp, _name, _counted(_f))
