"""ONNX-level passes: ``ModelProto -> PassResult``, for what only exists once the model does.

The rewrites of the network itself (BN folding, the pool/conv swap, BN and pooling as depthwise convs for int8
and fp16) are passes over the graph's op lists, in :mod:`densegraph.passes`, applied before the ONNX model is
emitted. What remains here changes where the work happens, not what is computed; it is opt-in (``--batch-tile``):

====================================  =========================================================================
pass                                  rewrite
====================================  =========================================================================
:func:`tile_batch`                    the whole graph -> a ``Scan`` over tiles of ``tile`` samples, the
                                      batch padded to whole tiles (it stays dynamic): a tile's feature maps
                                      stay in the CPU's cache from one layer to the next instead of
                                      streaming through DRAM (:func:`untile_batch` undoes it, for TensorRT)
====================================  =========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = [
    "PassResult",
    "TILE_KEY",
    "batch_tile_of",
    "tile_batch",
    "untile_batch",
]

TILE_KEY = "densegraph.batch_tile"  # metadata_props entry of a model made by tile_batch: its tile size
_TILE = "densegraph_tile/"  # prefix of every name tile_batch adds


@dataclass(frozen=True)
class PassResult:
    """What a pass returns: the rewritten model and how many sites it rewrote (0: unchanged)."""

    model: onnx.ModelProto
    rewrites: int

    @property
    def modified(self) -> bool:
        return self.rewrites > 0


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def tile_batch(model: onnx.ModelProto, tile: int) -> PassResult:
    """Run the whole graph in a ``Scan`` over tiles of ``tile`` samples along the batch axis.

    The batch is padded with zero samples to whole tiles, reshaped to ``[tiles, tile, ...]`` and scanned;
    every output is the scan's stacked ``[tiles, tile, ...]`` reshaped back and cut to the batch. So the model
    computes exactly what it did, for any batch size, whenever no op mixes samples (true of an inference
    network); a short last tile costs the padded samples' compute. A ``Scan`` with fixed-size slices (not a
    ``Loop`` growing a sequence) is a form onnxruntime, OpenVINO and ``onnx.reference`` all run. The weights
    move into the scan body: onnxruntime rewrites a subgraph's own initializers (NCHWc layouts, prepacked GEMM
    panels) but not the ones it reads from the outer scope. ``tile < 1`` or a model already tiled is returned
    unchanged; a model whose one input is not batch-leading and dynamic raises ``ValueError``.
    """
    if tile < 1 or batch_tile_of(model) is not None:
        return PassResult(model, 0)
    model = _copy(model)
    graph = model.graph
    source = _batch_input(model)
    outputs = list(graph.output)
    body = _scan_body(graph, source, outputs, tile)
    outer = _tiled_nodes(source.name, outputs, body)
    constants = _tiling_constants(len(source.type.tensor_type.shape.dim), tile)
    del graph.node[:]
    graph.node.extend(outer)
    del graph.initializer[:]
    graph.initializer.extend(constants)
    del graph.value_info[:]  # the body's shapes are inferred anew (a tile's batch is not the model's)
    _set_metadata(model, TILE_KEY, str(tile))
    return PassResult(model, 1)


def _batch_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The model's one input (initializers listed as inputs aside), its batch dimension dynamic."""
    inits = _initializers(model)
    inputs = [v for v in model.graph.input if v.name not in inits]
    if len(inputs) != 1 or not inputs[0].type.tensor_type.shape.dim:
        raise ValueError("tile_batch needs a model with one batch-leading input")
    batch = inputs[0].type.tensor_type.shape.dim[0]
    if batch.HasField("dim_value"):
        raise ValueError(f"the input's batch dimension is fixed ({batch.dim_value}): nothing to tile")
    return inputs[0]


