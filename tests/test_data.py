"""densegraph.data: digits, image folders, .npy calibration inputs, and the torch loader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from densegraph.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Dataset,
    ImageFiles,
    available_splits,
    data_loader,
    default_eval_split,
    image_dataset,
    load_data,
)
from densegraph.errors import DataError


def _write_folder(root: Path, counts: dict[str, int], *, size: int = 6, mode: str = "L") -> None:
    for c, (name, n) in enumerate(sorted(counts.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            value = 40 * c + i
            Image.new(mode, (size, size), value if mode == "L" else (value, 0, 255)).save(
                root / name / f"{i}.png"
            )


# ---------------------------------------------------------------------------------------------------------
# digits


def test_digits_split_is_stratified_fixed_and_three_way() -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    train = load_data("digits", (1, 8, 8), split="train")
    val = load_data("digits", (1, 8, 8))
    test = load_data("digits", (1, 8, 8), split="test")
    every = load_data("digits", (1, 8, 8), split="all")
    assert (len(train), len(val), len(test), len(every)) == (1077, 360, 360, 1797)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert train.x.shape == (1077, 1, 8, 8) and 0.0 <= val.x.min() and val.x.max() == 1.0
    # the documented splits, recomputed independently
    bunch = load_digits()
    x_rest, x_test, y_rest, y_test = train_test_split(
        bunch.images, bunch.target, test_size=0.2, random_state=0, stratify=bunch.target
    )
    _, x_val, _, y_val = train_test_split(x_rest, y_rest, test_size=360, random_state=0, stratify=y_rest)
    np.testing.assert_array_equal(test.y, y_test)
    np.testing.assert_allclose(test.x[:, 0], x_test / 16.0)
    np.testing.assert_array_equal(val.y, y_val)
    np.testing.assert_allclose(val.x[:, 0], x_val / 16.0)
    for part in (val, test):
        assert np.bincount(part.y).min() >= 35  # every class in each held-out split
    # no image is in two splits
    seen = [set(map(bytes, part.x)) for part in (train, val, test)]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert val.classes == [str(i) for i in range(10)] and val.source == "digits" and test.split == "test"


def test_digits_resized_and_channels_repeated() -> None:
    small = load_data("digits", (1, 8, 8))
    plain = {"resize": None, "crop": [16, 16], "mean": [0.0] * 3, "std": [1.0] * 3}
    plain |= {"channel_order": "rgb", "scale": 255.0, "interpolation": "bilinear"}
    big = load_data("digits", (3, 16, 16), preprocess=plain)
    assert big.x.shape == (360, 3, 16, 16)
    np.testing.assert_array_equal(big.x[:, 0], big.x[:, 2])
    np.testing.assert_array_equal(big.y, small.y)
    # bilinear resizing keeps the average brightness of each image roughly
    np.testing.assert_allclose(big.x.mean(axis=(1, 2, 3)), small.x.mean(axis=(1, 2, 3)), atol=0.03)
    # the spec's default for 3 channels: the ImageNet mean/std on top
    normalised = load_data("digits", (3, 16, 16))
    expected = (big.x - np.array(IMAGENET_MEAN, np.float32)[:, None, None]) / np.array(
        IMAGENET_STD, np.float32
    )[:, None, None]
    np.testing.assert_allclose(normalised.x, expected, rtol=1e-5, atol=1e-6)


def test_max_samples_is_deterministic() -> None:
    a = load_data("digits", (1, 8, 8), max_samples=50)
    b = load_data("digits", (1, 8, 8), max_samples=50)
    assert len(a) == 50
    np.testing.assert_array_equal(a.x, b.x)


def test_data_module_does_not_import_torch() -> None:
    code = "import sys, densegraph.data; assert 'torch' not in sys.modules and 'sklearn' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------------------
# image folders


def test_folder_split_grayscale(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"cat": 10, "dog": 5})
    train = load_data(tmp_path, (1, 4, 4), split="train")
    val = load_data(tmp_path, (1, 4, 4), split="val")
    test = load_data(tmp_path, (1, 4, 4), split="test")
    every = load_data(tmp_path, (1, 4, 4), split="all")
    assert train.classes == ["cat", "dog"] and val.source == str(tmp_path)
    assert (len(train), len(val), len(test), len(every)) == (9, 3, 3, 15)
    assert np.bincount(val.y).tolist() == [2, 1] == np.bincount(test.y).tolist()  # 20% of each class
    assert val.x.shape == (3, 1, 4, 4) and val.x.dtype == np.float32
    # a constant image stays constant through resizing; pixel value / 255
    label0 = val.x[val.y == 0]
    assert np.allclose(label0, label0[:, :, :1, :1]) and label0.max() <= 9 / 255 + 1e-6
    again = load_data(tmp_path, (1, 4, 4), split="val")
    np.testing.assert_array_equal(again.x, val.x)
    files = image_dataset(tmp_path, (1, 4, 4), split="val")
    assert isinstance(files, ImageFiles) and len(files) == 3
    np.testing.assert_array_equal(np.stack([files[i][0] for i in range(3)]), val.x)


def test_folder_rgb_is_imagenet_normalised(tmp_path: Path) -> None:
    _write_folder(tmp_path / "train", {"a": 2, "b": 2}, mode="RGB")
    _write_folder(tmp_path / "val", {"a": 1}, mode="RGB")
    val = load_data(tmp_path, (3, 5, 5), split="val")
    train = load_data(tmp_path, (3, 5, 5), split="train")
    assert (len(train), len(val)) == (4, 1) and val.classes == ["a", "b"]
    expected = (np.array([0, 0, 255]) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(val.x[0, :, 2, 2], expected, rtol=1e-5)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such directory"):
        load_data(tmp_path / "missing", (1, 8, 8))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        load_data(empty, (1, 8, 8))
    (empty / "cls").mkdir()
    with pytest.raises(DataError, match="class folder has no images") as info:
        load_data(empty, (1, 8, 8))
    assert "cls" in info.value.format()
    bad = tmp_path / "bad"
    _write_folder(bad, {"a": 5})
    (bad / "a" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="cannot decode the image") as info:
        load_data(bad, (1, 8, 8), split="all")
    assert "broken.png" in info.value.format()
    assert "\n" not in info.value.format()
    with pytest.raises(DataError, match="1 \\(grayscale\\) or 3"):
        load_data(bad, (2, 8, 8))


# ---------------------------------------------------------------------------------------------------------
# .npy


def test_npy_calibration_inputs(tmp_path: Path) -> None:
    path = tmp_path / "calib.npy"
    np.save(path, np.random.default_rng(0).random((7, 3, 4, 4)))
    data = load_data(path, (3, 4, 4))
    assert data.x.shape == (7, 3, 4, 4) and data.x.dtype == np.float32 and data.y.size == 0
    assert len(load_data(path, (3, 4, 4), max_samples=3)) == 3
    with pytest.raises(DataError, match=r"expected \[N, 3, 8, 8\]"):
        load_data(path, (3, 8, 8))
    with pytest.raises(DataError, match="no such file"):
        load_data(tmp_path / "nope.npy", (3, 4, 4))
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="not a plain .npy"):
        load_data(pickled, (3, 4, 4))


# ---------------------------------------------------------------------------------------------------------
# torch


def test_data_loader_shuffles_by_seed_and_epoch() -> None:
    data = Dataset(np.arange(20, dtype=np.float32).reshape(20, 1, 1, 1), np.arange(20), [], "t")

    def order(epoch: int, seed: int = 0, rank: int = 0, replicas: int = 1) -> list[int]:
        loader = data_loader(data, 4, shuffle=True, seed=seed, rank=rank, num_replicas=replicas)
        loader.sampler.set_epoch(epoch)
        return [int(v) for _, y in loader for v in y]

    assert sorted(order(0)) == list(range(20))
    assert order(1) == order(1) and order(1) != order(2) and order(1, seed=1) != order(1)
    halves = order(3, rank=0, replicas=2) + order(3, rank=1, replicas=2)
    assert sorted(halves) == list(range(20))


def test_explicit_splits_and_the_default_eval_split(tmp_path: Path) -> None:
    _write_folder(tmp_path / "train", {"a": 3, "b": 3})
    _write_folder(tmp_path / "test", {"b": 2})
    assert available_splits(tmp_path) == ("train", "test") and default_eval_split(tmp_path) == "test"
    test = image_dataset(tmp_path, (1, 4, 4), split="test")
    assert isinstance(test, ImageFiles) and len(test) == 2 and test.y.tolist() == [1, 1]
    with pytest.raises(DataError, match="has no val split"):
        image_dataset(tmp_path, (1, 4, 4), split="val")
    _write_folder(tmp_path / "val", {"a": 1})
    assert default_eval_split(tmp_path) == "test" and len(load_data(tmp_path, (1, 4, 4), split="all")) == 9
    assert available_splits("digits") == ("train", "val", "test")
    plain = tmp_path / "plain"
    _write_folder(plain, {"a": 5})
    assert default_eval_split(plain) == "test"
