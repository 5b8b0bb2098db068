"""``to_torch(..., memory_efficient=True)``: block buffers with BN-ReLU recomputed in backward. Its gradients
are checked numerically (gradcheck, float64, BN in training mode) and against the plain module, its BN running
statistics against the plain module's, its checkpoints against torchvision's, and what it keeps for backward
against what the plain module keeps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from densegraph.lower.torch import GraphModule, graph_of, module_from_graph, to_torch
from densegraph.spec import spec_from_string

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"

TINY = """
name: tiny
input: {{channels: 2, size: 4}}
growth_rate: 2
bottleneck: {bottleneck}
compression: 0.5
stem: {{kind: cifar, channels: 3}}
blocks: [3, {{layers: 4, connectivity: {connectivity}}}]
head: {{classes: 3}}
"""
CONNECTIVITY = {"dense": "{kind: dense}", "window": "{kind: window, size: 1}", "log": "{kind: log}"}


def tiny_pair(connectivity: str, bottleneck: int = 1) -> tuple[GraphModule, GraphModule]:
    graph = graph_of(
        spec_from_string(TINY.format(connectivity=CONNECTIVITY[connectivity], bottleneck=bottleneck))
    )
    plain = module_from_graph(graph, seed=0).double()
    efficient = module_from_graph(graph, seed=0, memory_efficient=True).double()
    return plain, efficient


def randomize(module: nn.Module, seed: int = 0) -> None:
    """BN affine parameters away from 1/0 (some negative), so that every gradient term matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator))
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator))
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)


def _gradcheck(module: nn.Module, trainable: str, fast_mode: bool) -> bool:
    """gradcheck of ``module`` with respect to its input and the parameters whose names start with ``trainable``."""
    params = {name: p.detach().clone().requires_grad_() for name, p in module.named_parameters()}
    names = [name for name in params if name.startswith(trainable)]
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, requires_grad=True)

    def run(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(module, {**params, **dict(zip(names, values, strict=True))}, (x,))

    inputs = (x, *(params[name] for name in names))
    return torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast_mode)


@pytest.mark.parametrize("connectivity", sorted(CONNECTIVITY))
@pytest.mark.parametrize("train", [True, False], ids=["train-bn", "eval-bn"])
def test_gradcheck_fast(connectivity: str, train: bool) -> None:
    """Every input and parameter, along random directions (gradcheck's fast mode)."""
    _, module = tiny_pair(connectivity)
    randomize(module)
    assert _gradcheck(module.train(train), "", fast_mode=True)


def test_gradcheck_full_jacobian() -> None:
    """The full Jacobian for the input and one layer that reads a buffer prefix (BN in training mode)."""
    _, module = tiny_pair("dense")
    randomize(module)
    assert _gradcheck(module.train(), "features.denseblock2.denselayer3.", fast_mode=False)


def _step(module: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """One SGD step (seeded, for dropout); returns the gradients it applied."""
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    optimizer.zero_grad()
    torch.manual_seed(seed)
    F.cross_entropy(module(x), y).backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    optimizer.step()
    return grads


@pytest.mark.parametrize(
    ("spec_path", "dtype", "tolerance"),
    [
        # log connectivity, per-block growth rate, dropout: exact to float64 rounding
        ("specs/examples/cifar-mixed.yaml", torch.float64, 1e-9),
        ("specs/digits.yaml", torch.float32, 1e-4),
    ],
)
def test_gradients_and_running_statistics_equal_the_plain_module(
    spec_path: str, dtype: torch.dtype, tolerance: float
) -> None:
    graph = graph_of(REPO / spec_path)
    plain = module_from_graph(graph, seed=3).to(dtype).train()
    efficient = module_from_graph(graph, seed=3, memory_efficient=True).to(dtype).train()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, *graph.graph["input_shape"], generator=generator).to(dtype)
    y = torch.randint(0, plain.num_classes, (4,), generator=generator)
    expected, got = _step(plain, x, y, seed=9), _step(efficient, x, y, seed=9)
    for name, grad in expected.items():
        scale = grad.abs().max().item()
        assert (got[name] - grad).abs().max().item() <= tolerance * max(scale, 1e-3), name
    plain_state, efficient_state = plain.state_dict(), efficient.state_dict()
    assert list(plain_state) == list(efficient_state)
    for key, value in plain_state.items():  # parameters after the step, running statistics, batch counters
        if key.endswith("num_batches_tracked"):
            assert value.item() == efficient_state[key].item() == 1, key
        else:
            assert torch.allclose(value, efficient_state[key], rtol=tolerance, atol=tolerance), key


