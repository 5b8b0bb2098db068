"""``densegraph build``: the folder it writes, the manifest, reproducibility, every precision and target, and
failures that leave the output folder exactly as it was."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

import densegraph.export.tensorrt as trt_backend
from densegraph.cli import main
from densegraph.errors import BuildError
from densegraph.export.onnx import ort_session, run_onnx

REPO = Path(__file__).resolve().parents[1]
TINY_SPEC = str(REPO / "tests" / "data" / "torchvision-tiny.yaml")
DIGITS_SPEC = str(REPO / "specs" / "digits.yaml")
FIXTURES = REPO / "tests" / "fixtures"
WEIGHTS = str(FIXTURES / "torchvision-tiny-densenet.pth")
LEGACY_WEIGHTS = str(FIXTURES / "torchvision-tiny-densenet-legacy-keys.pth")
FEATURES_SPEC = str(REPO / "tests" / "data" / "torchvision-tiny-features.yaml")
FEATURE_MAPS = {"block1": [32, 16, 16], "block2": [40, 8, 8], "block3": [36, 4, 4]}


pytestmark = pytest.mark.usefixtures("one_thread")


def build(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["build", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def good_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny spec built with torchvision's weights (made once, copied by the tests that need it)."""
    out = tmp_path_factory.mktemp("good") / "tiny"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["build", TINY_SPEC, "--weights", WEIGHTS, "-o", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture
def existing(good_build: Path, tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A good build in ``tmp_path/out`` and its bytes."""
    out = tmp_path / "out"
    shutil.copytree(good_build, out)
    return out, snapshot(out)


def assert_untouched(out: Path, before: dict[str, bytes]) -> None:
    assert snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name], "temporary folders were left behind"


# ---------------------------------------------------------------------------------------------------------
# a good build


def test_build_writes_model_manifest_and_picture(good_build: Path) -> None:
    from densegraph import build_graph, load_spec
    from densegraph.training import graph_sha256

    graph = build_graph(load_spec(TINY_SPEC))
    assert sorted(p.name for p in good_build.iterdir()) == [
        "MODEL.md",
        "graph.svg",
        "manifest.json",
        "model.onnx",
    ]
    manifest = json.loads((good_build / "manifest.json").read_text())
    assert manifest["format"] == "densegraph.build/1"
    assert manifest["spec"] == {
        "path": TINY_SPEC,
        "sha256": sha256(TINY_SPEC),
        "graph_sha256": graph_sha256(graph),
    }
    assert manifest["weights"] == {"path": WEIGHTS, "sha256": sha256(WEIGHTS)}
    assert "seed" not in manifest
    assert manifest["model"]["sha256"] == sha256(good_build / "model.onnx")
    assert manifest["graph"]["sha256"] == sha256(good_build / "graph.svg")
    assert (manifest["precision"], manifest["opset"], manifest["target"]) == ("fp32", 19, "onnx")
    assert manifest["inputs"] == [{"name": "images", "shape": ["batch", 3, 64, 64], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "logits", "shape": ["batch", 10], "dtype": "float32"}]
    assert manifest["params"] == 26298  # torchvision-tiny-densenet.json
    assert manifest["macs"] > 0
    assert manifest["rewrites"] == ["fold_bn", "swap_pool_conv"]
    assert manifest["batch_tile"] is None and "batch_tiling" not in manifest  # untiled unless asked
    assert not {"Loop", "Scan"} & set(manifest["model"]["ops"])
    parity = manifest["parity"]["fp32"]
    assert parity["passed"] and parity["batches"] == [1, 3] and parity["max_abs_err"] <= 1e-4
    assert set(manifest["versions"]) >= {"densegraph", "torch", "onnx", "onnxruntime"}


def test_built_model_is_named_after_the_graph_and_describes_itself(good_build: Path) -> None:
    from densegraph import build_graph, load_spec
    from densegraph.training import graph_sha256

    model = onnx.load(good_build / "model.onnx")
    names = [n.name for n in model.graph.node]
    assert names[:3] == ["features.conv0", "features.relu0", "features.pool0"]  # norm0 folded into conv0
    assert "features.denseblock2.denselayer3.concat" in names and "features.transition1.pool" in names
    assert names.index("features.transition1.pool") < names.index("features.transition1.conv")  # swapped
    assert names[-1] == "classifier" and model.graph.node[-1].output[0] == "logits"
    for node in model.graph.node:  # a node's output value is named as the node
        assert node.output[0] in (node.name, "logits")
    initializers = {t.name for t in model.graph.initializer}
    assert {"features.conv0.weight", "features.conv0.bias", "classifier.weight"} <= initializers
    assert "features.denseblock1.denselayer1.norm1.running_var" in initializers
    props = {p.key: p.value for p in model.metadata_props}
    graph = build_graph(load_spec(TINY_SPEC))
    assert props["densegraph.spec"] == "torchvision-tiny" and props["densegraph.classes"] == "10"
    assert props["densegraph.spec_sha256"] == sha256(TINY_SPEC)
    assert props["densegraph.graph_sha256"] == graph_sha256(graph)
    assert props["densegraph.params"] == "26298" and int(props["densegraph.macs"]) > 0
    assert "densegraph.labels" not in props
    preprocess = json.loads(props["densegraph.preprocess"])
    assert preprocess["input_size"] == [3, 64, 64] and preprocess["mean"] == [0.485, 0.456, 0.406]
    assert [p.key for p in model.metadata_props] == sorted(props)
    card = (good_build / "MODEL.md").read_text()
    manifest = json.loads((good_build / "manifest.json").read_text())
    assert manifest["card"]["sha256"] == sha256(good_build / "MODEL.md")
    assert card.startswith("# torchvision-tiny\n") and manifest["model"]["sha256"] in card
    assert f"densegraph build {TINY_SPEC} --weights {WEIGHTS} -o OUT" in card
    assert manifest["command"] == f"densegraph build {TINY_SPEC} --weights {WEIGHTS} -o OUT"


def test_locate_maps_onnx_and_tensorrt_names_to_spec_lines(
    capsys: pytest.CaptureFixture[str], good_build: Path
) -> None:
    from densegraph import build_graph, load_spec

    graph = build_graph(load_spec(TINY_SPEC))
    layer = graph.nodes["block2.layer3"]["loc"]
    model = str(good_build / "model.onnx")
    assert main(["locate", model, "features.denseblock2.denselayer3.conv1"]) == 0
    assert capsys.readouterr().out == f"{layer}: block2.layer3 (features.denseblock2.denselayer3)\n"
    fused = "features.denseblock1.denselayer1.conv1 + features.denseblock1.denselayer1.relu2"
    assert main(["locate", str(good_build), fused, "--json"]) == 0
    (found,) = json.loads(capsys.readouterr().out)
    assert found["node"] == "block1.layer1"
    for name, node in (
        ("classifier", "head"),
        ("features.norm5.weight_DequantizeLinear", "head"),  # an int8 node name
        ("features.conv0", "stem"),
        ("features.transition1.pool_kernel_time", "transition1"),  # an onnxruntime profile entry
    ):
        assert main(["locate", model, name, "--json"]) == 0
        assert [f["node"] for f in json.loads(capsys.readouterr().out)] == [node], name
    assert main(["locate", model, "/conv1_3/Conv"]) == 1  # a TorchScript-era name: no node has it
    assert "no graph node" in capsys.readouterr().err
    assert main(["locate", TINY_SPEC, "features.transition1.conv"]) == 0
    assert capsys.readouterr().out.startswith(graph.nodes["transition1"]["loc"])
    assert main(["locate", str(good_build / "graph.svg"), "classifier"]) == 2
    assert "not an ONNX model" in capsys.readouterr().err


def test_locate_maps_a_backbones_output_names_to_their_head_outputs_entry(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A features head's output names (the ONNX outputs, the engine's bindings, the int8 model's Q/DQ around
    them) go to the output node and that name's place in ``head.outputs``; its layers to their own lines."""
    import re

    spec_text = Path(FEATURES_SPEC).read_text().splitlines()
    (line,) = [i for i, text in enumerate(spec_text, start=1) if "outputs:" in text]

    def entry(name: str) -> str:  # where the name stands in the spec text, found without densegraph
        col = re.search(rf"\b{name}\b", spec_text[line - 1])
        assert col is not None
        return f"{FEATURES_SPEC}:{line}:{col.start() + 1}"

    np.save(
        tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((8, 3, 64, 64), dtype=np.float32)
    )
    out = tmp_path / "int8"
    code, _, err = build(
        capsys, FEATURES_SPEC, "--precision", "int8", "--calib", str(tmp_path / "calib.npy"), "-o", str(out)
    )
    assert code == 0, err
    model = onnx.load(out / "model.onnx")
    names = {n.name for n in model.graph.node} | {v for n in model.graph.node for v in n.output}
    for name in FEATURE_MAPS:
        around = sorted(n for n in names if re.fullmatch(rf"{name}(_\w+)?", n))
        assert name in around and len(around) >= 3  # the output, and the Q/DQ the int8 model puts on it
        for where in (str(out / "model.onnx"), str(out), FEATURES_SPEC):
            for layer in around:
                assert main(["locate", where, layer]) == 0
                assert capsys.readouterr().out == f"{entry(name)}: output.{name} ({name})\n", layer
    from densegraph import build_graph, load_spec

    graph = build_graph(load_spec(FEATURES_SPEC))
    fused = "block2 + features.transition2.conv"  # a TensorRT fusion of the map and the layer reading it
    assert main(["locate", str(out), fused, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"name": "block2", "node": "output.block2", "loc": entry("block2")},
        {"name": "features.transition2", "node": "transition2", "loc": graph.nodes["transition2"]["loc"]},
    ]
    assert main(["locate", str(out), "features.denseblock3.denselayer2.conv1_QuantizeLinear"]) == 0
    layer = graph.nodes["block3.layer2"]["loc"]
    assert capsys.readouterr().out == f"{layer}: block3.layer2 (features.denseblock3.denselayer2)\n"


def test_python_api_builds_reports_progress_and_prints_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, good_build: Path
) -> None:
    import densegraph

    events: list[Any] = []
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"digit {i}\n" for i in range(10)))
    result = densegraph.build(
        TINY_SPEC, output=tmp_path / "api", weights=WEIGHTS, labels=str(labels), progress=events.append
    )
    assert capsys.readouterr() == ("", "")
    assert result.model == tmp_path / "api" / "model.onnx" and result.parity["fp32"]["passed"]
    assert result.manifest == json.loads(result.manifest_path.read_text())
    assert result.summary().startswith(f"built {tmp_path / 'api'}/: model.onnx (fp32, opset 19")
    stages = [e.stage for e in events if e.state == "done"]
    assert stages[:3] == ["graph", "lower", "emit"] and "verify" in stages and stages[-1] == "card"
    assert all(e.seconds is not None and e.seconds >= 0 for e in events if e.state == "done")
    props = {p.key: p.value for p in onnx.load(result.model).metadata_props}
    assert json.loads(props["densegraph.labels"]) == [f"digit {i}" for i in range(10)]
    assert "digit 9" in result.card.read_text()
    # the same graph and weights give the same tensors and names, whatever the labels
    plain = onnx.load(good_build / "model.onnx")
    assert onnx.load(result.model).graph == plain.graph
    labels.write_text("one\ntwo\n")
    with pytest.raises(BuildError, match="2 labels for a model with 10 classes"):
        densegraph.build(TINY_SPEC, output=tmp_path / "bad", labels=str(labels))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(TypeError, match="unexpected options"):
        densegraph.build(TINY_SPEC, output=tmp_path / "bad", precison="fp16")
    with pytest.raises(BuildError, match="unknown precision 'fp8'"):
        densegraph.build(TINY_SPEC, output=tmp_path / "bad", precision="fp8")


