"""The plain PyTorch lowering against independent references: torchvision's own checkpoint and outputs,
torchvision's state_dict naming and published parameter counts, its initialization, and the connectivity rules
written out by hand."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from densegraph.graph import build_graph
from densegraph.lower.torch import GraphModule, graph_of, init_weights, module_from_graph, to_torch
from densegraph.spec import load_spec
from densegraph.summary import summary_dict

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
TINY_SPEC = REPO / "tests" / "data" / "torchvision-tiny.yaml"
SPECS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "specs").rglob("*.yaml"))

# torchvision.models.densenet*: parameters as published in torchvision's model documentation
TORCHVISION_PARAMS = {
    "specs/densenet121.yaml": 7_978_856,
    "specs/densenet161.yaml": 28_681_000,
    "specs/densenet169.yaml": 14_149_480,
    "specs/densenet201.yaml": 20_013_928,
}


def meta_module(spec_path: str | Path) -> GraphModule:
    """The module of a spec with its parameters on the meta device (nothing allocated, nothing initialized)."""
    with torch.device("meta"):
        return GraphModule(graph_of(REPO / spec_path))


@pytest.fixture(scope="module")
def torchvision_tiny() -> tuple[GraphModule, dict[str, torch.Tensor]]:
    module = to_torch(TINY_SPEC)
    assert isinstance(module, GraphModule)
    module.load_state_dict(
        torch.load(FIXTURES / "torchvision-tiny-densenet.pth", weights_only=True), strict=True
    )
    return module.eval(), torch.load(FIXTURES / "torchvision-tiny-densenet-io.pt", weights_only=True)


def test_torchvision_checkpoint_loads_strict_and_reproduces_its_output(torchvision_tiny) -> None:
    module, io = torchvision_tiny
    with torch.inference_mode():
        out = module(io["input"])
    assert out.shape == io["output"].shape == (2, 10)
    assert torch.allclose(out, io["output"], rtol=0, atol=1e-5)


def test_fixture_metadata_matches_the_lowering(torchvision_tiny) -> None:
    import json

    module, _ = torchvision_tiny
    meta = json.loads((FIXTURES / "torchvision-tiny-densenet.json").read_text())
    assert len(module.state_dict()) == meta["state_dict_keys"]
    assert sum(p.numel() for p in module.parameters()) == meta["parameters"]


@pytest.mark.parametrize("spec_path", SPECS)
def test_parameter_count_equals_summary(spec_path: str) -> None:
    module = meta_module(spec_path)
    params = sum(p.numel() for p in module.parameters())
    assert params == summary_dict(module.graph)["params"]
    if spec_path in TORCHVISION_PARAMS:
        assert params == TORCHVISION_PARAMS[spec_path]


def test_state_dict_names_follow_torchvision() -> None:
    keys = list(meta_module("specs/densenet121.yaml").state_dict())
    for key in (
        "features.conv0.weight",
        "features.norm0.running_var",
        "features.denseblock1.denselayer1.norm1.weight",
        "features.denseblock1.denselayer1.conv1.weight",
        "features.denseblock1.denselayer6.conv2.weight",
        "features.denseblock4.denselayer16.norm2.num_batches_tracked",
        "features.transition1.norm.bias",
        "features.transition1.conv.weight",
        "features.transition3.conv.weight",
        "features.norm5.weight",
        "classifier.weight",
        "classifier.bias",
    ):
        assert key in keys, key
    # conv: weight; BN: weight, bias, running_mean, running_var, num_batches_tracked; linear: weight, bias.
    # Stem conv0 + norm0, 58 layers of norm1 conv1 norm2 conv2, 3 transitions of norm + conv, norm5, classifier.
    expected = (1 + 5) + 58 * (5 + 1 + 5 + 1) + 3 * (5 + 1) + 5 + 2
    assert expected == 727
    assert len(keys) == len(set(keys)) == expected
    assert keys[0] == "features.conv0.weight" and keys[-1] == "classifier.bias"


def test_initialization_follows_torchvision() -> None:
    module = module_from_graph(graph_of(REPO / "specs/cifar/densenet-bc-l100-k12.yaml"), seed=0)
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    big = [m.weight for m in convs if m.weight.numel() >= 20_000]
    assert big
    for weight in big:  # Kaiming normal, fan_in, gain sqrt(2)
        fan_in = weight[0].numel()
        assert abs(weight.std().item() / math.sqrt(2 / fan_in) - 1) < 0.03
        assert abs(weight.mean().item()) < 0.03 * math.sqrt(2 / fan_in)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any()
            assert not m.running_mean.any() and torch.equal(m.running_var, torch.ones_like(m.running_var))
    assert not module.get_submodule("classifier").bias.any()


def test_seed_fixes_the_weights_and_leaves_the_global_generator_alone() -> None:
    graph = graph_of(REPO / "specs/digits.yaml")
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = module_from_graph(graph, seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    b = module_from_graph(graph, seed=7)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    init_weights(b)  # unseeded: new draws
    assert not torch.equal(a.get_submodule("features.conv0").weight, b.get_submodule("features.conv0").weight)


def _expected_conv1_inputs(
    block_input: int, growth_rate: int, layer: int, kind: str, window: int | None
) -> int:
    """Input channels of dense layer ``layer`` (1-based) under each rule, written out from its definition."""
    if kind == "dense":
        sources = set(range(layer))
    elif kind == "window":  # the block input and the ``window`` most recent layers
        assert window is not None
        sources = {0} | set(range(max(1, layer - window), layer))
    else:  # log: distances 1, 2, 4, … back, the block input being layer 0
        sources = {layer - 2**i for i in range(layer.bit_length() + 1) if layer - 2**i >= 0}
    return sum(block_input if s == 0 else growth_rate for s in sources)


@pytest.mark.parametrize(
    "spec_path", ["specs/examples/densenet121-window4.yaml", "specs/examples/cifar-mixed.yaml"]
)
def test_window_and_log_connectivity_lower_and_run(spec_path: str) -> None:
    spec = load_spec(REPO / spec_path)
    if spec.input_size[0] > 32:
        spec = dataclasses.replace(spec, input_size=(32, 32))
    graph = build_graph(spec)
    module = module_from_graph(graph, seed=0)
    for block in graph.graph["blocks"]:
        for layer in range(1, block["layers"] + 1):
            name = f"features.denseblock{block['index']}.denselayer{layer}.norm1"
            got = module.get_submodule(name).num_features
            assert got == _expected_conv1_inputs(
                block["in_channels"], block["growth_rate"], layer, block["connectivity"], block["window"]
            ), name
    assert {b["connectivity"] for b in graph.graph["blocks"]} & {"window", "log"}
    x = torch.randn(2, *graph.graph["input_shape"])
    module.train()
    out = module(x)
    out.sum().backward()
    assert out.shape == (2, module.num_classes) and torch.isfinite(out).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())


def test_a_layer_reads_the_concatenation_of_its_sources_in_order() -> None:
    """Window 4: layer 6 of block 1 reads the block input then layers 2-5, concatenated in that order."""
    spec = dataclasses.replace(
        load_spec(REPO / "specs/examples/densenet121-window4.yaml"), input_size=(32, 32)
    )
    module = module_from_graph(build_graph(spec), seed=0).eval()
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str, what: str):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
            seen[name] = (inputs[0] if what == "input" else output).clone()

        return hook

    block = "features.denseblock1"
    hooks = [module.get_submodule("features.pool0").register_forward_hook(keep("block input", "output"))]
    hooks += [
        module.get_submodule(f"{block}.denselayer{i}.conv2").register_forward_hook(
            keep(f"layer{i}", "output")
        )
        for i in range(1, 6)
    ]
    hooks.append(
        module.get_submodule(f"{block}.denselayer6.norm1").register_forward_hook(keep("read", "input"))
    )
    with torch.no_grad():
        module(torch.randn(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    expected = torch.cat([seen["block input"]] + [seen[f"layer{i}"] for i in range(2, 6)], 1)
    assert torch.equal(seen["read"], expected)


def test_to_torch_accepts_spec_path_spec_and_graph() -> None:
    path = REPO / "specs/digits.yaml"
    modules = [to_torch(path, seed=1), to_torch(load_spec(path), seed=1), to_torch(graph_of(path), seed=1)]
    states = [m.state_dict() for m in modules]
    assert all(torch.equal(states[0][k], s[k]) for s in states[1:] for k in states[0])
    assert modules[0].input_shape == (1, 8, 8) and modules[0].num_classes == 10


# ---------------------------------------------------------------------------------------------------------
# the rest of the family: post-activation, separable and harmonic layers, ReLU6, blur / dwconv / ceil-mode pools

FAMILY_TINY = {
    "harmonic-separable": """
