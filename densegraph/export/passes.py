"""ONNX-level rewrite passes: ``ModelProto -> PassResult``, each exact in real arithmetic.

Every pass returns a new model (the input is left untouched) and the number of rewrites it made; each is
checked against onnxruntime on random inputs in ``tests/export/test_passes.py``. They shape the exported graph
for the int8 quantizer (:mod:`densegraph.export.quantize`) and for fp16 (:func:`~.onnx.fp16_from_onnx`). The
fp32 model needs none of them: onnxruntime's CPU optimizer turns a standalone BatchNormalization into the same
depthwise conv itself (in its NCHWc layout) and runs AveragePool natively.

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
====================================  =========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["PassResult", "avgpool_to_conv", "batchnorm_to_conv", "inline_constant_identities"]


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
