"""ONNX export: torchvision's own outputs reproduced by onnxruntime, dynamic batch, reproducible bytes, the
opset range, fp16 and the parity gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from densegraph.errors import BuildError
from densegraph.export.emit import onnx_from_graph
from densegraph.export.onnx import (
    DEFAULT_OPSET,
    MAX_OPSET,
    MIN_OPSET,
    check_onnx,
    check_opset,
    compare_outputs,
    fp16_from_onnx,
    io_signature,
    onnx_from_module,
    ort_session,
    parity_inputs,
    run_onnx,
    save_onnx,
    verify_int8,
    verify_outputs,
)
from densegraph.lower.torch import freeze, to_torch
from densegraph.lower.weights import load_weights
from densegraph.passes import FP16_PASSES

REPO = Path(__file__).resolve().parents[2]
TINY_SPEC = REPO / "tests" / "data" / "torchvision-tiny.yaml"
FIXTURES = REPO / "tests" / "fixtures"
WEIGHTS = {
    "current-keys": FIXTURES / "torchvision-tiny-densenet.pth",
    "legacy-keys": FIXTURES / "torchvision-tiny-densenet-legacy-keys.pth",
}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(weights: str | None = "current-keys") -> torch.nn.Module:
    module = to_torch(TINY_SPEC, seed=0)
    if weights:
        load_weights(module, WEIGHTS[weights])
    return module.eval()


def export(module: torch.nn.Module, path: Path, **kw: object) -> onnx.ModelProto:
    model = onnx_from_module(module, **kw)  # type: ignore[arg-type]
    save_onnx(model, path)
    return model


def export_fp16_ready(module: torch.nn.Module, path: Path) -> onnx.ModelProto:
    """The fp32 model the fp16 build converts: emitted with FP16_PASSES (no BatchNormalization left)."""
    model, _ = onnx_from_graph(module.graph, module.state_dict(), passes=FP16_PASSES, opset=DEFAULT_OPSET)
    model = check_onnx(model)
    save_onnx(model, path)
    return model


def torch_logits(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def torchvision_io() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "torchvision-tiny-densenet-io.pt", weights_only=True)


@pytest.mark.parametrize("weights", sorted(WEIGHTS))
@pytest.mark.parametrize("frozen", [False, True], ids=["plain", "frozen"])
def test_onnxruntime_reproduces_torchvision(
    tmp_path: Path, torchvision_io: dict[str, torch.Tensor], weights: str, frozen: bool
) -> None:
    module = tiny(weights)
    export(freeze(module, for_export=True) if frozen else module, tmp_path / "m.onnx")
    got = run_onnx(ort_session(tmp_path / "m.onnx"), torchvision_io["input"].numpy())
    assert np.max(np.abs(got - torchvision_io["output"].numpy())) <= 1e-4


def test_interface_dynamic_batch_and_inference_form(tmp_path: Path) -> None:
    module = tiny()
    model = export(module, tmp_path / "m.onnx")
    assert io_signature(model) == {
        "inputs": [{"name": "images", "shape": ["batch", 3, 64, 64], "dtype": "float32"}],
        "outputs": [{"name": "logits", "shape": ["batch", 10], "dtype": "float32"}],
    }
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [DEFAULT_OPSET]
    ops = {n.op_type for n in model.graph.node}
    assert "Identity" not in ops and not ops & {"Dropout", "BatchNormalizationTraining"}
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            assert len(node.output) == 1  # inference form: no running statistics out
    assert len({n.name for n in model.graph.node}) == len(model.graph.node)
    assert model.graph.value_info, "shapes are inferred"
    session = ort_session(tmp_path / "m.onnx")
    for batch in (1, 3):
        (x,) = parity_inputs((3, 64, 64), (batch,), seed=batch)
        got = run_onnx(session, x)
        assert got.shape == (batch, 10)
        assert np.max(np.abs(got - torch_logits(module, x))) <= 1e-4


def test_same_module_gives_the_same_bytes(tmp_path: Path) -> None:
    first = (tmp_path / "a.onnx", tmp_path / "b.onnx")
    for path in first:
        export(tiny(weights=None), path, name="tiny", doc="tiny model")
    assert first[0].read_bytes() == first[1].read_bytes()
    model = onnx.load(first[0])
    assert (model.producer_name, model.doc_string, model.graph.name) == ("densegraph", "tiny model", "tiny")
    assert not model.metadata_props and not any(n.doc_string for n in model.graph.node)
    names = [n.name for n in model.graph.node]
    assert names[:3] == ["features.conv0", "features.norm0", "features.relu0"]  # plain: nothing folded
    assert "features.denseblock1.denselayer2.concat" in names and "classifier" in names
    assert "pytorch" not in model.producer_version


@pytest.mark.parametrize("opset", [MIN_OPSET, MAX_OPSET])
def test_opset_range_ends_export_and_verify(tmp_path: Path, opset: int) -> None:
    module = tiny()
    model = export(module, tmp_path / "m.onnx", opset=opset)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    inputs = parity_inputs(module.input_shape, (1, 3))
    result = verify_outputs(tmp_path / "m.onnx", inputs, [torch_logits(module, x) for x in inputs], "fp32")
    assert result["passed"] and result["batches"] == [1, 3]


@pytest.mark.parametrize("opset", [MIN_OPSET - 1, MAX_OPSET + 1, 0])
def test_opsets_outside_the_range_are_one_clear_error(opset: int) -> None:
    with pytest.raises(BuildError, match=f"unsupported ONNX opset {opset}: densegraph exports opsets 13..21"):
        check_opset(opset)


def test_parity_gate_refuses_a_wrong_model(tmp_path: Path) -> None:
    module = tiny()
    export(module, tmp_path / "m.onnx")
    inputs = parity_inputs(module.input_shape, (1, 3))
    references = [torch_logits(module, x) + 1e-3 for x in inputs]
    with pytest.raises(BuildError, match="parity check failed"):
        verify_outputs(tmp_path / "m.onnx", inputs, references, "fp32")


def test_fp16_model_is_typed_checked_and_close(tmp_path: Path) -> None:
    module = tiny()
    with pytest.raises(ValueError, match="FP16_PASSES"):
        fp16_from_onnx(export(module, tmp_path / "plain.onnx"))
    model = export_fp16_ready(module, tmp_path / "m.onnx")
    before = model.SerializeToString(deterministic=True)
    model16, notes = fp16_from_onnx(model)
    onnx.checker.check_model(model16, full_check=True)
    assert notes == []
    assert io_signature(model16) == io_signature(model)  # float32 in and out
    float_weights = [
        t
        for t in model16.graph.initializer
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    ]
    assert float_weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in float_weights)
    assert "BatchNormalization" not in {n.op_type for n in model16.graph.node}  # folded before the cast
    assert model.SerializeToString(deterministic=True) == before  # the fp32 model is untouched
    data = save_onnx(model16, tmp_path / "m16.onnx")
    inputs = parity_inputs(module.input_shape, (1, 3))
    result = verify_outputs(data, inputs, [torch_logits(module, x) for x in inputs], "fp16")
    assert result["passed"] and result["max_rel_err"] <= 1e-2


def test_fp16_keeps_batchnorm_with_large_running_variance(tmp_path: Path) -> None:
    """Cast as they are, running variances past fp16's range would be clamped; folded in fp32 they are not."""
    module = tiny()
    with torch.no_grad():
        bn = module.get_submodule("features.denseblock2.denselayer1.norm1")
        bn.running_var.mul_(1e5)  # ~1e5: over the converter's clamp (1e4) and fp16's max (65504)
        bn.weight.mul_(300.0)  # keep the layer's output scale
    model16, _ = fp16_from_onnx(export_fp16_ready(module, tmp_path / "m.onnx"))
    inputs = parity_inputs(module.input_shape, (3,))
    result = verify_outputs(model16.SerializeToString(), inputs, [torch_logits(module, inputs[0])], "fp16")
    assert result["max_rel_err"] <= 1e-2


