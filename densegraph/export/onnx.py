"""ONNX models of the connection graph: checked, reproducible ``ModelProto`` s and their parity checks.

The model is emitted straight from the graph (:mod:`densegraph.export.emit`: each node's op list after the
passes of :mod:`densegraph.passes`, plus a state_dict); nothing is traced. :func:`onnx_from_module` emits a
lowered module (a :class:`~densegraph.lower.torch.GraphModule` as it is, a frozen one with its rewrites). The
model has one input ``images`` ``[batch, C, H, W]`` and one output ``logits`` ``[batch, classes]`` (``batch`` a
named dynamic axis), names from the graph (torchvision's module paths), shapes inferred and
``onnx.checker.check_model(full_check=True)`` passed. The same graph and tensors give the same bytes.

:func:`fp16_from_onnx` makes the fp16 model (float16 weights and compute, float32 ``images``/``logits``) with
onnxconverter-common from a model emitted with :data:`densegraph.passes.FP16_PASSES` (every BatchNormalization
a depthwise conv whose weights were computed in float64: cast as they are, large running variances would be
clamped to fp16's range). :func:`verify_outputs` runs a model in onnxruntime on the CPU and compares it with
reference outputs, :func:`verify_int8` holds int8 logits to fp32 ones: the parity gates of ``densegraph build``.

torch, onnx and onnxruntime are imported inside the functions that need them.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BuildError
from ..parity import (
    TOLERANCES,
    check_int8,
    check_int8_features,
    check_outputs,
    compare_outputs,
    parity_inputs,
)
from ..runners.onnxruntime import best_providers, import_onnxruntime

if TYPE_CHECKING:
    import onnx
    import onnxruntime
    import torch

    from ..runners.base import BaseRunner
    from ..runners.onnxruntime import OnnxRuntimeRunner

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "flat_outputs",
    "BATCH_AXIS",
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "MAX_OPSET",
    "TOLERANCES",
    "METADATA_PREFIX",
    "check_opset",
    "check_size",
    "onnx_from_module",
    "set_metadata",
    "check_onnx",
    "stamp",
    "save_onnx",
    "fp16_from_onnx",
    "io_signature",
    "op_counts",
    "ort_session",
    "best_providers",
    "run_onnx",
    "parity_inputs",
    "compare_outputs",
    "verify_outputs",
    "verify_int8",
    "verify_int8_features",
]

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
DEFAULT_OPSET = 19  # parsed by TensorRT 10 and 11 alike
# 13: the first opset with per-channel QuantizeLinear/DequantizeLinear (the int8 Q/DQ form TensorRT needs);
# 21: the last our ops are unchanged in.
MIN_OPSET = 13
MAX_OPSET = 21
METADATA_PREFIX = "densegraph."  # metadata_props keys densegraph writes (see densegraph.describe)
# The parity gate: fp32 max |ort - torch| <= 1e-4; fp16 max |ort - torch| <= 1e-2 * max |torch|; int8 against
# the fp32 model: logits SQNR >= 10 dB (each sample's mean logit removed) and, with labels, top-1 at most 5
# points lower. Top-1 agreement is reported but not gated: an untrained model's logits are near ties that int8
# noise flips (an untrained digits model: 83% agreement at 21 dB; the trained one: 99.4% at 24 dB).
_PROTOBUF_LIMIT = 2**31 - 2**24  # a single-file ModelProto must stay under 2 GiB; keep room for the graph


def check_opset(opset: int) -> None:
    """Raise :class:`BuildError` unless ``opset`` is one we export and TensorRT parses."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise BuildError(
            f"unsupported ONNX opset {opset}: densegraph exports opsets {MIN_OPSET}..{MAX_OPSET}",
            hint=f"use --opset {DEFAULT_OPSET} (the default; TensorRT 10 and 11 parse it)",
        )


# ---------------------------------------------------------------------------------------------------------
# export


