"""Classify image files with a spec + weights, a ``model.onnx`` or an engine.

Each image is decoded and preprocessed as the model says (the spec's ``preprocess:``, the ONNX model's
``densegraph.preprocess`` metadata, or the published weights' own transform), scored, and reported as its top-K
classes with softmax probabilities and, where the model's labels are known (a training checkpoint's classes,
ImageNet's for published weights, the ONNX ``densegraph.classes`` metadata), their names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import DensegraphError
from .evaluation import open_model
from .transforms import image_to_input

__all__ = ["predict", "Prediction", "ClassScore"]


@dataclass
class ClassScore:
    index: int
    probability: float
    name: str | None = None


@dataclass
class Prediction:
    """The top-K classes of one image, best first."""

    image: str
    top: list[ClassScore] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """One JSON object: ``image`` and ``top`` (``index``, ``probability``, ``name`` when known)."""
        return {
            "image": self.image,
            "top": [
                {"index": c.index, "probability": c.probability}
                | ({"name": c.name} if c.name is not None else {})
                for c in self.top
            ],
        }


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted.astype(np.float64))
    return exp / exp.sum(axis=1, keepdims=True)


def predict(
    model: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    *,
    weights: str | os.PathLike[str] | None = None,
    top: int = 5,
    device: str = "cpu",
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> list[Prediction]:
    """The ``top`` classes of each image in ``images`` (a spec needs ``weights``)."""
    if top < 1:
        raise DensegraphError(f"--top must be positive, got {top}")
    if not images:
        raise DensegraphError("no images to classify", hint="densegraph predict MODEL IMAGE...")
    paths = [os.fspath(p) for p in images]
    results: list[Prediction] = []
    with open_model(model, weights=weights, device=device, lacks="classes to predict") as runner:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            x = np.stack([image_to_input(p, runner.preprocess or {}, runner.input_chw[0]) for p in chunk])
            results.extend(_top(chunk, _softmax(runner(x)), top, runner.classes))
            if progress is not None:
                progress(len(results), len(paths))
    return results


def _top(
    paths: list[str], probabilities: np.ndarray, top: int, classes: list[str] | None
) -> list[Prediction]:
    k = min(top, probabilities.shape[1])
    names = classes if classes and len(classes) == probabilities.shape[1] else None
    found = []
    for path, row in zip(paths, probabilities, strict=True):
        order = np.argsort(-row, kind="stable")[:k]
        scores = [
            ClassScore(int(i), round(float(row[i]), 6), names[int(i)] if names else None) for i in order
        ]
        found.append(Prediction(path, scores))
    return found
