"""densegraph.runners: one interface over PyTorch, onnxruntime and TensorRT (the strict fakes of tests/export).

The three runners are held to each other on one trained-shaped tiny model with the parity table's bars (ONNX
against PyTorch: ``fp32`` absolute; the engine against onnxruntime: ``engine_fp32`` elementwise), and each is
checked to report its inputs, free what it loaded and refuse to run once released.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import densegraph
from densegraph.errors import DensegraphError
from densegraph.parity import TOLERANCES, parity_inputs
from densegraph.runners import (
    BaseRunner,
    OnnxRuntimeRunner,
    RunnerNotLoaded,
    TensorMeta,
    TensorRTRunner,
    TorchRunner,
    open_runner,
)

REPO = Path(__file__).resolve().parents[2]
SPEC = str(REPO / "tests" / "data" / "tiny-digits.yaml")
sys.path.insert(0, str(REPO / "tests" / "export"))
from trt_support import NO_TORCH, install_fake  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Weights (seeded, BN statistics made non-trivial), the spec's ONNX build of them."""
    folder = tmp_path_factory.mktemp("runners")
    module = densegraph.to_torch(SPEC, seed=5)
    with torch.no_grad():
        for name, value in module.state_dict().items():
            if name.endswith("running_var"):
                value.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                value.uniform_(-0.3, 0.3)
    weights = folder / "w.pt"
    torch.save(module.state_dict(), weights)
    built = densegraph.build(SPEC, output=str(folder / "build"), weights=str(weights))
    return {"weights": weights, "onnx": built.model}


@pytest.fixture
def engine(models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Any]:
    """An fp32 engine of the ONNX build, through the fake TensorRT 10 (its ONNX beside it, as a build)."""
    from densegraph.export.tensorrt import EngineOptions, engine_from_onnx

    trt = install_fake(monkeypatch, "10")
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(models["onnx"].read_bytes())
    path = tmp_path / "model.engine"
    engine_from_onnx(onnx, path, EngineOptions(precision="fp32", batch=(1, 4, 8)))
    return path, trt


def _inputs() -> list[np.ndarray]:
    return parity_inputs((1, 8, 8), (1, 3, 11), seed=2)


def _logits(runner: BaseRunner) -> list[np.ndarray]:
    with runner:
        return [runner.infer({"images": x})["logits"] for x in _inputs()]


def test_every_runner_gives_the_same_logits(models: dict[str, Path], engine: tuple[Path, Any]) -> None:
    torch_logits = _logits(TorchRunner(SPEC, weights=models["weights"]))
    frozen = _logits(TorchRunner(SPEC, weights=models["weights"], frozen=True))
    ort_logits = _logits(OnnxRuntimeRunner(models["onnx"]))
    trt_logits = _logits(TensorRTRunner(engine[0]))
    bar, engine_bar = TOLERANCES["fp32"], TOLERANCES["engine_fp32"]
    for ref, fro, ort, trt, x in zip(torch_logits, frozen, ort_logits, trt_logits, _inputs(), strict=True):
        assert ref.shape == (len(x), 10) and ref.dtype == np.float32
        assert float(np.ptp(ref)) > 0.1  # a real signal to compare, not near-zero logits
        assert np.max(np.abs(fro - ref)) <= bar
        assert np.max(np.abs(ort - ref)) <= bar
        assert np.all(np.abs(trt - ort) <= engine_bar + engine_bar * np.abs(ort))
    # runner(x): float32 logits of any batch, the same numbers as infer
    with OnnxRuntimeRunner(models["onnx"]) as runner:
        np.testing.assert_array_equal(runner(_inputs()[2].astype(np.float64)), ort_logits[2])


def test_metadata(models: dict[str, Path], engine: tuple[Path, Any]) -> None:
    images = TensorMeta("images", (None, 1, 8, 8), np.dtype(np.float32))
    graph_preprocess = densegraph.build_graph(densegraph.load_spec(SPEC)).graph["preprocess"]
    runners = [
        (TorchRunner(SPEC, weights=models["weights"]), f"{SPEC} + {models['weights']} (PyTorch, cpu)"),
        (OnnxRuntimeRunner(models["onnx"]), f"{models['onnx']} (onnxruntime, CPUExecutionProvider)"),
        (TensorRTRunner(engine[0]), f"{engine[0]} (TensorRT)"),
    ]
    for runner, name in runners:
        with runner:
            assert runner.input_metadata == {"images": images}
            assert runner.output_names == ["logits"]
            assert (runner.input_name, runner.output_name, runner.input_chw) == (
                "images",
                "logits",
                (1, 8, 8),
            )
            assert runner.name == name
            # from the spec, or from the ONNX metadata the build wrote (which also records the input size)
            assert {k: v for k, v in runner.preprocess.items() if k != "input_size"} == graph_preprocess
    with OnnxRuntimeRunner(models["onnx"]) as runner:
        assert runner.fixed_batch is None
        assert runner.report() == {
            "backend": "onnxruntime",
            "provider": "CPUExecutionProvider",
            "device": "cpu",
            "threads": None,
        }


