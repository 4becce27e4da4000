"""`gpumlp serve` (gpumlp.cli.serve): the HTTP API through Starlette's TestClient, then a real server
process for concurrency, a busy port and Ctrl-C. The browser test is tests/test_serve_browser.py."""

from __future__ import annotations

import io
import json
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import gpumlp
from gpumlp.cli import commands as cli
from gpumlp.cli import serve
from gpumlp.data.images import load_digit
from standins.entry_point import run_main

pytest.importorskip("starlette", reason="the serve extra (Starlette) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
pytest.importorskip("httpx", reason="httpx (test extra, for Starlette's TestClient) is not installed")
Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")
from starlette.testclient import TestClient  # noqa: E402

from standins.serve_process import CHECKPOINT, running_server  # noqa: E402


def digit_png(x784, size=200, dark_on_light=True) -> bytes:
    """An MNIST test digit as a PNG drawing: upscaled, dark ink on white like a pen on paper."""
    img = np.asarray(x784, dtype=np.float64).reshape(28, 28)
    img = 1.0 - img if dark_on_light else img
    im = Image.fromarray(np.rint(img * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def cli_predict(png: Path) -> dict:
    """What `gpumlp predict --json` reports for a file."""
    result = CliRunner().invoke(cli.app, ["predict", str(CHECKPOINT), str(png), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["predictions"][0]


@pytest.fixture(scope="module")
def client():
    model, meta = gpumlp.load(CHECKPOINT)
    with TestClient(serve.create_app(serve.Predictor(model, meta, CHECKPOINT.name)), base_url="http://127.0.0.1") as c:
        yield c


def image_bytes(x784, fmt: str, size=160) -> bytes:
    """A digit drawing (dark on white) in another format than PNG."""
    im = Image.open(io.BytesIO(digit_png(x784, size=size)))
    out = io.BytesIO()
    im.convert("RGB").save(out, format=fmt)
    return out.getvalue()


def multipart(data: bytes, name="file", filename="digit.png", boundary="gpumlp-7f3a") -> tuple[bytes, str]:
    """A multipart/form-data body as `curl -F file=@digit.png` sends it, and its Content-Type."""
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
    head += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
    head += "Content-Type: application/octet-stream\r\n\r\n"
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_page_and_model_description(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for part in ('<canvas id="board"', 'id="preview"', 'id="clear"', 'id="undo"', "/api/predict", "/api/model"):
        assert part in page.text
    info = client.get("/api/model").json()
    assert info["name"] == CHECKPOINT.name and info["sizes"] == [784, 256, 10]
    assert info["activation"] == "relu" and info["loss"] == "ce" and info["probabilities"] == "softmax"
    assert info["test_accuracy"] == 0.98 and info["test_size"] == 10_000 and info["n_params"] == 203_530
    own = gpumlp.load(CHECKPOINT)[1]["confidence_floor"]["value"]  # chosen on its validation images
    assert info["confidence_floor"] == own and 0.55 < own < 0.65
    api = client.get("/api/openapi.json").json()
    answer = api["paths"]["/api/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(answer["required"]) == {"digit", "probabilities", "preview", "confident"} < set(answer["properties"])
    assert api["openapi"].startswith("3.") and set(api["paths"]) == {"/api/predict", "/api/model"}
    body = api["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert {"image/png", "image/jpeg", "multipart/form-data"} <= set(body)


def test_predict_is_exactly_gpumlp_predict(client, mnist, tmp_path):
    """The API, `gpumlp predict --json` on the same PNG, and the preprocessing's own output agree."""
    _, _, X, y = mnist
    for i in (0, 1, 2, 3, 4):
        png = digit_png(X[i], size=120 + 40 * (i % 3), dark_on_light=i % 2 == 0)
        (tmp_path / f"{i}.png").write_bytes(png)
        answer = client.post("/api/predict", content=png, headers={"Content-Type": "image/png"})
        assert answer.status_code == 200
        got, want = answer.json(), cli_predict(tmp_path / f"{i}.png")
        assert set(got) == {"digit", "probabilities", "preview", "confident"}
        assert got["digit"] == want["digit"] == y[i] and got["confident"] is want["confident"] is True
        assert got["probabilities"] == want["probabilities"]  # the same code on the same bytes: bit for bit
        x = load_digit(tmp_path / f"{i}.png")
        assert got["preview"] == np.rint(x.astype(np.float64) * 255).astype(int).tolist() and len(got["preview"]) == 784


def assert_json_error(response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and fragment in body["error"] and "\n" not in body["error"]


def test_bad_requests_get_one_line_json_errors_and_the_server_goes_on(client, mnist):
    _, _, X, _ = mnist
    good = digit_png(X[0])
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(jpeg, format="JPEG")
    blank = io.BytesIO()
    Image.new("L", (50, 50), 255).save(blank, format="PNG")
    huge = io.BytesIO()
    Image.new("1", (4000, 4000), 1).save(huge, format="PNG", optimize=True)  # a few kB that decode to 16 Mpx
    cases = [
        (b"hello", 400, "not a PNG, JPEG, BMP, GIF or WebP image"),
        (b"", 400, "not a PNG, JPEG, BMP, GIF or WebP image"),
        (b"II*\x00" + bytes(100), 400, "not a PNG, JPEG, BMP, GIF or WebP image"),  # TIFF: left to gpumlp predict
        (jpeg.getvalue(), 400, "no ink found"),  # a JPEG is read now, and this one is blank
        (good[:300], 400, "is not an image Pillow can read"),
        (blank.getvalue(), 400, "no ink found"),
        (huge.getvalue(), 400, "4000×4000 pixels, more than 4,194,304"),
        (b"\x89PNG\r\n\x1a\n" + bytes(serve.MAX_BODY), 413, "larger than 2 MB"),
    ]
    png = {"Content-Type": "image/png"}
    for body, status, fragment in cases:
        assert_json_error(client.post("/api/predict", content=body, headers=png), status, fragment)
        assert client.post("/api/predict", content=good, headers=png).json()["digit"] == 7  # still serving

    def chunks():  # no Content-Length: the body is counted as it arrives
        for _ in range(3):
            yield bytes(1024 * 1024)

    assert_json_error(client.post("/api/predict", content=chunks(), headers=png), 413, "larger than 2 MB")
    assert_json_error(client.get("/api/predict"), 405, "GET is not allowed on /api/predict; use POST")
    assert_json_error(client.get("/nowhere"), 404, "no such page /nowhere")
    assert client.post("/api/predict", content=good, headers=png).json()["digit"] == 7


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json", "application/x-www-form-urlencoded"])
def test_a_body_that_is_not_an_image_type_is_415(client, mnist, content_type):
    headers = {} if content_type is None else {"Content-Type": content_type}
    answer = client.post("/api/predict", content=digit_png(mnist[2][0]), headers=headers)
    assert_json_error(answer, 415, f"Content-Type {content_type or 'none'} is not an image type")
    assert "multipart/form-data" in answer.json()["error"]


def test_jpeg_bmp_gif_and_multipart_uploads_answer_as_gpumlp_predict(client, mnist, tmp_path):
    """Each format through the API gives what `gpumlp predict` says about the same file."""
    X = mnist[2]
    uploads = [("image/jpeg", "JPEG", 0), ("image/bmp", "BMP", 1), ("image/gif", "GIF", 2)]
    for content_type, fmt, i in uploads:
        data = image_bytes(X[i], fmt)
        (tmp_path / f"{i}.{fmt.lower()}").write_bytes(data)
        got = client.post("/api/predict", content=data, headers={"Content-Type": content_type}).json()
        want = cli_predict(tmp_path / f"{i}.{fmt.lower()}")
        assert got["digit"] == want["digit"] and got["probabilities"] == want["probabilities"], fmt
    png = digit_png(X[3])
    (tmp_path / "3.png").write_bytes(png)
    for body, content_type in [multipart(png), multipart(png, name="image"), multipart(png, filename="")]:
        got = client.post("/api/predict", content=body, headers={"Content-Type": content_type})
        assert got.status_code == 200, got.text
        assert got.json()["probabilities"] == cli_predict(tmp_path / "3.png")["probabilities"]
    body, content_type = multipart(png, name="other", filename="")
    body = body.replace(b'; filename=""', b"")
    answer = client.post("/api/predict", content=body, headers={"Content-Type": content_type})
    assert_json_error(answer, 400, "curl -F file=@digit.png")


def test_a_long_thin_image_is_refused_before_it_is_decoded(client):
    """1×4,194,304 pixels passes the pixel cap (2048×2048) but not the longest side."""
    thin = io.BytesIO()
    Image.new("1", (4_194_304, 1), 1).save(thin, format="PNG", optimize=True)
    answer = client.post("/api/predict", content=thin.getvalue(), headers={"Content-Type": "image/png"})
    assert_json_error(answer, 400, "4194304×1 pixels, longer than 8,192 on a side")


@pytest.mark.parametrize(
    "headers,status,fragment",
    [
        ({"Host": "evil.example"}, 400, "--allow-host evil.example"),
        ({"Host": "evil.example:80"}, 400, "--allow-host evil.example"),
        ({"Origin": "http://evil.example"}, 403, "cross-origin requests are refused"),
        ({"Origin": "null"}, 403, "cross-origin requests are refused"),
        ({"Origin": "http://127.0.0.1:81"}, 403, "cross-origin requests are refused"),
        ({"Sec-Fetch-Site": "cross-site"}, 403, "cross-origin requests are refused"),
        ({"Sec-Fetch-Site": "same-site"}, 403, "cross-origin requests are refused"),
    ],
)
def test_other_hosts_and_origins_are_refused(client, mnist, headers, status, fragment):
    png = digit_png(mnist[2][0])
    answer = client.post("/api/predict", content=png, headers={"Content-Type": "image/png", **headers})
    assert_json_error(answer, status, fragment)


def test_the_own_origin_and_names_are_served(client, mnist):
    png, ok = digit_png(mnist[2][0]), {"Content-Type": "image/png"}
    for headers in ({"Origin": "http://127.0.0.1", "Sec-Fetch-Site": "same-origin"}, {"Host": "localhost:8000"}):
        assert client.post("/api/predict", content=png, headers={**ok, **headers}).json()["digit"] == 7
    assert client.get("/api/model", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200  # a link to it


def test_a_failure_inside_is_a_500_json_line_and_the_server_goes_on(mnist, monkeypatch):
    model, meta = gpumlp.load(CHECKPOINT)
    predictor = serve.Predictor(model, meta, "x")
    app = serve.create_app(predictor)
    with TestClient(app, raise_server_exceptions=False, base_url="http://localhost") as c:
        monkeypatch.setattr(predictor, "predict_image", lambda data: 1 / 0)
        png = {"Content-Type": "image/png"}
        assert_json_error(c.post("/api/predict", content=b"x", headers=png), 500, "internal error: ZeroDivisionError")
        monkeypatch.undo()
        assert c.post("/api/predict", content=digit_png(mnist[2][0]), headers=png).json()["digit"] == 7


def test_requests_run_in_parallel_up_to_the_decoder_limit(monkeypatch):
    model, meta = gpumlp.load(CHECKPOINT)
    predictor = serve.Predictor(model, meta, "x")
    busy, most, lock = [0], [0], threading.Lock()

    def slow(data):
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        time.sleep(0.1)
        with lock:
            busy[0] -= 1
        return {"digit": 0, "probabilities": [0.1] * 10, "preview": [0] * 784}

    monkeypatch.setattr(predictor, "predict_image", slow)
    png = {"Content-Type": "image/png"}
    with TestClient(serve.create_app(predictor), base_url="http://localhost") as c, ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda _: c.post("/api/predict", content=b"x", headers=png).status_code, range(24)))
    assert codes == [200] * 24
    assert most[0] == serve.DECODERS, most[0]  # in parallel, but never more than DECODERS at once


def test_without_the_serve_extra_one_line_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    code, out, err = run_main(monkeypatch, capsys, "serve", str(CHECKPOINT))
    assert code == 2 and err == "error: gpumlp serve needs Starlette and uvicorn: pip install 'gpumlp[serve]'\n"


# ---------------------------------------------------------------- a real server process


def post_png(url: str, png: bytes) -> dict:
    request = urllib.request.Request(url + "api/predict", data=png, headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_real_server_concurrent_requests_then_ctrl_c(mnist):
    _, _, X, y = mnist
    pngs = [digit_png(X[i], size=100 + 10 * (i % 7)) for i in range(48)]
    with running_server() as (proc, url):
        assert url.startswith("http://127.0.0.1:")
        want = [post_png(url, png) for png in pngs]  # one at a time
        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(lambda png: post_png(url, png), pngs * 2))  # 16 at a time, each twice
        assert got == want + want
        assert sum(w["digit"] == y[i] for i, w in enumerate(want)) >= 45
        with pytest.raises(urllib.error.HTTPError) as e:
            post_png(url, b"%PDF-1.4")
        assert e.value.code == 400 and json.loads(e.value.read())["error"].startswith("the request body is not a PNG,")
        assert post_png(url, pngs[0]) == want[0]
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert err.strip().splitlines()[-1] == "stopped" and "Traceback" not in err + out


def test_a_busy_port_is_one_line_exit_2(monkeypatch, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_main(monkeypatch, capsys, "serve", str(CHECKPOINT), "--port", str(port))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port}: ") and "choose another --port" in err


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--port", "70000"], "--port"),
        (["--host", "no such host.invalid"], "cannot listen on no such host.invalid:8000"),
        (["--missing"], "not found"),
    ],
)
def test_serve_option_errors_are_one_line_exit_2(monkeypatch, capsys, tmp_path, args, fragment):
    checkpoint = tmp_path / "none.npz" if args == ["--missing"] else CHECKPOINT
    args = [] if args == ["--missing"] else args
    code, out, err = run_main(monkeypatch, capsys, "serve", str(checkpoint), *args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err


def test_the_server_runs_on_one_blas_thread_and_restores_the_count(monkeypatch):
    """One image per request: on a busy machine spinning BLAS threads cost 2–3× in latency, so the
    server holds one thread while it runs and gives the process its count back afterwards."""
    import uvicorn

    from gpumlp.backends import blas_threads

    before = blas_threads.library_threads()
    if before is None:
        pytest.skip("numpy's BLAS thread count is out of reach here")
    seen = []

    async def serve_(self, sockets=None):
        seen.append(blas_threads.library_threads())

    monkeypatch.setattr(uvicorn.Server, "serve", serve_)
    shipped = Path(__file__).resolve().parents[1] / "checkpoints" / "gpumlp-784-256-10-relu-ce.npz"
    serve.serve(shipped, port=0, on_ready=lambda message: None)
    assert seen == [1] and blas_threads.library_threads() == before
