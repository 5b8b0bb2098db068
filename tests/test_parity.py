"""densegraph.parity: the one tolerance table and the arithmetic every gate shares."""

from __future__ import annotations

import numpy as np
import pytest

from densegraph.errors import BuildError
from densegraph.export import onnx as onnx_export
from densegraph.parity import (
    TOLERANCES,
    check_int8,
    check_int8_features,
    check_outputs,
    compare_outputs,
    features_sqnr_db,
    logits_sqnr_db,
    parity_inputs,
)


def test_one_table_serves_every_backend() -> None:
    assert onnx_export.TOLERANCES is TOLERANCES  # the ONNX gate reads the same dict, not a copy
    assert set(TOLERANCES) >= {"fp32", "fp16", "int8_sqnr_db", "int8_top1_drop", "engine_fp32"}


def test_parity_inputs_are_seeded_and_shaped() -> None:
    a, b = parity_inputs((3, 8, 8), (1, 3), seed=4)
    assert a.shape == (1, 3, 8, 8) and b.shape == (3, 3, 8, 8) and a.dtype == np.float32
    assert np.array_equal(parity_inputs((3, 8, 8), (1,), seed=4)[0], a)


def test_sqnr_matches_a_hand_computed_value() -> None:
    ref = np.array([[1.0, -1.0], [2.0, -2.0]])
    noisy = ref + np.array([[0.1, -0.1], [0.0, 0.0]])  # zero-mean per sample: all of it is noise
    expected = 10 * np.log10((1 + 1 + 4 + 4) / (0.01 + 0.01))
    assert logits_sqnr_db(ref, noisy) == pytest.approx(expected)
    assert logits_sqnr_db(ref, ref + 7.0) > 250  # a per-sample shift is not noise


def test_a_silent_reference_is_refused_not_minus_infinity() -> None:
    flat = np.zeros((4, 10), dtype=np.float32)
    with pytest.raises(BuildError, match="carry no signal"):
        check_int8(flat, flat, runtime="onnxruntime")


def test_non_finite_int8_logits_are_refused() -> None:
    ref = np.eye(4, dtype=np.float32)
    bad = ref.copy()
    bad[1, 2] = np.nan
    with pytest.raises(BuildError, match="int8 model's outputs are not finite"):
        check_int8(ref, bad, runtime="onnxruntime")


def test_check_outputs_names_both_sides_and_holds_the_bar() -> None:
    ref = [np.array([[1.0, 2.0, 3.0]], dtype=np.float32)]
    near = [ref[0] + np.float32(TOLERANCES["fp32"] / 2)]
    result = check_outputs(near, ref, "fp32", runtime="openvino 2026.4 CPU", reference_name="torch")
    assert result["passed"] and result["criterion"] == "max |openvino - torch| <= 0.0001"
    far = [ref[0] + np.float32(TOLERANCES["fp32"] * 3)]
    with pytest.raises(BuildError, match="parity check failed"):
        check_outputs(far, ref, "fp32", runtime="onnxruntime")
    with pytest.raises(BuildError, match="shape"):
        check_outputs([np.zeros((2, 3), np.float32)], ref, "fp32", runtime="onnxruntime")
    with pytest.raises(ValueError):
        check_outputs(near, ref, "int8", runtime="onnxruntime")


def test_fp16_bar_is_relative() -> None:
    ref = [np.array([[100.0, -100.0]], dtype=np.float32)]
    got = [ref[0] + np.float32(0.5)]  # 0.5 abs, 0.005 relative: under fp16's 1e-2, over fp32's 1e-4
    assert check_outputs(got, ref, "fp16", runtime="onnxruntime")["passed"]
    with pytest.raises(BuildError):
        check_outputs(got, ref, "fp32", runtime="onnxruntime")
    assert compare_outputs(got[0], ref[0])["max_rel_err"] == pytest.approx(0.005)


def test_feature_map_sqnr_keeps_the_shift_that_logits_drop() -> None:
    ref = np.arange(1.0, 25.0, dtype=np.float32).reshape(1, 2, 3, 4)
    shifted = ref + 1.0  # a constant error: invisible to softmax, not to a detector's convs
    assert features_sqnr_db(ref, shifted) == pytest.approx(10 * np.log10(np.sum(ref**2) / ref.size))
    assert logits_sqnr_db(ref.reshape(1, -1), shifted.reshape(1, -1)) > 200  # logits: no error at all
    with pytest.raises(BuildError, match="all zeros"):
        features_sqnr_db(np.zeros_like(ref), ref)


def test_int8_features_gate_holds_every_map_and_names_the_worst() -> None:
    rng = np.random.default_rng(0)
    fp32 = {"block2": rng.standard_normal((4, 8, 4, 4)), "block3": rng.standard_normal((4, 16, 2, 2))}
    bar = TOLERANCES["int8_features_sqnr_db"]

    def at(db: dict[str, float]) -> dict[str, np.ndarray]:  # noise of exactly that SQNR per map
        out = {}
        for name, ref in fp32.items():
            noise = rng.standard_normal(ref.shape)
            noise *= np.sqrt(np.sum(ref**2) / np.sum(noise**2) / 10 ** (db[name] / 10))
            out[name] = ref + noise
        return out

    result = check_int8_features(fp32, at({"block2": bar + 10, "block3": bar + 1}), runtime="test")
    assert result["passed"] and result["sqnr_db"] == pytest.approx(bar + 1, abs=0.05)
    assert result["outputs"]["block2"]["sqnr_db"] == pytest.approx(bar + 10, abs=0.05)
    with pytest.raises(BuildError, match=rf"block3 SQNR {bar - 1:.1f} dB"):
        check_int8_features(fp32, at({"block2": bar + 10, "block3": bar - 1}), runtime="test")
    with pytest.raises(BuildError, match="outputs \\['block3', 'block2'\\] are not"):
        check_int8_features(fp32, {"block3": fp32["block3"], "block2": fp32["block2"]}, runtime="test")
    with pytest.raises(BuildError, match="int8 model's block2 is not finite"):
        check_int8_features(fp32, {**fp32, "block2": fp32["block2"] * np.nan}, runtime="test")
