"""Hidden-layer activations: one record each, with everything every part of gpumlp needs.

A record holds the function and its derivative for the readable array path (numpy, or CuPy
without fused kernels), the same two as CUDA C expressions for the fused kernels
(``gpumlp.backends.kernels``), the ONNX operator of an export (``gpumlp.formats.export``) and the initialisation
that suits it. Adding an activation is one record, registered with ``register`` (and its tests).

Each derivative is written in terms of the activation's *output* A = f(Z), which the forward
pass keeps anyway, so backward needs no stored Z. The forward functions may overwrite Z, a
temporary of the forward pass that no one else sees. numpy is not imported here: ``xp`` is
passed in, and ``gpumlp train --help`` lists these names without waiting for numpy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gpumlp.records import Registry
from gpumlp.scalars import const


def sigmoid(xp, Z):
    # 1 / (1 + e^-z) written as ½ tanh(z/2) + ½: the same function, with no overflow for any z.
    half = const(xp, Z.dtype, 0.5)
    T = xp.multiply(Z, half)  # z/2, a new array: the caller keeps Z
    xp.tanh(T, out=T)
    xp.multiply(T, half, out=T)
    return xp.add(T, half, out=T)  # ½ tanh(z/2) + ½


def sigmoid_(xp, Z):
    # The same, overwriting Z: for a hidden layer, whose Z is a temporary nobody else sees.
    half = const(xp, Z.dtype, 0.5)
    xp.multiply(Z, half, out=Z)
    xp.tanh(Z, out=Z)
    xp.multiply(Z, half, out=Z)
    return xp.add(Z, half, out=Z)


def sigmoid_grad(xp, A):
    G = xp.subtract(const(xp, A.dtype, 1), A)  # 1 − σ(z)
    return xp.multiply(G, A, out=G)  # σ'(z) = σ(z) (1 − σ(z))


def relu(xp, Z):
    return xp.maximum(Z, const(xp, Z.dtype, 0), out=Z)  # in place on the temporary Z, which the caller never sees


def relu_grad(xp, A):
    return xp.greater(A, const(xp, A.dtype, 0))  # 1 where z > 0, 0 elsewhere (0 at z = 0): a boolean mask


def tanh(xp, Z):
    return xp.tanh(Z, out=Z)  # in place on the temporary Z


def tanh_grad(xp, A):
    return 1 - A * A  # tanh'(z) = 1 - tanh(z)^2


@dataclass(frozen=True)
class Activation:
    f: Callable  # (xp, Z) -> A; may overwrite Z, a temporary of the forward pass
    grad: Callable  # (xp, A) -> f'(Z), from the output A = f(Z)
    default_init: str  # gpumlp.model.INITS: the initialisation whose variance suits f
    cuda_f: str  # f as a CUDA C expression of x (type T), for the fused kernels (gpumlp.backends.kernels)
    cuda_grad: str  # f' as a CUDA C expression of the output a
    onnx: str | None  # the ONNX operator computing f (gpumlp.formats.export); None: no export
    onnx_attributes: dict = field(default_factory=dict)  # the operator's attributes, e.g. {"alpha": 0.1}


ACTIVATIONS: Registry[Activation] = Registry("activation")
ACTIVATIONS.update(
    {
        "sigmoid": Activation(
            sigmoid_, sigmoid_grad, "xavier", "T(0.5) * tanh(T(0.5) * x) + T(0.5)", "a * (T(1) - a)", "Sigmoid"
        ),
        "relu": Activation(relu, relu_grad, "he", "x > T(0) ? x : T(0)", "a > T(0) ? T(1) : T(0)", "Relu"),
        "tanh": Activation(tanh, tanh_grad, "xavier", "tanh(x)", "T(1) - a * a", "Tanh"),
    }
)


def register(name: str, act: Activation) -> Activation:
    """Add ``act`` as ``name``, after which MLP, --activation, checkpoints, export and every command accept it."""
    return ACTIVATIONS.register(act, name)


def registered(name: str, act: Activation):
    """``register(name, act)`` for the duration of a ``with`` block (tests)."""
    return ACTIVATIONS.registered(act, name)


unregister, get = ACTIVATIONS.unregister, ACTIVATIONS.lookup


choices = ACTIVATIONS.choices  # "sigmoid, relu, tanh", read at call time (help texts, messages)


def default_inits() -> str:
    """``"xavier for sigmoid/tanh, he for relu"``: each record's default initialisation, for help texts."""
    by_init: dict[str, list[str]] = {}
    for name, act in ACTIVATIONS.items():
        by_init.setdefault(act.default_init, []).append(name)
    return ", ".join(f"{init} for {'/'.join(names)}" for init, names in by_init.items())
