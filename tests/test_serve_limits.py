"""`gpumlp serve` against slow and hostile clients: a real server process on 127.0.0.1 and raw
sockets. Deadlines are set to about a second (--header-timeout, --body-timeout) so each test takes
a few seconds; the promises are in docs/reliability.md ("The server")."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from standins.serve_process import CHECKPOINT, LOOPBACK_ONLY, WITHOUT_UNIX_MODULES, running_server

pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
pytest.importorskip("PIL", reason="Pillow is not installed")

DEADLINE = 1.0  # seconds: --header-timeout and --body-timeout of the shared server
CAP = 8  # --max-connections of the shared server
FAST = ("--header-timeout", str(DEADLINE), "--body-timeout", str(DEADLINE))


@pytest.fixture(scope="module")
def server():
    with running_server(CHECKPOINT, *FAST, "--max-connections", str(CAP)) as s:
        yield s


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    return host, int(port)


def exchange(url: str, data: bytes = b"", wait: float = 8.0) -> tuple[float, bytes]:
    """Send ``data`` on a new connection, read until the server closes it: (seconds, bytes read)."""
    with socket.create_connection(address(url), timeout=wait) as s:
        start, got = time.monotonic(), b""
        s.sendall(data)
        try:
            while chunk := s.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
        return time.monotonic() - start, got


def status_and_error(response: bytes) -> tuple[int, str]:
    """The status code and the JSON body's "error" of a raw HTTP response."""
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), response
    return int(head.split()[1]), json.loads(body)["error"]


def get(url: str, path: str = "/api/model", host: str | None = None) -> bytes:
    host = host or url.removeprefix("http://").rstrip("/")
    return exchange(url, f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())[1]


def test_a_stalled_header_is_answered_408_and_closed_at_the_deadline(server):
    _, url = server
    seconds, got = exchange(url, b"GET /api/model HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    assert DEADLINE - 0.1 < seconds < DEADLINE + 3, seconds
    assert status_and_error(got)[0] == 408
    seconds, got = exchange(url)  # connected, said nothing: closed without a word
    assert DEADLINE - 0.1 < seconds < DEADLINE + 3 and got == b"", (seconds, got)


def test_a_stalled_body_is_answered_408_and_closed_at_the_deadline(server):
    _, url = server
    head = (
        b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 2000000\r\n\r\n"
    )
    seconds, got = exchange(url, head + b"\x89PNG")
    assert DEADLINE - 0.1 < seconds < DEADLINE + 3, seconds
    status, error = status_and_error(got)
    assert status == 408 and "did not arrive within 1 s" in error


def test_connections_over_the_cap_are_answered_503_at_accept_and_the_server_recovers(server):
    _, url = server
    held = [socket.create_connection(address(url), timeout=10) for _ in range(CAP)]
    try:
        time.sleep(0.5)  # accepted: each holds a slot until its header deadline
        seconds, got = exchange(url, b"GET /api/model HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert seconds < 0.5 and status_and_error(got) == (
            503,
            "the server has too many open connections; try again shortly",
        )
        for s in held:  # the header deadline frees every slot
            assert s.recv(10) == b""
    finally:
        for s in held:
            s.close()
    assert get(url).startswith(b"HTTP/1.1 200 OK")


@pytest.mark.parametrize(
    "request_bytes,status,fragment",
    [
        (b"GET /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404, "no such page /nowhere"),
        (b"PUT /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n", 405, "use POST"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "malformed HTTP request"),  # TLS to plain HTTP
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n", 400, "malformed HTTP request"),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: " + b"a" * 20_000, 400, "malformed HTTP request"),
        # complete, in one read: h11 let them through (its limit counts only what is incomplete)
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"a:b\r\n" * 10_000 + b"\r\n", 400, "over 16 KB"),
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, "over 16 KB"),
        (b"GET / HTTP/1.1\r\nHost: rebound.example\r\n\r\n", 400, "--allow-host rebound.example"),
        (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400, "does not answer to the name '[::1'"),  # was a 500
        (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n7\n",
         415, "Content-Type text/plain is not an image type"),
        (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\n"
         b"Content-Type: image/png\r\nContent-Length: 4\r\n\r\n\x89PNG", 403, "cross-origin requests are refused"),
    ],
)  # fmt: skip
def test_every_error_is_one_json_line(server, request_bytes, status, fragment):
    _, url = server
    got = exchange(url, request_bytes.replace(b"Host:", b"Connection: close\r\nHost:", 1))[1]
    code, error = status_and_error(got)
    assert code == status and fragment in error and "\n" not in error, error


