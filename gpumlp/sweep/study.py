"""A sweep's study in Optuna's RDB storage (SQLite by default, PostgreSQL for many machines): the
storage URL, the study and the space it belongs to, the lock that serialises claims, and the
claim itself, which keeps a study at exactly the number of finished trials asked for however many
processes and machines share it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from gpumlp.errors import SweepError
from gpumlp.sweep.space import Space

SPACE_ATTR, FINGERPRINT_ATTR, HEARTBEAT_ATTR = "gpumlp_space", "gpumlp_space_fingerprint", "gpumlp_heartbeat"
HEARTBEAT_S = 30  # a new study's heartbeat, unless --heartbeat says otherwise
WORKER_ATTR = "worker"  # a trial's user attribute: {"host", "pid", "device"} of the worker that runs it
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SQLITE_BUSY_S = 60  # how long an SQLite write waits for another process's (instead of "database is locked")
CONNECT_TIMEOUT_S = 10  # a PostgreSQL server that does not answer
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
WAIT = "wait"  # claim(): every trial still needed is running elsewhere


def quiet() -> None:
    """Optuna's own log lines and its warnings about experimental features (the heartbeat) off;
    SQLAlchemy's log too ("Error closing cursor" and its traceback, when a stop signal cuts a
    query short: the errors that matter are raised, and said in one line)."""
    import logging

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sqlalchemy_log = logging.getLogger("sqlalchemy")
    if not sqlalchemy_log.handlers:
        sqlalchemy_log.addHandler(logging.NullHandler())
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    # Optuna's optimize() runs the heartbeat itself; a sweep's worker runs it (worker._heartbeat)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def check_name(study: str) -> str:
    if not NAME.fullmatch(study):
        raise SweepError(f"--study {study!r}: use letters, digits, '.', '-' and '_' (it names sweeps/STUDY.db)")
    return study


def storage_url(url: str | None, study: str, create: bool = True) -> str:
    """The storage of ``study``: ``url``, else the SQLite file ``sweeps/STUDY.db`` (its folder made
    when ``create``; else it must exist). ``postgresql://`` and ``postgres://`` go through psycopg 3,
    the driver the ``sweep`` extra installs."""
    if url is None:
        path = Path("sweeps") / f"{check_name(study)}.db"
        if create:
            path.parent.mkdir(exist_ok=True)
        elif not path.exists():
            raise SweepError(
                f"no study {study!r} here: {path} does not exist (gpumlp sweep run makes it; "
                "give --storage for a study elsewhere)"
            )
        return f"sqlite:///{path.as_posix()}"
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise SweepError(f"--storage {url!r} is not a database URL, e.g. sqlite:///sweeps.db or postgresql://HOST/DB")
    database = _parsed(url).database
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    if scheme.startswith("sqlite") and database not in (None, "", ":memory:"):
        if create:  # sqlite:///runs/s.db: its folder made, as sweeps/ is
            folder = Path(database).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise SweepError(f"--storage {url}: cannot make the folder {folder} ({e.strerror or e})") from None
        elif not os.path.lexists(database):  # show and best read a study: never make an empty database
            raise SweepError(f"no study {study!r} in --storage {url}: {database} does not exist; check the path")
    return url


SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal", ".lock")  # the database and the files beside it


def refuse_storage_file(path, url: str | None, option: str) -> None:
    """Refuse ``path`` when it is the SQLite database at ``url`` or one of the files beside it (its
    write-ahead log, its lock): writing there would destroy the study."""
    if url is None or not url.startswith("sqlite"):
        return
    database = os.path.realpath(_parsed(url).database or "")
    target = os.path.realpath(path)
    for suffix in SQLITE_COMPANIONS:
        if target == database + suffix:
            raise SweepError(
                f"{option} {path} is the study's {'database' if not suffix else 'file ' + suffix}: writing there would "
                "destroy the study; choose another path, e.g. best.toml"
            )


def _parsed(url: str):
    """``url`` parsed by SQLAlchemy; one that it cannot parse (a port that is not a number) is a
    ``SweepError`` that names the URL with its password hidden."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:
        hidden = re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)
        raise SweepError(f"--storage {hidden} is not a database URL SQLAlchemy can read ({e}); check it") from None


