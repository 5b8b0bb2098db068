"""INT8 models from the fp32 ONNX, calibrated with ``onnxruntime.quantization``.

Both forms are QuantizeLinear/DequantizeLinear (QDQ) graphs written by ``quantize_static`` from ranges that
onnxruntime's own calibrator (``create_calibrator``) measures on the ``calib`` images; both have symmetric
per-channel int8 weights and one shared scale per block buffer (see below).

``qdq`` (for TensorRT)
    Signed int8 activations with zero point 0 (``ActivationSymmetric``); Q/DQ on the inputs, weights and
    outputs of every Conv, and nothing else; float bias. TensorRT 10/11 builds INT8 from exactly this (it
    fuses BN-ReLU into the Q before each conv and moves Q/DQ across Concat and pooling itself). onnxruntime's
    x86 kernels run it slowly (S8S8 and float ops between the convs): it is not the CPU form.

``cpu`` (for onnxruntime on x86)
    Shaped so that onnxruntime runs int8 from the first conv to the classifier, as QLinearConv /
    QLinearConcat / NhwcMaxPool chains in NHWC with no float op left between them:

    - every BatchNormalization no conv absorbed (the pre-activation BN of each dense layer, the transitions'
      and the head's) is a depthwise 1x1 conv (the graph pass :func:`densegraph.passes.bn_to_depthwise`,
      applied when the fp32 model is emitted with :data:`densegraph.passes.INT8_CPU_PASSES`): BN-ReLU then
      runs as one uint8 -> uint8 conv, its ReLU being the output range (zero point 0);
    - every AveragePool is a depthwise conv (:func:`densegraph.passes.avgpool_to_depthwise`): onnxruntime's
      QLinearAveragePool took ~10x longer than the uint8 depthwise conv in densenet121 on two cores;
    - activations uint8, weights int8 (U8S8, the pair MLAS runs fastest on x86) with ``reduce_range``
      (7-bit weights): x86 without VNNI adds pairs of u8*s8 products in int16, which saturates with
      full-range weights (digits lost up to 1.1 points of top-1 without it).

One scale per block buffer: every tensor a Concat joins (a block's input, each layer's new maps, each
concatenation) is given the union of their calibrated ranges (``TensorQuantOverrides``), so concatenation is
a copy of int8 values that needs no requantization (in onnxruntime and in TensorRT). The one exception
is block 1's input in the ``cpu`` form: it leaves the stem's ReLU and max-pool at the stem's zero-point-0 scale
(a range that would cost a float ReLU to widen), and QLinearConcat requantizes that one piece.

Bias correction (both forms, on by default): each conv's and the classifier's bias is moved by the mean shift
that rounding its weights to int8 puts on its output, measured on the calibration images
(:mod:`densegraph.export.bias_correction`). On densenet121 (seeded weights, 16 random calibration images, the
``cpu`` form) it took the logits' SQNR from 26.7 to 39.6 dB.

Calibration is MinMax by default: the block ranges are unions anyway, and on digits Percentile and Entropy
gave the same top-1 while taking longer. ``percentile`` and ``entropy`` can be chosen.

Calibration memory is bounded by ``batch_size`` (the build's ``--calib-batch``), not by the number of samples:
the calibrator's ``collect_data`` is called once per batch, and onnxruntime's calibrators (``calibrate.py`` as
of 1.32) keep only this between calls:

- MinMax adds a ReduceMin/ReduceMax pair after every calibrated tensor and outputs only those scalars, so a
  call holds the inference session's working set for one batch (its intermediate maps, in the CPU arena,
  which keeps its peak) and merges the scalars into the running ranges before it returns (densenet121 at
  224x224: the int8 build's peak RSS 3.3 GiB at batch 8, 0.93 GiB at batch 1). A range is the min/max over
  all samples whatever the batching: batch sizes give the same ranges, up to the last float bits of convs
  that onnxruntime rounds differently per batch size.
- Percentile and Entropy output every calibrated tensor whole: a call holds all of them for each batch it
  reads (densenet121: ~0.5 GB per batch of 8), folds them into one histogram per tensor (2048 or 128 bins) and
  drops them; only the histograms stay. Their ranges may move with the batching a little (a histogram's bins
  widen as later batches exceed its range).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import write_atomic
from ..errors import DataError
from .bias_correction import correct_biases, with_biases

__all__ = ["FORMS", "CALIBRATION_METHODS", "quantize_onnx", "block_buffer_groups"]

FORMS = ("qdq", "cpu")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
_CALIB_BATCH = 8


def quantize_onnx(
    fp32_model_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calib: np.ndarray,
    *,
    form: str = "qdq",
    per_channel: bool = True,
    calibrate_method: str = "minmax",
    reduce_range: bool | None = None,
    batch_size: int = _CALIB_BATCH,
    exclude: Sequence[str] = (),
    bias_correction: bool = True,
) -> dict[str, Any]:
    """Quantize the fp32 ONNX at ``fp32_model_path`` to int8 and write it (atomically) to ``out_path``.

    ``calib``: float32 ``[N, C, H, W]`` inputs, preprocessed as the model expects. ``form``: ``"qdq"`` (the
    TensorRT form) or ``"cpu"`` (the fastest form for onnxruntime on x86); see the module docstring.
    ``reduce_range`` defaults to True for ``cpu`` (7-bit weights, no int16 saturation without VNNI) and False
    for ``qdq``. ``batch_size``: samples the calibrator runs at once; peak memory grows with it (see the module
    docstring), MinMax ranges do not depend on it. ``exclude``: node names (after the passes) to leave in
    float. ``bias_correction``: move each layer's bias by the mean shift its int8 weights cause
    (:mod:`densegraph.export.bias_correction`). Returns what was done: the form, types, calibration, bias
    correction, rewrites and the op counts.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    _check_arguments(form, calibrate_method, batch_size)
    started = time.perf_counter()
    model = onnx.load(os.fspath(fp32_model_path))
    calib = _check_calibration(calib, model)
    reduce_range = (form == "cpu") if reduce_range is None else bool(reduce_range)
    if form == "cpu":
        _check_cpu_form(model)
    method = _calibration_method(calibrate_method)
    if bias_correction:
        with_biases(model)  # a bias on every conv for the correction to move (zero: the same function)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="densegraph-quant-") as scratch:
        work = Path(scratch)
        onnx.save(model, work / "passes.onnx")
        # onnxruntime's pre-processing, shape inference only: the graph is already what the quantizer should
        # see, and onnxruntime optimizes the int8 model again when it loads it
        shaped = work / "fp32.onnx"
        quant_pre_process(work / "passes.onnx", shaped, skip_optimization=True)
        ranges = _calibrate(shaped, work, calib, method, batch_size, symmetric=form == "qdq")
        groups = block_buffer_groups(model)
        quantized = _quantize_static(
            shaped,
            work,
            ranges=ranges,
            groups=groups,
            form=form,
            reader=_Reader(calib, _input_name(model), batch_size),
            method=method,
            per_channel=per_channel,
            reduce_range=reduce_range,
            exclude=exclude,
        )
        corrected = (
            correct_biases(quantized, model, calib, batch_size=batch_size) if bias_correction else None
        )
        onnx.checker.check_model(quantized)
        write_atomic(out, lambda f: f.write(quantized.SerializeToString()))  # whole or not at all

    return _summary(
        quantized,
        form=form,
        per_channel=per_channel,
        reduce_range=reduce_range,
        calibrate_method=calibrate_method,
        samples=int(calib.shape[0]),
        batch_size=batch_size,
        groups=len(groups),
        bias_correction=corrected,
        seconds=round(time.perf_counter() - started, 2),
    )


