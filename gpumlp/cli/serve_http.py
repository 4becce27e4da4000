"""The HTTP application of ``gpumlp serve`` (Starlette): routes, and the checks every request passes.

    Host            one of the server's own names (the bound address, its names, ``--allow-host``),
                    else 400: a page on another site that re-points its own name at 127.0.0.1 (DNS
                    rebinding) is refused before it can read anything
    Origin,         a POST from another site is refused (403): a form POST needs no CORS preflight,
    Sec-Fetch-Site  so without this any web page could make a visitor's browser use the server
    Content-Type    an image type the server reads, or multipart/form-data with a file part; else 415
    body            2 MB at most (413), read within ``Limits.body_timeout`` (408, and the connection closes)

Every 4xx and 5xx, Starlette's 404 and 405 included, is one JSON line ``{"error": "..."}``.
"""

from __future__ import annotations

import re
from importlib import resources
from urllib.parse import urlsplit

from gpumlp.cli.serve_guard import DEFAULT_LIMITS, Limits
from gpumlp.errors import GpumlpError

MAX_BODY = 2 * 1024 * 1024  # bytes of a request body; more → 413
DECODERS = 4  # images decoded at once (up to ~200 MB each at 2048×2048); more requests wait their turn
# Uploads waiting for a decoder, at most: one more is answered 503 at once (with Retry-After), so a
# burst of large images keeps every client's wait to about WAITING ÷ DECODERS decodes (0.3-0.6 s
# each at 2048×2048 on 2 cores) instead of growing with the burst (50 at once: ~5 s, not ~10 s).
WAITING = 16
# The formats the server decodes, by the bytes they start with. TIFF and Pillow's rarer formats are
# left to `gpumlp predict`: a server facing strangers keeps its decoders to the common few.
SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP", b"GIF87a": "GIF", b"GIF89a": "GIF"}
IMAGE_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/pjpeg", "image/bmp", "image/x-ms-bmp",
               "image/gif", "image/webp"}  # fmt: skip
FORMATS = "PNG, JPEG, BMP, GIF or WebP"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# Parts of a multipart form read at most: the form is parsed on the event loop, and 2 MB of empty
# parts (300,000) took it 0.3 s, every other client waiting. curl -F and the page send one or two.
MAX_PARTS = 1000


def image_format(data: bytes) -> str | None:
    """The name of the image format ``data`` starts with, if the server decodes it."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for sig, name in SIGNATURES.items() if data.startswith(sig)), None)


def form_file(body: bytes, content_type: str) -> bytes:
    """The file part of a multipart/form-data body (``curl -F file=@digit.png``): the first part
    with a file name, else the part named ``file``, among the first ``MAX_PARTS``. Raises
    ``GpumlpError`` when there is none."""
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if not found:
        raise GpumlpError("the multipart body names no boundary; send the image with curl -F file=@digit.png")
    named = None
    parts = body.split(b"--" + found.group(1).encode("latin-1"), MAX_PARTS + 1)[1:]  # no more are split off
    for i, part in enumerate(parts):
        if part.startswith(b"--"):  # the closing delimiter
            break
        if i == MAX_PARTS:
            raise GpumlpError(
                f"the form has more than {MAX_PARTS:,} parts; send the image alone: curl -F file=@digit.png"
            )
        head, sep, content = part.partition(b"\r\n\r\n")
        content = content[:-2] if content.endswith(b"\r\n") else content
        disposition = head.decode("latin-1").lower()
        if sep and "filename=" in disposition:
            return content
        if sep and re.search(r'\bname="file"', disposition):
            named = content
    if named is None:
        raise GpumlpError("the form has no file part; send the image as a file field: curl -F file=@digit.png")
    return named


def _host_port(netloc: str, default: int = 80) -> tuple[str, int]:
    """(host name, port) of ``host[:port]``; ("", -1) for one that is no address ("[::1", "]]")."""
    try:
        parts = urlsplit("//" + netloc)
    except ValueError:  # an unbalanced bracket: was a 500 and a traceback in the log per request
        return ("", -1)
    try:
        port = parts.port or default
    except ValueError:
        port = -1
    return (parts.hostname or "", port)


def refusal(headers, method: str, hosts: frozenset[str]) -> tuple[int, str] | None:
    """Why a request is refused before it is read, as (status, message), or None. ``headers``: a
    case-insensitive mapping; ``hosts``: the names the server answers to ("*": any)."""
    host = headers.get("host")
    if host is not None and "*" not in hosts and _host_port(host)[0] not in hosts:
        name = _host_port(host)[0] or host
        return 400, f"this server does not answer to the name {name!r}; start it with --allow-host {name}"
    if method in ("GET", "HEAD", "OPTIONS"):
        return None
    site, origin = headers.get("sec-fetch-site"), headers.get("origin")
    cross = site is not None and site not in ("same-origin", "none")
    if origin is not None and host is not None:
        scheme, netloc = origin.partition("://")[::2]  # urlsplit raises for "http://[::1"
        scheme = scheme.lower()
        theirs = _host_port(netloc, 443 if scheme == "https" else 80)
        cross = cross or scheme not in ("http", "https") or not theirs[0] or theirs != _host_port(host)
    if cross:
        return 403, f"cross-origin requests are refused (Origin: {origin}); post from the server's own page"
    return None


def page() -> str:
    """The drawing page, from the package data."""
    return resources.files("gpumlp.cli").joinpath("static", "index.html").read_text(encoding="utf-8")


def openapi(info: dict) -> dict:
    """``GET /api/openapi.json``: the API described for machines (OpenAPI 3.1)."""
    error = {"description": "one line saying what is wrong and the fix", "content": {"application/json": {
        "schema": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}}}  # fmt: skip
    image = {"schema": {"type": "string", "format": "binary"}}
    form = {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}}
    answer = {"type": "object", "properties": {
        "digit": {"type": "integer", "minimum": 0, "maximum": 9},
        "probabilities": {"type": "array", "items": {"type": "number"}, "minItems": 10, "maxItems": 10},
        "preview": {"type": "array", "items": {"type": "integer"}, "minItems": 784, "maxItems": 784},
        "confident": {"type": "boolean", "description": "false: the top confidence is below the network's floor"},
        "reason": {"type": "string", "description": "when not confident: why, e.g. probably not a digit"},
    }, "required": ["digit", "probabilities", "preview", "confident"]}  # fmt: skip
    predict = {
        "summary": "the digit in an image, as gpumlp predict computes it",
        "requestBody": {
            "required": True,
            "content": {**dict.fromkeys(sorted(IMAGE_TYPES), image), "multipart/form-data": form},
        },  # fmt: skip
        "responses": {
            "200": {"description": "the answer", "content": {"application/json": {"schema": answer}}},
            **dict.fromkeys(["400", "403", "408", "413", "415", "503"], error),
        },  # fmt: skip
    }
    model = {"summary": "what the network is", "responses": {"200": {"description": "sizes, activation, loss, …"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": f"gpumlp serve: {info['name']}", "version": "1"},
        "paths": {"/api/predict": {"post": predict}, "/api/model": {"get": model}},
    }


def _error(status: int, message: str, headers=None):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers)


async def read_image(request, body_timeout: float):
    """The uploaded image's bytes, or the JSON error response that refuses the request."""
    import anyio
    from starlette.requests import ClientDisconnect

    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in IMAGE_TYPES and media != "multipart/form-data":
        shown = media or "none"
        return _error(415, f"Content-Type {shown} is not an image type the server reads; send image/png, "
                      "image/jpeg, … or multipart/form-data (curl -F file=@digit.png)")  # fmt: skip
    too_big = f"the image is larger than {MAX_BODY // 2**20} MB; send a smaller image"
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        return _error(413, too_big, {"connection": "close"})  # rather than read and drop what it declared
    body = bytearray()
    try:
        with anyio.fail_after(body_timeout):
            async for chunk in request.stream():  # also bounds bodies sent without a length (chunked)
                body += chunk
                if len(body) > MAX_BODY:
                    return _error(413, too_big, {"connection": "close"})
    except TimeoutError:
        late = f"the body did not arrive within {body_timeout:g} s; send the whole image at once"
        return _error(408, late, {"connection": "close"})
    except ClientDisconnect:
        return _error(400, "the client closed the connection before the body ended")
    if media != "multipart/form-data":
        return bytes(body)
    try:
        return form_file(bytes(body), request.headers["content-type"])
    except GpumlpError as e:
        return _error(400, str(e))