def shown(url: str) -> str:
    """``url`` with its password hidden, for messages."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def open_storage(url: str, heartbeat: int | None = None) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``; with ``heartbeat`` (seconds) a running trial whose worker
    went silent for two beats is failed and retried once. Unreachable: a one-line ``SweepError``."""
    import sqlalchemy

    quiet()
    sqlite = url.startswith("sqlite")
    if sqlite and sqlalchemy.engine.make_url(url).database in (None, "", ":memory:"):
        raise SweepError(f"--storage {url}: a sweep's SQLite storage is a file, e.g. sqlite:///sweeps/NAME.db")
    if sqlite:
        _check_sqlite_file(Path(sqlalchemy.engine.make_url(url).database), url)
    connect = {"timeout": SQLITE_BUSY_S} if sqlite else {"connect_timeout": CONNECT_TIMEOUT_S}
    beat = {}
    if heartbeat is not None:
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        beat = dict(heartbeat_interval=heartbeat, grace_period=2 * heartbeat, heartbeat_stale_trial_callback=retry)
    lock = Path(f"{sqlalchemy.engine.make_url(url).database}.lock") if sqlite else None
    made = lock is not None and not os.path.lexists(lock)
    try:
        with _file_lock(lock) if sqlite else _nothing():
            storage = _create_storage(url, {"connect_args": connect}, beat)
            if sqlite:
                _write_ahead(storage.engine)
            return storage
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, RuntimeError) as e:
        if made:  # the lock this call made beside a file that is no database: not left behind
            with contextlib.suppress(OSError):
                lock.unlink()
        reason = " ".join(str(e).split("\n")[0].split()) or type(e).__name__
        reason = re.sub(r"\s*\(Background on this error.*", "", reason)
        raise SweepError(f"cannot open the study storage {shown(url)}: {reason}") from None


def _check_sqlite_file(path: Path, url: str) -> None:
    """Refuse, before its lock file is made beside it, a ``path`` that is a folder or a special file.
    By ``stat`` only: opening and closing the database file here would drop the locks SQLite holds on
    it for this process's other connections (POSIX locks belong to the process), and their reads
    would then go stale."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise SweepError(f"--storage {shown(url)}: cannot read {path} ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise SweepError(f"--storage {shown(url)}: {path} is {what}; name a database file, e.g. sqlite:///sweeps/s.db")


def _create_storage(url: str, engine: dict, beat: dict):
    """``RDBStorage``, which makes the tables of a new database: when another machine does the same
    at the same moment, one of the two fails on the other's tables; the second try finds them."""
    import sqlalchemy

    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, **beat)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as e:
            if attempt == 2 or not isinstance(e, sqlalchemy.exc.IntegrityError) and "already exists" not in str(e):
                raise
            time.sleep(0.2)


