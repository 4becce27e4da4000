"""A network as a standard ONNX graph, for onnxruntime and every other ONNX client.

The graph takes what a user has, raw pixels, and gives what ``gpumlp predict`` reports:

    pixels         (batch, 784) float32, 0–255, row-major 28×28, bright ink on black (as MNIST)
    X = pixels / input_divisor        Div: the network's input scaling (255; 256 for Rust/Nielsen)
    Z{l+1} = Gemm(A{l}, W{l}, b{l})   each layer, W{l} (n_in, n_out) as gpumlp stores it
    A{l+1} = Sigmoid | Relu | Tanh …  hidden layers: the activation record's ONNX operator
    probabilities  (batch, 10)        the loss record's ONNX head (gpumlp.losses): ce Softmax(Z_L);
                                      mse Sigmoid(Z_L) / ReduceSum(Sigmoid(Z_L))

An mse network's outputs are ten independent sigmoids; ``gpumlp predict`` divides them by their
sum, and so does the graph, so both report the same numbers (a ranking, not a calibrated law).
Parameters are stored as float32 (float64 checkpoints are rounded once). Opset 17, IR version 8:
onnxruntime 1.13 and later read it. The ``onnx`` package is an optional extra, imported here only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from gpumlp.activations import ACTIVATIONS
from gpumlp.errors import ExportError
from gpumlp.losses import LOSSES

OPSET = 17  # Softmax(axis=-1) and ReduceSum with axes as an input: opset 13 and later
IR_VERSION = 8  # the IR that goes with opset 17; newer onnx writes a newer IR by default
INPUT, OUTPUT = "pixels", "probabilities"
MAX_PROTO_BYTES = 2_000_000_000  # protobuf cannot serialise a message of 2 GiB or more
ONNX_HINT = "exporting to ONNX needs the onnx package: pip install 'gpumlp[onnx]'"


def _onnx():
    try:
        import onnx
        from onnx import checker, helper, numpy_helper
    except ImportError:
        raise ExportError(ONNX_HINT) from None
    return onnx, checker, helper, numpy_helper


def _float32(name: str, array) -> np.ndarray:
    """A parameter as float32, refused when a float64 value does not fit (it would become inf)."""
    with np.errstate(over="ignore"):
        out = np.asarray(array, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise ExportError(f"{name} holds values beyond float32's range (±3.4e38); ONNX export writes float32")
    return out


def build(model, meta: dict | None = None, name: str = "gpumlp"):
    """The ``onnx.ModelProto`` of ``model`` (an MLP on any device), checked by ``onnx.checker``.

    ``meta``: the checkpoint's metadata; its test accuracy and origin go into the model's metadata.
    """
    onnx, checker, helper, numpy_helper = _onnx()
    act, loss = ACTIVATIONS.get(model.activation), LOSSES.get(model.loss)
    if act is None or act.onnx is None or loss is None or loss.onnx_head is None:
        raise ExportError(f"{model.activation} hidden units with {model.loss} output have no ONNX export")
    meta = meta or {}
    nbytes = 4 * model.n_params
    if nbytes >= MAX_PROTO_BYTES:
        raise ExportError(
            f"{model} has {model.n_params:,} parameters ({nbytes / 2**30:.1f} GiB as float32): more than one "
            ".onnx file holds (2 GiB); export a smaller network"
        )
    params = {k: model.be.to_numpy(v) for k, v in model.params.items()}  # device → host, once
    divisor = np.array(model.input_divisor, dtype=np.float32)
    inits = [numpy_helper.from_array(divisor, "input_divisor")]
    nodes = [helper.make_node("Div", [INPUT, "input_divisor"], ["A0"], name="scale")]
    A = "A0"
    for l in range(model.n_layers):
        inits += [numpy_helper.from_array(_float32(f"W{l}", params[f"W{l}"]), f"W{l}"),
                  numpy_helper.from_array(_float32(f"b{l}", params[f"b{l}"]), f"b{l}")]  # fmt: skip
        nodes.append(helper.make_node("Gemm", [A, f"W{l}", f"b{l}"], [f"Z{l + 1}"], name=f"layer{l}"))
        A = f"A{l + 1}"
        if l < model.n_layers - 1:
            nodes.append(helper.make_node(act.onnx, [f"Z{l + 1}"], [A], name=f"act{l}", **act.onnx_attributes))
    head_nodes, head_inits = loss.onnx_head(helper, numpy_helper, f"Z{model.n_layers}", OUTPUT)  # the confidences
    nodes, inits = nodes + head_nodes, inits + head_inits
    batch = ["batch", model.sizes[0]]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, batch)],
        [helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ["batch", model.sizes[-1]])],
        initializer=inits,
    )
    proto = helper.make_model(
        graph,
        producer_name="gpumlp",
        producer_version=_version(),
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string=describe(model, meta),
    )
    proto.ir_version = IR_VERSION
    helper.set_model_props(proto, _metadata(model, meta))
    try:
        checker.check_model(proto, full_check=True)
    except (checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"onnx.checker refused the graph ({' '.join(str(e).split())[:200]})") from None
    return proto


def describe(model, meta: dict) -> str:
    """The model's doc string: what goes in, what comes out."""
    loss = LOSSES[model.loss]
    out = loss.confidence_name + ("" if loss.probabilities else " (as gpumlp predict reports)")
    return (
        f"gpumlp MLP {'-'.join(map(str, model.sizes))}, {model.activation} hidden, {model.loss} output. "
        f"Input '{INPUT}': (batch, 784) float32 raw pixel values 0-255 of a 28x28 digit, bright ink on black, "
        f"row-major; the graph divides them by {model.input_divisor:g}. "
        f"Output '{OUTPUT}': (batch, 10) float32, {out}; the predicted digit is the argmax."
    )


def _metadata(model, meta: dict) -> dict[str, str]:
    props = {
        "sizes": json.dumps(list(model.sizes)),
        "activation": model.activation,
        "loss": model.loss,
        "input": f"raw pixels 0-255, divided by {model.input_divisor:g} in the graph",
        "input_divisor": f"{model.input_divisor:g}",
        "output": LOSSES[model.loss].confidence_name,
        "checkpoint_dtype": model.dtype,
    }
    for key in ("test_accuracy", "test_size", "imported_from", "created"):
        if meta.get(key) is not None:
            props[key] = str(meta[key])
    return props


def _version() -> str:
    from gpumlp import __version__

    return __version__


def export(checkpoint: str | os.PathLike, target: str | os.PathLike) -> tuple[object, Path]:
    """Write the network of ``checkpoint`` (any file ``gpumlp.load`` reads) to ``target`` (.onnx),
    atomically; returns ``(model, target)``."""
    from gpumlp.formats.atomic import RunLock, atomic_write, check_target
    from gpumlp.formats.checkpoint import load

    target = Path(target)
    if target.suffix.lower() != ".onnx":
        raise ExportError(f"{target}: an ONNX file's name ends in .onnx")
    if target.is_dir():
        raise ExportError(f"{target} is a folder; name the .onnx file to write")
    check_target(target, "an ONNX file", "choose another .onnx path")  # a name too long, a read-only file
    RunLock(target).refuse_if_held("export to it")
    _onnx()  # a missing package is the first thing to say
    model, meta = load(checkpoint)
    proto = build(model, meta, name=Path(checkpoint).stem)
    data = proto.SerializeToString()
    atomic_write(target, lambda f: f.write(data), what="an ONNX file", fix="choose another output path")
    return model, target
