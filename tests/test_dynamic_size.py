"""A dynamic input size (``input.size: dynamic`` or ``{min, opt, max}``) end to end: the spec, the graph's
range checks and costs, the ONNX with symbolic height and width against PyTorch at several sizes, the build's parity
gates at min/opt/max in fp32, fp16 and int8, the runners, summary and the CLI. TensorRT is in
tests/export/test_tensorrt_dynamic.py, other runtimes in tests/test_portability.py."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from densegraph import build, build_graph, load_spec
from densegraph.cli import main
from densegraph.cost import totals
from densegraph.errors import DensegraphError, SpecError
from densegraph.export.onnx import onnx_from_module
from densegraph.graph import graph_sha256
from densegraph.lower.torch import freeze, to_torch
from densegraph.runners import OnnxRuntimeRunner, TorchRunner
from densegraph.spec import SizeRange, spec_from_string
from densegraph.testing import randomize_batchnorm

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
DIGITS = DATA / "tiny-digits-dynamic.yaml"  # 1 channel, 8x8 .. 24x20, opt 16x16
BACKBONE = DATA / "tiny-features-dynamic.yaml"  # blocks 2, 3 at strides 2, 4; 16x16 .. 64x48, opt 32x32
FAMILY = (DATA / "family-tiny.yaml").read_text()  # every op of the family specs, ceil-mode and blur pools


def _family(size: str) -> str:
    return FAMILY.replace("size: 27", f"size: {size}")


# ---------------------------------------------------------------------------------------------------------
# spec and graph


def test_dynamic_is_a_documented_range_and_opt_is_the_nominal_size() -> None:
    spec = spec_from_string("growth_rate: 4\nblocks: [2]\ninput: {size: dynamic}")
    assert spec.input_range == SizeRange((128, 128), (224, 224), (448, 448))
    assert spec.input_size == (224, 224)
    ranged = spec_from_string(
        "growth_rate: 4\nblocks: [2]\ninput: {size: {min: 96, opt: [160, 192], max: 320}}"
    )
    assert (ranged.input_range.min, ranged.input_range.opt, ranged.input_range.max) == (  # type: ignore[union-attr]
        (96, 96),
        (160, 192),
        (320, 320),
    )
    assert ranged.input_size == (160, 192)
    # the imagenet stem's default preprocessing is torchvision's, at the opt size
    assert ranged.preprocess is not None and ranged.preprocess.crop == (160, 192)
    assert ranged.preprocess.resize == 182  # floor(160 / 0.875)
    assert spec_from_string("growth_rate: 4\nblocks: [2]\ninput: {size: 64}").input_range is None


def test_costs_are_the_opt_sizes_and_the_digest_tells_the_range() -> None:
    dynamic = build_graph(load_spec(DIGITS))
    fixed = build_graph(
        spec_from_string((DATA / "tiny-digits.yaml").read_text().replace("size: 8", "size: 16"))
    )
    assert dynamic.graph["input_range"] == {"min": [8, 8], "opt": [16, 16], "max": [24, 20]}
    assert dynamic.graph["input_shape"] == (1, 16, 16)
    assert totals(dynamic) == totals(fixed)
    assert graph_sha256(dynamic) != graph_sha256(fixed)
    assert "input_range" not in fixed.graph  # a fixed graph keeps its digest


def _takes(size: int) -> bool:
    try:
        build_graph(spec_from_string(_family(str(size))))
    except SpecError:
        return False
    return True


def test_the_smallest_min_is_the_smallest_size_the_network_takes() -> None:
    """Independent of the range check: the fixed-size network, built at each size, collapses below some size;
    a range is taken exactly when its min is one of the sizes the fixed network takes."""
    smallest = next(s for s in range(1, 27) if _takes(s))
    assert all(_takes(s) for s in (smallest + 1, smallest + 2, 13, 19))  # monotone, as the check assumes
    build_graph(spec_from_string(_family(f"{{min: {smallest}, opt: 27, max: 64}}")))
    text = _family(f"{{min: {smallest - 1}, opt: 27, max: 64}}")
    with pytest.raises(SpecError, match=f"smallest input {smallest - 1}x{smallest - 1}") as info:
        build_graph(spec_from_string(text))
    (line,) = [i for i, row in enumerate(text.splitlines(), 1) if row.startswith("input:")]
    col = text.splitlines()[line - 1].index(f"min: {smallest - 1}") + len("min: ") + 1
    assert info.value.loc is not None and (info.value.loc.line, info.value.loc.col) == (line, col)


def test_a_backbones_sizes_must_be_multiples_of_its_deepest_stride() -> None:
    text = BACKBONE.read_text()
    graph = build_graph(load_spec(BACKBONE))
    assert [(o["name"], o["stride"]) for o in graph.graph["outputs"]] == [("block2", 2), ("block3", 4)]
    for bad, key in (("min: 16", "min: 18"), ("max: [64, 48]", "max: [64, 50]"), ("opt: 32", "opt: 30")):
        with pytest.raises(SpecError, match="not a multiple of 4") as info:
            build_graph(spec_from_string(text.replace(bad, key)))
        assert key.split(":")[0] in info.value.message
    # a classifier pools globally: any size from min up
    build_graph(spec_from_string(_family("{min: 17, opt: 27, max: 63}")))


# ---------------------------------------------------------------------------------------------------------
# ONNX against PyTorch


def _module(text: str) -> torch.nn.Module:
    module = to_torch(build_graph(spec_from_string(text)), seed=0)
    randomize_batchnorm(module, seed=1)
    return module.eval()


@pytest.mark.parametrize("frozen", [False, True], ids=["unrewritten", "frozen"])
def test_onnx_runs_every_size_as_pytorch_does(frozen: bool) -> None:
    reference = _module(_family("{min: 17, opt: 27, max: 64}"))
    exported = freeze(reference) if frozen else reference
    model = onnx_from_module(exported)
    dims = [
        [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*model.graph.input, *model.graph.output)
    ]
    assert dims == [["batch", 3, "height", "width"], ["batch", 5]]
    # nothing bakes a spatial size in: no reshape, no shape arithmetic, pooling global
    ops = {n.op_type for n in model.graph.node}
    assert "GlobalAveragePool" in ops and not ops & {"Reshape", "Shape", "Resize", "Expand", "Slice"}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for n, h, w in ((1, 17, 17), (2, 27, 27), (3, 31, 22), (1, 64, 64), (2, 40, 63)):
        x = rng.standard_normal((n, 3, h, w), dtype=np.float32)
        with torch.inference_mode():
            expected = reference(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(session.run(None, {"images": x})[0], expected, rtol=0, atol=1e-4)


def test_backbone_onnx_maps_follow_the_size() -> None:
    reference = _module(BACKBONE.read_text())
    model = onnx_from_module(reference)
    assert [
        [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.output
    ] == [
        ["batch", 16, "block2_height", "block2_width"],
        ["batch", 16, "block3_height", "block3_width"],
    ]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for h, w in ((16, 16), (32, 32), (64, 48), (24, 40)):
        x = np.random.default_rng(h).standard_normal((2, 3, h, w), dtype=np.float32)
        with torch.inference_mode():
            expected = reference(torch.from_numpy(x))
        got = dict(zip(("block2", "block3"), session.run(None, {"images": x}), strict=True))
        assert got["block2"].shape == (2, 16, h // 2, w // 2) and got["block3"].shape == (
            2,
            16,
            h // 4,
            w // 4,
        )
        for name, value in got.items():
            np.testing.assert_allclose(value, expected[name].numpy(), rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# the build: gates at min, opt and max; reproducible; metadata; runners


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dynamic-builds")
    out = {}
    for precision in ("fp32", "fp16", "int8"):
        calib = {"calib": "digits", "calib_samples": 64} if precision == "int8" else {}
        out[precision] = build(DIGITS, output=root / precision, precision=precision, **calib).output
    out["again"] = build(DIGITS, output=root / "again").output
    out["backbone"] = build(BACKBONE, output=root / "backbone", precision="fp16").output
    images = _image_folder(root / "images")
    out["backbone-int8"] = build(
        BACKBONE, output=root / "backbone-int8", precision="int8", calib=str(images)
    ).output
    return out


def _image_folder(root: Path) -> Path:
    """Two classes of 12 random 48x40 RGB images: a calibration source the build can resize to any size."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


