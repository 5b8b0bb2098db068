"""ONNX-level rewrite passes: ``ModelProto -> PassResult``, each exact in real arithmetic.

Every pass returns a new model (the input is left untouched) and the number of rewrites it made; each is
checked against onnxruntime on random inputs in ``tests/export/test_passes.py``. They shape the exported graph
for the int8 quantizer (:mod:`densegraph.export.quantize`) and for fp16 (:func:`~.onnx.fp16_from_onnx`). The
fp32 model needs none of them: onnxruntime's CPU optimizer turns a standalone BatchNormalization into the same
depthwise conv itself (in its NCHWc layout) and runs AveragePool natively. :func:`tile_batch` is the opt-in
last pass of a CPU build (``--batch-tile``): it changes where the work happens, not what is computed.

====================================  =========================================================================
pass                                  rewrite
====================================  =========================================================================
:func:`inline_constant_identities`    ``Identity(initializer)`` -> the initializer (the TorchScript exporter
                                      deduplicates equal weights that way; quantizers need them constant)
:func:`batchnorm_to_conv`             a BatchNormalization that no Conv before it can absorb -> a depthwise
                                      1x1 Conv (``group = C``, weight ``gamma / sqrt(var + eps)``, bias
                                      ``beta - mean * weight``), so BN-ReLU quantizes as one int8 conv with the
                                      ReLU folded into its output range
:func:`avgpool_to_conv`               an AveragePool without padding -> a depthwise Conv with weights
                                      ``1 / (kh * kw)`` (onnxruntime's int8 depthwise conv is fast, its
                                      QLinearAveragePool is not)
:func:`tile_batch`                    the whole graph -> a ``Scan`` over tiles of ``tile`` samples, the
                                      batch padded to whole tiles (it stays dynamic; opt-in): a tile's
                                      feature maps stay in the CPU's cache from one layer to the next instead
                                      of streaming through DRAM (:func:`untile_batch` undoes it, for TensorRT)
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
    "avgpool_to_conv",
    "batch_tile_of",
    "batchnorm_to_conv",
    "inline_constant_identities",
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


def inline_constant_identities(model: onnx.ModelProto) -> PassResult:
    """Replace ``Identity`` nodes over initializers by the initializer itself (graph outputs are kept)."""
    model = _copy(model)
    graph = model.graph
    inits = _initializers(model)
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            rename[node.output[0]] = node.input[0]
        else:
            keep.append(node)
    if not rename:
        return PassResult(model, 0)
    for node in keep:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del graph.node[:]
    graph.node.extend(keep)
    _drop_value_info(graph, set(rename))
    return PassResult(model, len(rename))


def batchnorm_to_conv(model: onnx.ModelProto) -> PassResult:
    """Rewrite inference BatchNormalization nodes on 4-d tensors as depthwise 1x1 convolutions.

    A BN whose input comes from a Conv used only by it is left alone: onnxruntime folds that one into the conv.
    """
    model = _copy(model)
    graph = model.graph
    inits = _initializers(model)
    shapes = _shapes(model)
    producers = {out: node for node in graph.node for out in node.output}
    uses: dict[str, int] = {o.name: 1 for o in graph.output}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    new_nodes = []
    rewrites = 0
    for node in graph.node:
        if (
            node.op_type != "BatchNormalization"
            or not _is_inference_bn(node, inits)
            or len(shapes.get(node.input[0], ())) != 4
        ):
            new_nodes.append(node)
            continue
        source = producers.get(node.input[0])
        if source is not None and source.op_type == "Conv" and uses.get(node.input[0], 0) == 1:
            new_nodes.append(node)
            continue
        scale, bias, mean, var = (
            numpy_helper.to_array(inits[name]).astype(np.float64) for name in node.input[1:5]
        )
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        weight = scale / np.sqrt(var + eps)
        shift = bias - mean * weight
        channels = weight.shape[0]
        stem = _unique(graph, node.output[0] + "_dw")
        w_name, b_name = stem + ".weight", stem + ".bias"
        graph.initializer.append(
            numpy_helper.from_array(weight.reshape(channels, 1, 1, 1).astype(np.float32), w_name)
        )
        graph.initializer.append(numpy_helper.from_array(shift.astype(np.float32), b_name))
        new_nodes.append(
            helper.make_node(
                "Conv",
                [node.input[0], w_name, b_name],
                [node.output[0]],
                name=(node.name or stem) + "_dwconv",
                group=channels,
                kernel_shape=[1, 1],
            )
        )
        rewrites += 1
    if rewrites:
        del graph.node[:]
        graph.node.extend(new_nodes)
        _remove_unused_initializers(graph)
    return PassResult(model, rewrites)


def avgpool_to_conv(model: onnx.ModelProto) -> PassResult:
    """Rewrite 2-d AveragePool nodes without padding, dilation or ceil mode as depthwise convolutions."""
    model = _copy(model)
    graph = model.graph
    shapes = _shapes(model)
    new_nodes = []
    rewrites = 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kernel = list(attrs.get("kernel_shape", []))
        shape = shapes.get(node.input[0], ()) if node.op_type == "AveragePool" else ()
        if (
            len(shape) != 4
            or shape[1] is None
            or len(kernel) != 2
            or any(attrs.get("pads", [0]))
            or attrs.get("ceil_mode", 0)
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")
            or any(d != 1 for d in attrs.get("dilations", [1]))
        ):
            new_nodes.append(node)
            continue
        channels = shape[1]
        stem = _unique(graph, node.output[0] + "_pool")
        weight = np.full((channels, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), dtype=np.float32)
        graph.initializer.append(numpy_helper.from_array(weight, stem + ".weight"))
        new_nodes.append(
            helper.make_node(
                "Conv",
                [node.input[0], stem + ".weight"],
                [node.output[0]],
                name=(node.name or stem) + "_dwconv",
                group=channels,
                kernel_shape=kernel,
                strides=list(attrs.get("strides", [1, 1])),  # ONNX's default stride is 1, not the kernel
            )
        )
        rewrites += 1
    if rewrites:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return PassResult(model, rewrites)


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
    body = helper.make_graph(
        body_nodes,
        _TILE + "body",
        [tile_type(inputs[0], local[images])],
        [tile_type(out, local[out.name]) for out in outputs],
        initializer=list(graph.initializer),
    )

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
    rank = len(inputs[0].type.tensor_type.shape.dim)
    outer_constants = [
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
    del graph.node[:]
    graph.node.extend(outer)
    del graph.initializer[:]
    graph.initializer.extend(outer_constants)
    del graph.value_info[:]  # the body's shapes are inferred anew (a tile's batch is not the model's)
    _set_metadata(model, TILE_KEY, str(tile))
    return PassResult(model, 1)


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


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Tensor shapes (``None`` for a dynamic dim) from ONNX shape inference, completed from the weights."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is a convenience: the weights below still give every conv's output
        inferred = model
    shapes: dict[str, tuple[int | None, ...]] = {}
    for info in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        if info.type.tensor_type.HasField("shape"):
            dims = info.type.tensor_type.shape.dim
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    inits = _initializers(model)
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits:
            if len(inits[node.input[1]].dims) == 4:
                shapes.setdefault(node.output[0], (None, int(inits[node.input[1]].dims[0]), None, None))
    return shapes


def _is_inference_bn(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    training = next((a.i for a in node.attribute if a.name == "training_mode"), 0)
    return (
        not training
        and len(node.output) == 1
        and len(node.input) == 5
        and all(name in inits for name in node.input[1:5])
    )


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _unique(graph: onnx.GraphProto, base: str) -> str:
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    name, i = base, 0
    while name + ".weight" in taken or name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


def _drop_value_info(graph: onnx.GraphProto, names: set[str]) -> None:
    keep = [v for v in graph.value_info if v.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(keep)


def _remove_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
