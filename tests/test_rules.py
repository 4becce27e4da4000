"""Adding an update rule is one class: RMSprop, written and registered in this module only, with a
hyper-parameter no other rule has (``rho``) and one it shares with Adam (``eps``). It is trained
through the library and through the CLI, saved, resumed bit for bit, tested, exported to ONNX and
run by onnxruntime, its fused CUDA kernel run by the host kernel harness against its numpy step;
its hyper-parameters are one namespace with the others', and ``--cuda-graph`` asks the rule."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

import gpumlp
from gpumlp import optim
from gpumlp.backends.cpu import CPU
from gpumlp.backends.graph import refusal
from gpumlp.cli import commands as cli
from gpumlp.errors import ConfigError
from gpumlp.formats.checkpoint import read_metadata
from gpumlp.model import MLP
from gpumlp.training import config
from gpumlp.training.config import DEFAULT_RECIPE, TrainConfig


class RMSprop(optim.Optimizer):
    """RMSprop (Tieleman & Hinton 2012, lecture 6e): s ← ρ s + (1−ρ) g²;  θ ← θ − η g / (√s + ε)."""

    name = "rmsprop"
    hyperparams = {
        "rho": optim.Hyper(0.9, "RMSprop's ρ (decay of the mean square).", below_one=True),
        "eps": optim.Adam.hyperparams["eps"],  # Adam's record: one name, one default, one range
    }
    buffers = ("s",)
    scratch = True
    cuda = (
        "T g, T wd, T lr, T rho, T eps",
        "T p, T s",
        "const T ge = g + wd * p; s = rho * s + (T(1) - rho) * (ge * ge); p = p - lr * ge / (sqrt(s) + eps);",
    )

    def kernel_scalars(self, lr):
        return lr, self.hyper["rho"], self.hyper["eps"]

    def _update(self, lr):
        rho, eps = self.hyper["rho"], self.hyper["eps"]
        s, g, tmp, xp = self.state_buffers["s"], self.grad, self._tmp, self.xp
        xp.multiply(g, g, out=tmp)  # g²
        self.be.axpby(1 - rho, tmp, rho, s)  # s ← ρ s + (1 − ρ) g²
        xp.sqrt(s, out=tmp)
        tmp += eps
        xp.divide(g, tmp, out=tmp)  # g / (√s + ε)
        self.be.axpby(-lr, tmp, 1.0, self.theta)  # θ ← θ − η g / (√s + ε)


@pytest.fixture(scope="module", autouse=True)
def rmsprop():
    """RMSprop registered for this module's tests (before the harness compiles the kernels), then
    unregistered: the rules, TrainConfig's fields and `gpumlp train`'s options are as before."""
    before = ([f.name for f in dataclasses.fields(TrainConfig)], dict(optim.HYPERPARAMS), train_help())
    with optim.registered(RMSprop):
        yield RMSprop
    assert ([f.name for f in dataclasses.fields(TrainConfig)], optim.HYPERPARAMS, train_help()) == before
    assert "rmsprop" not in optim.RULES and "rho" not in DEFAULT_RECIPE


def train_help() -> str:
    """``gpumlp train --help`` as one line of words (the table's borders and wrapping taken out)."""
    result = CliRunner().invoke(cli.app, ["train", "--help"])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.replace("│", " ").split())


def variant(name, base=optim.Optimizer, **attributes):
    return type(name.title(), (base,), {"name": name, **attributes})


def test_it_steps_by_its_formula():
    theta, grad = np.array([1.0, -2.0, 0.5, 4.0]), np.zeros(4)
    model = SimpleNamespace(be=CPU, theta=theta, grad=grad, params={"W0": theta.reshape(2, 2)},
                            grads={"dW0": grad.reshape(2, 2)})  # fmt: skip
    opt = optim.make_optimizer("rmsprop", model, rho=0.8, momentum=0.5)  # momentum: not RMSprop's, ignored
    assert opt.hyper == {"rho": 0.8, "eps": 1e-8}
    s, expected = np.zeros(4), theta.copy()
    for g in ([0.1, -0.2, 0.3, 0.0], [-0.4, 0.2, 0.1, 1.0]):
        grad[...] = g
        opt.step(0.1)
        s = 0.8 * s + 0.2 * np.square(g)
        expected -= 0.1 * np.array(g) / (np.sqrt(s) + 1e-8)
        np.testing.assert_allclose(theta, expected, rtol=1e-14)


