"""Real data for training, evaluation and int8 calibration.

Two forms, both preprocessed as the spec's ``preprocess:`` says (:mod:`densegraph.transforms`; the default is
a plain resize to the input size, ``[0, 1]`` pixels and, with 3 channels, the ImageNet mean/std):

- :class:`ImageFiles` (from :func:`image_dataset`): an image folder as a list of files, decoded and transformed
  one image at a time (by ``torch.utils.data.DataLoader`` workers), so memory is bounded by the batch and the
  number of workers, not by the folder.
- :class:`Dataset` (from :func:`load_data`): arrays in memory, for ``digits``, ``.npy`` calibration inputs and
  small subsets (int8 calibration decodes at most ``--calib-samples`` images).

Sources and splits (``train``, ``val``, ``test``, ``all``):

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes, no download), split
  stratified with a fixed seed: ``test`` = ``train_test_split(test_size=0.2, random_state=0, stratify=y)`` (360),
  then ``val`` = 360 of the rest the same way, ``train`` the remaining 1,077. Pixels are divided by 16 into
  [0, 1], then resized/cropped to the input and normalised with the preprocess's mean and std (the channel is
  repeated for 3-channel inputs).
- an image folder: ``DIR/<class>/<image>`` (torchvision's ``ImageFolder``) is split per class with a fixed seed
  into 60% train, 20% val, 20% test; ``DIR/train/<class>/…`` with ``DIR/val`` and/or ``DIR/test`` beside it
  gives the splits as written (classes from ``train``). Images are decoded with Pillow as ``L`` (1 channel) or
  ``RGB`` (3 channels).
- a ``.npy`` file: already preprocessed inputs ``[N, C, H, W]`` (for calibration); no labels.

This module imports neither torch nor scikit-learn at import time (the ONNX calibration path uses it).
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._io import open_regular
from ._memory import check_fits, human_bytes
from .errors import DataError, DensegraphError, Loc

__all__ = [
    "Dataset",
    "ImageFiles",
    "load_data",
    "image_dataset",
    "available_splits",
    "default_eval_split",
    "limit_indices",
    "default_workers",
    "worker_errors",
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "torch_dataset",
    "data_loader",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test", "all")
HELD_OUT_FRACTION = 0.2  # of each class, for val and again for test
SPLIT_SEED = 0  # the splits never depend on a training seed: the test set stays the test set


@dataclass
class Dataset:
    """Preprocessed inputs ``x`` (float32 ``[N, C, H, W]``) and labels ``y`` (int64 ``[N]``; empty for .npy)."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str] = field(default_factory=list)
    source: str = ""
    split: str = ""
    preprocess: dict[str, Any] | None = None  # how the images became ``x`` (None for .npy inputs)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.x[index], int(self.y[index]) if self.y.size else -1

    def subset(self, indices: Any) -> Dataset:
        """The samples at ``indices`` (labels too when there are any)."""
        y = self.y[indices] if self.y.size else self.y
        return Dataset(self.x[indices], y, list(self.classes), self.source, self.split, self.preprocess)


@dataclass
class ImageFiles:
    """A labelled list of image files, decoded and preprocessed per item (a map-style dataset for DataLoader).

    ``dataset[i]`` is ``(float32 [C, H, W], label)``; with ``train`` the random training transform is applied
    (Python's ``random``, which DataLoader seeds per worker from torch's generator).
    """

    files: list[tuple[Path, int]]
    classes: list[str]
    preprocess: dict[str, Any]
    channels: int
    source: str = ""
    split: str = ""
    train: bool = False

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        from .transforms import decode_image, eval_transform, train_transform

        path, label = self.files[index]
        image = decode_image(path, self.channels)
        if self.train:
            return train_transform(image, self.preprocess, random.Random(random.getrandbits(64))), label
        return eval_transform(image, self.preprocess), label

    @property
    def y(self) -> np.ndarray:
        return np.array([label for _, label in self.files], dtype=np.int64)

    def subset(self, indices: Any) -> ImageFiles:
        """The files at ``indices``."""
        return ImageFiles(
            [self.files[int(i)] for i in indices],
            self.classes,
            self.preprocess,
            self.channels,
            self.source,
            self.split,
            self.train,
        )

    def materialize(self) -> Dataset:
        """Decode every file into one array (for small subsets: calibration, tests)."""
        x = np.empty((len(self), self.channels, *self.preprocess["crop"]), np.float32)
        for i in range(len(self)):
            x[i] = self[i][0]
        return Dataset(x, self.y, list(self.classes), self.source, self.split, self.preprocess)


def _default_preprocess(shape: tuple[int, int, int]) -> dict[str, Any]:
    from .spec import default_preprocess

    return default_preprocess("cifar", shape[0], (shape[1], shape[2])).as_dict()


