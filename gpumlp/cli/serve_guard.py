"""The transport-level guards of ``gpumlp serve``: what uvicorn does not bound by itself.

uvicorn (0.29–0.55) has a keep-alive timeout for idle connections and ``limit_concurrency``, but no
deadline for a request's headers (its keep-alive timer is cancelled by the first byte, so a client
sending one byte a minute holds a connection forever) and its 503 only answers a request that
arrived: a stalled socket is never counted against anything, and 1,100 of them used up the file
descriptors, after which asyncio logged a traceback per failed ``accept()``. Here:

    CappedSocket         the listening socket: past ``max_connections`` open connections, a new one is
                         answered 503 and closed inside ``accept()``, before any protocol exists
    guarded_protocol()   uvicorn's h11 protocol with a header deadline (408, then close), JSON for its
                         own 400, and a 503 for an upload still arriving at Ctrl-C
    quiet_loop_errors    one line, at most every 10 s, instead of a traceback per failed accept()

Only ``guarded_protocol`` needs uvicorn, imported when it is called.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import socket
import struct
import sys
import time

try:  # Unix; Windows has no open-file limit to read or raise, and the cap is --max-connections as given
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None

# A request body arrives in at most this many pieces (chunks of a chunked body, or reads of a sized
# one): 2 MB of 1-byte chunks, 12 MB on the wire, kept uvicorn's event loop busy for 21 s (every
# other client waited up to 3 s), as it parses each chunk and joins each to the body so far. A real
# client's pieces are packets or chunks of a kilobyte and more: 2 MB is a few thousand of them.
MAX_BODY_PIECES = 16_384
# A request line and headers longer are refused. h11 counts only what is still incomplete (its
# limit, the same 16 KB), so 10,000 headers or a 100 KB path arriving in one read were served.
MAX_HEAD = 16 * 1024
FD_RESERVE = 32  # descriptors kept for the server itself: stdio, the event loop, the listening socket, files
# uvicorn's log lines that any client can cause, once per request: dropped by quiet_loop_errors
CLIENTS_WARNINGS = ("Invalid HTTP request received.", "Unsupported upgrade request.", "No supported WebSocket library")
RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclasses.dataclass(frozen=True)
class Limits:
    """Deadlines (seconds) and the connection cap of one server; every default is a CLI option."""

    header_timeout: float = 10.0  # from accept (or the previous response) to the request's last header line
    body_timeout: float = 30.0  # from the headers to the body's last byte (2 MB at 70 kB/s); and the
    # longest a client may leave its answers unread once the send buffer is full
    max_connections: int = 512  # open at once; more are answered 503 at accept and closed
    keep_alive: int = 5  # an idle kept-alive connection is closed after this (uvicorn's own timer)


DEFAULT_LIMITS = Limits()


def raw_response(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 response with a one-line JSON error body that closes the connection."""
    body = json.dumps({"error": message}, separators=(",", ":")).encode()  # as Starlette writes it
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return (head + "connection: close\r\n\r\n").encode() + body


BUSY = raw_response(503, "Service Unavailable", "the server has too many open connections; try again shortly")
SHUTTING_DOWN = raw_response(503, "Service Unavailable", "the server is shutting down; try again later")
SMUGGLED = "the request has both Content-Length and Transfer-Encoding; send one of them"
CHOPPED = f"the body came in more than {MAX_BODY_PIECES:,} pieces; send it in chunks of a kilobyte or more"
MALFORMED = "malformed HTTP request; send HTTP/1.1"
LONG_HEAD = f"the request line and headers are over {MAX_HEAD // 1024} KB; send shorter ones"
HEADER_TIMEOUT = raw_response(408, "Request Timeout", "the request's headers took too long; send them at once")


def connection_cap(wanted: int) -> int:
    """``wanted`` bounded by what the open-file limit allows, raising the soft limit toward the hard
    one first: past the cap connections are refused, so accept() never runs out of descriptors.
    Without the ``resource`` module (Windows), ``wanted`` as it is: there is no such limit to read."""
    if resource is None:
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    return wanted if soft == resource.RLIM_INFINITY else max(1, min(wanted, soft - FD_RESERVE))


class CappedSocket(socket.socket):
    """A listening socket whose ``accept()`` (called by asyncio's selector loop) answers 503 and closes
    every connection past ``cap`` open ones, so they hold no descriptor while the cap is reached."""

    def setup(self, cap: int) -> CappedSocket:
        self.cap, self.open, self._exhausted_at = cap, set(), -1.0
        return self

    def accept(self):
        while True:
            try:
                conn, addr = super().accept()
            except OSError as e:
                # asyncio logs the first and retries in a second; its loop would call accept() again
                # at once up to its backlog (2,048 tracebacks a tick): the rest end that loop quietly.
                if e.errno in RESOURCE_ERRORS and time.monotonic() - self._exhausted_at < 0.5:
                    raise BlockingIOError(errno.EAGAIN, "accept paused") from None
                if e.errno in RESOURCE_ERRORS:
                    self._exhausted_at = time.monotonic()
                raise
            self.open = {s for s in self.open if s.fileno() != -1}  # transports close their sockets
            if len(self.open) < self.cap:
                self.open.add(conn)
                return conn, addr
            _refuse(conn)


def _refuse(conn: socket.socket) -> None:
    """Answer 503 without reading the request, then close (nothing here can block)."""
    try:
        conn.setblocking(False)
        conn.send(BUSY)
        conn.recv(65536)  # what already arrived: closing with unread data would send a reset
    except OSError:
        pass
    conn.close()


