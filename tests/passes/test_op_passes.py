"""The op-list passes (densegraph.passes): each one exact against the ops it replaces (float64, random
tensors, negative and zero BN scales), each one leaving alone what it must not touch; and the graph-wide
runner, the tensors it reads from a state_dict, and every shipped pass set emitted to ONNX and run by
onnxruntime against the unrewritten PyTorch module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from densegraph.passes import (
    EXPORT_PASSES,
    FP16_PASSES,
    INT8_CPU_PASSES,
    PASSES,
    PassResult,
    avgpool_to_depthwise,
    bn_to_depthwise,
    fold_bn,
    fold_preactivation,
    frozen_ops,
    fuse_bn_relu,
    fuse_conv_relu,
    run_passes,
    swap_pool_conv,
)

REPO = Path(__file__).resolve().parents[2]
TINY_SPEC = REPO / "tests" / "data" / "torchvision-tiny.yaml"
FAMILY_SPEC = REPO / "tests" / "data" / "family-tiny.yaml"  # ReLU6, grouped convs, blur, ceil-mode pools

pytestmark = pytest.mark.usefixtures("one_thread")


def _conv_bn_reference(x, conv, bn):  # type: ignore[no-untyped-def]
    out = F.conv2d(x, conv["weight"], conv["bias"], padding=conv["padding"])
    return F.batch_norm(out, bn["mean"], bn["var"], bn["weight"], bn["bias"], False, 0.0, bn["eps"])


def _bn(channels: int, generator: torch.Generator, zero: bool = False) -> dict:
    weight = torch.randn(channels, generator=generator, dtype=torch.float64)
    if zero:
        weight[0] = 0.0
    return {
        "op": "bn",
        "name": "bn",
        "in_channels": channels,
        "channels": channels,
        "weight": weight,
        "bias": torch.randn(channels, generator=generator, dtype=torch.float64),
        "mean": torch.randn(channels, generator=generator, dtype=torch.float64),
        "var": torch.rand(channels, generator=generator, dtype=torch.float64) + 0.1,
        "eps": 1e-5,
    }


def _conv(cin: int, cout: int, kernel: int, generator: torch.Generator, bias: bool, padding: int = 0) -> dict:
    return {
        "op": "conv",
        "name": "conv",
        "in_channels": cin,
        "out_channels": cout,
        "kernel": kernel,
        "stride": 1,
        "padding": padding,
        "weight": torch.randn(cout, cin, kernel, kernel, generator=generator, dtype=torch.float64),
        "bias": torch.randn(cout, generator=generator, dtype=torch.float64) if bias else None,
        "post": None,
    }


@pytest.mark.parametrize("bias", [False, True])
def test_fold_bn_against_the_two_ops(bias: bool) -> None:
    generator = torch.Generator().manual_seed(1)
    conv, bn = _conv(5, 7, 3, generator, bias, padding=1), _bn(7, generator)
    result = fold_bn([conv, bn])
    assert result.rewrites == 1
    (folded,) = result.ops
    x = torch.randn(2, 5, 6, 6, generator=generator, dtype=torch.float64)
    expected = _conv_bn_reference(x, conv, bn)
    assert torch.allclose(
        F.conv2d(x, folded["weight"], folded["bias"], padding=1), expected, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("between", [[], ["avgpool"], ["global_avgpool"]])
def test_fold_preactivation_against_bn_relu_then_the_linear_op(between: list[str]) -> None:
    generator = torch.Generator().manual_seed(2)
    bn = _bn(6, generator, zero=True)
    bn["weight"][1:3] *= -1  # negative scales take the min side of the clamp
    pools = [{"op": kind, "name": None, "kernel": 2, "stride": 2, "padding": 0} for kind in between]
    x = torch.randn(3, 6, 8, 8, generator=generator, dtype=torch.float64) * 2

    def pool(t: torch.Tensor) -> torch.Tensor:
        for p in pools:
            t = F.avg_pool2d(t, 2) if p["op"] == "avgpool" else torch.flatten(F.adaptive_avg_pool2d(t, 1), 1)
        return t

    if between == ["global_avgpool"]:
        target = {
            "op": "linear",
            "name": "fc",
            "weight": torch.randn(4, 6, generator=generator, dtype=torch.float64),
        }
        target.update(bias=torch.randn(4, generator=generator, dtype=torch.float64), post=None)

        def apply(t: torch.Tensor, op: dict) -> torch.Tensor:
            return F.linear(t, op["weight"], op["bias"])

    else:
        target = _conv(6, 4, 1, generator, bias=True)

        def apply(t: torch.Tensor, op: dict) -> torch.Tensor:
            return F.conv2d(t, op["weight"], op["bias"])

    ops = [bn, {"op": "relu", "name": None}, *pools, target]
    result = fold_preactivation(ops)
    rewritten = result.ops
    assert result.rewrites == 1
    assert [op["op"] for op in rewritten] == ["clamp", *between, target["op"]]
    clamp = rewritten[0]
    reference = F.batch_norm(x, bn["mean"], bn["var"], bn["weight"], bn["bias"], False, 0.0, bn["eps"])
    expected = apply(pool(F.relu(reference)), target)
    low, high = (clamp[k].view(1, -1, 1, 1) for k in ("low", "high"))
    got = apply(pool(torch.clamp(x, low, high)), rewritten[-1])
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_fold_preactivation_leaves_a_padded_conv_alone() -> None:
    generator = torch.Generator().manual_seed(3)
    ops = [_bn(4, generator), {"op": "relu", "name": None}, _conv(4, 4, 3, generator, bias=False, padding=1)]
    assert fold_preactivation(ops) == PassResult(ops, 0)


def test_swap_pool_conv_against_conv_then_pool() -> None:
    generator = torch.Generator().manual_seed(4)
    conv = _conv(6, 3, 1, generator, bias=True)
    pool = {"op": "avgpool", "name": "pool", "kernel": 2, "stride": 2, "padding": 0}
    assert swap_pool_conv([conv, pool]) == PassResult([{**pool, "in_channels": 6}, conv], 1)
    x = torch.randn(2, 6, 8, 8, generator=generator, dtype=torch.float64)
    expected = F.avg_pool2d(F.conv2d(x, conv["weight"], conv["bias"]), 2)
    assert torch.allclose(F.conv2d(F.avg_pool2d(x, 2), conv["weight"], conv["bias"]), expected, atol=1e-12)
    wide = _conv(6, 3, 3, generator, bias=True)  # not 1x1: not linear per pixel, no swap
    assert swap_pool_conv([wide, pool]) == PassResult([wide, pool], 0)


def _bn_reference(x: torch.Tensor, bn: dict) -> torch.Tensor:
    return F.batch_norm(x, bn["mean"], bn["var"], bn["weight"], bn["bias"], False, 0.0, bn["eps"])


def test_bn_to_depthwise_against_the_bn() -> None:
    generator = torch.Generator().manual_seed(5)
    bn = _bn(6, generator, zero=True)
    relu = {"op": "relu", "name": None, "in_channels": 6}
    result = bn_to_depthwise([bn, relu])
    assert result.rewrites == 1 and result.ops[1] is relu
    conv = result.ops[0]
    assert (conv["op"], conv["name"], conv["groups"], conv["kernel"]) == ("conv", "bn", 6, 1)
    x = torch.randn(2, 6, 5, 5, generator=generator, dtype=torch.float64)
    got = F.conv2d(x, conv["weight"], conv["bias"], groups=conv["groups"])
    assert torch.allclose(got, _bn_reference(x, bn), rtol=1e-12, atol=1e-12)
    assert bn_to_depthwise([relu]) == PassResult([relu], 0)


@pytest.mark.parametrize("kernel", [2, 3])
def test_avgpool_to_depthwise_against_the_pool(kernel: int) -> None:
    pool = {"op": "avgpool", "name": "pool", "kernel": kernel, "stride": 2, "padding": 0, "in_channels": 4}
    result = avgpool_to_depthwise([pool])
    assert result.rewrites == 1
    conv = result.ops[0]
    x = torch.randn(2, 4, 9, 9, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    got = F.conv2d(x, conv["weight"], conv["bias"], stride=conv["stride"], groups=conv["groups"])
    assert torch.allclose(got, F.avg_pool2d(x, kernel, 2), rtol=1e-12, atol=1e-12)
    padded = {**pool, "padding": 1}  # zero padding counts in the mean: a conv would differ at the edges
    assert avgpool_to_depthwise([padded]) == PassResult([padded], 0)


def test_fuse_bn_relu_against_bn_then_relu() -> None:
    generator = torch.Generator().manual_seed(7)
    bn, lone = _bn(5, generator, zero=True), _bn(5, generator)
    result = fuse_bn_relu([bn, {"op": "relu", "name": None, "in_channels": 5}, lone])
    assert [op["op"] for op in result.ops] == ["affine_relu", "affine"] and result.rewrites == 2
    x = torch.randn(2, 5, 4, 4, generator=generator, dtype=torch.float64)
    fused, affine = result.ops
    got = torch.relu(x * fused["scale"].view(1, -1, 1, 1) + fused["shift"].view(1, -1, 1, 1))
    assert torch.allclose(got, torch.relu(_bn_reference(x, bn)), rtol=1e-12, atol=1e-12)
    got = x * affine["scale"].view(1, -1, 1, 1) + affine["shift"].view(1, -1, 1, 1)
    assert torch.allclose(got, _bn_reference(x, lone), rtol=1e-12, atol=1e-12)


def test_fuse_conv_relu_marks_the_conv() -> None:
    conv = _conv(3, 4, 1, torch.Generator().manual_seed(8), bias=False)
    relu = {"op": "relu", "name": "r", "in_channels": 4}
    assert fuse_conv_relu([conv, relu]) == PassResult([{**conv, "post": "relu"}], 1)
    assert fuse_conv_relu([relu, conv]) == PassResult([relu, conv], 0)


# ---------------------------------------------------------------------------------------------------------
# the family's ops: grouped convs, ReLU6, ceil-mode pools, blur pools


def _depthwise(channels: int, kernel: int, generator: torch.Generator, stride: int = 1) -> dict:
    conv = _conv(1, channels, kernel, generator, bias=False, padding=kernel // 2)
    return {**conv, "in_channels": channels, "groups": channels, "stride": stride}


def test_fold_bn_into_a_grouped_conv_is_exact() -> None:
    generator = torch.Generator().manual_seed(11)
    conv, bn = _depthwise(6, 3, generator, stride=2), _bn(6, generator, zero=True)
    (folded,) = fold_bn([conv, bn]).ops
    x = torch.randn(2, 6, 9, 9, generator=generator, dtype=torch.float64)
    out = F.conv2d(x, conv["weight"], None, 2, 1, 1, 6)
    expected = _bn_reference(out, bn)
    got = F.conv2d(x, folded["weight"], folded["bias"], 2, 1, 1, folded["groups"])
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_fold_preactivation_leaves_grouped_convs_and_relu6_alone() -> None:
    """The clamp trick moves the BN scale into the conv's input channels: a grouped conv's weight has no
    input-channel axis to take it, and ReLU6 is no one-sided clamp. Both stay as they are."""
    generator = torch.Generator().manual_seed(12)
    grouped = {**_depthwise(4, 1, generator), "padding": 0}
    ops = [_bn(4, generator), {"op": "relu", "name": None}, grouped]
    assert fold_preactivation(ops) == PassResult(ops, 0)
    ops = [_bn(4, generator), {"op": "relu6", "name": None}, _conv(4, 3, 1, generator, bias=False)]
    assert fold_preactivation(ops) == PassResult(ops, 0)


def test_relu6_is_never_fused_as_a_relu() -> None:
    generator = torch.Generator().manual_seed(13)
    conv, relu6 = _conv(3, 4, 1, generator, bias=False), {"op": "relu6", "name": None, "in_channels": 4}
    assert fuse_conv_relu([conv, relu6]) == PassResult([conv, relu6], 0)
    result = fuse_bn_relu([_bn(4, generator), relu6])
    assert [op["op"] for op in result.ops] == ["affine", "relu6"]


def test_ceil_mode_pools_are_not_swapped_or_made_convs() -> None:
    """A ceil-mode window hangs off the edge: it averages fewer pixels, which no fixed conv reproduces."""
    generator = torch.Generator().manual_seed(14)
    conv = _conv(6, 3, 1, generator, bias=True)
    pool = {"op": "avgpool", "name": "p", "kernel": 2, "stride": 2, "padding": 0, "ceil_mode": True}
    pool["in_channels"] = 6
    assert swap_pool_conv([conv, pool]) == PassResult([conv, pool], 0)
    assert avgpool_to_depthwise([pool]) == PassResult([pool], 0)
    x = torch.randn(1, 6, 5, 5, generator=generator, dtype=torch.float64)
    assert F.avg_pool2d(x, 2, 2, ceil_mode=True).shape[-1] == 3  # the case the guards are for


def test_swap_pool_conv_moves_a_pool_before_a_depthwise_pointwise_conv_exactly() -> None:
    generator = torch.Generator().manual_seed(15)
    conv = {**_depthwise(6, 1, generator), "padding": 0, "bias": torch.randn(6, dtype=torch.float64)}
    pool = {"op": "avgpool", "name": "p", "kernel": 2, "stride": 2, "padding": 0}
    result = swap_pool_conv([conv, pool])
    assert result.rewrites == 1
    x = torch.randn(2, 6, 8, 8, generator=generator, dtype=torch.float64)
    expected = F.avg_pool2d(F.conv2d(x, conv["weight"], conv["bias"], groups=6), 2)
    got = F.conv2d(F.avg_pool2d(x, 2), conv["weight"], conv["bias"], groups=6)
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# the graph-wide runner and the tensors it reads


def _tiny(spec: Path = TINY_SPEC) -> Any:
    from densegraph.lower.torch import to_torch
    from densegraph.testing import randomize_batchnorm

    return randomize_batchnorm(to_torch(spec, seed=0).eval(), seed=3, scale=(-1.0, 1.5))


def test_frozen_ops_reads_the_state_dict_and_leaves_it_alone() -> None:
    module = _tiny()
    state = module.state_dict()
    before = {k: v.clone() for k, v in state.items()}
    ops = frozen_ops(module.graph, state)
    conv0, norm0 = ops["stem"][:2]
    assert conv0["weight"].dtype == torch.float64 and conv0["bias"] is None and conv0["post"] is None
    assert torch.equal(norm0["var"], state["features.norm0.running_var"].double())
    assert ops["block1.layer2"][0]["in_channels"] == module.graph.nodes["block1.layer2"]["in_channels"]
    run_passes(ops, PASSES)
    assert all(torch.equal(state[k], v) for k, v in before.items())
    del state["features.conv0.weight"]
    with pytest.raises(KeyError, match="stem: op conv 'features.conv0'"):
        frozen_ops(module.graph, state)


def test_run_passes_counts_and_refuses_unknown_names() -> None:
    module = _tiny()
    result = run_passes(frozen_ops(module.graph, module.state_dict()), EXPORT_PASSES)
    # the stem's BN, and every dense layer's norm2 (7 layers), fold into the conv before them; 2 transitions
    assert result.counts == {"fold_bn": 8, "swap_pool_conv": 2}
    assert result.applied == ["fold_bn", "swap_pool_conv"]
    assert [op["op"] for op in result.node_ops["transition1"]] == ["bn", "relu", "avgpool", "conv"]
    with pytest.raises(ValueError, match="unknown passes"):
        run_passes({}, ["fold_everything"])


@pytest.mark.parametrize(
    "passes",
    [(), EXPORT_PASSES, FP16_PASSES, INT8_CPU_PASSES, tuple(PASSES)],
    ids=["none", "export", "fp16", "int8-cpu", "all"],
)
@pytest.mark.parametrize("spec", [TINY_SPEC, FAMILY_SPEC], ids=["torchvision-tiny", "family-tiny"])
def test_every_pass_set_emits_what_pytorch_computes(passes: tuple[str, ...], spec: Path) -> None:
    """Each pass set, emitted to ONNX and run by onnxruntime, against the unrewritten eval module."""
    from densegraph.export.emit import onnx_from_graph
    from densegraph.export.onnx import check_onnx, ort_session, run_onnx

    module = _tiny(spec)
    model, counts = onnx_from_graph(module.graph, module.state_dict(), passes=passes, opset=19)
    assert set(counts) == set(passes)
    session = ort_session(check_onnx(model).SerializeToString())
    x = np.random.default_rng(0).standard_normal((3, *module.input_shape), dtype=np.float32)
    with torch.inference_mode():
        want = module(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(run_onnx(session, x) - want)) <= 1e-4
