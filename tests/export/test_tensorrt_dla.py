"""DLA int8 (issue 14, point 7): TensorRT 8.6-10.x DLA takes no explicit quantization (NVIDIA/TensorRT#2222,
NVIDIA/Model-Optimizer#1661), so densegraph builds it from the Q/DQ-free float graph and a calibration cache of
its own Q/DQ scales (what NVIDIA's Q/DQ Translator does); TensorRT 11.4.1+ DLA takes the Q/DQ graph strongly
typed. Against the fakes, which put Q/DQ layers of an implicit-generation DLA build on the GPU, need a
calibrator whose cache names their TensorRT version, and round each cached tensor to its int8 grid when the
engine runs."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fake_tensorrt import CACHE_HEADERS, PLAN_MAGIC, make_tiny_onnx, round_to_int8
from fake_trtexec import write_fake_trtexec
from onnx import numpy_helper
from trt_support import build, model

from densegraph.errors import BuildError
from densegraph.export.tensorrt import (
    EngineOptions,
    build_engine,
    inspect_onnx,
    precision_plan,
    write_build_script,
)
from densegraph.export.tensorrt import builder as trt_builder
from densegraph.export.tensorrt.calibration import (
    calibration_cache,
    implicit_int8_from_qdq,
    nv_tensorrt_version,
    parse_calibration_cache,
)

REPO = Path(__file__).resolve().parents[2]
TINY_SPEC = REPO / "tests" / "data" / "torchvision-tiny.yaml"
QDQ = ("QuantizeLinear", "DequantizeLinear")


@pytest.fixture(scope="module")
def qdq_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """densegraph's fp32 ONNX of the tiny torchvision-shaped DenseNet and its int8 Q/DQ (TensorRT) form."""
    import torch

    from densegraph.export.emit import onnx_from_graph
    from densegraph.export.onnx import check_onnx, save_onnx
    from densegraph.export.quantize import quantize_onnx
    from densegraph.lower.torch import to_torch
    from densegraph.passes import EXPORT_PASSES
    from densegraph.testing import randomize_batchnorm

    folder = tmp_path_factory.mktemp("dla")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module: Any = randomize_batchnorm(to_torch(TINY_SPEC, seed=0).eval(), seed=0)
        proto, _ = onnx_from_graph(module.graph, module.state_dict(), passes=EXPORT_PASSES, opset=19)
    finally:
        torch.set_num_threads(threads)
    fp32, int8 = folder / "fp32.onnx", folder / "model.onnx"
    save_onnx(check_onnx(proto), fp32)
    calib = np.random.default_rng(0).standard_normal((16, 3, 64, 64)).astype(np.float32)
    # without bias correction: the translation test's independent twin is the fp32 model with only its weights
    # replaced (bias correction would move the biases too)
    quantize_onnx(fp32, int8, calib, form="qdq", bias_correction=False)
    return fp32, int8


