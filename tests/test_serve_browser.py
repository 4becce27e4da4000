"""The drawing page in a real browser: headless Chromium (the system's, driven by Playwright) draws
real MNIST test digits as pen strokes, and the page must show exactly what `gpumlp predict` says
about the PNG the page sent. Skipped, with the reason, where Playwright or Chromium is absent.

GPUMLP_SCREENSHOT=path.png also saves a screenshot of the page: the drawn digit the network is least sure of."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpumlp.data.images import load_digit
from standins.serve_process import CHECKPOINT, running_server

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (test extra) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
pytest.importorskip("PIL", reason="Pillow is not installed")


def chromium_path() -> str | None:
    for name in (os.environ.get("GPUMLP_CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium executable (Debian: apt-get install chromium; or set GPUMLP_CHROMIUM)"
)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
DIGITS = (0, 1, 2, 3, 4, 5, 6, 7)  # MNIST test images drawn on the page
SCALE = 10  # board pixels per MNIST pixel: the 280×280 board holds a 28×28 digit


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    with running_server(CHECKPOINT) as (proc, url), sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh profile
            executable_path=CHROMIUM, headless=True, args=ARGS, viewport={"width": 1040, "height": 500},
        )  # fmt: skip
        try:
            page = context.new_page()
            sent = []  # the PNG bodies the page posted, in order
            page.on("request", lambda r: sent.append(r.post_data_buffer) if r.url.endswith("/api/predict") else None)
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.includes('test images')")
            yield page, sent
        finally:
            context.close()


def strokes(x784, threshold=0.5) -> list[tuple[int, int, int]]:
    """The digit as horizontal pen strokes: (row, first column, last column) of each run of ink."""
    img = np.asarray(x784).reshape(28, 28) > threshold
    runs = []
    for r in range(28):
        cols = np.flatnonzero(img[r])
        if cols.size:
            breaks = np.flatnonzero(np.diff(cols) > 1)
            for a, b in zip(np.r_[0, breaks + 1], np.r_[breaks, cols.size - 1]):
                runs.append((r, int(cols[a]), int(cols[b])))
    return runs


def draw(page, x784) -> None:
    """Move the mouse over the digit's dark pixels, pen down, as a person tracing it would."""
    box = page.locator("#board").bounding_box()
    at = lambda i: SCALE * i + SCALE / 2  # noqa: E731  centre of MNIST pixel i on the board
    for r, c0, c1 in strokes(x784):
        page.mouse.move(box["x"] + at(c0), box["y"] + at(r))
        page.mouse.down()
        page.mouse.move(box["x"] + at(c1), box["y"] + at(r), steps=max(2, c1 - c0))
        page.mouse.up()


def settled(page) -> dict:
    """Once the page's answer belongs to its current drawing: digit, probabilities, preview."""
    page.wait_for_function(
        "document.getElementById('result').dataset.revision === document.getElementById('board').dataset.revision"
    )
    return page.evaluate(
        """() => ({
        digit: document.getElementById('digit').textContent,
        probabilities: [...document.querySelectorAll('#bars .row')].map(r => r.dataset.p),
        error: document.getElementById('error').textContent,
        preview: Array.from(document.getElementById('preview').getContext('2d').getImageData(0, 0, 28, 28).data)
                      .filter((_, i) => i % 4 === 0),
    })"""
    )


def gpumlp_predict(png: bytes, path: Path) -> dict:
    """`gpumlp predict --json`, the real command, on a file."""
    path.write_bytes(png)
    run = subprocess.run([sys.executable, "-m", "gpumlp", "predict", str(CHECKPOINT), str(path), "--json"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)["predictions"][0]


def assert_page_is_gpumlp_predict(shown: dict, png: bytes, path: Path) -> dict:
    want = gpumlp_predict(png, path)
    assert shown["error"] == ""
    assert shown["digit"] == str(want["digit"])
    assert [float(p) for p in shown["probabilities"]] == want["probabilities"]  # the numbers, to the last bit
    x = load_digit(path)  # what the network saw: the page draws it from the server's preview
    assert shown["preview"] == np.rint(x.astype(np.float64) * 255).astype(int).tolist()
    return want


def test_drawn_mnist_digits_get_gpumlp_predicts_answer(browser_page, mnist, tmp_path):
    page, sent = browser_page
    _, _, X, y = mnist
    correct, least_sure = 0, 1.0
    for i in DIGITS:
        page.click("#clear")
        draw(page, X[i])
        shown = settled(page)
        want = assert_page_is_gpumlp_predict(shown, sent[-1], tmp_path / f"drawn-{i}.png")
        correct += want["digit"] == y[i]
        if os.environ.get("GPUMLP_SCREENSHOT") and max(want["probabilities"]) < least_sure:  # the most telling bars
            least_sure = max(want["probabilities"])
            page.screenshot(path=os.environ["GPUMLP_SCREENSHOT"])
    print(f"{correct} of {len(DIGITS)} drawn digits recognised")
    assert correct >= len(DIGITS) - 1, f"only {correct} of {len(DIGITS)} drawn digits recognised"


def test_undo_and_clear(browser_page, mnist, tmp_path):
    page, sent = browser_page
    page.click("#clear")
    draw(page, mnist[2][0])  # a 7
    before = settled(page)
    n_sent = len(sent)
    page.click("#undo")  # drops the last stroke: a new drawing, a new request, a new answer
    after = settled(page)
    assert len(sent) > n_sent and sent[-1] != sent[n_sent - 1]
    assert after["preview"] != before["preview"]
    assert_page_is_gpumlp_predict(after, sent[-1], tmp_path / "undone.png")
    page.click("#clear")
    cleared = settled(page)
    assert cleared["digit"] == "–" and cleared["probabilities"] == [""] * 10 and not any(cleared["preview"])
