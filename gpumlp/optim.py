"""Update rules. Each optimiser updates the model's parameters in place, on the device."""

from __future__ import annotations


class SGD:
    """Plain mini-batch gradient descent: ``W ← W − lr · dW`` for every parameter."""

    name = "sgd"

    def __init__(self, lr: float):
        self.lr = float(lr)

    def step(self, theta, grad) -> None:
        """Update the flat parameter vector ``theta`` (n_params,) in place from ``grad``, on the device."""
        theta -= self.lr * grad  # one operation for every W and b; no host sync