def test_a_client_that_never_reads_its_answers_is_cut_off_at_the_deadline(server):
    """3,000 pipelined requests for the page and not one recv: the server's writes wait for the
    client; they held the connection for good. Now it is reset a body deadline later."""
    _, url = server
    with socket.create_connection(address(url), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 3000)  # 30 MB of answers
        time.sleep(DEADLINE + 1.5)
        s.settimeout(0.5)
        with pytest.raises(ConnectionResetError):  # before: still open, a window's worth read now and then
            while s.recv(1 << 20):
                pass


def test_a_request_framed_by_both_length_and_chunks_is_refused_and_its_connection_closed(server):
    """Request smuggling: h11 follows Transfer-Encoding, a proxy in front may follow Content-Length
    and forward the GET hidden in the body as part of this request; the server must not answer it."""
    _, url = server
    hidden = b"GET /api/model HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    smuggler = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % (5 + len(hidden)))  # fmt: skip
    seconds, got = exchange(url, smuggler + hidden)
    assert seconds < DEADLINE and got.count(b"HTTP/1.1 ") == 1, got  # one answer, then the connection closed
    assert status_and_error(got) == (400, "the request has both Content-Length and Transfer-Encoding; send one of them")


def test_a_body_in_thousands_of_tiny_chunks_is_refused_at_once(server):
    """2 MB of 1-byte chunks held uvicorn's event loop for 21 s; past 16,384 pieces the request ends."""
    _, url = server
    head = b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n"
    seconds, got = exchange(url, head + b"1\r\na\r\n" * 17_000 + b"0\r\n\r\n")
    assert seconds < DEADLINE, seconds
    assert status_and_error(got) == (
        400,
        "the body came in more than 16,384 pieces; send it in chunks of a kilobyte or more",
    )
    assert get(url).startswith(b"HTTP/1.1 200 OK")


def test_a_form_of_many_parts_is_refused_after_the_first_thousand(server):
    """2 MB of empty form parts (300,000) took the event loop 0.3 s to look through."""
    _, url = server
    body = b"--b\r\n\r\n" * 290_000  # 2 MB less 60 kB
    head = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: %d\r\n\r\n" % len(body))  # fmt: skip
    seconds, got = exchange(url, head + body)
    assert seconds < DEADLINE, seconds
    code, error = status_and_error(got)
    assert code == 400 and error.startswith("the form has more than 1,000 parts"), error


def test_odd_hosts_origins_and_upgrades_leave_the_log_quiet():
    """An unbalanced bracket in Host or Origin was a 500 and a traceback in the log; an Upgrade
    header two warning lines. Any client can send them, once per request."""
    post = b"POST /api/predict HTTP/1.1\r\nHost: %s\r\nOrigin: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    upgrade = b"GET /api/model HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, close\r\nUpgrade: %s\r\n\r\n"
    with running_server(CHECKPOINT, *FAST) as (proc, url):
        assert status_and_error(exchange(url, post % (b"]]", b"http://127.0.0.1"))[1])[0] == 400
        assert status_and_error(exchange(url, post % (b"127.0.0.1", b"http://[::1"))[1])[0] == 403
        for protocol in (b"websocket", b"h2c"):
            assert exchange(url, upgrade % protocol)[1].startswith(b"HTTP/1.1 200 OK")  # answered as plain HTTP
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert err.splitlines() == ["stopped"], err


def test_running_out_of_file_descriptors_neither_floods_the_log_nor_stops_the_server():
    """With 96 descriptors, 150 stalled connections: the cap follows the limit, the rest get 503
    at accept, stderr stays quiet, and once the deadline frees the slots a client is served."""
    with running_server(CHECKPOINT, *FAST, "--max-connections", "1000", open_files=96) as (proc, url):
        assert "note: at most 64 connections at once (the open-file limit)" in proc.startup
        held = [socket.create_connection(address(url), timeout=10) for _ in range(150)]
        try:
            time.sleep(0.5)
            assert status_and_error(get(url))[0] == 503
        finally:
            for s in held:
                s.close()
        time.sleep(DEADLINE)
        assert get(url).startswith(b"HTTP/1.1 200 OK")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "Traceback" not in err and len(err.splitlines()) <= 2, err[-2000:]