def test_compare_outputs() -> None:
    ref = np.array([[1.0, 2.0], [3.0, -4.0]], np.float32)
    got = ref + np.array([[0.0, 0.5], [0.0, 0.0]], np.float32)
    assert compare_outputs(got, ref) == {"max_abs_err": 0.5, "max_rel_err": 0.125, "top1_agreement": 1.0}


def test_int8_gate_is_logits_sqnr_and_top1_with_labels() -> None:
    rng = np.random.default_rng(0)
    near_ties = rng.standard_normal((200, 10)) * 0.1  # an untrained model's logits: margins of ~0.03
    noisy = near_ties + 0.02 * rng.standard_normal(near_ties.shape)  # ~14 dB: fine, yet argmax flips
    result = verify_int8(near_ties, noisy)
    assert result["passed"] and result["top1_agreement"] < 0.9 and 12 < result["sqnr_db"] < 16
    with pytest.raises(BuildError, match="logits SQNR"):
        verify_int8(near_ties, near_ties + rng.standard_normal(near_ties.shape))  # noise louder than signal
    confident = np.eye(10)[rng.integers(0, 10, 200)] * 8.0
    labels = confident.argmax(1)
    assert verify_int8(confident, confident + 0.1, labels)["top1_int8"] == 1.0
    with pytest.raises(BuildError, match="logits SQNR"):  # a shared offset does not make the noise quieter
        verify_int8(confident + 50.0, confident + 50.0 + rng.standard_normal(confident.shape))
    wrong = confident.copy()
    rows = np.arange(12)
    wrong[rows, (labels[rows] + 1) % 10] = 8.01  # 6% of the decisions change, the logits hardly
    with pytest.raises(BuildError, match=r"SQNR 1\d\.\d dB, top-1 100.0% -> 94.0%"):
        verify_int8(confident, wrong, labels)


