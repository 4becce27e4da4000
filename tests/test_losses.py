"""Losses as records (gpumlp/losses.py): the confidence rule, the registry, and a loss added as one
record inside this test — label-smoothed cross-entropy — working everywhere a user meets it: its
delta against finite differences, training through the library and the CLI, bit-exact resume,
``gpumlp test``, ONNX export checked by onnxruntime and its CUDA kernel on the host harness."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

import gpumlp
from gpumlp.backends.cpu import CPU
from gpumlp.cli import commands as cli
from gpumlp.cli.predict import predict_images
from gpumlp.errors import ConfigError
from gpumlp.losses import (
    LOSSES,
    Loss,
    get,
    logsumexp,
    register,
    registered,
    share_of_sum,
    softmax,
    softmax_head,
    softmax_kernel,
)
from standins.kernel_harness import CXX, NVCC, all_specs, build_kernels, c_name, host_backend
from standins.variant_run import invoke, resumed_and_straight

runner = CliRunner()
OPTIONS = ("--loss", "ls-ce", "--activation", "relu")  # the variant under test, on every train command line
EPS = 0.1  # the share of each target spread evenly over the 10 classes


# ---------------------------------------------------------------- the added record


def smoothed(Y):
    return Y * (1 - EPS) + EPS / Y.shape[1]  # (n, 10) t = (1 − ε)·y + ε/10, rows sum to 1


def ls_cross_entropy(xp, Z, A, Y):
    T = smoothed(Y)  # (n, 10)
    total = logsumexp(xp, Z).sum() - xp.vdot(Z, T)  # Σ −t·log softmax(z) = Σ (lse(z) − t·z), as Σt = 1
    return total, A - T  # (n, 10) d total / dz = softmax(z) − t


LS_CE_KERNEL = softmax_kernel(f"y[r + j] * (T(1) - T({EPS})) + T({EPS}) / T(k)")  # t, as smoothed() makes it

LS_CE = Loss("ls-ce", "softmax, cross-entropy against targets smoothed by 0.1", softmax, ls_cross_entropy,
             LS_CE_KERNEL, softmax_head, "softmax (label-smoothed training)",
             probabilities=True, sigmoid_outputs=False)  # fmt: skip


@pytest.fixture
def ls_ce():
    """gpumlp with label-smoothed cross-entropy registered, and nothing else changed."""
    with registered(LS_CE):
        yield LS_CE
    assert "ls-ce" not in LOSSES


def test_delta_matches_finite_differences_in_float64(ls_ce):
    rng = np.random.default_rng(0)
    Z, Y = rng.standard_normal((4, 10)) * 3, np.eye(10)[rng.integers(0, 10, 4)]

    def total(Z):
        return float(ls_ce.total_and_delta(np, Z, ls_ce.output(np, Z), Y)[0])

    _, delta = ls_ce.total_and_delta(np, Z, ls_ce.output(np, Z), Y)
    numeric, h = np.zeros_like(Z), 1e-6
    for index in np.ndindex(Z.shape):
        E = np.zeros_like(Z)
        E[index] = h
        numeric[index] = (total(Z + E) - total(Z - E)) / (2 * h)
    np.testing.assert_allclose(delta, numeric, rtol=1e-6, atol=1e-8)
    T = smoothed(Y)  # the true class gets 0.91, the others 0.01
    np.testing.assert_allclose(T.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.sort(T[0])[-2:], [0.01, 0.91])


def test_trains_through_the_library_api(ls_ce, mnist):
    X_train, y_train, X_test, y_test = mnist
    model = gpumlp.MLP((784, 32, 10), "relu", loss="ls-ce", seed=0)
    gpumlp.fit(model, X_train[:4000], y_train[:4000], epochs=5, batch_size=16, lr=0.3, seed=1)  # ~90%
    assert gpumlp.evaluate(model, X_test[:2000], y_test[:2000]) > 0.85
    P = model.be.to_numpy(model.predict_proba(X_test[:5]))
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-5)  # the softmax head


def test_trains_resumes_tests_and_exports_through_the_cli(ls_ce, mnist, mnist_dir, tmp_path):
    """Saved after 1 epoch and resumed to 2, the run equals an uninterrupted 2-epoch run bit for bit;
    ``gpumlp test`` words its confidences from the record; the ONNX graph agrees with onnxruntime."""
    part, resumed, meta, straight = resumed_and_straight(mnist_dir, tmp_path, *OPTIONS)
    assert resumed.loss == meta["loss"] == "ls-ce" and meta["train_state"]["epochs_done"] == 2
    np.testing.assert_array_equal(resumed.theta, straight.theta)

    report = invoke(["test", str(part), "--data-dir", str(mnist_dir), "--test-size", "1000"]).output
    assert "(confidence: softmax (label-smoothed training))" in report
    _, _, X_test, y_test = mnist
    [row] = predict_images(resumed, [X_test[0]])
    assert sum(row["probabilities"]) == pytest.approx(1.0) and row["digit"] == y_test[0]

    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (test extra) is not installed")
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    invoke(["export", str(part), str(tmp_path / "ls.onnx")])
    session = ort.InferenceSession(str(tmp_path / "ls.onnx"), providers=["CPUExecutionProvider"])
    pixels = np.rint(X_test[:300] * 255).astype(np.float32)
    P = session.run(["probabilities"], {"pixels": pixels})[0]
    np.testing.assert_allclose(P, resumed.be.to_numpy(resumed.predict_proba(X_test[:300])), atol=1e-5)


def test_its_cuda_kernel_matches_the_record_on_the_host_harness(ls_ce, tmp_path, monkeypatch):
    """The record's kernel compiled by the same harness as every other kernel, run inside
    CupyBackend.loss_delta, against the numpy record; huge logits included."""
    if NVCC is None and CXX is None:
        pytest.skip("neither nvcc nor a C++ compiler is installed")
    name = f"loss_{c_name(ls_ce.name)}"
    assert all_specs()[name] == ls_ce.cuda  # the harness sees what is registered
    be = host_backend(build_kernels(tmp_path, {name: ls_ce.cuda}), monkeypatch)
    rng = np.random.default_rng(1)
    Z, b, Y = rng.standard_normal((7, 10)) * 3, rng.standard_normal(10), np.eye(10)[rng.integers(0, 10, 7)]
    Z[0, 3] = 800.0  # exp would overflow without the shift
    rows, ref_rows = np.full(7, 0.25), np.full(7, 0.25)
    delta = be.loss_delta(Z.copy(), b, Y, ls_ce, 7, rows)
    ref_delta = CPU.loss_delta(Z.copy(), b, Y, ls_ce, 7, ref_rows)
    assert (rows > 0.25).all() and rows.sum() == pytest.approx(ref_rows.sum(), rel=1e-13)
    np.testing.assert_allclose(delta, ref_delta, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------- the registry and the confidence rule


def test_register_refuses_a_duplicate_name_and_unregisters_cleanly(ls_ce):
    with pytest.raises(ConfigError, match="a loss named 'ls-ce' is already registered; give the new record"):
        register(ls_ce)
    with pytest.raises(ConfigError, match="a loss named 'ce' is already registered"):
        register(LOSSES["ce"])
    assert get("ls-ce") is ls_ce


def test_an_unregistered_loss_is_refused_everywhere():
    assert "ls-ce" not in LOSSES
    with pytest.raises(ConfigError, match="unknown loss 'ls-ce': choose one of mse, ce"):
        gpumlp.MLP((784, 10), loss="ls-ce")
    with pytest.raises(ConfigError, match="unknown loss 'ls-ce': choose one of mse, ce"):
        gpumlp.TrainConfig(loss="ls-ce")


@pytest.mark.parametrize("name", ["mse", "ce"])
def test_confidences_sum_to_one_and_keep_the_ranking(name):
    loss = LOSSES[name]
    rng = np.random.default_rng(2)
    Z = rng.standard_normal((6, 10)) * 4
    A = loss.output(np, Z.copy())  # (6, 10)
    C = loss.confidences(np, A)
    np.testing.assert_allclose(C.sum(axis=1), 1.0, rtol=1e-12)
    assert (C.argmax(axis=1) == A.argmax(axis=1)).all() and (C >= 0).all()
    if loss.probabilities:
        np.testing.assert_allclose(C, A, rtol=1e-12)  # already a law: the same numbers
    else:
        np.testing.assert_allclose(C, A / A.sum(axis=1, keepdims=True), rtol=1e-12)


def test_share_of_sum_of_all_zero_outputs_is_zero_not_nan():
    C = share_of_sum(np, np.zeros((2, 10), dtype=np.float32))
    assert C.dtype == np.float32 and not np.isnan(C).any() and (C == 0).all()


def test_train_help_names_a_loss_registered_after_import(ls_ce):
    """`gpumlp train --help` is made when it is shown: --loss lists label-smoothed CE among its
    choices, as --loss accepts it, and no longer once it is unregistered."""

    def loss_help() -> str:
        result = runner.invoke(cli.app, ["train", "--help"], env={"COLUMNS": "300", "NO_COLOR": "1"})
        assert result.exit_code == 0, result.output
        return " ".join(result.output.replace("│", " ").split())

    assert f"or ls-ce ({ls_ce.help}) (gpumlp/losses.py)" in loss_help()
    with registered(replace(ls_ce, name="ls-ce-2", help="another")):
        assert "ls-ce-2 (another)" in loss_help() and "ls-ce (" in loss_help()
    assert "ls-ce-2" not in loss_help()


def test_every_record_is_complete_and_the_help_names_it():
    from gpumlp.training.config import TrainConfig, help_of

    help_text = help_of(TrainConfig.__dataclass_fields__["loss"])
    for name, loss in LOSSES.items():
        assert loss.name == name and f"{name} ({loss.help})" in help_text
        assert loss.cuda[0].startswith("raw T z") and "row +=" in loss.cuda_body and "delta[" in loss.cuda_body
        assert loss.confidence_name and loss.onnx_head is not None
