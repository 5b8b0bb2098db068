"""The int8 model: the calibration data (loaded before any export, so bad data fails fast), quantization, and
its gate against the fp32 model (and the labels, where the data has them)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import load_data
from ..errors import BuildError, Loc
from ..export.onnx import check_onnx, save_onnx, set_metadata, stamp, verify_int8, verify_int8_features
from ..runners.onnxruntime import OnnxRuntimeRunner
from .options import BuildOptions

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["INT8_EVAL_SAMPLES", "calibration_data", "int8_model", "int8_at_sizes"]

INT8_EVAL_SAMPLES = 1000  # labelled validation images scored for the int8 report (at most)


def calibration_data(options: BuildOptions, graph: nx.DiGraph) -> Any:
    """The int8 calibration set (the train split), loaded before any export so that bad data fails fast."""
    shape = tuple(graph.graph["input_shape"])
    assert options.calib is not None  # checked with the options
    calib = load_data(
        options.calib,
        shape,
        split="train",
        max_samples=options.calib_samples,
        preprocess=graph.graph["preprocess"],
    )
    if not np.any(calib.x):
        raise BuildError(
            f"the calibration data is all zeros ({len(calib)} samples): int8 ranges cannot be measured on it",
            loc=Loc(str(options.calib)),
            hint="calibrate on real images, preprocessed as the model expects",
        )
    return calib


def int8_model(
    fp32: Any,
    fp32_path: Path,
    path: Path,
    calib: Any,
    options: BuildOptions,
    metadata: dict[str, str],
) -> tuple[Any, dict, dict]:
    """Quantize with the calibration data; score int8 against fp32 (and the labels, when there are some)."""
    import onnx

    from ..export.quantize import quantize_onnx

    # TensorRT builds int8 only from symmetric Q/DQ around its convs; onnxruntime's CPU is fastest on the
    # "cpu" form (uint8 activations, int8 end to end). Both stay available through quantize_onnx.
    form = "qdq" if options.target == "tensorrt" else "cpu"
    with _root_logger_silenced():
        done = quantize_onnx(
            fp32_path,
            path,
            calib.x,
            form=form,
            batch_size=options.calib_batch,
            bias_correction=options.bias_correction,
        )
    model = onnx.load(os.fspath(path))
    _keep_symbolic_dims(fp32, model)
    stamp(model, fp32.graph.name, fp32.doc_string)  # the quantizer names itself the producer
    set_metadata(model, metadata)
    model = check_onnx(model)
    save_onnx(model, path)
    assert options.calib is not None  # checked with the options
    labelled = calib.y.size > 0
    shape = tuple(calib.x.shape[1:])
    scored = (
        load_data(
            options.calib, shape, split="val", max_samples=INT8_EVAL_SAMPLES, preprocess=calib.preprocess
        )
        if labelled
        else calib
    )
    _check_outputs_kept(fp32, model)
    fp32_out, int8_out = (_onnx_outputs(p, scored.x) for p in (fp32_path, path))
    if "densegraph.outputs" in metadata:  # a backbone: every named feature map to the bar, no classes
        parity = verify_int8_features(fp32_out, int8_out)
    else:
        parity = verify_int8(fp32_out["logits"], int8_out["logits"], scored.y if labelled else None)
    parity["data"] = f"{options.calib} {'val split' if labelled else '(the calibration samples)'}"
    calibration: dict[str, Any] = {
        "source": str(options.calib),
        "split": "train" if labelled else None,
        **{key: value for key, value in done.items() if key != "seconds"},  # the rest is deterministic
    }
    return model, calibration, parity


def _onnx_outputs(path: Path, x: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """The model's named outputs (logits, or a backbone's maps) on ``x`` in onnxruntime (CPU), ``batch_size``
    samples at a time."""
    with OnnxRuntimeRunner(path) as runner:
        pieces = [runner.outputs(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return {name: np.concatenate([p[name] for p in pieces]) for name in pieces[0]}


def _keep_symbolic_dims(fp32: Any, int8: Any) -> None:
    """Give the int8 model's inputs and outputs the fp32 model's symbolic dimension names where the quantizer's
    shape inference renamed them (a dynamic input's ``height`` -> ``floor(height/2)`` on a feature map); a
    fixed dimension, a rank or a type that differs is left for :func:`_check_outputs_kept` to refuse."""
    for before, after in ((fp32.graph.input, int8.graph.input), (fp32.graph.output, int8.graph.output)):
        declared = {v.name: v.type.tensor_type for v in before}
        for value in after:
            want = declared.get(value.name)
            got = value.type.tensor_type
            if want is None or want.elem_type != got.elem_type or len(want.shape.dim) != len(got.shape.dim):
                continue
            for d_want, d_got in zip(want.shape.dim, got.shape.dim, strict=True):
                if d_want.HasField("dim_param") and not d_got.HasField("dim_value"):
                    d_got.dim_param = d_want.dim_param


def _check_outputs_kept(fp32: Any, int8: Any) -> None:
    """The int8 model gives what the fp32 one does: the same named float32 outputs, in order (a quantizer
    that renamed or quantized a graph output would break every caller that reads them by name)."""
    signature = [
        (
            o.name,
            o.type.tensor_type.elem_type,
            [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim],
        )
        for o in fp32.graph.output
    ]
    got = [
        (
            o.name,
            o.type.tensor_type.elem_type,
            [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim],
        )
        for o in int8.graph.output
    ]
    if got != signature:
        raise RuntimeError(f"quantizing changed the model's outputs: {signature} -> {got} (a densegraph bug)")


def int8_at_sizes(
    manifest: dict[str, Any],
    fp32_path: Path,
    path: Path,
    calib: Any,
    options: BuildOptions,
    graph: nx.DiGraph,
) -> None:
    """A dynamic model's int8 gate at its ``min`` and ``max`` sizes: the calibration source preprocessed to
    each size (the shorter-side resize scaled with the crop), int8 against fp32 there. The scales were
    calibrated at the ``opt`` size (``manifest["calibration"]["size"]``), where :func:`int8_model` scores
    it; the results go to ``manifest["parity"]["int8"]["sizes"]``, keyed ``HxW``. A fixed size: nothing."""
    size_range = graph.graph.get("input_range")
    if not size_range:
        return
    manifest["calibration"]["size"] = list(size_range["opt"])
    c, opt = int(graph.graph["input_shape"][0]), tuple(size_range["opt"])
    labelled = calib.y.size > 0
    out: dict[str, Any] = {}
    for key in ("min", "max"):
        h, w = (int(v) for v in size_range[key])
        if (h, w) == opt or f"{h}x{w}" in out:
            continue
        if str(options.calib).endswith(".npy"):
            out[f"{h}x{w}"] = "not checked: a .npy calibration set holds images of one size"
            continue
        preprocess = dict(calib.preprocess)
        if preprocess.get("resize") is not None:
            preprocess["resize"] = max(min(h, w), round(preprocess["resize"] * min(h, w) / min(opt)))
        preprocess["crop"] = [h, w]
        assert options.calib is not None  # checked with the options
        scored = load_data(
            options.calib,
            (c, h, w),
            split="val" if labelled else "train",
            max_samples=INT8_EVAL_SAMPLES if labelled else options.calib_samples,
            preprocess=preprocess,
        )
        fp32_out, int8_out = (_onnx_outputs(p, scored.x) for p in (fp32_path, path))
        if graph.graph.get("outputs"):  # a backbone: every named feature map to the bar
            out[f"{h}x{w}"] = verify_int8_features(fp32_out, int8_out)
        else:
            labels = scored.y if labelled else None
            out[f"{h}x{w}"] = verify_int8(fp32_out["logits"], int8_out["logits"], labels)
    manifest["parity"]["int8"]["sizes"] = out


@contextmanager
def _root_logger_silenced() -> Iterator[None]:
    """onnxruntime.quantization warns on the root logger ("consider pre-processing"); keep stderr to one line.

    A handler on the root logger stops ``logging.warning`` from installing its stderr default; the level drops
    the records.
    """
    root = logging.getLogger()
    handler, level = logging.NullHandler(), root.level
    root.addHandler(handler)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
        root.removeHandler(handler)
