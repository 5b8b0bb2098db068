"""``freeze``: each rewrite exact on its own (against the plain module and against the ops applied one by one),
all of them together on every shipped spec, the export form through onnxruntime, and the original untouched."""

from __future__ import annotations

import copy
import dataclasses
import io
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from densegraph.graph import build_graph, layer_sources
from densegraph.lower import frozen as lowering
from densegraph.lower.fused import mkldnn_conv_available
from densegraph.lower.torch import (
    EXPORT_REWRITES,
    REWRITES,
    FrozenGraphModule,
    GraphModule,
    freeze,
    graph_of,
    module_from_graph,
    to_torch,
)
from densegraph.spec import Connectivity, load_spec

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
SPECS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "specs").rglob("*.yaml"))
BIG = {
    "specs/densenet161.yaml",
    "specs/densenet169.yaml",
    "specs/densenet201.yaml",
    "specs/densenet264.yaml",
    "specs/cifar/densenet-bc-l190-k40.yaml",
    "specs/cifar/densenet-bc-l250-k24.yaml",
    "specs/densenet264d.yaml",
    "specs/vovnet/vovnet57a.yaml",
    "specs/hardnet/hardnet85.yaml",
}


def small_graph(spec_path: str, side: int = 64):
    """The spec's graph at a small input (ImageNet specs at ``side``; CIFAR and digits specs at their own)."""
    spec = load_spec(REPO / spec_path)
    if spec.input_size[0] > side:  # a fixed size (a dynamic spec's range is about its own sizes)
        spec = dataclasses.replace(spec, input_size=(side, side), input_range=None)
    return build_graph(spec)


def trained_like(module: nn.Module, seed: int = 0) -> nn.Module:
    """BN statistics and affine parameters as after training: some scales negative, a few exactly zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                sign = torch.where(torch.rand(n, generator=generator) < 0.15, -1.0, 1.0)
                m.weight.copy_(sign * (torch.rand(n, generator=generator) + 0.5))
                m.weight[torch.rand(n, generator=generator) < 0.05] = 0.0
                m.bias.copy_(torch.randn(n, generator=generator) * 0.3)
    return module.eval()


@pytest.fixture(scope="module")
def torchvision_tiny() -> tuple[GraphModule, torch.Tensor, torch.Tensor]:
    module = to_torch(REPO / "tests/data/torchvision-tiny.yaml")
    module.load_state_dict(torch.load(FIXTURES / "torchvision-tiny-densenet.pth", weights_only=True))
    io = torch.load(FIXTURES / "torchvision-tiny-densenet-io.pt", weights_only=True)
    return module.eval(), io["input"], io["output"]


def _max_error(a: torch.Tensor | dict[str, torch.Tensor], b: torch.Tensor | dict[str, torch.Tensor]) -> float:
    """Max |a - b|; a features head's outputs (dicts by name) compared map by map."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert list(a) == list(b)
        return max(_max_error(a[k], b[k]) for k in a)
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    return float((a - b).abs().max())


# ---------------------------------------------------------------------------------------------------------
# each rewrite on its own


@pytest.mark.parametrize("rewrite", REWRITES)
def test_each_rewrite_alone_is_exact(torchvision_tiny, rewrite: str) -> None:
    if rewrite == "mkldnn" and not mkldnn_conv_available():
        pytest.skip("oneDNN fused convolutions are not available in this torch build")
    module, x, torchvision_out = torchvision_tiny
    frozen = freeze(module, rewrites=[rewrite])
    assert frozen.rewrites == (rewrite,)
    with torch.inference_mode():
        assert _max_error(frozen(x), module(x)) <= 1e-5
        assert _max_error(frozen(x), torchvision_out) <= 1e-5
    digits = trained_like(module_from_graph(graph_of(REPO / "specs/digits.yaml"), seed=0))
    y = torch.randn(5, 1, 8, 8)
    with torch.inference_mode():
        assert _max_error(freeze(digits, rewrites=[rewrite])(y), digits(y)) <= 1e-5