def onnx_from_module(
    module: torch.nn.Module,
    *,
    opset: int = DEFAULT_OPSET,
    name: str | None = None,
    doc: str = "",
    metadata: dict[str, str] | None = None,
    check: bool = True,
) -> onnx.ModelProto:
    """Emit the ONNX model of a module lowered from a graph: a :class:`~densegraph.lower.torch.GraphModule`
    as it is (no rewrite), a frozen module with its rewrites. ``check=False`` leaves :func:`check_onnx` (shape
    inference and the full checker) to the caller. Write the bytes with :func:`save_onnx`."""
    from .emit import onnx_from_graph, onnx_from_ops

    check_opset(opset)
    graph = getattr(module, "graph", None)
    if graph is None:
        raise TypeError(f"onnx_from_module needs a module lowered from a graph, got {type(module).__name__}")
    state = module.state_dict()
    check_size(sum(t.numel() * t.element_size() for t in state.values()))
    title = name or graph.graph["name"]
    node_ops = getattr(module, "node_ops", None)
    if callable(node_ops):  # frozen: its ops are already rewritten
        model = onnx_from_ops(graph, node_ops(), opset=opset, name=title, doc=doc, metadata=metadata)
    else:
        model, _ = onnx_from_graph(graph, state, opset=opset, name=title, doc=doc, metadata=metadata)
    return check_onnx(model) if check else model


def check_size(weight_bytes: int) -> None:
    """Raise :class:`BuildError` when the weights would not fit one ONNX file (protobuf's 2 GiB)."""
    if weight_bytes > _PROTOBUF_LIMIT:
        raise BuildError(
            f"the weights take {weight_bytes / 2**30:.1f} GiB; a single-file ONNX model must stay under 2 GiB",
            hint="choose a smaller spec",
        )


def stamp(model: onnx.ModelProto, name: str, doc: str) -> None:
    """Set who made the model (densegraph), its name and doc string; nothing that varies between runs."""
    from .. import __version__

    model.producer_name = "densegraph"
    model.producer_version = __version__
    model.doc_string = doc
    model.graph.name = name
    model.graph.doc_string = ""
    ours = [p for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)]  # a quantizer's go
    del model.metadata_props[:]
    model.metadata_props.extend(ours)


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Set ``metadata_props`` entries (replacing those of the same key), kept sorted by key."""
    props = {p.key: p.value for p in model.metadata_props}
    props.update(metadata)
    del model.metadata_props[:]
    for key in sorted(props):
        model.metadata_props.add(key=key, value=props[key])


def check_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    """Infer shapes (strictly) and run the full ONNX checker; returns the model with its shapes."""
    import onnx

    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        # full_check=True would only repeat the strict shape inference just done (a third of the check's time).
        onnx.checker.check_model(model, full_check=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BuildError(
            f"the exported model fails the ONNX checker: {first}", hint="rerun with --debug"
        ) from exc
    return model


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike[str]) -> bytes:
    """Write ``model`` deterministically to ``path``; returns the bytes written."""
    data = model.SerializeToString(deterministic=True)
    Path(path).write_bytes(data)
    return data


# ---------------------------------------------------------------------------------------------------------
# fp16


def fp16_from_onnx(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """fp16 weights and compute, float32 ``images``/``logits``, from a model emitted with
    :data:`densegraph.passes.FP16_PASSES`; returns the model and converter warnings."""
    from onnxconverter_common import float16

    if any(node.op_type == "BatchNormalization" for node in model.graph.node):
        raise ValueError(
            "fp16_from_onnx needs a model without BatchNormalization (emit it with densegraph.passes.FP16_PASSES)"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = float16.convert_float_to_float16(model, keep_io_types=True)
    notes = sorted({str(w.message).strip() for w in caught if not issubclass(w.category, DeprecationWarning)})
    return check_onnx(model), notes


# ---------------------------------------------------------------------------------------------------------
# describing a model


def io_signature(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """Names, shapes (``"batch"`` for the dynamic axis) and dtypes of the graph inputs and outputs."""
    import onnx

    def describe(value: Any) -> dict[str, Any]:
        t = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        return {"name": value.name, "shape": shape, "dtype": dtype}

    initializers = {t.name for t in model.graph.initializer}
    return {
        "inputs": [describe(v) for v in model.graph.input if v.name not in initializers],
        "outputs": [describe(v) for v in model.graph.output],
    }


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the graph has (subgraphs included: a batch-tiled model's scan body),
    sorted by name."""
    import onnx

    counts: Counter[str] = Counter()
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            counts[node.op_type] += 1
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)
    return dict(sorted(counts.items()))


