"""Parity: one home for every numerical comparison densegraph makes, and its one tolerance table.

Every gate compares a candidate's outputs with a reference's on the same inputs: an ONNX model in onnxruntime
against the unrewritten PyTorch eval module (fp32, fp16), an int8 model against its fp32 model, a TensorRT
engine against the ONNX model it was built from, another runtime (OpenVINO, ``onnx.reference``) against
PyTorch. The runtimes differ; the arithmetic and the bars do not, so they live here, free of any framework:
numpy arrays in, a JSON-ready record out, :class:`~densegraph.errors.BuildError` when a bar is missed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import BuildError

__all__ = [
    "TOLERANCES",
    "parity_inputs",
    "compare_outputs",
    "logits_sqnr_db",
    "check_outputs",
    "check_int8",
    "features_sqnr_db",
    "check_int8_features",
]

# The bars, by what is compared. Relative errors are to max |reference|; SQNR is over logits with each
# sample's mean removed (softmax ignores a per-sample shift, so neither signal nor noise counts one).
TOLERANCES: dict[str, float] = {
    "fp32": 1e-4,  # max |candidate - PyTorch|, absolute: ONNX (any runtime) against the eval module
    "fp16": 1e-2,  # max |candidate - reference| / max |reference|
    "int8_sqnr_db": 10.0,  # int8 logits against the fp32 model's, at least this many dB
    "int8_top1_drop": 0.05,  # with labels: int8 top-1 at most this far below fp32's
    "int8_features_sqnr_db": 15.0,  # each of a backbone's int8 feature maps against fp32's, at least (no shift removed)
    "engine_fp32": 1e-3,  # a TensorRT fp32 engine against onnxruntime: |d| <= tol + tol * |ref| elementwise
}


def parity_inputs(
    input_shape: Sequence[int], batches: Sequence[int] = (1, 3), *, seed: int = 0
) -> list[np.ndarray]:
    """Standard-normal float32 batches of ``[n, *input_shape]`` for each ``n``, the same for a given seed."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, *input_shape), dtype=np.float32) for n in batches]


def compare_outputs(got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Max abs error, max relative error (to max |ref|) and top-1 agreement of two logit arrays."""
    err = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
    scale = float(np.max(np.abs(ref)))
    agree = float(np.mean(got.argmax(axis=1) == ref.argmax(axis=1)))
    return {"max_abs_err": err, "max_rel_err": err / max(scale, 1e-12), "top1_agreement": agree}


def logits_sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``candidate`` logits against ``reference``, in dB.

    Each sample's mean is removed from both first. A silent reference (all logits equal) has no signal to
    measure against and is a user error: the comparison would read ``-inf`` or NaN.
    """
    signal = reference.astype(np.float64) - reference.mean(axis=1, keepdims=True)
    error = signal - (candidate.astype(np.float64) - candidate.mean(axis=1, keepdims=True))
    power = float(np.sum(signal**2))
    if not power > 0.0:
        raise BuildError(
            "the reference logits carry no signal (every sample's logits are equal), so int8 cannot be "
            "measured against them",
            hint="calibrate and score on real, varied inputs",
        )
    return 10 * float(np.log10(power / max(float(np.sum(error**2)), 1e-30)))


def check_outputs(
    got: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    precision: str,
    *,
    runtime: str,
    reference: str = "the PyTorch eval module, before rewrites",
    reference_name: str = "torch",
    what: str = "ONNX model",
) -> dict[str, Any]:
    """Hold ``got`` (one array per input batch) to ``precision``'s bar against ``references``.

    fp32 is an absolute bar, fp16 a relative one (:data:`TOLERANCES`); ``runtime`` (its first word) and
    ``reference_name`` name the two sides in the criterion. Returns the record the build manifest
    keeps (``precision``, ``criterion``, ``batches``, ``max_abs_err``, ``max_rel_err``, ``top1_agreement``,
    ``passed``, ``reference``, ``runtime``); raises :class:`BuildError` on a shape mismatch, a non-finite
    output or a missed bar.
    """
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"check_outputs compares fp32 and fp16 models, not {precision!r}")
    worst = {"max_abs_err": 0.0, "max_rel_err": 0.0}
    agree = total = 0
    for out, ref in zip(got, references, strict=True):
        if out.shape != ref.shape:
            raise BuildError(
                f"{runtime.split()[0]} gives logits of shape {list(out.shape)} for a batch of {len(ref)}, "
                f"the reference {list(ref.shape)}"
            )
        if not np.all(np.isfinite(out)):
            raise BuildError(
                f"the {precision} model's outputs are not finite (NaN or inf) at batch {len(ref)}",
                hint="check the weights" if precision == "fp32" else "try --precision fp32",
            )
        stats = compare_outputs(out, ref)
        worst = {k: max(v, stats[k]) for k, v in worst.items()}
        agree += round(stats["top1_agreement"] * len(ref))
        total += len(ref)
    bound = TOLERANCES[precision]
    difference = f"max |{runtime.split()[0]} - {reference_name}|"
    if precision == "fp32":
        criterion, passed = f"{difference} <= {bound:g}", worst["max_abs_err"] <= bound
    else:
        criterion = f"{difference} <= {bound:g} * max |{reference_name}|"
        passed = worst["max_rel_err"] <= bound
    result = {
        "precision": precision,
        "reference": reference,
        "runtime": runtime,
        "criterion": criterion,
        "batches": [len(ref) for ref in references],
        "max_abs_err": _round(worst["max_abs_err"]),
        "max_rel_err": _round(worst["max_rel_err"]),
        "top1_agreement": agree / max(total, 1),
        "passed": bool(passed),
    }
    if not passed:
        raise BuildError(
            f"parity check failed: the {precision} {what} differs from {reference_name} by "
            f"{worst['max_abs_err']:.3g} (relative {worst['max_rel_err']:.3g}), over the bar {criterion}",
            hint="rerun with --plain to export without the graph rewrites, and report it"
            if precision == "fp32"
            else "build --precision fp32, and report it",
        )
    return result


