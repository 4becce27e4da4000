"""The test report: confusion matrix, per-class scores and mistakes against hand-computed values,
on a network whose answers are rigged, and on the shipped network with real MNIST."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from gpumlp.cli import report
from gpumlp.errors import ConfigError
from gpumlp.formats.checkpoint import load
from gpumlp.model import MLP
from gpumlp.training import evaluation
from gpumlp.training.evaluation import evaluate
from standins.fake_device import FAKE, counters

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "gpumlp-784-256-10-relu-ce.npz"

# (true, predicted) for ten images. Digits 4–7 never appear; 8 is predicted once but never the
# true digit (support 0, so recall 0); 9 is the true digit twice but never predicted (precision 0).
PAIRS = [(0, 0), (0, 0), (0, 1), (1, 1), (1, 1), (1, 0), (2, 2), (9, 2), (9, 8), (3, 3)]
LIT = [0.9, 0.8, 0.3, 1.0, 0.7, 0.5, 0.6, 0.95, 0.2, 0.4]  # brightness of each image's one lit pixel
SCALE = 4.0
WRONG_BY_CONFIDENCE = [7, 5, 2, 8]  # the mistakes (true ≠ predicted), brightest first

CONFUSION = np.zeros((10, 10), dtype=int)
for _t, _p in PAIRS:
    CONFUSION[_t, _p] += 1

# Hand-computed from PAIRS: precision = right / predicted as d, recall = right / true d.
EXPECTED = {  # digit: (precision, recall, f1, support)
    0: (2 / 3, 2 / 3, 2 / 3, 3),  # predicted 0 three times (two right); three 0s
    1: (2 / 3, 2 / 3, 2 / 3, 3),
    2: (1 / 2, 1.0, 2 / 3, 1),  # predicted 2 twice (one right); the one 2 found; F1 = 2·½·1/(½+1)
    3: (1.0, 1.0, 1.0, 1),
    8: (0.0, 0.0, 0.0, 0),  # absent: recall undefined → 0; its one prediction is wrong
    9: (0.0, 0.0, 0.0, 2),  # never predicted: precision undefined → 0
}


def rigged(loss: str, device="cpu") -> MLP:
    """784-10 network with W0 = SCALE·I on the first ten pixels and b0 = 0: an image whose only lit
    pixel is k, of brightness v, gets output pre-activations SCALE·v for digit k and 0 for the rest."""
    model = MLP((784, 10), "sigmoid", loss, device=device, dtype="float64")
    W = np.zeros((784, 10))
    W[:10, :10] = SCALE * np.eye(10)
    model.params["W0"][...] = model.be.asarray(W)
    model.params["b0"][...] = 0.0
    return model


def rigged_data() -> tuple[np.ndarray, np.ndarray]:
    X = np.zeros((len(PAIRS), 784))
    for i, ((_, p), v) in enumerate(zip(PAIRS, LIT)):
        X[i, p] = v  # lighting pixel p makes the network answer p
    return X, np.array([t for t, _ in PAIRS], dtype=np.uint8)


def expected_confidence(loss: str, v: float) -> float:
    z = SCALE * v
    if loss == "ce":
        return np.exp(z) / (np.exp(z) + 9)  # softmax over (z, 0, …, 0)
    s = 1 / (1 + np.exp(-z))  # the sigmoid of the predicted output; the nine others are σ(0) = ½
    return s / (s + 9 / 2)  # divided by the sum of all ten, as gpumlp predict reports it


def test_confusion_matrix_and_scores_match_hand_counts(device):
    X, y = rigged_data()
    model = rigged("ce", device)
    r = report.test_report(model, X, y)
    np.testing.assert_array_equal(r["confusion"], CONFUSION)
    assert r["n"] == 10 and r["correct"] == 6
    assert r["accuracy"] == np.trace(CONFUSION) / 10 == 0.6 == evaluate(model, X, y)
    for c in r["classes"]:
        p, rec, f1, support = EXPECTED.get(c["digit"], (0.0, 0.0, 0.0, 0))  # 4–7: absent, never predicted
        assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((p, rec, f1), abs=1e-12)
        assert c["support"] == support
    assert r["macro"]["precision"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2 + 1) / 10)
    assert r["macro"]["recall"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 1) / 10)
    assert r["macro"]["f1"] == pytest.approx((3 * 2 / 3 + 1) / 10)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_mistakes_are_the_most_confident_wrong_answers_first(loss):
    X, y = rigged_data()
    r = report.test_report(rigged(loss), X, y, n_mistakes=3)
    assert r["confidence"] == {"ce": "softmax", "mse": "sigmoid outputs divided by their sum"}[loss]
    assert [m["index"] for m in r["mistakes"]] == WRONG_BY_CONFIDENCE[:3]
    for m in r["mistakes"]:
        assert (m["true"], m["predicted"]) == PAIRS[m["index"]]
        assert m["confidence"] == pytest.approx(expected_confidence(loss, LIT[m["index"]]), rel=1e-12)
    assert [m["index"] for m in report.test_report(rigged(loss), X, y)["mistakes"]] == WRONG_BY_CONFIDENCE
    assert report.test_report(rigged(loss), X, y, n_mistakes=0)["mistakes"] == []


def test_one_device_to_host_transfer_per_chunk_never_per_image(monkeypatch):
    X, y = rigged_data()
    model = rigged("ce", FAKE)  # the strict fake device: a stray host/device mix would raise
    whole = report.test_report(model, X, y)
    monkeypatch.setattr(evaluation, "EVAL_CHUNK", 3)  # 10 images → chunks of 3, 3, 3, 1
    counters.reset()
    chunked = report.test_report(model, X, y)
    assert counters.to_host == 4
    assert chunked == whole


def test_report_is_plain_json_without_nan():
    X, y = rigged_data()
    r = report.test_report(rigged("mse"), X, y)
    assert json.loads(json.dumps(r, allow_nan=False)) == r


def test_no_images_gives_an_empty_report():
    r = report.test_report(rigged("ce"), np.zeros((0, 784)), np.zeros(0, dtype=np.int64))
    assert r["n"] == 0 and r["accuracy"] == 0 and r["mistakes"] == [] and np.sum(r["confusion"]) == 0
    assert all(c["precision"] == c["recall"] == c["f1"] == 0 for c in r["classes"])


@pytest.mark.parametrize(
    ("labels", "n_mistakes", "fragment"),
    [
        (np.zeros(9, dtype=int), 10, "one label per image"),
        (np.full(10, 10), 10, "labels must be integers 0–9"),
        (np.full(10, -1), 10, "labels must be integers 0–9"),
        (np.zeros(10), 10, "labels must be integers 0–9"),  # float labels
        (np.zeros(10, dtype=int), -1, "--mistakes must be 0 or more"),
    ],
)
def test_bad_inputs_are_one_line_errors(labels, n_mistakes, fragment):
    X, _ = rigged_data()
    with pytest.raises(ConfigError, match=fragment) as e:
        report.test_report(rigged("ce"), X, labels, n_mistakes=n_mistakes)
    assert "\n" not in str(e.value)


def test_format_report_aligns_the_tables():
    X, y = rigged_data()
    r = report.test_report(rigged("ce"), X, y, n_mistakes=4)
    text = report.format_report(r)
    lines = text.splitlines()
    assert lines[:2] == ["test accuracy 60.00% (10 images)", "6 correct, 4 wrong"]  # line 1 as gpumlp train's
    assert "\x1b" not in text  # no colour codes

    scores = lines[lines.index(next(x for x in lines if x.lstrip().startswith("digit"))) :][:12]
    assert len({len(x) for x in scores}) == 1  # header, ten digits and the macro row, equally wide
    assert scores[3].split() == ["2", "0.5000", "1.0000", "0.6667", "1"]
    assert scores[11].split() == ["macro", "0.2833", "0.3333", "0.3000", "10"]

    top = next(i for i, x in enumerate(lines) if x.startswith("true \\ pred"))
    matrix = lines[top : top + 11]
    assert matrix[0].split() == ["true", "\\", "pred", *map(str, range(10))]
    assert len({len(x) for x in matrix}) == 1  # every row as wide as the header: right-aligned columns
    for d in range(10):
        assert matrix[1 + d].split() == [str(d), *map(str, CONFUSION[d])]
    ends = [m.end() for m in re.finditer(r"\d", matrix[0])]  # where each column's header digit ends
    for row in matrix[1:]:
        assert [m.end() for m in re.finditer(r"\d+", row)][1:] == ends  # each count ends right under it

    table = lines[lines.index("4 most confident mistakes (confidence: softmax)") + 1 :]
    assert table[0].split() == ["index", "true", "predicted", "confidence"]
    conf = 100 * expected_confidence("ce", LIT[7])
    assert table[1].split() == ["7", "9", "2", f"{conf:.2f}%"]
    assert len(table) == 5 and len({len(x) for x in table}) == 1


def test_shipped_network_on_real_mnist(mnist):
    _, _, X_test, y_test = mnist
    model, meta = load(SHIPPED)
    r = report.test_report(model, X_test, y_test)
    assert r["accuracy"] == evaluate(model, X_test, y_test) == 0.98 == meta["test_accuracy"]
    cm = np.array(r["confusion"])
    assert cm.sum() == 10_000 and np.trace(cm) == r["correct"] == 9800
    rows = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert cm.sum(axis=1).tolist() == rows == np.bincount(y_test, minlength=10).tolist()
    assert [c["support"] for c in r["classes"]] == rows
    assert cm.sum(axis=0).tolist() == np.bincount(model.be.to_numpy(model.predict(X_test)), minlength=10).tolist()
    confidences = [m["confidence"] for m in r["mistakes"]]
    assert len(confidences) == 10 and confidences == sorted(confidences, reverse=True)
    assert all(y_test[m["index"]] == m["true"] != m["predicted"] for m in r["mistakes"])
    assert 0.97 < r["macro"]["f1"] < 0.99
    json.dumps(r, allow_nan=False)


def test_mistakes_0_lists_none_and_never_claims_there_were_none():
    X, y = rigged_data()
    text = report.format_report(report.test_report(rigged("ce"), X, y, n_mistakes=0))
    assert "no mistakes" not in text and "most confident" not in text and "4 wrong" in text
    assert text.splitlines()[-1].split()[0] == "9"  # the report ends with the confusion matrix's last row
