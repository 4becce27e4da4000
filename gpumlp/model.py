"""The multilayer perceptron: parameters, and forward/backward for a mini-batch.

Notation (one mini-batch of n images, layers l = 0 … L-1):

    A0 = X                                  # (n, 784)   pixels in [0, 1]
    Z{l+1} = A{l} @ W{l} + b{l}             # (n, n_out) W{l}: (n_in, n_out), b{l}: (n_out,)
    A{l+1} = f(Z{l+1})                      # hidden layers: an activation of gpumlp.activations
    A{L}   = output(Z{L})                   # the loss record's output: gpumlp.losses

The loss is the *mean* over the batch, and every gradient is of that mean. Backward walks the
same lines upwards, each formula under the forward line it differentiates. No loop over samples:
every step is a matrix–matrix product or an element-wise operation on the whole batch.

Reductions and gathers are written as array methods (``dZ.sum(axis=0)``, ``X.take(i, axis=0)``)
rather than ``xp.sum(dZ, axis=0)``: they mean the same on numpy and CuPy, and on numpy the method
skips about 3 µs of dispatch per call, a third of a whole batch-10 training step.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from gpumlp.activations import ACTIVATIONS
from gpumlp.backends.base import Backend
from gpumlp.backends.registry import get_backend
from gpumlp.errors import ConfigError
from gpumlp.inputs import check_pixels, is_bytes
from gpumlp.losses import LOSSES

N_INPUTS, N_CLASSES = 784, 10
DTYPES = {"float32": np.float32, "float64": np.float64}
INITS = ("normal", "lecun", "he", "xavier")


# ---------------------------------------------------------------- configuration checks


# Far above any network worth training on MNIST (784-4096-4096-10 has 20.0 M parameters), far
# below what exhausts memory: with gradients, snapshots and Adam's buffers a parameter costs ~24 bytes.
MAX_PARAMS = 100_000_000
MAX_TRAIN_LAYERS = 64  # layer sizes, inputs included: gpumlp trains at most 63 weight layers


def parse_sizes(sizes: str | Sequence[int]) -> tuple[int, ...]:
    """``"784,16,16,10"``, ``"784 16 16 10"`` or a sequence of integers → a checked tuple of layer sizes."""
    if isinstance(sizes, str):
        if re.search(r"(^|,)\s*(,|$)", sizes.strip()):  # "784,,10" must not read as 784,10
            raise ConfigError(f"--layers {sizes!r}: an empty size between commas; e.g. 784,16,16,10")
        text, sizes = sizes, []
        for token in re.split(r"[,\s]+", text.strip()):
            if token and not re.fullmatch(r"[+-]?\d{1,12}", token):
                raise ConfigError(
                    f"--layers {text!r}: {token!r} is not a layer size; give whole numbers separated by "
                    "commas or spaces, e.g. 784,16,16,10"
                )
            if token:
                sizes.append(int(token))
    try:
        items = list(sizes)
    except TypeError:
        raise ConfigError(f"layer sizes must be a list of integers, e.g. 784,16,16,10 (got {sizes!r})") from None
    bad = [s for s in items if isinstance(s, bool) or not isinstance(s, (int, np.integer))]
    if bad:
        raise ConfigError(f"layer sizes must be whole numbers, e.g. 784,16,16,10 (got {bad[0]!r})")
    sizes = tuple(int(s) for s in items)
    if len(sizes) < 2:
        raise ConfigError(f"--layers needs at least an input and an output size, e.g. 784,16,16,10 (got {sizes})")
    if any(s <= 0 for s in sizes):
        raise ConfigError(f"--layers sizes must be positive integers (got {','.join(map(str, sizes))})")
    if sizes[0] != N_INPUTS or sizes[-1] != N_CLASSES:
        raise ConfigError(
            f"--layers must start with {N_INPUTS} (28×28 pixels) and end with {N_CLASSES} "
            f"(digits), e.g. 784,16,16,10 (got {','.join(map(str, sizes))})"
        )
    n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    if n_params > MAX_PARAMS or len(sizes) > MAX_TRAIN_LAYERS:
        raise ConfigError(
            f"--layers {','.join(map(str, sizes))} has {n_params:,} parameters in {len(sizes) - 1} layers; "
            f"gpumlp trains at most {MAX_PARAMS:,} parameters and {MAX_TRAIN_LAYERS - 1} layers"
        )
    return sizes


def check_labels(be: Backend, y, n: int, name: str = "y"):
    """Refuse labels that are not ``n`` integers in 0 … 9 (one read of min and max, a sync point on
    a device); returns ``y``, a host array if it came as a list. Check before ``one_hot``: on CuPy,
    ``take`` wraps an out-of-range label into another class."""
    if not hasattr(y, "dtype"):
        y = np.asarray(y)
    if np.dtype(y.dtype).kind not in "iu":
        raise ConfigError(f"{name} must be integer digit labels 0-9, got an array of {y.dtype}")
    if y.shape != (n,):
        raise ConfigError(f"{name} has shape {tuple(y.shape)}: one label per image needs ({n},)")
    if n:
        if isinstance(y, np.ndarray):
            lo, hi = y.min(), y.max()
        else:  # on the device: one transfer of two numbers
            lo, hi = be.to_numpy(be.xp.stack([y.min(), y.max()]))
        if lo < 0 or hi >= N_CLASSES:
            raise ConfigError(f"{name} holds label {lo if lo < 0 else hi}; labels are the digits 0-{N_CLASSES - 1}")
    return y


def _choice(value: str, options, what: str) -> str:
    if value not in options:
        raise ConfigError(f"unknown {what} {value!r}: choose one of {', '.join(options)}")
    return value


def init_params(sizes, init: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Initial parameters drawn on the host in float64 (same seed → same start on every device)."""
    params = {}
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        std = {
            "normal": 1.0,  # N(0, 1), the Rust project's and Nielsen's choice
            "lecun": np.sqrt(1.0 / n_in),
            "he": np.sqrt(2.0 / n_in),
            "xavier": np.sqrt(2.0 / (n_in + n_out)),  # Glorot normal
        }[init]
        params[f"W{l}"] = std * rng.standard_normal((n_in, n_out))  # (n_in, n_out)
        if init == "normal":
            params[f"b{l}"] = rng.standard_normal(n_out)  # (n_out,)
        else:
            params[f"b{l}"] = np.zeros(n_out)  # (n_out,)
    return params


