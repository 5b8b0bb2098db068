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
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._io import check_regular
from .data import Dataset, load_data
from .errors import DataError, DensegraphError, Loc

__all__ = [
    "evaluate",
    "predictor_from_path",
    "run_eval",
    "onnx_image_model",
    "OnnxImageModel",
    "ONNX_SUFFIXES",
    "ENGINE_SUFFIXES",
]

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


_ORT_IMAGE_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_ORT_LOGIT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)")


@dataclass(frozen=True)
class OnnxImageModel:
    """An onnxruntime session on a model that takes one image batch and gives logits, checked on load.

    Call it with an array ``[n, C, H, W]`` (cast to the input's type); a failure inside onnxruntime is one
    :class:`DensegraphError` naming the model.
    """

    session: Any
    path: str
    input_name: str
    output_name: str
    chw: tuple[int, int, int]
    fixed_batch: int | None
    dtype: Any

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=self.dtype)
        try:
            return self.session.run([self.output_name], {self.input_name: x})[0]
        except Exception as exc:
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            raise DensegraphError(
                f"onnxruntime failed running the model on a batch {list(x.shape)}: {_ort_reason(exc)}",
                loc=Loc(self.path),
                hint="eval and bench feed images [batch, C, H, W] to a model exported for them",
            ) from None


def _ort_reason(exc: Exception) -> str:
    """onnxruntime's message without its source path and C++ signature: ``the Reshape node: The input …``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    found = re.search(r"while running (\S+) node.*?Status Message: (.*)", text)
    if found is None:
        return text
    reason = re.sub(r"^/\S+:\d+ \S+\(.*?\) ", "", found.group(2))
    return f"the {found.group(1)} node: {reason}"


def onnx_image_model(path: str, providers: list[str]) -> OnnxImageModel:
    """Open ``path`` in onnxruntime and check that it takes one float image batch ``[batch, C, H, W]`` (fixed
    C, H, W) and gives float logits ``[batch, classes]``; anything else is one :class:`DensegraphError`."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DensegraphError("onnxruntime is not installed", hint="pip install onnxruntime") from None
    where = Loc(path)
    check_regular(path, what="ONNX model", missing_hint="check the path to the ONNX model")
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: a failure is reported once, as one line, by the caller
    try:
        session = ort.InferenceSession(path, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DensegraphError(f"onnxruntime cannot load the model: {first}", loc=where) from None
    expects = "one input, images [batch, C, H, W] float32 (or float16)"
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        names = ", ".join(f"{i.name!r} {i.type} {list(i.shape)}" for i in inputs) or "none"
        raise DensegraphError(
            f"the model has {len(inputs)} required inputs ({names}); densegraph feeds {expects}", loc=where
        )
    inp = inputs[0]
    dtype = _ORT_IMAGE_TYPES.get(inp.type)
    if dtype is None:
        raise DensegraphError(
            f"input {inp.name!r} is {inp.type}; densegraph feeds {expects}",
            loc=where,
            hint="this model does not take images",
        )
    shape = list(inp.shape)
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise DensegraphError(
            f"input {inp.name!r} has shape {shape}; densegraph feeds {expects} with fixed C, H, W", loc=where
        )
    out = next((o for o in outputs if o.name == "logits"), outputs[0])
    if out.type not in _ORT_LOGIT_TYPES or (isinstance(out.shape, list) and len(out.shape) != 2):
        raise DensegraphError(
            f"output {out.name!r} is {out.type} {list(out.shape)}; expected float logits [batch, classes]",
            loc=where,
        )
    fixed = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    c, h, w = shape[1:]
    return OnnxImageModel(session, path, inp.name, out.name, (c, h, w), fixed, dtype)


def _onnx_predictor(path: str, device: str) -> tuple[Predictor, tuple[int, int, int], str]:
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DensegraphError(
                "--device cuda: onnxruntime has no CUDA provider", hint="pip install onnxruntime-gpu"
            )
        providers.insert(0, "CUDAExecutionProvider")
    model = onnx_image_model(path, providers)
    fixed_batch = model.fixed_batch

    def checked(x: np.ndarray) -> np.ndarray:
        logits = np.asarray(model(x))
        if logits.ndim != 2 or logits.shape[0] != len(x):
            raise DensegraphError(
                f"the model gave outputs of shape {list(logits.shape)} for {len(x)} inputs; expected "
                "[batch, classes]",
                loc=Loc(path),
            )
        return logits

    def predict(x: np.ndarray) -> np.ndarray:
        if fixed_batch is None:
            return checked(x).astype(np.float32)
        pieces = []
        for start in range(0, len(x), fixed_batch):
            chunk = x[start : start + fixed_batch]
            n = len(chunk)
            if n < fixed_batch:
                chunk = np.concatenate([chunk, np.zeros((fixed_batch - n, *chunk.shape[1:]), chunk.dtype)])
            pieces.append(checked(chunk)[:n])
        return np.concatenate(pieces).astype(np.float32)

    return predict, model.chw, f"{path} (onnxruntime, {model.session.get_providers()[0]})"


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
