"""Rust-project and Nielsen network2 JSON: faithful imports, exact round trips, clear refusals.

Each foreign forward pass is re-implemented here, independently of gpumlp, the way its project
computes it: one image at a time as a vector, W (n_out, n_in) on the left, sigmoid on every
layer, inputs pixel / 256 (both projects), prediction the largest output.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from gpumlp.errors import CheckpointError
from gpumlp.formats import checkpoint, interop
from gpumlp.model import MLP

RUST_SCALE, NIELSEN_SCALE = 256.0, 256.0  # what each project divides integer pixels by
SIZES = [784, 16, 8, 10]


# ---------------------------------------------------------------- fixtures and references


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """200 images as integer pixels 0..255 (n, 784): real MNIST test images when available."""
    data_dir = os.environ.get("GPUMLP_DATA_DIR")
    if data_dir:
        from gpumlp import load_mnist

        X_test = load_mnist(data_dir, download=False)[2][:200]  # float32 pixel / 255
        P = np.rint(X_test.astype(np.float64) * 255).astype(np.int64)
        np.testing.assert_array_equal(P.astype(np.float32) / np.float32(255), X_test)  # recovered exactly
        return P
    return np.random.default_rng(0).integers(0, 256, (200, 784))


def gpumlp_inputs(P: np.ndarray) -> np.ndarray:
    return P / 255.0  # load_mnist's scaling, float64


def random_layers(sizes, seed=0, bias_column=False):
    """Weights (n_out, n_in) and biases as nested lists of Python floats. Rows sum to zero, so units
    respond to patterns rather than overall brightness: outputs unsaturated, predictions varied."""
    rng = np.random.default_rng(seed)
    weights = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        W = rng.standard_normal((n_out, n_in)) * 5 / np.sqrt(n_in)
        weights.append((W - W.mean(axis=1, keepdims=True)).tolist())
    biases = [(0.5 * rng.standard_normal((o, 1) if bias_column else o)).tolist() for o in sizes[1:]]
    return weights, biases


def rust_doc(sizes=SIZES, seed=0, function_type="Sigmoid") -> dict:
    weights, biases = random_layers(sizes, seed)
    return {"layers": list(sizes), "weights": weights, "biases": biases,
            "activation_function": {"function_type": function_type}}  # fmt: skip


def nielsen_doc(sizes=SIZES, seed=0, cost="QuadraticCost") -> dict:
    weights, biases = random_layers(sizes, seed, bias_column=True)
    return {"sizes": list(sizes), "weights": weights, "biases": biases, "cost": cost}


def via_file(tmp_path, doc) -> dict:
    """Write ``doc`` as a JSON file and read it back, as a user's file would arrive."""
    path = tmp_path / "net.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return json.loads(path.read_text(encoding="utf-8"))


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def rust_forward(doc, P) -> np.ndarray:
    """The Rust project's forward pass, image by image: a = σ(W a + b), x = pixel / 256. → (n, 10)"""
    out = []
    for p in P:
        a = p.astype(np.float64) / RUST_SCALE  # (784,)
        for W, b in zip(doc["weights"], doc["biases"]):
            a = sigmoid(np.array(W) @ a + np.array(b))  # (n_out, n_in) @ (n_in,)
        out.append(a)
    return np.array(out)


def nielsen_forward(doc, P) -> np.ndarray:
    """network2.py's feedforward on column vectors, x = pixel / 256. → (n, 10)"""
    out = []
    for p in P:
        a = p.astype(np.float64).reshape(-1, 1) / NIELSEN_SCALE  # (784, 1)
        for w, b in zip(doc["weights"], doc["biases"]):
            a = sigmoid(np.dot(np.array(w), a) + np.array(b))  # (n_out, 1)
        out.append(a[:, 0])
    return np.array(out)


def outputs(model: MLP, P) -> np.ndarray:
    return model.be.to_numpy(model.predict_proba(gpumlp_inputs(P))).astype(np.float64)


def host_params(model: MLP) -> dict:
    return {k: model.be.to_numpy(v) for k, v in model.params.items()}


def importer(read):
    """``read`` (a parsed document → (metadata, float64 host parameters)) as an import: a document
    → ``(MLP, metadata)`` in ``dtype``, the network built by ``checkpoint.build`` as ``load`` builds it."""

    def import_document(doc, device="cpu", dtype="float32"):
        meta, host = read(doc)
        meta = dict(meta, dtype=dtype)
        return checkpoint.build(meta, host, device), meta

    return import_document


