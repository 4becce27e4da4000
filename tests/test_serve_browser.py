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
def browser(tmp_path_factory):
    """A real `gpumlp serve` and a fresh Chromium profile: (context, the server's URL, Playwright)."""
    with running_server(CHECKPOINT) as (proc, url), sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh profile
            executable_path=CHROMIUM, headless=True, args=ARGS, viewport={"width": 1040, "height": 500},
        )  # fmt: skip
        try:
            yield context, url, p
        finally:
            context.close()


def open_page(context, url):
    """A new tab on the page, once the network's description has loaded; also returns the list of
    PNG bodies the page posts, in order."""
    page = context.new_page()
    sent = []
    page.on("request", lambda r: sent.append(r.post_data_buffer) if r.url.endswith("/api/predict") else None)
    page.goto(url)
    page.wait_for_function("document.getElementById('model').textContent.includes('test images')")
    return page, sent


@pytest.fixture(scope="module")
def browser_page(browser):
    page, sent = open_page(*browser[:2])
    yield page, sent
    page.close()


@pytest.fixture
def fresh_page(browser):
    """A tab of its own, for tests that watch everything a page load does or slow its network."""
    page, sent = open_page(*browser[:2])
    yield page, sent
    page.close()


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


ROWS = "[...document.querySelectorAll('#bars .row')]"


def shown(page) -> dict:
    """What the answer card shows right now (no waiting)."""
    return page.evaluate(
        f"""() => ({{
        revision: Number(document.getElementById('result').dataset.revision),
        digit: document.getElementById('digit').textContent,
        hint: document.getElementById('confidence').textContent,
        error: document.getElementById('error').textContent,
        bars: {ROWS}.filter(r => r.dataset.p !== '').length,
        top: {ROWS}.filter(r => r.classList.contains('top')).length,
    }})"""
    )


def in_flight(page) -> list[int]:
    """After each /api/predict request starts or ends, how many were in flight, in event order."""
    log, now = [], [0]

    def step(request, by):
        if request.url.endswith("/api/predict"):
            now[0] += by
            log.append(now[0])

    page.on("request", lambda r: step(r, 1))
    page.on("requestfinished", lambda r: step(r, -1))
    page.on("requestfailed", lambda r: step(r, -1))
    return log


def test_bars_follow_a_slow_stroke_before_the_pen_lifts(fresh_page):
    """With every answer 150 ms away (as over a slow network) and the pen moving every 20 ms, each
    answer arrives after the drawing changed again: it must be shown anyway, one request at a time."""
    page, sent = fresh_page
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions",
             {"offline": False, "latency": 150, "downloadThroughput": -1, "uploadThroughput": -1})  # fmt: skip
    flight = in_flight(page)
    box = page.locator("#board").bounding_box()
    page.mouse.move(box["x"] + 140, box["y"] + 40)
    page.mouse.down()
    seen = []  # (bars filled, revision answered) after each pen move
    for i in range(50):  # a vertical stroke, a "1", drawn over about 1.5 s
        page.mouse.move(box["x"] + 140, box["y"] + 40 + 4 * i)
        page.wait_for_timeout(20)
        now = shown(page)
        seen.append((now["bars"], now["revision"]))
    page.mouse.up()
    assert any(bars == 10 for bars, _ in seen), f"no answer shown while drawing ({len(sent)} requests sent)"
    answered = [rev for _, rev in seen]
    assert answered == sorted(answered), f"an older answer replaced a newer one: {answered}"
    assert len(set(answered)) >= 3, f"the bars changed only {len(set(answered)) - 1} times during the stroke"
    assert flight and max(flight) == 1, f"requests in flight at once: {max(flight, default=0)}"
    assert settled(page)["error"] == ""


def test_clear_resets_every_bar_and_the_highlight(browser_page, mnist):
    page, _ = browser_page
    page.click("#clear")
    draw(page, mnist[2][0])  # a 7
    assert settled(page)["digit"] != "–" and shown(page)["top"] == 1
    page.click("#clear")
    settled(page)
    after = shown(page)
    assert (after["digit"], after["bars"], after["top"], after["error"]) == ("–", 0, 0, "")


