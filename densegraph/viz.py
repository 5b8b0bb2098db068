"""Files and pictures of a connection graph: ``densegraph graph SPEC -o FILE`` and the paper's Fig. 5 heat maps.

:func:`write_graph` chooses the format from the suffix of the output path:

- ``.json``: networkx node-link data (``nx.node_link_graph(data, edges="edges")`` reads it back), graph
  attributes included; tuples become lists. Keys are sorted, so the same graph always gives the same bytes.
- ``.dot``: Graphviz text written here (no pydot needed), one cluster per dense block, nodes labelled with
  their kind, channels and size, edges with the channels they carry.
- ``.svg`` / ``.png``: a matplotlib figure: an arc diagram of the whole graph (nodes in execution order on a
  line, every connection an arc above it; past 20,000 connections only some layers' arcs) over one
  connectivity matrix per dense block, drawn on the axes of the paper's Fig. 5 (x: target layer 1..L, y: source
  layer 0..L-1, 0 being the block input). SVG output is byte-for-byte reproducible.

Every file is written to a temporary file in the target folder and renamed into place, so a failed run leaves
the previous file alone. matplotlib (and numpy) are imported only when a figure is drawn.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import networkx as nx

from ._io import write_atomic
from .cost import totals
from .errors import DensegraphError, Loc
from .graph import node_inputs

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "GRAPH_SUFFIXES",
    "HEATMAP_SUFFIXES",
    "write_graph",
    "graph_json",
    "graph_dot",
    "connectivity_matrix",
    "draw_graph",
    "draw_heatmap",
    "normalise_per_target",
]

GRAPH_SUFFIXES = (".json", ".dot", ".svg", ".png")
HEATMAP_SUFFIXES = (".png", ".svg", ".pdf")

# One colour per node kind, shared by the DOT file and the figure.
_KIND_COLOURS = {
    "input": "#9e9e9e",
    "stem": "#8d6e63",
    "block_input": "#5c6bc0",
    "dense_layer": "#42a5f5",
    "transition": "#ffa726",
    "head": "#ef5350",
}
_BLOCK_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#d62728", "#17becf", "#8c564b", "#e377c2", "#bcbd22")
_MAX_ARCS = 20_000
_FIGURE_RC = {"svg.hashsalt": "densegraph", "svg.fonttype": "path"}


def write_graph(graph: nx.DiGraph, path: str | os.PathLike[str]) -> None:
    """Write ``graph`` to ``path`` as ``.json``, ``.dot``, ``.svg`` or ``.png`` (chosen by the suffix)."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in GRAPH_SUFFIXES:
        raise DensegraphError(
            f"cannot write a graph as {_suffix_text(suffix)}",
            loc=Loc(str(path)),
            hint=f"use one of {', '.join(GRAPH_SUFFIXES)}",
        )
    if suffix == ".json":
        _write_atomic(target, lambda fh: fh.write(graph_json(graph).encode("utf-8")))
    elif suffix == ".dot":
        _write_atomic(target, lambda fh: fh.write(graph_dot(graph).encode("utf-8")))
    else:
        figure = draw_graph(graph)
        _write_atomic(target, lambda fh: _save_figure(figure, fh, suffix[1:]))


def _suffix_text(suffix: str) -> str:
    return f"'{suffix}'" if suffix else "a file without a suffix"


# ---------------------------------------------------------------------------------------------------------
# atomic output


