"""``densegraph bench``: PyTorch, onnxruntime and TensorRT rows, the JSON and table outputs, and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import densegraph.export.tensorrt as trt_backend
from densegraph.benchmark import model_kind, time_batches
from densegraph.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY_SPEC = str(REPO / "tests" / "data" / "torchvision-tiny.yaml")
ROW_KEYS = {"batch", "latency_ms_mean", "latency_ms_p50", "latency_ms_p90", "throughput_per_s"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "tiny"
    assert main(["build", TINY_SPEC, "-o", str(out)]) == 0
    return out / "model.onnx"


def bench_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["bench", *argv, "--json", "--iters", "2", "--warmup", "1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    return json.loads(last)


def check_rows(report: dict[str, Any], batches: list[int]) -> None:
    assert [row["batch"] for row in report["results"]] == batches
    for row in report["results"]:
        assert set(row) == ROW_KEYS
        assert 0 < row["latency_ms_p50"] <= row["latency_ms_p90"] * (1 + 1e-9)
        assert row["throughput_per_s"] == pytest.approx(row["batch"] * 1e3 / row["latency_ms_mean"])


def test_onnx_in_onnxruntime(capsys: pytest.CaptureFixture[str], tiny_onnx: Path) -> None:
    report = bench_json(capsys, str(tiny_onnx), "--batch-sizes", "1,3")
    assert report["backend"] == "onnxruntime" and report["provider"] == "CPUExecutionProvider"
    assert (report["precision"], report["input_shape"], report["iters"], report["warmup"]) == (
        "fp32",
        [3, 64, 64],
        2,
        1,
    )
    check_rows(report, [1, 3])


def test_spec_in_pytorch_plain_and_frozen(capsys: pytest.CaptureFixture[str]) -> None:
    for flags, backend in (([], "pytorch"), (["--frozen"], "pytorch (frozen)")):
        report = bench_json(capsys, TINY_SPEC, "--batch-sizes", "2", "--device", "cpu", *flags)
        assert (report["backend"], report["device"], report["threads"]) == (backend, "cpu", 1)
        check_rows(report, [2])


def test_spec_with_weights(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from densegraph.lower.torch import to_torch

    weights = tmp_path / "w.pth"
    torch.save(to_torch(TINY_SPEC, seed=3).state_dict(), weights)
    check_rows(bench_json(capsys, TINY_SPEC, "--weights", str(weights), "--batch-sizes", "1"), [1])


def test_engine_through_the_tensorrt_runner(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    seen: dict[str, Any] = {}

    class Runner:
        device = "cuda:0"
        precision = "fp16"
        input_chw = (3, 64, 64)
        outputs: list[Any] = []  # EngineRunner's output tensors: bench reads none here

        def __init__(self, path: Path, **options: Any) -> None:
            seen["path"] = Path(path)

        def close(self) -> None:
            seen["closed"] = True

    def bench_engine(runner: Runner, batches: list[int], *, iters: int, warmup: int) -> list[dict[str, Any]]:
        seen["args"] = (list(batches), iters, warmup)
        return time_batches(lambda b: lambda: None, batches, iters=iters, warmup=warmup)

    monkeypatch.setattr(trt_backend, "EngineRunner", Runner)
    monkeypatch.setattr(trt_backend, "bench_engine", bench_engine)
    report = bench_json(capsys, str(engine), "--batch-sizes", "1,8")
    assert seen == {"path": engine, "args": ([1, 8], 2, 1), "closed": True}
    assert (report["backend"], report["device"], report["precision"]) == ("tensorrt", "cuda:0", "fp16")
    check_rows(report, [1, 8])


def test_table_output(capsys: pytest.CaptureFixture[str], tiny_onnx: Path) -> None:
    assert main(["bench", str(tiny_onnx), "--batch-sizes", "1", "--iters", "2", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    for heading in ("batch", "median ms", "p90 ms", "images/s", "onnxruntime"):
        assert heading in out


def test_time_batches_counts_calls() -> None:
    calls: list[int] = []
    rows = time_batches(lambda b: lambda: calls.append(b), [1, 4], iters=3, warmup=2)
    assert calls == [1] * 5 + [4] * 5
    assert [r["batch"] for r in rows] == [1, 4]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}/model.txt"], "cannot tell what '.txt' is"),
        (["{tmp}/missing.onnx"], "no such file"),
        (["{onnx}", "--weights", "w.pth"], "--weights applies only to a spec"),
        (["{onnx}", "--frozen"], "--frozen applies only to a spec"),
        (["{onnx}", "--iters", "0"], "--iters must be >= 1"),
        (["{onnx}", "--batch-sizes", "2", "--device", "cuda"], "no CUDA or TensorRT execution provider"),
        ([TINY_SPEC, "--device", "cuda"], "no CUDA GPU is visible"),
    ],
)
def test_bad_input_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_onnx: Path, argv: list[str], message: str
) -> None:
    if torch.cuda.is_available() and "cuda" in argv:
        pytest.skip("this machine has a GPU")
    (tmp_path / "model.txt").write_text("?")
    argv = [a.format(onnx=tiny_onnx, tmp=tmp_path) for a in argv]
    assert main(["bench", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err


def test_unreadable_onnx(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert main(["bench", str(bad)]) == 2
    assert "onnxruntime cannot load the model" in capsys.readouterr().err


def test_model_kind() -> None:
    assert [model_kind(p) for p in ("a.yaml", "b.YML", "c.onnx", "d.engine", "e.plan")] == [
        "spec", "spec", "onnx", "engine", "engine",
    ]  # fmt: skip
