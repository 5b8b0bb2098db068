"""Bias correction of an int8 model: the mean shift that rounding the weights puts on each layer's output, undone.

Rounding a conv's weights to int8 moves its output by ``conv(x, Wq - W)``. Over a dataset that error has a mean
per output channel, ``mean over pixels of conv(E[x], Wq - W)`` (the conv is linear, so the expectation passes
through it), and a nonzero mean does not average out: every later layer sees every channel shifted, and in a
dense block each shifted map is read again by every later layer. Subtracting that mean from the layer's bias
removes it exactly for the calibration data's statistics. This is the weights part of post-training bias
correction (Nagel et al., "Data-Free Quantization", ICCV 2019; OpenVINO's NNCF runs a form of it by default);
activation rounding is unbiased (round to nearest) and is left alone.

:func:`correct_biases` works on the QDQ model ``quantize_static`` wrote: for every ``Conv`` (and ``Gemm``) whose
weight comes from a ``DequantizeLinear`` of an int8 initializer, it reads ``Wq`` (dequantized) and ``W`` (the
fp32 model's initializer of the node of the same name), measures ``E[x]`` of the fp32 tensor feeding that node
(the input of its ``QuantizeLinear``) on calibration images, and moves the bias: a float bias (the ``qdq`` form)
directly; an int32 bias behind its ``DequantizeLinear`` (the ``cpu`` form) by the shift in units of its scale.
Every conv must have a bias to move: :func:`with_biases` gives the fp32 model zero biases first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["with_biases", "correct_biases", "MEAN_SAMPLES"]

MEAN_SAMPLES = 32
"""Calibration images the input means are measured on (at most): a mean needs far fewer than a range."""


def with_biases(model: Any) -> int:
    """Give every ``Conv`` and ``Gemm`` of ``model`` (in place) a bias, zero where it has none; returns how many
    were added."""
    from onnx import numpy_helper

    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    taken = (
        set(shapes) | {v for n in model.graph.node for v in n.output} | {i.name for i in model.graph.input}
    )
    added = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) > 2 or node.input[1] not in shapes:
            continue
        transposed = node.op_type == "Gemm" and not _attribute(node, "transB", 0)
        outputs = shapes[node.input[1]][1 if transposed else 0]
        name = f"{node.name or node.output[0]}.bias"
        while name in taken:  # a model not emitted by densegraph may already use the name
            name = f"{name}_"
        taken.add(name)
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(outputs, np.float32), name))
        node.input.append(name)
        added += 1
    return added


def correct_biases(
    quantized: Any, fp32: Any, calib: np.ndarray, *, batch_size: int, samples: int = MEAN_SAMPLES
) -> dict[str, Any]:
    """Move the biases of ``quantized`` (a QDQ model, in place) by the mean shift of its int8 weights, measured
    on up to ``samples`` of ``calib`` run ``batch_size`` at a time through ``fp32`` (the model it was quantized
    from, with every bias present); returns how many layers moved and the largest shift."""
    from onnx import numpy_helper

    inits = {i.name: i for i in quantized.graph.initializer}
    producer = {out: node for node in quantized.graph.node for out in node.output}
    fp32_nodes = {node.name: node for node in fp32.graph.node if node.name}
    fp32_inits = {i.name: i for i in fp32.graph.initializer}

    sites = []
    for node in quantized.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.name not in fp32_nodes:
            continue
        weight_dq, input_dq = producer.get(node.input[1]), producer.get(node.input[0])
        if weight_dq is None or input_dq is None or input_dq.op_type != "DequantizeLinear":
            continue
        quantize, source = producer.get(input_dq.input[0]), fp32_nodes[node.name]
        if not (
            weight_dq.op_type == "DequantizeLinear"
            and weight_dq.input[0] in inits
            and quantize is not None
            and quantize.op_type == "QuantizeLinear"
            and source.input[1] in fp32_inits
        ):
            continue
        sites.append((node, weight_dq, quantize.input[0], source))
    if not sites:
        return {"layers": 0, "samples": 0, "max_shift": 0.0}

    used = calib[: max(1, min(samples, len(calib)))]
    means = _input_means(fp32, sorted({x for _, _, x, _ in sites}), used, batch_size)
    largest = 0.0
    moved = 0
    for node, weight_dq, x, source in sites:
        w = numpy_helper.to_array(fp32_inits[source.input[1]]).astype(np.float64)
        wq = _dequantized(weight_dq, inits)
        if wq.shape != w.shape:
            continue
        shift = _mean_shift(node, wq - w, means[x])
        _move_bias(node.input[2], shift, producer, inits)
        largest = max(largest, float(np.abs(shift).max()))
        moved += 1
    return {"layers": moved, "samples": len(used), "max_shift": round(largest, 6)}


def _attribute(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _batches(data: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(data), max(1, size)):
        yield data[start : start + size]


def _input_means(fp32: Any, values: list[str], calib: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Each of ``values`` (fp32 tensors of ``fp32``) averaged over the batch axis of ``calib`` (float64)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    augmented = onnx.ModelProto()
    augmented.CopyFrom(fp32)
    outputs = {o.name for o in augmented.graph.output}
    graph_inputs = {i.name for i in augmented.graph.input}
    wanted = [v for v in values if v not in outputs and v not in graph_inputs]
    for value in wanted:
        augmented.graph.output.append(helper.make_tensor_value_info(value, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # the plain graph: onnxruntime's fusions must not swallow a tensor we read
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(augmented.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    sums: dict[str, np.ndarray] = {}
    for batch in _batches(calib, batch_size):
        feeds = {input_name: batch}
        for name, value in zip(names, session.run(None, feeds), strict=True):
            if name in values:
                sums[name] = sums.get(name, 0) + value.astype(np.float64).sum(axis=0)
        if input_name in values:
            sums[input_name] = sums.get(input_name, 0) + batch.astype(np.float64).sum(axis=0)
    return {name: total / len(calib) for name, total in sums.items()}


def _dequantized(dq: Any, inits: dict[str, Any]) -> np.ndarray:
    from onnx import numpy_helper

    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    zero = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 else 0.0
    axis = _attribute(dq, "axis", 1)
    if np.ndim(scale):  # per channel along ``axis``
        shape = [1] * q.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero = np.reshape(zero, shape) if np.ndim(zero) else zero
    return (q - zero) * scale


def _mean_shift(node: Any, delta: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Per output channel, the mean over output positions of the layer applied to ``mean`` with weights
    ``delta``: for a conv, sum over (input channel, kh, kw) of ``delta`` times the mean of the input pixels that
    kernel tap reads (zero padding included), which is that conv's output mean without running the conv."""
    if node.op_type == "Gemm":
        vector = mean.reshape(-1)
        return (delta @ vector) if _attribute(node, "transB", 0) else (vector @ delta)
    cout, cin_g, kh, kw = delta.shape
    groups = int(_attribute(node, "group", 1))
    pads = list(_attribute(node, "pads", [0] * 4))
    sh, sw = _attribute(node, "strides", [1, 1])
    dh, dw = _attribute(node, "dilations", [1, 1])
    padded = np.pad(mean, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (padded.shape[1] - dh * (kh - 1) - 1) // sh + 1
    ow = (padded.shape[2] - dw * (kw - 1) - 1) // sw + 1
    taps = np.empty((mean.shape[0], kh, kw))
    for i in range(kh):
        for j in range(kw):
            window = padded[
                :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw
            ]
            taps[:, i, j] = window.mean(axis=(1, 2))
    per_group = taps.reshape(groups, cin_g, kh, kw)
    weights = delta.reshape(groups, cout // groups, cin_g, kh, kw)
    return np.einsum("gocij,gcij->go", weights, per_group).reshape(-1)


def _move_bias(name: str, shift: np.ndarray, producer: dict[str, Any], inits: dict[str, Any]) -> None:
    """Subtract ``shift`` from the bias ``name``: a float initializer, or an int32 one behind a DequantizeLinear."""
    from onnx import numpy_helper

    if name in inits:
        bias = numpy_helper.to_array(inits[name]).astype(np.float64)
        inits[name].CopyFrom(numpy_helper.from_array((bias - shift).astype(np.float32), name))
        return
    dq = producer[name]
    stored = numpy_helper.to_array(inits[dq.input[0]])
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    steps = np.round(stored.astype(np.float64) - shift / scale)
    info = np.iinfo(stored.dtype)
    moved = np.clip(steps, info.min, info.max).astype(stored.dtype)
    inits[dq.input[0]].CopyFrom(numpy_helper.from_array(moved, dq.input[0]))