def test_running_statistics_are_updated_once_per_forward_not_on_recompute() -> None:
    plain, efficient = tiny_pair("dense")
    efficient.load_state_dict(plain.state_dict())
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    plain(x)
    out = efficient(x)
    after_forward = {k: v.clone() for k, v in efficient.state_dict().items()}
    for key, value in plain.state_dict().items():
        assert torch.allclose(value.double(), after_forward[key].double(), rtol=1e-12, atol=0), key
    out.sum().backward()  # recomputes every BN-ReLU
    assert all(torch.equal(v, after_forward[k]) for k, v in efficient.state_dict().items())


def test_two_backward_passes_over_one_graph() -> None:
    _, module = tiny_pair("window")
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    out = module(x).square().sum()
    first = torch.autograd.grad(out, list(module.parameters()), retain_graph=True)
    second = torch.autograd.grad(out, list(module.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_torchvision_checkpoint_loads_and_reproduces_its_output() -> None:
    module = to_torch(REPO / "tests/data/torchvision-tiny.yaml", memory_efficient=True)
    plain = to_torch(REPO / "tests/data/torchvision-tiny.yaml")
    assert list(module.state_dict()) == list(plain.state_dict())
    module.load_state_dict(
        torch.load(FIXTURES / "torchvision-tiny-densenet.pth", weights_only=True), strict=True
    )
    io = torch.load(FIXTURES / "torchvision-tiny-densenet-io.pt", weights_only=True)
    module.eval()
    with torch.no_grad():
        assert torch.allclose(module(io["input"]), io["output"], rtol=0, atol=1e-5)
    assert torch.allclose(module(io["input"]), io["output"], rtol=0, atol=1e-5)  # autograd path, eval BN


def _saved_bytes(module: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Bytes of the distinct storages autograd keeps for backward after one forward pass."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(x)
    return sum(storages.values()), out


def test_keeps_under_half_of_what_the_plain_module_keeps_for_backward() -> None:
    graph = graph_of(REPO / "specs/cifar/densenet-bc-l100-k12.yaml")
    plain = module_from_graph(graph, seed=0)
    efficient = module_from_graph(graph, seed=0, memory_efficient=True)
    x = torch.randn(2, 3, 32, 32)
    plain_bytes, plain_out = _saved_bytes(plain, x)
    efficient_bytes, efficient_out = _saved_bytes(efficient, x)
    assert torch.allclose(plain_out, efficient_out, atol=1e-5)
    assert efficient_bytes < 0.5 * plain_bytes, (efficient_bytes, plain_bytes)


def test_mode_is_a_switch_over_the_same_modules() -> None:
    module = to_torch(REPO / "specs/digits.yaml", seed=0)
    assert isinstance(module, GraphModule) and not module.memory_efficient
    x = torch.randn(2, 1, 8, 8)
    module.eval()
    with torch.no_grad():
        plain = module(x)
        module.memory_efficient = True
        assert torch.allclose(module(x), plain, atol=1e-6)


def test_dense_layers_read_the_block_buffer_without_concatenating() -> None:
    from torch.overrides import TorchFunctionMode

    class CountCat(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func is torch.cat:
                CountCat.calls += 1
            return func(*args, **(kwargs or {}))

    graph = graph_of(REPO / "specs/digits.yaml")
    plain = module_from_graph(graph, seed=0)
    efficient = module_from_graph(graph, seed=0, memory_efficient=True)
    x = torch.randn(4, 1, 8, 8)
    with CountCat():
        efficient(x).sum().backward()
    assert CountCat.calls == 0
    with CountCat():
        plain(x)
    assert CountCat.calls == sum(1 for node in graph if graph.in_degree(node) > 1)
