"""The build's picture, ``graph.svg``: drawn beside the build rather than on its critical path.

matplotlib takes about a second to import and the densenet169 figure about as long to draw and save, while the
main process is busy importing PyTorch and lowering. So a build in a process that has not loaded matplotlib (a
``densegraph build`` command) draws in a child process (``python -m densegraph._draw_graph``, the graph sent as
node-link JSON, which draws the same bytes) started before lowering and waited for before the manifest is
written; a process that has already loaded it (a notebook, a test session) draws in-process, where the
figure costs only its drawing. Either way the file is the same.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from ..errors import BuildError, Loc, OutputError

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["Picture"]


class Picture:
    """``graph`` drawn to ``path``: started by the constructor, finished by :meth:`finish` (which raises the
    drawing's error, if any); as a context manager, a child still drawing is stopped when the block fails.
    ``child``: draw in a child process (None: when matplotlib is not loaded here)."""

    def __init__(self, graph: nx.DiGraph, path: Path, *, child: bool | None = None) -> None:
        self.graph, self.path = graph, path
        self._process: subprocess.Popen[bytes] | None = None
        self._feeder: threading.Thread | None = None
        self._stderr = b""
        if child is None:
            child = "matplotlib" not in sys.modules
        if child:
            self._start_child()

    def _start_child(self) -> None:
        from ..viz import graph_json

        data = graph_json(self.graph).encode("utf-8")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "densegraph._draw_graph", str(self.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # communicate() writes the JSON and reads stderr without blocking this thread on a full pipe.
        self._feeder = threading.Thread(target=self._communicate, args=(data,), daemon=True)
        self._feeder.start()

    def _communicate(self, data: bytes) -> None:
        assert self._process is not None
        _, self._stderr = self._process.communicate(data)

    def finish(self) -> None:
        """Wait for the drawing (or draw here); raise its error as a one-line :class:`DensegraphError`."""
        if self._process is None:
            from ..viz import write_graph

            write_graph(self.graph, self.path)
            return
        assert self._feeder is not None
        self._feeder.join()
        code = self._process.wait()
        if code == 0:
            return
        lines = self._stderr.decode("utf-8", "replace").strip().splitlines()
        if code == 2 and lines:
            report = json.loads(lines[-1])
            kind = OutputError if report["kind"] == "OutputError" else BuildError
            where = Loc(report["where"]) if report["where"] else None
            raise kind(report["message"], loc=where, hint=report["hint"])
        raise BuildError(
            f"drawing {self.path.name} failed in its child process (exit {code}): "
            + (lines[-1] if lines else "no message"),
            hint="`densegraph graph SPEC -o graph.svg` draws it in-process and shows the traceback",
        )

    def __enter__(self) -> Picture:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self.cancel()

    def cancel(self) -> None:
        """Stop a child still drawing (the build failed before it was needed)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        if self._feeder is not None:
            self._feeder.join()