input: {channels: 3, size: 32}
growth_rate: 6
bottleneck: 0
activation: relu6
layer: {order: post, separable: true}
connectivity: {kind: harmonic, multiplier: 1.7}
stem: {convs: [{channels: 8, stride: 2}, {channels: 12, kernel: 1}], pool: dwconv}
transition: {conv: none, pool: dwconv}
blocks:
  - {layers: 4, aggregate: 16}
  - {layers: 8, growth_rate: 4, aggregate: {channels: 24, dropout: 0.1}}
head: {classes: 7, norm: false, dropout: 0.1}
""",
    "chain-ceil-blur": """
input: {channels: 3, size: 30}
growth_rate: 5
bottleneck: 2
layer: {order: post, kernel: 5}
connectivity: chain
stem: {convs: [{channels: 8, stride: 2}], pool: [{kind: max, kernel: 3, stride: 1, padding: 1}, blur]}
transition: {conv: pre, pool: [blur, {kind: max, kernel: 3, stride: 2, ceil_mode: true}]}
blocks: [{layers: 3, aggregate: 12}, {layers: 2, widths: [3, 9]}]
head: {classes: 4}
""",
}


def _random_bn(module: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t, low, high in (
                (m.running_mean, -0.2, 0.2),
                (m.running_var, 0.5, 1.5),
                (m.weight, 0.5, 1.5),
                (m.bias, -0.2, 0.2),
            ):
                t.data.copy_(torch.empty(t.shape).uniform_(low, high, generator=generator))


@pytest.mark.parametrize("name", sorted(FAMILY_TINY))
def test_family_graphs_lower_freeze_and_train_alike(name: str) -> None:
    from densegraph import spec_from_string
    from densegraph.lower.torch import freeze

    module = to_torch(spec_from_string(FAMILY_TINY[name]), seed=0)
    _random_bn(module)
    x = torch.randn(3, 3, *module.input_shape[1:], generator=torch.Generator().manual_seed(2))
    module.eval()
    with torch.no_grad():
        reference = module(x)
        for frozen in (freeze(module), freeze(module, for_export=True)):
            torch.testing.assert_close(frozen(x), reference, rtol=1e-5, atol=1e-5)
    # training: the memory-efficient execution gives the plain one's outputs and gradients
    module.train()
    grads = []
    for memory_efficient in (False, True):
        module.memory_efficient = memory_efficient
        module.zero_grad()
        torch.manual_seed(3)  # the same dropout masks
        module(x).square().sum().backward()
        grads.append([p.grad.clone() for p in module.parameters()])
    for plain, efficient in zip(*grads, strict=True):
        torch.testing.assert_close(efficient, plain, rtol=1e-4, atol=1e-5)


def test_features_head_returns_named_maps_in_every_execution() -> None:
    from densegraph import spec_from_string
    from densegraph.lower.torch import freeze

    text = FAMILY_TINY["chain-ceil-blur"].replace(
        "head: {classes: 4}", "head: {kind: features, outputs: [block1, stage2]}"
    )
    module = to_torch(spec_from_string(text), seed=0)
    _random_bn(module)
    assert module.num_classes == 0
    x = torch.randn(2, 3, 30, 30, generator=torch.Generator().manual_seed(2))
    module.eval()
    with torch.no_grad():
        reference = module(x)
        assert {k: tuple(v.shape) for k, v in reference.items()} == {
            "block1": (2, 12, 8, 8),
            "stage2": (2, 18, 2, 2),
        }
        for run in (freeze(module), freeze(module), freeze(module, for_export=True)):
            for _ in range(2):  # recorded, then replayed
                got = run(x)
                assert list(got) == ["block1", "stage2"]
                for name in reference:
                    torch.testing.assert_close(got[name], reference[name], rtol=1e-5, atol=1e-5)
        first = freeze(module)
        kept = first(x)["block1"].clone()
        first(torch.randn(2, 3, 30, 30))  # a replay must not overwrite what an earlier call returned
        torch.testing.assert_close(first(x)["block1"], kept)
    module.train()
    module.memory_efficient = True
    out = module(x)
    (out["block1"].sum() + out["stage2"].square().sum()).backward()
    assert all(p.grad is not None for p in module.parameters())