def test_the_cards_do_not_move_when_an_answer_appears(browser_page, mnist):
    page, _ = browser_page
    page.click("#clear")
    settled(page)
    before = {card: page.locator(card).bounding_box() for card in ("#preview", "#result", "#board")}
    draw(page, mnist[2][1])  # a 2
    assert settled(page)["digit"] != "–"
    after = {card: page.locator(card).bounding_box() for card in before}
    assert after == before


def test_a_single_click_is_answered_quietly(fresh_page):
    """A tap draws a dot: no request, no error, a hint to keep drawing."""
    page, sent = fresh_page
    box = page.locator("#board").bounding_box()
    page.mouse.click(box["x"] + 100, box["y"] + 100)
    settled(page)
    page.wait_for_timeout(300)  # time for a request the page should not send
    now = shown(page)
    assert sent == []
    assert (now["digit"], now["bars"], now["error"]) == ("–", 0, "")
    assert "keep drawing" in now["hint"]


def test_pen_down_sends_nothing_until_there_is_ink(fresh_page):
    """Pen-down on an empty board is a one-point drawing: nothing is sent; the first request goes
    once the stroke is longer than the pen is wide, and every answer is a 200."""
    page, sent = fresh_page
    statuses = []
    page.on("response", lambda r: statuses.append(r.status) if r.url.endswith("/api/predict") else None)
    box = page.locator("#board").bounding_box()
    page.mouse.move(box["x"] + 140, box["y"] + 60)
    page.mouse.down()
    page.wait_for_timeout(300)
    assert sent == []
    page.mouse.move(box["x"] + 140, box["y"] + 200, steps=10)
    page.mouse.up()
    assert settled(page)["error"] == ""
    page.wait_for_timeout(100)
    assert sent and statuses and set(statuses) == {200}, statuses


def test_loading_the_page_logs_no_error(browser, tmp_path):
    """No 404 for /favicon.ico (Chromium's console reports it; Playwright's response events do not
    see the browser's own favicon request) and nothing else failing. A browser of its own: one that
    has loaded the page before remembers the missing icon and does not ask again."""
    _, url, p = browser
    context = p.chromium.launch_persistent_context(
        str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS
    )  # fmt: skip
    page = context.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(url, wait_until="networkidle")
    page.wait_for_timeout(500)
    context.close()
    assert errors == []


def test_not_sure_is_shown_and_cleared(browser, tmp_path):
    """The page's "not sure" state: against a copy of the network whose floor is 100% (every answer
    is below it), a drawn digit is greyed with the reason, as `gpumlp predict --json` says for the
    PNG the page sent; Clear takes the state away."""
    import gpumlp

    model, meta = gpumlp.load(CHECKPOINT)
    doubtful = tmp_path / "doubtful.npz"
    floor = {"value": 1.0, "fraction": 0.01, "images": 1}
    gpumlp.save(
        doubtful, model, test_accuracy=meta["test_accuracy"], test_size=meta["test_size"], confidence_floor=floor
    )
    p = browser[2]  # the module's Playwright: a second one cannot run beside it
    with running_server(doubtful) as (proc, url):
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1040, "height": 500},
        )  # fmt: skip
        try:
            page, sent = open_page(context, url)
            box = page.locator("#board").bounding_box()
            page.mouse.move(box["x"] + 140, box["y"] + 50)
            page.mouse.down()
            page.mouse.move(box["x"] + 140, box["y"] + 230, steps=10)  # a 1
            page.mouse.up()
            settled(page)
            path = tmp_path / "one.png"
            path.write_bytes(sent[-1])
            run = subprocess.run([sys.executable, "-m", "gpumlp", "predict", str(doubtful), str(path), "--json"],
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
            want = json.loads(run.stdout)["predictions"][0]
            assert want["confident"] is False and want["reason"].startswith("probably not a digit: ")
            assert shown(page)["hint"].endswith("not sure: probably not a digit")
            assert page.evaluate("document.getElementById('result').classList.contains('unsure')")
            assert page.evaluate("document.getElementById('confidence').title") == want["reason"]
            page.click("#clear")
            settled(page)
            assert not page.evaluate("document.getElementById('result').classList.contains('unsure')")
        finally:
            context.close()