def _scan_body(
    graph: onnx.GraphProto, source: onnx.ValueInfoProto, outputs: list[onnx.ValueInfoProto], tile: int
) -> onnx.GraphProto:
    """The model's nodes and weights as the scan's body: one tile in, each output of that tile out (the
    graph's input and outputs renamed under ``_TILE``, the names the outer graph keeps for itself)."""
    local = {name: _TILE + name for name in (source.name, *(o.name for o in outputs))}

    def tile_type(value: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
        """``value``'s type with a batch of exactly ``tile``."""
        tensor = value.type.tensor_type
        dims: list[int | str | None] = [tile]
        for d in tensor.shape.dim[1:]:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        return helper.make_tensor_value_info(name, tensor.elem_type, dims)

    body_nodes = []
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for i, name in enumerate(copy.input):
            copy.input[i] = local.get(name, name)
        for i, name in enumerate(copy.output):
            copy.output[i] = local.get(name, name)
        body_nodes.append(copy)
    return helper.make_graph(
        body_nodes,
        _TILE + "body",
        [tile_type(source, local[source.name])],
        [tile_type(out, local[out.name]) for out in outputs],
        initializer=list(graph.initializer),
    )


def _tiled_nodes(
    images: str, outputs: list[onnx.ValueInfoProto], body: onnx.GraphProto
) -> list[onnx.NodeProto]:
    """The outer graph: pad the batch to whole tiles, scan ``body`` over them, and cut each stacked output
    back to the batch (the constants it reads are :func:`_tiling_constants`)."""

    def node(op: str, ins: list[str], out: str, **attrs: Any) -> onnx.NodeProto:
        return helper.make_node(
            op, [_TILE + i if i else i for i in ins], [_TILE + out], name=_TILE + out, **attrs
        )

    # pad = (tile - n % tile) % tile zero samples at the end of the batch, then [tiles, tile, ...]
    outer = [
        helper.make_node("Shape", [images], [_TILE + "shape"], name=_TILE + "shape"),
        node("Slice", ["shape", "zero", "one", "zero"], "n"),
        node("Mod", ["n", "tile"], "rest"),
        node("Sub", ["tile", "rest"], "short"),
        node("Mod", ["short", "tile"], "pad"),
        node("Mul", ["pad", "last_axis"], "pad_end"),
        node("Concat", ["no_pads", "pad_end"], "pads", axis=0),
        helper.make_node("Pad", [images, _TILE + "pads"], [_TILE + "padded"], name=_TILE + "padded"),
        node("Slice", ["shape", "one", "end", "zero"], "sample"),
        node("Concat", ["tiles_by_tile", "sample"], "tiled_shape", axis=0),
        node("Reshape", ["padded", "tiled_shape"], "tiles"),
        helper.make_node(
            "Scan",
            [_TILE + "tiles"],
            [_TILE + "stacked/" + out.name for out in outputs],
            name=_TILE + "scan",
            num_scan_inputs=1,
            body=body,
        ),
    ]
    for out in outputs:
        stacked = "stacked/" + out.name
        outer += [
            node("Shape", [stacked], "shape/" + out.name),
            node("Slice", ["shape/" + out.name, "two", "end", "zero"], "sample/" + out.name),
            node("Concat", ["minus_one", "sample/" + out.name], "flat_shape/" + out.name, axis=0),
            node("Reshape", [stacked, "flat_shape/" + out.name], "flat/" + out.name),
            helper.make_node(
                "Slice",
                [_TILE + "flat/" + out.name, _TILE + "zero", _TILE + "n", _TILE + "zero"],
                [out.name],
                name=_TILE + "cut/" + out.name,
            ),
        ]
    return outer


def _tiling_constants(rank: int, tile: int) -> list[onnx.TensorProto]:
    """The int64 constants the outer graph reads, for an input of ``rank`` dimensions."""
    return [
        numpy_helper.from_array(np.array(value, np.int64), _TILE + name)
        for name, value in (
            ("zero", [0]),
            ("one", [1]),
            ("two", [2]),
            ("minus_one", [-1]),
            ("end", [np.iinfo(np.int64).max]),
            ("tile", [tile]),
            ("tiles_by_tile", [-1, tile]),
            ("no_pads", [0] * rank),
            ("last_axis", [1] + [0] * (rank - 1)),
        )
    ]


def untile_batch(model: onnx.ModelProto) -> PassResult:
    """Undo :func:`tile_batch`: the scan body's graph back as the model's graph (for consumers that want the
    whole batch at once, like TensorRT). The ``Loop`` form of earlier densegraph versions is undone too."""
    if batch_tile_of(model) is None:
        return PassResult(model, 0)
    model = _copy(model)
    graph = model.graph
    wrapper = next((n for n in graph.node if n.name in (_TILE + "scan", _TILE + "loop")), None)
    if wrapper is None:
        raise ValueError(f"metadata says {TILE_KEY} but the graph has no {_TILE}scan")
    body = helper.get_attribute_value(next(a for a in wrapper.attribute if a.name == "body"))
    inputs = [v.name for v in graph.input]
    outputs = [v.name for v in graph.output]
    rename = {_TILE + name: name for name in (*inputs, *outputs)}
    nodes = []
    for node in body.node:
        if node.name.startswith(_TILE):
            continue
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = rename.get(name, name)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(t for t in body.initializer if not t.name.startswith(_TILE))
    keep = [p for p in model.metadata_props if p.key != TILE_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    return PassResult(model, 1)


def batch_tile_of(model: onnx.ModelProto) -> int | None:
    """The tile size :func:`tile_batch` gave ``model``, or ``None`` when it is not tiled."""
    value = next((p.value for p in model.metadata_props if p.key == TILE_KEY), None)
    return int(value) if value is not None else None


def _set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
