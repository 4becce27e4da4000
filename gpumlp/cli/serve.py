"""``gpumlp serve``: a drawing page and a small HTTP API around one network.

    GET  /              the page (gpumlp/cli/static/index.html): draw a digit, see the ten probabilities
    GET  /api/model     what the network is: sizes, activation, loss, test accuracy, …
    POST /api/predict   a PNG body (Content-Type: image/png) → {"digit", "probabilities", "preview"}

Preprocessing is ``gpumlp predict``'s own code (``gpumlp.data.images.load_digit``, ``predict_images``), so the
page, the API and the command line give the same answer for the same image. Starlette and uvicorn
are an optional extra (``pip install 'gpumlp[serve]'``), imported only here. Predictions run in
worker threads: up to ``DECODERS`` images are decoded in parallel, and one lock serialises the
(sub-millisecond) forward pass. Errors are one-line JSON objects ``{"error": "..."}``; no request can stop the server.
"""

from __future__ import annotations

import os
import socket
import threading
from importlib import resources
from pathlib import Path

import numpy as np

from gpumlp.errors import GpumlpError
from gpumlp.losses import LOSSES

SERVE_HINT = "gpumlp serve needs Starlette and uvicorn: pip install 'gpumlp[serve]'"
MAX_BODY = 2 * 1024 * 1024  # bytes of a request body; more → 413
MAX_PIXELS = 2048 * 2048  # a PNG declaring more is refused before it is decoded (2 MB of PNG can hold 10⁹ pixels)
DECODERS = 4  # images decoded at once (up to ~200 MB each at MAX_PIXELS); more requests wait their turn
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Predictor:
    """One network and what it is; ``predict_png`` is safe to call from many threads at once."""

    def __init__(self, model, meta: dict, name: str):
        self.model, self.meta, self.name = model, meta, name
        self._lock = threading.Lock()  # the model's forward pass is not promised to be re-entrant

    def describe(self) -> dict:
        """``GET /api/model``: the network's architecture, origin and test accuracy (null if unknown)."""
        m, meta = self.model, self.meta
        return {
            "name": self.name,
            "sizes": list(m.sizes),
            "activation": m.activation,
            "loss": m.loss,
            "dtype": m.dtype,
            "n_params": m.n_params,
            "input_divisor": m.input_divisor,
            "probabilities": LOSSES[m.loss].confidence_name,
            "test_accuracy": meta.get("test_accuracy"),
            "test_size": meta.get("test_size"),
            "imported_from": meta.get("imported_from"),
            "created": meta.get("created"),
        }

    def predict_png(self, data: bytes) -> dict:
        """PNG bytes → ``{"digit", "probabilities": [10], "preview": [784 ints 0–255]}``, exactly
        what ``gpumlp predict`` computes for the same file. Raises ``GpumlpError`` for a bad image."""
        from gpumlp.cli.predict import predict_images
        from gpumlp.data.images import load_digit

        if not bytes(data[:8]) == PNG_SIGNATURE:
            raise GpumlpError("the request body is not a PNG image; POST a PNG file with Content-Type: image/png")
        x = load_digit(data, max_pixels=MAX_PIXELS)  # (784,) host, in [0, 1]
        with self._lock:
            r = predict_images(self.model, [x])[0]
        preview = np.rint(np.asarray(x, dtype=np.float64) * 255).astype(int)  # (784,) what the network saw
        return {"digit": r["digit"], "probabilities": r["probabilities"], "preview": preview.tolist()}


def _starlette():
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise GpumlpError(SERVE_HINT) from None


def page() -> str:
    """The drawing page, from the package data."""
    return resources.files("gpumlp.cli").joinpath("static", "index.html").read_text(encoding="utf-8")


def create_app(predictor: Predictor):
    """The Starlette application serving ``predictor``."""
    _starlette()
    import anyio.to_thread
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def index(request):
        return HTMLResponse(html)

    async def model(request):
        return JSONResponse(info)

    async def predict(request):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return error(413, f"the image is larger than {MAX_BODY // 2**20} MB; send a smaller PNG")
        body = bytearray()
        async for chunk in request.stream():  # also bounds bodies sent without a length (chunked)
            body += chunk
            if len(body) > MAX_BODY:
                return error(413, f"the image is larger than {MAX_BODY // 2**20} MB; send a smaller PNG")
        if not limiter:
            limiter.append(anyio.CapacityLimiter(DECODERS))  # made inside the event loop, on first use
        try:
            result = await anyio.to_thread.run_sync(predictor.predict_png, bytes(body), limiter=limiter[0])
        except GpumlpError as e:
            return error(400, " ".join(str(e).split()))
        return JSONResponse(result)

    async def server_error(request, exc):  # anything unforeseen: one line, and the server goes on
        return error(500, f"internal error: {type(exc).__name__}")

    html, info, limiter = page(), predictor.describe(), []
    routes = [Route("/", index), Route("/api/model", model), Route("/api/predict", predict, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={500: server_error})


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (port 0: any free port)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as e:
        raise GpumlpError(f"cannot listen on {host}:{port} ({e}); check --host") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise GpumlpError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port") from None
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(checkpoint: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, on_ready=print) -> None:
    """Serve ``checkpoint`` until Ctrl-C; ``on_ready(message)`` is called with the address once
    the socket listens. uvicorn shuts down gracefully on SIGINT, then re-raises KeyboardInterrupt."""
    _starlette()
    import uvicorn

    from gpumlp.formats.checkpoint import load

    model, meta = load(checkpoint)
    app = create_app(Predictor(model, meta, Path(checkpoint).name))
    sock = listen(host, port)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    on_ready(f"serving {model} at {url(sock)} (Ctrl-C stops)")
    try:
        # One image per request: products too small to share among threads, and on a busy machine
        # BLAS threads that wait for a core spin (2 busy programs, 784-800-800-10: median 9–12 ms,
        # p95 24–36 ms, 70–88 requests/s from 8 clients on the default threads; 6.6 ms, 9–12 ms and
        # 195–198 requests/s on one). A single row's product rounds alike on any count.
        with model.be.threads(1):
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
