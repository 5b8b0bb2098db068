"""Foreign ONNX models given to ``eval`` and ``bench``: each is one line naming the model and what densegraph
feeds it, never an onnxruntime traceback. The models are made here with ``onnx.helper``: a linear classifier
of 8x8 digits, bent in one way each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from hostile import assert_refused, run_cli, snapshot
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def _weights() -> list[onnx.TensorProto]:
    rng = np.random.default_rng(0)
    return [
        numpy_helper.from_array(rng.standard_normal((64, 10)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([-1, 64], np.int64), "flat"),
    ]


def _model(nodes: list, inputs: list, outputs: list, extra: list | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "foreign", inputs, outputs, initializer=_weights() + (extra or []))
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="someone else")
    onnx.checker.check_model(model, full_check=True)
    return model


IMAGES = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, 8, 8])
LOGITS = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])
CLASSIFY = [
    helper.make_node("Reshape", ["images", "flat"], ["x"]),
    helper.make_node("MatMul", ["x", "w"], ["logits"]),
]


def good() -> onnx.ModelProto:
    return _model(CLASSIFY, [IMAGES], [LOGITS])


def two_inputs() -> onnx.ModelProto:
    bias = helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["batch", 10])
    nodes = [
        *CLASSIFY[:1],
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Add", ["y", "bias"], ["logits"]),
    ]
    return _model(nodes, [IMAGES, bias], [LOGITS])


def int64_input() -> onnx.ModelProto:
    ids = helper.make_tensor_value_info("images", TensorProto.INT64, ["batch", 1, 8, 8])
    nodes = [helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT), *CLASSIFY]
    nodes[1] = helper.make_node("Reshape", ["f", "flat"], ["x"])
    return _model(nodes, [ids], [LOGITS])


def flat_input() -> onnx.ModelProto:
    flat = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 64])
    return _model([helper.make_node("MatMul", ["images", "w"], ["logits"])], [flat], [LOGITS])


def fails_at_run_time() -> onnx.ModelProto:
    # a Reshape to 7 rows checks out, and fails inside onnxruntime for any batch whose size * 64 is not a
    # multiple of 7 (the eval batches of 64 and the bench batch of 1 both)
    seven = numpy_helper.from_array(np.array([7, -1], np.int64), "seven")
    nodes = [
        helper.make_node("Reshape", ["images", "seven"], ["rows"]),
        helper.make_node("ReduceMean", ["rows"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Reshape", ["images", "flat"], ["x"]),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Mul", ["y", "mean"], ["logits"]),
    ]
    return _model(
        nodes, [IMAGES], [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["rows", 10])], [seven]
    )


def image_output() -> onnx.ModelProto:
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, 8, 8])
    return _model([helper.make_node("Relu", ["images"], ["logits"])], [IMAGES], [out])


MODELS: dict[str, tuple[Callable[[], onnx.ModelProto], str]] = {
    "second-required-input": (
        two_inputs,
        "the model has 2 required inputs ('images' tensor(float) ['batch', 1, 8, 8], 'bias' tensor(float) "
        "['batch', 10]); densegraph feeds one input, images [batch, C, H, W] float32",
    ),
    "int64-input": (int64_input, "input 'images' is tensor(int64); densegraph feeds one input, images"),
    "wrong-rank-input": (flat_input, "input 'images' has shape ['batch', 64]; densegraph feeds one input"),
    "fails-at-run-time": (fails_at_run_time, "onnxruntime failed running the model on a batch ["),
    "image-output": (
        image_output,
        "output 'logits' is tensor(float) ['batch', 1, 8, 8]; expected float logits",
    ),
}


def _command(kind: str, model: Path) -> list[object]:
    if kind == "eval":
        return ["eval", model, "--data", "digits"]
    return ["bench", model, "--batch-sizes", "1", "--iters", "1", "--warmup", "0", "--device", "cpu"]


@pytest.mark.parametrize("kind", ["eval", "bench"])
@pytest.mark.parametrize("case", sorted(MODELS))
def test_a_foreign_model_is_one_line_naming_it(case: str, kind: str, tmp_path: Path) -> None:
    make, says = MODELS[case]
    model = tmp_path / f"{case}.onnx"
    onnx.save(make(), model)
    before = snapshot(tmp_path)
    result = run_cli(*_command(kind, model))
    line = assert_refused(result, names=model, says=says)
    assert line.startswith(f"{model}: error: ")
    assert snapshot(tmp_path) == before


def test_the_good_model_still_runs(tmp_path: Path) -> None:
    """The same classifier unbent: eval scores it (against numpy's own matmul) and bench times it."""
    from densegraph.data import load_data

    model = tmp_path / "good.onnx"
    onnx.save(good(), model)
    test = load_data("digits", (1, 8, 8), split="test")  # eval's default split where there is one
    expected = (test.x.reshape(len(test), 64) @ numpy_helper.to_array(_weights()[0])).argmax(1)
    top1 = 100.0 * float((expected == test.y).mean())
    result = run_cli("eval", model, "--data", "digits")
    assert result.returncode == 0, result.stderr
    assert f"top-1 {top1:.2f}%" in result.stdout
    bench = run_cli(*_command("bench", model), "--json")
    assert bench.returncode == 0, bench.stderr


def test_bench_refuses_a_batch_whose_input_alone_cannot_fit(tmp_path: Path) -> None:
    model = tmp_path / "good.onnx"
    onnx.save(good(), model)
    before = snapshot(tmp_path)
    result = run_cli("bench", model, "--batch-sizes", "1000000000", "--device", "cpu")
    # 10^9 samples of 64 values, drawn in float64 and cast to float32
    assert_refused(
        result, names=model, says="--batch-sizes 1000000000 (its input batch alone) needs at least 715.3 GiB"
    )
    assert snapshot(tmp_path) == before