class Guard:
    """Plain ASGI middleware: refuses (``refusal``) before any route or body is touched."""

    def __init__(self, app, allowed: frozenset[str]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        from starlette.datastructures import Headers

        problem = refusal(Headers(scope=scope), scope["method"], self.allowed) if scope["type"] == "http" else None
        await (_error(*problem) if problem else self.app)(scope, receive, send)


def create_app(predictor, limits: Limits = DEFAULT_LIMITS, hosts=LOCAL_HOSTS):
    """The Starlette application serving ``predictor`` (a ``gpumlp.cli.serve.Predictor``) to
    requests whose Host is one of ``hosts``."""
    import anyio.to_thread
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    allowed, limiter = frozenset(h.strip("[]").lower() for h in hosts), []

    async def predict(request):
        data = await read_image(request, limits.body_timeout)
        if not isinstance(data, bytes):
            return data
        if not limiter:
            limiter.append(anyio.CapacityLimiter(DECODERS))  # made inside the event loop, on first use
        if limiter[0].statistics().tasks_waiting >= WAITING:
            busy = f"the server is busy: {DECODERS} images decoding and {WAITING} waiting; try again in a second"
            return _error(503, busy, {"retry-after": "1"})
        async with limiter[0]:  # the wait for a decoder, on the event loop, where Ctrl-C can end it
            if await request.is_disconnected():  # gone, or answered 503 by Ctrl-C: nothing to decode for
                return _error(503, "the client is gone")
            try:
                return JSONResponse(await anyio.to_thread.run_sync(predictor.predict_image, data))
            except GpumlpError as e:
                return _error(400, str(e))

    async def http_error(request, exc):  # Starlette's own 404 and 405, as JSON with a hint
        path, allow = request.url.path, {k.lower(): v for k, v in (exc.headers or {}).items()}.get("allow")
        hint = {
            404: f"no such page {path}; the API is described at /api/openapi.json",
            405: f"{request.method} is not allowed on {path}" + (f"; use {allow}" if allow else ""),
        }.get(exc.status_code, str(exc.detail))
        return _error(exc.status_code, hint, exc.headers)

    async def server_error(request, exc):  # anything unforeseen: one line, and the server goes on
        return _error(500, f"internal error: {type(exc).__name__}")

    async def index(request):
        return HTMLResponse(html)

    async def model(request):
        return JSONResponse(info)

    async def api(request):
        return JSONResponse(described)

    html, info = page(), predictor.describe()
    described = openapi(info)
    routes = [Route("/", index), Route("/api/model", model), Route("/api/predict", predict, methods=["POST"]),
              Route("/api/openapi.json", api)]  # fmt: skip
    handlers = {HTTPException: http_error, 500: server_error}
    return Starlette(routes=routes, middleware=[Middleware(Guard, allowed=allowed)], exception_handlers=handlers)
