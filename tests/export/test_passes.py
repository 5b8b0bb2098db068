"""ONNX-level passes (batch tiling) exact in onnxruntime on random inputs, and onnxruntime's optimizer keeping
densegraph's graph rewrites (the op-list passes themselves are tested in tests/passes/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from densegraph.export.onnx import onnx_from_module
from densegraph.export.passes import (
    TILE_KEY,
    batch_tile_of,
    tile_batch,
    untile_batch,
)
from densegraph.lower.torch import freeze, to_torch

REPO = Path(__file__).resolve().parents[2]
TINY_SPEC = REPO / "tests" / "data" / "torchvision-tiny.yaml"
RNG = np.random.default_rng(0)

pytestmark = pytest.mark.usefixtures("one_thread")


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """onnxruntime with its own rewrites off, so that the comparison sees only ours."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def model(
    nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], channels: int, outputs: list[str]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, 8, 8])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["a", "b", "c", "d"]) for name in outputs],
        [
            numpy_helper.from_array(v.astype(np.float32) if v.dtype.kind == "f" else v, k)
            for k, v in inits.items()
        ],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    return m


# ---------------------------------------------------------------------------------------------------------
# on a real model


def test_onnxruntime_keeps_the_pool_conv_swap(tmp_path: Path) -> None:
    """densegraph's export runs each transition's avgpool before its 1x1 conv (4x fewer MACs); onnxruntime's
    optimizer (NCHWc layout, fusions) must not move the conv back in front of the pool."""
    module: Any = to_torch(TINY_SPEC, seed=0).eval()
    onnx.save(
        onnx_from_module(freeze(module, for_export=True)),
        tmp_path / "dg.onnx",
    )
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(tmp_path / "dg.onnx"), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(tmp_path / "optimized.onnx")
    producer = {out: n for n in optimized.graph.node for out in n.output}
    pools = [n for n in optimized.graph.node if n.op_type == "AveragePool"]
    assert len(pools) == 2  # two transitions
    for pool in pools:
        consumers = [n for n in optimized.graph.node if pool.output[0] in n.input]
        assert [n.op_type for n in consumers] == ["Conv"], "the transition conv no longer follows the pool"
        # and the conv's input really is the pooled (smaller) tensor, not a reordering of the full-size one
        assert producer[consumers[0].input[0]] is pool


# ---------------------------------------------------------------------------------------------------------
# batch tiling


def _exported_tiny(tmp_path: Path) -> onnx.ModelProto:
    module: Any = to_torch(TINY_SPEC, seed=0).eval()
    return onnx_from_module(freeze(module, for_export=True))


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("tile", [1, 2, 3])
def test_tile_batch_computes_the_same_for_every_batch_size(tmp_path: Path, tile: int) -> None:
    untiled = _exported_tiny(tmp_path)
    result = tile_batch(untiled, tile)
    assert result.rewrites == 1 and batch_tile_of(result.model) == tile
    onnx.checker.check_model(result.model, full_check=True)
    assert not any(n.op_type == "Loop" for n in result.model.graph.node)
    (scan,) = [n for n in result.model.graph.node if n.op_type == "Scan"]
    assert all(t.name.startswith("densegraph_tile/") for t in result.model.graph.initializer), (
        "the weights belong to the scan body"
    )
    body = helper.get_attribute_value(next(a for a in scan.attribute if a.name == "body"))
    assert [d.dim_value for d in body.input[0].type.tensor_type.shape.dim] == [tile, 3, 64, 64]
    outer = {t.name for t in result.model.graph.initializer} | {
        o for n in result.model.graph.node for o in n.output
    }
    inner = {t.name for t in body.initializer} | {o for n in body.node for o in n.output}
    assert not outer & inner, "a name of the scan body shadows one of the outer graph"
    plain, tiled = _session(untiled), _session(result.model)
    for batch in (1, 2, 3, 5, 7):  # whole tiles, a padded last tile, a batch smaller than a tile
        x = RNG.standard_normal((batch, 3, 64, 64), dtype=np.float32)
        want = plain.run(None, {"images": x})[0]
        got = tiled.run(None, {"images": x})[0]
        assert got.shape == want.shape == (batch, 10)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_untile_batch_gives_back_the_graph_and_tiling_twice_changes_nothing(tmp_path: Path) -> None:
    untiled = _exported_tiny(tmp_path)
    tiled = tile_batch(untiled, 2).model
    assert tile_batch(tiled, 5).rewrites == 0 and tile_batch(untiled, 0).rewrites == 0
    back = untile_batch(tiled)
    assert back.rewrites == 1 and batch_tile_of(back.model) is None
    assert TILE_KEY not in {p.key for p in back.model.metadata_props}
    assert [n.SerializeToString() for n in back.model.graph.node] == [
        n.SerializeToString() for n in untiled.graph.node
    ]
    assert {t.name: t.SerializeToString() for t in back.model.graph.initializer} == {
        t.name: t.SerializeToString() for t in untiled.graph.initializer
    }
    assert list(back.model.graph.input) == list(untiled.graph.input)
    assert list(back.model.graph.output) == list(untiled.graph.output)
    assert untile_batch(untiled).rewrites == 0


def test_tile_batch_refuses_a_fixed_batch() -> None:
    m = model([helper.make_node("Relu", ["x"], ["y"])], {}, 2, ["y"])
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    with pytest.raises(ValueError, match="fixed"):
        tile_batch(m, 2)


def test_onnxruntime_optimizes_inside_the_scan(tmp_path: Path) -> None:
    """The point of moving the weights into the body: onnxruntime's layout optimizer (NCHWc, with its
    reordered weights) applies to the tiled graph as it does to the untiled one."""
    tiled = tile_batch(_exported_tiny(tmp_path), 2).model
    onnx.save(tiled, tmp_path / "tiled.onnx")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(tmp_path / "tiled.onnx"), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(tmp_path / "optimized.onnx")
    (scan,) = [n for n in optimized.graph.node if n.op_type == "Scan"]
    body = helper.get_attribute_value(next(a for a in scan.attribute if a.name == "body"))
    domains = {n.domain for n in body.node}
    if "com.microsoft.nchwc" not in domains:  # the NCHWc layout needs AVX2 or AVX-512
        pytest.skip("onnxruntime uses no NCHWc layout on this CPU")
    assert sum(n.op_type == "Conv" and n.domain == "com.microsoft.nchwc" for n in body.node) >= 5


def test_tiled_int8_model_is_exact(tmp_path: Path) -> None:
    from densegraph.export.emit import onnx_from_graph
    from densegraph.export.quantize import quantize_onnx
    from densegraph.passes import INT8_CPU_PASSES

    module: Any = to_torch(TINY_SPEC, seed=0).eval()
    untiled, _ = onnx_from_graph(module.graph, module.state_dict(), passes=INT8_CPU_PASSES, opset=19)
    onnx.save(untiled, tmp_path / "fp32.onnx")
    calib = RNG.standard_normal((8, 3, 64, 64), dtype=np.float32)
    quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", calib, form="cpu")
    int8 = onnx.load(tmp_path / "int8.onnx")
    tiled = tile_batch(int8, 2).model
    onnx.checker.check_model(tiled, full_check=True)
    x = RNG.standard_normal((5, 3, 64, 64), dtype=np.float32)
    want = _session(int8).run(None, {"images": x})[0]
    np.testing.assert_allclose(_session(tiled).run(None, {"images": x})[0], want, rtol=1e-6, atol=1e-6)
