"""Output folders: what ``-o`` may replace, and how it is replaced.

The rules, for every command that writes a folder (``build``, ``train``):

- Only densegraph's own files are ever replaced. A build folder is replaced as a whole only when every entry
  in it is listed in its ``manifest.json`` (``files``: name -> sha256, or ``null`` for a file the build's
  ``build_engine.sh`` writes later) with the bytes it had when it was written; anything else — a file the user
  added, a listed file the user changed — refuses the build with one line naming those entries.
- ``-o`` is a folder or nothing. A symbolic link is followed (the link stays, the build lands where it points);
  a file, a device or a FIFO is refused; so is the current folder (or one holding it), which cannot be
  replaced while the shell stands in it.
- A build is staged in ``.NAME.XXXXXXXX.tmp`` beside the output, holding a marker (:data:`STAGING_MARKER`:
  host, pid and the process's start time). On the next build of the same output, a staging folder whose
  marker names a process of this host that no longer runs is removed; one without a marker, or of a live
  process, or of another host, is left alone.
- The new build replaces the old one in a single ``renameat2(RENAME_EXCHANGE)`` where the kernel and file
  system have it (two renames otherwise), so the output is always one whole build, old or new.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._io import file_kind, file_sha256, umask
from .errors import DensegraphError, Loc, OutputError
from .manifest import MANIFEST_NAME, read_manifest, write_manifest

__all__ = [
    "BuildOutput",
    "STAGING_MARKER",
    "foreign_entries",
    "owned_files",
    "refuse_overwrite",
    "sweep_stale_staging",
]

STAGING_MARKER = ".densegraph-staging"
_SHOWN = 5  # names listed in a refusal before "and N more"


# ---------------------------------------------------------------------------------------------------------
# which entries of a folder densegraph wrote


def owned_files(manifest: dict[str, Any]) -> dict[str, str | None]:
    """The entries a build manifest claims: name -> sha256 (``None``: written later, content not known).

    A manifest without ``files`` (written before densegraph listed them) claims the files it names.
    """
    files = manifest.get("files")
    if isinstance(files, dict):
        return {str(k): (v if isinstance(v, str) else None) for k, v in files.items()}
    named: dict[str, str | None] = {}
    for key in ("model", "graph"):
        record = manifest.get(key)
        if isinstance(record, dict) and isinstance(record.get("file"), str):
            named[record["file"]] = record.get("sha256") if isinstance(record.get("sha256"), str) else None
    engine = manifest.get("engine")
    if isinstance(engine, dict):
        for key in ("file", "script"):
            if isinstance(engine.get(key), str):
                named[engine[key]] = None
        if isinstance(engine.get("file"), str):
            named[engine["file"] + ".json"] = None
    return named


def foreign_entries(folder: Path) -> tuple[list[str], list[str]]:
    """The entries of a build ``folder`` densegraph did not write, and those it wrote that were changed since.

    Without a densegraph manifest every entry is foreign.
    """
    names = sorted(os.listdir(folder))
    manifest = read_manifest(folder)
    if manifest is None:
        return [n for n in names if n != STAGING_MARKER], []
    owned = owned_files(manifest)
    foreign, changed = [], []
    for name in names:
        if name in (MANIFEST_NAME, STAGING_MARKER):
            continue
        if name not in owned:
            foreign.append(name)
            continue
        path, sha = folder / name, owned[name]
        if path.is_symlink() or (sha is not None and (not path.is_file() or file_sha256(path) != sha)):
            changed.append(name)
    return foreign, changed


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _check_replaceable(out: Path, shown: str) -> None:
    """Refuse to replace ``out`` unless it is empty or a build whose every entry densegraph wrote, unchanged."""
    if not any(out.iterdir()):
        return
    foreign, changed = foreign_entries(out)
    if not foreign and not changed:
        return
    where = Loc(shown)
    if read_manifest(out) is None and _stale(out):  # killed after the swap, in the engine build
        previous = [p.name for p in _staging_folders(out) if _same_marker(p, out)]
        raise OutputError(
            "the output folder holds a build that was interrupted before its manifest was written: not "
            "replacing it"
            + (f" (the previous build is in {_listing(previous)} beside it)" if previous else ""),
            loc=where,
            hint="remove the folder (or move the previous build back) and build again",
        )
    if read_manifest(out) is None:
        raise OutputError(
            f"the output folder is not empty and holds no densegraph build ({MANIFEST_NAME}): not replacing "
            f"it (it holds {_listing(foreign)})",
            loc=where,
            hint="choose another -o, or remove the folder",
        )
    parts = []
    if foreign:
        parts.append(f"files densegraph did not write: {_listing(foreign)}")
    if changed:
        parts.append(f"files changed since the build: {_listing(changed)}")
    raise OutputError(
        f"the build folder holds {'; '.join(parts)}: not replacing it",
        loc=where,
        hint="move them out of the folder, or choose another -o",
    )


def refuse_overwrite(paths: Iterable[Path], *, where: str, why: str, hint: str) -> None:
    """One line naming ``paths`` (that exist) when there are any: ``why`` says why they may not be replaced."""
    present = [p for p in paths if p.exists() or p.is_symlink()]
    if present:
        raise OutputError(f"{why}: {_listing([p.name for p in present])}", loc=Loc(where), hint=hint)


# ---------------------------------------------------------------------------------------------------------
# staging folders: ours, and stale


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), to tell a reused pid from the original."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()[19]  # field 22, counted after the command name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _marker() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _write_marker(folder: Path) -> None:
    (folder / STAGING_MARKER).write_text(json.dumps(_marker()) + "\n")


def _stale(folder: Path) -> bool:
    """True when ``folder`` holds densegraph's staging marker of a process of this host that has ended."""
    try:
        marker = json.loads((folder / STAGING_MARKER).read_text())
        host, pid, start = marker["host"], int(marker["pid"]), marker.get("start")
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname() or pid <= 0:
        return False  # another machine's (a shared file system): its pid says nothing here
    if not _alive(pid):
        return True
    now = _process_start(pid)
    return start is not None and now is not None and now != start  # the pid was reused