def capped(sock: socket.socket, cap: int) -> CappedSocket:
    """``sock`` (bound, listening) as a ``CappedSocket``: the same descriptor, the old object detached."""
    return CappedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach()).setup(cap)


class _Quiet:
    """Loop exception handler: accept() running out of descriptors is one line at most every 10 s."""

    def __init__(self):
        self.last = -1e9

    def __call__(self, loop, context):
        exc = context.get("exception")
        if context.get("message", "").startswith("socket.accept() out of system resource"):
            if time.monotonic() - self.last >= 10.0:
                self.last = time.monotonic()
                print(f"warning: cannot accept connections ({exc}); retrying every second", file=sys.stderr)
            return
        loop.default_exception_handler(context)


def quiet_loop_errors() -> _Quiet:
    """The event loop's exception handler; also drops uvicorn's warnings per malformed request
    (the client has its JSON 400) and per ``Upgrade:`` header (websocket, h2c: the request is
    answered as plain HTTP), lines a hostile client could repeat without end."""
    logging.getLogger("uvicorn.error").addFilter(lambda r: not r.getMessage().startswith(CLIENTS_WARNINGS))
    return _Quiet()


class _Framing:
    """The checks of each event h11 parses, mixed into uvicorn's h11 protocol by ``guarded_protocol``:
    a refused event raises ``RemoteProtocolError``, which uvicorn answers with ``send_400_response``."""

    h11 = None  # the h11 module (imported with uvicorn)
    _why = MALFORMED  # what the next 400 says
    _pieces = 0  # of the current request's body

    def _next_event(self):
        event = self._parse()  # h11's own next_event
        if isinstance(event, self.h11.Request):
            self._pieces = 0
            if len(event.target) + sum(len(name) + len(value) + 4 for name, value in event.headers) > MAX_HEAD:
                self._why = LONG_HEAD
                raise self.h11.RemoteProtocolError(LONG_HEAD)
            named = {name.lower() for name, _ in event.headers}
            if b"content-length" in named and b"transfer-encoding" in named:
                # h11 follows Transfer-Encoding; a proxy in front may follow Content-Length and
                # take what h11 reads as a second request for part of this one's body.
                self._why = SMUGGLED
                raise self.h11.RemoteProtocolError(SMUGGLED)
        elif isinstance(event, self.h11.Data):
            self._pieces += 1
            if self._pieces > MAX_BODY_PIECES:
                self._why = CHOPPED
                raise self.h11.RemoteProtocolError(CHOPPED)
        return event

    def send_400_response(self, msg: str):  # a malformed request: JSON like every other error
        cycle = self.cycle  # the app may have answered already (a 413 while the body still arrives)
        if cycle is None or not cycle.response_started or cycle.response_complete:
            self.transport.write(raw_response(400, "Bad Request", self._why))
        self.transport.close()


class _UnreadAnswers:
    """Mixed into uvicorn's h11 protocol: a client that stops reading its answers (pipelined
    requests, never a recv) paused the server's writes with no deadline, holding its connection
    for good; reset when writing has waited ``limits.body_timeout``, or at once on Ctrl-C."""

    limits = DEFAULT_LIMITS
    _write_timer = None

    def pause_writing(self):
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.body_timeout, self._cut_off)

    def _cut_off(self):
        """Close with a reset: a plain close leaves the unsent answers (MBs) to the kernel, which
        keeps offering them to a closed window for minutes."""
        self._write_timer = None
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def resume_writing(self):
        self._cancel_write_timer()
        super().resume_writing()

    def shutdown(self):  # Ctrl-C: answers the client does not read would hold the exit 5 s, then a traceback
        if self.flow.write_paused:
            self._cut_off()
        else:
            super().shutdown()

    def _cancel_write_timer(self):
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None


def guarded_protocol(limits: Limits):
    """uvicorn's h11 protocol class, with a header deadline, framing checks and JSON errors of its own."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(_Framing, _UnreadAnswers, H11Protocol):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._parse, self.conn.next_event = self.conn.next_event, self._next_event
            self._arm()

        def _arm(self):
            self._disarm()
            self._header_timer = self.loop.call_later(limits.header_timeout, self._headers_late)

        def _disarm(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self):
            self._header_timer = None
            if not self.transport.is_closing():
                if self.conn.trailing_data[0]:  # part of a request arrived: say why it ends
                    self.transport.write(HEADER_TIMEOUT)
                self.transport.close()

        def handle_events(self):
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a request's headers are complete: the app takes over
                self._disarm()

        def on_response_complete(self):
            if not self.transport.is_closing():
                self._arm()  # the next request's headers (keep-alive closes an idle one sooner)
            super().on_response_complete()

        def connection_lost(self, exc):
            self._disarm()
            self._cancel_write_timer()
            super().connection_lost(exc)

        def shutdown(self):
            cycle = self.cycle
            if cycle is not None and not cycle.response_started and not self.flow.write_paused:
                # An upload still arriving may never end, and requests queued for a decoder (30 of
                # 2048×2048: 9 s) outlast uvicorn's 5 s grace: answer them now, so Ctrl-C need not
                # wait nor cancel their tasks (which uvicorn logs as CancelledError tracebacks).
                self.transport.write(SHUTTING_DOWN)
                cycle.disconnected = True
                cycle.message_event.set()
                self.transport.close()
                return
            super().shutdown()

    GuardedH11Protocol.h11, GuardedH11Protocol.limits = h11, limits
    return GuardedH11Protocol
