"""ONNX-level passes: ``ModelProto -> PassResult``, for what only exists once the model does.

The rewrites of the network itself (BN folding, the pool/conv swap, BN and pooling as depthwise convs for int8
and fp16) are passes over the graph's op lists, in :mod:`densegraph.passes`, applied before the ONNX model is
emitted. What remains here changes where the work happens, not what is computed:

====================================  =========================================================================
pass                                  rewrite
====================================  =========================================================================
:func:`tile_batch`                    the whole graph -> a ``Loop`` over tiles of ``tile`` samples (the
                                      batch stays dynamic; the last tile may be smaller): a tile's feature
                                      maps stay in the CPU's cache from one layer to the next instead of
                                      streaming through DRAM (:func:`untile_batch` undoes it, for TensorRT)
====================================  =========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """Run the whole graph in a ``Loop`` over slices of ``tile`` samples along the batch axis.

    Every output is the concatenation of the tiles' outputs along axis 0 (collected in a sequence: linear in
    the batch), so the model computes exactly what it did, for any batch size, whenever no op mixes samples
    (true of an inference network). The weights move into the loop body: onnxruntime rewrites a subgraph's
    own initializers (NCHWc layouts, prepacked GEMM panels) but not the ones it reads from the outer scope.
    ``tile < 1`` or a model already tiled is returned unchanged; a model whose one input is not batch-leading
    and dynamic raises ``ValueError``.
    """
    if tile < 1 or batch_tile_of(model) is not None:
        return PassResult(model, 0)
    model = _copy(model)
    graph = model.graph
    inits = _initializers(model)
    inputs = [v for v in graph.input if v.name not in inits]
    if len(inputs) != 1 or not inputs[0].type.tensor_type.shape.dim:
        raise ValueError("tile_batch needs a model with one batch-leading input")
    batch = inputs[0].type.tensor_type.shape.dim[0]
    if batch.HasField("dim_value"):
        raise ValueError(f"the input's batch dimension is fixed ({batch.dim_value}): nothing to tile")
    images = inputs[0].name
    outputs = list(graph.output)
    local = {name: _TILE + name for name in (images, *(o.name for o in outputs))}

    body_nodes = [
        helper.make_node("Reshape", [_TILE + "iter", _TILE + "one"], [_TILE + "i"], name=_TILE + "i"),
        helper.make_node("Mul", [_TILE + "i", _TILE + "tile"], [_TILE + "start"], name=_TILE + "start"),
        helper.make_node("Add", [_TILE + "start", _TILE + "tile"], [_TILE + "stop"], name=_TILE + "stop"),
        helper.make_node(
            "Slice",
            [images, _TILE + "start", _TILE + "stop", _TILE + "zero"],
            [local[images]],
            name=_TILE + "x",
        ),
    ]
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for i, name in enumerate(copy.input):
            copy.input[i] = local.get(name, name)
        for i, name in enumerate(copy.output):
            copy.output[i] = local.get(name, name)
        body_nodes.append(copy)
    sequences = []
    for out in outputs:
        elem = out.type.tensor_type.elem_type
        seq = helper.make_sequence_type_proto(helper.make_tensor_type_proto(elem, None))
        sequences.append((out.name, elem, seq))
        body_nodes.append(
            helper.make_node(
                "SequenceInsert",
                [_TILE + "in/" + out.name, local[out.name]],
                [_TILE + "out/" + out.name],
                name=_TILE + "collect/" + out.name,
            )
        )
    body_nodes.append(
        helper.make_node("Identity", [_TILE + "cond"], [_TILE + "cond_out"], name=_TILE + "cond")
    )
    body = helper.make_graph(
        body_nodes,
        _TILE + "body",
        [
            helper.make_tensor_value_info(_TILE + "iter", onnx.TensorProto.INT64, []),
            helper.make_tensor_value_info(_TILE + "cond", onnx.TensorProto.BOOL, []),
            *(helper.make_value_info(_TILE + "in/" + name, seq) for name, _, seq in sequences),
        ],
        [
            helper.make_tensor_value_info(_TILE + "cond_out", onnx.TensorProto.BOOL, []),
            *(helper.make_value_info(_TILE + "out/" + name, seq) for name, _, seq in sequences),
        ],
        initializer=list(graph.initializer),  # the loop's own integers come from the outer scope
    )
    # trips = ceil(batch / tile), as a scalar
    outer = [
        helper.make_node("Shape", [images], [_TILE + "shape"], name=_TILE + "shape"),
        helper.make_node(
            "Slice",
            [_TILE + "shape", _TILE + "zero", _TILE + "one", _TILE + "zero"],
            [_TILE + "n"],
            name=_TILE + "n",
        ),
        helper.make_node("Add", [_TILE + "n", _TILE + "tile_1"], [_TILE + "n_up"], name=_TILE + "n_up"),
        helper.make_node(
            "Div", [_TILE + "n_up", _TILE + "tile"], [_TILE + "trips_1"], name=_TILE + "trips_1"
        ),
        helper.make_node(
            "Reshape", [_TILE + "trips_1", _TILE + "scalar"], [_TILE + "trips"], name=_TILE + "trips"
        ),
        *(
            helper.make_node(
                "SequenceEmpty", [], [_TILE + "empty/" + name], name=_TILE + "empty/" + name, dtype=elem
            )
            for name, elem, _ in sequences
        ),
        helper.make_node(
            "Loop",
            [_TILE + "trips", "", *(_TILE + "empty/" + name for name, _, _ in sequences)],
            [_TILE + "tiles/" + name for name, _, _ in sequences],
            name=_TILE + "loop",
            body=body,
        ),
        *(
            helper.make_node(
                "ConcatFromSequence", [_TILE + "tiles/" + name], [name], name=_TILE + "concat/" + name, axis=0
            )
            for name, _, _ in sequences
        ),
    ]
    outer_constants = [
        numpy_helper.from_array(np.array([1], np.int64), _TILE + "one"),
        numpy_helper.from_array(np.array([0], np.int64), _TILE + "zero"),
        numpy_helper.from_array(np.array([tile], np.int64), _TILE + "tile"),
        numpy_helper.from_array(np.array([tile - 1], np.int64), _TILE + "tile_1"),
        numpy_helper.from_array(np.array([], np.int64), _TILE + "scalar"),
    ]
    del graph.node[:]
    graph.node.extend(outer)
    del graph.initializer[:]
    graph.initializer.extend(outer_constants)
    del graph.value_info[:]  # the body's shapes are inferred anew (a tile's batch is not the model's)
    _set_metadata(model, TILE_KEY, str(tile))
    return PassResult(model, 1)


def untile_batch(model: onnx.ModelProto) -> PassResult:
    """Undo :func:`tile_batch`: the loop body's graph back as the model's graph (for consumers that want the
    whole batch at once, like TensorRT)."""
    if batch_tile_of(model) is None:
        return PassResult(model, 0)
    model = _copy(model)
    graph = model.graph
    loop = next((n for n in graph.node if n.op_type == "Loop" and n.name == _TILE + "loop"), None)
    if loop is None:
        raise ValueError(f"metadata says {TILE_KEY} but the graph has no {_TILE}loop")
    body = helper.get_attribute_value(next(a for a in loop.attribute if a.name == "body"))
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
