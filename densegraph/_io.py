"""Files the way every densegraph command writes them: whole or not at all, with the usual permissions."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["file_sha256", "umask", "write_atomic", "write_bytes_atomic"]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def umask() -> int:
    """The process's umask (reading it means setting it: it is put back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(
    path: str | os.PathLike[str], write: Callable[[BinaryIO], object], *, mode: int | None = None
) -> None:
    """Call ``write`` on a temporary file in the target's folder, sync it, then rename it over ``path``.

    ``mode``: the file's permissions (default: what a new file gets under the umask; ``mkstemp`` alone would
    make it 0600). A failure or an interrupt removes the temporary file and leaves an earlier ``path`` as it
    was; the ``OSError`` of ``mkstemp`` (an unwritable or missing folder) propagates before anything exists.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~umask() if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(
    path: str | os.PathLike[str], data: bytes | memoryview, *, mode: int | None = None
) -> None:
    """:func:`write_atomic` of ``data`` (anything with the buffer protocol)."""
    write_atomic(path, lambda f: f.write(data), mode=mode)
