"""The API checks what the CLI checks: counts, empty arrays, missing labels, metadata JSON cannot
hold, and images' range and dtype (uint8 0-255 divided by 255 as load_mnist does; floats in [0, 1])."""

from __future__ import annotations

import numpy as np
import pytest

import gpumlp
from gpumlp.errors import CheckpointError, ConfigError
from gpumlp.model import MLP, parse_sizes
from gpumlp.training.evaluation import evaluate
from gpumlp.training.loop import fit

RNG = np.random.default_rng(3)
X = RNG.random((60, 784)).astype(np.float32)  # (60, 784) in [0, 1]
Y = np.arange(60) % 10


def train(X_train=X, **kw):
    model = MLP((784, 12, 10), device=kw.pop("device", "cpu"))
    kw = {"epochs": 2, "batch_size": 10, "lr": 0.5, "seed": 0, **kw}
    fit(model, X_train, Y, **kw)
    return model


def test_integer_valued_floats_are_counts_others_are_refused():
    a, b = train(batch_size=10.0, epochs=2.0), train()
    np.testing.assert_array_equal(a.theta, b.theta)
    with pytest.raises(ConfigError, match="whole number"):
        train(batch_size=10.5)


def test_empty_and_missing_inputs_are_one_line_errors():
    with pytest.raises(ConfigError, match="at least one image"):
        MLP((784, 10)).loss_and_grads(X[:0], Y[:0])
    with pytest.raises(ConfigError, match="without y_val"):
        train(X_val=X)
    with pytest.raises(ConfigError, match="empty size between commas"):
        parse_sizes("784,,10")


def test_metadata_json_cannot_hold_is_refused_by_name(tmp_path):
    with pytest.raises(CheckpointError, match="'note'"):
        gpumlp.save(tmp_path / "m.npz", MLP((784, 10)), note=object())
    assert not (tmp_path / "m.npz").exists()


def test_uint8_images_are_divided_by_255_as_load_mnist_does(device):
    pixels = (X * 255).round().astype(np.uint8)  # what read_idx returns
    scaled = pixels / np.float32(255)
    a, b = train(pixels, device=device), train(scaled, device=device)
    np.testing.assert_allclose(a.be.to_numpy(a.theta), b.be.to_numpy(b.theta), rtol=1e-6, atol=1e-6)
    assert evaluate(a, pixels, Y) == evaluate(a, scaled, Y)


OUTSIDE = r"outside \[0, 1\]"


@pytest.mark.parametrize(
    "bad, words", [(X * 255, OUTSIDE), (np.where(X > 0.9, np.nan, X), "NaN"), (X - 0.5, OUTSIDE),
                   (np.where(X > 0.9, np.inf, X), "infinite")],
)  # fmt: skip
def test_images_outside_zero_to_one_are_refused_everywhere(bad, words, device):
    model = MLP((784, 10), device=device)
    for call in (lambda: train(bad, device=device), lambda: evaluate(model, bad, Y), lambda: model.predict(bad),
                 lambda: model.loss_and_grads(bad, Y), lambda: train(X_val=bad, y_val=Y, device=device)):  # fmt: skip
        with pytest.raises(ConfigError, match=words) as e:
            call()
        assert "\n" not in str(e.value)


def test_the_range_is_read_once_per_fit_never_per_step(monkeypatch):
    from gpumlp import inputs

    calls = []
    real = inputs.check_pixels
    monkeypatch.setattr(inputs, "check_pixels", lambda be, arrays: (calls.append(list(arrays)), real(be, arrays)))
    import gpumlp.training.evaluation as evaluation
    import gpumlp.training.loop as loop

    monkeypatch.setattr(loop, "check_pixels", inputs.check_pixels)
    monkeypatch.setattr(evaluation, "check_pixels", inputs.check_pixels)
    train(X_val=X[:20], y_val=Y[:20], epochs=3, batch_size=5)  # 36 steps, 3 validations
    assert calls == [["X_train", "X_val"]]
