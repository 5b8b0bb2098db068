"""The benchmark scripts under tools/ run end to end on a tiny model and report what they promise: every
contender, its error against the fp32 reference, the target ratios and the batch tiles. (Their timings are not
asserted: speed is judged by running them, not by a unit test.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_bench_infer_reports_every_contender(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        str(REPO / "tools" / "bench_infer.py"),
        "--spec", str(REPO / "tests" / "data" / "torchvision-tiny.yaml"),
        "--batch-sizes", "1,3",
        "--iters", "2",
        "--eager-iters", "1",
        "--calib-samples", "2",
        "--batch-tile", "2",
        "--threads", "1",
        "--keep", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["batch_tiles"] == {"fp32": 2, "int8": 2}
    rows = record["batches"]["3"]
    assert set(rows) == {
        "eager plain",
        "eager frozen",
        "ort torchvision",
        "ort densegraph",
        "ort tiled",
        "ort int8 cpu",
        "ort int8 tiled",
        "ort int8 qdq",
    }
    # the baseline is torchvision's forward pass, written independently, with the same weights
    assert record["baseline"].startswith(
        ("torch.onnx.export of TorchvisionDenseNet", "torch.onnx.export of torchvision")
    )
    for name in ("eager frozen", "ort torchvision", "ort densegraph", "ort tiled"):
        assert rows[name]["max_abs_error"] < 1e-4, name
    assert rows["ort densegraph"]["speedup"]["vs"] == "ort torchvision"
    assert rows["ort tiled"]["speedup"]["vs"] == "ort densegraph"
    assert set(record["ratios"]) == {
        "frozen_vs_plain_eager",
        "densegraph_onnx_vs_torchvision_onnx",
        "int8_cpu_vs_torchvision_onnx",
        "int8_cpu_vs_fp32_onnx",
    }
    import onnx

    from densegraph.export.passes import batch_tile_of

    assert batch_tile_of(onnx.load(tmp_path / "tiled.onnx")) == 2
    assert batch_tile_of(onnx.load(tmp_path / "int8.cpu.tiled.onnx")) == 2
    assert batch_tile_of(onnx.load(tmp_path / "densegraph.onnx")) is None


def test_bench_torch_infer_reports_frozen_every_ablation_and_the_floor() -> None:
    from densegraph.lower.torch import REWRITES

    argv = [
        sys.executable,
        str(REPO / "tools" / "bench_torch_infer.py"),
        "--spec", str(REPO / "tests" / "data" / "torchvision-tiny.yaml"),
        "--batch-sizes", "1", "3",
        "--iters", "1",
        "--repeat", "2",
        "--threads", "1",
        "--ablate",
        "--profile", "--profile-calls", "2",
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(record["batches"]) == {"1", "3"} and isinstance(record["malloc_tuned"], bool)
    for row in record["batches"].values():
        assert set(row["ms"]) == {"plain", "frozen"} | {f"-{r}" for r in REWRITES}
        assert row["max_abs_error"] < 1e-4 and row["speedup"] > 0
    floor = record["profile"]
    assert 0 < floor["conv_ms"] <= floor["op_ms"]
    assert floor["budget_ms"] == pytest.approx(record["batches"]["3"]["ms"]["plain"] / 1.8, abs=0.01)
    assert "convolutions alone" in result.stdout


def test_bench_emit_times_emission_against_the_exporter_and_checks_both() -> None:
    argv = [
        sys.executable,
        str(REPO / "tools" / "bench_emit.py"),
        "--spec", str(REPO / "tests" / "data" / "torchvision-tiny.yaml"),
        "--rounds", "2",
        "--threads", "1",
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    emission = json.loads(result.stdout.strip().splitlines()[-1])["emission"]
    assert len(emission["all_s"]["emit"]) == len(emission["all_s"]["trace"]) == 2
    assert emission["speedup"] > 0 and emission["target"] == 5.0 and emission["nodes"] > 0
    assert max(emission["max_abs_error"].values()) < 1e-4
    ops = emission["ops"]
    assert ops["emit"] == {k: v for k, v in ops["trace"].items() if k != "Identity"}
    assert "torch.onnx.export" in result.stdout


def test_bench_data_compares_the_streamed_and_in_memory_loaders(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench_data.py"), "--images", "24", "--workers", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line.split()[:1] in (["memory"], ["stream"])}
    assert rows["memory"][1] == rows["stream"][1] == "24"  # both loaders scored every image
    assert lines[-1].startswith("stream/memory: peak RSS ") and "top-1" in lines[-1]
