"""Top-1 and top-5 of a model on real data, whatever form the model has.

:func:`evaluate` scores a spec with weights (PyTorch; a file, or ``torchvision`` / ``timm[:variant]`` for
published ones), a ``model.onnx`` (onnxruntime; input ``images``, output ``logits``, the input shape read from
the model, the preprocessing from its ``densegraph.preprocess`` metadata when present) or a ``model.engine`` /
``.plan`` (TensorRT) on a split of ``digits`` or an image folder (see :mod:`densegraph.data`). By default the
test split where the data has one, else val. Image folders stream through a ``DataLoader`` with worker
processes, so memory stays bounded by the batch. The model runs through its runner (:mod:`densegraph.runners`),
released when the scoring ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np

from .data import Dataset, ImageFiles, default_eval_split, image_dataset, limit_indices, worker_errors
from .errors import DataError, DensegraphError, Loc
from .runners import ENGINE_SUFFIXES, ONNX_SUFFIXES, BaseRunner
from .runners.base import METADATA_CLASSES, METADATA_PREPROCESS

__all__ = [
    "evaluate",
    "score",
    "load_model",
    "LoadedModel",
    "EvalResult",
    "predictor_from_path",
    "open_model",
    "ONNX_SUFFIXES",
    "ENGINE_SUFFIXES",
    "METADATA_PREPROCESS",
    "METADATA_CLASSES",
]

Predictor = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int, int], None]  # (samples done, samples in all)


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
    with open_model(model, weights=weights, device=device, lacks="classes to score") as runner:
        chosen = split or default_eval_split(source)
        dataset = image_dataset(source, runner.input_chw, split=chosen, preprocess=runner.preprocess)
        dataset = dataset.subset(limit_indices(len(dataset), limit))
        correct, correct5, samples = score(
            runner,
            dataset,
            batch_size=batch_size,
            workers=workers,
            pin_memory=device == "cuda",
            progress=progress,
        )
        description = runner.name
    return EvalResult(
        top1=round(100.0 * correct / samples, 4),
        top5=round(100.0 * correct5 / samples, 4),
        samples=samples,
        correct=correct,
        correct5=correct5,
        split=chosen,
        source=source,
        model=description,
    )


# ---------------------------------------------------------------------------------------------------------
# models: runners (densegraph.runners), with the checks eval and predict make first


@dataclass
class LoadedModel:
    """A loaded runner seen as an image classifier: ``predict`` float32 ``[N, C, H, W]`` -> logits
    ``[N, classes]``, its input shape, preprocessing and class names. ``release()`` (or ``with``) frees it."""

    runner: BaseRunner

    @property
    def predict(self) -> Predictor:
        return self.runner

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.runner.input_chw

    @property
    def description(self) -> str:
        return self.runner.name

    @property
    def preprocess(self) -> dict[str, Any]:
        return dict(self.runner.preprocess or {})

    @property
    def classes(self) -> list[str] | None:
        return self.runner.classes

    def release(self) -> None:
        self.runner.release()

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def open_model(
    model: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    lacks: str | None = None,
) -> BaseRunner:
    """The runner for a spec (+ ``weights``, required), a ``.onnx`` or an engine: not loaded, unless
    ``lacks`` (what a backbone lacks for the caller: ``"classes to predict"``) asks for a classifier, which
    is checked before any weights are read (a spec) or on load (a model file)."""
    from .runners import open_runner, runner_kind

    model = os.fspath(model)
    if runner_kind(model) != "spec":
        if weights is not None:
            raise DensegraphError(
                "--weights applies to a spec; an ONNX model or engine carries its weights", loc=Loc(model)
            )
        runner = open_runner(model, weights=weights, device=device)
        if lacks is not None:
            runner.load()
            try:
                runner.check_classifier(lacks, loc=Loc(model))
            except DensegraphError:
                runner.release()
                raise
        return runner
    if lacks is not None:
        open_runner(model, device=device).check_classifier(lacks, loc=Loc(model))  # the graph alone
    if weights is None:
        raise DensegraphError(
            "evaluating a spec needs --weights",
            loc=Loc(model),
            hint="pass RUN/best.pt of `densegraph train`, a state_dict, or torchvision / timm for published ones",
        )
    return open_runner(model, weights=weights, device=device)


def load_model(
    model: str | os.PathLike[str], *, weights: str | os.PathLike[str] | None = None, device: str = "cpu"
) -> LoadedModel:
    """A loaded numpy predictor for a spec (+ ``weights``), a ``.onnx`` or an engine, with its preprocessing."""
    return LoadedModel(open_model(model, weights=weights, device=device).load())


def predictor_from_path(
    model: str, *, weights: str | None = None, device: str = "cpu"
) -> tuple[Predictor, tuple[int, int, int], str]:
    """``(predict, input shape, description)`` of :func:`load_model` (kept for existing callers)."""
    loaded = load_model(model, weights=weights, device=device)
    return loaded.predict, loaded.input_shape, loaded.description