def test_its_options_are_generated_from_the_rule():
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    assert names[names.index("optimizer") :][:6] == ["optimizer", "momentum", "beta1", "beta2", "eps", "rho"]
    assert "rho" in config.RECIPE and DEFAULT_RECIPE["rho"] == 0.9
    assert TrainConfig(optimizer="rmsprop", rho=0.95).rho == 0.95
    with pytest.raises(ConfigError, match=r"^--rho must be in \[0, 1\), e.g. 0.9 \(got 1.5\)$"):
        TrainConfig(optimizer="rmsprop", rho=1.5)
    text = train_help()
    assert "--rho" in text and "RMSprop's ρ" in text and "sgd, momentum, nesterov, adam, rmsprop" in text


def test_a_clashing_hyper_parameter_is_refused_at_register_time_and_at_import():
    clash = variant("rmsprop2", hyperparams={"beta2": optim.Hyper(0.99, "another β₂", below_one=True)})
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    with pytest.raises(ConfigError, match=r"^update rule 'rmsprop2': --beta2 0.99 in \[0, 1\) clashes with 'adam'"):
        optim.register(clash)
    # The check that runs at import, on the built-in rules, refuses the same table:
    with pytest.raises(ConfigError, match="clashes with 'adam'"):
        optim.merged_hyperparams([*optim.RULES.values(), clash])
    assert optim.merged_hyperparams([optim.Momentum, optim.Nesterov]) == optim.MOMENTUM  # one record, shared
    with pytest.raises(ConfigError, match="'gamma' is already a TrainConfig option"):
        optim.register(variant("decaying", hyperparams={"gamma": optim.Hyper(0.5, "a decay", below_one=True)}))
    with pytest.raises(ConfigError, match="an update rule named 'rmsprop' is already registered"):
        optim.register(variant("rmsprop"))
    assert "rmsprop2" not in optim.RULES and "decaying" not in optim.RULES  # nothing half-registered
    assert [f.name for f in dataclasses.fields(TrainConfig)] == fields and "--gamma" in train_help()


def test_cuda_graph_asks_the_rule(mnist_dir, tmp_path):
    r = {**DEFAULT_RECIPE, "optimizer": "rmsprop"}
    assert refusal(r, RMSprop) is None  # its kernel's numbers are the same every step: a graph replays it
    TrainConfig(optimizer="rmsprop", cuda_graph=True)
    assert "(sgd, momentum, nesterov, rmsprop;" in train_help()
    changing = variant("rmsprop_t", RMSprop, graph_refusal="its decay changes every step")
    with optim.registered(changing):
        with pytest.raises(ConfigError, match=r"^--cuda-graph cannot capture --optimizer rmsprop_t: its decay"):
            TrainConfig(optimizer="rmsprop_t", cuda_graph=True)
    args = ["train", "--optimizer", "rmsprop", "--cuda-graph", "--device", "cpu", "--epochs", "1", "--train-size",
            "100", "--val-size", "0", "--test-size", "0", "--data-dir", str(mnist_dir), "--log-format", "json",
            "--save", str(tmp_path / "g.npz")]  # fmt: skip
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0 and "--cuda-graph: ignored on cpu" in result.output, result.output


def test_trained_through_the_library(mnist):
    X, y, X_test, y_test = mnist
    model = gpumlp.MLP((784, 32, 10), "relu", "ce", seed=0)
    gpumlp.fit(model, X[:4000], y[:4000], epochs=2, batch_size=32, lr=1e-3, seed=1, optimizer="rmsprop", rho=0.95)
    assert gpumlp.evaluate(model, X_test[:2000], y_test[:2000]) > 0.8  # (Adam: 0.84 here)


def cli_train(mnist_dir, save, *extra):
    args = ["train", "--optimizer", "rmsprop", "--rho", "0.95", "--lr", "0.001", "--layers", "784,32,10",
            "--activation", "relu", "--loss", "ce", "--train-size", "4000", "--val-size", "500", "--test-size",
            "1000", "--batch-size", "32", "--data-dir", str(mnist_dir), "--save", str(save), "--quiet",
            *extra]  # fmt: skip
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    return result