def test_rewrites_change_the_op_lists_as_described(torchvision_tiny) -> None:
    module = torchvision_tiny[0]
    layer, transition = "block1.layer1", "transition1"
    assert module.graph.nodes[layer]["ops"][0]["name"] == "features.denseblock1.denselayer1.norm1"
    expectations = {
        (): (["bn", "relu", "conv", "bn", "relu", "conv"], ["bn", "relu", "conv", "avgpool"]),
        ("fold_bn",): (["bn", "relu", "conv", "relu", "conv"], ["bn", "relu", "conv", "avgpool"]),
        ("fold_preactivation",): (["clamp", "conv", "bn", "relu", "conv"], ["clamp", "conv", "avgpool"]),
        ("swap_pool_conv",): (
            ["bn", "relu", "conv", "bn", "relu", "conv"],
            ["bn", "relu", "avgpool", "conv"],
        ),
        ("fuse_bn_relu",): (
            ["affine_relu", "conv", "affine_relu", "conv"],
            ["affine_relu", "conv", "avgpool"],
        ),
        ("fold_bn", "fuse_conv_relu"): (
            ["bn", "relu", "conv+relu", "conv"],
            ["bn", "relu", "conv", "avgpool"],
        ),
        None: (["clamp", "conv+relu", "conv"], ["clamp", "avgpool", "conv"]),
        "export": (["bn", "relu", "conv", "relu", "conv"], ["bn", "relu", "avgpool", "conv"]),
    }
    for rewrites, (layer_ops, transition_ops) in expectations.items():
        if rewrites == "export":
            frozen = freeze(module, for_export=True)
        else:
            frozen = freeze(module, rewrites=rewrites)
        assert frozen.op_kinds(layer) == layer_ops, rewrites
        assert frozen.op_kinds(transition) == transition_ops, rewrites
    keys = set(freeze(module, rewrites=["fold_bn"]).state_dict())
    assert "features.denseblock1.denselayer1.conv1.bias" in keys
    assert not any(k.startswith("features.denseblock1.denselayer1.norm2") for k in keys)
    assert not any(k.startswith("features.norm0") for k in keys)  # the stem's BN, folded into conv0