def check_int8(
    fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray | None = None, *, runtime: str
) -> dict[str, Any]:
    """Hold int8 logits to the fp32 model's on the same inputs (and their labels, if any); raises
    :class:`BuildError` when they miss the bar (:data:`TOLERANCES`)."""
    if not (np.all(np.isfinite(fp32)) and np.all(np.isfinite(int8))):
        which = "fp32" if not np.all(np.isfinite(fp32)) else "int8"
        raise BuildError(f"the {which} model's outputs are not finite (NaN or inf) on the scoring data")
    sqnr = logits_sqnr_db(fp32, int8)
    result: dict[str, Any] = {
        "precision": "int8",
        "reference": "the fp32 ONNX model",
        "runtime": runtime,
        "criterion": f"logits SQNR >= {TOLERANCES['int8_sqnr_db']:g} dB"
        + (f", top-1 at most {TOLERANCES['int8_top1_drop']:.0%} below fp32" if labels is not None else ""),
        "samples": len(fp32),
        "sqnr_db": round(sqnr, 1),
        "top1_agreement": round(float(np.mean(fp32.argmax(1) == int8.argmax(1))), 4),
    }
    passed = sqnr >= TOLERANCES["int8_sqnr_db"]
    if labels is not None:
        result["top1_fp32"] = round(float(np.mean(fp32.argmax(1) == labels)), 4)
        result["top1_int8"] = round(float(np.mean(int8.argmax(1) == labels)), 4)
        passed &= result["top1_int8"] >= result["top1_fp32"] - TOLERANCES["int8_top1_drop"]
    result["passed"] = bool(passed)
    if not passed:
        top1 = f", top-1 {result['top1_fp32']:.1%} -> {result['top1_int8']:.1%}" if labels is not None else ""
        raise BuildError(
            f"the int8 model is too far from fp32: logits SQNR {sqnr:.1f} dB{top1} "
            f"(bar: {result['criterion']})",
            hint="calibrate on more or more representative data (--calib-samples), or build fp16",
        )
    return result


def features_sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of a feature map ``candidate`` against ``reference``, in dB.

    Nothing is removed first: a backbone's maps feed a detector's convs, which a shift does change (unlike
    softmax over logits). A silent reference (all zeros) is a user error, as for logits.
    """
    signal = reference.astype(np.float64)
    power = float(np.sum(signal**2))
    if not power > 0.0:
        raise BuildError(
            "the reference feature map is all zeros, so int8 cannot be measured against it",
            hint="calibrate and score on real, varied inputs",
        )
    error = signal - candidate.astype(np.float64)
    return 10 * float(np.log10(power / max(float(np.sum(error**2)), 1e-30)))


def check_int8_features(
    fp32: dict[str, np.ndarray], int8: dict[str, np.ndarray], *, runtime: str
) -> dict[str, Any]:
    """Hold each named int8 feature map to the fp32 model's on the same inputs (:func:`features_sqnr_db` at
    least ``int8_features_sqnr_db``, every map); raises :class:`BuildError` naming the worst map that misses."""
    bar = TOLERANCES["int8_features_sqnr_db"]
    if list(fp32) != list(int8):
        raise BuildError(f"the int8 model's outputs {list(int8)} are not the fp32 model's {list(fp32)}")
    outputs: dict[str, dict[str, Any]] = {}
    for name, ref in fp32.items():
        got = int8[name]
        if got.shape != ref.shape:
            raise BuildError(f"int8 {name} has shape {list(got.shape)}, fp32 {list(ref.shape)}")
        if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(got))):
            which = "fp32" if not np.all(np.isfinite(ref)) else "int8"
            raise BuildError(f"the {which} model's {name} is not finite (NaN or inf) on the scoring data")
        sqnr = features_sqnr_db(ref, got)
        scale = float(np.max(np.abs(ref)))
        outputs[name] = {
            "sqnr_db": round(sqnr, 1),
            "max_rel_err": _round(float(np.max(np.abs(got.astype(np.float64) - ref))) / max(scale, 1e-12)),
        }
    worst = min(outputs, key=lambda n: outputs[n]["sqnr_db"])
    result: dict[str, Any] = {
        "precision": "int8",
        "reference": "the fp32 ONNX model",
        "runtime": runtime,
        "criterion": f"SQNR of every feature map >= {bar:g} dB",
        "samples": len(next(iter(fp32.values()))),
        "sqnr_db": outputs[worst]["sqnr_db"],  # the worst map's
        "outputs": outputs,
        "passed": all(o["sqnr_db"] >= bar for o in outputs.values()),
    }
    if not result["passed"]:
        raise BuildError(
            f"the int8 model is too far from fp32: {worst} SQNR {outputs[worst]['sqnr_db']:.1f} dB "
            f"(bar: {result['criterion']})",
            hint="calibrate on more or more representative data (--calib-samples), or build fp16",
        )
    return result


def _round(value: float) -> float:
    """Three significant digits: enough to read, and stable across runs on one machine."""
    return float(f"{value:.3g}")