def test_ctrl_c_with_an_upload_in_flight_answers_it_503_and_stops_cleanly():
    with running_server(CHECKPOINT, "--body-timeout", "60") as (proc, url):
        stalled = socket.create_connection(address(url), timeout=10)
        stalled.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                        b"Content-Length: 2000000\r\n\r\n\x89PNG")  # fmt: skip
        time.sleep(0.3)
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        seconds = time.monotonic() - start
        answer = stalled.recv(65536)
        stalled.close()
    assert proc.returncode == 0 and seconds < 3, (seconds, err)
    assert status_and_error(answer) == (503, "the server is shutting down; try again later")
    assert "Traceback" not in err and "CancelledError" not in err and err.splitlines()[-1] == "stopped", err


def test_ctrl_c_with_answers_unread_stops_at_once():
    """A client that does not read its answers held Ctrl-C for uvicorn's 5 s grace, then a
    CancelledError traceback."""
    with running_server(CHECKPOINT, "--body-timeout", "60") as (proc, url):
        reader = socket.create_connection(address(url), timeout=10)
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 3000)
        time.sleep(0.5)
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        seconds = time.monotonic() - start
        reader.close()
    assert proc.returncode == 0 and seconds < 3, (seconds, err)
    assert err.splitlines() == ["stopped"], err


def large_upload() -> bytes:
    """A POST of a noisy 2048×2048 PNG (the largest the server decodes: 0.3-0.6 s each on 2 cores)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    ink = np.full((2048, 2048), 250, np.uint8) - rng.integers(0, 6, (2048, 2048), dtype=np.uint8)
    ink[500:1500, 900:1100] = 0
    png = io.BytesIO()
    Image.fromarray(ink).save(png, format="PNG", compress_level=1)
    head = "POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nConnection: close\r\n"
    return f"{head}Content-Length: {len(png.getvalue())}\r\n\r\n".encode() + png.getvalue()


def test_ctrl_c_with_decodes_queued_answers_them_503_and_stops_at_once():
    """30 uploads of 2048×2048 queued for 4 decoders (9 s of work): Ctrl-C waited uvicorn's 5 s
    grace, then cancelled 18 of them with a traceback each."""
    from concurrent.futures import ThreadPoolExecutor

    upload = large_upload()
    with running_server(CHECKPOINT) as (proc, url), ThreadPoolExecutor(30) as pool:
        answers = [pool.submit(exchange, url, upload, 30) for _ in range(30)]
        time.sleep(1.0)
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        seconds = time.monotonic() - start
        codes = {int(a.result()[1].split()[1]) for a in answers}
    assert proc.returncode == 0 and seconds < 3, (seconds, err[-2000:])
    assert err.splitlines() == ["stopped"] and codes <= {200, 503} and 503 in codes, (codes, err[-2000:])


def test_a_burst_of_large_uploads_beyond_the_waiting_line_is_answered_503_at_once():
    """60 uploads of 2048×2048 at once, for 4 decoders: those beyond the WAITING in line are
    answered 503 with Retry-After before any decode, where all 60 waited their turn (the last
    ~10 s); the server goes on answering."""
    from concurrent.futures import ThreadPoolExecutor

    from gpumlp.cli.serve_http import DECODERS, WAITING

    upload = large_upload()
    with running_server(CHECKPOINT) as (proc, url), ThreadPoolExecutor(60) as pool:
        answers = [a.result() for a in [pool.submit(exchange, url, upload, 60) for _ in range(60)]]
        codes = sorted(int(got.split()[1]) for _, got in answers)
        busy = [(seconds, got) for seconds, got in answers if int(got.split()[1]) == 503]
        assert set(codes) == {200, 503} and codes.count(200) >= DECODERS + WAITING, codes
        assert all(b"retry-after: 1" in got.lower() and "busy" in status_and_error(got)[1] for _, got in busy)
        served = [seconds for seconds, got in answers if int(got.split()[1]) == 200]
        assert max(seconds for seconds, _ in busy) < max(served), (busy, served)  # none waited its turn
        assert get(url).startswith(b"HTTP/1.1 200 OK")


def test_every_interface_warns_once_and_prints_the_addresses_it_answers_on():
    """--host 0.0.0.0: one warning, the addresses printed, and the Host names they stand for
    answered (every other refused). The socket itself listens on 127.0.0.1 only (``LOOPBACK_ONLY``),
    so the test opens nothing to the network: no other interface answers on its port."""
    args = ("--host", "0.0.0.0", "--allow-host", "digits.example")
    with running_server(CHECKPOINT, *args, prelude=LOOPBACK_ONLY) as (proc, url):
        also = proc.stderr.readline()
        assert url.startswith("http://127.0.0.1:")
        assert proc.startup.count("warning:") == 1 and "--host 0.0.0.0 listens on every network" in proc.startup
        assert also.startswith("also at http://") and socket.gethostname() in also, also
        port = address(url)[1]
        printed = [a.removeprefix("http://").rstrip("/,") for a in also.split()[2:]]
        for name in printed + [f"digits.example:{port}"]:
            assert get(url, host=name).startswith(b"HTTP/1.1 200 OK"), name
        assert status_and_error(get(url, host="evil.example"))[0] == 400
        for where in printed:  # an interface's own address: nothing listens there
            host = where.rsplit(":", 1)[0]
            if not host[0].isdigit() or host.startswith("127."):
                continue
            with pytest.raises(OSError), socket.create_connection((host, port), timeout=2):
                pass


def test_serve_runs_without_fcntl_and_resource_as_on_windows():
    """Neither module exists on Windows: the server starts and answers; the connection cap is
    --max-connections as given (no open-file limit to read), and the interfaces' own addresses are
    not listed. Before, `import fcntl` failed as the command started."""
    with running_server(CHECKPOINT, "--max-connections", "3", prelude=WITHOUT_UNIX_MODULES) as (proc, url):
        assert get(url).startswith(b"HTTP/1.1 200 OK")
        assert "Traceback" not in proc.startup and "note: at most" not in proc.startup, proc.startup


def test_without_resource_the_cap_is_as_given_and_without_fcntl_the_host_name_s_addresses(monkeypatch):
    from gpumlp.cli import serve, serve_guard

    monkeypatch.setattr(serve_guard, "resource", None)
    assert serve_guard.connection_cap(10**6) == 10**6  # (bounded by the open-file limit where there is one)
    monkeypatch.setattr(serve, "fcntl", None)
    monkeypatch.setattr(socket, "if_nameindex", lambda: pytest.fail("interfaces are read through fcntl"))
    monkeypatch.setattr(socket, "getaddrinfo", lambda name, *a: [(0, 0, 0, "", ("192.0.2.77", 0))])
    assert serve.interface_addresses() == ["192.0.2.77"]


FULL_SERVER = """
import asyncio, resource, socket, sys
from gpumlp.cli.serve_guard import capped, quiet_loop_errors
resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))

