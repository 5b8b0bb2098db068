"""The ``preprocess:`` section: how an image becomes the model's input, and its defaults."""

from __future__ import annotations

import math
from typing import Any

from ..errors import Loc, SpecError
from .model import (
    CHANNEL_ORDERS,
    IMAGENET_CROP_FRACTION,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    Preprocess,
)
from .reader import _Val
from .values import _choice, _float, _height_width, _int, _mapping, _type_name, _unknown_keys

_PREPROCESS_KEYS = ("resize", "crop", "mean", "std", "channel_order", "scale", "interpolation")


def default_preprocess(stem_kind: str, channels: int, size: tuple[int, int]) -> Preprocess:
    """The preprocessing a spec gets when it does not say: torchvision's for ImageNet stems, a plain resize else."""
    mean = IMAGENET_MEAN if channels == 3 else (0.0,) * channels
    std = IMAGENET_STD if channels == 3 else (1.0,) * channels
    # a stem of conv stages is how the ImageNet variants (timm's deep stems, VoVNet, HarDNet) are written
    imagenet = stem_kind in ("imagenet", "convs")
    resize = math.floor(min(size) / IMAGENET_CROP_FRACTION) if imagenet else None
    return Preprocess(resize=resize, crop=size, mean=mean, std=std)


def _number_list(val: _Val, what: str, channels: int, *, positive: bool) -> tuple[float, ...]:
    items = val.value if isinstance(val.value, list) else None
    if items is None or len(items) != channels:
        got = f"{len(items)} values" if items is not None else f"a {_type_name(val.value)}"
        raise SpecError(
            f"{what} must be a list of {channels} numbers (one per input channel), got {got}",
            loc=val.loc,
            hint=f"e.g. {what.split('.')[-1]}: {list(IMAGENET_MEAN if channels == 3 else (0.5,) * channels)}",
        )
    out = []
    for item in items:
        value = item.value
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**64:
            # math.isfinite and float() of a 400-digit integer raise OverflowError
            raise SpecError(
                f"{what} must hold finite numbers, got an integer of {len(str(abs(value)))} digits",
                loc=item.loc,
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SpecError(f"{what} must hold finite numbers, got {value!r}", loc=item.loc)
        if positive and value <= 0:
            raise SpecError(f"{what} must hold positive numbers, got {value!r}", loc=item.loc)
        out.append(float(value))
    return tuple(out)


def _preprocess(
    val: _Val | None, stem_kind: str, channels: int, size: tuple[int, int], file_loc: Loc
) -> Preprocess:
    base = default_preprocess(stem_kind, channels, size)
    if val is None:
        return Preprocess(**{**base.__dict__, "loc": file_loc})
    mapping = _mapping(val, "preprocess")
    _unknown_keys(mapping, _PREPROCESS_KEYS, "preprocess")
    values: dict[str, Any] = {k: getattr(base, k) for k in _PREPROCESS_KEYS}
    if "crop" in mapping:
        cv = mapping["crop"]
        crop = _height_width(cv, "preprocess.crop", "preprocess.crop height", "preprocess.crop width")
        if crop != size:
            raise SpecError(
                f"preprocess.crop {list(crop)} differs from the input size {list(size)}",
                loc=cv.loc,
                hint="the crop is what the model takes; set input.size to it, or drop crop",
            )
    if "resize" in mapping:
        rv = mapping["resize"]
        values["resize"] = None if rv.value is None else _int(rv, "preprocess.resize", limit="size")
        if values["resize"] is not None and values["resize"] < min(size):
            raise SpecError(
                f"preprocess.resize {values['resize']} is smaller than the crop {list(size)}",
                loc=rv.loc,
                hint="resize sets the shorter side before the center crop; use at least the crop size, "
                "or null to resize straight to the crop",
            )
    if "mean" in mapping:
        values["mean"] = _number_list(mapping["mean"], "preprocess.mean", channels, positive=False)
    if "std" in mapping:
        values["std"] = _number_list(mapping["std"], "preprocess.std", channels, positive=True)
    if "channel_order" in mapping:
        values["channel_order"] = _choice(
            mapping["channel_order"], "preprocess.channel_order", CHANNEL_ORDERS
        )
        if channels != 3 and values["channel_order"] != "rgb":
            raise SpecError(
                f"preprocess.channel_order applies to 3-channel inputs; this model takes {channels}",
                loc=mapping["channel_order"].loc,
            )
    if "scale" in mapping:
        values["scale"] = _float(
            mapping["scale"], "preprocess.scale", 0.0, 1e9, low_open=True, high_open=False
        )
    if "interpolation" in mapping:
        values["interpolation"] = _choice(
            mapping["interpolation"], "preprocess.interpolation", INTERPOLATIONS
        )
    locs = {k: v.loc for k, v in mapping.items()}
    return Preprocess(**values, loc=val.loc, locs=locs)
