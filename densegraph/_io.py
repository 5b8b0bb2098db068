"""Files the way every densegraph command writes them: whole or not at all, with the usual permissions, and
never over anything but a regular file."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import Loc, OutputError

__all__ = [
    "file_sha256",
    "file_kind",
    "output_file",
    "umask",
    "write_atomic",
    "write_bytes_atomic",
]


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


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


def file_kind(mode: int) -> str:
    """``a folder``, ``a character device``, ... for an ``st_mode``; ``a regular file`` for one."""
    return next((name for test, name in _KINDS if test(mode)), "a regular file")


def output_file(path: str | os.PathLike[str]) -> Path:
    """The file an output path names: a symbolic link is followed (the link stays, its target is written).

    Raises :class:`OutputError` when that is something other than a regular file or nothing (a device, a FIFO,
    a folder): renaming over it would replace it, writing into it is not writing a file.
    """
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:  # a loop of links, a name too long, a component that is a file
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}", loc=Loc(os.fspath(path))) from None
    if not stat.S_ISREG(mode):
        what = "the output" if target == Path(path) else f"the output links to {target}, which"
        raise OutputError(
            f"{what} is {file_kind(mode)}, not a regular file: not replacing it",
            loc=Loc(os.fspath(path)),
            hint="name a file to write, in a folder you can write to",
        )
    return target


def write_atomic(
    path: str | os.PathLike[str], write: Callable[[BinaryIO], object], *, mode: int | None = None
) -> None:
    """Call ``write`` on a temporary file in the target's folder, sync it, then rename it over ``path``.

    ``mode``: the file's permissions (default: what a new file gets under the umask; ``mkstemp`` alone would
    make it 0600). Only a regular file (or nothing) is ever replaced; a symbolic link is kept and the file it
    points to is written (:func:`output_file`). A failure or an interrupt removes the temporary file and leaves
    an earlier ``path`` as it was; an I/O error (a missing or read-only folder, a full disk) is an
    :class:`OutputError` naming ``path``.
    """
    where = Loc(os.fspath(path))
    target = output_file(path)
    folder = target.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise OutputError(
                f"the folder {str(folder)!r} does not exist",
                loc=where,
                hint="create the folder first or choose another output path",
            ) from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise OutputError(
                f"cannot write in the folder {str(folder)!r}: {exc.strerror or exc}",
                loc=where,
                hint="choose a folder you can write to",
            ) from None
        raise OutputError(f"cannot write the file: {exc.strerror or exc}", loc=where) from None
    try:
        os.chmod(tmp, 0o666 & ~umask() if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        output_file(path)  # still nothing but a regular file: a FIFO made meanwhile is not renamed over
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(
            f"cannot write the file: {exc.strerror or exc}",
            loc=where,
            hint="check that the disk is not full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else None,
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(
    path: str | os.PathLike[str], data: bytes | memoryview, *, mode: int | None = None
) -> None:
    """:func:`write_atomic` of ``data`` (anything with the buffer protocol)."""
    write_atomic(path, lambda f: f.write(data), mode=mode)
