"""Image files to model inputs, as the spec's ``preprocess:`` section says (numpy and Pillow only).

``preprocess`` is the plain dict the graph carries (``graph.graph["preprocess"]``, see
:class:`densegraph.spec.Preprocess`) or the same dict read back from an ONNX model's metadata. The evaluation
transform is torchvision's ``Resize(resize) -> CenterCrop(crop) -> ToTensor -> Normalize(mean, std)`` (with
``resize: null``, a straight resize to the crop); the training transform is torchvision's reference recipe
``RandomResizedCrop(crop) -> RandomHorizontalFlip`` for specs that resize, and the evaluation transform for the
others (their augmentation, random shifts, runs on the batch in :mod:`densegraph.training`).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import DataError, DensegraphError, Loc

__all__ = [
    "decode_image",
    "eval_transform",
    "train_transform",
    "image_to_input",
    "check_preprocess",
    "size_range_of",
    "refuse_outside_range",
]

_KEYS = ("resize", "crop", "mean", "std", "channel_order", "scale", "interpolation")
_RESIZED_CROP_SCALE = (0.08, 1.0)
_RESIZED_CROP_RATIO = (3 / 4, 4 / 3)


def _resample(name: str) -> Any:
    from PIL import Image

    return {
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "nearest": Image.Resampling.NEAREST,
    }[name]


def check_preprocess(preprocess: Any, channels: int, where: Loc | None = None) -> dict[str, Any]:
    """Validate a preprocess dict (from a graph or a model's metadata); returns it with tuples as lists."""
    if not isinstance(preprocess, dict) or any(k not in preprocess for k in _KEYS):
        raise DataError(
            "the model's preprocessing record is incomplete",
            loc=where,
            hint=f"expected a mapping with {', '.join(_KEYS)}",
        )
    out = dict(preprocess)
    try:
        out["crop"] = [int(v) for v in preprocess["crop"]]
        out["mean"] = [float(v) for v in preprocess["mean"]]
        out["std"] = [float(v) for v in preprocess["std"]]
        out["scale"] = float(preprocess["scale"])
        out["resize"] = None if preprocess["resize"] is None else int(preprocess["resize"])
    except (TypeError, ValueError):
        raise DataError("the model's preprocessing record has values of the wrong type", loc=where) from None
    if len(out["crop"]) != 2 or len(out["mean"]) != channels or len(out["std"]) != channels:
        raise DataError(
            f"the model's preprocessing record does not fit a {channels}-channel input "
            f"(crop {out['crop']}, {len(out['mean'])} means, {len(out['std'])} stds)",
            loc=where,
        )
    if out["interpolation"] not in ("bilinear", "bicubic", "nearest") or out["channel_order"] not in (
        "rgb",
        "bgr",
    ):
        raise DataError("the model's preprocessing record names an unknown option", loc=where)
    if not out["scale"] > 0 or any(not s > 0 for s in out["std"]):
        raise DataError("the model's preprocessing record has a non-positive scale or std", loc=where)
    return out


def size_range_of(preprocess: Mapping[str, Any], where: Loc) -> dict[str, list[int]] | None:
    """The ``input_range`` of a preprocess record (a dynamic model's), checked; None for a fixed size."""
    given = preprocess.get("input_range")
    if given is None:
        return None
    try:
        size_range = {key: [int(v) for v in given[key]] for key in ("min", "opt", "max")}
    except (KeyError, TypeError, ValueError):
        size_range = None
    if size_range is None or any(
        len(v) != 2 or not 0 < lo <= v[i] <= hi
        for v in size_range.values()
        for i, (lo, hi) in enumerate(zip(size_range["min"], size_range["max"], strict=True))
    ):
        raise DataError(
            f"the model's densegraph.preprocess has a malformed input_range {given!r}",
            loc=where,
            hint="expected {min: [H, W], opt: [H, W], max: [H, W]} with min <= opt <= max",
        )
    return size_range


def refuse_outside_range(
    size_range: Mapping[str, Sequence[int]] | None, shape: Sequence[int], what: str
) -> None:
    """One :class:`DensegraphError` when ``shape`` ``[N, C, H, W]`` has H or W outside ``size_range``."""
    if size_range is None or len(shape) != 4:
        return
    h, w = int(shape[2]), int(shape[3])
    (lh, lw), (oh, ow), (hh, hw) = (size_range[k] for k in ("min", "opt", "max"))
    if not (lh <= h <= hh and lw <= w <= hw):
        raise DensegraphError(
            f"{what} takes images from {lh}x{lw} to {hh}x{hw} (height x width), got {h}x{w}",
            hint=f"resize the images into that range (the model is tuned for {oh}x{ow})",
        )


def decode_image(path: str | os.PathLike[str], channels: int) -> Any:
    """Open an image file as a Pillow image in ``L`` (1 channel) or ``RGB`` (3 channels)."""
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise DataError(
            f"image files give 1 (grayscale) or 3 (RGB) channels; the model takes {channels}",
            loc=Loc(os.fspath(path)),
        )
    try:
        with Image.open(path) as opened:
            return opened.convert("L" if channels == 1 else "RGB")
    except FileNotFoundError:
        raise DataError("no such file", loc=Loc(os.fspath(path))) from None
    except IsADirectoryError:
        raise DataError("is a directory, not an image", loc=Loc(os.fspath(path))) from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        reason = "not an image Pillow can read" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise DataError(f"cannot decode the image: {reason}", loc=Loc(os.fspath(path))) from None


def _to_input(image: Any, preprocess: dict[str, Any]) -> np.ndarray:
    pixels = np.asarray(image, dtype=np.float32) / np.float32(preprocess["scale"])
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    elif preprocess["channel_order"] == "bgr":
        pixels = pixels[:, :, ::-1]
    mean = np.asarray(preprocess["mean"], np.float32)
    std = np.asarray(preprocess["std"], np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1), dtype=np.float32)


