"""densegraph.transforms: torchvision's evaluation transform (Resize(int) -> CenterCrop -> ToTensor -> Normalize)
written out by hand on images whose every pixel is known."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from densegraph.errors import DataError
from densegraph.transforms import check_preprocess, eval_transform, image_to_input, train_transform

PRE = {
    "resize": 40,
    "crop": [32, 32],
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "channel_order": "rgb",
    "scale": 255.0,
    "interpolation": "nearest",
}


def _coordinates_image(width: int, height: int) -> Image.Image:
    """R = column, G = row, B = 7: after a nearest resize and a crop, each pixel says where it came from."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(np.stack([x, y, np.full_like(x, 7)], -1).astype(np.uint8), "RGB")


def test_shorter_side_resize_then_center_crop_then_normalise() -> None:
    image = _coordinates_image(100, 80)  # landscape: the height becomes 40, the width int(40 * 100 / 80) = 50
    out = eval_transform(image, PRE)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    resized = np.asarray(image.resize((50, 40), Image.Resampling.NEAREST), dtype=np.float32)
    top, left = round((40 - 32) / 2), round((50 - 32) / 2)  # torchvision's CenterCrop offsets: 4, 9
    expected = resized[top : top + 32, left : left + 32] / 255.0
    expected = (expected - np.array(PRE["mean"], np.float32)) / np.array(PRE["std"], np.float32)
    np.testing.assert_allclose(out, expected.transpose(2, 0, 1), rtol=1e-6)
    # portrait: the width becomes 40
    assert eval_transform(_coordinates_image(60, 90), PRE).shape == (3, 32, 32)


def test_resize_null_goes_straight_to_the_crop_and_bgr_swaps_channels() -> None:
    image = _coordinates_image(64, 48)
    plain = {**PRE, "resize": None, "mean": [0.0] * 3, "std": [1.0] * 3, "scale": 1.0}
    out = eval_transform(image, plain)
    expected = np.asarray(image.resize((32, 32), Image.Resampling.NEAREST), dtype=np.float32)
    np.testing.assert_array_equal(out, expected.transpose(2, 0, 1))
    swapped = eval_transform(image, {**plain, "channel_order": "bgr"})
    np.testing.assert_array_equal(swapped, out[::-1])


def test_training_transform_is_a_random_resized_crop_and_flip() -> None:
    image = _coordinates_image(100, 80)
    first = train_transform(image, PRE, random.Random(1))
    again = train_transform(image, PRE, random.Random(1))
    other = train_transform(image, PRE, random.Random(2))
    assert first.shape == (3, 32, 32)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # without a resize (small specs) training sees the evaluation transform; their shifts run on the batch
    small = {**PRE, "resize": None}
    np.testing.assert_array_equal(
        train_transform(image, small, random.Random(1)), eval_transform(image, small)
    )


def test_grayscale_files_and_bad_records(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "g.png"
    Image.fromarray(np.full((10, 12), 51, np.uint8), "L").save(path)
    gray = {**PRE, "resize": None, "crop": [5, 6], "mean": [0.1], "std": [0.5]}
    np.testing.assert_allclose(
        image_to_input(path, gray, 1), np.full((1, 5, 6), (0.2 - 0.1) / 0.5), rtol=1e-6
    )
    with pytest.raises(DataError, match="1 \\(grayscale\\) or 3"):
        image_to_input(path, gray, 2)
    with pytest.raises(DataError, match="does not fit a 3-channel input"):
        check_preprocess(gray, 3)
    with pytest.raises(DataError, match="incomplete"):
        check_preprocess({"resize": None}, 1)