def _check_arguments(form: str, calibrate_method: str, batch_size: int) -> None:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if calibrate_method not in CALIBRATION_METHODS:
        raise ValueError(f"calibrate_method must be one of {CALIBRATION_METHODS}, got {calibrate_method!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def _summary(
    quantized: Any,
    *,
    form: str,
    per_channel: bool,
    reduce_range: bool,
    calibrate_method: str,
    samples: int,
    batch_size: int,
    groups: int,
    bias_correction: dict[str, Any] | None,
    seconds: float,
) -> dict[str, Any]:
    """What :func:`quantize_onnx` did: the form, types, calibration, shared scales and the op counts."""
    ops = Counter(node.op_type for node in quantized.graph.node)
    float_ops = {op: n for op, n in ops.items() if op not in ("QuantizeLinear", "DequantizeLinear")}
    return {
        "form": form,
        "format": "QDQ",
        "activation_type": "uint8" if form == "cpu" else "int8",
        "activation_symmetric": form == "qdq",
        "weight_type": "int8",
        "weight_symmetric": True,
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "op_types_quantized": _op_types(form) or "all with int8 kernels",
        "calibration": {
            "method": calibrate_method,
            "tool": "onnxruntime.quantization.calibrate.create_calibrator",
            "samples": samples,
            "batch_size": batch_size,
        },
        "shared_scale_groups": groups,
        "bias_correction": bias_correction or False,
        "quantized_nodes": _quantized_nodes(quantized),
        "ops": dict(sorted(float_ops.items())),
        "qdq_nodes": {"QuantizeLinear": ops["QuantizeLinear"], "DequantizeLinear": ops["DequantizeLinear"]},
        "seconds": seconds,
    }


