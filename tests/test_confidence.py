"""One confidence rule everywhere: a network gives the same confidence for the same image in
`gpumlp test`'s report, `gpumlp predict --json` and `gpumlp serve`'s API, each through its loss
record's rule (gpumlp/losses.py). Checked on an mse network, whose sigmoid outputs are not
confidences until the rule divides them by their sum."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import gpumlp
from gpumlp.cli import commands as cli
from gpumlp.losses import LOSSES

runner = CliRunner()


def invoke(args: list[str]) -> str:
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def mse_network(tmp_path_factory, mnist_dir):
    """A 784-16-10 mse network trained for 2 epochs on 500 images: unsure enough to make mistakes."""
    path = tmp_path_factory.mktemp("confidence") / "mse.npz"
    invoke(["train", "--layers", "784,16,10", "--loss", "mse", "--epochs", "2", "--train-size", "500",
            "--val-size", "100", "--test-size", "0", "--data-dir", str(mnist_dir), "--save", str(path),
            "--threads", "1", "--quiet"])  # fmt: skip
    return path


def test_report_and_predict_give_an_mse_network_the_same_confidence(mse_network, mnist_dir):
    report = json.loads(invoke(["test", str(mse_network), "--data-dir", str(mnist_dir), "--test-size", "300",
                                "--mistakes", "5", "--json"]))  # fmt: skip
    assert len(report["mistakes"]) == 5
    for m in report["mistakes"]:
        args = ["predict", str(mse_network), "--index", str(m["index"]), "--data-dir", str(mnist_dir), "--json"]
        answer = json.loads(invoke(args))
        [row] = answer["predictions"]
        assert row["digit"] == m["predicted"] and row["label"] == m["true"]
        # the same pixels through one forward pass each (float32, batches of other sizes): to rounding
        assert m["confidence"] == pytest.approx(row["top3"][0][1], rel=1e-5)
        assert m["confidence"] == pytest.approx(max(row["probabilities"]), rel=1e-5)
        assert report["confidence"] == answer["probabilities"] == "sigmoid outputs divided by their sum"


def test_the_api_gives_what_predict_gives_and_names_the_same_rule(mse_network, mnist, tmp_path):
    pytest.importorskip("starlette", reason="the serve extra (Starlette) is not installed")
    pytest.importorskip("httpx", reason="httpx (test extra, for Starlette's TestClient) is not installed")
    Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")
    from starlette.testclient import TestClient

    from gpumlp.cli import serve

    _, _, X_test, _ = mnist
    png = tmp_path / "digit.png"
    Image.fromarray(np.rint(255 * (1 - X_test[7].reshape(28, 28))).astype(np.uint8)).resize((112, 112)).save(png)
    want = json.loads(invoke(["predict", str(mse_network), str(png), "--json"]))
    model, meta = gpumlp.load(mse_network)
    with TestClient(serve.create_app(serve.Predictor(model, meta, "mse.npz")), base_url="http://127.0.0.1") as c:
        info = c.get("/api/model").json()
        got = c.post("/api/predict", content=png.read_bytes(), headers={"Content-Type": "image/png"}).json()
    assert info["probabilities"] == want["probabilities"] == LOSSES["mse"].confidence_name
    [row] = want["predictions"]
    assert got["probabilities"] == row["probabilities"] and got["confident"] is row["confident"]
    assert sum(got["probabilities"]) == pytest.approx(1.0)
    assert info["confidence_floor"] == meta["confidence_floor"]["value"]