def test_trained_through_the_cli_saved_resumed_tested_and_exported(mnist_dir, mnist, tmp_path):
    whole, part = tmp_path / "whole.npz", tmp_path / "part.npz"
    cli_train(mnist_dir, whole, "--epochs", "2")
    meta = read_metadata(whole)
    assert meta["optimizer"]["name"] == "rmsprop" and meta["optimizer"]["hyper"] == {"rho": 0.95, "eps": 1e-8}
    assert meta["config"]["rho"] == 0.95 and meta["test_accuracy"] > 0.8
    cli_train(mnist_dir, part, "--epochs", "1")
    result = CliRunner().invoke(cli.app, ["train", "--resume", str(part), "--epochs", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    (resumed, _), (uninterrupted, _) = gpumlp.load(part), gpumlp.load(whole)
    np.testing.assert_array_equal(resumed.theta, uninterrupted.theta)  # the optimiser's state was in the file
    assert [e["train_loss"] for e in read_metadata(part)["history"]] == [e["train_loss"] for e in meta["history"]]

    result = CliRunner().invoke(cli.app, ["info", str(whole), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["config"]["optimizer"] == "rmsprop", result.output
    result = CliRunner().invoke(cli.app, ["test", str(whole), "--data-dir", str(mnist_dir), "--test-size", "500"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli.app, ["export", str(whole), str(tmp_path / "net.onnx")])
    assert result.exit_code == 0, result.output
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (test extra) is not installed")
    session = ort.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    X = mnist[2][:1000]
    out = session.run(None, {session.get_inputs()[0].name: np.rint(X * 255).astype(np.float32)})[0]  # (n, 10)
    assert np.array_equal(out.argmax(axis=1), np.asarray(uninterrupted.predict(X)))


def test_checkpoint_metadata_is_checked_against_the_registered_rule(mnist_dir, tmp_path):
    save = tmp_path / "r.json"
    cli_train(mnist_dir, save, "--epochs", "1")
    meta = json.loads(save.read_text())  # the metadata, with the parameters beside it
    meta["optimizer"]["hyper"]["rho"] = 1.5
    save.write_text(json.dumps(meta))
    result = CliRunner().invoke(cli.app, ["info", str(save)])
    assert result.exit_code == 2 and "optimizer.hyper.rho must be in [0, 1), got 1.5" in result.output, result.output
    meta["optimizer"]["hyper"]["rho"] = 0.95
    save.write_text(json.dumps(meta))
    optim.unregister("rmsprop")
    try:  # without the rule: the network loads, its run cannot go on
        assert CliRunner().invoke(cli.app, ["info", str(save)]).exit_code == 0
        result = CliRunner().invoke(cli.app, ["train", "--resume", str(save), "--epochs", "2"])
        assert result.exit_code == 2 and "register its rule (gpumlp.optim.register)" in result.output, result.output
    finally:
        optim.register(RMSprop)


@pytest.mark.parametrize("device", ["host build", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_its_cuda_kernel_matches_the_numpy_step(device, weight_decay, request):
    """Two float64 epochs with every fused kernel of CupyBackend, RMSprop's included (the class's
    ``cuda``), in the harness's host build (or on a GPU), against the numpy reference (``_update``)."""
    if device == "cuda":
        from gpumlp.backends.registry import get_backend

        be = get_backend("cuda")
    else:
        be = request.getfixturevalue("host_cuda")
    rng = np.random.default_rng(0)
    X, y = rng.random((120, 784)), rng.integers(0, 10, 120)
    thetas = []
    for backend in (CPU, be):
        m = MLP((784, 16, 10), "relu", "ce", seed=1, device=backend, dtype="float64")
        gpumlp.fit(m, X, y, epochs=2, batch_size=10, lr=0.01, seed=2, optimizer="rmsprop", rho=0.95,
                   weight_decay=weight_decay)  # fmt: skip
        thetas.append(backend.to_numpy(m.theta))
    np.testing.assert_allclose(thetas[1], thetas[0], rtol=1e-9, atol=1e-11)
    assert not np.array_equal(thetas[0], MLP((784, 16, 10), "relu", "ce", seed=1, dtype="float64").theta)