def _check_shape(input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape!r}")
    return shape  # type: ignore[return-value]


def limit_indices(count: int, limit: int | None, seed: int = SPLIT_SEED) -> np.ndarray:
    """A deterministic random subset of ``range(count)`` of size ``limit`` (sorted), or all of it."""
    if limit is None or count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).permutation(count)[:limit])


def load_data(
    source: str | os.PathLike[str],
    input_shape: tuple[int, int, int],
    *,
    split: str = "val",
    seed: int = SPLIT_SEED,
    max_samples: int | None = None,
    preprocess: dict[str, Any] | None = None,
) -> Dataset:
    """Load ``digits``, an image folder or a ``.npy`` file into memory, preprocessed for ``input_shape``.

    ``split`` is ``train``, ``val``, ``test`` or ``all`` (ignored for ``.npy``); ``seed`` picks the splits (keep
    the default for the documented ones); ``max_samples`` keeps a deterministic random subset (picked before
    any image is decoded); ``preprocess`` is the graph's ``preprocess`` dict (default: a plain resize).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    shape = _check_shape(input_shape)
    pre = preprocess if preprocess is not None else _default_preprocess(shape)
    text = os.fspath(source)
    if text == "digits":
        return _limit(_digits(split, shape, seed, pre), max_samples, seed)
    if text.endswith(".npy"):
        return _limit(_npy(Path(text), shape), max_samples, seed)
    files = _folder(Path(text), shape, split, seed, pre)
    return files.subset(limit_indices(len(files), max_samples, seed)).materialize()


def image_dataset(
    source: str | os.PathLike[str],
    input_shape: tuple[int, int, int],
    *,
    split: str = "val",
    preprocess: dict[str, Any] | None = None,
    train: bool = False,
    seed: int = SPLIT_SEED,
) -> Dataset | ImageFiles:
    """A dataset for a DataLoader: :class:`ImageFiles` for an image folder (streamed), arrays for ``digits``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    shape = _check_shape(input_shape)
    pre = preprocess if preprocess is not None else _default_preprocess(shape)
    text = os.fspath(source)
    if text == "digits":
        return _digits(split, shape, seed, pre)
    if text.endswith(".npy"):
        raise DataError("a .npy file has no labels", loc=Loc(text), hint="use digits or an image folder")
    files = _folder(Path(text), shape, split, seed, pre)
    files.train = train
    return files


def available_splits(source: str | os.PathLike[str]) -> tuple[str, ...]:
    """The labelled splits ``source`` has: digits and plain folders all three; ``DIR/train|val|test`` as found."""
    text = os.fspath(source)
    root = Path(text)
    if text != "digits" and (root / "train").is_dir():
        return tuple(s for s in ("train", "val", "test") if (root / s).is_dir())
    return ("train", "val", "test")


def default_eval_split(source: str | os.PathLike[str]) -> str:
    """``test`` where the source has one, else ``val``."""
    return "test" if "test" in available_splits(source) else "val"


# ---------------------------------------------------------------------------------------------------------
# digits


