"""ONNX emitted straight from the connection graph: each node's op list (after the passes) plus its tensors.

:func:`onnx_from_graph` takes a graph and a state_dict (torchvision's keys), runs the chosen passes of
:mod:`densegraph.passes` over every node's ops, and lowers each op through :data:`EMITTERS` — one small function
per op kind — to ``onnx.helper`` nodes. A node's inputs are joined by one ``Concat`` (the form onnxruntime runs
fastest: it has no preallocated block buffer to write into, and ``Concat`` of a growing block is a memcpy).

Every ONNX node, initializer and intermediate value is named after the graph op it comes from, in
torchvision's module paths: ``features.denseblock1.denselayer3.conv1`` (the conv node and its output value),
``features.denseblock1.denselayer3.conv1.weight`` (its weight), ``features.denseblock1.denselayer3.concat``
(the layer's input concatenation), ``features.transition2.pool``, ``classifier``. An op without a name of its
own (the head's ReLU, the global pool) takes its node's module path (or the node's id) and its kind:
``head.relu``. A rewrite keeps the name of the op it replaces (a BN folded into a conv leaves the conv's name;
a BN as a depthwise conv keeps the BN's). The model has one input ``images`` ``[batch, C, H, W]`` and one
output ``logits`` ``[batch, classes]``, or for a features head one output per named feature map
(``block3`` ``[batch, C, H, W]``). A dynamic input (``graph.graph["input_range"]``) has symbolic ``height`` and
``width`` (and each feature map ``<name>_height``, ``<name>_width``); no op bakes a spatial size in (the
classifier pools with ``GlobalAveragePool`` and flattens on axis 1). Equal inputs give equal bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..graph import binomial_filter, node_inputs

if TYPE_CHECKING:
    import networkx as nx
    import onnx

__all__ = ["EMITTERS", "EmitError", "onnx_from_graph", "onnx_from_ops", "value_names"]

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
HEIGHT_AXIS, WIDTH_AXIS = "height", "width"  # a dynamic input's (graph.graph["input_range"]) spatial axes


class EmitError(ValueError):
    """An op the emitter cannot lower (a bug or a missing emitter, not a user mistake); names the node."""


@dataclass
class _Emission:
    """The nodes and initializers emitted so far."""

    nodes: list[Any] = field(default_factory=list)
    initializers: list[Any] = field(default_factory=list)

    def weight(self, name: str, tensor: Any, shape: Sequence[int] | None = None) -> str:
        """Add ``tensor`` (float32) as initializer ``name``; returns the name."""
        from onnx import numpy_helper

        array = tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
        array = np.ascontiguousarray(array, dtype=np.float32)
        if shape is not None:
            array = array.reshape(shape)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def constant(self, name: str, array: np.ndarray) -> str:
        """Add ``array`` as initializer ``name`` in its own dtype (shapes, pads); returns the name."""
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op_type: str, inputs: Sequence[str], output: str, **attrs: Any) -> str:
        """Add one node named as its output value; returns the output."""
        from onnx import helper

        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=output, **attrs))
        return output


Emitter = Callable[[_Emission, dict[str, Any], str, str], str]
"""``(emission, op, input value, name) -> output value``: emits one op named ``name``."""


def _pair(value: int) -> list[int]:
    return [int(value)] * 2


def _conv(e: _Emission, op: dict[str, Any], x: str, name: str) -> str:
    inputs = [x, e.weight(f"{name}.weight", op["weight"])]
    if op.get("bias") is not None:
        inputs.append(e.weight(f"{name}.bias", op["bias"]))
    out = f"{name}.conv" if op.get("post") else name
    e.node(
        "Conv",
        inputs,
        out,
        kernel_shape=_pair(op["kernel"]),
        strides=_pair(op["stride"]),
        pads=_pair(op["padding"]) * 2,
        group=int(op.get("groups", 1)),
    )
    if op.get("post") == "relu":
        return e.node("Relu", [out], name)
    if op.get("post") is not None:
        raise EmitError(f"conv post-op {op['post']!r}")
    return out


def _bn(e: _Emission, op: dict[str, Any], x: str, name: str) -> str:
    tensors = [e.weight(f"{name}.{key}", op[key]) for key in ("weight", "bias")]
    tensors += [e.weight(f"{name}.running_{key}", op[key]) for key in ("mean", "var")]
    return e.node("BatchNormalization", [x, *tensors], name, epsilon=float(op["eps"]))


def _relu(e: _Emission, op: dict[str, Any], x: str, name: str) -> str:
    return e.node("Relu", [x], name)


def _relu6(e: _Emission, op: dict[str, Any], x: str, name: str) -> str:
    low = e.constant(f"{name}.min", np.array(0.0, dtype=np.float32))
    high = e.constant(f"{name}.max", np.array(6.0, dtype=np.float32))
    return e.node("Clip", [x, low, high], name)


def _blurpool(e: _Emission, op: dict[str, Any], x: str, name: str) -> str:
    """Reflect padding, then the fixed binomial filter as a constant depthwise conv (see the graph's op table)."""
    k, channels = int(op["kernel"]), int(op["channels"])
    pad = (k - 1) // 2
    pads = e.constant(f"{name}.pads", np.array([0, 0, pad, pad, 0, 0, pad, pad], dtype=np.int64))
    padded = e.node("Pad", [x, pads], f"{name}.pad", mode="reflect")
    kernel = np.asarray(binomial_filter(k), dtype=np.float64)
    weight = np.broadcast_to(kernel, (channels, 1, k, k))
    return e.node(
        "Conv",
        [padded, e.weight(f"{name}.filter", weight)],
        name,
        kernel_shape=_pair(k),
        strides=_pair(op["stride"]),
        pads=[0, 0, 0, 0],
        group=channels,
    )


def _pool(op_type: str) -> Emitter:
    def emit(e: _Emission, op: dict[str, Any], x: str, name: str) -> str:
        attrs: dict[str, Any] = {
            "kernel_shape": _pair(op["kernel"]),
            "strides": _pair(op["stride"]),
            "pads": _pair(op.get("padding", 0)) * 2,
        }
        if op.get("ceil_mode"):
            attrs["ceil_mode"] = 1
        if op_type == "AveragePool" and op.get("padding", 0):
            attrs["count_include_pad"] = 1  # PyTorch's AvgPool2d default
        return e.node(op_type, [x], name, **attrs)

    return emit


def _global_avgpool(e: _Emission, op: dict[str, Any], x: str, name: str) -> str:
    pooled = e.node("GlobalAveragePool", [x], name)
    return e.node("Flatten", [pooled], f"{name}.flatten", axis=1)


def _linear(e: _Emission, op: dict[str, Any], x: str, name: str) -> str:
    inputs = [x, e.weight(f"{name}.weight", op["weight"])]
    if op.get("bias") is not None:
        inputs.append(e.weight(f"{name}.bias", op["bias"]))
    return e.node("Gemm", inputs, name, transB=1)


def _channel_shape(tensor: Any) -> list[int]:
    return [1, int(tensor.shape[0]), 1, 1]


def _clamp(e: _Emission, op: dict[str, Any], x: str, name: str) -> str:
    low = e.weight(f"{name}.low", op["low"], _channel_shape(op["low"]))
    high = op.get("high")
    if high is None or bool(
        np.isinf(np.asarray(high.detach().cpu() if hasattr(high, "detach") else high)).all()
    ):
        return e.node("Max", [x, low], name)
    above = e.node("Max", [x, low], f"{name}.max")
    return e.node("Min", [above, e.weight(f"{name}.high", high, _channel_shape(high))], name)


def _affine(relu: bool) -> Emitter:
    def emit(e: _Emission, op: dict[str, Any], x: str, name: str) -> str:
        scaled = e.node(
            "Mul", [x, e.weight(f"{name}.scale", op["scale"], _channel_shape(op["scale"]))], f"{name}.mul"
        )
        shift = e.weight(f"{name}.shift", op["shift"], _channel_shape(op["shift"]))
        if not relu:
            return e.node("Add", [scaled, shift], name)
        return e.node("Relu", [e.node("Add", [scaled, shift], f"{name}.add")], name)

    return emit


EMITTERS: dict[str, Emitter] = {
    "conv": _conv,
    "bn": _bn,
    "relu": _relu,
    "relu6": _relu6,
    "blurpool": _blurpool,
    "maxpool": _pool("MaxPool"),
    "avgpool": _pool("AveragePool"),
    "global_avgpool": _global_avgpool,
    "linear": _linear,
    "clamp": _clamp,
    "affine": _affine(relu=False),
    "affine_relu": _affine(relu=True),
}
"""One emitter per op kind (a new primitive op is one entry here and one function above)."""


def _prefix(graph: nx.DiGraph, node: str) -> str:
    return graph.nodes[node].get("module") or node


def value_names(graph: nx.DiGraph, node_ops: Mapping[str, list[dict[str, Any]]]) -> dict[str, str]:
    """The ONNX name of each op, keyed by that name, mapped to the graph node it comes from (``locate``'s table
    for one model); concatenations are ``<module>.concat``."""
    names: dict[str, str] = {}
    for node in graph.nodes:
        if graph.in_degree(node) > 1:
            names[f"{_prefix(graph, node)}.concat"] = node
        for name in _op_names(graph, node, node_ops.get(node, [])):
            names[name] = node
    return names


def _op_names(graph: nx.DiGraph, node: str, ops: list[dict[str, Any]]) -> list[str]:
    names, seen = [], set()
    prefix = _prefix(graph, node)
    for op in ops:
        name = op.get("name") or f"{prefix}.{op['op']}"
        base, i = name, 1
        while name in seen:
            i += 1
            name = f"{base}{i}"
        seen.add(name)
        names.append(name)
    return names


def onnx_from_ops(
    graph: nx.DiGraph,
    node_ops: Mapping[str, list[dict[str, Any]]],
    *,
    opset: int,
    name: str,
    doc: str = "",
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """Lower each node's (rewritten) ops to ONNX, in the graph's node order; returns the unchecked model."""
    import onnx
    from onnx import TensorProto, helper

    from .. import __version__

    e = _Emission()
    values: dict[str, str] = {}
    order = list(graph.nodes)
    sink = order[-1]
    for node in order:
        if graph.in_degree(node) == 0:
            values[node] = INPUT_NAME
            continue
        inputs = [values[u] for u in node_inputs(graph, node)]
        prefix = _prefix(graph, node)
        x = inputs[0] if len(inputs) == 1 else e.node("Concat", inputs, f"{prefix}.concat", axis=1)
        ops = node_ops[node]
        for op, op_name in zip(ops, _op_names(graph, node, ops), strict=True):
            emitter = EMITTERS.get(op["op"])
            if emitter is None:
                raise EmitError(
                    f"{node} ({op_name}): no ONNX emitter for op kind {op['op']!r}; "
                    f"known: {', '.join(sorted(EMITTERS))}"
                )
            try:
                x = emitter(e, op, x, op_name)
            except (KeyError, TypeError, ValueError) as exc:
                raise EmitError(f"while emitting {node} ({op_name}, {op['op']}): {exc}") from exc
        values[node] = x
    c, h, w = graph.graph["input_shape"]
    dynamic = bool(graph.graph.get("input_range"))
    if dynamic:
        h, w = HEIGHT_AXIS, WIDTH_AXIS
    features = graph.graph.get("outputs")
    if features:
        outputs = _feature_outputs(e, features, values, dynamic=dynamic)
    else:
        _rename_output(e, values[sink], OUTPUT_NAME, sink)
        classes = int(graph.graph["output_shape"][0])
        outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [BATCH_AXIS, classes])]
    model_graph = helper.make_graph(
        e.nodes,
        name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH_AXIS, c, h, w])],
        outputs,
        e.initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(
        model_graph,
        opset_imports=opsets,
        producer_name="densegraph",
        producer_version=__version__,
        doc_string=doc,
        ir_version=onnx.helper.find_min_ir_version_for(opsets),
    )
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model


