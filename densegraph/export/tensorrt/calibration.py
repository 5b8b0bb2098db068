"""Implicit INT8 from a Q/DQ ONNX: the float graph plus a TensorRT calibration cache, for DLA on TensorRT
8.6-10.x, whose DLA takes no explicit quantization (Q/DQ layers fall back to the GPU).

This is what NVIDIA's Q/DQ Translator (Deep-Learning-Accelerator-SW, ``tools/qdq-translator``) does, on
densegraph's own Q/DQ models: every QuantizeLinear/DequantizeLinear pair is removed, the scale of an
activation pair becomes that tensor's entry in the calibration cache (dynamic range ``scale * 127``, symmetric
int8), and quantized weights become float initializers holding their dequantized values. TensorRT quantizes
weights itself, per output channel at ``max |w| / 127``; a symmetric per-channel weight scale is exactly that
(its largest value is +-127 steps), so TensorRT recovers the same int8 weights. Scales are carried through the
operators that keep values on the int8 grid (ReLU, max-pooling, reshapes, a Concat of inputs that share one
scale, which densegraph's block buffers do), so those run in int8 too; anything else without a scale runs in
FP16, as its Q/DQ twin computes it in float.

The cache is TensorRT's text format: a header ``TRT-<NV_TENSORRT_VERSION>-EntropyCalibration2`` (TensorRT
skips a cache made by another version or calibrator), then ``<tensor>: <float32 scale as 8 hex digits>``.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BuildError

__all__ = [
    "CALIBRATOR",
    "ImplicitInt8",
    "implicit_int8_from_qdq",
    "calibration_cache",
    "parse_calibration_cache",
    "nv_tensorrt_version",
    "implicit_int8_paths",
    "write_implicit_int8",
]

CALIBRATOR = "EntropyCalibration2"  # IInt8EntropyCalibrator2: the calibrator DLA requires
_QDQ = ("QuantizeLinear", "DequantizeLinear")
# operators whose output stays on its input's int8 grid (same scale, no rounding)
_GRID_PRESERVING = {"Relu", "MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity"}


@dataclass
class ImplicitInt8:
    """A Q/DQ model as TensorRT's implicit quantization takes it."""

    model: Any  # onnx.ModelProto without Q/DQ nodes, float weights
    scales: dict[str, float] = field(default_factory=dict)  # tensor -> int8 scale (dynamic range / 127)
    from_qdq: tuple[str, ...] = ()  # the tensors whose scale a Q/DQ pair gave (the rest were carried)
    weights: int = 0  # weight tensors dequantized into float initializers


