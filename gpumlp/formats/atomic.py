"""Writing files safely: atomically, through symlinks, keeping the mode, undisturbed by Ctrl-C,
never over another run's file, and never over a file the user did not name.

``atomic_write`` writes a temporary file beside the target, fsyncs it and renames it into place,
so a reader sees the old file or the new one, never a part, and fsyncs the folder. A Ctrl-C,
SIGTERM or SIGHUP that arrives meanwhile is held back until the rename is done, then raised. The
temporary file's name holds its writer's pid, so that ``remove_stale`` can tell a killed writer's.
``RunLock`` is an exclusive ``flock`` on a hidden ``.NAME.lock`` beside a checkpoint, held for a
whole training run. ``free_path`` gives a default output name a ``-2``, ``-3``, … suffix instead
of overwriting an earlier run's file.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import glob
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from gpumlp.errors import CheckpointError
from gpumlp.formats.signals import DeferredInterrupt, deferred  # noqa: F401  (re-exported)

try:  # POSIX; elsewhere runs are not locked against each other
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


# Ctrl-C, SIGTERM and SIGHUP are held back while a file is written (gpumlp/formats/signals.py).
deferred_sigint = deferred

# The fix a write error names, where a command's own words differ from the writer's ("choose
# another TARGET" for `gpumlp convert`, whose writers are also `gpumlp train --save`'s): set with
# ``fix_for_writes``, for the writes inside it.
_FIX: contextvars.ContextVar[str | None] = contextvars.ContextVar("gpumlp_write_fix", default=None)


@contextlib.contextmanager
def fix_for_writes(fix: str) -> Iterator[None]:
    """Every ``atomic_write`` inside names ``fix`` when it fails, whatever its caller passed."""
    token = _FIX.set(fix)
    try:
        yield
    finally:
        _FIX.reset(token)


def atomic_write(
    path: str | os.PathLike,
    write: Callable,
    what: str = "a file",
    fix: str = "choose another path",
    error: type[Exception] = CheckpointError,
) -> Path:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, then rename it into place.

    A symlink at ``path`` is written through (its target is replaced, the link stays); an existing
    file keeps its permission bits; a folder, device or FIFO there is refused (a rename would
    replace ``/dev/null`` itself); a new one gets a new file's (0666 less the umask). Returns the
    path written, as given. Errors are ``error`` (``CheckpointError``; the dataset cache's are
    ``DataError``), worded with ``what`` is written and the ``fix`` (``fix_for_writes``'s, inside one)."""
    path, fix = Path(path), _FIX.get() or fix
    real = Path(os.path.realpath(path))  # through every symlink; the folder may not exist yet
    folder = real.parent
    try:
        st = os.stat(real)
    except OSError:
        mode = 0o666 & ~_umask()
    else:  # a folder, a device (/dev/null), a FIFO: the rename would replace it, never write into it
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, FIFO or socket)"
            raise error(f"cannot write {what} to {path}: {kind} is there; {fix}")
        mode = stat.S_IMODE(st.st_mode)
    with deferred_sigint():
        try:
            make_folders(folder)
            # The writer's pid in the name: a later run removes what a killed writer left (remove_stale).
            fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.{os.getpid()}.", suffix=".tmp", dir=folder)
        except OSError as e:
            raise error(f"cannot write {what} in {folder}: {e.strerror or e}; {fix}") from None
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)  # mkstemp makes 0600
            os.replace(tmp, real)
            _fsync_folder(folder)  # the rename itself survives a power cut
        except OSError as e:
            raise error(f"cannot write {path}: {e.strerror or e}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - a folder that cannot be opened (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a folder; the file itself is synced
        pass
    finally:
        os.close(fd)


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files ``atomic_write`` left beside ``path`` when its writer was killed
    (``kill -9``, a power cut), recognised by their writer's pid, which no longer runs. A live
    writer's file is never touched. Returns those removed."""
    real = Path(os.path.realpath(path))
    removed = []
    for tmp in real.parent.glob(f".{glob.escape(real.name)}.*.tmp"):
        pid = re.fullmatch(r"(\d+)\.[a-z0-9_]+\.tmp", tmp.name[len(real.name) + 2 :])  # PID.RANDOM.tmp
        if pid and not _alive(int(pid[1])):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def make_folders(folder: Path) -> list[Path]:
    """``mkdir -p folder``, one level at a time in a loop: ``Path.mkdir(parents=True)`` recurses once
    per missing level, and a 4,000-character path of one-letter folders exceeds Python's stack.
    Returns the folders it made, outermost first (``remove_folders`` undoes them)."""
    missing, made = [], []
    while not folder.is_dir() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for level in reversed(missing):
        try:
            level.mkdir()
            made.append(level)
        except FileExistsError:  # another process made it meanwhile
            pass
    return made


def remove_folders(made: list[Path]) -> None:
    """Remove the folders ``make_folders`` made, innermost first, those still empty only."""
    for folder in reversed(made):
        with contextlib.suppress(OSError):
            folder.rmdir()


def path_error(path, e: OSError, what: str = "a file", fix: str = "choose another path") -> str:
    """One line for an OSError about ``path``; a name over the file system's limit says the limit."""
    if e.errno == errno.ENAMETOOLONG:
        longest = max((len(os.fsencode(part)) for part in Path(path).parts), default=0)
        return (
            f"cannot use {what} at {str(path)[:80]}…: the file name is too long ({longest} bytes in its longest "
            f"part, {len(os.fsencode(str(path)))} in all; most file systems allow 255 and 4096); use a shorter name"
        )
    if e.errno == errno.ELOOP:
        return f"cannot use {what} at {path}: a loop of symbolic links is there; remove the loop or {fix}"
    return f"cannot use {what} at {path}: {e.strerror or e}; {fix}"


def check_target(path: str | os.PathLike, what: str = "a file", fix: str = "choose another --save path") -> Path:
    """Fail early (before hours of training) when ``atomic_write`` could not replace ``path``:
    a folder or a special file there, a read-only file, no writable folder to hold it, or a name
    longer than the file system allows."""
    try:
        return _check_target(Path(path), what, fix)
    except OSError as e:  # a name too long, a loop of links: one line, not a traceback
        raise CheckpointError(path_error(path, e, what, fix)) from None


def _check_target(path: Path, what: str, fix: str) -> Path:
    real = Path(os.path.realpath(path))
    if real.exists() or real.is_symlink():
        try:
            st = os.stat(real)
        except OSError as e:
            raise CheckpointError(f"cannot write {what} to {path}: {e.strerror or e}") from None
        if stat.S_ISDIR(st.st_mode):
            raise CheckpointError(f"cannot write {what} to {path}: a folder is there; {fix}")
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"cannot write {what} to {path}: it is not a regular file; {fix}")
        if not st.st_mode & stat.S_IWUSR:
            raise CheckpointError(
                f"{path} is read-only (mode {stat.S_IMODE(st.st_mode):o}): make it writable (chmod u+w) "
                f"to replace it, or {fix}"
            )
    probe = real.parent
    while not _exists(probe) and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write {what} to {path}: {probe} is not a writable folder; {fix}")
    return path


