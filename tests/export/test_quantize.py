"""INT8: both forms valid; the TensorRT form symmetric per-channel Q/DQ; the CPU form int8 end to end in
onnxruntime with one scale per block buffer; a digits model keeps its top-1 within a point."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from densegraph.errors import DataError
from densegraph.export.emit import onnx_from_graph
from densegraph.export.onnx import check_onnx, save_onnx
from densegraph.export.quantize import block_buffer_groups, quantize_onnx
from densegraph.lower.torch import to_torch
from densegraph.passes import EXPORT_PASSES, INT8_CPU_PASSES
from densegraph.testing import randomize_batchnorm

REPO = Path(__file__).resolve().parents[2]
TINY_SPEC = REPO / "tests" / "data" / "torchvision-tiny.yaml"
DIGITS_SPEC = REPO / "specs" / "digits.yaml"
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}

pytestmark = pytest.mark.usefixtures("one_thread")


FORM_PASSES = {"qdq": EXPORT_PASSES, "cpu": INT8_CPU_PASSES}


def emit_fp32(module: Any, path: Path, form: str) -> Path:
    """densegraph's fp32 ONNX of ``module``, emitted with the passes the int8 ``form`` quantizes."""
    model, _ = onnx_from_graph(module.graph, module.state_dict(), passes=FORM_PASSES[form], opset=19)
    save_onnx(check_onnx(model), path)
    return path


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fp32 ONNX of the tiny torchvision-shaped DenseNet (non-trivial BN statistics) for each form."""
    folder = tmp_path_factory.mktemp("tiny")
    module: Any = randomize_batchnorm(to_torch(TINY_SPEC, seed=0).eval(), seed=0)
    return {form: emit_fp32(module, folder / f"fp32.{form}.onnx", form) for form in FORM_PASSES}


@pytest.fixture(scope="module")
def tiny_fp32(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["qdq"]


@pytest.fixture(scope="module")
def tiny_cpu(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["cpu"]


def calib(n: int = 16, shape: tuple[int, ...] = (3, 64, 64)) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, *shape), dtype=np.float32)


def quiet(fn, *args, **kwargs):  # noqa: ANN001, ANN202 - the histogram calibrators print progress
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def run(path: Path, x: np.ndarray, **options: object) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    for key, value in options.items():
        setattr(so, key, value)
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})[0]


@pytest.mark.parametrize("form", ["qdq", "cpu"])
def test_both_forms_are_valid_and_close_to_fp32(
    tiny_models: dict[str, Path], tmp_path: Path, form: str
) -> None:
    tiny_fp32 = tiny_models[form]
    out = tmp_path / "sub" / f"int8.{form}.onnx"
    info = quantize_onnx(tiny_fp32, out, calib(), form=form)
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert info["form"] == form and info["calibration"]["samples"] == 16
    assert info["quantized_nodes"]["Conv"] >= 17  # the tiny net's 17 convs at least
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # written atomically: no leftovers
    x = calib(4)
    fp32, int8 = run(tiny_fp32, x), run(out, x)
    signal = fp32 - fp32.mean(1, keepdims=True)
    noise = signal - (int8 - int8.mean(1, keepdims=True))
    assert 10 * np.log10(np.sum(signal**2) / np.sum(noise**2)) > 15  # dB


def test_qdq_form_is_what_tensorrt_builds_int8_from(tiny_fp32: Path, tmp_path: Path) -> None:
    """Only QuantizeLinear/DequantizeLinear and float ops; int8 with zero point 0 everywhere; per-channel
    weight scales along the output channels (axis 0); every conv fed by DQ on its input and its weights."""
    out = tmp_path / "int8.onnx"
    quantize_onnx(tiny_fp32, out, calib(), form="qdq")
    model = onnx.load(out)
    inits = initializers(model)
    plain_ops = {n.op_type for n in onnx.load(tiny_fp32).graph.node}
    assert {n.op_type for n in model.graph.node} <= plain_ops | QDQ_OPS
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    producer = {out: n for n in model.graph.node for out in n.output}
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            zero_point = inits[node.input[2]]
            assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 17
    for conv in convs:
        data, weight = producer[conv.input[0]], producer[conv.input[1]]
        assert data.op_type == "DequantizeLinear" and weight.op_type == "DequantizeLinear"
        assert inits[data.input[1]].ndim == 0  # per-tensor activations
        w, scale = inits[weight.input[0]], inits[weight.input[1]]
        assert w.dtype == np.int8 and scale.shape == (w.shape[0],)
        assert next(a.i for a in weight.attribute if a.name == "axis") == 0
        if len(conv.input) > 2:  # TensorRT takes a float bias
            assert conv.input[2] in inits and inits[conv.input[2]].dtype == np.float32
    # and the TensorRT stage's own reading of it agrees
    from densegraph.export.tensorrt import inspect_onnx

    info = inspect_onnx(out)
    assert info.has_qdq and not info.asymmetric_qdq


def test_cpu_form_runs_int8_end_to_end_in_onnxruntime(tiny_cpu: Path, tmp_path: Path) -> None:
    """onnxruntime's optimized graph is int8 from the first conv to the classifier: BN-ReLU, the pools and the
    concatenations run as QLinear ops, no float Conv/BatchNormalization/Relu/AveragePool is left between."""
    out = tmp_path / "int8.onnx"
    quantize_onnx(tiny_cpu, out, calib(), form="cpu")
    run(out, calib(2), optimized_model_filepath=str(tmp_path / "optimized.onnx"))
    ops = [n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node]
    floats = {"Conv", "BatchNormalization", "Relu", "AveragePool", "QLinearAveragePool", "Concat"} & set(ops)
    assert not floats, f"float ops left in the int8 graph: {floats}"
    assert ops.count("QLinearConv") == 17 + 10 + 2 and ops.count("QLinearConcat") == 7
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 1  # images in, logits out


def test_cpu_form_shares_one_scale_per_block_buffer(tiny_cpu: Path, tmp_path: Path) -> None:
    """Every map a block's convs write into its buffer, and every concatenation of them, has the block's
    scale: the concatenations copy uint8 without requantizing. (Block 1's input is the exception: it comes from
    the stem's ReLU-max-pool, whose zero-point-0 range cannot hold the block's negative values.)"""
    out = tmp_path / "int8.onnx"
    quantize_onnx(tiny_cpu, out, calib(), form="cpu")
    model = onnx.load(out)
    inits = initializers(model)
    producer = {out: n for n in model.graph.node for out in n.output}
    conv_outputs = {n.output[0] for n in model.graph.node if n.op_type == "Conv"}
    assert len(block_buffer_groups(onnx.load(tiny_cpu))) == 3

    def quantizer(tensor: str) -> onnx.NodeProto:  # the QuantizeLinear behind a dequantized tensor
        dq = producer[tensor]
        assert dq.op_type == "DequantizeLinear"
        return producer[dq.input[0]]

    def params(q: onnx.NodeProto) -> tuple[float, int]:
        return float(inits[q.input[1]]), int(inits[q.input[2]])

    checked = 0
    for concat in (n for n in model.graph.node if n.op_type == "Concat"):
        written = [quantizer(t) for t in concat.input if quantizer(t).input[0] in conv_outputs]
        output_q = next(
            n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == concat.output[0]
        )
        assert len({params(q) for q in [*written, output_q]}) == 1, concat.name
        checked += len(written)
    # conv-written pieces per concatenation: block 1 (layer 2, transition) 1 + 2; block 2 2 + 3 + 4; block 3 2 + 3
    assert checked == 17


def test_cpu_form_needs_the_int8_cpu_passes(tiny_fp32: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="INT8_CPU_PASSES"):
        quantize_onnx(tiny_fp32, tmp_path / "int8.onnx", calib(), form="cpu")
    assert not (tmp_path / "int8.onnx").exists()


def test_bad_calibration_data_is_a_user_error(tiny_cpu: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8.onnx"
    with pytest.raises(DataError, match="calibration images are"):
        quantize_onnx(tiny_cpu, out, calib(shape=(3, 32, 32)), form="cpu")
    with pytest.raises(DataError, match="non-empty"):
        quantize_onnx(tiny_cpu, out, np.zeros((0, 3, 64, 64), np.float32), form="cpu")
    with pytest.raises(ValueError, match="form"):
        quantize_onnx(tiny_cpu, out, calib(), form="fp8")
    assert not out.exists()


@pytest.mark.parametrize("form", ["qdq", "cpu"])
def test_minmax_ranges_do_not_depend_on_the_calibration_batch(
    tiny_models: dict[str, Path], tmp_path: Path, form: str
) -> None:
    """A MinMax range is the min/max over every sample however they are batched: batch 1 and batch 8 give the
    same graph and the same int8 weights, zero points and int32 biases; the float scales differ at most in
    the last bits (onnxruntime's convs round differently at another batch size)."""
    models = {}
    for batch in (1, 8):
        quantize_onnx(tiny_models[form], tmp_path / f"b{batch}.onnx", calib(), form=form, batch_size=batch)
        models[batch] = onnx.load(tmp_path / f"b{batch}.onnx")
    one, eight = (initializers(models[b]) for b in (1, 8))
    assert one.keys() == eight.keys()
    scales = [name for name, value in one.items() if name.endswith("_scale") and value.ndim == 0]
    assert len(scales) >= 20  # the activations' scales, compared below with everything else
    for name, value in one.items():
        if value.dtype == np.float32:
            np.testing.assert_allclose(eight[name], value, rtol=1e-6, atol=0, err_msg=name)
        else:
            assert np.array_equal(eight[name], value), name
    for model in models.values():
        model.graph.ClearField("initializer")
    assert models[1].SerializeToString() == models[8].SerializeToString()


def test_calibration_runs_batch_size_samples_at_a_time(
    tiny_cpu: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What bounds calibration memory: the calibrator's session sees at most ``batch_size`` samples a run."""
    from densegraph.export import quantize

    seen: list[int] = []
    get_next = quantize._Reader.get_next

    def recording(self: Any) -> dict[str, np.ndarray] | None:
        batch = get_next(self)
        if batch is not None:
            seen.append(len(batch["images"]))
        return batch

    monkeypatch.setattr(quantize._Reader, "get_next", recording)
    info = quantize_onnx(tiny_cpu, tmp_path / "int8.onnx", calib(), form="cpu", batch_size=5)
    # (an onnxruntime older than calibration_cache_path reads the data once more in quantize_static)
    assert seen[:4] == [5, 5, 5, 1] and set(seen) == {5, 1} and info["calibration"]["batch_size"] == 5
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            quantize_onnx(tiny_cpu, tmp_path / "bad.onnx", calib(), form="cpu", batch_size=bad)
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.slow
def test_int8_keeps_digits_top1_within_a_point(tmp_path: Path) -> None:
    """A digits model trained by the project (3 epochs): both int8 forms within 1 point of fp32 top-1."""
    from densegraph.data import load_data
    from densegraph.training import train

    torch.manual_seed(0)
    train(DIGITS_SPEC, "digits", tmp_path / "run", epochs=3, log=lambda _: None)
    module: Any = to_torch(DIGITS_SPEC)
    module.load_state_dict(torch.load(tmp_path / "run" / "best.pt", weights_only=False)["state_dict"])
    module.eval()
    shape = tuple(module.input_shape)
    fp32 = tmp_path / "fp32.onnx"
    cpu_fp32 = emit_fp32(module, tmp_path / "fp32.cpu.onnx", "cpu")
    emit_fp32(module, fp32, "qdq")
    train_split, val = load_data("digits", shape, split="train"), load_data("digits", shape, split="val")
    calibration = train_split.x[np.random.default_rng(0).permutation(len(train_split))[:256]]

    def top1(path: Path) -> float:
        return 100 * float(np.mean(run(path, val.x).argmax(1) == val.y))

    reference = top1(fp32)
    assert reference > 90
    assert abs(top1(cpu_fp32) - reference) <= 100 / len(val.y)  # exact rewrites: at most a tie flips
    for form, source in (("cpu", cpu_fp32), ("qdq", fp32)):
        quiet(quantize_onnx, source, tmp_path / f"{form}.onnx", calibration, form=form)
        assert top1(tmp_path / f"{form}.onnx") >= reference - 1.0, form