def test_build_gates_every_precision_at_min_opt_and_max(builds: dict[str, Path]) -> None:
    sizes = [[8, 8], [16, 16], [16, 16], [24, 20]]
    for precision in ("fp32", "fp16", "int8"):
        manifest = json.loads((builds[precision] / "manifest.json").read_text())
        fp32 = manifest["parity"]["fp32"]
        assert fp32["passed"] and fp32["batches"] == [1, 1, 3, 1] and fp32["sizes"] == sizes
        if precision == "fp16":
            assert manifest["parity"]["fp16"]["sizes"] == sizes and manifest["parity"]["fp16"]["passed"]
    int8 = json.loads((builds["int8"] / "manifest.json").read_text())
    assert int8["calibration"]["size"] == [16, 16]  # calibrated at opt
    at = int8["parity"]["int8"]["sizes"]
    assert sorted(at) == ["24x20", "8x8"] and all(r["passed"] and r["samples"] > 0 for r in at.values())
    backbone = json.loads((builds["backbone"] / "manifest.json").read_text())
    assert backbone["parity"]["fp16"]["sizes"] == [[16, 16], [32, 32], [32, 32], [64, 48]]


def test_int8_backbone_keeps_its_symbolic_maps_and_is_gated_at_each_size(builds: dict[str, Path]) -> None:
    manifest = json.loads((builds["backbone-int8"] / "manifest.json").read_text())
    at = manifest["parity"]["int8"]["sizes"]
    assert sorted(at) == ["16x16", "64x48"]
    assert all(r["passed"] and sorted(r["outputs"]) == ["block2", "block3"] for r in at.values())
    model = onnx.load(builds["backbone-int8"] / "model.onnx")
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.output]
    assert dims == [
        ["batch", 16, "block2_height", "block2_width"],
        ["batch", 16, "block3_height", "block3_width"],
    ]


