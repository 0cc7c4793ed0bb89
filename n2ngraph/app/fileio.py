"""Writing files so that a crash never leaves half of one behind, a write that fails (a
full disk, a read-only file system, a file where a folder should be) is one
``WriteError`` naming the file and the system's reason, never a traceback, and run
directories that one process at a time may write.

The reliability tests reproduce crashes at named points of these writes (``fault_point``)
by making the process signal itself there.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

TEMP_SUFFIX = ".tmp"
LOCK_NAME = ".lock"
FAULT_AT, FAULT_SIGNAL = "N2NGRAPH_FAULT_AT", "N2NGRAPH_FAULT_SIGNAL"
_faults_passed: dict[str, int] = {}


def fault_point(name: str) -> None:
    """A named point where a crash must lose nothing: with ``N2NGRAPH_FAULT_AT=NAME[#N]``
    in the environment, the N-th time (default the first) this process passes NAME it
    sends itself ``N2NGRAPH_FAULT_SIGNAL`` (default SIGKILL, which runs no cleanup; SIGSTOP
    freezes it there). The reliability tests crash real training runs this way at exact
    points instead of at guessed delays. Unset, it costs one dictionary lookup."""
    wanted = os.environ.get(FAULT_AT)
    if not wanted or wanted.partition("#")[0] != name:
        return
    _faults_passed[name] = _faults_passed.get(name, 0) + 1
    if str(_faults_passed[name]) == (wanted.partition("#")[2] or "1"):
        os.kill(os.getpid(), signal.Signals[os.environ.get(FAULT_SIGNAL, "SIGKILL")])


class WriteError(Exception):
    """A file or folder that could not be written, on one line: ``runs/x/last.safetensors:
    cannot write (No space left on device)``. What was there before is still there."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # the default would call WriteError(message) and fail
        return WriteError, (self.path, self.problem)


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """Yields a temp file name beside ``path``; renames it over ``path`` on success.

    Same directory, so ``os.replace`` is a rename on one file system: readers see the
    old file or the new one, never half of one. On any failure the temp file is removed
    and ``path`` is untouched; after a kill -9, which removes nothing, the temp file
    (``.NAME.*.tmp``) stays until ``remove_stale_temps``."""
    path = Path(path)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        yield temp
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes it 0600; give a normal file's mode
        fault_point(f"rename:{path.name}")
        os.replace(temp, path)
        fault_point(f"written:{path.name}")
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, write: Callable[[str], object]) -> None:
    """Calls ``write(temp_name)`` and puts the result at ``path`` only if it succeeds; an
    OSError on the way (``write``'s own too) is a WriteError naming ``path``."""
    try:
        make_directory(Path(path).parent)
        with atomic_path(path) as temp:
            write(temp)
    except OSError as e:
        raise WriteError(path, f"cannot write ({_reason(e)})") from None


def make_directory(path: Path) -> None:
    """Folder ``path`` and any missing parents; a WriteError if one cannot be made (a
    file, or a link to nowhere, in the way; no permission; a read-only file system)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # mkdir's word for "something that is not a folder"
        raise WriteError(path, "cannot make a folder here: a file or a broken link is in "
                               "the way") from None
    except OSError as e:
        raise WriteError(path, f"cannot make a folder here ({_reason(e)})") from None


def remove_stale_temps(directory: Path) -> list[Path]:
    """Removes the temp files ``atomic_path`` left in ``directory`` when its process was
    killed mid-write, and returns them. Only safe while no other process can be writing
    there: the caller holds the directory's lock (``lock_directory``)."""
    stale = sorted(p for p in Path(directory).glob(f".*{TEMP_SUFFIX}") if p.is_file())
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class DirectoryBusy(Exception):
    """Another process holds the directory's lock; ``args[0]``: its pid, if it wrote one."""


def lock_directory(directory: Path) -> IO:
    """Takes the exclusive lock of ``directory`` (an flock on its ``.lock`` file) without
    waiting, and returns the open lock file: the lock lasts until that file is closed or
    the process ends, however it ends (a kill -9 too), so it can never be left stale.
    Raises DirectoryBusy if another process holds it."""
    lock = open(Path(directory) / LOCK_NAME, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip()
        lock.close()
        raise DirectoryBusy(holder) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")  # for the message another process shows
    lock.flush()
    return lock


@contextlib.contextmanager
def created_whole(directory: Path) -> Iterator[tuple[Path, IO]]:
    """Yields (a hidden directory beside ``directory``, its lock) to fill, then renames it
    to ``directory``: the directory appears with all its first files or not at all. On
    failure the hidden one is removed; one a kill -9 left is removed by the next call
    for the same name (its lock is free). FileExistsError if ``directory`` exists then."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(directory)
    temp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.",
                                 suffix=".creating"))
    try:
        lock = lock_directory(temp)
        yield temp, lock
        fault_point(f"rename:{directory.name}")
        try:
            os.rename(temp, directory)  # fails if another process made it non-empty meanwhile
        except OSError:
            raise FileExistsError(directory) from None
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _remove_abandoned(directory: Path) -> None:
    """Removes the hidden directories ``created_whole`` left for ``directory`` when its
    process was killed: those whose lock no process holds."""
    for temp in directory.parent.glob(f".{glob.escape(directory.name)}.*.creating"):
        if not (temp / LOCK_NAME).is_file():
            continue  # killed before locking, or another process in its first instant
        try:
            lock_directory(temp).close()
        except (DirectoryBusy, OSError):
            continue
        shutil.rmtree(temp, ignore_errors=True)


def safe_component(name: str, limit: int = 64) -> str:
    """``name`` as one harmless path component, for names that come from a spec: ASCII
    letters, digits, '.', '-' and '_' kept, anything else (a '/', a NUL) as '_', no
    leading dot (so never '..' or hidden), at most ``limit`` characters."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")[:limit]
    return safe or "run"