def _digits(split: str, shape: tuple[int, int, int], seed: int, preprocess: dict[str, Any]) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # 4-bit pixels in [0, 1], as 8-bit ones / 255
    labels = bunch.target.astype(np.int64)
    if split == "all":
        x, y = images, labels
    else:
        rest_x, test_x, rest_y, test_y = train_test_split(
            images, labels, test_size=HELD_OUT_FRACTION, random_state=seed, stratify=labels
        )
        if split == "test":
            x, y = test_x, test_y
        else:
            train_x, val_x, train_y, val_y = train_test_split(
                rest_x, rest_y, test_size=len(test_y), random_state=seed, stratify=rest_y
            )
            x, y = (train_x, train_y) if split == "train" else (val_x, val_y)
    c, h, w = shape
    crop = (int(preprocess["crop"][0]), int(preprocess["crop"][1]))
    if (h, w) != crop:
        raise ValueError(f"preprocess crop {list(crop)} differs from the input {[h, w]}")
    if preprocess["resize"] is not None or (h, w) != (8, 8):
        x = np.stack([_resize_plane(img, preprocess) for img in x])
    mean = np.asarray(preprocess["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(preprocess["std"], np.float32).reshape(1, -1, 1, 1)
    x = np.repeat(x[:, None], c, axis=1)
    if preprocess["channel_order"] == "bgr":
        x = x[:, ::-1]
    if mean.any() or (std != 1).any():
        x = (x - mean) / std
    return Dataset(
        np.ascontiguousarray(x, dtype=np.float32), y, [str(i) for i in range(10)], "digits", split, preprocess
    )


def _resize_plane(plane: np.ndarray, preprocess: dict[str, Any]) -> np.ndarray:
    from PIL import Image

    from .transforms import eval_transform

    scaled = {**preprocess, "mean": [0.0], "std": [1.0], "scale": 1.0, "channel_order": "rgb"}
    return eval_transform(Image.fromarray(plane, mode="F"), scaled)[0]


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
    root: Path, shape: tuple[int, int, int], split: str, seed: int, preprocess: dict[str, Any]
) -> ImageFiles:
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
    present = available_splits(root)
    if (root / "train").is_dir() and len(present) > 1:
        classes, train_files = _scan(root / "train", None)
        parts = {"train": train_files}
        for name in ("val", "test"):
            if name in present:
                parts[name] = _scan(root / name, classes)[1]
        if split == "all":
            files = [f for name in ("train", "val", "test") for f in parts.get(name, [])]
        elif split not in parts:
            raise DataError(
                f"the folder has no {split} split (it has {', '.join(present)})",
                loc=Loc(str(root / split)),
                hint=f"add {root / split}/<class>/…, or choose --split {'/'.join(present)}",
            )
        else:
            files = parts[split]
    else:
        classes, all_files = _scan(root, None)
        files = all_files if split == "all" else _stratified_split(all_files, seed)[split]
    if not files:
        raise DataError(
            f"the {split} split has no images", loc=where, hint="add images or use --data DIR with more"
        )
    return ImageFiles(files, classes, preprocess, shape[0], str(root), split)


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


def _stratified_split(files: list[tuple[Path, int]], seed: int) -> dict[str, list[tuple[Path, int]]]:
    """Per class: 20% test, 20% val (rounded; none from a class of one or two), the rest train."""
    rng = np.random.default_rng(seed)
    labels = np.array([label for _, label in files])
    which = np.zeros(len(files), np.int8)  # 0 train, 1 val, 2 test
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = int(round(HELD_OUT_FRACTION * len(members))) if len(members) > 2 else 0
        which[members[:count]] = 2
        which[members[count : 2 * count]] = 1
    return {
        name: [f for f, w in zip(files, which, strict=True) if w == code]
        for code, name in enumerate(("train", "val", "test"))
    }


def _limit(data: Dataset, max_samples: int | None, seed: int) -> Dataset:
    if max_samples is None or len(data) <= max_samples:
        return data
    order = limit_indices(len(data), max_samples, seed)
    return data.subset(order)


# ---------------------------------------------------------------------------------------------------------
# torch helpers (torch is imported here, on use)


def torch_dataset(data: Dataset) -> Any:
    """A ``torch.utils.data.TensorDataset`` of ``(x, y)`` (``x`` only when there are no labels)."""
    import torch
    from torch.utils.data import TensorDataset

    x = torch.from_numpy(data.x)
    return TensorDataset(x, torch.from_numpy(data.y)) if data.y.size else TensorDataset(x)


def worker_errors(batches: Any) -> Any:
    """Iterate ``batches`` (a DataLoader), turning a user error raised in a worker back into one located line.

    DataLoader re-raises a worker's exception as the same class built from the worker's whole traceback text;
    the report we want is that text's last line.
    """
    try:
        yield from batches
    except DensegraphError as exc:
        text = exc.message
        if "DataLoader worker process" not in text:
            raise
        line = text.strip().splitlines()[-1].split(": ", 1)[-1]  # drop "densegraph.errors.DataError: "
        where, _, rest = line.rpartition("error: ") if "error: " in line else ("", "", line)
        message, hint = rest, None
        if rest.endswith(")") and " (hint: " in rest:
            message, _, hint = rest[:-1].partition(" (hint: ")
        loc = Loc(where[:-2]) if where.endswith(": ") else None
        raise type(exc)(message, loc=loc, hint=hint) from None


def default_workers() -> int:
    """Decoding workers for an image folder: the cores beyond the main process, at most 8."""
    return max(1, min(8, (os.cpu_count() or 1) - 1))


def data_loader(
    data: Dataset | ImageFiles,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    drop_last: bool = False,
    workers: int | None = None,
    pin_memory: bool = False,
) -> Any:
    """A ``DataLoader`` over ``data``; shuffled by a ``DistributedSampler`` seeded with ``seed``.

    The shuffle depends only on ``seed`` and the epoch set with ``loader.sampler.set_epoch(epoch)``, so a resumed
    or multi-process run sees the same order. With ``num_replicas > 1`` each rank gets its share. Arrays are
    served from memory; :class:`ImageFiles` are decoded by ``workers`` processes (default
    :func:`default_workers`), each holding at most two batches, with ``pin_memory`` for CUDA copies.
    """
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    dataset: Any = torch_dataset(data) if isinstance(data, Dataset) else data
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    if isinstance(data, Dataset):
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last)
    count = default_workers() if workers is None else workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=count,
        pin_memory=pin_memory,
        prefetch_factor=2 if count else None,
        generator=torch.Generator().manual_seed(seed),
    )
