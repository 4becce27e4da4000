"""Evaluation: the network's outputs over a whole image set, a chunk at a time, on its device.

One routine (``outputs``) runs the forward pass; accuracy, validation loss and the test report's
predictions are sums over what it yields, kept on the device and read back once (a sync point).
"""

from __future__ import annotations

from collections.abc import Iterator

from gpumlp.backends.base import on_device
from gpumlp.inputs import check_pixels
from gpumlp.losses import LOSSES, NOT_SURE_FRACTION, floor_of
from gpumlp.model import check_labels

EVAL_CHUNK = 10_000  # images per forward pass when evaluating: bounds activation memory


def outputs(model, X, y=None) -> Iterator[tuple]:
    """``(A, y_chunk, loss_total)`` per chunk of EVAL_CHUNK images, all on the model's device:
    A (chunk, 10) the output activations (softmax for ce, sigmoid for mse), y_chunk (chunk,) the
    labels and loss_total the chunk's summed loss (both None without labels). X (n, 784) and y (n,)
    may live on the host or the device; they are moved once."""
    be = model.be
    X = be.asarray(X)
    y = None if y is None else be.asarray(y)
    for start in range(0, X.shape[0], EVAL_CHUNK):
        Xc = model.inputs(X[start : start + EVAL_CHUNK, :])  # (chunk, 784)
        if y is None:
            yield model.forward(Xc)[0][-1], None, None
        else:
            yc = y[start : start + EVAL_CHUNK]  # (chunk,)
            total, A = model.loss_sum(Xc, model.one_hot(yc))
            yield A, yc, total


def evaluate(model, X, y) -> float:
    """Accuracy in [0, 1] of ``model`` on images X (n, 784) and labels y (n,), host or device
    (labels checked first: one more read of two numbers on a device)."""
    return evaluate_loss(model, X, check_labels(model.be, y, len(X)))[1]


@on_device  # on cuda:N, the chunks' work goes to GPU N
def evaluate_loss(model, X, y, checked: bool = False) -> tuple[float, float]:
    """``(mean loss, accuracy)`` of ``model`` on images X (n, 784) and labels y (n,), host or device.

    Both are summed on the device and read back together: one transfer (a sync point). The
    pixels' range is checked first (another), unless ``checked``: ``fit`` checked its own once.
    """
    be, xp = model.be, model.be.xp
    if not checked:
        check_pixels(be, {"X": X})
    loss, correct, n = xp.zeros((), dtype=xp.float64), xp.zeros((), dtype=xp.float64), 0
    for A, yc, total in outputs(model, X, y):
        loss = loss + total
        correct = correct + (xp.argmax(A, axis=1) == yc).sum()
        n += A.shape[0]
    loss_sum, n_correct = be.to_numpy(xp.stack([loss, correct]))
    return float(loss_sum) / max(n, 1), float(n_correct) / max(n, 1)


def confidence_floor(model, X_val) -> dict:
    """The network's "not sure" floor, chosen on its validation images X_val (n, 784), host or
    device: ``{"value", "fraction", "images"}`` for the checkpoint (the rule: gpumlp/losses.py)."""
    loss = LOSSES[model.loss]
    certainty = [
        model.be.to_numpy(loss.certainty(model.be.xp, loss.confidences(model.be.xp, A)))
        for A, _, _ in outputs(model, X_val)
    ]
    values = [float(v) for chunk in certainty for v in chunk]  # a sync point per chunk
    return {"value": floor_of(values), "fraction": NOT_SURE_FRACTION, "images": len(values)}