def _run(model_proto: Any, x: np.ndarray) -> np.ndarray:
    """onnxruntime without graph rewrites: the ops as written (its fused int8 kernels round differently)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model_proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _activation_quantizers(qdq: Any) -> dict[str, float]:
    """tensor -> scale of every QuantizeLinear on an activation of the Q/DQ model (read independently)."""
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    return {
        n.input[0]: float(inits[n.input[1]])
        for n in qdq.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits
    }


# ---------------------------------------------------------------------------------------------------------
# the translation: float graph + scales


def test_the_float_graph_is_the_qdq_model_with_dequantized_weights(qdq_pair: tuple[Path, Path]) -> None:
    fp32_path, int8_path = qdq_pair
    qdq = onnx.load(int8_path)
    implicit = implicit_int8_from_qdq(qdq)
    stripped = implicit.model
    assert not [n for n in stripped.graph.node if n.op_type in QDQ]
    assert {t.data_type for t in stripped.graph.initializer} == {onnx.TensorProto.FLOAT}
    assert implicit.weights == 17  # one per Conv

    # the independent twin: the fp32 model with each conv weight replaced by its int8 value times its scale
    twin = onnx.load(fp32_path)
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    for i, tensor in enumerate(twin.graph.initializer):
        if tensor.name + "_quantized" in inits:
            q, scale = inits[tensor.name + "_quantized"], inits[tensor.name + "_scale"]
            value = q.astype(np.float32) * scale.reshape(-1, *[1] * (q.ndim - 1))
            twin.graph.initializer[i].CopyFrom(numpy_helper.from_array(value.astype(np.float32), tensor.name))
    x = np.random.default_rng(1).standard_normal((4, 3, 64, 64)).astype(np.float32)
    got, want = _run(stripped, x), _run(twin, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())

    # with each cached tensor rounded to its int8 grid (TensorRT's implicit int8) it is the Q/DQ model
    reference = _run(qdq, x)
    requantized = _run(round_to_int8(stripped, implicit.scales), x)
    np.testing.assert_allclose(requantized, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())
    # and without the rounding it differs from it by the activations' int8 rounding only
    assert 0 < np.abs(got - reference).max() < 0.05 * np.abs(reference).max()


def test_every_qdq_activation_has_its_scale_and_carried_scales_are_exact(qdq_pair: tuple[Path, Path]) -> None:
    qdq = onnx.load(qdq_pair[1])
    implicit = implicit_int8_from_qdq(qdq)
    quantized = _activation_quantizers(qdq)
    assert quantized and set(implicit.from_qdq) == set(quantized)
    assert all(implicit.scales[name] == scale for name, scale in quantized.items())
    # carried scales: outputs of ReLU / max-pool / Concat-of-equal-scales only, and those ops only
    producer = {o: n for n in implicit.model.graph.node for o in n.output}
    carried = set(implicit.scales) - set(quantized)
    assert carried and {producer[t].op_type for t in carried} <= {"Relu", "MaxPool", "Concat"}
    assert "features.relu0" in carried and "features.pool0" in carried
    tensors = {i.name for i in implicit.model.graph.input} | set(producer)
    assert set(implicit.scales) <= tensors  # names TensorRT's parser gives the network's tensors


def test_the_calibration_cache_is_tensorrts_text_format(qdq_pair: tuple[Path, Path]) -> None:
    implicit = implicit_int8_from_qdq(onnx.load(qdq_pair[1]))
    text = calibration_cache(implicit.scales, nv_tensorrt_version("10.3.0"))
    header, scales = parse_calibration_cache(text)
    assert header == "TRT-100300-EntropyCalibration2"
    assert scales == {k: float(np.float32(v)) for k, v in implicit.scales.items()}
    lines = text.decode().splitlines()[1:]
    assert len(lines) == len(implicit.scales) and all(len(line.rpartition(": ")[2]) == 8 for line in lines)
    # IEEE 754 bits, most significant first, as TensorRT writes them (0.125 = 0x3e000000)
    assert (
        calibration_cache({"a:0": 0.125, "b": 1.0}, 8601)
        == b"TRT-8601-EntropyCalibration2\na:0: 3e000000\nb: 3f800000\n"
    )
    assert parse_calibration_cache(b"TRT-8601-EntropyCalibration2\na:0: 3e000000\n")[1] == {"a:0": 0.125}
    assert struct.unpack(">f", bytes.fromhex("3c010204"))[0] == pytest.approx(1 / 127)


@pytest.mark.parametrize(
    ("version", "number"),
    [
        ("8.6.1.6", 8601),
        ("8.6.2.3", 8602),
        ("10.3.0", 100300),
        ("10.16.1.11", 101601),
        ("11.4.0.106", 110400),
    ],
)
def test_nv_tensorrt_version(version: str, number: int) -> None:
    assert nv_tensorrt_version(version) == number


def test_what_is_not_symmetric_per_tensor_int8_is_refused(tmp_path: Path) -> None:
    qdq = onnx.load(make_tiny_onnx(tmp_path / "u8.onnx", "uint8"))
    with pytest.raises(BuildError, match="not symmetric int8"):
        implicit_int8_from_qdq(qdq)


# ---------------------------------------------------------------------------------------------------------
# the Python builder, routed by version


def _plan(trt: Any) -> dict[str, Any]:
    return json.loads(trt.fake.plans[-1][len(PLAN_MAGIC) :])


@pytest.mark.parametrize("flavor", ["8", "10", "11"])
def test_dla_int8_routes_by_tensorrt_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flavor: str
) -> None:
    from trt_support import install_fake

    trt = install_fake(monkeypatch, flavor)
    trt.fake.num_dla_cores = 2
    _, sidecar = build(tmp_path, "int8", dla_core=1)
    fake, plan = trt.fake, _plan(trt)
    parsed = fake.named("OnnxParser.parse_from_file")[0][1]
    flags = {c[1].name for c in fake.named("IBuilderConfig.set_flag")}
    assert plan["gpu_fallback"] == [] and plan["dla"]  # no Q/DQ layer left DLA
    if flavor == "11":  # 11.4.1+ DLA: the Q/DQ graph, strongly typed, no calibrator
        assert parsed == str(tmp_path / "model.onnx") and plan["int8_scales"] == {}
        assert flags == {"GPU_FALLBACK"} and not fake.named("IBuilderConfig.int8_calibrator")
        assert "implicit_int8" not in sidecar
        return
    assert parsed == str(tmp_path / "model.noqdq.onnx")
    assert flags == {"INT8", "FP16", "GPU_FALLBACK"}
    assert fake.named("IBuilderConfig.int8_calibrator") and fake.named("IInt8EntropyCalibrator2.__init__")
    assert not fake.named("calibrate")  # TensorRT took the cache: no calibration pass
    cache = (tmp_path / "model.calib.cache").read_bytes()
    header, scales = parse_calibration_cache(cache)
    assert header == CACHE_HEADERS[flavor]  # this TensorRT's own NV_TENSORRT_VERSION
    assert plan["int8_scales"] == scales and set(scales) == {"images"}
    assert sidecar["implicit_int8"] == {"onnx": "model.noqdq.onnx", "calibration_cache": "model.calib.cache"}
    assert precision_plan(
        "int8", inspect_onnx(tmp_path / "model.onnx"), legacy_flags=True, dla=True
    ).implicit_int8


def test_the_qdq_graph_on_an_implicit_generation_dla_falls_back_to_the_gpu(
    tmp_path: Path, trt10: Any
) -> None:
    """What densegraph built before: the Q/DQ ONNX with INT8+FP16 on TensorRT 10's DLA puts every Q/DQ layer
    on the GPU (the fake, as NVIDIA's DLA docs and #2222 say), and fails without GPU fallback."""
    trt10.fake.num_dla_cores = 1
    onnx_path = model(tmp_path, "int8")
    network = trt10.Builder(trt10.Logger()).create_network(0)
    trt10.OnnxParser(network, trt10.Logger()).parse_from_file(str(onnx_path))
    builder = trt10.Builder(trt10.Logger())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (8, 3, 8, 8), (8, 3, 8, 8), (8, 3, 8, 8))
    config.add_optimization_profile(profile)
    for flag in ("INT8", "FP16", "GPU_FALLBACK"):
        config.set_flag(getattr(trt10.BuilderFlag, flag))
    config.default_device_type = trt10.DeviceType.DLA
    assert builder.build_serialized_network(network, config) is not None
    assert _plan(trt10)["gpu_fallback"] == ["q_in", "dq_in", "q_w", "dq_w"]
    config.clear_flag(trt10.BuilderFlag.GPU_FALLBACK)
    assert builder.build_serialized_network(network, config) is None


