"""A real, throwaway PostgreSQL server for the tests: Debian's server binaries (``initdb``, ``pg_ctl``)
start a cluster in a fresh temporary folder on a free 127.0.0.1 port, and stopping it leaves
nothing running and nothing on disk.

When the tests run as root the cluster runs as the ``postgres`` user (PostgreSQL refuses root); its
folder comes from ``tempfile.mkdtemp`` and is handed over with chown, because ``postgres`` cannot
enter root's private pytest temp folders. Otherwise the binaries run as the current user."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

BINARIES = ("initdb", "pg_ctl")
SUPERUSER = "postgres"  # the cluster's superuser, whoever runs it (initdb -U)
SETTINGS = """
listen_addresses = '127.0.0.1'
unix_socket_directories = '{sockets}'
fsync = off                 # a throwaway cluster: speed over durability
synchronous_commit = off
full_page_writes = off
"""


def candidate_bindirs() -> list[Path]:
    """Where the server binaries may be: ``pg_config --bindir``, then /usr/lib/postgresql/*/bin, newest first."""
    found = []
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout
        found.append(Path(out.strip()))
    by_version = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: _version(Path(p).parent.name))
    return found + [Path(p) for p in reversed(by_version)]


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def find_bindir(candidates: list[Path]) -> tuple[Path | None, str | None]:
    """The first folder holding every server binary, else (None, why: which binary was missing where)."""
    missing = []
    for folder in candidates:
        absent = [name for name in BINARIES if not os.access(folder / name, os.X_OK)]
        if not absent:
            return folder, None
        missing.append(f"{', '.join(absent)} not in {folder}")
    if not candidates:
        return None, f"PostgreSQL's server binaries ({', '.join(BINARIES)}) are not installed (no pg_config)"
    return None, "PostgreSQL's server binaries are not installed: " + "; ".join(missing)


def _run_as() -> list[str]:
    """The command prefix that runs a binary as the cluster's owner: ``runuser -u postgres --`` for root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("the tests run as root and there is no postgres user to run PostgreSQL's server as")
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("the tests run as root and runuser (util-linux) is missing to run PostgreSQL as postgres")
    return [runuser, "-u", "postgres", "--"]


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie nobody has reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


class PostgresServer:
    """A running cluster: ``url(dbname)`` for SQLAlchemy/Optuna, ``create_database``, ``pid``."""

    def __init__(self, bindir: Path, root: Path, prefix: list[str]):
        self.bindir, self.root, self.port, self._prefix = bindir, root, 0, prefix
        self.data, self.log = root / "data", root / "server.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def pid(self) -> int:
        """The postmaster's process id (first line of postmaster.pid)."""
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def run(self, binary: str, *args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # no PGPORT/PGDATA from outside
        cmd = [*self._prefix, str(self.bindir / binary), *args]
        done = subprocess.run(cmd, cwd=self.root, env=env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{binary} {' '.join(args)} failed ({done.returncode}): {done.stderr}{log}")
        return done

    def start(self, tries: int = 3) -> None:
        """initdb, then ``pg_ctl -w start`` on a free port: again on another one if some other program
        took the port between ``free_port`` and the server's bind."""
        self.run("initdb", "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C",
                 "--no-sync", "--no-instructions")  # fmt: skip
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(SETTINGS.format(sockets=self.root))
        for attempt in range(tries):
            self.port = free_port()
            try:
                self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", f"-p {self.port}", "-w", "-t", "30",
                         "start")  # fmt: skip
                return
            except RuntimeError as e:
                if attempt == tries - 1 or "could not bind" not in str(e):
                    raise

    def stop(self) -> None:
        """``pg_ctl -m fast stop``; if that fails, the postmaster is killed (nothing is left running)."""
        if not (self.data / "postmaster.pid").exists():
            return
        pid = self.pid()
        try:
            self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            raise
        finally:
            deadline = time.monotonic() + 10
            while process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name`` (psycopg); its URL."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres") as conn:
            conn.autocommit = True
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE ``name``, closing any connection still open to it."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres") as conn:
            conn.autocommit = True
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def postgres_server(candidates: list[Path] | None = None):
    """A started ``PostgresServer`` in a ``mkdtemp`` folder; stopped and removed on exit, however the
    block ends. Skips the test (saying which binary is missing) without the server binaries."""
    bindir, why = find_bindir(candidate_bindirs() if candidates is None else candidates)
    if bindir is None:
        pytest.skip(why)
    prefix = _run_as()
    root = Path(tempfile.mkdtemp(prefix="gpumlp-pg-"))
    try:
        if prefix:
            os.chown(root, pwd.getpwnam("postgres").pw_uid, -1)
        server = PostgresServer(bindir, root, prefix)
        try:
            server.start()
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root)
