"""Hold a built engine to a reference run in onnxruntime on the CPU, and time it per batch size.

The reference is always a model onnxruntime's CPU provider runs: the ONNX itself for fp32 and Q/DQ int8 (int8
with graph optimizations off, the Q/DQ arithmetic as written), and for an fp16-typed ONNX its fp32 twin (same fp16-rounded weights, fp32 types and casts), because the CPU
provider lacks fp16 kernels for many operators. Bars (:data:`densegraph.parity.TOLERANCES`): fp32
elementwise ``tol + tol |ref|``; fp16 ``tol * max |ref|``; int8 the logits SQNR bar of the ONNX int8 path —
top-1 agreement on random inputs says little on an untrained net, whose logits are nearly tied. A backbone's
engine is held to the reference on every named feature map, each to the same bars (int8: the feature-map
SQNR bar of the ONNX int8 build).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BuildError, DensegraphError, ModelLoadError
from ...parity import TOLERANCES, features_sqnr_db, logits_sqnr_db
from ...timing import time_batches
from .options import PRECISIONS

__all__ = ["verify_engine", "bench_engine", "fp32_twin"]

_CRITERIA = {
    "fp32": "|trt - ort| <= {t:g} + {t:g} * |ort| elementwise".format(t=TOLERANCES["engine_fp32"]),
    "fp16": "max |trt - ort fp32| <= {t:g} * max |ort fp32|".format(t=TOLERANCES["fp16"]),
    "int8": f"logits SQNR >= {TOLERANCES['int8_sqnr_db']:g} dB",
}
_FEATURE_CRITERIA = {  # a backbone: the same bars per named feature map; int8 as the ONNX int8 build's gate
    **_CRITERIA,
    "int8": f"feature map SQNR >= {TOLERANCES['int8_features_sqnr_db']:g} dB",
}


def fp32_twin(model: Any) -> Any:
    """A copy of an ONNX ``ModelProto`` with every float16 initializer, tensor type, Cast target and constant
    made float32 (the values stay the fp16-rounded ones)."""
    import onnx

    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    _upcast_graph(twin.graph)
    return twin


def _upcast_tensor(proto: Any) -> None:
    import onnx
    import onnx.numpy_helper

    if proto.data_type == onnx.TensorProto.FLOAT16:
        proto.CopyFrom(
            onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(proto).astype(np.float32), proto.name)
        )


def _upcast_graph(graph: Any) -> None:
    import onnx

    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    for proto in graph.initializer:
        _upcast_tensor(proto)
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.tensor_type.elem_type == fp16:
            value.type.tensor_type.elem_type = fp32
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == fp16:
                attr.i = fp32
            elif attr.type == onnx.AttributeProto.TENSOR:
                _upcast_tensor(attr.t)
            elif attr.type == onnx.AttributeProto.GRAPH:
                _upcast_graph(attr.g)


def _reference_runner(onnx_path: Path, precision: str) -> tuple[Any, str]:
    """An onnxruntime CPU runner on the reference model (loaded), and its description."""
    import onnx

    from ...runners.onnxruntime import OnnxRuntimeRunner, import_onnxruntime

    model = onnx.load(str(onnx_path))
    what = "the ONNX"
    optimize = True
    if precision == "fp16":
        model, what = fp32_twin(model), "the fp32 twin of the fp16 ONNX"
    if precision == "int8":
        # the Q/DQ arithmetic as written, which TensorRT implements: onnxruntime's fused int8 CPU kernels
        # (QLinearConv) land 18 dB SQNR away from it on the tiny DenseNet (x86 without VNNI; docs/tensorrt.md)
        optimize = False
        what = "the Q/DQ ONNX, graph optimizations off"
    runner = OnnxRuntimeRunner(
        model.SerializeToString(), optimize=optimize, description=f"{onnx_path} ({what}, onnxruntime)"
    )
    try:
        runner.load()
    except ModelLoadError as exc:
        raise BuildError(
            f"cannot verify the engine: onnxruntime cannot run {what}: {exc.reason}",
            path=str(onnx_path),
            hint="the engine is written; rerun with --no-verify to skip the check",
        ) from None
    version = import_onnxruntime().__version__
    return runner, f"onnxruntime {version} CPUExecutionProvider on {what}"


def verify_engine(
    runner: Callable[[np.ndarray], Any],
    onnx_path: str | os.PathLike[str],
    precision: str,
    inputs: Iterable[np.ndarray],
) -> dict[str, Any]:
    """Compare the engine (``runner``: numpy batch -> logits, or a dict of named outputs) with the reference
    on ``inputs``, every output the ONNX names; a dict for the sidecar with ``passed`` and a one-line
    ``summary`` (a backbone's also ``outputs``: the same figures per named feature map)."""
    if precision not in PRECISIONS:
        raise DensegraphError(f"unknown precision {precision!r}")
    reference_runner, reference = _reference_runner(Path(onnx_path), precision)
    refs: dict[str, list[np.ndarray]] = {}
    gots: dict[str, list[np.ndarray]] = {}
    batches, sizes = [], []
    with reference_runner:
        names = reference_runner.output_names
        features = bool(reference_runner.feature_names)
        for x in inputs:
            x = np.ascontiguousarray(x, dtype=np.float32)
            ref = reference_runner.outputs(x)
            got = _named(runner(x), names if features else names[:1])
            for name in ref if features else names[:1]:
                if got[name].shape != ref[name].shape:
                    raise BuildError(
                        f"engine output {name} has shape {got[name].shape}, onnxruntime {ref[name].shape}"
                    )
                refs.setdefault(name, []).append(ref[name])
                gots.setdefault(name, []).append(got[name])
            batches.append(len(x))
            sizes.append([int(d) for d in x.shape[2:]])
    result = _verdict(precision, refs, gots, batches, reference, features=features)
    if len({tuple(s) for s in sizes}) > 1:  # a dynamic height and width: the size of each batch
        result["sizes"] = sizes
    return result


def _verdict(
    precision: str,
    refs: dict[str, list[np.ndarray]],
    gots: dict[str, list[np.ndarray]],
    batches: list[int],
    reference: str,
    *,
    features: bool,
) -> dict[str, Any]:
    """The result of one output, or of a backbone's outputs: the worst map's, with each map's."""
    if not features:
        (name,) = refs
        return _judge(precision, refs[name], gots[name], batches, reference)
    per_map = {
        name: _judge(precision, refs[name], gots[name], batches, reference, features=True) for name in refs
    }
    worst = min(per_map, key=lambda n: _margin(per_map[n]))
    result = dict(per_map[worst])
    result["summary"] = f"{result['summary']} (worst of {len(per_map)} outputs: {worst})"
    result["passed"] = all(r["passed"] for r in per_map.values())
    result["outputs"] = {
        name: {k: v for k, v in r.items() if k != "reference"} for name, r in per_map.items()
    }
    return result


def _named(got: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The engine's outputs by name (a single output may come back as the bare array)."""
    if isinstance(got, dict):
        missing = [n for n in names if n not in got]
        if missing:
            raise BuildError(f"the engine has no output {', '.join(missing)} (it has {', '.join(got)})")
        return {n: np.asarray(got[n], dtype=np.float32) for n in names}
    if len(names) != 1:
        raise BuildError(f"the engine gives one output, the ONNX names {len(names)}: {', '.join(names)}")
    return {names[0]: np.asarray(got, dtype=np.float32)}


def _margin(result: dict[str, Any]) -> float:
    """How far a result is inside its bar (negative: outside), to name the worst of several outputs."""
    if result["precision"] == "int8":
        return float(result["sqnr_db"]) - TOLERANCES["int8_features_sqnr_db"]
    return (0.0 if result["passed"] else -1.0) - float(result["max_rel_err"])


def _judge(
    precision: str,
    refs: list[np.ndarray],
    gots: list[np.ndarray],
    batches: list[int],
    reference: str,
    *,
    features: bool = False,
) -> dict[str, Any]:
    """The figures of one output against the bars; ``features``: a feature map (int8 by its own SQNR, no
    shift removed, and no top-1)."""
    ref, got = np.concatenate(refs), np.concatenate(gots)
    error = np.abs(got.astype(np.float64) - ref)
    max_abs, scale = float(error.max()), float(np.abs(ref).max())
    max_rel = max_abs / max(scale, 1e-12)
    agreement = None if features else float(np.mean(got.argmax(axis=1) == ref.argmax(axis=1)))
    finite = bool(np.all(np.isfinite(got)))
    sqnr: float | None = None
    if features:
        if precision == "int8" or float(np.abs(ref).max(initial=0.0)) > 0:
            sqnr = features_sqnr_db(ref, got)
    elif precision == "int8" or float(np.ptp(ref, axis=1).max(initial=0.0)) > 0:
        sqnr = logits_sqnr_db(ref, got)  # int8: a silent reference is a user error (BuildError)
    if precision == "fp32":
        tol = TOLERANCES["engine_fp32"]
        passed = finite and bool(np.all(error <= tol + tol * np.abs(ref)))
    elif precision == "fp16":
        passed = finite and max_abs <= TOLERANCES["fp16"] * max(scale, 1e-12)
    else:
        bar = TOLERANCES["int8_features_sqnr_db" if features else "int8_sqnr_db"]
        passed = finite and sqnr is not None and sqnr >= bar
    criterion = _FEATURE_CRITERIA[precision] if features else _CRITERIA[precision]
    sqnr_text = f"SQNR {sqnr:.1f} dB, " if sqnr is not None else ""
    agree_text = f"top-1 agreement {agreement:.1%} " if agreement is not None else ""
    summary = (
        f"{'pass' if passed else 'FAIL'} ({criterion}): max abs err {max_abs:.3g}, max rel err {max_rel:.3g}, "
        f"{sqnr_text}{agree_text}over {len(ref)} samples"
    )
    return {
        "reference": reference,
        "precision": precision,
        "criterion": criterion,
        "batches": batches,
        "samples": len(ref),
        "max_abs_err": max_abs,
        "max_rel_err": max_rel,
        "sqnr_db": round(sqnr, 1) if sqnr is not None else None,
        "top1_agreement": agreement,
        "passed": bool(passed),
        "summary": summary,
    }


def bench_engine(
    runner: Any, batch_sizes: Sequence[int], *, iters: int = 20, warmup: int = 3
) -> list[dict[str, Any]]:
    """Latency and throughput per batch size. Inside the engine's batch range the input is staged on the
    device once (engine time, not transfers); outside it, each call includes the copies and the splitting."""
    lo, hi = runner.batch_range

    def run_for(batch: int) -> Callable[[], Any]:
        if lo <= batch <= hi:
            return runner.timed_call(batch)
        x = np.random.default_rng(0).standard_normal((batch, *runner.input_chw)).astype(np.float32)
        return lambda: runner(x)

    rows = time_batches(run_for, batch_sizes, iters=iters, warmup=warmup)
    for row in rows:
        row["staged"] = lo <= row["batch"] <= hi
    return rows