def param_shapes(sizes) -> dict[str, tuple[int, ...]]:
    """``{"W0": (784, 16), "b0": (16,), …}`` in storage order."""
    shapes = {}
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes[f"W{l}"], shapes[f"b{l}"] = (n_in, n_out), (n_out,)
    return shapes


# Each parameter starts a multiple of ALIGN elements into the flat vector (256 bytes in float32,
# 512 in float64), so every view is as aligned as its buffer: cuBLAS takes slower paths for
# operands that are only 8-byte aligned. The gaps hold zeros; checkpoints store the packed values.
ALIGN = 64


def param_layout(sizes) -> dict[str, tuple[int, tuple[int, ...]]]:
    """``{"W0": (offset, (784, 16)), "b0": (12544, (16,)), …}``: where each parameter lies in the
    flat vector, in ``param_shapes`` order, each offset a multiple of ``ALIGN``."""
    layout, offset = {}, 0
    for k, shape in param_shapes(sizes).items():
        layout[k] = (offset, shape)
        offset += -(-int(np.prod(shape)) // ALIGN) * ALIGN
    return layout


def flat_size(sizes) -> int:
    """Length of the flat vector: the parameters and the gaps between them."""
    offset, shape = list(param_layout(sizes).values())[-1]
    return offset + int(np.prod(shape))


def sizes_of(params: dict) -> tuple[int, ...]:
    n = len(params) // 2
    return (params["W0"].shape[0], *(params[f"W{l}"].shape[1] for l in range(n)))


def flatten(params: dict) -> np.ndarray:
    """Host parameter dict → one flat host vector laid out by ``param_layout`` (zeros in the gaps)."""
    sizes = sizes_of(params)
    flat = np.zeros(flat_size(sizes), dtype=np.result_type(*params.values()))
    for k, (offset, shape) in param_layout(sizes).items():
        flat[offset : offset + int(np.prod(shape))] = np.ravel(params[k])
    return flat


def pack(flat, sizes, xp=np):
    """Flat vector (``flat_size``,) → the parameters back to back (n_params,), the layout of a
    checkpoint's state vectors; on ``flat``'s device."""
    parts = [flat[o : o + int(np.prod(shape))] for o, shape in param_layout(sizes).values()]
    return xp.concatenate(parts)


def unpack_into(be, dst, packed, sizes) -> None:
    """Parameters back to back (n_params,), host or device → their places in the device flat
    vector ``dst`` (``flat_size``,), whose gaps keep their zeros. Once per resume: one copy each."""
    src, start = be.asarray(packed, dtype=dst.dtype), 0
    for offset, shape in param_layout(sizes).values():
        size = int(np.prod(shape))
        dst[offset : offset + size] = src[start : start + size]
        start += size


def unflatten(flat, sizes, prefix: str = "") -> dict:
    """Flat (``flat_size``,) array → dict of *views* ``{prefix+"W0": (784, 16), …}`` on its device."""
    return {
        prefix + k: flat[o : o + int(np.prod(shape))].reshape(shape) for k, (o, shape) in param_layout(sizes).items()
    }


# ---------------------------------------------------------------- the network


class MLP:
    """A fully connected network whose parameters live on one device.

    ``params`` maps ``W0, b0, W1, b1, …`` to device arrays: ``W{l}`` is ``(n_in, n_out)``,
    ``b{l}`` is ``(n_out,)``. Inputs may be host numpy arrays or arrays already on the device.
    Built with ``params=`` (host arrays of those shapes, as a checkpoint reader gives them), the
    network starts from them instead of drawing initial weights.
    """

    def __init__(
        self,
        sizes: str | Sequence[int] = (784, 16, 16, 10),
        activation: str = "sigmoid",
        loss: str = "mse",
        init: str | None = None,
        seed: int = 0,
        device: str | Backend = "cpu",
        dtype: str = "float32",
        input_divisor: float = 255.0,
        params: dict | None = None,
    ):
        self.sizes = parse_sizes(sizes)
        self.activation = _choice(activation, tuple(ACTIVATIONS), "activation")
        self.loss = _choice(loss, tuple(LOSSES), "loss")
        self.init = _choice(init or ACTIVATIONS[activation].default_init, INITS, "init")
        self.dtype = _choice(str(np.dtype(dtype)) if dtype in DTYPES.values() else dtype, tuple(DTYPES), "dtype")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be a whole number 0 or more (got {seed!r})")
        self.seed = int(seed)
        # The network sees pixel / input_divisor. gpumlp trains on pixel / 255 (load_mnist's
        # scaling); networks imported from the Rust project were trained on pixel / 256.
        self.input_divisor = float(input_divisor)
        self.be = get_backend(device)
        self._act = ACTIVATIONS[self.activation]
        self._loss = LOSSES[self.loss]
        # Host parameters: ``params`` (a loaded network's, shapes checked by its reader), else drawn.
        host = params if params is not None else init_params(self.sizes, self.init, np.random.default_rng(self.seed))
        with self.be.activate():  # on cuda:N, allocate there
            # All parameters live in one flat device buffer; ``params`` holds views into it, so an
            # optimiser updates everything with one array operation instead of one per parameter.
            self.theta = self.be.asarray(flatten(host), dtype=DTYPES[self.dtype])  # (flat_size,)
            self.params = unflatten(self.theta, self.sizes)
            # Gradients get the same layout, written in place by ``backward`` (no per-step allocation).
            self.grad = self.be.xp.zeros_like(self.theta)  # (flat_size,)
            self.grads = unflatten(self.grad, self.sizes, prefix="d")
        # The same views as per-layer lists, for the hot loop (no key formatting per batch).
        L = range(self.n_layers)
        self._W, self._b = [self.params[f"W{l}"] for l in L], [self.params[f"b{l}"] for l in L]
        self._dW, self._db = [self.grads[f"dW{l}"] for l in L], [self.grads[f"db{l}"] for l in L]
        # Every product of forward and backward: xp.matmul, or one that hands the big ones to MKL.
        self._matmul = self.be.matmul_function()
        self._forward_mm = [self.be.layer_matmul_function(a, b) for a, b in zip(self.sizes[:-1], self.sizes[1:])]
        self._input_grad = [self.be.input_grad_function(a, b) for a, b in zip(self.sizes[:-1], self.sizes[1:])]

    @property
    def n_layers(self) -> int:
        """Number of weight layers (len(sizes) - 1)."""
        return len(self.sizes) - 1

    @property
    def n_params(self) -> int:
        return sum(n_in * n_out + n_out for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]))

    def __repr__(self) -> str:
        arch = "-".join(map(str, self.sizes))
        return f"MLP({arch}, {self.activation}, {self.loss}, {self.dtype}, device={self.be.name!r})"

    # -- moving data in

    def inputs(self, X):
        """Images (n, 784) scaled as load_mnist does (pixel / 255), or raw uint8 pixels (read_idx's),
        host or device → the network's input: an array of the model's dtype on the model's device,
        pixel / input_divisor. Ranges are checked once per call by ``gpumlp.inputs.check_pixels``."""
        raw, X = is_bytes(X), self.be.asarray(X, dtype=DTYPES[self.dtype])
        if X.ndim != 2 or X.shape[1] != self.sizes[0]:
            raise ConfigError(f"expected images of shape (n, {self.sizes[0]}), got {tuple(X.shape)}")
        if raw or self.input_divisor != 255.0:
            X = (
                X / DTYPES[self.dtype](self.input_divisor)
                if raw
                else X * DTYPES[self.dtype](255.0 / self.input_divisor)
            )
        return X

    def one_hot(self, y):
        """Integer labels (n,) → one-hot targets (n, 10) on the device. Built by comparison, not
        ``take``: CuPy's take wraps an out-of-range index round to another class, where this gives
        a row of zeros on every device (labels are checked where they enter, in ``fit``)."""
        xp, y = self.be.xp, self.be.asarray(y)
        classes = xp.arange(self.sizes[-1], dtype=y.dtype)  # (10,)
        return (y.reshape(-1, 1) == classes).astype(DTYPES[self.dtype])  # (n, 10)

    # -- the math

    def forward(self, X) -> tuple[list, object]:
        """``([A0 = X, A1, …, AL], Z_L)``: each layer's activations (n, n_l) and the output
        pre-activation (n, 10), all on the device. X must already be on the device."""
        As, _, Z = self._forward(X)
        return As, Z

    def _forward(self, X, masks=None, train=False) -> tuple[list, list, object]:
        """``(As, Hs, Z_L)``. With ``masks`` (inverted dropout, training only: one (n, n_l)
        multiplier per hidden layer, 0 where a unit is dropped and 1/(1−p) where kept), Hs holds
        each hidden layer's output f(Z) and As what the next layer sees, H ⊙ M; without, Hs is As.
        With ``train``, the output layer stops at A_L−1 W_L−1: ``Backend.loss_delta`` adds its bias."""
        mm, xp, W, b, be = self._forward_mm, self.be.xp, self._W, self._b, self.be
        As = [X]  # A0: (n, 784)
        Hs = As if masks is None else [X]
        for l in range(self.n_layers - 1):
            Z = mm[l](As[l], W[l])  # (n, n_{l+1}) A{l} @ W{l}
            H = be.bias_act(Z, b[l], self._act)  # A{l+1} = f(A{l} W{l} + b{l}), in Z's buffer
            if masks is not None:
                Hs.append(H)
                H = H * masks[l]  # (n, n_{l+1}) A{l+1} = H ⊙ M: E[A] = H, as without dropout
            As.append(H)
        Z = mm[-1](As[-1], W[-1])  # (n, 10)
        if train:
            return As, Hs, Z
        xp.add(Z, b[-1], out=Z)  # (n, 10) output pre-activation Z_L
        As.append(self._loss.output(xp, Z))  # (n, 10) the loss's output: sigmoid, softmax, …
        return As, Hs, Z

    def backward(self, As: list, dZ, masks=None, Hs=None, fused=None) -> dict:
        """Gradients of the mean loss, ``{dW0, db0, …}`` shaped like ``params``, on the device.

        ``As`` is ``forward``'s list for the batch and ``dZ`` (n, 10) the gradient of the mean loss
        w.r.t. the output pre-activation Z_L (with dropout, also ``_forward``'s ``masks`` and ``Hs``).
        The result is ``self.grads``: views into the flat buffer ``self.grad``, overwritten by the
        next call (copy them to keep them).

        ``fused`` ({layer: (α, β)}, from ``Optimizer.fused_update``) hands the optimiser's step of
        those weight matrices to this pass: W{l} ← β·W{l} + α·A{l}ᵀ dZ, one BLAS product, so their
        dW is never written (it keeps its old value) and their W changes here, after its last use.
        """
        mm, W, Hs, fused, be = self._matmul, self._W, As if Hs is None else Hs, fused or {}, self.be
        for l in reversed(range(self.n_layers)):
            # forward:  Z{l+1} = A{l} @ W{l} + b{l}
            dA = self._input_grad[l](dZ, W[l]) if l > 0 else None  # (n, n_in) dA{l} = dZ W{l}ᵀ (input layer: none)
            if l in fused:  # SGD: W{l} ← (1 − ηλ) W{l} − η A{l}ᵀ dZ, with (α, β) = (−η, 1 − ηλ)
                self.be.gemm(As[l].T, dZ, W[l], *fused[l])
            else:
                mm(As[l].T, dZ, out=self._dW[l])  # (n_in, n_out) dW{l} = A{l}ᵀ dZ
            dZ.sum(axis=0, out=self._db[l])  # (n_out,)     db{l} = Σ_batch dZ
            if l > 0:
                # forward:  H{l} = f(Z{l}), and with dropout A{l} = H{l} ⊙ M{l}
                M = masks[l - 1] if masks is not None else None
                dZ = be.act_grad_mul(dA, Hs[l], self._act, M)  # (n, n_in) dZ{l} = dA{l} (⊙ M{l}) ⊙ f'(Z{l})
        return self.grads

    def batch_loss_and_grads(self, X, Y, masks=None, fused=None, losses=None):
        """Fills ``self.grads`` with the gradients of the *mean* loss of a device batch X (n, 784),
        Y one-hot (n, 10), and adds its summed loss into ``losses``: a device vector of ≥ n entries
        whose sum is what counts (the training loop's accumulator, read once an epoch; None: a fresh
        one). Returns ``losses``; no sync. ``masks``: dropout's (see ``dropout_masks``), or None;
        ``fused``: see ``backward``."""
        if losses is None:
            losses = self.be.xp.zeros((X.shape[0],), dtype=DTYPES[self.dtype])  # (n,)
        As, Hs, Z = self._forward(X, masks, train=True)
        # The output bias, activation, loss and its gradient: d mean / d Z_L = delta / n
        delta = self.be.loss_delta(Z, self._b[-1], Y, self._loss, X.shape[0], losses)
        self.backward(As, delta, masks, Hs, fused)
        return losses

    def dropout_masks(self, rng, p: float, n: int, *coords: int) -> list:
        """Inverted-dropout multipliers for a batch of n: per hidden layer (n, n_l) on the device,
        0 with probability p and 1/(1−p) otherwise, from the device generator ``rng``
        (``gpumlp.backends.rng.DeviceRNG``) at ``coords`` (epoch, batch), so every device draws the same."""
        dtype = DTYPES[self.dtype]
        return [self.be.dropout_mask(rng, (n, size), p, (*coords, l), dtype) for l, size in enumerate(self.sizes[1:-1])]

    def loss_sum(self, X, Y):
        """``(summed loss, outputs A_L)`` of a device batch X (n, 784), Y one-hot (n, 10); no sync."""
        As, Z = self.forward(X)
        total, _ = self._loss.total_and_delta(self.be.xp, Z, As[-1], Y)
        return total, As[-1]

    # -- the public API

    def loss_and_grads(self, X, y) -> tuple[float, dict]:
        """Mean loss (a Python float, a sync point) and its gradients for images X (n, 784), labels y (n,)."""
        check_pixels(self.be, {"X": X})
        X = self.inputs(X)
        if not X.shape[0]:
            raise ConfigError("loss_and_grads needs at least one image (got 0): the mean loss of none is undefined")
        total = self.batch_loss_and_grads(X, self.one_hot(check_labels(self.be, y, X.shape[0]))).sum()
        grads = {k: v.copy() for k, v in self.grads.items()}
        return float(self.be.to_numpy(total)) / X.shape[0], grads

    def predict_proba(self, X):
        """Output activations (n, 10) on the device: the loss record's output (``gpumlp.losses``), e.g.
        softmax probabilities for ce, sigmoids for mse."""
        check_pixels(self.be, {"X": X})  # one reduction (a sync point on a device)
        return self.forward(self.inputs(X))[0][-1]

    def predict(self, X):
        """Predicted digits (n,) on the device: the index of the strongest output."""
        return self.be.xp.argmax(self.predict_proba(X), axis=1)
