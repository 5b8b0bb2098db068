"""Files the way every densegraph command reads and writes them.

Reading: only regular files, checked before and after opening, so a named pipe, a device or a socket given as an
input is refused instead of hanging (a FIFO without a writer) or filling memory (``/dev/zero``). Writing: whole or
not at all, with the usual permissions, and never over anything but a regular file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import DensegraphError, Loc, OutputError

__all__ = [
    "check_regular",
    "file_sha256",
    "file_kind",
    "open_regular",
    "output_file",
    "read_regular",
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


_REASONS = {
    errno.ENOENT: "no such file",
    errno.ENOTDIR: "no such file (a part of the path is not a folder)",
    errno.ELOOP: "the path runs into a symbolic link loop",
    errno.ENAMETOOLONG: "the path or one of its names is longer than the system allows",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def _refusal(
    exc: OSError | ValueError,
    *,
    what: str,
    error: type[DensegraphError],
    where: Loc,
    missing_hint: str | None,
) -> DensegraphError:
    if isinstance(exc, ValueError):  # os.stat/os.open: "embedded null byte"
        return error("the path contains a NUL byte", loc=where, hint=f"check the path to the {what}")
    reason = _REASONS.get(exc.errno or 0) or f"cannot read the {what}: {exc.strerror or exc}"
    hint = missing_hint if exc.errno in (errno.ENOENT, errno.ENOTDIR) else None
    return error(reason, loc=where, hint=hint)


def _require_regular(mode: int, *, what: str, error: type[DensegraphError], where: Loc) -> None:
    if stat.S_ISREG(mode):
        return
    raise error(f"is {file_kind(mode)}, not a {what}", loc=where, hint=f"give the path of a regular {what}")


def check_regular(
    path: str | os.PathLike[str],
    *,
    what: str,
    error: type[DensegraphError] = DensegraphError,
    loc: Loc | None = None,
    missing_hint: str | None = None,
) -> os.stat_result:
    """``os.stat`` of ``path``, refusing with one located ``error`` unless it is a regular file.

    ``what`` names the file in messages ("spec file", "weights file"); ``loc`` is where the error points
    (default: the path itself). A missing file, a symlink loop, an over-long name or a NUL byte are refused
    the same way.
    """
    where = loc if loc is not None else Loc(os.fspath(path))
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:
        raise _refusal(exc, what=what, error=error, where=where, missing_hint=missing_hint) from None
    _require_regular(info.st_mode, what=what, error=error, where=where)
    return info


def open_regular(
    path: str | os.PathLike[str],
    *,
    what: str,
    error: type[DensegraphError] = DensegraphError,
    loc: Loc | None = None,
    missing_hint: str | None = None,
) -> BinaryIO:
    """Open a regular file for reading in binary mode, refusing anything else with one located ``error``.

    The file is checked before opening and again on the open descriptor, and opened non-blocking, so a FIFO
    put in its place in between cannot make the open or a read wait forever.
    """
    where = loc if loc is not None else Loc(os.fspath(path))
    check_regular(path, what=what, error=error, loc=loc, missing_hint=missing_hint)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except (OSError, ValueError) as exc:
        raise _refusal(exc, what=what, error=error, where=where, missing_hint=missing_hint) from None
    try:
        _require_regular(os.fstat(fd).st_mode, what=what, error=error, where=where)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(
    path: str | os.PathLike[str],
    *,
    limit: int,
    what: str,
    error: type[DensegraphError] = DensegraphError,
    loc: Loc | None = None,
    missing_hint: str | None = None,
    too_large_hint: str | None = None,
) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (:func:`open_regular`'s checks).

    At most ``limit + 1`` bytes are read, whatever the file claims its size is, so a file that grows while it
    is read cannot fill memory either.
    """
    where = loc if loc is not None else Loc(os.fspath(path))
    with open_regular(path, what=what, error=error, loc=loc, missing_hint=missing_hint) as f:
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise _refusal(exc, what=what, error=error, where=where, missing_hint=None) from None
    if len(data) > limit:
        raise error(f"the {what} is larger than {_size(limit)}", loc=where, hint=too_large_hint)
    return data


def _size(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000} MB"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000} kB"
    return f"{n} bytes"


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
