"""Writing files so that a crash never leaves half of one behind."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator


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
    """Calls ``write(temp_name)`` and puts the result at ``path`` only if it succeeds."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:
        write(temp)