@pytest.mark.parametrize("weights", [WEIGHTS, LEGACY_WEIGHTS], ids=["current-keys", "legacy-keys"])
def test_built_model_reproduces_torchvision(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, good_build: Path, weights: str
) -> None:
    out = tmp_path / "out"
    assert build(capsys, TINY_SPEC, "--weights", weights, "-o", str(out))[0] == 0
    io = torch.load(FIXTURES / "torchvision-tiny-densenet-io.pt", weights_only=True)
    got = run_onnx(ort_session(out / "model.onnx"), io["input"].numpy())
    assert np.max(np.abs(got - io["output"].numpy())) <= 1e-4
    assert (out / "model.onnx").read_bytes() == (good_build / "model.onnx").read_bytes()


def test_rebuild_is_byte_identical_and_replaces_the_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    first, second = tmp_path / "a" / "tiny", tmp_path / "b" / "tiny"
    for out in (first, second, second):  # the third run replaces a build
        assert build(capsys, TINY_SPEC, "--seed", "7", "-o", str(out))[0] == 0
    assert snapshot(first) == snapshot(second)
    assert json.loads((first / "manifest.json").read_text())["seed"] == 7
    assert sorted(p.name for p in second.parent.iterdir()) == ["tiny"]
    assert build(capsys, TINY_SPEC, "--seed", "8", "-o", str(second))[0] == 0
    assert (first / "model.onnx").read_bytes() != (second / "model.onnx").read_bytes()