def _staging_folders(out: Path) -> list[Path]:
    """The folders beside ``out`` named as its staging folders are (``.NAME.*.tmp`` or ``.old``)."""
    try:
        siblings = sorted(out.parent.iterdir())
    except OSError:
        return []
    prefix = f".{out.name}."
    return [
        path
        for path in siblings
        if path.name.startswith(prefix)
        and path.name.endswith((".tmp", ".old"))
        and not path.is_symlink()
        and path.is_dir()
    ]


def _same_marker(a: Path, b: Path) -> bool:
    try:
        return (a / STAGING_MARKER).read_bytes() == (b / STAGING_MARKER).read_bytes()
    except OSError:
        return False


def sweep_stale_staging(out: Path) -> list[Path]:
    """Remove the staging folders of ``out`` (``.NAME.*.tmp`` or ``.old`` beside it) left by killed densegraph
    processes.

    Returns what was removed. Only folders with densegraph's marker of a dead process of this host go.
    """
    removed = []
    for path in _staging_folders(out):
        if _stale(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------------------
# replacing a folder in one step


def _load_renameat2() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _load_renameat2()
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False where the kernel or the file system cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(a), None, os.fspath(b))


class BuildOutput:
    """The output folder, replaced as a whole: work in :attr:`path` (a staging folder beside it), then
    :meth:`commit`. An exception before the commit removes the staging folder and leaves the folder as it was.
    :meth:`swap` moves the new build into place but keeps the previous one aside until :meth:`commit`, so a
    later failure still restores it. See the module docstring for what may be replaced.

    ``out``: the folder as the user named it (messages name it); a symbolic link is resolved.
    """

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.shown = os.fspath(out)
        self.out = Path(os.path.realpath(out)) if os.path.islink(out) else Path(out)
        self.path = self.out
        self._staging: Path | None = None
        self._had_previous = False
        self._swapped = self._done = False

    # -- entering: checks, sweep, staging

    def __enter__(self) -> BuildOutput:
        out, where = self.out, Loc(self.shown)
        try:
            mode = os.stat(out).st_mode
        except (FileNotFoundError, NotADirectoryError):  # the mkdir below says what is in the way
            mode = None
        except OSError as exc:
            raise OutputError(f"cannot use the output folder: {exc.strerror or exc}", loc=where) from None
        if mode is not None and not os.path.isdir(out):
            raise OutputError(
                f"the output exists and is {file_kind(mode)}, not a folder",
                loc=where,
                hint="choose another -o",
            )
        self._refuse_working_folder()
        if mode is not None:
            _check_replaceable(out, self.shown)
        sweep_stale_staging(out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        except OSError as exc:
            reason = (
                "is a file, not a folder" if isinstance(exc, FileExistsError) else exc.strerror or str(exc)
            )
            raise OutputError(
                f"cannot create the output folder: {exc.filename or out.parent}: {reason}",
                loc=where,
                hint="choose a folder you can write to with -o",
            ) from None
        self._staging = self.path = staging
        try:
            os.chmod(staging, 0o777 & ~umask())
            _write_marker(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self

    def _refuse_working_folder(self) -> None:
        try:
            here = Path.cwd().resolve()
        except OSError:  # the working folder was removed: it is not the output
            return
        target = self.out.resolve()
        if target == here or target in here.parents:
            raise OutputError(
                "the output folder is the current folder"
                + ("" if target == here else f" or holds it ({here})")
                + ": it cannot be replaced while in use",
                loc=Loc(self.shown),
                hint="run densegraph from the folder above it, or choose another -o",
            )

    # -- the manifest lists what the build wrote

    def write_manifest(self, manifest: dict[str, Any], *, later: Iterable[str] = ()) -> Path:
        """Write ``manifest.json`` into :attr:`path` with ``files``: every entry there (name -> sha256) and
        the ``later`` names (-> null) that a script of the build writes, or rewrites, afterwards."""
        folder = self.path
        files: dict[str, str | None] = {}
        for entry in sorted(os.listdir(folder)):
            path = folder / entry
            if entry not in (MANIFEST_NAME, STAGING_MARKER) and not entry.startswith(f".{MANIFEST_NAME}."):
                files[entry] = file_sha256(path) if path.is_file() and not path.is_symlink() else None
        for name in later:
            files[name] = None
        manifest["files"] = dict(sorted(files.items()))
        return write_manifest(folder, manifest)

    # -- replacing

    def swap(self) -> None:
        """Move the new build to the output path; the previous one stays aside until :meth:`commit`."""
        staging = self._staging
        assert staging is not None and not self._swapped, "swap() outside the with block, or twice"
        out = self.out
        if out.is_dir() and not out.is_symlink():
            _check_replaceable(out, self.shown)  # again: the user may have added a file during the build
            _write_marker(out)  # the previous build, once aside, is ours to sweep if we are killed
            try:
                if not _exchange(staging, out):
                    aside = staging.with_suffix(".old")
                    os.rename(out, aside)
                    try:
                        os.rename(staging, out)
                    except OSError:
                        os.rename(aside, out)
                        raise
                    os.rename(aside, staging)
            except BaseException:
                (out / STAGING_MARKER).unlink(missing_ok=True)
                raise
            self._had_previous = True
        else:
            os.rename(staging, out)
        self.path, self._swapped = out, True

    def commit(self) -> None:
        """Make the new build the output for good."""
        if not self._swapped:
            self.swap()
        staging = self._staging
        assert staging is not None
        if self._had_previous:
            shutil.rmtree(staging, ignore_errors=True)
        (self.out / STAGING_MARKER).unlink(missing_ok=True)
        self._done = True

    def _restore(self) -> None:
        """Undo :meth:`swap`: the previous build back at the output, the new one at the staging path."""
        staging = self._staging
        assert staging is not None
        if self._had_previous:
            if not _exchange(staging, self.out):
                aside = staging.with_suffix(".old")
                os.rename(self.out, aside)
                os.rename(staging, self.out)
                os.rename(aside, staging)
            (self.out / STAGING_MARKER).unlink(missing_ok=True)
        else:
            os.rename(self.out, staging)
        self._swapped = False

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._done or self._staging is None:
            return
        if self._swapped:
            self._restore()
        shutil.rmtree(self._staging, ignore_errors=True)
        if isinstance(exc, DensegraphError):
            self._unstage(exc)
            return
        if isinstance(exc, OSError):  # a full disk, a folder that turned read-only: the user's to fix
            raise self._io_error(exc) from exc

    def _in_output(self, text: str) -> str:
        """``text`` with the staging folder's path replaced by the output's (the staging folder is gone)."""
        return text.replace(os.fspath(self._staging), self.shown) if self._staging else text

    def _unstage(self, exc: DensegraphError) -> None:
        if exc.loc is not None:
            exc.loc = Loc(self._in_output(exc.loc.file), exc.loc.line, exc.loc.col)
        exc.message = self._in_output(exc.message)
        exc.args = (exc.message,)

    def _io_error(self, exc: OSError) -> OutputError:
        what = exc.strerror or str(exc)
        named = f" ({self._in_output(exc.filename)})" if isinstance(exc.filename, str) else ""
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        return OutputError(
            f"I/O error during the build: {self._in_output(what)}{named}; the output is as it was",
            loc=Loc(self.shown),
            hint="free some space, or choose another -o on a disk with room" if full else None,
        )
