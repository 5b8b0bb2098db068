"""A dynamic input size through the TensorRT backend (fakes of TensorRT 10 and 11, fake cuda-python, fake
trtexec): the ONNX's input_range becomes the optimization profile's height and width, the runner sets the input
shape per call and refuses sizes outside the profile, trtexec and build_engine.sh pass the sizes with the
batch."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fake_trtexec import write_fake_trtexec
from trt_support import gpu_reason

from densegraph import build
from densegraph.errors import DensegraphError
from densegraph.export.tensorrt import (
    EngineOptions,
    EngineRunner,
    build_engine,
    engine_from_onnx,
    inspect_onnx,
    trtexec_command,
    write_build_script,
)
from densegraph.runners import TensorRTRunner

DATA = Path(__file__).resolve().parents[1] / "data"
CLASSIFIER = DATA / "tiny-digits-dynamic.yaml"  # 1 channel, sizes 8x8 .. 24x20, opt 16x16
BACKBONE = DATA / "tiny-features-dynamic.yaml"  # 3 channels, sizes 16x16 .. 64x48, opt 32x32


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The densegraph builds (fp32) of the two dynamic specs: their model.onnx, verified by the build."""
    root = tmp_path_factory.mktemp("dynamic")
    return {
        name: build(spec, output=root / name).model
        for name, spec in (("classifier", CLASSIFIER), ("backbone", BACKBONE))
    }


def _copy(src: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(src.read_bytes())
    return folder / "model.onnx"


def _ort(path: Path, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})


def test_inspect_reads_the_size_range(onnx_models: dict[str, Path]) -> None:
    info = inspect_onnx(onnx_models["classifier"])
    assert info.input_shape == ("batch", 1, "height", "width")
    assert info.size_range == ((8, 8), (16, 16), (24, 20)) and info.chw == (1, 16, 16)
    options = EngineOptions(batch=(1, 4, 8)).with_onnx(info)
    assert options.needs_profile and options.profile_shapes() == (
        (1, 1, 8, 8),
        (4, 1, 16, 16),
        (8, 1, 24, 20),
    )
    dla = EngineOptions(precision="fp16", batch=(1, 4, 8), dla_core=0).with_onnx(info)
    assert dla.profile_shapes() == ((4, 1, 16, 16),) * 3  # DLA: static shapes, the opt batch and size


def test_profile_spans_batch_height_and_width(tmp_path: Path, trt: Any, onnx_models: dict[str, Path]) -> None:
    onnx = _copy(onnx_models["classifier"], tmp_path)
    sidecar = engine_from_onnx(onnx, tmp_path / "model.engine", EngineOptions(batch=(1, 4, 8)))
    assert trt.fake.named("IOptimizationProfile.set_shape") == [
        ("IOptimizationProfile.set_shape", "images", (1, 1, 8, 8), (4, 1, 16, 16), (8, 1, 24, 20))
    ]
    assert sidecar["profiles"] == [
        {"input": "images", "min": [1, 1, 8, 8], "opt": [4, 1, 16, 16], "max": [8, 1, 24, 20]}
    ]
    assert sidecar["inputs"] == [{"name": "images", "shape": [-1, 1, -1, -1], "dtype": "FLOAT"}]
    assert (
        "--minShapes=images:1x1x8x8 --optShapes=images:4x1x16x16 --maxShapes=images:8x1x24x20"
        in (sidecar["trtexec_command"])
    )


def test_runner_sets_each_calls_shape_and_refuses_sizes_outside(
    tmp_path: Path, trt: Any, onnx_models: dict[str, Path]
) -> None:
    onnx = _copy(onnx_models["classifier"], tmp_path)
    engine_from_onnx(onnx, tmp_path / "model.engine", EngineOptions(batch=(1, 4, 8)))
    rng = np.random.default_rng(3)
    with EngineRunner(tmp_path / "model.engine") as runner:
        assert runner.size_range == {"min": [8, 8], "opt": [16, 16], "max": [24, 20]}
        assert runner.input_chw == (1, 16, 16)
        for shape in ((2, 1, 8, 8), (3, 1, 13, 17), (1, 1, 24, 20), (11, 1, 16, 16)):
            x = rng.standard_normal(shape, dtype=np.float32)
            np.testing.assert_allclose(runner(x), _ort(onnx, x)[0], rtol=1e-5, atol=1e-6)
        sets = [c[2] for c in trt.fake.named("IExecutionContext.set_input_shape")]
        assert sets[:3] == [(2, 1, 8, 8), (3, 1, 13, 17), (1, 1, 24, 20)]
        assert sets[3:] == [(8, 1, 16, 16), (3, 1, 16, 16)]  # batch 11 split at the profile's max batch
        for shape in ((1, 1, 25, 20), (1, 1, 7, 8), (1, 1, 24, 21)):
            with pytest.raises(DensegraphError) as info:
                runner(np.zeros(shape, np.float32))
            line = info.value.format()
            assert "\n" not in line and "from 8x8 to 24x20" in line and f"{shape[2]}x{shape[3]}" in line
        with pytest.raises(DensegraphError, match=r"expected input \[N, 1, H, W\]"):
            runner(np.zeros((1, 3, 16, 16), np.float32))


