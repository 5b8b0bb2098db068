"""TensorRT engines of a backbone (a features head): every named feature map is an engine output, bound by the
runner and held to onnxruntime by the build's verification, through the strict fakes (fake_tensorrt.py,
fake_cuda.py) in fp32, fp16 and int8 (the Q/DQ form, and DLA's implicit quantization); a GPU-marked test builds
real engines where TensorRT and a GPU exist."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fake_tensorrt import PLAN_MAGIC
from trt_support import gpu_reason, install_fake

import densegraph
from densegraph.errors import BuildError
from densegraph.export.tensorrt import EngineOptions, EngineRunner, build_engine, read_sidecar, verify_engine
from densegraph.parity import TOLERANCES, features_sqnr_db, parity_inputs
from densegraph.runners import OnnxRuntimeRunner, TensorRTRunner, TorchRunner

REPO = Path(__file__).resolve().parents[2]
SPEC = str(REPO / "tests" / "data" / "torchvision-tiny-features.yaml")
MAPS = {"block1": [32, 16, 16], "block2": [40, 8, 8], "block3": [36, 4, 4]}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded weights with non-trivial BatchNorm statistics (so every map carries signal)."""
    from densegraph.testing import randomize_batchnorm

    module = randomize_batchnorm(densegraph.to_torch(SPEC, seed=3).eval(), seed=3)
    path = tmp_path_factory.mktemp("features") / "w.pt"
    torch.save(module.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def calib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.npy"
    np.save(path, np.random.default_rng(0).standard_normal((16, 3, 64, 64), dtype=np.float32))
    return path


def _build(tmp_path: Path, weights: Path, calib: Path, precision: str, **options: Any) -> Any:
    extra = {"calib": str(calib), "calib_samples": 16} if precision == "int8" else {}
    return densegraph.build(
        SPEC,
        output=str(tmp_path / precision),
        weights=str(weights),
        precision=precision,
        target="tensorrt",
        batch=(1, 2, 4),
        **extra,
        **options,
    )


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_features_engine_binds_and_verifies_every_named_map(
    tmp_path: Path, trt: Any, weights: Path, calib: Path, precision: str
) -> None:
    result = _build(tmp_path, weights, calib, precision)
    engine = result.engine
    sidecar = read_sidecar(engine)
    assert sidecar is not None
    # the engine's bindings are the ONNX's named outputs, at their shapes
    assert [(o["name"], o["shape"][1:]) for o in sidecar["outputs"]] == list(MAPS.items())
    verification = sidecar["verification"]
    assert verification["passed"] and set(verification["outputs"]) == set(MAPS)
    assert all(o["passed"] and o["samples"] == 7 for o in verification["outputs"].values())  # batches 1, 2, 4
    assert "worst of 3 outputs" in verification["summary"]
    if precision == "int8":
        assert verification["criterion"] == f"feature map SQNR >= {TOLERANCES['int8_features_sqnr_db']:g} dB"
        assert all(
            o["sqnr_db"] >= TOLERANCES["int8_features_sqnr_db"] for o in verification["outputs"].values()
        )
    assert (
        result.manifest["engine"]["built"]
        and "worst of 3 outputs" in result.manifest["engine"]["verification"]
    )

    # the runners: every map by name, the engine's against onnxruntime's and (fp32) PyTorch's
    x = parity_inputs((3, 64, 64), (3,), seed=7)[0]
    with EngineRunner(engine) as raw:
        got = raw(x)
        assert isinstance(got, dict) and list(got) == list(MAPS)
    with (
        TensorRTRunner(engine) as runner,
        OnnxRuntimeRunner(result.model, optimize=precision != "int8") as ort,
    ):
        assert runner.feature_names == list(MAPS) == ort.feature_names
        maps, ref = runner.outputs(x), ort.outputs(x)
        with pytest.raises(densegraph.DensegraphError, match="is a backbone"):
            runner(x)
        rows = runner.bench([1, 4], iters=2, warmup=1)
    assert [r["batch"] for r in rows] == [1, 4]
    for name, shape in MAPS.items():
        assert list(maps[name].shape) == [3, *shape]
        if precision == "fp32":
            tol = TOLERANCES["engine_fp32"]
            assert np.all(np.abs(maps[name] - ref[name]) <= tol + tol * np.abs(ref[name]))
        else:
            assert features_sqnr_db(ref[name], maps[name]) > 30  # the fake runs the ONNX itself
    if precision == "fp32":
        with TorchRunner(SPEC, weights=weights) as torch_runner:
            reference = torch_runner.outputs(x)
        for name in MAPS:
            np.testing.assert_allclose(maps[name], reference[name], atol=TOLERANCES["fp32"], rtol=0)


def test_verification_names_the_one_map_that_is_off(tmp_path: Path, weights: Path) -> None:
    built = densegraph.build(SPEC, output=str(tmp_path / "b"), weights=str(weights))
    x = parity_inputs((3, 64, 64), (2,), seed=1)
    with OnnxRuntimeRunner(built.model) as ort:
        ref = ort.outputs(x[0])

    def engine(off: str, by: float) -> Any:
        return lambda a: {n: v + (by * np.abs(v).max() if n == off else 0) for n, v in ref.items()}

    assert verify_engine(engine("block2", 0.0), built.model, "fp32", x)["passed"]
    bad = verify_engine(engine("block2", 0.01), built.model, "fp32", x)
    assert not bad["passed"] and "worst of 3 outputs: block2" in bad["summary"]
    assert [n for n, o in bad["outputs"].items() if not o["passed"]] == ["block2"]
    assert verify_engine(engine("block3", 0.005), built.model, "fp16", x)["passed"]
    assert not verify_engine(engine("block3", 0.02), built.model, "fp16", x)["passed"]
    with pytest.raises(BuildError, match="the engine has no output block3"):
        verify_engine(lambda a: {n: v for n, v in ref.items() if n != "block3"}, built.model, "fp32", x)
    with pytest.raises(BuildError, match="the engine gives one output, the ONNX names 3"):
        verify_engine(lambda a: ref["block1"], built.model, "fp32", x)


def test_dla_int8_engine_of_a_backbone_verifies_every_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weights: Path, calib: Path
) -> None:
    """DLA on TensorRT 10 takes the float graph and a calibration cache of the Q/DQ scales: the graph outputs
    keep their names and every map passes the int8 bar against the Q/DQ ONNX."""
    from densegraph.export.quantize import quantize_onnx

    built = densegraph.build(SPEC, output=str(tmp_path / "fp32"), weights=str(weights))
    int8 = tmp_path / "int8" / "model.onnx"
    quantize_onnx(built.model, int8, np.load(calib), form="qdq")
    trt = install_fake(monkeypatch, "10")
    trt.fake.num_dla_cores = 1
    result = build_engine(
        int8, tmp_path / "int8", EngineOptions(precision="int8", dla_core=0, batch=(1, 2, 4))
    )
    verification = result["verification"]
    assert verification["passed"] and set(verification["outputs"]) == set(MAPS)
    plan = json.loads(trt.fake.plans[-1][len(PLAN_MAGIC) :])
    assert plan["dla"] and plan["gpu_fallback"] == []  # the float graph: no Q/DQ layer left DLA
    assert [o[0] for o in plan["outputs"]] == list(MAPS)
    with EngineRunner(result["engine_path"]) as runner:
        assert runner.output_names == list(MAPS)
    # build_engine.sh gives trtexec the same float graph: the maps keep their names and shapes there too
    import onnx

    from densegraph.export.tensorrt import write_build_script

    write_build_script(int8.parent, int8.name, "model.engine", EngineOptions(precision="int8", dla_core=0))
    float_graph = onnx.load(int8.parent / "model.noqdq.onnx").graph
    assert not [n for n in float_graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert {
        o.name: [d.dim_value for d in o.type.tensor_type.shape.dim][1:] for o in float_graph.output
    } == MAPS


# ---------------------------------------------------------------------------------------------------------
# real engines: only where TensorRT and a CUDA GPU exist


GPU_REASON = gpu_reason()


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(GPU_REASON is not None, reason=GPU_REASON or "")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_real_features_engine(tmp_path: Path, weights: Path, calib: Path, precision: str) -> None:
    result = _build(tmp_path, weights, calib, precision)
    sidecar = read_sidecar(result.engine)
    assert sidecar is not None and sidecar["verification"]["passed"], sidecar
    assert set(sidecar["verification"]["outputs"]) == set(MAPS)
    with TensorRTRunner(result.engine) as runner:
        maps = runner.outputs(parity_inputs((3, 64, 64), (2,))[0])
    assert {n: list(v.shape[1:]) for n, v in maps.items()} == MAPS
