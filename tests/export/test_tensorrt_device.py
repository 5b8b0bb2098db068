"""Issue 14: what a first real device would have hit, each against the strict fakes (fake_tensorrt.py,
fake_cuda.py, fake_trtexec.py). Every test here failed on the backend before the fix it names."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_trtexec import write_fake_trtexec
from trt_support import NO_TORCH, CpuDevice, build, install_fake, model

from densegraph.errors import BuildError, DensegraphError
from densegraph.export.tensorrt import (
    EngineOptions,
    EngineRunner,
    TensorRTUnavailable,
    build_engine,
    engine_from_onnx,
    read_sidecar,
    sidecar_path,
    trtexec_command,
    verify_engine,
    write_build_script,
)

REPO = Path(__file__).resolve().parents[2]


def _ort_reference(onnx: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]


def _run_script(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {"PATH": "/usr/bin:/bin", **env}
    return subprocess.run(["bash", str(folder / "build_engine.sh")], capture_output=True, text=True, env=full)


# ---------------------------------------------------------------------------------------------------------
# 1. version-compatible engines without a sidecar (trtexec's branch of build_engine.sh deletes it)


def test_version_compatible_engine_loads_without_its_sidecar(tmp_path: Path, trt: Any) -> None:
    engine, _ = build(tmp_path, "fp32", version_compat=True)
    sidecar_path(engine).unlink()  # as build_engine.sh does before trtexec rebuilds the engine
    trt.fake.calls.clear()
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8), dtype=np.float32)
    with EngineRunner(engine) as runner:
        np.testing.assert_allclose(
            runner(x), _ort_reference(tmp_path / "model.onnx", x), rtol=1e-6, atol=1e-6
        )
    assert trt.fake.named("Runtime.engine_host_code_allowed") == [("Runtime.engine_host_code_allowed", True)]
    assert len(trt.fake.named("Runtime.deserialize_cuda_engine")) == 2  # refused, then allowed host code


def test_a_plain_engine_is_loaded_without_host_code(tmp_path: Path, trt: Any) -> None:
    engine, _ = build(tmp_path, "fp32")
    sidecar_path(engine).unlink()
    trt.fake.calls.clear()
    EngineRunner(engine).close()
    assert not trt.fake.named("Runtime.engine_host_code_allowed")


# ---------------------------------------------------------------------------------------------------------
# 2. a static-batch ONNX takes no explicit shapes in trtexec


@pytest.mark.parametrize("flavor", ["8.6", "10", "11"])
def test_static_batch_script_passes_no_shapes_to_trtexec(tmp_path: Path, flavor: str) -> None:
    onnx = model(tmp_path, "fp16", batch=4)
    options = EngineOptions(precision="fp16", batch=(4, 4, 4))
    assert "Shapes" not in trtexec_command(onnx, "model.engine", options)
    write_build_script(tmp_path, onnx.name, "model.engine", options)
    log = tmp_path / "args.txt"
    trtexec = write_fake_trtexec(tmp_path / "bin" / "trtexec", flavor)
    done = _run_script(tmp_path, {"TRTEXEC": str(trtexec), "FAKE_LOG": str(log)})
    assert done.returncode == 0, done.stderr
    args = log.read_text().split()
    assert "--onnx=model.onnx" in args and not any("Shapes" in a for a in args)


def test_fake_trtexec_refuses_shapes_on_a_static_model(tmp_path: Path) -> None:
    onnx = model(tmp_path, batch=4)
    trtexec = write_fake_trtexec(tmp_path / "trtexec", "10")
    done = subprocess.run(
        [str(trtexec), f"--onnx={onnx}", "--minShapes=images:4x3x8x8"], capture_output=True, text=True
    )
    assert done.returncode == 1 and "Static model does not take explicit shapes" in done.stderr


def test_static_batch_engine_builds_without_a_profile_and_runs(tmp_path: Path, trt: Any) -> None:
    onnx = model(tmp_path, batch=4)
    engine = tmp_path / "model.engine"
    sidecar = engine_from_onnx(onnx, engine, EngineOptions(batch=(4, 4, 4)))
    assert not trt.fake.named("IOptimizationProfile.set_shape") and sidecar["profiles"] == []
    x = np.random.default_rng(1).standard_normal((6, 3, 8, 8), dtype=np.float32)
    with EngineRunner(engine) as runner:
        assert runner.batch_range == (4, 4)
        out = runner(x)  # 4, then 2 padded to 4
    padded = np.concatenate([x[4:], np.zeros((2, 3, 8, 8), np.float32)])
    ref = np.concatenate([_ort_reference(onnx, x[:4]), _ort_reference(onnx, padded)[:2]])
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# 3. the DLA core is set on the runtime before deserializing


@pytest.mark.parametrize("flavor", ["8", "10"])
def test_dla_engine_runs_on_the_core_it_was_built_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flavor: str
) -> None:
    trt = install_fake(monkeypatch, flavor)
    trt.fake.num_dla_cores = 2
    engine, _ = build(tmp_path, "fp16", dla_core=1)
    trt.fake.calls.clear()
    with EngineRunner(engine) as runner:
        runner(np.ones((8, 3, 8, 8), np.float32))
    names = trt.fake.names()
    assert trt.fake.named("Runtime.DLA_core") == [("Runtime.DLA_core", 1)]
    assert names.index("Runtime.DLA_core") < names.index("Runtime.deserialize_cuda_engine")
    assert trt.fake.named("dla_core") == [("dla_core", 1)]
    trt.fake.calls.clear()
    with EngineRunner(engine, dla_core=0) as runner:  # the caller may choose another core
        runner(np.ones((8, 3, 8, 8), np.float32))
    assert trt.fake.named("dla_core") == [("dla_core", 0)]


# ---------------------------------------------------------------------------------------------------------
# 4. TensorRT needs 256-byte aligned addresses


def test_numpy_batches_of_odd_sizes_reach_tensorrt_aligned(tmp_path: Path, trt: Any) -> None:
    onnx = model(tmp_path, hw=7)  # 3*7*7*4 = 588 bytes a sample: chunk starts are not 256-aligned
    engine = tmp_path / "model.engine"
    engine_from_onnx(onnx, engine, EngineOptions(batch=(1, 4, 8)))
    x = np.random.default_rng(2).standard_normal((20, 3, 7, 7), dtype=np.float32)[1:]  # a view, offset 588
    with EngineRunner(engine) as runner:
        out = runner(x)
    np.testing.assert_allclose(out, _ort_reference(onnx, np.ascontiguousarray(x)), rtol=1e-6, atol=1e-6)


def test_torch_tensors_are_copied_only_when_misaligned(
    tmp_path: Path, trt: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    onnx = model(tmp_path, hw=7)
    engine = tmp_path / "model.engine"
    engine_from_onnx(onnx, engine, EngineOptions(batch=(1, 4, 8)))
    device = CpuDevice()  # the zero-copy path, with CPU memory standing in for CUDA
    monkeypatch.setattr(
        EngineRunner, "_zero_copy_device", lambda self, x: device if torch.is_tensor(x) else None
    )
    x = torch.randn(20, 3, 7, 7, generator=torch.Generator().manual_seed(3))[1:]
    with EngineRunner(engine) as runner:
        out = runner(x)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), _ort_reference(onnx, x.numpy()), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# 5. TensorRT 8.6 (JetPack 6.0): explicit batch and weak typing; older is refused


@pytest.mark.parametrize("kind", ["fp32", "fp16", "int8"])
def test_tensorrt_8_6_builds_and_verifies(tmp_path: Path, trt8: Any, kind: str) -> None:
    result = build_engine(model(tmp_path, kind), tmp_path / "out", EngineOptions(precision=kind))
    assert result["verification"]["passed"], result["verification"]["summary"]
    explicit = 1 << int(trt8.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    assert trt8.fake.named("Builder.create_network") == [("Builder.create_network", explicit)]
    flags = [c[1].name for c in trt8.fake.named("IBuilderConfig.set_flag")]
    assert flags == {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[kind]
    assert result["strongly_typed"] is False
    assert result["trtexec_command"] == trtexec_command(
        tmp_path / "out" / "model.onnx",
        tmp_path / "out" / "model.engine",
        EngineOptions(precision=kind),
        legacy_flags=True,
        strong_typing=False,
    )


def test_tensorrt_older_than_8_6_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_fake(monkeypatch, "8.5")
    with pytest.raises(TensorRTUnavailable) as info:
        engine_from_onnx(model(tmp_path), tmp_path / "model.engine", EngineOptions())
    line = info.value.format()
    assert "\n" not in line and "TensorRT 8.5.3.1 is too old" in line and "8.6 or newer" in line


def test_strongly_typed_networks_refuse_precision_flags(tmp_path: Path, trt10: Any) -> None:
    """The fake is strict: a typed build that also set FP16 fails, as TensorRT does."""
    from densegraph.export.tensorrt import builder

    real = builder._config

    def with_fp16(trt: Any, b: Any, options: Any, plan: Any, calibration: Any) -> Any:
        config = real(trt, b, options, plan, calibration)
        config.set_flag(trt.BuilderFlag.FP16)
        return config

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builder, "_config", with_fp16)
        with pytest.raises(BuildError, match="not allowed with a strongly typed network"):
            build(tmp_path, "fp16")


def test_build_script_has_a_branch_per_trtexec_family(tmp_path: Path) -> None:
    onnx = model(tmp_path, "fp16")
    write_build_script(tmp_path, onnx.name, "model.engine", EngineOptions(precision="fp16"))
    log = tmp_path / "args.txt"
    seen = {}
    for flavor in ("8.6", "10", "11"):
        trtexec = write_fake_trtexec(tmp_path / flavor / "trtexec", flavor)
        done = _run_script(tmp_path, {"TRTEXEC": str(trtexec), "FAKE_LOG": str(log)})
        assert done.returncode == 0, (flavor, done.stderr)
        seen[flavor] = {a for a in log.read_text().split() if a in ("--fp16", "--stronglyTyped")}
    assert seen == {"8.6": {"--fp16"}, "10": {"--stronglyTyped"}, "11": {"--stronglyTyped"}}


# ---------------------------------------------------------------------------------------------------------
# 6. fp16 verification against the fp32 twin, never a crash after the engine is written


def _has_fp16(model_proto: Any) -> bool:
    from onnx import TensorProto

    g = model_proto.graph
    return any(t.data_type == TensorProto.FLOAT16 for t in g.initializer) or any(
        v.type.tensor_type.elem_type == TensorProto.FLOAT16 for v in (*g.value_info, *g.input, *g.output)
    )


@pytest.fixture
def ort_without_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime as on a CPU build without fp16 kernels: any model with fp16 tensors is NOT_IMPLEMENTED."""
    import onnx
    import onnxruntime as ort

    real = ort.InferenceSession

    def session(model: Any, *args: Any, **kwargs: Any) -> Any:
        proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
        if _has_fp16(proto):
            raise RuntimeError(
                "[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for Gemm(13)"
            )
        return real(model, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", session)


def test_fp16_engine_is_verified_against_the_fp32_twin(
    tmp_path: Path, trt: Any, ort_without_fp16: None
) -> None:
    result = build_engine(model(tmp_path, "fp16"), tmp_path / "out", EngineOptions(precision="fp16"))
    verification = result["verification"]
    assert verification["passed"] and "fp32 twin" in verification["reference"]
    assert read_sidecar(tmp_path / "out" / "model.engine")["verification"]["passed"] is True


def test_verification_that_cannot_run_is_one_located_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : something\nmore lines")

    onnx = model(tmp_path)
    monkeypatch.setattr(ort, "InferenceSession", broken)
    with pytest.raises(BuildError) as info:
        verify_engine(lambda a: a, onnx, "fp32", [np.zeros((1, 3, 8, 8), np.float32)])
    line = info.value.format()
    assert "\n" not in line and "onnxruntime cannot run the ONNX" in line and str(onnx) in line


# ---------------------------------------------------------------------------------------------------------
# 7. the int8 gate, Jetson hardware compatibility, opset 21, the timing-cache error, the printed trtexec line


def test_int8_gate_is_sqnr_not_top1_on_nearly_tied_logits(tmp_path: Path) -> None:
    onnx = model(tmp_path, "int8")
    x = [np.random.default_rng(5).standard_normal((64, 3, 8, 8), dtype=np.float32)]
    ref = _ort_reference(onnx, x[0])
    close = ref.copy()
    order = np.argsort(ref, axis=1)
    gap = ref[np.arange(64), order[:, -1]] - ref[np.arange(64), order[:, -2]]
    swap = np.argsort(gap)[:10]  # 10 of 64 rows change their top-1, by the smallest margins
    close[swap, order[swap, -1]], close[swap, order[swap, -2]] = (
        ref[swap, order[swap, -2]],
        ref[swap, order[swap, -1]],
    )
    result = verify_engine(lambda a: close, onnx, "int8", x)
    assert result["top1_agreement"] == pytest.approx(54 / 64) and result["sqnr_db"] >= 10
    assert result["passed"], result["summary"]
    assert not verify_engine(lambda a: -ref, onnx, "int8", x)["passed"]
    rng = np.random.default_rng(6)
    assert not verify_engine(lambda a: ref + ref.std() * rng.standard_normal(ref.shape), onnx, "int8", x)[
        "passed"
    ]


def test_hardware_compat_is_refused_on_jetson(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trt = install_fake(
        monkeypatch, "10", gpu={"name": "Orin", "compute_capability": "8.7", "integrated": True}
    )
    with pytest.raises(BuildError, match="not supported on Jetson"):
        build(tmp_path, "fp32", hardware_compat=True)
    assert not trt.fake.named("Builder.build_serialized_network")


def test_opset_21_is_refused_for_tensorrt_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from densegraph.cli import main

    out = tmp_path / "out"
    spec = REPO / "specs" / "digits.yaml"
    assert main(["build", str(spec), "--target", "tensorrt", "--opset", "21", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--opset 21" in err and "opsets <= 20" in err
    assert not out.exists()


def test_a_recovered_timing_cache_error_is_not_repeated(tmp_path: Path, trt: Any) -> None:
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"from another GPU")
    trt.fake.reject_timing_cache = True
    trt.fake.build_error = "Error Code 4: Internal Error (out of workspace)"
    with pytest.raises(BuildError) as info:
        build(tmp_path, "fp32", timing_cache=cache)
    message = info.value.format()
    assert "out of workspace" in message and "timing cache mismatch" not in message


def test_printed_trtexec_commands_name_their_tensorrt(tmp_path: Path, no_tensorrt: None) -> None:
    messages: list[str] = []
    with pytest.raises(TensorRTUnavailable):
        build_engine(model(tmp_path), tmp_path, EngineOptions(precision="fp16"), progress=messages.append)
    commands = [m for m in messages if m.startswith("equivalent trtexec command:")]
    assert commands and all(m.endswith("# TensorRT 8.6, 10.x") for m in commands if "--fp16" in m)
    assert any(m.startswith("no trtexec command for TensorRT 11.x: ") for m in messages)


# ---------------------------------------------------------------------------------------------------------
# no torch on the run path


def test_the_run_path_works_with_torch_unimportable(tmp_path: Path) -> None:
    code = NO_TORCH + textwrap.dedent(
        f"""
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        import numpy as np
        from fake_cuda import install_fake_cuda
        from fake_tensorrt import make_fake_tensorrt, make_tiny_onnx

        sys.modules["tensorrt"] = make_fake_tensorrt("10")
        install_fake_cuda(sys.modules, {{"name": "Orin", "compute_capability": "8.7"}})
        from densegraph.export.tensorrt import EngineOptions, EngineRunner, bench_engine, build_engine

        out = Path({str(tmp_path)!r})
        onnx = make_tiny_onnx(out / "src" / "model.onnx", "int8")
        result = build_engine(onnx, out / "build", EngineOptions(precision="int8", batch=(1, 2, 4)))
        assert result["verification"]["passed"], result["verification"]
        with EngineRunner(result["engine_path"]) as runner:
            logits = runner(np.ones((5, 3, 8, 8), np.float32))
            rows = bench_engine(runner, [1, 4], iters=2, warmup=1)
        assert logits.shape == (5, 5) and [r["batch"] for r in rows] == [1, 4]
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_engine_command_builds_verifies_and_benches(
    tmp_path: Path, trt: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from densegraph.cli import main

    onnx = model(tmp_path, "int8")
    engine = tmp_path / "e" / "net.engine"
    assert (
        main(
            [
                "engine",
                str(onnx),
                "-o",
                str(engine),
                "--batch-range",
                "1:2:4",
                "--iters",
                "2",
                "--warmup",
                "0",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith(f"{engine}: int8, TensorRT {trt.__version__}, Fake GPU (sm 8.6)")
    for heading in ("batch", "median ms", "images/s", "tensorrt"):
        assert heading in out
    rows = [
        line.split() for line in out.splitlines() if line.strip("│ ").split("│")[0].strip() in ("1", "2", "4")
    ]
    assert len(rows) == 3  # one row per batch size of the profile
    assert read_sidecar(engine)["verification"]["passed"]


def test_engine_command_refuses_bad_timing_arguments(
    tmp_path: Path, trt: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from densegraph.cli import main

    assert main(["engine", str(model(tmp_path)), "-o", str(tmp_path / "m.engine"), "--iters", "0"]) == 2
    assert "--iters must be >= 1" in capsys.readouterr().err


def test_runner_needs_a_gpu_runtime(tmp_path: Path, trt: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from densegraph.export.tensorrt import cuda

    engine, _ = build(tmp_path)
    monkeypatch.setattr(cuda, "_cudart", lambda: None)
    monkeypatch.setattr(cuda, "_torch_cuda", lambda: None)
    monkeypatch.setattr(cuda, "cuda_available", lambda: True)
    with pytest.raises(DensegraphError, match="needs cuda-python"):
        EngineRunner(engine, check_compat=False)
