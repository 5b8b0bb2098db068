"""Top-1 accuracy of a model on real data, whatever form the model has.

``densegraph eval`` scores a spec with ``--weights`` (PyTorch), a ``model.onnx`` (onnxruntime; input ``images``,
output ``logits``, the input shape read from the model) or a ``model.engine`` / ``.plan`` (TensorRT, through
:class:`densegraph.export.tensorrt.EngineRunner`) on the val split of ``digits`` or an image folder (see
:mod:`densegraph.data`), preprocessed for the model's input shape. Top-1 is reported in percent.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .data import Dataset, load_data
from .errors import DataError, DensegraphError, Loc

__all__ = ["evaluate", "predictor_from_path", "run_eval", "ONNX_SUFFIXES", "ENGINE_SUFFIXES"]

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")

Predictor = Callable[[np.ndarray], np.ndarray]


def evaluate(predict: Predictor, data: Dataset, *, batch_size: int = 64) -> dict[str, Any]:
    """Run ``predict`` (float32 ``[N, C, H, W]`` -> logits ``[N, classes]``) over ``data``; top-1 in percent."""
    if not data.y.size:
        raise DataError(
            "the data has no labels to score against", loc=Loc(data.source) if data.source else None
        )
    correct = 0
    for start in range(0, len(data), batch_size):
        logits = np.asarray(predict(data.x[start : start + batch_size]))
        labels = data.y[start : start + batch_size]
        if logits.ndim != 2 or logits.shape[0] != len(labels):
            raise DensegraphError(
                f"the model gave outputs of shape {list(logits.shape)} for {len(labels)} inputs"
            )
        if int(labels.max()) >= logits.shape[1]:
            raise DataError(
                f"the data has labels up to {int(labels.max())}, the model only {logits.shape[1]} classes",
                loc=Loc(data.source) if data.source else None,
            )
        correct += int((logits.argmax(1) == labels).sum())
    samples = len(data)
    return {"top1": round(100.0 * correct / samples, 4), "samples": samples, "correct": correct}


# ---------------------------------------------------------------------------------------------------------
# predictors: (predict, input shape (C, H, W), description)


def _torch_predictor(spec: str, weights: str, device: str) -> tuple[Predictor, tuple[int, int, int], str]:
    import torch

    from .lower.torch import graph_of, to_torch
    from .lower.weights import load_weights

    graph = graph_of(spec)
    module = to_torch(graph)
    load_weights(module, weights, model_name=spec)
    if device == "cuda" and not torch.cuda.is_available():
        raise DensegraphError("--device cuda: no CUDA GPU is available", hint="use --device cpu")
    module = module.to(device).eval()

    @torch.no_grad()
    def predict(x: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(np.ascontiguousarray(x)).to(device)).float().cpu().numpy()

    c, h, w = graph.graph["input_shape"]
    return predict, (c, h, w), f"{spec} + {weights} (PyTorch, {device})"


def _onnx_predictor(path: str, device: str) -> tuple[Predictor, tuple[int, int, int], str]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise DensegraphError("onnxruntime is not installed", hint="pip install onnxruntime") from None
    where = Loc(path)
    if not Path(path).is_file():
        raise DensegraphError("no such file", loc=where, hint="check the path to the ONNX model")
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DensegraphError(
                "--device cuda: onnxruntime has no CUDA provider", hint="pip install onnxruntime-gpu"
            )
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(path, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DensegraphError(f"onnxruntime cannot load the model: {first}", loc=where) from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    inp = next((i for i in inputs if i.name == "images"), inputs[0])
    out = next((o for o in outputs if o.name == "logits"), outputs[0])
    shape = list(inp.shape)
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise DensegraphError(
            f"input {inp.name!r} has shape {shape}; expected [batch, C, H, W] with fixed C, H, W", loc=where
        )
    fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def predict(x: np.ndarray) -> np.ndarray:
        x = x.astype(dtype, copy=False)
        if fixed_batch is None:
            return session.run([out.name], {inp.name: x})[0].astype(np.float32)
        pieces = []
        for start in range(0, len(x), fixed_batch):
            chunk = x[start : start + fixed_batch]
            n = len(chunk)
            if n < fixed_batch:
                chunk = np.concatenate([chunk, np.zeros((fixed_batch - n, *chunk.shape[1:]), chunk.dtype)])
            pieces.append(session.run([out.name], {inp.name: chunk})[0][:n])
        return np.concatenate(pieces).astype(np.float32)

    c, h, w = shape[1:]
    return predict, (c, h, w), f"{path} (onnxruntime, {session.get_providers()[0]})"


def _engine_predictor(path: str) -> tuple[Predictor, tuple[int, int, int], str]:
    from .export.tensorrt import EngineRunner

    runner = EngineRunner(path)
    c, h, w = (int(d) for d in runner.input_chw)

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(runner(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)

    return predict, (c, h, w), f"{path} (TensorRT)"


def predictor_from_path(
    model: str, *, weights: str | None = None, device: str = "cpu"
) -> tuple[Predictor, tuple[int, int, int], str]:
    """A numpy predictor for a spec (+ ``weights``), a ``.onnx`` or an engine; with its input shape and a label."""
    suffix = Path(model).suffix.lower()
    if suffix in ONNX_SUFFIXES or suffix in ENGINE_SUFFIXES:
        if weights is not None:
            raise DensegraphError(
                "--weights applies to a spec; an ONNX model or engine carries its weights", loc=Loc(model)
            )
        return _onnx_predictor(model, device) if suffix in ONNX_SUFFIXES else _engine_predictor(model)
    if weights is None:
        raise DensegraphError(
            "evaluating a spec needs --weights",
            loc=Loc(model),
            hint="pass RUN/best.pt of `densegraph train`, or a state_dict",
        )
    return _torch_predictor(model, weights, device)


def run_eval(args: argparse.Namespace) -> int:
    """``densegraph eval SPEC --weights W | MODEL.onnx | MODEL.engine --data digits|DIR [--json]``."""
    if args.batch_size < 1:
        raise DensegraphError(f"--batch-size must be positive, got {args.batch_size}")
    predict, input_shape, label = predictor_from_path(args.model, weights=args.weights, device=args.device)
    data_source = os.fspath(args.data)
    if data_source.endswith(".npy"):
        raise DataError(
            "a .npy file has no labels to score against", loc=Loc(data_source), hint="use digits or DIR"
        )
    data = load_data(data_source, input_shape, split="val")
    result = evaluate(predict, data, batch_size=args.batch_size)
    print(
        f"top-1 {result['top1']:.2f}% ({result['correct']}/{result['samples']}) on the val split of "
        f"{data_source}: {label}"
    )
    if args.json:
        print(json.dumps({"top1": result["top1"], "samples": result["samples"]}))
    return 0