# ---------------------------------------------------------------------------------------------------------
# onnxruntime


def ort_session(
    model: str | os.PathLike[str] | bytes, providers: Sequence[str] | None = None
) -> onnxruntime.InferenceSession:
    """An onnxruntime session on ``model`` (a path or serialized bytes); the CPU unless ``providers`` says."""
    ort = import_onnxruntime()

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no provider chatter on the terminal
    source = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(source, options, providers=list(providers or ["CPUExecutionProvider"]))


def flat_outputs(outputs: Sequence[Any]) -> np.ndarray:
    """One output as it is; several (a features head's) flattened per sample and concatenated, in order, so that
    one comparison covers every output."""
    if len(outputs) == 1:
        return np.asarray(outputs[0])
    return np.concatenate([np.asarray(o).reshape(len(o), -1) for o in outputs], axis=1)


def run_onnx(session: onnxruntime.InferenceSession, x: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """The output of ``session`` on ``x`` (several: see :func:`flat_outputs`), ``batch_size`` samples at a time."""
    name = session.get_inputs()[0].name
    x = np.ascontiguousarray(x, dtype=np.float32)
    chunks = [
        flat_outputs(session.run(None, {name: x[i : i + batch_size]})) for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(chunks).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------------
# parity (the arithmetic and the bars live in densegraph.parity; this runs the ONNX side)


def verify_outputs(
    model: str | os.PathLike[str] | bytes | OnnxRuntimeRunner,
    inputs: Sequence[np.ndarray],
    references: Sequence[np.ndarray] | Future[list[np.ndarray]],
    precision: str,
    *,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run ``model`` (a path, bytes or an :class:`~densegraph.runners.OnnxRuntimeRunner`, loaded or not) in
    onnxruntime on the CPU on ``inputs`` and hold it to the ``precision``'s bar against ``references``
    (:func:`densegraph.parity.check_outputs`); raises :class:`BuildError` when it misses (fp32: abs error,
    fp16: relative error). ``references`` may be a future, waited for once onnxruntime has run; ``threads``:
    onnxruntime's intra-op threads (None: its default)."""
    from ..runners.onnxruntime import OnnxRuntimeRunner

    if isinstance(model, OnnxRuntimeRunner):  # the caller's runner: loaded here if need be, released by them
        got = _run_every_output(model.load(), inputs)
    else:
        with OnnxRuntimeRunner(model, threads=threads) as runner:
            got = _run_every_output(runner, inputs)
    if isinstance(references, Future):
        references = references.result()
    return check_outputs(got, references, precision, runtime=_runtime_name())


def _run_every_output(runner: BaseRunner, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The logits, or a backbone's named maps flattened in order (:func:`flat_outputs`), per input batch."""
    if runner.feature_names:
        return [flat_outputs(list(runner.outputs(x).values())) for x in inputs]
    return [runner(x) for x in inputs]


def verify_int8(fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """:func:`densegraph.parity.check_int8` of logits onnxruntime computed."""
    return check_int8(fp32, int8, labels, runtime=_runtime_name())


def verify_int8_features(fp32: dict[str, np.ndarray], int8: dict[str, np.ndarray]) -> dict[str, Any]:
    """:func:`densegraph.parity.check_int8_features` of feature maps onnxruntime computed."""
    return check_int8_features(fp32, int8, runtime=_runtime_name())


def _runtime_name() -> str:
    ort = import_onnxruntime()

    return f"onnxruntime {ort.__version__} CPUExecutionProvider"
