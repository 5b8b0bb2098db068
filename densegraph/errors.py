"""User-facing errors.

Two kinds of failure exist: :class:`DensegraphError` (and subclasses) for the user's mistakes — a bad spec, a
missing file, a checkpoint for another model, a missing GPU — and plain exceptions for our own bugs. The CLI
prints the first kind as one ``file:line:col: error: message (hint: …)`` line and exits 2; the second keeps its
traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Loc",
    "DensegraphError",
    "SpecError",
    "CheckpointError",
    "DataError",
    "BuildError",
    "OutputError",
    "ModelLoadError",
]


@dataclass(frozen=True)
class Loc:
    """A position in a source file, 1-based line and column (``col`` 0 means "the whole file")."""

    file: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        if self.line <= 0:
            return self.file
        return f"{self.file}:{self.line}:{self.col}"


class DensegraphError(Exception):
    """A mistake in the user's input, reported as one line with a location and a hint."""

    def __init__(
        self,
        message: str,
        *,
        loc: Loc | None = None,
        hint: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc if loc is not None else (Loc(str(path)) if path is not None else None)
        self.hint = hint

    def format(self) -> str:
        """The one-line report: ``where: error: message (hint: …)``."""
        where = f"{self.loc}: " if self.loc is not None else ""
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{where}error: {self.message}{hint}"

    def __str__(self) -> str:
        return self.format()


class SpecError(DensegraphError):
    """A spec file that cannot be read, parsed or validated."""


class CheckpointError(DensegraphError):
    """A weights file that is unreadable, unsafe, or made for another model."""


class DataError(DensegraphError):
    """A dataset or calibration input that is missing, empty or malformed."""


class BuildError(DensegraphError):
    """A build step (export, check, parity gate, engine build) that failed on the user's input."""


class OutputError(DensegraphError):
    """An output path densegraph will not write or replace (a device, a folder, files it did not write), or
    cannot (no space, no permission)."""


class ModelLoadError(DensegraphError):
    """A model file a runtime (onnxruntime, TensorRT) cannot load; ``reason`` is the runtime's own first line."""

    def __init__(self, message: str, *, reason: str, loc: Loc | None = None, hint: str | None = None) -> None:
        super().__init__(message, loc=loc, hint=hint)
        self.reason = reason
