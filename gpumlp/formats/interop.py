"""Two other from-scratch MNIST MLPs' JSON files as checkpoint formats, checked as strictly as ours.

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

Each format is a ``Format`` record (``RUST``, ``NIELSEN``; ``FOREIGN`` lists them for
``checkpoint.FORMATS``): its ``read`` gives float64 host parameters and metadata, never a model.
Another such format is one more record here, added to ``FOREIGN``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gpumlp.activations import ACTIVATIONS, sigmoid_
from gpumlp.errors import CheckpointError
from gpumlp.formats.atomic import atomic_write
from gpumlp.formats.base import Format, check_sizes, get, short
from gpumlp.losses import LOSSES

RUST_LABEL, NIELSEN_LABEL = "Rust MLP JSON", "Nielsen network2 JSON"  # how messages name the formats
DIVISOR = 256.0  # both projects' network input is pixel / 256
NIELSEN_COSTS = ("QuadraticCost", "CrossEntropyCost")


# ---------------------------------------------------------------- recognising


def is_rust(doc) -> bool:
    """A parsed JSON document with one of the Rust project's keys (``layers``, ``activation_function``)."""
    return _has_keys(doc, ("layers", "activation_function"))


def is_nielsen(doc) -> bool:
    """A parsed JSON document with one of network2's keys (``sizes``, ``cost``)."""
    return _has_keys(doc, ("sizes", "cost"))


def _has_keys(doc, keys) -> bool:
    """``doc`` is an object with one of ``keys`` and without gpumlp's ``format`` and ``params`` (a
    gpumlp checkpoint has ``sizes`` too). A file with both projects' keys is claimed by both, and
    refused as ambiguous."""
    if not isinstance(doc, dict) or "format" in doc or "params" in doc:
        return False
    return any(k in doc for k in keys)


# ---------------------------------------------------------------- strict reading


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _array(value, where: str, name: str) -> np.ndarray:
    """A list of numbers, or a list of equal-length lists of numbers → a finite float64 array."""
    if not isinstance(value, list):
        raise CheckpointError(f"{name}: {where} must be a list, got {short(value)}")
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
            raise CheckpointError(f"{name}: {at} is {short(row[j])}, not a number")
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
    layers = {key: get(doc, key, name) for key in ("weights", "biases")}
    for key, value in layers.items():
        if not isinstance(value, list) or len(value) != len(sizes) - 1:
            count = f"{len(value)} entries" if isinstance(value, list) else short(value)
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


def _metadata(kind: str, sizes, **extra) -> dict:
    """What gpumlp knows of an imported network: a sigmoid/mse MLP on pixel / 256, in float64."""
    meta = dict(imported_from=kind, sizes=list(sizes), activation="sigmoid", loss="mse", init=None)
    return dict(meta, dtype="float64", input_divisor=DIVISOR, **extra)


def read_rust_document(doc, name: str = RUST_LABEL) -> tuple[dict, dict]:
    """A parsed Rust-project JSON network → ``(metadata, float64 host parameters)``; only Sigmoid
    networks fit gpumlp. ``name`` starts every message (the file and the format)."""
    sizes = check_sizes(doc, "layers", name)
    act = get(doc, "activation_function", name)
    kind = act.get("function_type") if isinstance(act, dict) else None
    if kind == "ReLU":
        raise CheckpointError(
            f"{name}: ReLU on the output layer is not representable in gpumlp (its outputs are sigmoid "
            "or softmax); only Sigmoid Rust networks import"
        )
    if kind != "Sigmoid":
        raise CheckpointError(f"{name}: 'activation_function' must be {{'function_type': 'Sigmoid'}}, got {short(act)}")
    return _metadata("rust", sizes), _params(doc, sizes, name, lenient=True)


def read_nielsen_document(doc, name: str = NIELSEN_LABEL) -> tuple[dict, dict]:
    """A parsed network2.py ``Network.save`` document → ``(metadata, float64 host parameters)``,
    metadata["cost"] its cost. Either cost gives the same sigmoid outputs; it only mattered for training."""
    sizes = check_sizes(doc, "sizes", name)
    cost = get(doc, "cost", name)
    if cost not in NIELSEN_COSTS:
        raise CheckpointError(f"{name}: 'cost' must be one of {', '.join(NIELSEN_COSTS)}, got {short(cost)}")
    return _metadata("nielsen", sizes, cost=cost), _params(doc, sizes, name, lenient=False)


