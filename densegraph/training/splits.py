"""The data a run trains on: train, val and (where there is one) test, checked against the model's input and
head before any work."""

from __future__ import annotations

import os
from typing import Any

from ..data import Dataset, ImageFiles, available_splits, image_dataset
from ..errors import DataError, Loc

__all__ = ["load_splits", "check_labels"]


def load_splits(
    data: Any, input_shape: tuple[int, int, int], preprocess: dict[str, Any]
) -> tuple[Dataset | ImageFiles, Dataset | ImageFiles, Dataset | ImageFiles | None, str]:
    """(train, val, test or None, a label for messages) of a source or of given datasets."""
    test_set: Dataset | ImageFiles | None = None
    if isinstance(data, tuple):
        if len(data) not in (2, 3):
            raise ValueError("data must be a source, or (train, val) or (train, val, test) datasets")
        train_set, val_set = data[0], data[1]
        test_set = data[2] if len(data) == 3 else None
        label = train_set.source or "<arrays>"
    else:
        label = os.fspath(data)
        if label.endswith(".npy"):
            raise DataError(
                "a .npy file has no labels to train on", loc=Loc(label), hint="use digits or an image folder"
            )
        splits = available_splits(label)
        if "val" not in splits:
            raise DataError(
                "the folder has no val split to choose the best epoch on",
                loc=Loc(os.path.join(label, "val")),
                hint="add DIR/val/<class>/…, or pass a folder of class folders to be split 60/20/20",
            )
        train_set = image_dataset(label, input_shape, split="train", preprocess=preprocess, train=True)
        val_set = image_dataset(label, input_shape, split="val", preprocess=preprocess)
        if "test" in splits:
            test_set = image_dataset(label, input_shape, split="test", preprocess=preprocess)
    parts = [("train", train_set), ("val", val_set)] + ([("test", test_set)] if test_set is not None else [])
    for name, part in parts:
        shape = part.x.shape[1:] if isinstance(part, Dataset) else (part.channels, *part.preprocess["crop"])
        if tuple(shape) != tuple(input_shape):
            raise DataError(
                f"{name} inputs are {list(shape)}, the model takes {list(input_shape)}", loc=Loc(label)
            )
        if len(part) == 0 or part.y.shape[0] != len(part):
            raise DataError(f"the {name} split has no labelled samples", loc=Loc(label))
    return train_set, val_set, test_set, label


def check_labels(parts: tuple[Dataset | ImageFiles, ...], num_classes: int, label: str) -> None:
    """Refuse labels the model's head cannot score (a class index past its outputs)."""
    for part in parts:
        if int(part.y.max()) >= num_classes or int(part.y.min()) < 0:
            raise DataError(
                f"the data has {len(part.classes) or int(part.y.max()) + 1} classes, the model's head {num_classes}",
                loc=Loc(label),
                hint="set head: {classes: N} in the spec to the number of classes",
            )