def test_build_is_byte_reproducible_and_says_its_range(builds: dict[str, Path]) -> None:
    assert (builds["fp32"] / "model.onnx").read_bytes() == (builds["again"] / "model.onnx").read_bytes()
    model = onnx.load(builds["fp32"] / "model.onnx")
    props = {p.key: p.value for p in model.metadata_props}
    preprocess = json.loads(props["densegraph.preprocess"])
    assert preprocess["input_range"] == {"min": [8, 8], "opt": [16, 16], "max": [24, 20]}
    assert preprocess["input_size"] == [1, 16, 16] and preprocess["crop"] == [16, 16]
    card = (builds["fp32"] / "MODEL.md").read_text()
    assert "from 8x8 to 24x20, tuned for (and preprocessed to) 16x16" in card
    assert "batch 1 at 8x8, 1 at 16x16, 3 at 16x16, 1 at 24x20" in card


def test_onnxruntime_runner_takes_the_range_and_refuses_outside(builds: dict[str, Path]) -> None:
    torch_runner = TorchRunner(DIGITS)
    with OnnxRuntimeRunner(builds["fp32"] / "model.onnx") as runner, torch_runner:
        assert (
            runner.size_range == torch_runner.size_range == {"min": [8, 8], "opt": [16, 16], "max": [24, 20]}
        )
        assert runner.input_chw == torch_runner.input_chw == (1, 16, 16)  # what eval and predict feed
        assert runner.preprocess is not None and runner.preprocess["crop"] == [16, 16]
        for shape in ((2, 1, 8, 8), (1, 1, 24, 20), (3, 1, 11, 19)):
            x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
            np.testing.assert_allclose(runner(x), torch_runner(x), rtol=0, atol=1e-4)
        for which in (runner, torch_runner):
            with pytest.raises(DensegraphError) as info:
                which(np.zeros((1, 1, 25, 20), np.float32))
            line = info.value.format()
            assert "\n" not in line and "takes images from 8x8 to 24x20 (height x width), got 25x20" in line


def test_a_dynamic_onnx_without_its_range_is_refused(builds: dict[str, Path], tmp_path: Path) -> None:
    model = onnx.load(builds["fp32"] / "model.onnx")
    props = [p for p in model.metadata_props if p.key != "densegraph.preprocess"]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    onnx.save(model, tmp_path / "foreign.onnx")
    with pytest.raises(DensegraphError, match="fixed C, H, W") as info:
        OnnxRuntimeRunner(tmp_path / "foreign.onnx").load()
    assert "input_range" in (info.value.hint or "")


def test_predict_resizes_to_the_opt_size(builds: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    from densegraph.transforms import image_to_input

    Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 70), dtype=np.uint8)).save(
        tmp_path / "a.png"
    )
    with OnnxRuntimeRunner(builds["fp32"] / "model.onnx") as runner:
        x = image_to_input(tmp_path / "a.png", runner.preprocess or {}, 1)
    assert x.shape == (1, 16, 16)


# ---------------------------------------------------------------------------------------------------------
# summary and the CLI


def test_summary_says_where_costs_are_counted(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--json", str(DIGITS)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input_range"] == {"min": [8, 8], "opt": [16, 16], "max": [24, 20]}
    assert data["input_shape"] == [1, 1, 16, 16]
    assert main(["summary", str(DIGITS)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "dynamic input: height x width from 8x8 to 24x20" in text and "at the opt size 16x16" in text


def test_cli_refuses_a_bad_range_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bad.yaml"
    text = (DATA / "tiny-digits.yaml").read_text()
    spec.write_text(text.replace("size: 8}", "size: {min: 20, opt: 16, max: 24}}"))
    (line,) = [i for i, row in enumerate(text.splitlines(), 1) if row.startswith("input:")]
    assert main(["build", str(spec), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "min <= opt <= max" in err and err.startswith(f"{spec}:{line}:")
    assert not (tmp_path / "out").exists()


def test_spec_range_is_a_spec_field_not_a_graph_accident() -> None:
    spec = load_spec(DIGITS)
    assert build_graph(replace(spec, input_range=None)).graph.get("input_range") is None


def test_a_batch_tiled_dynamic_model_takes_the_range(tmp_path: Path) -> None:
    out = build(DIGITS, output=tmp_path / "tiled", batch_tile="2").output
    assert json.loads((out / "manifest.json").read_text())["batch_tile"] == 2
    x = np.random.default_rng(5).standard_normal((5, 1, 20, 11), dtype=np.float32)
    with OnnxRuntimeRunner(out / "model.onnx") as tiled, TorchRunner(DIGITS) as reference:
        np.testing.assert_allclose(tiled(x), reference(x), rtol=0, atol=1e-4)