def _write_ahead(engine) -> None:
    """SQLite in write-ahead-log mode, synchronised at checkpoints rather than at every commit: a
    trial's dozen small writes then cost milliseconds, not an fsync each, and readers never wait
    for a writer. (A power cut may lose the last commits, never the file; a sweep on a network
    file system wants PostgreSQL anyway.)"""
    import sqlalchemy

    def pragmas(connection, _record) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(engine, "connect", pragmas)
    engine.dispose()  # the connections made so far lack the pragma
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")  # kept in the file, for every process


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextlib.contextmanager
def study_lock(storage: optuna.storages.RDBStorage, study: str) -> Iterator[None]:
    """One process at a time, on every machine that shares the storage: PostgreSQL's advisory lock,
    or a file lock beside the SQLite file. Released when the process dies, however it dies."""
    name = storage.engine.url.get_backend_name()
    if name == "sqlite":
        with _file_lock(Path(f"{storage.engine.url.database}.lock")):
            yield
    elif name == "postgresql":
        import sqlalchemy

        key = int.from_bytes(hashlib.sha256(f"gpumlp sweep {study}".encode()).digest()[:8], "big", signed=True)
        with storage.engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    else:
        raise SweepError(
            f"--storage {shown(str(storage.engine.url))}: gpumlp sweep shares studies in SQLite or PostgreSQL"
        )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as f:
        try:
            import fcntl
        except ImportError:  # Windows: lock the file's first byte, retrying while another holds it
            import msvcrt

            while True:
                try:
                    msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
                    break
                except OSError:
                    time.sleep(0.05)
            try:
                yield
            finally:
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_study(storage, name: str, space: Space | None = None, pruner=None, sampler=None,
               heartbeat: int | None = None) -> optuna.Study:  # fmt: skip
    """The study ``name``: created for ``space`` if missing (``space`` None: it must exist), and
    refused when it was made for another space. A new study records its ``heartbeat`` (seconds,
    default ``HEARTBEAT_S``), which every worker of it keeps: one that beat more slowly than
    another expects would have its trials failed as stale; another ``heartbeat`` is refused."""
    with study_lock(storage, name):
        try:
            study = optuna.load_study(study_name=name, storage=storage, pruner=pruner, sampler=sampler)
        except KeyError:
            if space is None:
                known = optuna.get_all_study_names(storage)
                have = f"it holds {', '.join(sorted(known))}" if known else "it holds no study"
                raise SweepError(f"no study named {name!r} in {shown(storage.url)} ({have})") from None
            study = optuna.create_study(
                study_name=name, storage=storage, direction="maximize", pruner=pruner, sampler=sampler
            )
            study.set_user_attr(SPACE_ATTR, space.as_dict())
            study.set_user_attr(FINGERPRINT_ATTR, space.fingerprint())
            study.set_user_attr(HEARTBEAT_ATTR, heartbeat or HEARTBEAT_S)
    if space is not None and study.user_attrs.get(FINGERPRINT_ATTR) != space.fingerprint():
        raise SweepError(
            f"study {name!r} in {shown(storage.url)} was made for another space "
            f"({study.user_attrs.get(FINGERPRINT_ATTR, 'not by gpumlp sweep')}, this file's is "
            f"{space.fingerprint()}): name a new --study, or run it with its own space file"
        )
    beat = study.user_attrs.get(HEARTBEAT_ATTR)
    if heartbeat is not None and beat is not None and heartbeat != beat:
        raise SweepError(f"study {name!r} beats every {beat} s, as it was created: drop --heartbeat, or give {beat}")
    return study


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def counts(trials) -> Counts:
    c = Counts()
    for t in trials:
        name = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
                TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}[t.state]  # fmt: skip
        setattr(c, name, getattr(c, name) + 1)
    return c


def claim(study: optuna.Study, storage, total: int, worker: dict | None = None):
    """The next trial to run, as a running Optuna ``Trial`` marked with ``worker`` (its user
    attribute: host, pid, device); ``None`` once the study has ``total`` finished trials; ``WAIT``
    while the trials still needed are all running elsewhere (one of them may fail). Under the
    study's lock, so that the trials never outnumber ``total``. Trials whose worker stopped beating
    are failed here first, and retried once (``open_storage``)."""
    with study_lock(storage, study.study_name):
        optuna.storages.fail_stale_trials(study)
        c = counts(study.get_trials(deepcopy=False))
        if c.finished >= total:
            return None
        if c.finished + c.running >= total:
            return WAIT
        trial = study.ask()  # a waiting trial (a retry) first, else a new one
        if storage.heartbeat_interval is not None:  # at once: a running trial that never beat is never stale
            storage.record_heartbeat(trial._trial_id)
        if worker is not None:  # whose it is, from the start: the command fails its workers' trials if they cannot
            trial.set_user_attr(WORKER_ATTR, worker)
        return trial


def fail_orphans(study: optuna.Study, host: str, pids: set[int]) -> None:
    """Fail the running trials of the workers ``pids`` on ``host`` (stopped or killed): what a
    worker could not do itself, its command does."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = t.user_attrs.get(WORKER_ATTR) or {}
        if who.get("host") == host and who.get("pid") in pids:
            with contextlib.suppress(Exception):  # finished meanwhile, or the database is gone
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