def _check_cpu_form(model: Any) -> None:
    """The cpu form quantizes what the INT8_CPU_PASSES made of BN-ReLU and pooling: refuse a model without."""
    left = sorted({n.op_type for n in model.graph.node} & {"BatchNormalization", "AveragePool"})
    if left:
        raise ValueError(
            f"the cpu form quantizes BN-ReLU and pooling as int8 convs, but the model has {left}: "
            "emit it with densegraph.passes.INT8_CPU_PASSES"
        )


def _op_types(form: str) -> list[str] | None:
    """The op types ``form`` quantizes (None: everything onnxruntime has an int8 kernel for)."""
    return None if form == "cpu" else ["Conv"]


def _quantize_static(
    shaped: Path,
    work: Path,
    *,
    ranges: Any,
    groups: list[list[str]],
    form: str,
    reader: _Reader,
    method: Any,
    per_channel: bool,
    reduce_range: bool,
    exclude: Sequence[str],
) -> Any:
    """onnxruntime's ``quantize_static`` on the shape-inferred model with the calibrated ``ranges`` (a dense
    block's buffer on one shared scale); the int8 model, loaded."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    extra: dict[str, Any] = {
        "MinimumRealRange": 1e-4,
        "TensorQuantOverrides": _shared_ranges(groups, ranges),
    }
    if form == "cpu":
        activation_type = QuantType.QUInt8
    else:
        extra.update(ActivationSymmetric=True, WeightSymmetric=True, QuantizeBias=False)
        activation_type = QuantType.QInt8
    kwargs: dict[str, Any] = {}
    calibration: Any = None
    if _supports_calibration_cache():
        from onnxruntime.quantization.calibrate import save_tensors_data

        save_tensors_data(ranges, work / "ranges.json")
        kwargs["calibration_cache_path"] = work / "ranges.json"
    else:  # older onnxruntime: let quantize_static calibrate again (the overrides still apply)
        calibration = reader
    partial = work / "int8.onnx"
    quantize_static(
        shaped,
        partial,
        calibration,
        quant_format=QuantFormat.QDQ,
        activation_type=activation_type,
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        reduce_range=reduce_range,
        calibrate_method=method,
        op_types_to_quantize=_op_types(form),
        nodes_to_exclude=list(exclude),
        extra_options=extra,
        **kwargs,
    )
    return onnx.load(partial)


def block_buffer_groups(model: Any) -> list[list[str]]:
    """Tensors that must share one scale: each set joined by Concat nodes (a dense block's buffer), sorted."""
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        parent.setdefault(name, name)
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for node in model.graph.node:
        if node.op_type == "Concat":
            root = find(node.output[0])
            for name in node.input:
                parent[find(name)] = root
    groups: dict[str, list[str]] = {}
    for name in parent:
        groups.setdefault(find(name), []).append(name)
    return sorted(sorted(g) for g in groups.values())


# ---------------------------------------------------------------------------------------------------------
# calibration


class _Reader:
    """A ``CalibrationDataReader`` over an array, in batches (duck-typed: onnxruntime only calls these)."""

    def __init__(self, data: np.ndarray, input_name: str, batch_size: int) -> None:
        self.data, self.input_name, self.batch_size = data, input_name, batch_size
        self.start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= len(self.data):
            return None
        batch = self.data[self.start : self.start + self.batch_size]
        self.start += self.batch_size
        return {self.input_name: batch}

    def rewind(self) -> None:
        self.start = 0

    def __len__(self) -> int:
        return len(self.data)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.data = self.data[start_index:end_index]
        self.start = 0


def _calibration_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[name]


def _calibrate(
    model_path: Path, scratch: Path, calib: np.ndarray, method: Any, batch_size: int, *, symmetric: bool
) -> Any:
    """Per-tensor ranges from onnxruntime's calibrator (the same one ``quantize_static`` would run)."""
    from onnxruntime.quantization.calibrate import create_calibrator

    calibrator = create_calibrator(
        model_path,
        [],
        augmented_model_path=(scratch / "augmented.onnx").as_posix(),
        calibrate_method=method,
        extra_options={"symmetric": symmetric},
    )
    name = _input_name_of(model_path)
    # the histogram calibrators print their progress
    with contextlib.redirect_stdout(io.StringIO()):
        # One batch per call: the histogram calibrators keep every intermediate tensor of a call in memory
        # and fold it into their histograms only at the end of the call (see the module docstring).
        for start in range(0, len(calib), batch_size):
            calibrator.collect_data(_Reader(calib[start : start + batch_size], name, batch_size))
        return calibrator.compute_data()


def _shared_ranges(groups: list[list[str]], ranges: Any) -> dict[str, list[dict[str, Any]]]:
    """``TensorQuantOverrides`` giving every tensor of a group the union of the group's calibrated ranges."""
    overrides: dict[str, list[dict[str, Any]]] = {}
    for group in groups:
        known = [ranges[name].range_value for name in group if name in ranges]
        if not known:
            continue
        low = np.float32(min(float(np.min(lo)) for lo, _ in known))
        high = np.float32(max(float(np.max(hi)) for _, hi in known))
        for name in group:
            overrides[name] = [{"rmin": low, "rmax": high}]
    return overrides


def _supports_calibration_cache() -> bool:
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _check_calibration(calib: Any, model: Any) -> np.ndarray:
    x = np.asarray(calib)
    shape = [
        d.dim_value if d.HasField("dim_value") else None
        for d in model.graph.input[0].type.tensor_type.shape.dim
    ]
    if x.ndim != len(shape) or x.shape[0] == 0:
        raise DataError(
            f"calibration data must be a non-empty [N, {', '.join(str(d) for d in shape[1:])}] array, "
            f"got shape {list(x.shape)}",
            hint="pass preprocessed images from the training data (--calib)",
        )
    if any(d is not None and d != s for d, s in zip(shape[1:], x.shape[1:], strict=True)):
        raise DataError(
            f"calibration images are {list(x.shape[1:])}, the model takes {shape[1:]}",
            hint="preprocess the calibration data for the model's input size",
        )
    if not np.all(np.isfinite(x)):
        raise DataError("calibration data holds NaN or inf values")
    return np.ascontiguousarray(x, dtype=np.float32)


def _input_name(model: Any) -> str:
    return model.graph.input[0].name


def _input_name_of(path: Path) -> str:
    import onnx

    return _input_name(onnx.load(path.as_posix(), load_external_data=False))


def _quantized_nodes(model: Any) -> dict[str, int]:
    """Float ops whose inputs are all dequantized or constant: the ones onnxruntime/TensorRT run in int8."""
    produced_by = {out: node.op_type for node in model.graph.node for out in node.output}
    inits = {t.name for t in model.graph.initializer}
    counts: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        data_inputs = [name for name in node.input if name and name not in inits]
        if data_inputs and all(produced_by.get(name) == "DequantizeLinear" for name in data_inputs):
            counts[node.op_type] += 1
    return dict(sorted(counts.items()))
