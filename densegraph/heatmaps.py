"""The paper's Fig. 5: how strongly each layer of a trained network uses each of its sources.

For every dense block of the graph (``graph.graph["blocks"]``), the targets are the block's layers followed by
the node(s) outside the block that read its maps (a transition, or the head after the last block); the sources
are the block input and its layers. Entry ``(s, t)`` is the average absolute weight of the target's *first*
weighted op — the conv (or linear) whose input width equals the node's ``in_channels`` — over the input channels
that come from source ``s``: ``mean |W[:, offset : offset + channels]|`` with ``offset`` and ``channels`` read
from the edge ``s -> t``. It is NaN (``null`` in JSON) where ``t`` does not read ``s``. Only nodes, edges and ops
are used, so any connectivity rule the graph can express gets its map.

:func:`heatmap` (``densegraph heatmap SPEC --weights W -o FIG.png [--json]``) draws the maps with
:func:`densegraph.viz.draw_heatmap` (each target column scaled by its largest entry, as in the paper); with
``write_json`` it also writes the unscaled averages to ``FIG.json`` next to the figure.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from ._io import write_atomic
from .errors import DensegraphError, Loc

__all__ = ["BlockHeatmap", "HeatmapResult", "heatmap", "heatmap_matrices", "heatmap_json"]


@dataclass
class BlockHeatmap:
    """One block's map: ``matrix[s, t]`` for ``sources[s]`` -> ``targets[t]`` (NaN: no connection)."""

    block: int
    sources: list[str]
    targets: list[str]
    matrix: np.ndarray

    @property
    def title(self) -> str:
        layers = len(self.sources) - 1
        extra = self.targets[layers:]
        return f"dense block {self.block}" + (f" (column {layers + 1}: {', '.join(extra)})" if extra else "")


def _input_width(op: dict[str, Any]) -> int | None:
    if op["op"] == "conv":
        return int(op["in_channels"])
    if op["op"] == "linear":
        return int(op["in_features"])
    return None


def _first_weighted_op(graph: nx.DiGraph, node: str) -> dict[str, Any] | None:
    width = graph.nodes[node]["in_channels"]
    return next((op for op in graph.nodes[node]["ops"] if op.get("name") and _input_width(op) == width), None)


@dataclass
class HeatmapResult:
    """The maps of one :func:`heatmap` run and the files it wrote (the figure, then its JSON if asked)."""

    maps: list[BlockHeatmap]
    written: list[Path]


def heatmap_matrices(graph: nx.DiGraph, state_dict: Mapping[str, Any]) -> list[BlockHeatmap]:
    """The per-block source x target matrices of mean |weight| (see the module docstring)."""
    order = {node: i for i, node in enumerate(graph.nodes)}
    maps = []
    for block in graph.graph["blocks"]:
        members = list(block["nodes"])
        inside = set(members)
        readers = {v for u in members for v in graph.successors(u) if v not in inside}
        targets = members[1:] + sorted(readers, key=order.__getitem__)
        row = {node: i for i, node in enumerate(members)}
        matrix = np.full((len(members), len(targets)), np.nan)
        for t, target in enumerate(targets):
            op = _first_weighted_op(graph, target)
            if op is None:
                continue
            weight = state_dict[f"{op['name']}.weight"]
            magnitude = np.abs(
                weight.detach().cpu().double().numpy() if hasattr(weight, "detach") else weight
            )
            for source, _, edge in graph.in_edges(target, data=True):
                if source in row:
                    span = magnitude[:, edge["offset"] : edge["offset"] + edge["channels"]]
                    matrix[row[source], t] = float(span.mean())
        maps.append(BlockHeatmap(int(block["index"]), members, targets, matrix))
    return maps


def heatmap_json(maps: list[BlockHeatmap], **meta: Any) -> dict[str, Any]:
    """A JSON-able document of the maps (``null`` for no connection), with ``meta`` entries first."""
    return {
        **meta,
        "value": "mean |weight| of the target's first conv/linear over the input channels from the source",
        "blocks": [
            {
                "block": m.block,
                "sources": m.sources,
                "targets": m.targets,
                "matrix": [[None if math.isnan(v) else v for v in row] for row in m.matrix.tolist()],
            }
            for m in maps
        ],
    }


def heatmap(
    spec: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str],
    output: str | os.PathLike[str],
    write_json: bool = False,
) -> HeatmapResult:
    """Draw the per-block maps of ``spec`` with ``weights`` to the figure ``output`` (``.png``, ``.svg``, …).

    With ``write_json`` the figure and ``FIG.json`` are written together or not at all: both are made in a
    staging folder beside them, after the document has been validated, and moved into place only when both
    exist.
    """
    from ._io import output_file
    from .lower.torch import graph_of, to_torch
    from .lower.weights import load_weights
    from .viz import draw_heatmap

    figure = Path(output)
    if not figure.parent.is_dir():
        raise DensegraphError("the output folder does not exist", loc=Loc(str(figure.parent)))
    # a device or a folder in the way is refused before the figure is drawn; a link stays, its file is written
    wanted = [figure, figure.with_suffix(".json")] if write_json else [figure]
    targets = [output_file(t) for t in wanted]
    graph = graph_of(spec)
    module = to_torch(graph)
    load_weights(module, weights, model_name=os.fspath(spec))
    maps = heatmap_matrices(graph, module.state_dict())
    if not maps:
        raise DensegraphError("the spec has no dense blocks to map", loc=Loc(os.fspath(spec)))
    text = _json_bytes(maps, spec, weights) if write_json else b""
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{figure.name}.", suffix=".tmp", dir=targets[0].parent))
    except OSError as exc:
        raise DensegraphError(
            f"cannot write beside the output: {exc.strerror or exc}", loc=Loc(str(figure))
        ) from None
    try:
        staged = [stage / f"figure{figure.suffix}", stage / "figure.json"][: len(targets)]
        draw_heatmap([m.matrix for m in maps], [m.title for m in maps], staged[0])
        if write_json:
            write_atomic(staged[1], lambda f: f.write(text))
        _replace_together(list(zip(staged, targets, strict=True)), stage)
    except OSError as exc:
        # named by the output: the staging folder it happened in is gone by the time the user reads this
        raise DensegraphError(
            f"cannot write the heat map{' and its JSON' if write_json else ''}: {exc.strerror or exc}; "
            "nothing was replaced",
            loc=Loc(str(figure)),
        ) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return HeatmapResult(maps, wanted)


def _json_bytes(
    maps: list[BlockHeatmap], spec: str | os.PathLike[str], weights: str | os.PathLike[str]
) -> bytes:
    doc = heatmap_json(maps, spec=os.fspath(spec), weights=os.fspath(weights))
    try:
        return (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode()
    except ValueError:
        raise DensegraphError(
            "the weights give non-finite averages: no heat map written",
            loc=Loc(os.fspath(weights)),
            hint="check the weights for NaN or infinite values",
        ) from None


def _replace_together(moves: list[tuple[Path, Path]], stage: Path) -> None:
    """Rename each staged file over its target; if one rename fails, put every earlier target back."""
    done: list[tuple[Path, Path | None]] = []
    try:
        for staged, target in moves:
            backup = None
            if target.exists():
                backup = stage / f"previous-{target.name}"
                os.replace(target, backup)
            done.append((target, backup))
            os.replace(staged, target)
    except BaseException:
        for target, backup in reversed(done):
            if backup is not None:
                os.replace(backup, target)
            else:
                target.unlink(missing_ok=True)
        raise