def test_release_frees_and_infer_refuses(models: dict[str, Path], engine: tuple[Path, Any]) -> None:
    x = _inputs()[1]
    torch_runner = TorchRunner(SPEC, weights=models["weights"]).load()
    module = weakref.ref(torch_runner.module)
    ort_runner = OnnxRuntimeRunner(models["onnx"]).load()
    session = weakref.ref(ort_runner.session)
    trt_runner = TensorRTRunner(engine[0]).load()
    trt_runner(x)  # device buffers to free
    fake_cuda = engine[1].cuda.fake
    assert fake_cuda.buffers and fake_cuda.streams
    for runner in (torch_runner, ort_runner, trt_runner):
        runner.release()
        assert not runner.is_loaded
        with pytest.raises(RunnerNotLoaded, match="not loaded"):
            runner.infer({"images": x})
        with pytest.raises(RunnerNotLoaded):
            runner(x)
        runner.release()  # a second release is a no-op
    gc.collect()
    assert module() is None and session() is None
    assert fake_cuda.buffers == {} and fake_cuda.streams == set()
    assert len(fake_cuda.named("cudaFree")) == len(fake_cuda.named("cudaMalloc"))
    # loaded again, each runs again
    for runner in (torch_runner, ort_runner, trt_runner):
        with runner:
            assert runner(x).shape == (3, 10)
        assert not runner.is_loaded


def test_metadata_needs_a_loaded_runner(models: dict[str, Path]) -> None:
    runner = OnnxRuntimeRunner(models["onnx"])
    with pytest.raises(RunnerNotLoaded, match=r"input_metadata\(\) on .*model.onnx"):
        runner.input_metadata  # noqa: B018


def test_a_feed_with_other_names_is_refused(models: dict[str, Path]) -> None:
    with OnnxRuntimeRunner(models["onnx"]) as runner, pytest.raises(DensegraphError) as info:
        runner.infer({"input": _inputs()[0]})
    assert "the feed names ['input'], the model takes ['images']" in info.value.format()


def test_open_runner_chooses_by_what_the_model_is(models: dict[str, Path], tmp_path: Path) -> None:
    assert isinstance(open_runner(SPEC), TorchRunner)
    assert isinstance(open_runner(densegraph.load_spec(SPEC)), TorchRunner)
    assert isinstance(open_runner(models["onnx"]), OnnxRuntimeRunner)
    for suffix in (".engine", ".plan", ".TRT"):
        assert isinstance(open_runner(tmp_path / f"model{suffix}"), TensorRTRunner)  # nothing opened yet
    with pytest.raises(DensegraphError, match="--weights applies to a spec"):
        open_runner(models["onnx"], weights=models["weights"])
    with pytest.raises(DensegraphError, match="--frozen applies only to a spec"):
        open_runner(tmp_path / "model.engine", frozen=True)
    runner = open_runner(SPEC, weights="torchvision", device="cpu", frozen=True)
    assert isinstance(runner, TorchRunner) and runner.frozen and not runner.is_loaded


def test_a_missing_model_fails_on_load_in_one_line(tmp_path: Path) -> None:
    runner = open_runner(tmp_path / "missing.onnx")
    with pytest.raises(DensegraphError) as info:
        runner.load()
    assert "no such file" in info.value.format() and not runner.is_loaded