def _rename_output(e: _Emission, value: str, output: str, node: str) -> None:
    """Name ``value`` ``output`` where it is produced (the node that computes it, and nothing reads it yet)."""
    producer = next((n for n in reversed(e.nodes) if value in n.output), None)
    if producer is None:
        raise EmitError(f"{node}: the graph's output is not computed by any op")
    producer.output[0] = output


def _feature_outputs(
    e: _Emission, features: list[dict[str, Any]], values: dict[str, str], *, dynamic: bool
) -> list[Any]:
    """A features head: one model output per named feature map, ``[batch, channels, H, W]`` (with a dynamic
    input, H and W are the symbolic ``<name>_height``, ``<name>_width``). A map that other nodes also read (a
    block's single output, read by its transition) is passed on through an Identity."""
    from onnx import TensorProto, helper

    read = {i for n in e.nodes for i in n.input}
    outputs = []
    for o in features:
        value = values[o["node"]]
        if value in read or value == INPUT_NAME:
            e.node("Identity", [value], o["name"])
        else:
            _rename_output(e, value, o["name"], o["node"])
        size = (
            [f"{o['name']}_{HEIGHT_AXIS}", f"{o['name']}_{WIDTH_AXIS}"]
            if dynamic
            else list(map(int, o["size"]))
        )
        shape: list[str | int | None] = [BATCH_AXIS, int(o["channels"]), *size]
        outputs.append(helper.make_tensor_value_info(o["name"], TensorProto.FLOAT, shape))
    return outputs


def onnx_from_graph(
    graph: nx.DiGraph,
    state_dict: Mapping[str, Any],
    *,
    passes: Iterable[str] = (),
    opset: int,
    name: str | None = None,
    doc: str = "",
    metadata: Mapping[str, str] | None = None,
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The ONNX model of ``graph`` with the tensors of ``state_dict`` (an unrewritten module's), after
    ``passes`` (:data:`densegraph.passes.PASSES` names); returns the unchecked model and what each pass
    rewrote."""
    from ..passes import frozen_ops, run_passes

    result = run_passes(frozen_ops(graph, state_dict), passes)
    model = onnx_from_ops(
        graph, result.node_ops, opset=opset, name=name or graph.graph["name"], doc=doc, metadata=metadata
    )
    return model, result.counts