def _resize_shorter(image: Any, side: int, resample: Any) -> Any:
    # torchvision's Resize(int): the shorter side becomes ``side``, the longer one int(side * long / short)
    w, h = image.size
    if w <= h:
        size = (side, int(side * h / w))
    else:
        size = (int(side * w / h), side)
    return image if size == (w, h) else image.resize(size, resample)


def _center_crop(image: Any, crop: tuple[int, int]) -> Any:
    # torchvision's CenterCrop: offsets rounded half to even of (size - crop) / 2
    ch, cw = crop
    w, h = image.size
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return image.crop((left, top, left + cw, top + ch))


def eval_transform(image: Any, preprocess: dict[str, Any]) -> np.ndarray:
    """The deterministic transform: resize (shorter side), center-crop, scale, normalise -> float32 [C, H, W]."""
    crop = (int(preprocess["crop"][0]), int(preprocess["crop"][1]))
    resample = _resample(preprocess["interpolation"])
    if preprocess["resize"] is None:
        if image.size != (crop[1], crop[0]):
            image = image.resize((crop[1], crop[0]), resample)
    else:
        image = _center_crop(_resize_shorter(image, int(preprocess["resize"]), resample), crop)
    return _to_input(image, preprocess)


def train_transform(image: Any, preprocess: dict[str, Any], rng: random.Random) -> np.ndarray:
    """The training transform: a random resized crop and flip for specs that resize, else the eval transform."""
    if preprocess["resize"] is None:
        return eval_transform(image, preprocess)
    crop = (int(preprocess["crop"][0]), int(preprocess["crop"][1]))
    w, h = image.size
    area = w * h
    box = (0, 0, w, h)
    for _ in range(10):  # torchvision's RandomResizedCrop.get_params
        target = area * rng.uniform(*_RESIZED_CROP_SCALE)
        ratio = math.exp(rng.uniform(math.log(_RESIZED_CROP_RATIO[0]), math.log(_RESIZED_CROP_RATIO[1])))
        cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
            box = (left, top, left + cw, top + ch)
            break
    else:  # the fallback: a central crop at the ratio's bound
        ratio = w / h
        if ratio < _RESIZED_CROP_RATIO[0]:
            cw, ch = w, int(round(w / _RESIZED_CROP_RATIO[0]))
        elif ratio > _RESIZED_CROP_RATIO[1]:
            ch, cw = h, int(round(h * _RESIZED_CROP_RATIO[1]))
        else:
            cw, ch = w, h
        top, left = (h - ch) // 2, (w - cw) // 2
        box = (left, top, left + cw, top + ch)
    image = image.resize((crop[1], crop[0]), _resample(preprocess["interpolation"]), box=box)
    if rng.random() < 0.5:
        from PIL import Image

        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _to_input(image, preprocess)


def image_to_input(path: str | os.PathLike[str], preprocess: dict[str, Any], channels: int) -> np.ndarray:
    """Decode one image file and apply the evaluation transform -> float32 ``[C, H, W]``."""
    return eval_transform(decode_image(path, channels), preprocess)