def _exists(path: Path) -> bool:
    """``path.exists()`` that raises what Python 3.11's passes over as "missing": a loop of links."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def numbered(path: str | os.PathLike) -> Iterator[Path]:
    """``path``, then ``stem-2.ext``, ``stem-3.ext``, … (up to -9999)."""
    path = Path(path)
    yield path
    for n in range(2, 10_000):
        yield path.with_name(f"{path.stem}-{n}{path.suffix}")


def taken(path: Path, companions: Callable[[Path], list[Path]] = lambda p: []) -> bool:
    """Whether ``path`` or one of ``companions(path)`` exists (a dangling symlink counts)."""
    return any(p.exists() or p.is_symlink() for p in (path, *companions(path)))


def free_path(path: str | os.PathLike, companions: Callable[[Path], list[Path]] = lambda p: []) -> Path:
    """``path`` if neither it nor its ``companions(path)`` exist, else the first free ``stem-2.ext``,
    ``stem-3.ext``, …: a default output name never replaces an earlier run's file."""
    for candidate in numbered(path):
        if not taken(candidate, companions):
            return candidate
    raise CheckpointError(f"{Path(path).parent} holds {Path(path).stem}-2 … -9999 already; name the file yourself")


class RunLock:
    """An exclusive lock on ``target`` for one process: ``flock`` on ``.NAME.lock`` beside it, which
    records the holder's pid and command line for the message another run gets, and is deleted
    when the lock is released."""

    def __init__(self, target: str | os.PathLike):
        real = Path(os.path.realpath(target))
        self.target, self.path, self.fd = Path(target), real.with_name(f".{real.name}.lock"), None

    def acquire(self) -> bool:
        """Take the lock; False if another process holds it. No-op (True) where flock does not exist."""
        if fcntl is None:
            return True
        while True:
            try:
                make_folders(self.path.parent)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
            except OSError as e:
                why = path_error(self.target, e, "a checkpoint", "choose another --save path")
                raise CheckpointError(why) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            try:  # the holder before us may have deleted the file between our open and our flock
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {' '.join(_command_line())}\n".encode())
        self.fd = fd
        return True

    def held_by(self) -> str | None:
        """Who holds the lock (``holder()``), or None when no run does; creates no lock file."""
        if fcntl is None:
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:  # no lock file: no run holds it
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return self.holder()
        finally:
            os.close(fd)  # closing releases a shared lock taken just now
        return None

    def refuse_if_held(self, what: str) -> None:
        """A ``CheckpointError`` naming the run while another process holds the lock on the target."""
        holder = self.held_by()
        if holder is not None:
            raise CheckpointError(
                f"a gpumlp run ({holder}) is saving to {self.target}; {what} when it has ended, or choose another path"
            )

    def holder(self) -> str:
        """``"pid 123: gpumlp train …"`` of the process holding the lock, as it recorded itself."""
        try:
            pid, _, command = self.path.read_text(errors="replace").strip().partition(" ")
        except OSError:
            return "another process"
        return f"pid {pid}: {command}" if pid else "another process"

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # while still locked: a waiting process then sees a new file
            os.close(self.fd)
            self.fd = None


def _command_line() -> list[str]:
    import sys

    return [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
