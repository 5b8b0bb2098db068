"""A build's progress: :class:`StageEvent` and the timer that reports each stage to the caller's callback."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["StageEvent", "Progress", "Stages"]


@dataclass(frozen=True)
class StageEvent:
    """One step of a build's progress: a stage starting, done (with ``seconds``) or failed, or a ``note`` from
    inside a stage (the engine build's progress)."""

    stage: str
    what: str
    state: str  # "start", "done", "failed" or "note"
    seconds: float | None = None


Progress = Callable[[StageEvent], None]


class Stages:
    """Times each stage and reports it to the progress callback (none: silent)."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        if self.progress is None:
            yield
            return
        start = time.perf_counter()
        self.progress(StageEvent(name, what, "start"))
        try:
            yield
        except BaseException:
            self.progress(StageEvent(name, what, "failed", time.perf_counter() - start))
            raise
        self.progress(StageEvent(name, what, "done", time.perf_counter() - start))

    def note(self, message: str) -> None:
        """A message from inside a stage (the engine build's progress)."""
        if self.progress is not None:
            self.progress(StageEvent("engine", message, "note"))