@pytest.mark.parametrize("name", ["timm-tiny-densenet-blur", "timm-tiny-vovnet"])
def test_onnxruntime_reproduces_timm(tmp_path: Path, name: str) -> None:
    spec = Path(__file__).resolve().parents[1] / "data" / f"{name}.yaml"
    io = torch.load(FIXTURES / f"{name}-io.pt", weights_only=True)
    module = load_weights(to_torch(spec), FIXTURES / f"{name}.pth").eval()
    for candidate in (module, freeze(module, for_export=True)):
        export(candidate, tmp_path / "m.onnx")
        got = run_onnx(ort_session(tmp_path / "m.onnx"), io["input"].numpy())
        assert (
            np.max(np.abs(got - io["output"].numpy())) <= 1e-5 * np.max(np.abs(io["output"].numpy())) + 1e-5
        )


def test_features_head_exports_one_named_output_per_map(tmp_path: Path) -> None:
    spec = Path(__file__).resolve().parents[1] / "data" / "timm-tiny-vovnet.yaml"
    text = spec.read_text().replace(
        "head: {classes: 10, norm: false}", "head: {kind: features, outputs: [stage1, stage3, stage4]}"
    )
    from densegraph import spec_from_string

    module = to_torch(spec_from_string(text, str(spec)), seed=0).eval()
    weights = torch.load(FIXTURES / "timm-tiny-vovnet.pth", weights_only=True)
    load_weights(module, {k: v for k, v in weights.items() if not k.startswith("head.")})
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = module(x)
    model = export(freeze(module, for_export=True), tmp_path / "m.onnx")
    signature = io_signature(model)
    assert [(o["name"], o["shape"]) for o in signature["outputs"]] == [
        ("stage1", ["batch", 32, 16, 16]),
        ("stage3", ["batch", 48, 4, 4]),
        ("stage4", ["batch", 64, 2, 2]),
    ]
    got = ort_session(tmp_path / "m.onnx").run(None, {"images": x.numpy()})
    for array, name in zip(got, expected, strict=True):
        assert np.max(np.abs(array - expected[name].numpy())) <= 1e-4


FAMILY_SPEC = REPO / "tests" / "data" / "family-tiny.yaml"


def _family() -> torch.nn.Module:
    from densegraph.testing import randomize_batchnorm

    return randomize_batchnorm(to_torch(FAMILY_SPEC, seed=0).eval(), seed=1, scale=(0.5, 1.5))


