"""``gpumlp serve``: a drawing page and a small HTTP API around one network.

    GET  /              the page (gpumlp/cli/static/index.html): draw a digit, see the ten probabilities
    GET  /api/model     what the network is: sizes, activation, loss, test accuracy, …
    POST /api/predict   an image body (PNG, JPEG, BMP, GIF, WebP) or a multipart form with a file part
                        → {"digit", "probabilities", "preview"}

Preprocessing is ``gpumlp predict``'s own code (``gpumlp.data.images.load_digit``, ``predict_images``), so the
page, the API and the command line give the same answer for the same image. Starlette and uvicorn
are an optional extra (``pip install 'gpumlp[serve]'``), imported only when serving. Predictions run in
worker threads: up to ``DECODERS`` images are decoded in parallel, and one lock serialises the
(sub-millisecond) forward pass. What a request may do and how long it may take is bounded in
``serve_http`` (Host, Origin, Content-Type, body) and ``serve_guard`` (connections, header deadline);
errors are one-line JSON objects ``{"error": "..."}``; no request can stop the server.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
from pathlib import Path

import numpy as np

from gpumlp.cli.serve_guard import DEFAULT_LIMITS, Limits, capped, connection_cap, guarded_protocol, quiet_loop_errors
from gpumlp.cli.serve_http import DECODERS, FORMATS, LOCAL_HOSTS, MAX_BODY, create_app, image_format
from gpumlp.errors import GpumlpError
from gpumlp.formats.metadata import confidence_floor
from gpumlp.losses import LOSSES

try:  # Unix: the interfaces' own addresses (SIOCGIFADDR); elsewhere only the host name's are listed
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["DECODERS", "MAX_BODY", "Limits", "Predictor", "create_app", "serve"]
SERVE_HINT = "gpumlp serve needs Starlette and uvicorn: pip install 'gpumlp[serve]'"
MAX_PIXELS = 2048 * 2048  # an image declaring more is refused before it is decoded (2 MB of PNG can hold 10⁹ pixels)
WILDCARDS = ("0.0.0.0", "::", "")


class Predictor:
    """One network and what it is; ``predict_image`` is safe to call from many threads at once."""

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
            "confidence_floor": confidence_floor(meta),
        }

    def predict_image(self, data: bytes) -> dict:
        """An image's bytes → ``{"digit", "probabilities": [10], "preview": [784 ints 0–255],
        "confident"}`` (and ``"reason"`` when not), exactly what ``gpumlp predict`` computes for the
        same file. Raises ``GpumlpError`` for a bad image."""
        from gpumlp.cli.predict import predict_images
        from gpumlp.data.images import load_digit

        if image_format(data) is None:
            raise GpumlpError(f"the request body is not a {FORMATS} image; send one of those")
        x = load_digit(data, max_pixels=MAX_PIXELS)  # (784,) host, in [0, 1]
        from gpumlp.data.datasets import get, of_checkpoint

        with self._lock:
            r = predict_images(
                self.model, [x], floor=confidence_floor(self.meta), one=get(of_checkpoint(self.meta)).one
            )[0]
        preview = np.rint(np.asarray(x, dtype=np.float64) * 255).astype(int)  # (784,) what the network saw
        sure = {"confident": r["confident"], **({"reason": r["reason"]} if "reason" in r else {})}
        return {"digit": r["digit"], "probabilities": r["probabilities"], "preview": preview.tolist(), **sure}


def _starlette():
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise GpumlpError(SERVE_HINT) from None


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


def interface_addresses() -> list[str]:
    """This computer's IPv4 addresses, best effort: every interface's (Linux), and its host name's."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex() if fcntl is not None else ():
            try:  # SIOCGIFADDR: the interface's address, in a struct ifreq (Linux only)
                packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
                found.append(socket.inet_ntoa(packed[20:24]))
            except OSError:
                pass
    try:
        found += [i[4][0] for i in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    except (OSError, UnicodeError):
        pass
    return list(dict.fromkeys(found))


def names(host: str, sock: socket.socket, allow: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(the Host names the server answers to, the other addresses to print) for a socket bound to ``host``."""
    bound = sock.getsockname()[0]
    if host in WILDCARDS:
        others = [a for a in interface_addresses() if not a.startswith("127.")]
        named = [*LOCAL_HOSTS, *others, socket.gethostname(), socket.getfqdn()]
        return [*named, *allow], [*others, socket.gethostname()]
    local = host in LOCAL_HOSTS or bound in LOCAL_HOSTS
    return [host, bound, *(LOCAL_HOSTS if local else ()), *allow], []


def serve(
    checkpoint: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_ready=print,
    limits: Limits = DEFAULT_LIMITS,
    allow_hosts: tuple[str, ...] = (),
) -> None:
    """Serve ``checkpoint`` until Ctrl-C; ``on_ready(message)`` is called with each line to show
    (a warning, the address) once the socket listens. uvicorn shuts down gracefully on SIGINT, then
    re-raises KeyboardInterrupt."""
    _starlette()
    import uvicorn

    from gpumlp.formats.checkpoint import load

    model, meta = load(checkpoint)
    sock = listen(host, port)
    hosts, others = names(host, sock, tuple(allow_hosts))
    app = create_app(Predictor(model, meta, Path(checkpoint).name), limits, hosts)
    cap = connection_cap(limits.max_connections)
    # loop="asyncio": uvloop accepts in C, around CappedSocket.accept
    quiet = dict(log_level="warning", access_log=False, timeout_graceful_shutdown=5, loop="asyncio")
    config = uvicorn.Config(app, http=guarded_protocol(limits), timeout_keep_alive=limits.keep_alive, **quiet)
    server, sock = uvicorn.Server(config), capped(sock, cap)
    at = f"http://127.0.0.1:{sock.getsockname()[1]}/" if host in WILDCARDS else url(sock)
    if others:
        on_ready(f"warning: --host {host} listens on every network this computer is on: whoever can reach "
                 "it can use the page and the API")  # fmt: skip
    if cap < limits.max_connections:
        on_ready(f"note: at most {cap} connections at once (the open-file limit); raise it with ulimit -n")
    on_ready(f"serving {model} at {at} (Ctrl-C stops)")
    if others:
        on_ready("also at " + ", ".join(at.replace("127.0.0.1", a) for a in others))

    async def run():
        asyncio.get_running_loop().set_exception_handler(quiet_loop_errors())
        await server.serve(sockets=[sock])

    try:
        # One image per request: products too small to share among threads, and on a busy machine
        # BLAS threads that wait for a core spin (2 busy programs, 784-800-800-10: median 9–12 ms,
        # p95 24–36 ms, 70–88 requests/s from 8 clients on the default threads; 6.6 ms, 9–12 ms and
        # 195–198 requests/s on one). A single row's product rounds alike on any count.
        with model.be.threads(1):
            asyncio.run(run())
    finally:
        sock.close()