class _CountCat(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is torch.cat:
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("spec_path", ["specs/densenet121.yaml", "specs/examples/densenet121-window4.yaml"])
def test_block_buffers_concatenate_only_what_is_not_a_prefix(spec_path: str) -> None:
    graph = small_graph(spec_path, side=32)
    module = module_from_graph(graph, seed=0).eval()
    frozen = freeze(module, rewrites=["block_buffers"])
    # a layer gathers only when its sources are not consecutive maps of its block
    expected = sum(
        1
        for block in graph.graph["blocks"]
        for layer in range(1, block["layers"] + 1)
        if layer_sources(Connectivity(block["connectivity"], block["window"]), layer) != list(range(layer))
        and len(layer_sources(Connectivity(block["connectivity"], block["window"]), layer)) > 1
    )
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        with _CountCat() as counter:
            out = frozen(x)
        assert counter.calls == expected
        assert _max_error(out, module(x)) <= 1e-5
        with _CountCat() as plain_counter:
            module(x)
    assert plain_counter.calls > counter.calls
    assert ("window" in spec_path) == (expected > 0)


def test_channels_last_runs_the_convolutions_channels_last(torchvision_tiny) -> None:
    module, x, _ = torchvision_tiny
    frozen = freeze(module, rewrites=["channels_last", "block_buffers"])
    seen = []
    conv = frozen.get_submodule("features.denseblock2.denselayer3.conv1")
    handle = conv.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
    with torch.inference_mode():
        frozen(x)
    handle.remove()
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()


def test_batch_tiling_runs_big_stages_in_tiles(torchvision_tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    module, x, _ = torchvision_tiny
    frozen = freeze(module, rewrites=["block_buffers", "batch_tiling"])
    batch = torch.cat([x, x.flip(0), x])
    # the stages that hold a block buffer, each a block with the transition or head after it
    buffered = [stage for stage in frozen._stages if stage.groups]
    assert len(buffered) == len(module.graph.graph["blocks"])
    assert all(frozen._tiles(stage, batch) == 1 for stage in buffered)
    monkeypatch.setattr(lowering, "_TILE_BYTES", 1)  # one sample per tile
    assert all(frozen._tiles(stage, batch) == 6 for stage in buffered)
    with torch.inference_mode():
        assert _max_error(frozen(batch), module(batch)) <= 1e-5


# ---------------------------------------------------------------------------------------------------------
# all rewrites together


@pytest.mark.parametrize(
    "spec_path", [pytest.param(p, marks=pytest.mark.slow) if p in BIG else p for p in SPECS]
)
def test_frozen_equals_the_module_on_every_shipped_spec(spec_path: str) -> None:
    graph = small_graph(spec_path)
    module = trained_like(module_from_graph(graph, seed=0))
    x = torch.randn(2, *graph.graph["input_shape"], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = module(x)
        maps = expected.values() if isinstance(expected, dict) else [expected]  # a features head: a dict
        scale = max(1.0, *(float(m.abs().max()) for m in maps))
        for for_export in (False, True):
            frozen = freeze(module, for_export=for_export)
            for call in range(2):  # recorded, then replayed
                got = frozen(x)
                assert _max_error(got, expected) <= 1e-4 * scale, (
                    for_export,
                    call,
                    _max_error(got, expected),
                )


def test_freeze_leaves_the_module_untouched() -> None:
    module = trained_like(module_from_graph(graph_of(REPO / "specs/digits.yaml"), seed=0)).train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    frozen = freeze(module)
    assert module.training and not frozen.training
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    assert list(frozen.parameters()) == []
    assert all(b.data_ptr() != v.data_ptr() for b in frozen.buffers() for v in module.state_dict().values())


def test_frozen_module_takes_other_batch_and_input_sizes(torchvision_tiny) -> None:
    module = torchvision_tiny[0]
    frozen = freeze(module)
    with torch.inference_mode():
        for shape in ((1, 3, 64, 64), (3, 3, 64, 64), (2, 3, 96, 80), (1, 3, 64, 64), (3, 3, 64, 64)):
            x = torch.randn(shape)
            assert _max_error(frozen(x), module(x)) <= 1e-5, shape


# ---------------------------------------------------------------------------------------------------------
# the recorded program that replays a frozen forward pass


@pytest.mark.parametrize(
    "spec_path", ["tests/data/torchvision-tiny.yaml", "specs/examples/densenet121-window4.yaml"]
)
def test_replayed_program_matches_and_returns_fresh_outputs(
    spec_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiles of unequal sizes, gathers (windowed connectivity), buffers reused across tiles and calls: every
    call equals the module, and an output stays valid after later calls."""
    graph = small_graph(spec_path, side=32)
    module = trained_like(module_from_graph(graph, seed=0))
    frozen = freeze(module)
    c, h, w = graph.graph["input_shape"]
    per_sample = max(g.channels * g.size[0] * g.size[1] for g in frozen._groups) * 4
    monkeypatch.setattr(lowering, "_TILE_BYTES", 2 * per_sample)  # two samples a tile: batch 5 is 2 + 2 + 1
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(5, c, h, w, generator=generator) for _ in range(3)]
    with torch.inference_mode():
        expected = [module(x) for x in inputs]
        outputs = [frozen(x) for x in inputs]
        assert len(frozen._programs) == 1
        program = next(iter(frozen._programs.values()))
        assert any(len(tiles) == 3 for _, _, tiles in program.stages)
        for got, want in zip(outputs, expected, strict=True):
            assert _max_error(got, want) <= 1e-5
        again = frozen(inputs[0])
        assert _max_error(again, expected[0]) <= 1e-5 and again.data_ptr() != outputs[0].data_ptr()
        assert next(iter(frozen._programs.values())) is program  # replayed, not recorded again


def test_programs_are_per_thread_and_shape_and_bounded(torchvision_tiny) -> None:
    module, x, torchvision_out = torchvision_tiny
    frozen = freeze(module)
    results: dict[int, list[float]] = {}

    def work(seed: int) -> None:
        batch = torch.randn(seed + 1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
        with torch.inference_mode():
            expected = module(batch)
            results[seed] = [_max_error(frozen(batch), expected) for _ in range(4)]

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1, 2] and max(max(r) for r in results.values()) <= 1e-5
    assert len(frozen._programs) == 3
    with torch.inference_mode():
        for batch in range(1, 7):
            frozen(torch.randn(batch, 3, 64, 64))
        assert len(frozen._programs) == lowering._PACKED_SHAPES
        assert _max_error(frozen(x), torchvision_out) <= 1e-5


def test_program_sees_weights_changed_in_place_and_modules_moved() -> None:
    graph = graph_of(REPO / "specs/digits.yaml")
    a = trained_like(module_from_graph(graph, seed=0))
    b = trained_like(module_from_graph(graph, seed=1))
    frozen = freeze(a)
    x = torch.randn(2, 1, 8, 8)
    conv = next(op for op in frozen._op_list if op.kind == "conv")
    with torch.no_grad():
        frozen(x)
        conv.weight.mul_(2)  # in place: the program's packed copy is stale
        doubled = frozen(x)
        conv.weight.div_(2)
        assert _max_error(frozen(x), a(x)) <= 1e-5 and _max_error(doubled, a(x)) > 1e-3
        frozen.double()
        assert _max_error(frozen(x.double()), a.double()(x.double())) <= 1e-6  # float32 weights, widened
    frozen.float()
    a.float()
    with torch.inference_mode():  # inference tensors: no version counter, load_state_dict forgets programs
        inference = freeze(a)
        inference(x)
        inference.load_state_dict(freeze(b).state_dict())
        assert _max_error(inference(x), b(x)) <= 1e-5


def test_frozen_module_pickles_and_copies_after_running_and_refuses_gradients(torchvision_tiny) -> None:
    module, x, torchvision_out = torchvision_tiny
    frozen = freeze(module)
    with torch.inference_mode():
        frozen(x)
        frozen(x)
    clone = copy.deepcopy(frozen)
    data = io.BytesIO()
    torch.save(frozen, data)
    data.seek(0)
    loaded = torch.load(data, weights_only=False)  # our own object, just written
    with torch.inference_mode():
        for m in (clone, loaded):
            assert _max_error(m(x), torchvision_out) <= 1e-5
    with pytest.raises(RuntimeError, match="for inference"):
        frozen(x.clone().requires_grad_())
    image = x.clone().requires_grad_()
    freeze(module, for_export=True)(image).sum().backward()  # plain ops only: differentiable
    reference = x.clone().requires_grad_()
    module(reference).sum().backward()
    assert image.grad is not None and _max_error(image.grad, reference.grad) <= 1e-5


def test_loading_new_weights_into_a_frozen_module_takes_effect() -> None:
    """Prepacked convolution weights are refreshed when the dense ones change in place."""
    graph = graph_of(REPO / "specs/digits.yaml")
    a = trained_like(module_from_graph(graph, seed=0))
    b = trained_like(module_from_graph(graph, seed=1))  # other conv weights, the same BN signs
    frozen = freeze(a)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert _max_error(frozen(x), a(x)) <= 1e-5
        frozen.load_state_dict(freeze(b).state_dict())
        assert _max_error(frozen(x), b(x)) <= 1e-5


def test_freeze_a_memory_efficient_and_a_float64_module() -> None:
    graph = graph_of(REPO / "specs/digits.yaml")
    module = trained_like(module_from_graph(graph, seed=0, memory_efficient=True)).double()
    frozen = freeze(module)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    with torch.inference_mode():
        out = frozen(x)
        assert out.dtype == torch.float64
        assert _max_error(out, module(x)) <= 1e-12


def test_to_torch_frozen_and_argument_errors() -> None:
    path = REPO / "specs/digits.yaml"
    frozen = to_torch(path, frozen=True, seed=1)
    assert isinstance(frozen, FrozenGraphModule) and frozen.rewrites == REWRITES
    assert frozen.input_shape == (1, 8, 8) and frozen.num_classes == 10
    x = torch.randn(2, 1, 8, 8)
    with torch.inference_mode():
        assert _max_error(frozen(x), to_torch(path, seed=1).eval()(x)) <= 1e-5
    with pytest.raises(ValueError, match="choose one"):
        to_torch(path, frozen=True, memory_efficient=True)
    with pytest.raises(TypeError, match="connection graph"):
        freeze(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown rewrites"):
        freeze(to_torch(path), rewrites=["fold_everything"])
    with pytest.raises(ValueError, match="do not export"):
        freeze(to_torch(path), for_export=True, rewrites=["fold_bn", "channels_last"])
    assert freeze(to_torch(path), for_export=True).rewrites == EXPORT_REWRITES


def test_export_form_runs_in_onnxruntime(tmp_path: Path, torchvision_tiny) -> None:
    ort = pytest.importorskip("onnxruntime")
    module, x, torchvision_out = torchvision_tiny
    path = tmp_path / "frozen.onnx"
    torch.onnx.export(
        freeze(module, for_export=True),
        (x,),
        str(path),
        opset_version=19,
        dynamo=False,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
    )
    import onnx

    model = onnx.load(str(path))
    kinds = {node.op_type for node in model.graph.node}
    assert "Concat" in kinds and kinds <= {
        "Conv",
        "BatchNormalization",
        "Relu",
        "MaxPool",
        "AveragePool",
        "Concat",
        "GlobalAveragePool",
        "Flatten",
        "Gemm",
    }, kinds
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = torch.cat([x, x[:1]])  # another batch size than the one traced
    (got,) = session.run(["logits"], {"images": batch.numpy()})
    with torch.inference_mode():
        expected = module(batch).numpy()
    assert np.abs(got - expected).max() <= 1e-4
    assert np.abs(got[:2] - torchvision_out.numpy()).max() <= 1e-4