def test_default_output_folder_and_short_output_off_a_terminal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = build(capsys, TINY_SPEC)
    assert code == 0 and err == ""
    assert out.splitlines() == [out.strip()] and out.startswith(
        "built build/torchvision-tiny/: model.onnx (fp32, opset 19"
    )
    assert (tmp_path / "build" / "torchvision-tiny" / "model.onnx").is_file()


def test_plain_export_has_no_rewrites(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, good_build: Path
) -> None:
    out = tmp_path / "plain"
    assert build(capsys, TINY_SPEC, "--weights", WEIGHTS, "--plain", "-o", str(out))[0] == 0
    plain = json.loads((out / "manifest.json").read_text())
    frozen = json.loads((good_build / "manifest.json").read_text())
    assert plain["rewrites"] == [] and plain["parity"]["fp32"]["passed"]
    assert plain["model"]["sha256"] != frozen["model"]["sha256"]


def test_batch_tiled_build_reproduces_torchvision(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, good_build: Path
) -> None:
    out = tmp_path / "tiled"
    assert build(capsys, TINY_SPEC, "--weights", WEIGHTS, "--batch-tile", "2", "-o", str(out))[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["batch_tile"] == 2 and manifest["rewrites"] == [
        "fold_bn",
        "swap_pool_conv",
        "batch_tiling",
    ]
    assert manifest["model"]["ops"]["Scan"] == 1 and manifest["parity"]["fp32"]["passed"]
    tiling = manifest["batch_tiling"]
    assert tiling["setting"] == "2" and tiling["kept"] and tiling["max_abs_err"] <= 1e-6
    assert manifest["inputs"] == [{"name": "images", "shape": ["batch", 3, 64, 64], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "logits", "shape": ["batch", 10], "dtype": "float32"}]
    io = torch.load(FIXTURES / "torchvision-tiny-densenet-io.pt", weights_only=True)
    x = io["input"].numpy()
    got = run_onnx(ort_session(out / "model.onnx"), x)
    assert np.max(np.abs(got - io["output"].numpy())) <= 1e-4
    untiled = run_onnx(ort_session(good_build / "model.onnx"), x)
    np.testing.assert_allclose(got, untiled, rtol=1e-6, atol=1e-6)


def test_batch_tile_scope() -> None:
    """What each --batch-tile setting proposes: nothing by default, N as asked, and for auto a cache-sized
    candidate only where onnxruntime runs the model on the CPU and a tile would be smaller than --batch-range's MAX."""
    from densegraph.export.tiling import choose_batch_tile
    from densegraph.graph import graph_of
    from densegraph.spec import load_spec

    densenet121 = graph_of(load_spec(str(REPO / "specs" / "densenet121.yaml")))
    tiny = graph_of(load_spec(TINY_SPEC))
    assert choose_batch_tile(densenet121) is None  # off is the default
    assert choose_batch_tile(densenet121, "3", precision="fp16") == 3
    assert choose_batch_tile(densenet121, "auto") == 1
    assert choose_batch_tile(densenet121, "auto", precision="int8") == 5
    for kwargs in ({"precision": "fp16"}, {"target": "tensorrt"}, {"plain": True}):
        assert choose_batch_tile(densenet121, "auto", **kwargs) is None, kwargs  # type: ignore[arg-type]
    assert choose_batch_tile(tiny, "auto") is None  # 128 samples a tile: more than --batch-range's MAX of 32
    assert choose_batch_tile(tiny, "auto", max_batch=256) == 128


def test_auto_batch_tiling_keeps_only_a_faster_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, good_build: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--batch-tile auto`` times its candidate against the untiled model on this machine and keeps the faster:
    a tile of 128 samples at the timed batch of 8 pads every call to 16 times the work, so it loses here."""
    auto = tmp_path / "auto"
    argv = [TINY_SPEC, "--weights", WEIGHTS, "--batch-tile", "auto", "--batch-range", "1:8:256"]
    assert build(capsys, *argv, "-o", str(auto))[0] == 0
    manifest = json.loads((auto / "manifest.json").read_text())
    tiling = manifest["batch_tiling"]
    assert tiling["tile"] == 128 and tiling["batch"] == 8 and not tiling["kept"]
    assert tiling["tiled_ms"] > tiling["untiled_ms"] and tiling["speedup"] < 1
    assert manifest["batch_tile"] is None and "batch_tiling" not in manifest["rewrites"]
    assert (auto / "model.onnx").read_bytes() == (good_build / "model.onnx").read_bytes()
    # a measurement that favours the tiles keeps them (the timing itself is the machine's, not asserted)
    import densegraph.export.tiling as tiling

    faster = {"untiled_ms": 2.0, "tiled_ms": 1.0, "speedup": 2.0, "rounds": 7}
    monkeypatch.setattr(tiling, "time_batch_tiling", lambda *a, **k: faster)
    assert build(capsys, *argv, "-o", str(auto))[0] == 0
    manifest = json.loads((auto / "manifest.json").read_text())
    assert manifest["batch_tile"] == 128 and manifest["batch_tiling"]["kept"]
    assert manifest["model"]["ops"]["Scan"] == 1
    # a margin, not a tie, decides: a measurement within it keeps the untiled model
    monkeypatch.setattr(tiling, "time_batch_tiling", lambda *a, **k: {**faster, "speedup": 1.01})
    assert build(capsys, *argv, "-o", str(auto))[0] == 0
    assert json.loads((auto / "manifest.json").read_text())["batch_tile"] is None


def test_fp16_build(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "fp16"
    code, stdout, _ = build(capsys, TINY_SPEC, "--weights", WEIGHTS, "--precision", "fp16", "-o", str(out))
    assert code == 0 and "fp16 max rel err" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "fp16" and manifest["fp16"]["warnings"] == []
    assert manifest["parity"]["fp32"]["passed"]
    fp16 = manifest["parity"]["fp16"]
    assert fp16["passed"] and fp16["max_rel_err"] <= 1e-2
    assert manifest["inputs"][0]["dtype"] == manifest["outputs"][0]["dtype"] == "float32"
    model = onnx.load(out / "model.onnx")
    assert {t.data_type for t in model.graph.initializer} <= {
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.INT64,
    }
    assert sorted(p.name for p in out.iterdir()) == ["MODEL.md", "graph.svg", "manifest.json", "model.onnx"]


@pytest.mark.slow
def test_int8_build_of_a_trained_model_keeps_top1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("densegraph.export.quantize")
    from densegraph.training import train

    train(DIGITS_SPEC, "digits", tmp_path / "run", epochs=6, log=lambda _: None)
    out = tmp_path / "int8"
    code, stdout, err = build(
        capsys, DIGITS_SPEC, "--weights", str(tmp_path / "run" / "best.pt"), "--precision", "int8",
        "--calib", "digits", "-o", str(out),
    )  # fmt: skip
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    int8 = manifest["parity"]["int8"]
    assert int8["passed"] and int8["samples"] == 360  # the digits val split
    assert int8["top1_fp32"] >= 0.9
    assert abs(int8["top1_fp32"] - int8["top1_int8"]) <= 0.01
    assert int8["top1_agreement"] >= 0.97 and int8["sqnr_db"] >= 15
    calibration = manifest["calibration"]
    assert (calibration["source"], calibration["split"], calibration["calibration"]["samples"]) == (
        "digits",
        "train",
        256,
    )
    assert "int8 logits SQNR" in stdout and err == ""
    model = onnx.load(out / "model.onnx")
    assert (
        any(n.op_type == "QuantizeLinear" for n in model.graph.node) and model.producer_name == "densegraph"
    )
    assert sorted(p.name for p in out.iterdir()) == ["MODEL.md", "graph.svg", "manifest.json", "model.onnx"]


def test_no_bias_correction_keeps_the_quantizers_biases(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((4, 3, 64, 64), np.float32))
    out = tmp_path / "int8"
    argv = [
        "--precision",
        "int8",
        "--calib",
        str(tmp_path / "calib.npy"),
        "--no-bias-correction",
        "-o",
        str(out),
    ]
    code, _, err = build(capsys, TINY_SPEC, "--weights", WEIGHTS, *argv)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["bias_correction"] is False and manifest["parity"]["int8"]["passed"]


def test_int8_build_with_unlabelled_calibration(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((16, 3, 64, 64), np.float32))
    out = tmp_path / "int8"
    argv = [
        "--precision",
        "int8",
        "--calib",
        str(tmp_path / "calib.npy"),
        "--calib-samples",
        "8",
        "--calib-batch",
        "3",
        "--batch-tile",
        "3",
        "-o",
        str(out),
    ]
    code, stdout, err = build(capsys, TINY_SPEC, "--weights", WEIGHTS, *argv)
    assert code == 0 and err == "", err  # onnxruntime.quantization's root-logger warnings are kept off stderr
    manifest = json.loads((out / "manifest.json").read_text())
    int8 = manifest["parity"]["int8"]
    assert int8["passed"] and int8["samples"] == 8 and "top1_int8" not in int8
    assert manifest["calibration"]["split"] is None and manifest["calibration"]["calibration"]["samples"] == 8
    assert manifest["calibration"]["calibration"]["batch_size"] == 3  # --calib-batch reached the calibrator
    # bias correction on by default: every quantized conv and the classifier, means measured on the 8 samples
    assert manifest["calibration"]["bias_correction"]["layers"] > 10
    assert manifest["calibration"]["bias_correction"]["samples"] == 8
    assert manifest["inputs"][0]["dtype"] == "float32"
    # tiled after quantization and scoring: the int8 graph runs inside the scan, checked against itself untiled
    assert manifest["batch_tile"] == 3 and manifest["model"]["ops"]["Scan"] == 1
    assert manifest["batch_tiling"]["kept"] and manifest["batch_tiling"]["max_abs_err"] <= 1e-5
    assert manifest["model"]["ops"]["QuantizeLinear"] > 0
    assert manifest["rewrites"] == [
        "fold_bn",
        "swap_pool_conv",
        "bn_to_depthwise",
        "avgpool_to_depthwise",
        "batch_tiling",
    ]
    # the quantizer's names extend the graph's, and the metadata survives quantizing and tiling
    model = onnx.load(out / "model.onnx")
    props = {p.key: p.value for p in model.metadata_props}
    assert props["densegraph.batch_tile"] == "3" and props["densegraph.spec"] == "torchvision-tiny"
    assert {"densegraph.nodes", "densegraph.preprocess", "densegraph.graph_sha256"} <= set(props)
    scan = next(n for n in model.graph.node if n.op_type == "Scan")
    body = next(a.g for a in scan.attribute if a.name == "body")
    names = {n.name for n in body.node}
    assert "features.denseblock1.denselayer1.relu1_QuantizeLinear" in names
    assert "features.transition1.pool" in names  # the pool as a depthwise conv keeps the pool's name


# ---------------------------------------------------------------------------------------------------------
# failures: one line, exit 2, the folder as it was


def _corrupt(tmp_path: Path) -> list[str]:
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(Path(WEIGHTS).read_bytes()[:5000])
    return [TINY_SPEC, "--weights", str(bad)]


def _mismatched(tmp_path: Path) -> list[str]:
    from densegraph.lower.torch import to_torch

    other = tmp_path / "digits.pth"
    torch.save(to_torch(DIGITS_SPEC, seed=0).state_dict(), other)
    return [TINY_SPEC, "--weights", str(other)]


def _empty_calib_folder(tmp_path: Path) -> list[str]:
    (tmp_path / "calib").mkdir()
    return [TINY_SPEC, "--precision", "int8", "--calib", str(tmp_path / "calib")]


def _calib_of_another_size(tmp_path: Path) -> list[str]:
    np.save(tmp_path / "calib.npy", np.zeros((4, 3, 32, 32), np.float32))
    return [TINY_SPEC, "--precision", "int8", "--calib", str(tmp_path / "calib.npy")]


def _opset(tmp_path: Path) -> list[str]:
    return [TINY_SPEC, "--opset", "22"]


def _parity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import densegraph.export.onnx as onnx_export

    monkeypatch.setitem(onnx_export.TOLERANCES, "fp32", 0.0)
    return [TINY_SPEC, "--weights", WEIGHTS]


def _int8_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import densegraph.export.onnx as onnx_export

    monkeypatch.setitem(onnx_export.TOLERANCES, "int8_sqnr_db", 1000.0)
    np.save(tmp_path / "calib.npy", np.zeros((4, 3, 64, 64), np.float32) + 0.5)
    return [TINY_SPEC, "--precision", "int8", "--calib", str(tmp_path / "calib.npy")]


FAILURES = {
    "corrupt-weights": (_corrupt, "not a PyTorch weights file"),
    "mismatched-weights": (_mismatched, "the weights do not fit"),
    "empty-calibration-folder": (_empty_calib_folder, "no class subfolders"),
    "calibration-of-another-size": (_calib_of_another_size, "expected [N, 3, 64, 64]"),
    "unsupported-opset": (_opset, "unsupported ONNX opset 22"),
    "parity-gate": (_parity, "parity check failed"),
    "int8-gate": (_int8_gate, "the int8 model is too far from fp32"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failed_rebuild_leaves_the_previous_build(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    existing: tuple[Path, dict[str, bytes]],
    case: str,
) -> None:
    out, before = existing
    make, message = FAILURES[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    argv = make(inputs, monkeypatch) if case.endswith("-gate") else make(inputs)  # type: ignore[operator]
    code, stdout, err = build(capsys, *argv, "-o", str(out))
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and "error: " in err and message in err, err
    shutil.rmtree(inputs)
    assert_untouched(out, before)


def test_internal_error_also_leaves_the_previous_build(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    existing: tuple[Path, dict[str, bytes]],
) -> None:
    import densegraph.viz

    def broken(*_: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(densegraph.viz, "write_graph", broken)
    out, before = existing
    with pytest.raises(RuntimeError, match="a bug"):
        main(["build", TINY_SPEC, "-o", str(out)])
    assert_untouched(out, before)


def test_unwritable_output(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    code, _, err = build(capsys, TINY_SPEC, "-o", str(tmp_path / "file" / "out"))
    assert (
        code == 2 and err.count("\n") == 1 and "cannot create the output folder" in err and "is a file" in err
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_output_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        code, _, err = build(capsys, TINY_SPEC, "-o", str(locked / "out"))
    finally:
        locked.chmod(0o755)
    assert code == 2 and "cannot create the output folder" in err and "Permission denied" in err
    assert list(locked.iterdir()) == []


def test_refuses_to_replace_a_folder_that_is_no_build(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    code, _, err = build(capsys, TINY_SPEC, "-o", str(folder))
    assert code == 2 and "holds no densegraph build" in err
    assert snapshot(folder) == {"notes.txt": b"keep me"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--precision", "int8"], "int8 needs calibration data"),
        (["--calib", "digits"], "--calib is only used with --precision int8"),
        (["--dla", "0", "--workspace", "2"], "--workspace, --dla apply only to TensorRT engines"),
        (["--version-compat"], "--version-compat applies only to TensorRT engines"),
        (
            ["--calib-samples", "0", "--precision", "int8", "--calib", "digits"],
            "--calib-samples must be positive",
        ),
        (
            ["--calib-batch", "0", "--precision", "int8", "--calib", "digits"],
            "--calib-batch must be positive",
        ),
        (["--batch-tile", "2", "--target", "tensorrt"], "--batch-tile 2 does not go with --target tensorrt"),
        (["--batch-tile", "2", "--plain"], "--batch-tile 2 does not go with --plain"),
    ],
)
def test_argument_mistakes_fail_before_any_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    code, _, err = build(capsys, TINY_SPEC, *argv, "-o", str(tmp_path / "out"))
    assert code == 2 and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_batch_tile_takes_auto_off_or_a_count(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit) as exit_:
            build(capsys, TINY_SPEC, "--batch-tile", bad, "-o", str(tmp_path / "out"))
        assert exit_.value.code == 2
        assert "expected off, auto or a positive number of samples" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# --target tensorrt


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine as CI sees it: no tensorrt module, no GPU (whatever is really installed)."""
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    from densegraph.export.tensorrt import cuda, trt_api

    monkeypatch.setattr(cuda, "cuda_available", lambda: False)
    monkeypatch.setattr(trt_api, "tensorrt_installed", lambda: False)


def test_tensorrt_target_without_tensorrt_keeps_the_onnx_and_script(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, no_tensorrt: None
) -> None:
    out = tmp_path / "trt"
    code, stdout, err = build(
        capsys, TINY_SPEC, "--target", "tensorrt", "--precision", "fp16", "-o", str(out)
    )
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and "no TensorRT engine built: no CUDA GPU is visible" in err
    assert ".tmp" not in err and str(out / "build_engine.sh") in err
    assert sorted(p.name for p in out.iterdir()) == [
        "MODEL.md",
        "build_engine.sh",
        "graph.svg",
        "manifest.json",
        "model.onnx",
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == "tensorrt" and manifest["engine"]["built"] is False
    assert manifest["engine"]["script"] == "build_engine.sh"
    assert manifest["model"]["sha256"] == sha256(out / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trt"]


def _fake_build_engine(calls: list[dict[str, Any]], fail: bool = False) -> Any:
    def build_engine(onnx_path: Path, out_dir: Path, options: Any, **kw: Any) -> dict[str, Any]:
        calls.append({"onnx": Path(onnx_path), "out": Path(out_dir), "options": options})
        (Path(out_dir) / "model.engine").write_bytes(b"plan")
        (Path(out_dir) / "build_engine.sh").write_text("#!/bin/sh\n")
        if fail:
            raise BuildError("the engine disagrees with onnxruntime")
        return {
            "engine_path": str(Path(out_dir) / "model.engine"),
            "engine_sha256": hashlib.sha256(b"plan").hexdigest(),
            "tensorrt_version": "10.16.1.11",
            "gpu": {"name": "Fake GPU", "compute_capability": "8.7"},
            "verification": {"summary": "pass"},
        }

    return build_engine


def test_tensorrt_target_builds_the_engine_in_the_output_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(trt_backend, "build_engine", _fake_build_engine(calls))
    out = tmp_path / "trt"
    argv = [
        "--target",
        "tensorrt",
        "--precision",
        "fp16",
        "--batch-range",
        "2:4:16",
        "--dla",
        "1",
        "--workspace",
        "2",
    ]
    code, stdout, _ = build(
        capsys, TINY_SPEC, *argv, "--timing-cache", str(tmp_path / "cache"), "-o", str(out)
    )
    assert code == 0 and stdout.startswith(f"built {out}/")
    (call,) = calls
    assert call["out"] == out and call["onnx"] == out / "model.onnx"
    options = call["options"]
    assert (options.precision, options.batch, options.dla_core, options.workspace_gib) == (
        "fp16",
        (2, 4, 16),
        1,
        2.0,
    )
    assert options.timing_cache == str(tmp_path / "cache")
    assert options.hardware_compat is False and options.version_compat is False
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"]["built"] is True and manifest["engine"]["file"] == "model.engine"
    assert manifest["batch"] == {"min": 2, "opt": 4, "max": 16}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trt"]


def test_failed_engine_build_restores_the_previous_build(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    existing: tuple[Path, dict[str, bytes]],
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(trt_backend, "build_engine", _fake_build_engine(calls, fail=True))
    out, before = existing
    code, _, err = build(capsys, TINY_SPEC, "--target", "tensorrt", "-o", str(out))
    assert code == 2 and "the engine disagrees with onnxruntime" in err
    assert calls and calls[0]["out"] == out
    assert_untouched(out, before)


# ---------------------------------------------------------------------------------------------------------
# the shipped model, end to end


@pytest.mark.slow
def test_densenet169_end_to_end(tmp_path: Path) -> None:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "densegraph", "build", str(REPO / "specs" / "densenet169.yaml"), "-o", "d169"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout.startswith("built d169/: model.onnx (fp32, opset 19")
    manifest = json.loads((tmp_path / "d169" / "manifest.json").read_text())
    assert manifest["params"] == 14_149_480 and manifest["macs"] == 3_359_843_328
    assert manifest["parity"]["fp32"]["passed"] and manifest["seed"] == 0
    assert manifest["outputs"][0]["shape"] == ["batch", 1000]
    assert manifest["batch_tile"] is None and not {"Loop", "Scan"} & set(manifest["model"]["ops"])
    print(f"densenet169 build: {seconds:.1f} s")


def test_features_backbone_builds_a_named_multi_output_onnx(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import onnx

    spec = tmp_path / "backbone.yaml"
    spec.write_text(
        f"extends: {REPO / 'tests' / 'data' / 'timm-tiny-vovnet.yaml'}\n".replace(
            str(REPO), os.path.relpath(REPO, tmp_path)
        )
        + "head: {kind: features, outputs: [stage2, stage4]}\n"
    )
    code, out, err = build(capsys, str(spec), "-o", str(tmp_path / "out"))
    assert code == 0, err
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    shapes = {
        o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output
    }
    assert shapes == {"stage2": ["batch", 32, 8, 8], "stage4": ["batch", 64, 2, 2]}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["parity"]["fp32"]["passed"]
    # fp16 gates every output
    code, out, err = build(capsys, str(spec), "-o", str(tmp_path / "out16"), "--precision", "fp16")
    assert code == 0, err
    manifest = json.loads((tmp_path / "out16" / "manifest.json").read_text())
    assert manifest["parity"]["fp16"]["passed"]
    assert [o["name"] for o in manifest["outputs"]] == ["stage2", "stage4"]
    code, out, err = build(capsys, str(spec), "-o", str(tmp_path / "out8"), "--labels", str(spec))
    assert code == 2 and "--labels names a classifier's classes" in err and not (tmp_path / "out8").exists()


def test_a_backbone_with_one_output_builds_in_every_precision(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """One named map is still a backbone's output, not logits: each precision's gate runs it by name."""
    spec = tmp_path / "one.yaml"
    relative = os.path.relpath(REPO / "tests" / "data" / "torchvision-tiny.yaml", tmp_path)
    spec.write_text(f"extends: {relative}\nname: one\nhead: {{kind: features, outputs: [block2]}}\n")
    np.save(
        tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((8, 3, 64, 64), dtype=np.float32)
    )
    for precision, extra in (("fp32", []), ("fp16", []), ("int8", ["--calib", str(tmp_path / "calib.npy")])):
        out = tmp_path / precision
        code, stdout, err = build(capsys, str(spec), "--precision", precision, *extra, "-o", str(out))
        assert code == 0, err
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["outputs"] == [{"name": "block2", "shape": ["batch", 40, 8, 8], "dtype": "float32"}]
        assert manifest["parity"][precision]["passed"]
    assert list(manifest["parity"]["int8"]["outputs"]) == ["block2"]


@pytest.mark.parametrize("target", ["onnx", "tensorrt"])
def test_int8_backbone_keeps_every_named_map_close_to_pytorch(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, target: str, no_tensorrt: None
) -> None:
    """int8 of a features head, both forms (onnxruntime's cpu form; TensorRT's symmetric Q/DQ, its engine
    left to the device): the outputs are still the named float32 maps, each gated and each close to the fp32
    PyTorch module's on images it was not calibrated on."""
    from densegraph.lower.torch import to_torch
    from densegraph.testing import randomize_batchnorm

    module = randomize_batchnorm(to_torch(FEATURES_SPEC, seed=1).eval(), seed=1)
    torch.save(module.state_dict(), tmp_path / "w.pt")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", rng.standard_normal((32, 3, 64, 64), dtype=np.float32))
    out = tmp_path / "int8"
    argv = [
        "--weights",
        str(tmp_path / "w.pt"),
        "--precision",
        "int8",
        "--calib",
        str(tmp_path / "calib.npy"),
    ]
    code, stdout, err = build(capsys, FEATURES_SPEC, *argv, "--target", target, "-o", str(out))
    if target == "onnx":
        assert code == 0 and err == "", err
        assert "int8 feature map SQNR block1 " in stdout
    else:  # no TensorRT here: the ONNX and build_engine.sh are kept for the device
        assert code == 2 and "no TensorRT engine built" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["form"] == ("cpu" if target == "onnx" else "qdq")
    int8 = manifest["parity"]["int8"]
    assert int8["passed"] and int8["criterion"] == "SQNR of every feature map >= 15 dB"
    assert set(int8["outputs"]) == set(FEATURE_MAPS) and "top1_agreement" not in int8
    assert int8["sqnr_db"] == min(o["sqnr_db"] for o in int8["outputs"].values())
    assert manifest["outputs"] == [
        {"name": n, "shape": ["batch", *shape], "dtype": "float32"} for n, shape in FEATURE_MAPS.items()
    ]
    assert "feature map SQNR `block1`" in (out / "MODEL.md").read_text()
    model = onnx.load(out / "model.onnx")
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    props = {p.key: p.value for p in model.metadata_props}
    assert [o["name"] for o in json.loads(props["densegraph.outputs"])] == list(FEATURE_MAPS)
    ops = manifest["model"]["ops"]
    assert ops["QuantizeLinear"] > 0 and ("QLinearConv" not in ops)  # Q/DQ, onnxruntime fuses on load

    # independent reference: the fp32 PyTorch module on fresh images; each int8 map within the bar of it
    x = rng.standard_normal((8, 3, 64, 64), dtype=np.float32)
    with torch.inference_mode():
        reference = {k: v.numpy() for k, v in module(torch.from_numpy(x)).items()}
    session = ort_session(out / "model.onnx")
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": x}), strict=True))
    assert list(got) == list(FEATURE_MAPS)
    for name, ref in reference.items():
        noise = float(np.sum((got[name].astype(np.float64) - ref) ** 2))
        sqnr = 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise)
        assert sqnr >= 15, (name, sqnr)


def test_int8_backbone_below_the_bar_names_the_worst_map(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from densegraph import parity

    monkeypatch.setitem(parity.TOLERANCES, "int8_features_sqnr_db", 1000.0)
    np.save(
        tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((8, 3, 64, 64), dtype=np.float32)
    )
    out = tmp_path / "int8"
    code, _, err = build(
        capsys, FEATURES_SPEC, "--precision", "int8", "--calib", str(tmp_path / "calib.npy"), "-o", str(out)
    )
    assert code == 2 and err.count("\n") == 1 and not out.exists()
    assert (
        "the int8 model is too far from fp32: block" in err and "SQNR of every feature map >= 1000 dB" in err
    )