def test_backbone_maps_follow_the_input_size(tmp_path: Path, trt: Any, onnx_models: dict[str, Path]) -> None:
    onnx = _copy(onnx_models["backbone"], tmp_path)
    sidecar = engine_from_onnx(onnx, tmp_path / "model.engine", EngineOptions(batch=(1, 2, 4)))
    assert [o["shape"] for o in sidecar["outputs"]] == [[-1, 16, -1, -1], [-1, 16, -1, -1]]
    rng = np.random.default_rng(4)
    with EngineRunner(tmp_path / "model.engine") as runner:
        for shape in ((1, 3, 16, 16), (2, 3, 40, 24), (4, 3, 64, 48)):
            x = rng.standard_normal(shape, dtype=np.float32)
            got, ref = runner(x), _ort(onnx, x)
            assert list(got) == ["block2", "block3"]
            h, w = shape[2:]
            assert got["block2"].shape == (shape[0], 16, h // 2, w // 2)
            assert got["block3"].shape == (shape[0], 16, h // 4, w // 4)
            for a, b in zip(got.values(), ref, strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_build_engine_verifies_at_the_profiles_sizes(
    tmp_path: Path, trt: Any, onnx_models: dict[str, Path]
) -> None:
    out = tmp_path / "out"
    result = build_engine(onnx_models["classifier"], out, EngineOptions(batch=(1, 4, 8)))
    verification = result["verification"]
    assert verification["passed"]
    assert verification["batches"] == [1, 1, 4, 8, 1]
    assert verification["sizes"] == [[8, 8], [16, 16], [16, 16], [16, 16], [24, 20]]
    script = (out / "build_engine.sh").read_text()
    assert "size 8x8:16x16:24x20" in script and "--maxShapes=images:8x1x24x20" in script
    with TensorRTRunner(out / "model.engine") as runner:  # the runner interface: range, preprocess
        assert runner.size_range == {"min": [8, 8], "opt": [16, 16], "max": [24, 20]}
        assert runner.input_chw == (1, 16, 16) and runner.preprocess is not None
        assert runner.preprocess["crop"] == [16, 16]
        assert runner(np.zeros((2, 1, 20, 12), np.float32)).shape == (2, 10)


@pytest.mark.parametrize("flavor", ["8.6", "10", "11"])
def test_build_script_passes_the_sizes_to_trtexec(
    tmp_path: Path, onnx_models: dict[str, Path], flavor: str
) -> None:
    onnx = _copy(onnx_models["classifier"], tmp_path)
    write_build_script(tmp_path, onnx.name, "model.engine", EngineOptions(batch=(2, 4, 8)))
    trtexec = write_fake_trtexec(tmp_path / "bin" / "trtexec", flavor)
    log = tmp_path / "args.txt"
    env = {"PATH": os.environ["PATH"], "TRTEXEC": str(trtexec), "FAKE_LOG": str(log)}
    done = subprocess.run(
        ["bash", str(tmp_path / "build_engine.sh")], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    args = log.read_text().split()
    assert {
        "--minShapes=images:2x1x8x8",
        "--optShapes=images:4x1x16x16",
        "--maxShapes=images:8x1x24x20",
    } <= set(args)


def test_fake_trtexec_refuses_a_dynamic_size_without_shapes(
    tmp_path: Path, onnx_models: dict[str, Path]
) -> None:
    """The check above has teeth: the fake trtexec refuses spatial shapes that leave H/W unset or contradict."""
    onnx = _copy(onnx_models["classifier"], tmp_path)
    trtexec = write_fake_trtexec(tmp_path / "trtexec", "10")
    base = [str(trtexec), f"--onnx={onnx}", "--saveEngine=x.engine"]
    shapes = ["--minShapes=images:1x1x8x8", "--optShapes=images:4x1x16x16", "--maxShapes=images:8x1x24x20"]
    assert subprocess.run([*base, *shapes], capture_output=True, check=False).returncode == 0
    assert subprocess.run(base, capture_output=True, check=False).returncode == 1
    wrong_channels = [s.replace("x1x", "x3x") for s in shapes]
    assert subprocess.run([*base, *wrong_channels], capture_output=True, check=False).returncode == 1


def test_trtexec_command_without_tensorrt(
    tmp_path: Path, onnx_models: dict[str, Path], no_tensorrt: None
) -> None:
    command = trtexec_command(
        onnx_models["classifier"], tmp_path / "m.engine", EngineOptions(batch=(1, 1, 1))
    )
    assert "--minShapes=images:1x1x8x8" in command and "--maxShapes=images:1x1x24x20" in command
    record = json.loads(json.dumps(inspect_onnx(onnx_models["backbone"]).size_range))
    assert record == [[16, 16], [32, 32], [64, 48]]


def _tensorrt_build(tmp_path: Path, precision: str) -> dict[str, Any]:
    """``densegraph build --target tensorrt`` of the dynamic digits spec; returns the engine's sidecar."""
    calib = {"calib": "digits", "calib_samples": 64} if precision == "int8" else {}
    done = build(CLASSIFIER, output=tmp_path / precision, precision=precision, target="tensorrt", **calib)
    assert done.engine is not None and done.manifest["engine"]["built"]
    sidecar = json.loads(done.engine.with_suffix(".engine.json").read_text())
    assert sidecar["profiles"][0]["min"][2:] == [8, 8] and sidecar["profiles"][0]["max"][2:] == [24, 20]
    verification = sidecar["verification"]
    assert verification["passed"], verification["summary"]
    assert [8, 8] in verification["sizes"] and [24, 20] in verification["sizes"]
    with TensorRTRunner(done.engine) as runner:
        assert runner(np.zeros((2, 1, 11, 17), np.float32)).shape == (2, 10)
    return sidecar


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_target_builds_a_dynamic_engine_through_the_fake(
    tmp_path: Path, trt11: Any, precision: str
) -> None:
    sidecar = _tensorrt_build(tmp_path, precision)
    assert sidecar["strongly_typed"] is (precision != "fp32")


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(gpu_reason() is not None, reason=gpu_reason() or "")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_real_dynamic_engine(tmp_path: Path, precision: str) -> None:
    """The same build on a real TensorRT: one profile over batch, height and width, verified at min/opt/max."""
    _tensorrt_build(tmp_path, precision)
