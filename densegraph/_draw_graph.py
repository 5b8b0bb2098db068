"""``python -m densegraph._draw_graph PATH``: draw the node-link JSON graph read from stdin to ``PATH``.

The child process of :class:`densegraph.builder.picture_stage.Picture`: a build started in a fresh process draws
its picture here, beside the main process, instead of importing matplotlib on its own critical path.
"""

from __future__ import annotations

import json
import sys

import networkx as nx

from .errors import DensegraphError
from .viz import write_graph


def main(argv: list[str]) -> int:
    graph = nx.node_link_graph(json.load(sys.stdin), edges="edges")
    try:
        write_graph(graph, argv[0])
    except DensegraphError as exc:  # a user-facing cause (the disk, the path): its fields, for the parent
        where = str(exc.loc) if exc.loc is not None else None
        report = {"kind": type(exc).__name__, "message": exc.message, "where": where, "hint": exc.hint}
        sys.stderr.write(json.dumps(report) + "\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
