"""Networks to and from two other from-scratch MNIST MLPs' JSON files, checked as strictly as ours.

The Rust project (serde):  {"layers": [784, 16, 16, 10], "weights": [...], "biases": [...],
                            "activation_function": {"function_type": "Sigmoid" | "ReLU"}}
Nielsen's network2.py:     {"sizes": [784, 30, 10], "weights": [...], "biases": [...],
                            "cost": "QuadraticCost" | "CrossEntropyCost"}

Both store weights[l] as (n_out, n_in), a row per neuron: the transpose of gpumlp's W{l}. Both
apply the sigmoid to every layer including the output, which is gpumlp's activation "sigmoid" with
loss "mse", and both predict the index of the largest output. Both feed pixel / 256 (the Rust
project by design, Nielsen's mnist.pkl.gz holds k/256, at most 0.99609375), gpumlp pixel / 255.
An import keeps the foreign scaling as
``input_divisor`` (bit-faithful); an export folds the ratio into W0, so the foreign forward pass on
its own inputs computes what gpumlp computes on its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from gpumlp.atomic import atomic_write
from gpumlp.errors import CheckpointError
from gpumlp.model import MLP, N_CLASSES, N_INPUTS

FORMAT, VERSION = "gpumlp-checkpoint", 1  # checkpoint.FORMAT / VERSION (not imported: checkpoint imports us)
RUST, NIELSEN = "Rust MLP JSON", "Nielsen network2 JSON"  # how messages name the formats
NAMES = {"rust": RUST, "nielsen": NIELSEN}
# What each format's file holds, for ``gpumlp info`` (nothing about how or when it was trained).
HOLDS = {
    "rust": "layers, weights, biases and activation_function",
    "nielsen": "sizes, weights, biases and cost",
}
DIVISORS = {"rust": 256.0, "nielsen": 256.0}  # each project's network input is pixel / divisor
NIELSEN_COSTS = ("QuadraticCost", "CrossEntropyCost")
MAX_LAYERS, MAX_UNITS = 1024, 1 << 20  # far above any network: 784 × 2^20 float32 weights are 3 GB


def detect(doc) -> str | None:
    """``"rust"`` or ``"nielsen"`` for a parsed JSON document in that format, else None
    (gpumlp's own checkpoints, which carry "format", and anything unrecognised)."""
    if not isinstance(doc, dict) or "format" in doc:
        return None
    rust, nielsen = "layers" in doc or "activation_function" in doc, "sizes" in doc or "cost" in doc
    return None if rust == nielsen else "rust" if rust else "nielsen"


# ---------------------------------------------------------------- strict reading


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _get(doc, key: str, name: str):
    if not isinstance(doc, dict):
        raise CheckpointError(f"{name}: expected a JSON object, got {_short(doc)}")
    if key not in doc:
        raise CheckpointError(f"{name}: missing key {key!r}")
    return doc[key]


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_sizes(doc, key: str, name: str) -> tuple[int, ...]:
    """``doc[key]``: layer sizes, integers from 784 to 10 (``10.9`` is refused, never truncated),
    at most ``MAX_LAYERS`` of them and ``MAX_UNITS`` each: bounds checked before anything is built."""
    sizes = _get(doc, key, name)
    if not isinstance(sizes, list) or not all(type(s) is int for s in sizes):
        raise CheckpointError(f"{name}: {key!r} must be a list of integers, got {_short(sizes)}")
    if len(sizes) > MAX_LAYERS or any(s > MAX_UNITS for s in sizes):
        raise CheckpointError(
            f"{name}: {key!r} declares {len(sizes)} layers of up to {max(sizes):,} units; gpumlp networks have "
            f"at most {MAX_LAYERS} layers of {MAX_UNITS:,}"
        )
    if len(sizes) < 2 or sizes[0] != N_INPUTS or sizes[-1] != N_CLASSES or min(sizes) <= 0:
        raise CheckpointError(
            f"{name}: {key!r} must be positive sizes from {N_INPUTS} to {N_CLASSES}, e.g. [784, 16, 10] "
            f"(got {_short(sizes)})"
        )
    return tuple(sizes)


def _array(value, where: str, name: str) -> np.ndarray:
    """A list of numbers, or a list of equal-length lists of numbers → a finite float64 array."""
    if not isinstance(value, list):
        raise CheckpointError(f"{name}: {where} must be a list, got {_short(value)}")
    rows, nested = [value], any(isinstance(v, list) for v in value)
    if nested:
        if not all(isinstance(v, list) for v in value):
            raise CheckpointError(f"{name}: {where} mixes lists and numbers")
        if len({len(v) for v in value}) > 1:
            raise CheckpointError(f"{name}: {where} is ragged: rows of lengths {sorted({len(v) for v in value})}")
        rows = value
    for i, row in enumerate(rows):
        if not all(map(_is_number, row)):
            j = next(j for j, x in enumerate(row) if not _is_number(x))
            at = f"{where}[{i}][{j}]" if nested else f"{where}[{j}]"
            raise CheckpointError(f"{name}: {at} is {_short(row[j])}, not a number")
    try:
        arr = np.array(value, dtype=np.float64)
    except OverflowError:
        raise CheckpointError(f"{name}: {where} holds an integer too large for a float") from None
    if not np.isfinite(arr).all():
        raise CheckpointError(f"{name}: {where} contains NaN or Inf")
    return arr


def _layer(value, where: str, shapes: list, sizes, name: str) -> np.ndarray:
    """One layer's array, whose shape must be one of ``shapes``, reshaped to ``shapes[0]``."""
    arr = _array(value, where, name)
    if arr.shape not in shapes:
        need = " or ".join(map(str, shapes))
        raise CheckpointError(f"{name}: {where} has shape {arr.shape}, sizes {list(sizes)} need {need}")
    return arr.reshape(shapes[0])


def _params(doc, sizes, name: str, lenient: bool) -> dict[str, np.ndarray]:
    """Their weights (n_out, n_in) and biases → gpumlp's host ``{W0: (n_in, n_out), b0: (n_out,), …}``.

    Nielsen's biases are (n_out, 1). ``lenient`` (Rust) also takes weights as a flat row-major list
    of n_out*n_in numbers and biases as (n_out,) or (n_out, 1)."""
    layers = {key: _get(doc, key, name) for key in ("weights", "biases")}
    for key, value in layers.items():
        if not isinstance(value, list) or len(value) != len(sizes) - 1:
            count = f"{len(value)} entries" if isinstance(value, list) else _short(value)
            raise CheckpointError(
                f"{name}: {key!r} must list {len(sizes) - 1} layers for sizes {list(sizes)}, got {count}"
            )
    host = {}
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w_shapes = [(n_out, n_in), (n_out * n_in,)] if lenient else [(n_out, n_in)]
        b_shapes = [(n_out,), (n_out, 1)] if lenient else [(n_out, 1)]
        W = _layer(layers["weights"][l], f"weights[{l}]", w_shapes, sizes, name)  # (n_out, n_in)
        b = _layer(layers["biases"][l], f"biases[{l}]", b_shapes, sizes, name)  # (n_out,) or (n_out, 1)
        host[f"W{l}"], host[f"b{l}"] = W.T, b.reshape(n_out)  # (n_in, n_out), (n_out,)
    return host


def _build(host: dict, sizes, kind: str, device, dtype: str, **extra) -> tuple[MLP, dict]:
    """A sigmoid/mse MLP on ``device`` holding ``host`` (float64 values cast once to ``dtype``)."""
    divisor = DIVISORS[kind]
    model = MLP(sizes, "sigmoid", "mse", device=device, dtype=dtype, input_divisor=divisor, params=host)
    meta = dict(format=FORMAT, version=VERSION, imported_from=kind, sizes=list(sizes), activation="sigmoid")
    meta.update(loss="mse", init=None, dtype=model.dtype, input_divisor=divisor, **extra)
    return model, meta


def from_rust(doc: dict, device="cpu", dtype: str = "float32") -> tuple[MLP, dict]:
    """A parsed Rust-project JSON network → ``(MLP, metadata)``; only Sigmoid networks fit gpumlp."""
    sizes = check_sizes(doc, "layers", RUST)
    act = _get(doc, "activation_function", RUST)
    kind = act.get("function_type") if isinstance(act, dict) else None
    if kind == "ReLU":
        raise CheckpointError(
            f"{RUST}: ReLU on the output layer is not representable in gpumlp (its outputs are sigmoid "
            "or softmax); only Sigmoid Rust networks import"
        )
    if kind != "Sigmoid":
        raise CheckpointError(
            f"{RUST}: 'activation_function' must be {{'function_type': 'Sigmoid'}}, got {_short(act)}"
        )
    return _build(_params(doc, sizes, RUST, lenient=True), sizes, "rust", device, dtype)


def from_nielsen(doc: dict, device="cpu", dtype: str = "float32") -> tuple[MLP, dict]:
    """A parsed network2.py ``Network.save`` document → ``(MLP, metadata)``, metadata["cost"] its cost.

    Either cost gives the same sigmoid outputs; the cost only mattered for training."""
    sizes = check_sizes(doc, "sizes", NIELSEN)
    cost = _get(doc, "cost", NIELSEN)
    if cost not in NIELSEN_COSTS:
        raise CheckpointError(f"{NIELSEN}: 'cost' must be one of {', '.join(NIELSEN_COSTS)}, got {_short(cost)}")
    return _build(_params(doc, sizes, NIELSEN, lenient=False), sizes, "nielsen", device, dtype, cost=cost)


def from_foreign(doc, device="cpu", dtype: str = "float32") -> tuple[MLP, dict]:
    """Import a parsed Rust or Nielsen document, whichever ``detect`` says it is."""
    kind = detect(doc)
    if kind is None:
        raise CheckpointError(f"not a {RUST} or {NIELSEN} network (and no gpumlp 'format')")
    return (from_rust if kind == "rust" else from_nielsen)(doc, device, dtype)


# ---------------------------------------------------------------- export


def _export(model: MLP, kind: str) -> tuple[list, list]:
    """Their weights (n_out, n_in) and biases (n_out,) as float64 host arrays, W0 rescaled for their inputs."""
    name = RUST if kind == "rust" else NIELSEN
    if model.loss != "mse":
        raise CheckpointError(f"cannot export to {name}: softmax/cross-entropy output (loss 'ce'); it needs loss 'mse'")
    if model.activation != "sigmoid" and model.n_layers > 1:
        raise CheckpointError(f"cannot export to {name}: {model.activation} hidden layers; it uses sigmoid everywhere")
    host = {k: model.be.to_numpy(v).astype(np.float64) for k, v in model.params.items()}  # device → host
    # Their input x_f = pixel / d_f = x_g · d_g / d_f with x_g = pixel / d_g, so x_f @ W0·(d_f / d_g) = x_g @ W0.
    factor = DIVISORS[kind] / model.input_divisor
    if factor != 1.0:
        host["W0"] = host["W0"] * factor
    L = range(model.n_layers)
    return [host[f"W{l}"].T for l in L], [host[f"b{l}"] for l in L]  # (n_out, n_in), (n_out,)


def to_rust(model: MLP) -> dict:
    """A sigmoid/mse ``model`` → the Rust project's JSON document (a dict ready for ``json.dump``)."""
    weights, biases = _export(model, "rust")
    return {"layers": list(model.sizes), "weights": [W.tolist() for W in weights],
            "biases": [b.tolist() for b in biases], "activation_function": {"function_type": "Sigmoid"}}  # fmt: skip


def to_nielsen(model: MLP) -> dict:
    """A sigmoid/mse ``model`` → a network2.py ``load``-able document, cost QuadraticCost."""
    weights, biases = _export(model, "nielsen")
    return {"sizes": list(model.sizes), "weights": [W.tolist() for W in weights],
            "biases": [b[:, None].tolist() for b in biases], "cost": "QuadraticCost"}  # fmt: skip


EXPORTERS = {"rust": to_rust, "nielsen": to_nielsen}


def save_foreign(path: str | os.PathLike, model: MLP, to: str) -> Path:
    """Write ``model`` as a ``to`` ("rust" or "nielsen") JSON file, atomically like a checkpoint."""
    if to not in EXPORTERS:
        raise CheckpointError(f"unknown export format {to!r}: choose {' or '.join(EXPORTERS)}")
    data = json.dumps(EXPORTERS[to](model), allow_nan=False).encode("utf-8")  # repr floats: exact
    path = Path(path)
    atomic_write(path, lambda f: f.write(data))
    return path
