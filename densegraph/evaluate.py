"""Top-1 and top-5 of a model on real data, whatever form the model has.

:func:`evaluate` scores a spec with weights (PyTorch; a file, or ``torchvision`` / ``timm[:variant]`` for
published ones), a ``model.onnx`` (onnxruntime; input ``images``, output ``logits``, the input shape read from
the model, the preprocessing from its ``densegraph.preprocess`` metadata when present) or a ``model.engine`` /
``.plan`` (TensorRT, through :class:`densegraph.export.tensorrt.EngineRunner`) on a split of ``digits`` or an
image folder (see :mod:`densegraph.data`). By default the test split where the data has one, else val. Image
folders stream through a ``DataLoader`` with worker processes, so memory stays bounded by the batch.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from ._io import check_regular
from .data import Dataset, ImageFiles, default_eval_split, image_dataset, limit_indices, worker_errors
from .errors import DataError, DensegraphError, Loc

__all__ = [
    "evaluate",
    "score",
    "load_model",
    "LoadedModel",
    "EvalResult",
    "predictor_from_path",
    "onnx_image_model",
    "OnnxImageModel",
    "ONNX_SUFFIXES",
    "ENGINE_SUFFIXES",
    "METADATA_PREPROCESS",
    "METADATA_CLASSES",
]

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
METADATA_PREPROCESS = "densegraph.preprocess"  # ONNX metadata_props key: the spec's preprocess as JSON
METADATA_CLASSES = "densegraph.classes"  # ONNX metadata_props key: the class names as a JSON list

Predictor = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int, int], None]  # (samples done, samples in all)


@dataclass
class LoadedModel:
    """A model ready to score numpy batches: ``predict`` float32 ``[N, C, H, W]`` -> logits ``[N, classes]``."""

    predict: Predictor
    input_shape: tuple[int, int, int]
    description: str
    preprocess: dict[str, Any]
    classes: list[str] | None = None


@dataclass
class EvalResult:
    """Top-1 / top-5 in percent on ``samples`` images of the ``split`` of ``source``."""

    top1: float
    top5: float
    samples: int
    correct: int
    correct5: int
    split: str
    source: str
    model: str

    def summary(self) -> dict[str, Any]:
        """The JSON ``densegraph eval --json`` prints: ``top1``, ``top5``, ``samples``, ``split``."""
        return {"top1": self.top1, "top5": self.top5, "samples": self.samples, "split": self.split}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _batches(data: Dataset | ImageFiles, batch_size: int, workers: int | None, pin_memory: bool) -> Any:
    if isinstance(data, Dataset):
        for start in range(0, len(data), batch_size):
            yield data.x[start : start + batch_size], data.y[start : start + batch_size]
        return
    from torch.utils.data import DataLoader

    from .data import default_workers

    count = default_workers() if workers is None else workers
    loader: DataLoader[Any] = DataLoader(
        cast(Any, data),  # a map-style dataset: __len__ and __getitem__ (ImageFiles) or a Dataset's arrays
        batch_size=batch_size,
        shuffle=False,
        num_workers=count,
        pin_memory=pin_memory,
        prefetch_factor=2 if count else None,
    )
    for x, y in worker_errors(loader):
        yield x.numpy(), y.numpy()


def score(
    predict: Predictor,
    data: Dataset | ImageFiles,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    pin_memory: bool = False,
    progress: Progress | None = None,
) -> tuple[int, int, int]:
    """Run ``predict`` over ``data``; returns ``(top-1 correct, top-5 correct, samples)``."""
    where = Loc(data.source) if data.source else None
    total = len(data)
    correct = correct5 = done = 0
    for x, labels in _batches(data, batch_size, workers, pin_memory):
        if not labels.size or int(labels.min()) < 0:
            raise DataError("the data has no labels to score against", loc=where)
        logits = np.asarray(predict(x))
        if logits.ndim != 2 or logits.shape[0] != len(labels):
            raise DensegraphError(
                f"the model gave outputs of shape {list(logits.shape)} for {len(labels)} inputs"
            )
        if int(labels.max()) >= logits.shape[1]:
            raise DataError(
                f"the data has labels up to {int(labels.max())}, the model only {logits.shape[1]} classes",
                loc=where,
            )
        k = min(5, logits.shape[1])
        top = np.argpartition(-logits, k - 1, axis=1)[:, :k] if k < logits.shape[1] else None
        correct += int((logits.argmax(1) == labels).sum())
        correct5 += len(labels) if top is None else int((top == labels[:, None]).any(1).sum())
        done += len(labels)
        if progress is not None:
            progress(done, total)
    return correct, correct5, done


def evaluate(
    model: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None = None,
    split: str | None = None,
    batch_size: int = 64,
    limit: int | None = None,
    workers: int | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
) -> EvalResult:
    """Top-1/top-5 of a spec (+ ``weights``), a ``.onnx`` or an engine on a split of ``data``.

    ``split`` defaults to ``test`` where the data has one, else ``val``; ``limit`` scores a deterministic random
    subset of that many images; ``workers`` decode images (default: the cores less one, at most 8).
    """
    if batch_size < 1:
        raise DensegraphError(f"--batch-size must be positive, got {batch_size}")
    if limit is not None and limit < 1:
        raise DensegraphError(f"--limit must be positive, got {limit}")
    if workers is not None and workers < 0:
        raise DensegraphError(f"--workers must be 0 or more, got {workers}")
    source = os.fspath(data)
    if source.endswith(".npy"):
        raise DataError(
            "a .npy file has no labels to score against", loc=Loc(source), hint="use digits or DIR"
        )
    loaded = load_model(os.fspath(model), weights=weights, device=device)
    chosen = split or default_eval_split(source)
    dataset = image_dataset(source, loaded.input_shape, split=chosen, preprocess=loaded.preprocess)
    dataset = dataset.subset(limit_indices(len(dataset), limit))
    correct, correct5, samples = score(
        loaded.predict,
        dataset,
        batch_size=batch_size,
        workers=workers,
        pin_memory=device == "cuda",
        progress=progress,
    )
    return EvalResult(
        top1=round(100.0 * correct / samples, 4),
        top5=round(100.0 * correct5 / samples, 4),
        samples=samples,
        correct=correct,
        correct5=correct5,
        split=chosen,
        source=source,
        model=loaded.description,
    )


# ---------------------------------------------------------------------------------------------------------
# models


def _imagenet_classes() -> list[str]:
    from importlib import resources

    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return text.splitlines()


def resolve_weights(
    graph: Any, weights: str | os.PathLike[str], *, progress: Callable[[int, int | None], None] | None = None
) -> tuple[Path, dict[str, Any], list[str] | None]:
    """The weights file ``weights`` names (published weights are fetched), preprocess overrides, class names."""
    from .hub import fetch_weights, is_weights_name, published_weights

    text = os.fspath(weights)
    if is_weights_name(text):
        entry = published_weights(text, graph.graph["name"])
        classes = _imagenet_classes() if entry.labels == "imagenet" else None
        return fetch_weights(entry, progress=progress), dict(entry.preprocess), classes
    from .lower.weights import load_file

    obj = load_file(text)
    classes = obj.get("classes") if isinstance(obj, dict) else None
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        classes = None
    return Path(text), {}, classes


def _torch_model(spec: str, weights: str | os.PathLike[str], device: str) -> LoadedModel:
    import torch

    from .lower.torch import graph_of, to_torch
    from .lower.weights import load_weights

    graph = graph_of(spec)
    if device == "cuda" and not torch.cuda.is_available():
        raise DensegraphError("--device cuda: no CUDA GPU is available", hint="use --device cpu")
    path, overrides, classes = resolve_weights(graph, weights)
    module = to_torch(graph)
    load_weights(module, path, model_name=spec)
    module = module.to(device).eval()

    @torch.no_grad()
    def predict(x: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(x)).to(device, non_blocking=True)
        return module(batch).float().cpu().numpy()

    c, h, w = graph.graph["input_shape"]
    preprocess = {**graph.graph["preprocess"], **overrides}
    return LoadedModel(
        predict, (c, h, w), f"{spec} + {os.fspath(weights)} (PyTorch, {device})", preprocess, classes
    )


def _metadata_record(
    metadata: dict[str, str], shape: tuple[int, int, int], where: Loc
) -> tuple[dict[str, Any], list[str] | None]:
    from .spec import default_preprocess
    from .transforms import check_preprocess

    preprocess = default_preprocess("cifar", shape[0], (shape[1], shape[2])).as_dict()
    if METADATA_PREPROCESS in metadata:
        try:
            preprocess = json.loads(metadata[METADATA_PREPROCESS])
        except json.JSONDecodeError:
            raise DataError(f"the model's {METADATA_PREPROCESS} metadata is not JSON", loc=where) from None
        preprocess = check_preprocess(preprocess, shape[0], where)
        if tuple(preprocess["crop"]) != shape[1:]:
            raise DataError(
                f"the model's {METADATA_PREPROCESS} crops to {preprocess['crop']}, its input is {list(shape[1:])}",
                loc=where,
            )
    classes = None
    if METADATA_CLASSES in metadata:
        try:
            value = json.loads(metadata[METADATA_CLASSES])
        except json.JSONDecodeError:
            value = None
        if isinstance(value, list) and all(isinstance(c, str) for c in value):
            classes = value
    return preprocess, classes


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
        raise DensegraphError(
            "onnxruntime is not installed", hint="pip install 'densegraph[cpu]' (or [gpu] on a GPU machine)"
        ) from None
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


def _onnx_model(path: str, device: str) -> LoadedModel:
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DensegraphError(
                "--device cuda: onnxruntime has no CUDA provider", hint="pip install 'densegraph[gpu]'"
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

    metadata = dict(model.session.get_modelmeta().custom_metadata_map or {})
    preprocess, classes = _metadata_record(metadata, model.chw, Loc(path))
    description = f"{path} (onnxruntime, {model.session.get_providers()[0]})"
    return LoadedModel(predict, model.chw, description, preprocess, classes)


def _onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # a broken neighbour is no reason to refuse the engine
        return {}
    return {p.key: p.value for p in proto.metadata_props}


def _engine_model(path: str) -> LoadedModel:
    from .export.tensorrt import EngineRunner

    runner = EngineRunner(path)
    c, h, w = (int(d) for d in runner.input_chw)

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(runner(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)

    # an engine carries no metadata; the ONNX it was built from (same folder, same stem) does
    beside = Path(path).with_suffix(".onnx")
    metadata = _onnx_metadata(beside) if beside.is_file() else {}
    preprocess, classes = _metadata_record(metadata, (c, h, w), Loc(str(beside)))
    return LoadedModel(predict, (c, h, w), f"{path} (TensorRT)", preprocess, classes)


def load_model(
    model: str | os.PathLike[str], *, weights: str | os.PathLike[str] | None = None, device: str = "cpu"
) -> LoadedModel:
    """A numpy predictor for a spec (+ ``weights``), a ``.onnx`` or an engine, with its preprocessing."""
    model = os.fspath(model)
    suffix = Path(model).suffix.lower()
    if suffix in ONNX_SUFFIXES or suffix in ENGINE_SUFFIXES:
        if weights is not None:
            raise DensegraphError(
                "--weights applies to a spec; an ONNX model or engine carries its weights", loc=Loc(model)
            )
        return _onnx_model(model, device) if suffix in ONNX_SUFFIXES else _engine_model(model)
    if weights is None:
        raise DensegraphError(
            "evaluating a spec needs --weights",
            loc=Loc(model),
            hint="pass RUN/best.pt of `densegraph train`, a state_dict, or torchvision / timm for published ones",
        )
    return _torch_model(model, weights, device)


def predictor_from_path(
    model: str, *, weights: str | None = None, device: str = "cpu"
) -> tuple[Predictor, tuple[int, int, int], str]:
    """``(predict, input shape, description)`` of :func:`load_model` (kept for existing callers)."""
    loaded = load_model(model, weights=weights, device=device)
    return loaded.predict, loaded.input_shape, loaded.description
