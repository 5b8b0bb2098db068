"""Real data for training, evaluation and int8 calibration.

:func:`load_data` turns a source name into arrays a model can consume, preprocessed for one input shape:

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes, no download). A fixed
  stratified 80/20 split (``train_test_split(test_size=0.2, random_state=seed, stratify=y)``; 1,437 train / 360
  val with the default ``seed=0``). Pixels are divided by 16 into [0, 1]; for another input shape the images are
  resized bilinearly and the channel repeated. No mean/std normalisation.
- an image folder (``DIR/<class>/<image>``, as torchvision's ``ImageFolder``): classes are the sorted subfolder
  names; images are decoded with Pillow, converted to ``L`` (1 channel) or ``RGB`` (3 channels), resized
  bilinearly to H x W and scaled to [0, 1]; with 3 channels they are then normalised with the ImageNet mean
  ``(0.485, 0.456, 0.406)`` and std ``(0.229, 0.224, 0.225)``, as torchvision's pretrained models expect. If
  ``DIR/train`` and ``DIR/val`` exist they are the splits (classes from ``train``); otherwise a deterministic
  stratified 80/20 split of ``DIR`` is made (``seed`` picks it). The images are loaded into memory.
- a ``.npy`` file: already preprocessed inputs ``[N, C, H, W]`` (for calibration); no labels.

This module imports neither torch nor scikit-learn at import time (the ONNX calibration path uses it).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._io import open_regular
from ._memory import check_fits, human_bytes
from .errors import DataError, Loc

__all__ = [
    "Dataset",
    "load_data",
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "torch_dataset",
    "data_loader",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "all")
VAL_FRACTION = 0.2


@dataclass
class Dataset:
    """Preprocessed inputs ``x`` (float32 ``[N, C, H, W]``) and labels ``y`` (int64 ``[N]``; empty for .npy)."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, indices: Any) -> Dataset:
        """The samples at ``indices`` (labels too when there are any)."""
        y = self.y[indices] if self.y.size else self.y
        return Dataset(self.x[indices], y, list(self.classes), self.source)


