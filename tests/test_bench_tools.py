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


def test_bench_infer_openvino_adds_the_nncf_int8_anchor() -> None:
    argv = [
        sys.executable,
        str(REPO / "tools" / "bench_infer.py"),
        "--spec", str(REPO / "tests" / "data" / "torchvision-tiny.yaml"),
        "--batch-sizes", "2",
        "--iters", "2",
        "--eager-iters", "1",
        "--calib-samples", "4",
        "--batch-tile", "off",
        "--threads", "1",
        "--openvino",
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    rows = record["batches"]["2"]
    assert {"ov torchvision", "ov nncf int8", "ov int8 qdq"} <= set(rows)
    # OpenVINO in f32 runs torchvision's export as PyTorch does; both int8 models are int8, not float
    assert rows["ov torchvision"]["max_abs_error"] < 1e-4
    for name in ("ov nncf int8", "ov int8 qdq", "ort int8 cpu"):
        assert 1e-4 < rows[name]["rel_error"] < 0.5, name
    assert rows["ov nncf int8"]["speedup"]["vs"] == "ort torchvision"
    assert record["ratios"]["int8_cpu_vs_openvino_nncf"]["baseline"] == "ov nncf int8"


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


def _tool(name: str):  # the probes are scripts; import them as modules for their functions
    import importlib

    sys.path.insert(0, str(REPO / "tools"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "tools"))


def test_probe_concat_split_is_exact_and_shares_the_chunk_concats(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort

    from densegraph.export.emit import onnx_from_graph
    from densegraph.lower.torch import graph_of, module_from_graph
    from densegraph.passes import EXPORT_PASSES
    from densegraph.spec import load_spec
    from densegraph.testing import randomize_batchnorm

    probe = _tool("probe_concat_split")
    graph = graph_of(load_spec(REPO / "tests" / "data" / "torchvision-tiny.yaml"))
    module = module_from_graph(graph, seed=0).eval()
    randomize_batchnorm(module, seed=1)
    flat, _ = onnx_from_graph(graph, module.state_dict(), passes=EXPORT_PASSES, opset=19)
    layers = [n for n in flat.graph.node if n.op_type == "Concat" and len(n.input) > 2]
    split, count = probe.split_concats(flat, 2)
    # every layer with more than 2 inputs whose concat feeds BN -> ReLU -> 1x1 conv; not the transition's
    # (its conv has no BN-ReLU of its own after the pool swap) — so fewer than or as many as the big concats
    assert 0 < count <= len(layers)
    adds = [n for n in split.graph.node if n.op_type == "Add"]
    assert len(adds) == count
    x = np.random.default_rng(0).standard_normal((3, *graph.graph["input_shape"]), dtype=np.float32)

    def run(model: onnx.ModelProto) -> np.ndarray:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"images": x})[0]

    expected = run(flat)
    assert np.abs(run(split) - expected).max() < 1e-5 * max(1.0, float(np.abs(expected).max()))
    # a chunk larger than any layer's input count rewrites nothing
    assert probe.split_concats(flat, 1000)[1] == 0

    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "probe_concat_split.py"), "--spec",
         str(REPO / "tests" / "data" / "torchvision-tiny.yaml"), "--chunks", "2", "--batch-sizes", "2",
         "--rounds", "2", "--threads", "1"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(record["batches"]["2"]) == {"flat", "split 2"}
    assert record["batches"]["2"]["split 2"]["max_abs_diff"] < 1e-4


def test_probe_int8_kernels_measures_every_conv_of_the_graph_fused() -> None:
    import numpy as np
    import onnxruntime as ort

    from densegraph.lower.torch import graph_of
    from densegraph.spec import load_spec

    probe = _tool("probe_int8_kernels")
    graph = graph_of(load_spec(REPO / "tests" / "data" / "torchvision-tiny.yaml"))
    shapes = probe.conv_shapes(graph)
    # the graph's MACs are its convs' and its classifier's: the probe sees every conv
    linear = sum(
        op["in_features"] * op["out_features"] if "in_features" in op else 0
        for _, data in graph.nodes(data=True)
        for op in data["ops"]
        if op["op"] == "linear"
    )
    conv_macs = sum(probe.macs(shape, 1) * count for shape, count in shapes.items())
    assert conv_macs + linear == sum(data["macs"] for _, data in graph.nodes(data=True))
    shape = max(shapes, key=lambda s: probe.macs(s, 1))
    fp32, int8 = probe.conv_models(shape)
    assert probe._fused(int8, threads=1)  # onnxruntime runs the int8 model as one QLinearConv
    cin, _, _, _, _, _, h, w = shape
    x = np.random.default_rng(1).uniform(0, 4, (2, cin, h, w)).astype(np.float32)
    run = {
        m: ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        for m in (fp32, int8)
    }
    # the same conv, within the int8 output's quantization step (8/255) plus the inputs' and weights' rounding
    error = np.abs(run[int8] - np.clip(run[fp32], -128 * 8 / 255, 127 * 8 / 255))
    assert error.mean() < 0.05 and np.abs(run[fp32]).mean() > 0.1

    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "probe_int8_kernels.py"), "--spec",
         str(REPO / "tests" / "data" / "torchvision-tiny.yaml"), "--batch", "2", "--rounds", "1", "--threads", "1"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["unfused"] == 0
    assert sum(row["count"] for row in record["shapes"]) == sum(shapes.values())
    assert record["int8_vs_fp32"] > 0
