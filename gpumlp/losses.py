"""Output layers and their losses: one record each, with everything every part of gpumlp needs.

A record holds the output function and the loss with its delta for the readable array path (numpy,
or CuPy without fused kernels), the same as one fused CUDA kernel (``gpumlp.backends.cuda``), the
ONNX head an export ends with (``gpumlp.formats.export``) and what the outputs mean: how
``gpumlp predict``, ``serve``, ``test`` and the ONNX graph turn them into confidences, and whether
the Rust project's and Nielsen's formats (sigmoid outputs) can hold the network. Adding a loss is
one record here, registered with ``register`` (and its tests).

Each ``total_and_delta`` returns ``(total, delta)``: the loss *summed* over the batch (a device
scalar) and d total / d Z_L (n, 10); computing both together shares their common term, and
dividing by n gives the mean loss and its gradient. numpy is not imported here: ``xp`` is passed
in, and ``gpumlp train --help`` lists these names without waiting for numpy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from gpumlp.activations import sigmoid, sigmoid_grad
from gpumlp.records import Registry

# ---------------------------------------------------------------- numpy: forward, and beside it backward


def logsumexp(xp, Z):
    M = Z.max(axis=1, keepdims=True)  # (n, 1) shift so exp never overflows
    return M[:, 0] + xp.log(xp.exp(Z - M).sum(axis=1))  # (n,)


def softmax(xp, Z):
    return xp.exp(Z - logsumexp(xp, Z)[:, None])  # (n, 10), rows sum to 1


def mse(xp, Z, A, Y):
    D = xp.subtract(A, Y)  # (n, 10) with A = σ(Z)
    total = 0.5 * xp.vdot(D, D)  # Σ ½‖a − y‖²
    G = sigmoid_grad(xp, A)
    return total, xp.multiply(G, D, out=G)  # (n, 10) d total / dz = (a − y) σ'(z)


def cross_entropy(xp, Z, A, Y):
    total = logsumexp(xp, Z).sum() - xp.vdot(Z, Y)  # Σ −log softmax(z)_y, with A = softmax(Z)
    return total, A - Y  # (n, 10) softmax and cross-entropy together: a − y


def share_of_sum(xp, A):
    """Outputs (n, 10) → confidences (n, 10), each row divided by its sum so it adds up to 1 (for
    sigmoids a ranking, not a calibrated law; for a softmax the same numbers, renormalised)."""
    return A / xp.maximum(A.sum(axis=1, keepdims=True), xp.finfo(A.dtype).tiny)


# ---------------------------------------------------------------- "not sure": what the confidences say
# A network trained on ten classes gives one of them to anything, a letter or a smiley too. Its
# answer is "not sure" when the top confidence falls below a floor chosen on the network's own
# validation images: the level that NOT_SURE_FRACTION of them (real members of its classes) fall
# below, recorded in the checkpoint when ``gpumlp train`` saves it. A file saved without one (by
# ``gpumlp.save``, or before this rule) gets DEFAULT_FLOOR.
NOT_SURE_FRACTION = 0.01  # of the validation images: what share of real class members may be "not sure"
DEFAULT_FLOOR = 0.5  # a network's floor where its file has none: the top class has under half


def top_confidence(xp, C):
    """Confidences (n, 10), rows summing to 1 → (n,) the top one: how sure the answer is."""
    return C.max(axis=1)


def floor_of(certainty, fraction: float = NOT_SURE_FRACTION) -> float:
    """The floor: the value that ``fraction`` of ``certainty`` (host, (n,) over validation images)
    falls below; ``DEFAULT_FLOOR`` for no images."""
    values = sorted(float(v) for v in certainty)
    return values[int(fraction * len(values))] if values else DEFAULT_FLOOR


# ---------------------------------------------------------------- CUDA: the same in one fused kernel
# One thread per row of k classes: adds the bias, applies the output function, writes
# delta = d(mean loss)/dZ (n, k) and *adds* the row's loss into ``row``, the row's place in the
# epoch's accumulator (summed once an epoch). Z (n, k), Y (n, k), delta (n, k) C-contiguous. Every
# array a kernel writes is an output: CuPy declares inputs, raw ones too, const.
KERNEL_PARAMS = "raw T z, raw T bias, raw T y, int32 k, T inv_n"
KERNEL_OUT = "T row, raw T delta"

MSE_KERNEL = """
    T s = 0;
    for (int j = 0; j < k; ++j) {
        const ptrdiff_t o = (ptrdiff_t)i * k + j;
        const T a = T(0.5) * tanh(T(0.5) * (z[o] + bias[j])) + T(0.5);  // sigmoid, no overflow
        const T d = a - y[o];
        s += T(0.5) * d * d;                        // ½‖a − y‖²
        delta[o] = d * (a * (T(1) - a)) * inv_n;    // (a − y) σ'(z) / n
    }
    row += s;
    """


def softmax_kernel(target: str) -> str:
    """The body of a softmax loss's kernel, Σ −t·log softmax(z) against the target ``t``, a CUDA
    expression of the one-hot ``y[r + j]`` (and ``k``): one pass for the shifted log Σ exp z, one
    for the loss and delta (n, k)."""
    return """
    const ptrdiff_t r = (ptrdiff_t)i * k;
    T m = z[r] + bias[0];
    for (int j = 1; j < k; ++j) { const T v = z[r + j] + bias[j]; m = v > m ? v : m; }
    T s = 0;
    for (int j = 0; j < k; ++j) s += exp(z[r + j] + bias[j] - m);
    const T lse = m + log(s);                       // log Σ exp z, shifted so exp never overflows
    T zt = 0;
    for (int j = 0; j < k; ++j) {
        const T v = z[r + j] + bias[j];
        const T t = TARGET;
        zt += v * t;
        delta[r + j] = (exp(v - lse) - t) * inv_n;  // (softmax(z) − t) / n
    }
    row += lse - zt;                                // −t·log softmax(z), as Σt = 1
    """.replace("TARGET", target)


CE_KERNEL = softmax_kernel("y[r + j]")  # t = y: −log softmax(z)_y


# ---------------------------------------------------------------- ONNX: the head after the last Gemm
# ``head(helper, numpy_helper, Z, out) -> (nodes, initializers)``: the graph from the output
# pre-activation named Z to the confidences named out, what ``confidences`` computes.


def softmax_head(helper, numpy_helper, Z: str, out: str) -> tuple[list, list]:
    return [helper.make_node("Softmax", [Z], [out], axis=-1, name="softmax")], []


def sigmoid_share_head(helper, numpy_helper, Z: str, out: str) -> tuple[list, list]:
    import numpy as np

    nodes = [
        helper.make_node("Sigmoid", [Z], ["sigmoids"], name="sigmoid"),
        helper.make_node("ReduceSum", ["sigmoids", "class_axis"], ["sigmoid_sum"], keepdims=1, name="sum"),
        helper.make_node("Div", ["sigmoids", "sigmoid_sum"], [out], name="normalise"),
    ]
    return nodes, [numpy_helper.from_array(np.array([1], dtype=np.int64), "class_axis")]


# ---------------------------------------------------------------- the record


@dataclass(frozen=True)
class Loss:
    name: str  # what --loss, MLP(loss=…) and a checkpoint's metadata call it
    help: str  # its part of `gpumlp train --loss`'s help
    output: Callable  # (xp, Z_L) -> A_L (n, 10)
    total_and_delta: Callable  # (xp, Z_L, A_L, Y) -> (summed loss, d total / d Z_L (n, 10))
    cuda_body: str  # the fused kernel's body, of KERNEL_PARAMS and KERNEL_OUT (one thread per row)
    onnx_head: Callable | None  # (helper, numpy_helper, Z, out) -> (nodes, initializers); None: no export
    confidence_name: str  # what `predict`, `serve`, `test` and the ONNX graph report: "softmax"
    probabilities: bool  # the outputs are already a probability law over the classes
    sigmoid_outputs: bool  # each output an independent sigmoid (Rust/Nielsen formats hold only these)
    confidences: Callable = share_of_sum  # (xp, A_L) -> (n, 10) rows summing to 1: the confidence rule
    certainty: Callable = top_confidence  # (xp, confidences) -> (n,): below the network's floor, "not sure"

    @cached_property  # one tuple, looked up in the backend's kernel cache every step
    def cuda(self) -> tuple[str, str, str]:
        """``(in_params, out_params, body)`` for ``cupy.ElementwiseKernel``."""
        return KERNEL_PARAMS, KERNEL_OUT, self.cuda_body


LOSSES: Registry[Loss] = Registry("loss")  # register(loss) adds one; MLP, --loss and every command read it


register, unregister, registered = LOSSES.register, LOSSES.unregister, LOSSES.registered
get, choices = LOSSES.lookup, LOSSES.choices  # a record or a refusal; "mse, ce", read at call time


def help_text() -> str:
    """``"mse (sigmoid outputs, ½‖a−y‖²) or ce (softmax, cross-entropy)"``, for ``--loss``'s help."""
    return " or ".join(f"{name} ({loss.help})" for name, loss in LOSSES.items())


register(
    Loss("mse", "sigmoid outputs, ½‖a−y‖²", sigmoid, mse, MSE_KERNEL, sigmoid_share_head,
         "sigmoid outputs divided by their sum", probabilities=False, sigmoid_outputs=True)
)  # fmt: skip
register(
    Loss("ce", "softmax, cross-entropy", softmax, cross_entropy, CE_KERNEL, softmax_head,
         "softmax", probabilities=True, sigmoid_outputs=False)
)  # fmt: skip