def _write_atomic(target: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Run ``write`` on a temporary file next to ``target``, then rename it to ``target`` (a user's mistake in
    the path, a full disk: one-line :class:`~densegraph._io.OutputError`)."""
    write_atomic(target, write)


# ---------------------------------------------------------------------------------------------------------
# .json


def _jsonable(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def graph_json(graph: nx.DiGraph) -> str:
    """The node-link JSON text of ``graph`` (nodes in execution order, keys sorted)."""
    data = nx.node_link_data(graph, edges="edges")
    return json.dumps(data, indent=1, sort_keys=True, default=_jsonable, allow_nan=False) + "\n"


# ---------------------------------------------------------------------------------------------------------
# .dot


def _dot_quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _size_text(size: Sequence[int]) -> str:
    return f"{size[0]}x{size[1]}"


def _node_label(node: str, data: dict[str, Any]) -> str:
    kind = data["kind"]
    if kind == "input":
        return f"input\n{data['out_channels']} ch, {_size_text(data['out_size'])}"
    channels = f"{data['in_channels']} -> {data['out_channels']} ch"
    if tuple(data["in_size"]) == tuple(data["out_size"]):
        size = _size_text(data["out_size"])
    else:
        size = f"{_size_text(data['in_size'])} -> {_size_text(data['out_size'])}"
    return f"{node}\n{kind}\n{channels}, {size}"


def _block_title(block: dict[str, Any], prefix: str = "dense block") -> str:
    rule = block["connectivity"] + (f" {block['window']}" if block.get("window") else "")
    return f"{prefix} {block['index']}: {block['layers']} layers, k={block['growth_rate']}, {rule}"


def graph_dot(graph: nx.DiGraph) -> str:
    """Graphviz DOT text of ``graph``: one cluster per dense block, edges labelled with their channels."""
    name = str(graph.graph.get("name", "densegraph"))
    lines = [
        f"digraph {_dot_quote(name)} {{",
        f"  graph [rankdir=TB, newrank=true, fontname=Helvetica, labelloc=t, label={_dot_quote(name)}];",
        '  node [shape=box, style="rounded,filled", fontname=Helvetica, fontsize=9];',
        '  edge [fontname=Helvetica, fontsize=7, color="#00000080"];',
    ]

    def node_line(node: str, indent: str) -> str:
        data = graph.nodes[node]
        colour = _KIND_COLOURS.get(data["kind"], "#ffffff")
        return f"{indent}{_dot_quote(node)} [label={_dot_quote(_node_label(node, data))}, fillcolor={_dot_quote(colour)}];"

    blocks = {block["nodes"][0]: block for block in graph.graph.get("blocks", [])}
    in_block = {node for block in blocks.values() for node in block["nodes"]}
    for node in graph.nodes:
        if node in blocks:
            block = blocks[node]
            lines.append(f"  subgraph cluster_block{block['index']} {{")
            lines.append(f"    label={_dot_quote(_block_title(block))};")
            lines.append('    style="rounded,filled"; fillcolor="#f3f6fb"; color="#9fa8da";')
            lines.extend(node_line(member, "    ") for member in block["nodes"])
            lines.append("  }")
        elif node not in in_block:
            lines.append(node_line(node, "  "))
    for node in graph.nodes:
        for source in node_inputs(graph, node):
            channels = graph.edges[source, node]["channels"]
            lines.append(f"  {_dot_quote(source)} -> {_dot_quote(node)} [label={_dot_quote(str(channels))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# .svg / .png


def connectivity_matrix(graph: nx.DiGraph, block: int) -> np.ndarray:
    """The connections of dense block ``block`` (1-based) as an L x L boolean matrix.

    Row ``s`` is the source (0 = the block input, ``s`` = layer s), column ``t - 1`` the target layer ``t``;
    a cell is true when layer ``t`` takes the output of ``s``.
    """
    import numpy as np

    info = next((b for b in graph.graph.get("blocks", []) if b["index"] == block), None)
    if info is None:
        raise ValueError(f"the graph has no dense block {block}")
    nodes = info["nodes"]
    index = {node: i for i, node in enumerate(nodes)}
    matrix = np.zeros((len(nodes) - 1, len(nodes) - 1), dtype=bool)
    for target, node in enumerate(nodes[1:]):
        for source in graph.predecessors(node):
            matrix[index[source], target] = True
    return matrix


def _panel_grid(count: int) -> tuple[int, int]:
    columns = min(count, 4)
    return math.ceil(count / columns), columns


def _layer_axes(ax: Any, rows: int, columns: int) -> None:
    """Integer ticks and labels for a source (rows, from 0) x target (columns, from 1) panel."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlim(0.5, columns + 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    ax.set_xlabel("target layer")
    ax.set_ylabel("source layer")
    ax.tick_params(labelsize=7)


def draw_graph(graph: nx.DiGraph) -> Figure:
    """A matplotlib figure of ``graph``: an arc diagram of all connections over one matrix per dense block."""
    from matplotlib.figure import Figure

    blocks = list(graph.graph.get("blocks", []))
    position = _node_positions(graph)
    block_rows, block_columns = _panel_grid(max(len(blocks), 1))
    width = max(11.0, 3.4 * block_columns)
    height = 3.8 + 3.3 * block_rows
    # Fixed margins in inches: a layout engine would measure every label several times and double the time.
    figure = Figure(figsize=(width, height))
    grid = figure.add_gridspec(
        1 + block_rows,
        block_columns,
        height_ratios=[1.15] + [1.0] * block_rows,
        left=0.7 / width,
        right=1 - 0.25 / width,
        top=1 - 0.4 / height,
        bottom=0.55 / height,
        hspace=0.42,
        wspace=0.3,
    )
    _draw_arcs(figure.add_subplot(grid[0, :]), graph, position)
    for i, block in enumerate(blocks):
        _draw_block_matrix(figure.add_subplot(grid[1 + i // block_columns, i % block_columns]), graph, block)
    return figure


def _node_positions(graph: nx.DiGraph) -> dict[str, float]:
    """x of each node: layers of a block one unit apart, the stages between blocks with room for labels."""
    order = list(graph.nodes)
    position: dict[str, float] = {}
    x, gap = 0.0, max(3.0, len(order) / 25.0)
    for i, node in enumerate(order):
        if i:
            inside = {graph.nodes[n]["kind"] for n in (order[i - 1], node)} <= {"block_input", "dense_layer"}
            x += 1.0 if inside else gap
        position[node] = x
    return position


def _draw_arcs(arcs: Axes, graph: nx.DiGraph, position: dict[str, float]) -> None:
    """The arc diagram of every connection, the blocks shaded and labelled, the stages marked."""
    import numpy as np
    from matplotlib.collections import LineCollection

    blocks = list(graph.graph.get("blocks", []))
    order = list(graph.nodes)
    # Arc diagram: an edge u -> v is a half ellipse of height (x_v - x_u) / 2 above the line. Past
    # _MAX_ARCS connections (blocks of hundreds of layers) only every step-th layer's inputs are drawn, so the
    # figure stays quick; the matrices below still show every connection.
    step = max(1, math.ceil(graph.number_of_edges() / _MAX_ARCS))
    edges = [
        (position[u], position[v], graph.nodes[v])
        for u, v in graph.edges
        if step == 1 or graph.nodes[v]["kind"] != "dense_layer" or graph.nodes[v]["layer"] % step == 0
    ]
    colours = [
        _BLOCK_COLOURS[(data["block"] - 1) % len(_BLOCK_COLOURS)]
        if data["kind"] == "dense_layer"
        else "#616161"
        for _, _, data in edges
    ]
    starts = np.array([u for u, _, _ in edges], dtype=float)
    spans = np.array([v - u for u, v, _ in edges], dtype=float)
    t = np.linspace(0.0, math.pi, 17)
    xs = starts[:, None] + spans[:, None] * (1.0 - np.cos(t))[None, :] / 2.0
    ys = spans[:, None] / 2.0 * np.sin(t)[None, :]
    alpha = float(min(0.9, max(0.15, 12.0 / math.sqrt(max(len(edges), 1)))))
    arcs.add_collection(
        LineCollection(
            np.stack([xs, ys], axis=-1),  # type: ignore[arg-type]  # an (n, 17, 2) array is a sequence of lines
            colors=colours,
            linewidths=0.6,
            alpha=alpha,
        )
    )
    top = max(float(spans.max()) / 2.0 if len(spans) else 1.0, 1.0)
    for block in blocks:
        first, last = position[block["nodes"][0]], position[block["nodes"][-1]]
        colour = _BLOCK_COLOURS[(block["index"] - 1) % len(_BLOCK_COLOURS)]
        arcs.axvspan(first - 0.5, last + 0.5, color=colour, alpha=0.08, linewidth=0)
        arcs.text(
            (first + last) / 2.0,
            top * 1.04,
            f"block {block['index']}\n{block['layers']} layers",
            ha="center",
            va="bottom",
            fontsize=7,
            color=colour,
        )
    kinds = [graph.nodes[node]["kind"] for node in order]
    arcs.scatter(
        [position[node] for node in order],
        np.zeros(len(order)),
        s=[6 if kind == "dense_layer" else 22 for kind in kinds],
        c=[_KIND_COLOURS.get(kind, "#000000") for kind in kinds],
        zorder=3,
        linewidths=0,
    )
    marked = [
        node
        for node, kind in zip(order, kinds, strict=True)
        if kind in ("input", "stem", "transition", "head")
    ]
    arcs.set_xticks(
        [position[n] for n in marked], [n.replace("transition", "trans. ") for n in marked], fontsize=7
    )
    arcs.set_yticks([])
    arcs.set_xlim(-1.5, position[order[-1]] + 1.5)
    arcs.set_ylim(-top * 0.04, top * 1.22)
    for side in ("left", "right", "top"):
        arcs.spines[side].set_visible(False)
    total = totals(graph)
    arcs.set_title(
        f"{graph.graph.get('name', '')}: {sum(b['layers'] for b in blocks)} dense layers, "
        f"{graph.number_of_edges():,} connections, {total['params']:,} parameters, {total['macs']:,} MACs"
        + (f" (arcs drawn for one layer in {step})" if step > 1 else ""),
        fontsize=10,
        loc="left",
    )


def _draw_block_matrix(ax: Axes, graph: nx.DiGraph, block: dict[str, Any]) -> None:
    """One dense block's connectivity matrix (source layer x target layer) in the block's colour."""
    import numpy as np
    from matplotlib.colors import ListedColormap

    matrix = connectivity_matrix(graph, block["index"])
    layers = matrix.shape[0]
    colour = _BLOCK_COLOURS[(block["index"] - 1) % len(_BLOCK_COLOURS)]
    ax.imshow(
        matrix.astype(np.uint8),
        cmap=ListedColormap(["#ffffff", colour]),
        vmin=0,
        vmax=1,
        interpolation="nearest",
        extent=(0.5, layers + 0.5, layers - 0.5, -0.5),
        aspect="equal",
    )
    _layer_axes(ax, layers, layers)
    if layers <= 24:  # small blocks: show the individual cells
        ax.hlines(np.arange(0.5, layers - 1), 0.5, layers + 0.5, colors="#ffffff", linewidths=0.5)
        ax.vlines(np.arange(1.5, layers + 0.5), -0.5, layers - 0.5, colors="#ffffff", linewidths=0.5)
    ax.set_title(f"{_block_title(block, 'block')}\n{block['edges']:,} connections", fontsize=8)


def _save_figure(figure: Figure, fh: IO[bytes], fmt: str) -> None:
    import matplotlib

    with matplotlib.rc_context(_FIGURE_RC):  # type: ignore[arg-type]  # the stub wants literal rc keys
        metadata = {"Date": None} if fmt == "svg" else ({"CreationDate": None} if fmt == "pdf" else None)
        figure.savefig(fh, format=fmt, dpi=150, metadata=metadata)


# =========================================================================================================
# Heat maps of learned weights (the paper's Fig. 5).
#
# ``densegraph heatmap`` (:func:`densegraph.heatmaps.heatmap`) computes, for each dense block, the average
# absolute weight from each source to each target layer from a trained model and calls ``draw_heatmap``.
# =========================================================================================================


def normalise_per_target(matrix: np.ndarray) -> np.ndarray:
    """Divide each target column by its largest entry so that every column lies in [0, 1].

    NaN cells (no connection) are ignored and stay NaN; a column whose largest entry is 0 is left at 0.
    """
    import numpy as np

    values = np.asarray(matrix, dtype=float)
    out = np.full_like(values, np.nan)
    for column in range(values.shape[1]):
        cells = values[:, column]
        present = ~np.isnan(cells)
        if not present.any():
            continue
        peak = float(np.max(cells[present]))
        out[present, column] = cells[present] / peak if peak > 0 else 0.0
    return out


def draw_heatmap(matrices: list[np.ndarray], titles: list[str], path: str | os.PathLike[str]) -> None:
    """Draw the paper's Fig. 5: one heat map per dense block, written to ``path`` (.png, .svg or .pdf).

    ``matrices[b][s, t - 1]`` is the average absolute weight with which target layer ``t`` (x axis, from 1)
    of block ``b`` reads source ``s`` (y axis, from 0 = the block input); extra columns or rows (a transition
    layer as a last target, say) are allowed. NaN marks a pair with no connection and is drawn blank. As in
    the paper, each target column is normalised by its largest entry (see :func:`normalise_per_target`), so
    the colours show, for every layer, how strongly it uses each of its sources, on a shared [0, 1] scale.
    """
    import numpy as np
    from matplotlib.figure import Figure

    if len(matrices) != len(titles):
        raise ValueError(f"{len(matrices)} matrices but {len(titles)} titles")
    if not matrices:
        raise ValueError("draw_heatmap needs at least one matrix")
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in HEATMAP_SUFFIXES:
        raise DensegraphError(
            f"cannot write a heat map as {_suffix_text(suffix)}",
            loc=Loc(str(path)),
            hint=f"use one of {', '.join(HEATMAP_SUFFIXES)}",
        )
    rows, columns = _panel_grid(len(matrices))
    width, height = 3.6 * columns + 1.2, 3.4 * rows + 0.3
    figure = Figure(figsize=(width, height))
    axes = figure.subplots(
        rows,
        columns,
        squeeze=False,
        gridspec_kw={
            "left": 0.7 / width,
            "right": 1 - 0.2 / width,
            "top": 1 - 0.4 / height,
            "bottom": 0.55 / height,
            "hspace": 0.45,
            "wspace": 0.35,
        },
    )
    image = None
    for i, (matrix, title) in enumerate(zip(matrices, titles, strict=True)):
        values = np.asarray(matrix, dtype=float)
        if values.ndim != 2:
            raise ValueError(f"matrix {i} has shape {values.shape}; a heat map needs a 2-D array")
        ax = axes[i // columns][i % columns]
        sources, targets = values.shape
        image = ax.imshow(
            np.ma.masked_invalid(normalise_per_target(values)),
            cmap="viridis",
            vmin=0.0,
            vmax=1.0,
            interpolation="nearest",
            extent=(0.5, targets + 0.5, sources - 0.5, -0.5),
            aspect="auto",
        )
        _layer_axes(ax, sources, targets)
        ax.set_title(title, fontsize=9)
    for j in range(len(matrices), rows * columns):
        axes[j // columns][j % columns].set_axis_off()
    if image is not None:
        figure.colorbar(image, ax=axes, shrink=0.8, label="|weight|, normalised per target layer")
    _write_atomic(target, lambda fh: _save_figure(figure, fh, suffix[1:]))
