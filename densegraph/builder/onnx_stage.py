"""The fp32 model: the PyTorch eval module (the numerical reference), the ONNX model emitted from the graph and
checked, and the opt-in batch tiling of the final model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..export.onnx import check_onnx, check_size, save_onnx, set_metadata
from ..export.tiling import choose_batch_tile, tile_model
from .options import BuildOptions
from .progress import Stages

if TYPE_CHECKING:
    import networkx as nx
    from torch import nn

__all__ = ["lower", "emit", "batch_tile_for", "tile_final_model"]


def lower(graph: nx.DiGraph, options: BuildOptions, spec_path: str) -> nn.Module:
    """The PyTorch eval module of ``graph``: the given weights, or seeded init."""
    from ..lower.torch import to_torch

    module = to_torch(graph, seed=options.seed)
    if options.weights:
        from ..lower.weights import load_weights

        load_weights(module, options.weights, model_name=spec_path)
    return module.eval()


def emit(
    module: nn.Module,
    graph: nx.DiGraph,
    options: BuildOptions,
    passes: list[str],
    metadata: dict[str, str],
    path: Path,
    stages: Stages,
) -> Any:
    """Emit and check the fp32 model, written to ``path``; returns it."""
    from ..export.emit import onnx_from_graph

    state = module.state_dict()
    check_size(sum(t.numel() * t.element_size() for t in state.values()))
    with stages.stage("emit", f"ONNX opset {options.opset} from the graph, dynamic batch"):
        model, _ = onnx_from_graph(
            graph, state, passes=passes, opset=options.opset, name=graph.graph["name"], doc=_doc(graph)
        )
        set_metadata(model, metadata)
    with stages.stage("check", "shape inference, onnx.checker full check"):
        model = check_onnx(model)
        save_onnx(model, path)
    return model


def _doc(graph: nx.DiGraph) -> str:
    c, h, w = graph.graph["input_shape"]
    features = graph.graph.get("outputs")
    if features:
        maps = ", ".join(
            f"{o['name']} [batch, {o['channels']}, {o['size'][0]}, {o['size'][1]}]" for o in features
        )
        return f"{graph.graph['name']}: images [batch, {c}, {h}, {w}] float32 -> {maps}"
    classes = graph.graph["output_shape"][0]
    return f"{graph.graph['name']}: images [batch, {c}, {h}, {w}] float32 -> logits [batch, {classes}]"


def batch_tile_for(options: BuildOptions, graph: nx.DiGraph) -> int | None:
    """The batch tile the build's ``batch_tile`` setting asks for on this graph (None: no tiling; a features
    head's several outputs are never tiled)."""
    if graph.graph.get("outputs"):
        return None
    return choose_batch_tile(
        graph,
        str(options.batch_tile),
        precision=options.precision,
        target=options.target,
        plain=options.plain,
        max_batch=options.batch[2],
    )


def tile_final_model(
    model: Any, tile: int, options: BuildOptions, path: Path, stages: Stages
) -> tuple[Any, int | None, dict]:
    """:func:`densegraph.export.tiling.tile_model` as a stage; the model kept is written to ``path``."""
    with stages.stage("tile", f"a scan over batch tiles of {tile} sample(s)"):
        model, kept, record = tile_model(
            model, tile, setting=str(options.batch_tile), timing_batch=options.batch[1]
        )
        if kept is not None:
            save_onnx(model, path)
    return model, kept, record
