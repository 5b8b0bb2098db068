"""The run folder: ``last.pt``, ``best.pt`` and ``metrics.csv``, what a new or resumed run may replace there
(checked before any work), and the folder a failed first epoch leaves behind (none)."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._io import output_file, write_atomic
from .._output import refuse_overwrite
from ..errors import DensegraphError, Loc, OutputError
from .checkpoint import CHECKPOINT_FORMAT, METRICS_COLUMNS

__all__ = ["RunFolder", "check_run_files", "check_writable", "write_metrics"]


@dataclass
class RunFolder:
    """The run folder's files; ``created`` while this run made the folder and saved nothing in it yet."""

    path: Path
    created: bool = False

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def files(self) -> tuple[Path, Path, Path]:
        return self.last, self.best, self.metrics

    def create(self) -> None:
        """Make the folder if it is not there yet (rank 0 only)."""
        if not self.path.exists():
            self.path.mkdir(parents=True)
            self.created = True

    def discard(self) -> None:
        """After a failure: remove the folder this run made, if nothing good was saved in it."""
        if self.created:
            for leftover in self.path.glob(".*.tmp"):
                leftover.unlink()
            if not any(self.path.iterdir()):
                self.path.rmdir()


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """``metrics.csv``: one row per epoch, :data:`METRICS_COLUMNS`, written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRICS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in METRICS_COLUMNS})
    text = buffer.getvalue().encode()
    write_atomic(path, lambda f: f.write(text))


def check_run_files(run: Path, files: tuple[Path, ...], *, resume: bool, graph_sha: str) -> None:
    """Refuse, before any work, to overwrite a file of the run folder that this run did not write.

    A new run writes ``last.pt``, ``best.pt`` and ``metrics.csv`` into a folder that has none of them; a resumed
    one replaces them only when they are this run's (checkpoints of this network, the metrics table). Each is
    a regular file or nothing (never a device, a FIFO or a folder).
    """
    if not run.is_dir():
        return  # a new folder, or something in the way that check_writable names
    for path in files:
        output_file(path)
    last, best, metrics = files
    if not resume:
        refuse_overwrite(
            (best, metrics),
            where=str(run),
            why="the run folder holds files a new run would overwrite",
            hint="move them out of the folder, or choose another -o",
        )
        return
    if best.exists() and not _is_run_checkpoint(best, graph_sha):
        raise OutputError(
            "--resume would overwrite best.pt, which is no checkpoint of this run",
            loc=Loc(str(best)),
            hint="move it out of the run folder",
        )
    if metrics.exists() and not _is_metrics_table(metrics):
        raise OutputError(
            "--resume would overwrite metrics.csv, which is no metrics table of densegraph train",
            loc=Loc(str(metrics)),
            hint="move it out of the run folder",
        )


def _is_run_checkpoint(path: Path, graph_sha: str) -> bool:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # whatever it is, it is not ours
        return False
    return (
        isinstance(ckpt, dict)
        and ckpt.get("format") == CHECKPOINT_FORMAT
        and ckpt.get("graph_sha256") == graph_sha
    )


def _is_metrics_table(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline(4096).rstrip("\n")
    except (OSError, UnicodeDecodeError):
        return False
    return header == ",".join(METRICS_COLUMNS)


def check_writable(run: Path) -> None:
    """Refuse a run folder that cannot be created or written, before anything is created."""
    probe = run
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise DensegraphError(
            f"cannot create the run folder: {probe} is not a directory",
            loc=Loc(str(run)),
            hint="choose another -o",
        )
    if probe == run:
        try:
            fd, tmp = tempfile.mkstemp(dir=run, prefix=".write-test.")
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            raise DensegraphError(
                f"the run folder is not writable: {exc.strerror or exc}",
                loc=Loc(str(run)),
                hint="choose another -o",
            ) from None
    elif not os.access(probe, os.W_OK | os.X_OK):
        raise DensegraphError(
            f"cannot create the run folder: {probe} is not writable",
            loc=Loc(str(run)),
            hint="choose another -o",
        )