async def main():
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(quiet_loop_errors())
    sock = capped(socket.create_server(("127.0.0.1", 0)), 10_000)  # a cap the descriptors cannot reach
    await loop.create_server(asyncio.Protocol, sock=sock)  # holds every connection it accepts
    print(sock.getsockname()[1], flush=True)
    await asyncio.sleep(float(sys.argv[1]))

asyncio.run(main())
"""


def test_accept_out_of_descriptors_is_one_line_not_a_traceback_per_retry():
    """The backstop behind the cap: asyncio's own event loop, 48 descriptors, 80 connections held.
    accept() fails with EMFILE; stderr gets one warning line (asyncio alone: a traceback for every
    retry, up to 2,048 a tick)."""
    proc = subprocess.Popen([sys.executable, "-c", FULL_SERVER, "2.5"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        port = int(proc.stdout.readline())
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(80)]
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    for s in held:
        s.close()
    assert proc.returncode == 0, err
    assert err.splitlines() == [
        "warning: cannot accept connections ([Errno 24] Too many open files); retrying every second"
    ]


def test_bench_serve_script_runs_its_latency_and_burst_rounds(mnist_dir):
    """scripts/bench_serve.py, whose figures docs/deploy.md and docs/reliability.md quote, runs
    against a real server: a few drawings, then a burst of 2048×2048 uploads."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_serve.py"
    env = {**os.environ, "GPUMLP_DATA_DIR": str(mnist_dir)}
    proc = subprocess.run(
        [sys.executable, str(script), CHECKPOINT, "--requests", "8", "--burst", "3"],
        capture_output=True, text=True, env=env, timeout=120, cwd=Path(script).parents[1],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "one at a time: median" in proc.stdout and "8 clients at once" in proc.stdout
    assert "3 uploads of 2048×2048 at once: 3 answered 200" in proc.stdout, proc.stdout
    assert "a drawing sent 0.5 s later: 200 in" in proc.stdout, proc.stdout
