"""Writing files so that a crash never leaves half of one behind, and a write that
fails (a full disk, a read-only file system, a file where a folder should be) is one
``WriteError`` naming the file and the system's reason, never a traceback."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator


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
    and ``path`` is untouched."""
    path = Path(path)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield temp
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes it 0600; give a normal file's mode
        os.replace(temp, path)
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