# ---------------------------------------------------------------- export


def _export(meta: dict, host: dict, name: str) -> tuple[list, list]:
    """Their weights (n_out, n_in) and biases (n_out,) as float64 host arrays, W0 rescaled for their inputs.

    ``meta``: the network's ``sizes, activation, loss, input_divisor``; ``host``: ``{W0: (n_in, n_out), …}``."""
    loss = LOSSES.get(meta["loss"])
    if loss is None or not loss.sigmoid_outputs:
        fits = ", ".join(repr(k) for k, v in LOSSES.items() if v.sigmoid_outputs)
        what = f"{loss.confidence_name} outputs" if loss else "outputs"
        raise CheckpointError(
            f"cannot export to {name}: loss {meta['loss']!r} has {what}, not sigmoids; it needs loss {fits}"
        )
    n_layers, activation = len(meta["sizes"]) - 1, meta["activation"]
    if getattr(ACTIVATIONS.get(activation), "f", None) is not sigmoid_ and n_layers > 1:  # their units are σ
        raise CheckpointError(f"cannot export to {name}: {activation} hidden layers; it uses sigmoid everywhere")
    host = {k: np.asarray(v, dtype=np.float64) for k, v in host.items()}
    # Their input x_f = pixel / d_f = x_g · d_g / d_f with x_g = pixel / d_g, so x_f @ W0·(d_f / d_g) = x_g @ W0.
    factor = DIVISOR / meta.get("input_divisor", 255.0)
    if factor != 1.0:
        host["W0"] = host["W0"] * factor
    L = range(n_layers)
    return [host[f"W{l}"].T for l in L], [host[f"b{l}"] for l in L]  # (n_out, n_in), (n_out,)


def rust_document(meta: dict, host: dict) -> dict:
    """A sigmoid/mse network → the Rust project's JSON document (a dict ready for ``json.dump``)."""
    weights, biases = _export(meta, host, RUST_LABEL)
    return {"layers": list(meta["sizes"]), "weights": [W.tolist() for W in weights],
            "biases": [b.tolist() for b in biases], "activation_function": {"function_type": "Sigmoid"}}  # fmt: skip


def nielsen_document(meta: dict, host: dict) -> dict:
    """A sigmoid/mse network → a network2.py ``load``-able document, cost QuadraticCost."""
    weights, biases = _export(meta, host, NIELSEN_LABEL)
    return {"sizes": list(meta["sizes"]), "weights": [W.tolist() for W in weights],
            "biases": [b[:, None].tolist() for b in biases], "cost": "QuadraticCost"}  # fmt: skip


def _write_document(path: Path, doc: dict) -> None:
    data = json.dumps(doc, allow_nan=False).encode("utf-8")  # repr floats: exact
    atomic_write(path, lambda f: f.write(data))


# ---------------------------------------------------------------- the records


def json_format(name: str, label: str, is_format, read_document, document, holds: str) -> Format:
    """A foreign JSON format's record from its functions of a parsed document: ``is_format(doc)``,
    ``read_document(doc, name) → (metadata, host)`` and ``document(metadata, host) → doc``."""
    return Format(
        name, label, "JSON", (".json",), b"{",
        read=lambda source: read_document(source.document(), f"{source.path}: {label}"),
        write=lambda path, meta, host, state: _write_document(path, document(meta, host)),
        claims=lambda source: is_format(source.document()),
        holds=holds,  # what its files hold, for `gpumlp info`
    )  # fmt: skip


RUST = json_format("rust", RUST_LABEL, is_rust, read_rust_document, rust_document,
                   "layers, weights, biases and activation_function")  # fmt: skip
NIELSEN = json_format("nielsen", NIELSEN_LABEL, is_nielsen, read_nielsen_document, nielsen_document,
                      "sizes, weights, biases and cost")  # fmt: skip
FOREIGN = (RUST, NIELSEN)  # other projects' formats: `gpumlp convert --to NAME` writes them