def _constants(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _axis_shape(scale: np.ndarray, rank: int, node: Any) -> np.ndarray:
    """``scale`` shaped to broadcast along the node's ``axis`` (per-channel) or as it is (per-tensor)."""
    if scale.ndim == 0:
        return scale
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    shape = [1] * rank
    shape[axis % rank] = scale.size
    return scale.reshape(shape)


def _check_int8(node: Any, constants: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    where = node.name or node.output[0]
    if any(a.name == "block_size" and a.i for a in node.attribute):
        raise BuildError(
            f"{node.op_type} {where} is block-quantized; TensorRT's DLA path takes per-tensor scales"
        )
    if node.input[1] not in constants:
        raise BuildError(f"{node.op_type} {where}: its scale is not a constant")
    scale = constants[node.input[1]].astype(np.float32)
    zero = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if zero is not None and (zero.dtype != np.int8 or zero.any()):
        raise BuildError(
            f"{node.op_type} {where} is not symmetric int8 (zero point {zero.dtype} {zero.max()})"
        )
    return scale, np.zeros((), np.int8) if zero is None else zero


def _dequantize(q: np.ndarray, node: Any, constants: dict[str, np.ndarray]) -> np.ndarray:
    scale, _ = _check_int8(node, constants)
    return (q.astype(np.float32) * _axis_shape(scale, q.ndim, node)).astype(np.float32)


def _quantize(x: np.ndarray, node: Any, constants: dict[str, np.ndarray]) -> np.ndarray:
    scale, _ = _check_int8(node, constants)
    q = np.rint(x.astype(np.float32) / _axis_shape(scale, x.ndim, node))  # ties to even, as ONNX rounds
    return np.clip(q, -128, 127).astype(np.int8)


def _activation_scale(quant: Any, dequant: Any, constants: dict[str, np.ndarray]) -> float:
    q_scale, _ = _check_int8(quant, constants)
    dq_scale, _ = _check_int8(dequant, constants)
    where = quant.name or quant.output[0]
    if q_scale.size != 1 or dq_scale.size != 1:
        raise BuildError(f"QuantizeLinear {where} is per-channel on an activation; TensorRT takes one scale")
    if float(q_scale) != float(dq_scale) or not float(q_scale) > 0:
        raise BuildError(f"the Q/DQ pair at {where} has scales {float(q_scale)} and {float(dq_scale)}")
    return float(q_scale)


def implicit_int8_from_qdq(model: Any) -> ImplicitInt8:
    """The float graph of a symmetric int8 Q/DQ ``model`` and the int8 scale of each activation tensor."""
    import onnx
    from onnx import helper, numpy_helper

    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    graph = stripped.graph
    constants = _constants(graph)
    producer = {out: node for node in graph.node for out in node.output}
    result = ImplicitInt8(stripped)
    rename: dict[str, str] = {}  # an activation DQ's output -> the tensor its Q quantized
    dropped: set[int] = set()
    folded: list[Any] = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        quant = producer.get(node.input[0])
        if quant is not None and quant.op_type == "QuantizeLinear" and quant.input[0] not in constants:
            x = quant.input[0]
            scale = _activation_scale(quant, node, constants)
            if result.scales.setdefault(x, scale) != scale:
                raise BuildError(f"tensor {x!r} is quantized with two scales ({result.scales[x]}, {scale})")
            rename[node.output[0]] = x
            dropped |= {id(node), id(quant)}
        elif quant is not None and quant.op_type == "QuantizeLinear":  # a float weight quantized in the graph
            weight = _dequantize(_quantize(constants[quant.input[0]], quant, constants), node, constants)
            folded.append(numpy_helper.from_array(weight, node.output[0]))
            dropped |= {id(node), id(quant)}
        elif node.input[0] in constants:  # an int8 initializer
            folded.append(
                numpy_helper.from_array(
                    _dequantize(constants[node.input[0]], node, constants), node.output[0]
                )
            )
            dropped.add(id(node))
        else:
            raise BuildError(f"DequantizeLinear {node.name or node.output[0]} follows no QuantizeLinear")
    kept = [n for n in graph.node if id(n) not in dropped]
    if any(n.op_type in _QDQ for n in kept):
        name = next(n.name or n.output[0] for n in kept if n.op_type in _QDQ)
        raise BuildError(f"QuantizeLinear {name} is not followed by DequantizeLinear only")
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
    for out in graph.output:
        if out.name in rename:  # the graph output keeps its name
            kept.append(
                helper.make_node("Identity", [rename[out.name]], [out.name], name=f"{out.name}_identity")
            )
            result.scales[out.name] = result.scales[rename[out.name]]
    result.from_qdq = tuple(result.scales)
    result.weights = len(folded)
    _carry_scales(kept, result.scales)
    _replace_nodes(graph, kept, folded)
    onnx.checker.check_model(stripped)
    return result


def _carry_scales(nodes: list[Any], scales: dict[str, float]) -> None:
    """Give a scale to the outputs of operators that keep their input's int8 grid (nodes in graph order)."""
    for node in nodes:
        if not node.output or node.output[0] in scales:
            continue
        if node.op_type in _GRID_PRESERVING and node.input and node.input[0] in scales:
            scales[node.output[0]] = scales[node.input[0]]
        elif node.op_type == "Concat" and all(i in scales for i in node.input):
            if len({scales[i] for i in node.input}) == 1:
                scales[node.output[0]] = scales[node.input[0]]


def _replace_nodes(graph: Any, kept: list[Any], folded: list[Any]) -> None:
    """Put ``kept`` nodes and ``folded`` weights in ``graph``; drop what no node or output uses any more."""
    used = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    kept = [n for n in kept if n.op_type != "Constant" or n.output[0] in used]
    produced = {o for n in kept for o in n.output}
    initializers = [t for t in graph.initializer if t.name in used] + list(folded)
    graph.ClearField("node")
    graph.node.extend(kept)
    graph.ClearField("initializer")
    graph.initializer.extend(initializers)
    infos = [v for v in graph.value_info if v.name in produced and v.name in used]
    graph.ClearField("value_info")
    graph.value_info.extend(infos)


def nv_tensorrt_version(version: str) -> int:
    """TensorRT's ``NV_TENSORRT_VERSION`` of a version string, the number a calibration cache header names:
    ``major*1000 + minor*100 + patch`` up to 8.x (8.6.1 -> 8601), ``major*10000 + ...`` from 10 (10.3.0 ->
    100300; NvInferRuntimeBase.h's ``NV_TENSORRT_VERSION_INT``)."""
    parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in str(version).split(".")[:3]]
    major, minor, patch = (parts + [0, 0, 0])[:3]
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def calibration_cache(scales: dict[str, float], version: int) -> bytes:
    """TensorRT's calibration cache text for ``scales``, made for TensorRT ``version`` (NV_TENSORRT_VERSION)."""
    lines = [f"TRT-{version}-{CALIBRATOR}"]
    for name, scale in scales.items():
        if "\n" in name or not scale > 0:
            raise BuildError(f"tensor {name!r} cannot go into a calibration cache (scale {scale})")
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return ("\n".join(lines) + "\n").encode()


def parse_calibration_cache(data: bytes) -> tuple[str, dict[str, float]]:
    """(header, tensor -> scale) of a calibration cache; the tensor name is everything before the last ': '."""
    header, *lines = data.decode().splitlines()
    scales = {}
    for line in lines:
        name, _, hex_value = line.rpartition(": ")
        scales[name] = struct.unpack(">f", bytes.fromhex(hex_value))[0]
    return header, scales


def implicit_int8_paths(
    onnx_path: str | os.PathLike[str], folder: str | os.PathLike[str]
) -> tuple[Path, Path]:
    """Where the float graph and the calibration cache of a Q/DQ ONNX go: ``<stem>.noqdq.onnx`` (the Q/DQ
    Translator's name) and ``<stem>.calib.cache`` in ``folder``."""
    stem, out = Path(onnx_path).stem, Path(folder)
    return out / f"{stem}.noqdq.onnx", out / f"{stem}.calib.cache"


def write_implicit_int8(
    onnx_path: str | os.PathLike[str], folder: str | os.PathLike[str], *, version: int
) -> tuple[Path, Path, ImplicitInt8]:
    """Write the float graph and the calibration cache (for TensorRT ``version``) of the Q/DQ ONNX at
    ``onnx_path`` into ``folder`` (atomically); returns their paths and the translation."""
    import onnx

    from .sidecar import atomic_write

    try:
        implicit = implicit_int8_from_qdq(onnx.load(str(onnx_path)))
    except BuildError as exc:
        hint = "DLA on TensorRT 8.6-10.x builds int8 from densegraph's symmetric per-tensor activation Q/DQ"
        raise BuildError(exc.message, path=str(onnx_path), hint=hint) from None
    model_path, cache_path = implicit_int8_paths(onnx_path, folder)
    atomic_write(model_path, implicit.model.SerializeToString(deterministic=True))
    atomic_write(cache_path, calibration_cache(implicit.scales, version))
    return model_path, cache_path, implicit
