"""Finite differences: the independent oracle backpropagation is checked against (float64)."""

from __future__ import annotations

from gpumlp.model import MLP


def numerical_grad(model: MLP, X, y, key: str, index: tuple, h: float = 1e-5) -> float:
    """Central finite difference of the mean loss w.r.t. one parameter entry (float64)."""
    P = model.params[key]
    old = P[index]
    P[index] = old + h
    plus, _ = model.loss_and_grads(X, y)
    P[index] = old - h
    minus, _ = model.loss_and_grads(X, y)
    P[index] = old
    return (plus - minus) / (2 * h)