def exporter(document):
    """``document`` (metadata, host parameters → a foreign document) as a function of a model."""
    return lambda model: document(checkpoint.build_metadata(model), host_params(model))


from_rust, from_nielsen = importer(interop.read_rust_document), importer(interop.read_nielsen_document)
to_rust, to_nielsen = exporter(interop.rust_document), exporter(interop.nielsen_document)
RECORDS = {"rust": interop.RUST, "nielsen": interop.NIELSEN}


def save_foreign(path, model: MLP, kind: str):
    """Write ``model`` in the ``kind`` format through its record, as ``gpumlp convert --to`` does."""
    RECORDS[kind].write(path, checkpoint.build_metadata(model), host_params(model), {})
    return path


FORMATS = {
    "rust": (rust_doc, rust_forward, from_rust, to_rust),
    "nielsen": (nielsen_doc, nielsen_forward, from_nielsen, to_nielsen),
}


# ---------------------------------------------------------------- imports


@pytest.mark.parametrize("kind", FORMATS)
def test_float64_import_reproduces_the_foreign_forward_pass(tmp_path, pixels, kind, device):
    make, forward, _, _ = FORMATS[kind]
    path = tmp_path / "net.json"
    path.write_text(json.dumps(make()), encoding="utf-8")
    doc = json.loads(path.read_text(encoding="utf-8"))
    model, meta = checkpoint.load(path, device=device)  # float64, as every foreign network loads
    ref = forward(doc, pixels)
    np.testing.assert_allclose(outputs(model, pixels), ref, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(model.be.to_numpy(model.predict(gpumlp_inputs(pixels))), ref.argmax(axis=1))
    assert len(set(ref.argmax(axis=1).tolist())) >= 4  # the check is not trivially one class
    assert (model.sizes, model.activation, model.loss, model.dtype) == (tuple(SIZES), "sigmoid", "mse", "float64")
    assert model.input_divisor == {"rust": RUST_SCALE, "nielsen": NIELSEN_SCALE}[kind]
    assert meta["imported_from"] == kind and meta["format"] == checkpoint.FORMAT and meta["version"] == 1
    assert (meta["sizes"], meta["activation"], meta["loss"], meta["dtype"]) == (SIZES, "sigmoid", "mse", "float64")
    assert meta["input_divisor"] == model.input_divisor and "init" in meta
    json.dumps(meta)  # metadata is plain JSON
    W0 = np.array(doc["weights"][0])
    np.testing.assert_array_equal(model.be.to_numpy(model.params["W0"]), W0.T)  # no folding on import


@pytest.mark.parametrize("kind", FORMATS)
def test_float32_import_predicts_the_same_labels(pixels, kind):
    make, forward, importer, _ = FORMATS[kind]
    doc = make(seed=1)
    model, meta = importer(doc, dtype="float32")
    assert model.dtype == meta["dtype"] == "float32" and model.theta.dtype == np.float32
    ref = forward(doc, pixels)
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4  # ties at float32 precision may go either way
    assert clear.sum() >= 190
    got = model.be.to_numpy(model.predict(gpumlp_inputs(pixels)))
    np.testing.assert_array_equal(got[clear], ref.argmax(axis=1)[clear])
    np.testing.assert_array_equal(model.params["b0"], np.float32(doc["biases"][0]).reshape(-1))  # float64 → cast


def test_nielsen_cross_entropy_cost_imports_with_its_cost_recorded(pixels):
    doc = nielsen_doc(cost="CrossEntropyCost")
    model, meta = from_nielsen(doc, dtype="float64")
    assert meta["cost"] == "CrossEntropyCost" and model.loss == "mse"  # same sigmoid outputs
    np.testing.assert_allclose(outputs(model, pixels), nielsen_forward(doc, pixels), rtol=1e-12, atol=0)


def test_rust_accepts_flat_weights_and_column_biases():
    doc = rust_doc()
    flat = dict(
        doc, weights=[np.ravel(W).tolist() for W in doc["weights"]], biases=[[[x] for x in b] for b in doc["biases"]]
    )
    a, _ = from_rust(doc, dtype="float64")
    b, _ = from_rust(flat, dtype="float64")
    np.testing.assert_array_equal(a.theta, b.theta)


def test_integer_values_are_numbers():
    doc = rust_doc(sizes=[784, 10])
    doc["biases"][0] = [0, 1, -2, 3, 0, 0, 0, 0, 0, 7]
    model, _ = from_rust(doc, dtype="float64")
    assert model.be.to_numpy(model.params["b0"]).tolist() == [0, 1, -2, 3, 0, 0, 0, 0, 0, 7]


def detected(doc) -> list[str]:
    """Which of the two foreign formats claim ``doc``."""
    return [kind for kind, claims in (("rust", interop.is_rust), ("nielsen", interop.is_nielsen)) if claims(doc)]


def test_detect(tmp_path):
    assert detected(rust_doc()) == ["rust"]
    assert detected(nielsen_doc()) == ["nielsen"]
    assert detected({"layers": [784, 10]}) == ["rust"]  # partial: routed, then refused with a reason
    assert detected({"format": "gpumlp-checkpoint", "sizes": SIZES, "params": {}}) == []
    assert detected({"sizes": SIZES, "layers": SIZES}) == ["rust", "nielsen"]  # ambiguous: refused below
    assert detected({"weights": []}) == []
    assert detected([1, 2]) == [] and detected(None) == []
    (tmp_path / "hello.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="is JSON, but not gpumlp JSON, Rust MLP JSON or Nielsen network2 JSON"):
        checkpoint.load(tmp_path / "hello.json")
    (tmp_path / "both.json").write_text(json.dumps(dict(rust_doc(), sizes=SIZES)))
    with pytest.raises(CheckpointError, match="has the keys of Rust MLP JSON and Nielsen network2 JSON at once"):
        checkpoint.load(tmp_path / "both.json")
    for kind, make in (("rust", rust_doc), ("nielsen", nielsen_doc)):
        (tmp_path / "net.json").write_text(json.dumps(make()))
        assert checkpoint.load(tmp_path / "net.json")[1]["imported_from"] == kind


# ---------------------------------------------------------------- exports and round trips


def gpumlp_model(dtype="float64", activation="sigmoid", loss="mse", sizes=(784, 5, 10), seed=3) -> MLP:
    model = MLP(sizes, activation, loss, init="normal", seed=seed, dtype=dtype)
    model.theta *= 0.1  # unsaturated outputs, non-round values
    return model


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpumlp_to_nielsen_folds_the_input_scale(tmp_path, pixels, dtype):
    """Like Rust, network2 sees pixel / 256: only W0 is rescaled by 256/255, the rest is bit-exact."""
    model = gpumlp_model(dtype)
    doc = via_file(tmp_path, to_nielsen(model))
    assert doc["cost"] == "QuadraticCost" and doc["sizes"] == [784, 5, 10]
    assert np.array(doc["weights"][0]).shape == (5, 784) and np.array(doc["biases"][1]).shape == (10, 1)
    back, _ = from_nielsen(doc, dtype=dtype)
    assert back.input_divisor == 256.0
    for k, P in host_params(model).items():
        if k != "W0":
            np.testing.assert_array_equal(host_params(back)[k].view(np.uint8), P.view(np.uint8))
    np.testing.assert_array_equal(outputs(back, pixels).argmax(1), outputs(model, pixels).argmax(1))
    if dtype == "float64":  # and Nielsen's own forward pass agrees with gpumlp's
        np.testing.assert_allclose(nielsen_forward(doc, pixels), outputs(model, pixels), rtol=1e-12, atol=0)


def test_gpumlp_to_rust_folds_the_input_scale(tmp_path, pixels):
    model = gpumlp_model()
    doc = via_file(tmp_path, to_rust(model))
    assert doc["layers"] == [784, 5, 10] and doc["activation_function"] == {"function_type": "Sigmoid"}
    W0 = host_params(model)["W0"]
    np.testing.assert_allclose(np.array(doc["weights"][0]), W0.T * 256 / 255, rtol=1e-15)
    np.testing.assert_array_equal(np.array(doc["weights"][1]), host_params(model)["W1"].T)  # only W0 rescaled
    ref = outputs(model, pixels)
    np.testing.assert_allclose(rust_forward(doc, pixels), ref, rtol=1e-12, atol=0)  # Rust sees pixel / 256
    back, _ = from_rust(doc, dtype="float64")
    np.testing.assert_allclose(outputs(back, pixels), ref, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(outputs(back, pixels).argmax(1), ref.argmax(1))


@pytest.mark.parametrize("kind", FORMATS)
def test_foreign_to_gpumlp_to_foreign_is_identical(tmp_path, kind):
    make, _, importer, exporter = FORMATS[kind]
    doc = via_file(tmp_path, make())
    assert exporter(importer(doc, dtype="float64")[0]) == doc


def test_rust_to_nielsen_conversion_agrees(pixels):
    doc = rust_doc(seed=2)
    converted = to_nielsen(from_rust(doc, dtype="float64")[0])
    np.testing.assert_allclose(nielsen_forward(converted, pixels), rust_forward(doc, pixels), rtol=1e-12, atol=0)


def test_save_foreign_writes_loadable_json(tmp_path):
    model = gpumlp_model()
    path = save_foreign(tmp_path / "out" / "net.json", model, "nielsen")
    assert json.loads(path.read_text()) == json.loads(json.dumps(to_nielsen(model)))
    assert [p.name for p in path.parent.iterdir()] == ["net.json"]
    source = checkpoint.save(tmp_path / "m.npz", model)
    with pytest.raises(CheckpointError, match="unknown --to 'onnx': choose gpumlp, rust or nielsen"):
        checkpoint.convert(source, tmp_path / "x.json", to="onnx")
    assert not (tmp_path / "x.json").exists()


def test_single_layer_net_exports_whatever_its_hidden_activation():
    model = gpumlp_model(activation="relu", sizes=(784, 10))  # no hidden layer: sigmoid(x W + b)
    assert to_rust(model)["layers"] == [784, 10]


# ---------------------------------------------------------------- refusals


def refused(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(CheckpointError, match=match) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)  # one-line messages
    return str(e.value)


def test_rust_relu_is_refused():
    msg = refused(from_rust, rust_doc(function_type="ReLU"), match="ReLU on the output layer")
    assert "not representable in gpumlp" in msg and "only Sigmoid" in msg
    refused(from_rust, dict(rust_doc(), activation_function="Sigmoid"), match="'activation_function' must")
    refused(from_rust, rust_doc(function_type="Tanh"), match="'Tanh'")


@pytest.mark.parametrize("kind", FORMATS)
@pytest.mark.parametrize(
    "activation,loss,match",
    [("relu", "mse", "relu hidden layers"), ("tanh", "mse", "tanh hidden layers"),
     ("sigmoid", "ce", "loss 'ce' has softmax outputs, not sigmoids")],
)  # fmt: skip
def test_export_refuses_what_does_not_fit(kind, activation, loss, match):
    refused(FORMATS[kind][3], gpumlp_model(activation=activation, loss=loss), match=match)


@pytest.mark.parametrize("kind", FORMATS)
@pytest.mark.parametrize(
    "sizes,match",
    [([100, 5, 10], "from 784 to 10"), ([784, 5, 9], "from 784 to 10"), ([784], "from 784 to 10"),
     ([784, 0, 10], "positive"), ([784, "5", 10], "list of integers"), ([784, 5.0, 10], "list of integers"),
     ([784, True, 10], "list of integers"), ("784,10", "list of integers")],
)  # fmt: skip
def test_bad_sizes_are_refused(kind, sizes, match):
    make, _, importer, _ = FORMATS[kind]
    doc = make()
    doc["layers" if kind == "rust" else "sizes"] = sizes
    refused(importer, doc, match=match)


@pytest.mark.parametrize("kind", FORMATS)
def test_missing_keys_are_refused(kind):
    make, _, importer, _ = FORMATS[kind]
    for key in make():
        doc = make()
        del doc[key]
        refused(importer, doc, match=f"missing key '{key}'")
    refused(importer, [1, 2], match="expected a JSON object")


@pytest.mark.parametrize("kind", FORMATS)
def test_wrong_shapes_name_the_layer_and_both_shapes(kind):
    make, _, importer, _ = FORMATS[kind]
    doc = make()
    doc["weights"][1] = np.array(doc["weights"][1]).T.tolist()  # (16, 8) given where (8, 16) belongs
    msg = refused(importer, doc, match=r"weights\[1\] has shape \(16, 8\)")
    assert "(8, 16)" in msg and "784, 16, 8, 10" in msg
    doc = make()
    doc["biases"][2] = doc["biases"][2][:9]
    refused(importer, doc, match=r"biases\[2\] has shape \(9, ?1?\).*\(10,")
    doc = make()
    doc["weights"] = doc["weights"][:2]
    refused(importer, doc, match="'weights' must list 3 layers .* got 2 entries")
    refused(importer, dict(make(), biases={"0": []}), match="'biases' must list 3 layers")


def test_nielsen_is_strict_about_bias_columns_and_cost():
    doc = nielsen_doc()
    doc["biases"][0] = [row[0] for row in doc["biases"][0]]  # (16,) instead of (16, 1)
    refused(from_nielsen, doc, match=r"biases\[0\] has shape \(16,\), sizes .* need \(16, 1\)")
    doc = nielsen_doc()
    doc["weights"][0] = np.ravel(doc["weights"][0]).tolist()  # flat: Rust-only leniency
    refused(from_nielsen, doc, match=r"weights\[0\] has shape \(12544,\)")
    refused(from_nielsen, nielsen_doc(cost="LogCost"), match="'cost' must be one of")


@pytest.mark.parametrize("kind", FORMATS)
def test_ragged_weights_are_refused(kind):
    make, _, importer, _ = FORMATS[kind]
    doc = make()
    doc["weights"][0][3] = doc["weights"][0][3][:-1]
    refused(importer, doc, match=r"weights\[0\] is ragged: rows of lengths \[783, 784\]")
    doc = make()
    doc["weights"][1][2] = 0.5  # a number among rows
    refused(importer, doc, match=r"weights\[1\] mixes lists and numbers")


@pytest.mark.parametrize("kind", FORMATS)
@pytest.mark.parametrize(
    "bad,match",
    [(float("nan"), r"weights\[2\] contains NaN or Inf"), (float("-inf"), r"weights\[2\] contains NaN or Inf"),
     ("0.5", r"weights\[2\]\[4\]\[7\] is '0.5', not a number"), (None, r"\[4\]\[7\] is None, not a number"),
     (True, r"\[4\]\[7\] is True, not a number"), ([0.5], r"\[4\]\[7\] is \[0.5\], not a number"),
     ({"x": 1}, r"\[4\]\[7\] is \{'x': 1\}, not a number"), (10**400, r"weights\[2\] holds an integer too large")],
)  # fmt: skip
def test_bad_values_are_refused(tmp_path, kind, bad, match):
    make, _, importer, _ = FORMATS[kind]
    doc = make()
    doc["weights"][2][4][7] = bad
    refused(importer, via_file(tmp_path, doc), match=match)  # json writes nan as NaN, inf as -Infinity
    doc = make()
    doc["biases"][0] = "zeros"
    refused(importer, doc, match=r"biases\[0\] must be a list, got 'zeros'")


@pytest.mark.parametrize("name", ["net", "net.txt", "net.NETWORK2", "saved.pkl"])
def test_a_foreign_network_is_found_by_content_whatever_its_name(tmp_path, name):
    """network2's ``save(filename)`` takes any name (issue 15): a name that says neither .npz nor
    .json is read by its first bytes, and the network loads exactly as under a .json name."""
    model = MLP((784, 12, 10), "sigmoid", "mse", seed=4)
    reference = save_foreign(tmp_path / "net.json", model, "nielsen")
    odd = tmp_path / name
    odd.write_bytes(b"\n  " + reference.read_bytes())  # leading whitespace is still JSON
    loaded, meta = checkpoint.load(odd)
    expected, _ = checkpoint.load(reference)
    np.testing.assert_array_equal(loaded.theta, expected.theta)
    assert meta["imported_from"] == "nielsen"
    (tmp_path / "bin").write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match=r"is not a network in any format gpumlp reads \(npz or JSON; by name"):
        checkpoint.load(tmp_path / "bin")


def test_an_npz_under_another_name_is_found_by_content(tmp_path):
    path = checkpoint.save(tmp_path / "m.npz", MLP((784, 10), seed=2))
    os.rename(path, tmp_path / "m.backup")
    model, _ = checkpoint.load(tmp_path / "m.backup")
    assert model.sizes == (784, 10)
    assert checkpoint.describe(tmp_path / "m.backup")["file_format"] == "npz"


@pytest.mark.parametrize("kind", ["rust", "nielsen"])
def test_info_on_a_foreign_file_shows_what_it_holds(tmp_path, kind):
    """Issue 15: ``gpumlp info`` printed "trained on None, None," and a gpumlp format version for a
    file that has neither. Now it names the format and what the file holds, and nothing it lacks."""
    from typer.testing import CliRunner

    from gpumlp.cli import commands as cli

    save_foreign(tmp_path / "net.json", MLP((784, 12, 10), "sigmoid", "mse", seed=4), kind)
    result = CliRunner().invoke(cli.app, ["info", str(tmp_path / "net.json")])
    assert result.exit_code == 0, result.output
    assert "None" not in result.output and "trained on" not in result.output and "format version" not in result.output
    assert RECORDS[kind].label in result.output and RECORDS[kind].holds in result.output
    assert ("cost           QuadraticCost" in result.output) == (kind == "nielsen")
    d = checkpoint.describe(tmp_path / "net.json")
    assert "format" not in d and "version" not in d and d["imported_from"] == kind
