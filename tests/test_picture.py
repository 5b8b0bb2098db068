"""The build's picture drawn in a child process (a fresh ``densegraph build``) or in-process: the same bytes,
the child's errors as one line, and a child stopped when the build fails first."""

from __future__ import annotations

import sys
from concurrent.futures import Future
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from densegraph import build_graph, load_spec
from densegraph.builder.picture_stage import Picture
from densegraph.errors import BuildError, OutputError
from densegraph.export.onnx import verify_outputs

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("spec", ["digits.yaml", "hardnet/hardnet39ds.yaml"])
def test_child_draws_the_bytes_drawn_in_process(tmp_path: Path, spec: str) -> None:
    graph = build_graph(load_spec(REPO / "specs" / spec))
    here, there = tmp_path / "here.svg", tmp_path / "there.svg"
    with Picture(graph, there, child=True) as child:
        Picture(graph, here, child=False).finish()
        child.finish()
    assert there.read_bytes() == here.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here.svg", "there.svg"]


def test_child_is_used_only_where_matplotlib_is_not_loaded(tmp_path: Path) -> None:
    graph = build_graph(load_spec(REPO / "specs" / "digits.yaml"))
    assert "matplotlib" in sys.modules  # conftest loads it: the test session draws in-process
    picture = Picture(graph, tmp_path / "g.svg")
    assert picture._process is None
    picture.finish()
    assert (tmp_path / "g.svg").stat().st_size > 0


def test_a_write_error_in_the_child_is_the_same_one_line_error(tmp_path: Path) -> None:
    graph = build_graph(load_spec(REPO / "specs" / "digits.yaml"))
    (tmp_path / "file").write_text("not a folder")
    target = tmp_path / "file" / "g.svg"
    with pytest.raises(OutputError) as there:
        Picture(graph, target, child=True).finish()
    with pytest.raises(OutputError) as here:
        Picture(graph, target, child=False).finish()
    assert str(there.value) == str(here.value)
    assert "\n" not in str(there.value)


def test_a_crash_in_the_child_is_a_build_error_naming_its_last_line(tmp_path: Path) -> None:
    broken = nx.DiGraph()
    broken.add_edge("a", "b")  # no kinds, no blocks: the drawing fails with a KeyError
    with pytest.raises(BuildError, match=r"child process \(exit 1\): KeyError: 'kind'"):
        Picture(broken, tmp_path / "g.svg", child=True).finish()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_build_stops_the_child(tmp_path: Path) -> None:
    graph = build_graph(load_spec(REPO / "specs" / "densenet169.yaml"))
    with (
        pytest.raises(RuntimeError, match="a later stage"),
        Picture(graph, tmp_path / "g.svg", child=True) as p,
    ):
        raise RuntimeError("a later stage failed")
    assert p._process is not None and p._process.returncode is not None
    assert not (tmp_path / "g.svg").exists()


def test_verify_outputs_waits_for_a_future_reference(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, 2, 2])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["images"], ["r"]), helper.make_node("Flatten", ["r"], ["logits"])],
            "g",
            [x],
            [y],
        ),
        opset_imports=[helper.make_opsetid("", 19)],
    )
    onnx.save(model, tmp_path / "m.onnx")
    inputs = [np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 1, 2, 2)]
    good: Future[list[np.ndarray]] = Future()
    good.set_result([np.maximum(inputs[0], 0).reshape(2, 4)])
    assert verify_outputs(tmp_path / "m.onnx", inputs, good, "fp32", threads=1)["passed"]
    bad: Future[list[np.ndarray]] = Future()
    bad.set_result([inputs[0].reshape(2, 4)])
    with pytest.raises(BuildError):
        verify_outputs(tmp_path / "m.onnx", inputs, bad, "fp32", threads=1)
    failed: Future[list[np.ndarray]] = Future()
    failed.set_exception(BuildError("the PyTorch model's outputs are not finite"))
    with pytest.raises(BuildError, match="not finite"):
        verify_outputs(tmp_path / "m.onnx", inputs, failed, "fp32")