def test_the_family_ops_emit_as_plain_onnx_operators(tmp_path: Path) -> None:
    """ReLU6 as Clip [0, 6], the blur pool as reflect Pad and a constant depthwise Conv (timm's filter), grouped
    convs with their group, ceil-mode pools with ceil_mode: run by onnxruntime against PyTorch."""
    module = _family()
    model = export(module, tmp_path / "m.onnx")
    nodes = {n.name: n for n in model.graph.node}
    attrs = {
        name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for name, n in nodes.items()
    }
    assert nodes["features.relu0"].op_type == "Clip"
    blur = next(n for n in nodes.values() if n.op_type == "Pad")
    assert attrs[blur.name]["mode"] == b"reflect" and blur.name == "features.blurpool.pad"
    assert attrs["features.blurpool"]["group"] == 12 and nodes["features.blurpool"].op_type == "Conv"
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    expected = np.outer([1, 2, 1], [1, 2, 1]) / 16
    assert np.array_equal(weights["features.blurpool.filter"], np.broadcast_to(expected, (12, 1, 3, 3)))
    assert attrs["features.pool0"]["ceil_mode"] == 1 and nodes["features.pool0"].op_type == "MaxPool"
    assert attrs["features.transition1.pool"]["ceil_mode"] == 1
    assert attrs["features.denseblock1.denselayer1.dwconv1"]["group"] == 6
    x = np.random.default_rng(0).standard_normal((3, 3, 27, 27), dtype=np.float32)
    verify_outputs(tmp_path / "m.onnx", [x], [torch_logits(module, x)], "fp32")


def test_the_family_ops_convert_to_fp16(tmp_path: Path) -> None:
    module = _family()
    model16, _ = fp16_from_onnx(export_fp16_ready(module, tmp_path / "m.onnx"))
    save_onnx(model16, tmp_path / "m16.onnx")
    x = np.random.default_rng(1).standard_normal((2, 3, 27, 27), dtype=np.float32)
    verify_outputs(tmp_path / "m16.onnx", [x], [torch_logits(module, x)], "fp16")


def test_densenet121_backbone_outputs_are_named_and_shaped_as_the_blocks() -> None:
    """The issue's example: densenet121 at 224 with block2..4 gives [b,512,28,28], [b,1024,14,14], [b,1024,7,7]."""
    from densegraph import build_graph, load_spec

    graph = build_graph(load_spec(REPO / "tests" / "data" / "densenet121-features.yaml"))
    assert [(o["name"], o["channels"], o["size"], o["stride"]) for o in graph.graph["outputs"]] == [
        ("block2", 512, [28, 28], 8),
        ("block3", 1024, [14, 14], 16),
        ("block4", 1024, [7, 7], 32),
    ]
    state = {k: torch.zeros(v.shape) for k, v in to_torch(graph, seed=0).state_dict().items()}
    model, _ = onnx_from_graph(graph, state, opset=DEFAULT_OPSET)
    assert [(o["name"], o["shape"]) for o in io_signature(check_onnx(model))["outputs"]] == [
        ("block2", ["batch", 512, 28, 28]),
        ("block3", ["batch", 1024, 14, 14]),
        ("block4", ["batch", 1024, 7, 7]),
    ]


FAMILY = [
    "specs/densenet264d.yaml",
    "specs/densenetblur121d.yaml",
    "specs/vovnet/vovnet39a.yaml",
    "specs/vovnet/vovnet57a.yaml",
    "specs/hardnet/hardnet68.yaml",
    "specs/hardnet/hardnet85.yaml",
    "specs/hardnet/hardnet68ds.yaml",
    "specs/hardnet/hardnet39ds.yaml",
]
BIG_FAMILY = {"specs/densenet264d.yaml", "specs/vovnet/vovnet57a.yaml", "specs/hardnet/hardnet85.yaml"}


@pytest.mark.parametrize(
    "spec_path", [pytest.param(p, marks=pytest.mark.slow) if p in BIG_FAMILY else p for p in FAMILY]
)
def test_every_family_spec_emits_what_pytorch_computes(spec_path: str) -> None:
    """Each shipped family spec at 64x64, emitted with the export passes, in onnxruntime against PyTorch (the
    build's fp32 gate; the full-size builds are recorded in docs/family.md)."""
    import dataclasses

    from densegraph import build_graph, load_spec
    from densegraph.passes import EXPORT_PASSES
    from densegraph.testing import randomize_batchnorm

    spec = dataclasses.replace(load_spec(REPO / spec_path), input_size=(64, 64))
    module = randomize_batchnorm(to_torch(build_graph(spec), seed=0).eval(), seed=2, scale=(0.5, 1.5))
    model, _ = onnx_from_graph(module.graph, module.state_dict(), passes=EXPORT_PASSES, opset=DEFAULT_OPSET)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
    verify_outputs(check_onnx(model).SerializeToString(), [x], [torch_logits(module, x)], "fp32")