def test_runners_import_no_framework_until_they_load(tmp_path: Path) -> None:
    """Making a runner of each kind imports neither torch nor onnxruntime nor tensorrt; the TensorRT runner
    stays torch-free while it loads and runs (numpy through the fake cuda-python)."""
    code = NO_TORCH + textwrap.dedent(
        f"""
        sys.path.insert(0, {str(REPO / "tests" / "export")!r})
        from pathlib import Path
        import numpy as np
        from densegraph.runners import open_runner

        out = Path({str(tmp_path)!r})
        made = [open_runner({SPEC!r}), open_runner(out / "model.onnx"), open_runner(out / "model.engine")]
        assert not [m for m in ("torch", "onnxruntime", "tensorrt") if m in sys.modules], sys.modules.keys()

        from fake_cuda import install_fake_cuda
        from fake_tensorrt import make_fake_tensorrt, make_tiny_onnx

        sys.modules["tensorrt"] = make_fake_tensorrt("10")
        install_fake_cuda(sys.modules, {{"name": "Orin", "compute_capability": "8.7"}})
        from densegraph.export.tensorrt import EngineOptions, engine_from_onnx

        onnx = make_tiny_onnx(out / "model.onnx", "fp32")
        engine_from_onnx(onnx, out / "model.engine", EngineOptions(precision="fp32", batch=(1, 2, 4)))
        with open_runner(out / "model.engine") as runner:
            logits = runner(np.ones((5, 3, 8, 8), np.float32))
            rows = runner.bench([1, 4], iters=2, warmup=1)
        assert logits.shape == (5, 5) and [r["batch"] for r in rows] == [1, 4]
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_bench_rows_from_each_runner(models: dict[str, Path], engine: tuple[Path, Any]) -> None:
    for runner in (TorchRunner(SPEC), OnnxRuntimeRunner(models["onnx"]), TensorRTRunner(engine[0])):
        with runner:
            rows = runner.bench([1, 5], iters=2, warmup=1)
        assert [r["batch"] for r in rows] == [1, 5]
        assert all(r["latency_ms_p50"] > 0 and r["throughput_per_s"] > 0 for r in rows)
    staged = [
        r["staged"] for r in rows
    ]  # the engine's profile is 1..8 here: both inputs staged on the device
    assert staged == [True, True]


# ---------------------------------------------------------------------------------------------------------
# a backbone (a features head): named maps from every runner; bench times it; predict and eval refuse it

FEATURES_SPEC = str(REPO / "tests" / "data" / "torchvision-tiny-features.yaml")
MAPS = {"block1": (32, 16, 16), "block2": (40, 8, 8), "block3": (36, 4, 4)}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from densegraph.testing import randomize_batchnorm

    folder = tmp_path_factory.mktemp("backbone")
    module = randomize_batchnorm(densegraph.to_torch(FEATURES_SPEC, seed=2).eval(), seed=2)
    torch.save(module.state_dict(), folder / "w.pt")
    built = densegraph.build(FEATURES_SPEC, output=str(folder / "build"), weights=str(folder / "w.pt"))
    return {"weights": folder / "w.pt", "onnx": built.model}


def test_every_runner_gives_a_backbones_named_maps(
    backbone: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from densegraph.export.tensorrt import EngineOptions, engine_from_onnx

    install_fake(monkeypatch, "11")
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(backbone["onnx"].read_bytes())
    engine_from_onnx(onnx, tmp_path / "model.engine", EngineOptions(precision="fp32", batch=(1, 2, 4)))
    x = parity_inputs((3, 64, 64), (5,), seed=4)[0]  # larger than the engine's profile: split in two
    runners = [
        TorchRunner(FEATURES_SPEC, weights=backbone["weights"]),
        TorchRunner(FEATURES_SPEC, weights=backbone["weights"], frozen=True),
        OnnxRuntimeRunner(backbone["onnx"]),
        TensorRTRunner(tmp_path / "model.engine"),
    ]
    got = []
    for runner in runners:
        with runner:
            assert runner.feature_names == runner.output_names == list(MAPS)
            maps = runner.outputs(x)
            assert {n: v.shape[1:] for n, v in maps.items()} == MAPS and all(
                len(v) == 5 for v in maps.values()
            )
            assert runner.infer({"images": x}).keys() == maps.keys()
            with pytest.raises(DensegraphError) as info:
                runner(x)  # logits
            assert "is a backbone (a features head): it outputs the feature maps block1, block2, block3" in (
                info.value.format()
            )
            rows = runner.bench([1, 2], iters=2, warmup=1)
            assert [r["batch"] for r in rows] == [1, 2] and all(r["latency_ms_p50"] > 0 for r in rows)
        got.append(maps)
    reference, frozen, ort, trt = got
    bar, engine_bar = TOLERANCES["fp32"], TOLERANCES["engine_fp32"]
    for name in MAPS:
        assert float(np.abs(reference[name]).max()) > 0.1
        assert np.max(np.abs(frozen[name] - reference[name])) <= bar
        assert np.max(np.abs(ort[name] - reference[name])) <= bar
        assert np.all(np.abs(trt[name] - ort[name]) <= engine_bar + engine_bar * np.abs(ort[name]))


def test_bench_times_a_backbone_and_predict_and_eval_refuse_it(
    backbone: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from PIL import Image

    from densegraph.cli import main

    for model in (str(backbone["onnx"]), FEATURES_SPEC):
        assert main(["bench", model, "--batch-sizes", "1,2", "--iters", "2", "--warmup", "1", "--json"]) == 0
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert [r["batch"] for r in report["results"]] == [1, 2]
        assert all(r["latency_ms_p50"] > 0 for r in report["results"])
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    for argv, verb in (
        (["predict", str(backbone["onnx"]), str(image)], "classes to predict"),
        (["predict", FEATURES_SPEC, str(image), "--weights", str(backbone["weights"])], "classes to predict"),
        (["predict", FEATURES_SPEC, str(image)], "classes to predict"),  # before asking for weights
        (["eval", str(backbone["onnx"]), "--data", "digits"], "classes to score"),
    ):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1, err
        assert err.startswith(f"{argv[1]}: error: the model is a backbone (a features head)")
        assert f"block1, block2, block3 and has no {verb}" in err and "densegraph bench times it" in err