def load_data(
    source: str | os.PathLike[str],
    input_shape: tuple[int, int, int],
    *,
    split: str = "val",
    seed: int = 0,
    max_samples: int | None = None,
) -> Dataset:
    """Load ``digits``, an image folder or a ``.npy`` file, preprocessed for ``input_shape`` (C, H, W).

    ``split`` is ``train``, ``val`` or ``all`` (ignored for ``.npy``); ``seed`` picks the 80/20 split;
    ``max_samples`` keeps a deterministic random subset (picked before any image is decoded).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape!r}")
    c, h, w = shape
    text = os.fspath(source)
    if text == "digits":
        data = _digits(split, (c, h, w), seed)
        return _limit(data, max_samples, seed)
    path = Path(text)
    if text.endswith(".npy"):
        return _limit(_npy(path, (c, h, w)), max_samples, seed)
    return _folder(path, (c, h, w), split, seed, max_samples)


# ---------------------------------------------------------------------------------------------------------
# digits


def _digits(split: str, shape: tuple[int, int, int], seed: int) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    labels = bunch.target.astype(np.int64)
    if split == "all":
        x, y = images, labels
    else:
        x_train, x_val, y_train, y_val = train_test_split(
            images, labels, test_size=VAL_FRACTION, random_state=seed, stratify=labels
        )
        x, y = (x_train, y_train) if split == "train" else (x_val, y_val)
    c, h, w = shape
    if (h, w) != (8, 8):
        x = np.stack([_resize_plane(img, h, w) for img in x])
    x = np.repeat(x[:, None], c, axis=1)
    return Dataset(np.ascontiguousarray(x, dtype=np.float32), y, [str(i) for i in range(10)], "digits")


def _resize_plane(plane: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(
        Image.fromarray(plane, mode="F").resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32
    )


# ---------------------------------------------------------------------------------------------------------
# .npy


def _npy(path: Path, shape: tuple[int, int, int]) -> Dataset:
    where = Loc(str(path))
    handle = open_regular(path, what=".npy file", error=DataError, missing_hint="check the path to the data")
    try:
        _check_npy_header(path, shape)  # the regular file just opened: only its header is read
        x = np.load(handle, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"not a plain .npy array ({exc})", loc=where) from None
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read the .npy file: {exc}", loc=where) from None
    finally:
        handle.close()
    if not isinstance(x, np.ndarray) or x.ndim != 4 or tuple(x.shape[1:]) != shape or x.shape[0] == 0:
        got = "x".join(str(v) for v in getattr(x, "shape", ()))
        want = "x".join(str(v) for v in shape)
        raise DataError(
            f"the array has shape [{got}], expected [N, {want.replace('x', ', ')}] with N >= 1",
            loc=where,
            hint="save preprocessed inputs as a float32 array [N, C, H, W] matching the spec's input",
        )
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"the array holds {x.dtype}, not numbers", loc=where)
    if np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"the array holds complex numbers ({x.dtype}), not pixel values", loc=where)
    if np.issubdtype(x.dtype, np.inexact) and not np.all(np.isfinite(x)):
        first = int(np.flatnonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1))[0])
        raise DataError(f"the array holds NaN or infinite values (first in sample {first})", loc=where)
    return Dataset(np.ascontiguousarray(x, dtype=np.float32), np.zeros(0, np.int64), [], str(path))


def _check_npy_header(path: Path, shape: tuple[int, int, int]) -> None:
    """Read only the header: refuse a file shorter than the array it declares, or an array (and its float32
    copy) larger than the memory available, before any of it is allocated."""
    where = Loc(str(path))
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if read_header is None:  # a format np.load may know (3.0): let it judge the file
                return
            dims, _, dtype = read_header(f)
            offset = f.tell()
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"not a plain .npy array ({exc})", loc=where) from None
    count = math.prod(dims)
    declared = count * dtype.itemsize
    size = path.stat().st_size - offset
    if dtype.hasobject:
        return  # np.load refuses it (allow_pickle=False) with its own message
    if size < declared:
        raise DataError(
            f"the header declares a {dtype} array {list(dims)} ({human_bytes(declared)}), the file holds "
            f"{human_bytes(size)} of data",
            loc=where,
            hint="the file is truncated or its header is damaged",
        )
    copy = count * 4 if dtype != np.float32 else 0
    check_fits(
        declared + copy,
        f"reading the array {list(dims)} {dtype}",
        loc=where,
        hint="calibrate on a smaller file (a few hundred samples are enough)",
    )


# ---------------------------------------------------------------------------------------------------------
# image folders


def _folder(
    root: Path, shape: tuple[int, int, int], split: str, seed: int, max_samples: int | None
) -> Dataset:
    where = Loc(str(root))
    if not root.exists():
        raise DataError(
            "no such directory", loc=where, hint="--data takes 'digits', an image folder or a .npy file"
        )
    if not root.is_dir():
        raise DataError(
            "not a directory", loc=where, hint="--data takes 'digits', an image folder or a .npy file"
        )
    if shape[0] not in (1, 3):
        raise DataError(
            f"image folders give 1 (grayscale) or 3 (RGB) channels; the model takes {shape[0]}", loc=where
        )
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes, train_files = _scan(root / "train", None)
        _, val_files = _scan(root / "val", classes)
        files = {"train": train_files, "val": val_files, "all": train_files + val_files}[split]
    else:
        classes, all_files = _scan(root, None)
        if split == "all":
            files = all_files
        else:
            train_files, val_files = _stratified_split(all_files, seed)
            files = train_files if split == "train" else val_files
    if max_samples is not None and len(files) > max_samples:
        order = np.random.default_rng(seed).permutation(len(files))[:max_samples]
        files = [files[i] for i in sorted(order)]
    if not files:
        raise DataError(
            f"the {split} split has no images", loc=where, hint="add images or use --data DIR with more"
        )
    x = np.empty((len(files), *shape), np.float32)
    for i, (file, _) in enumerate(files):
        x[i] = _decode(file, shape)
    y = np.array([label for _, label in files], dtype=np.int64)
    return Dataset(x, y, classes, str(root))


def _scan(root: Path, classes: list[str] | None) -> tuple[list[str], list[tuple[Path, int]]]:
    try:
        folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise DataError(f"cannot list the directory: {exc.strerror}", loc=Loc(str(root))) from None
    if not folders:
        raise DataError(
            "no class subfolders",
            loc=Loc(str(root)),
            hint="an image folder holds one subfolder of images per class",
        )
    defining = classes is None
    if classes is None:
        classes = folders
    else:
        extra = [f for f in folders if f not in classes]
        if extra:
            raise DataError(
                f"class folder {extra[0]!r} is not among the training classes ({len(extra)} unknown)",
                loc=Loc(str(root / extra[0])),
            )
    index = {name: i for i, name in enumerate(classes)}
    files: list[tuple[Path, int]] = []
    for name in folders:
        images = sorted(
            p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not images and defining:
            raise DataError(
                "class folder has no images",
                loc=Loc(str(root / name)),
                hint=f"images end in {', '.join(IMAGE_EXTENSIONS)}",
            )
        files.extend((p, index[name]) for p in images)
    return classes, files


def _stratified_split(
    files: list[tuple[Path, int]], seed: int
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    rng = np.random.default_rng(seed)
    labels = np.array([label for _, label in files])
    val: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(round(VAL_FRACTION * len(members))) if len(members) > 1 else 0
        val.extend(rng.permutation(members)[:count].tolist())
    chosen = set(val)
    return [f for i, f in enumerate(files) if i not in chosen], [
        f for i, f in enumerate(files) if i in chosen
    ]


def _decode(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    try:
        with Image.open(path) as opened:
            image = opened.convert("L" if c == 1 else "RGB").resize((w, h), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        reason = "not an image Pillow can read" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise DataError(f"cannot decode the image: {reason}", loc=Loc(str(path))) from None
    if c == 1:
        return pixels[None]
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    return ((pixels - mean) / std).transpose(2, 0, 1)


def _limit(data: Dataset, max_samples: int | None, seed: int) -> Dataset:
    if max_samples is None or len(data) <= max_samples:
        return data
    order = np.sort(np.random.default_rng(seed).permutation(len(data))[:max_samples])
    return data.subset(order)


# ---------------------------------------------------------------------------------------------------------
# torch helpers (torch is imported here, on use)


def torch_dataset(data: Dataset) -> Any:
    """A ``torch.utils.data.TensorDataset`` of ``(x, y)`` (``x`` only when there are no labels)."""
    import torch
    from torch.utils.data import TensorDataset

    x = torch.from_numpy(data.x)
    return TensorDataset(x, torch.from_numpy(data.y)) if data.y.size else TensorDataset(x)


def data_loader(
    data: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    drop_last: bool = False,
) -> Any:
    """A ``DataLoader`` over ``data``; shuffled by a ``DistributedSampler`` seeded with ``seed``.

    The shuffle depends only on ``seed`` and the epoch set with ``loader.sampler.set_epoch(epoch)``, so a resumed
    or multi-process run sees the same order. With ``num_replicas > 1`` each rank gets its share.
    """
    from torch.utils.data import DataLoader, DistributedSampler

    dataset = torch_dataset(data)
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last)