def test_int8_without_qdq_needs_a_calibrator_with_this_versions_cache(
    tmp_path: Path, trt10: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    trt10.fake.num_dla_cores = 1
    monkeypatch.setattr(trt_builder, "nv_tensorrt_version", lambda _v: 100300)  # 10.3's header on 10.16
    with pytest.raises(BuildError, match="Calibration failure"):
        build(tmp_path, "int8", dla_core=0)
    assert trt10.fake.named("calibrate") == [("calibrate", "TRT-100300-EntropyCalibration2")]
    monkeypatch.setattr(trt_builder.trt_api, "cache_calibrator", lambda trt, cache: None)
    with pytest.raises(BuildError, match="needs a calibrator"):
        build(tmp_path, "int8", dla_core=0)


def test_dla_int8_engine_of_a_densegraph_model_verifies(
    tmp_path: Path, trt10: Any, qdq_pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end on the fake: the engine rounds the cached tensors, and passes the int8 gate against the Q/DQ
    ONNX; a cache of dynamic ranges instead of scales (x127) fails it."""
    trt10.fake.num_dla_cores = 1
    options = EngineOptions(precision="int8", dla_core=0, batch=(1, 2, 4))
    result = build_engine(qdq_pair[1], tmp_path / "ok", options)
    assert result["verification"]["passed"] and result["verification"]["sqnr_db"] > 30
    plan = _plan(trt10)
    assert plan["gpu_fallback"] == [] and len(plan["int8_scales"]) == 41

    from densegraph.export.tensorrt import calibration

    real = calibration.calibration_cache
    monkeypatch.setattr(
        calibration, "calibration_cache", lambda scales, v: real({k: s * 127 for k, s in scales.items()}, v)
    )
    with pytest.raises(BuildError, match="disagrees with onnxruntime"):
        build_engine(qdq_pair[1], tmp_path / "ranges", options)


@pytest.mark.parametrize("flavor", ["8", "10", "11"])
def test_no_dla_cores_is_one_line_naming_where_dla_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flavor: str
) -> None:
    from trt_support import install_fake

    install_fake(monkeypatch, flavor)  # num_dla_cores 0: Thor, a discrete GPU, TensorRT 10.8-11.3
    with pytest.raises(BuildError) as info:
        build(tmp_path, "int8", dla_core=0)
    line = info.value.format()
    assert "\n" not in line and "DLA core 0 asked for, this device has 0 DLA core(s)" in line
    for words in ("TensorRT 8.6-10.7 (JetPack 6.x)", "TensorRT 11.4.1+", "JetPack 7.2.2+", "Thor"):
        assert words in line


# ---------------------------------------------------------------------------------------------------------
# trtexec: build_engine.sh


def _script(folder: Path, trtexec: Path, log: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "TRTEXEC": str(trtexec), "FAKE_LOG": str(log)}
    return subprocess.run(["bash", str(folder / "build_engine.sh")], capture_output=True, text=True, env=env)


@pytest.mark.skipif(
    Path("/usr/src/tensorrt/bin/trtexec").exists(), reason="a real JetPack trtexec is installed"
)
def test_build_script_gives_trtexec_the_float_graph_and_its_cache(tmp_path: Path) -> None:
    onnx_path = model(tmp_path, "int8")
    write_build_script(tmp_path, onnx_path.name, "model.engine", EngineOptions(precision="int8", dla_core=0))
    stripped, cache = tmp_path / "model.noqdq.onnx", tmp_path / "model.calib.cache"
    assert not [n for n in onnx.load(stripped).graph.node if n.op_type in QDQ]
    assert parse_calibration_cache(cache.read_bytes())[1].keys() == {"images"}
    log = tmp_path / "args.txt"
    for flavor, version in (("8.6", 8602), ("10", 100300)):
        done = _script(tmp_path, write_fake_trtexec(tmp_path / flavor / "trtexec", flavor), log)
        assert done.returncode == 0, (flavor, done.stderr)
        args = log.read_text().split()
        assert {"--onnx=model.noqdq.onnx", "--int8", "--fp16", "--calib=model.calib.cache"} <= set(args)
        assert {"--useDLACore=0", "--allowGPUFallback"} <= set(args) and "--stronglyTyped" not in args
        assert "not supported on DLA" not in done.stderr
        assert cache.read_text().splitlines()[0] == f"TRT-{version}-EntropyCalibration2"
    done = _script(tmp_path, write_fake_trtexec(tmp_path / "11" / "trtexec", "11"), log)
    assert done.returncode == 0, done.stderr
    args = log.read_text().split()
    assert "--onnx=model.onnx" in args and "--stronglyTyped" in args and not any("calib" in a for a in args)

    silent = tmp_path / "silent" / "trtexec"  # a trtexec that prints no version: refuse, never calibrate
    silent.parent.mkdir()
    silent.write_text('#!/usr/bin/env bash\n[ "$1" = --help ] && echo "  --fp16  --int8" && exit 0\nexit 0\n')
    silent.chmod(0o755)
    done = _script(tmp_path, silent, log)
    assert done.returncode == 2 and "names no TensorRT version" in done.stderr


def test_fake_trtexec_takes_calib_only_with_int8_and_this_versions_cache(tmp_path: Path) -> None:
    onnx_path = model(tmp_path, "int8")
    trtexec = write_fake_trtexec(tmp_path / "trtexec", "10")
    cache = tmp_path / "c.cache"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(trtexec), *args], capture_output=True, text=True)

    cache.write_text("TRT-100300-EntropyCalibration2\nimages: 3d4ccccd\n")
    assert run(f"--onnx={onnx_path}", f"--calib={cache}").returncode == 1
    assert run(f"--onnx={onnx_path}", "--int8", f"--calib={cache}").returncode == 0
    cache.write_text("TRT-8600-EntropyCalibration2\nimages: 3d4ccccd\n")  # Q/DQ Translator's default
    assert "not for this TensorRT" in run(f"--onnx={onnx_path}", "--int8", f"--calib={cache}").stderr
    dla = run(f"--onnx={onnx_path}", "--int8", "--fp16", "--useDLACore=0")
    assert dla.returncode == 1 and "not supported on DLA" in dla.stderr
    assert "[TensorRT v100300]" in run("--help").stdout


# ---------------------------------------------------------------------------------------------------------
# a real DLA: only on a Jetson whose TensorRT reports DLA cores


def _dla_reason() -> str | None:
    from densegraph.export.tensorrt import cuda

    if not cuda.cuda_available():
        return "needs a CUDA GPU"
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        return f"needs the tensorrt package: {exc}"
    if not int(tensorrt.Builder(tensorrt.Logger()).num_DLA_cores):
        return f"TensorRT {tensorrt.__version__} reports no DLA core here"
    return None


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_real_dla_int8_engine(tmp_path: Path, qdq_pair: tuple[Path, Path]) -> None:
    reason = _dla_reason()
    if reason is not None:
        pytest.skip(reason)
    result = build_engine(qdq_pair[1], tmp_path, EngineOptions(precision="int8", dla_core=0, batch=(1, 2, 4)))
    assert result["verification"]["passed"], result["verification"]["summary"]


@pytest.mark.skipif(
    Path("/usr/src/tensorrt/bin/trtexec").exists(), reason="a real JetPack trtexec is installed"
)
def test_a_build_folder_stays_replaceable_after_the_script_rewrites_the_cache(tmp_path: Path) -> None:
    """The manifest of a build without TensorRT claims the cache build_engine.sh rewrites on the device."""
    from densegraph._output import BuildOutput, foreign_entries
    from densegraph.builder.engine_stage import _written_by_script

    out, options = tmp_path / "out", EngineOptions(precision="int8", dla_core=0)
    with BuildOutput(out) as output:
        make_tiny_onnx(output.path / "model.onnx", "int8")
        write_build_script(output.path, "model.onnx", "model.engine", options)
        output.write_manifest({"format": "densegraph.build/1"}, later=_written_by_script(options))
        output.commit()
    done = _script(out, write_fake_trtexec(tmp_path / "bin" / "trtexec", "8.6"), tmp_path / "args.txt")
    assert done.returncode == 0, done.stderr
    assert (out / "model.calib.cache").read_text().startswith("TRT-8602-")
    assert foreign_entries(out) == ([], [])
