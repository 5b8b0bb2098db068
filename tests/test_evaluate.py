"""densegraph.evaluation: the same top-1 from a spec + weights, an ONNX model and an engine runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from densegraph.cli import main
from densegraph.data import load_data
from densegraph.lower.torch import to_torch
from densegraph.spec import spec_from_string

ROOT = Path(__file__).resolve().parents[1]
TINY_SPEC = str(ROOT / "tests" / "data" / "tiny-digits.yaml")
RGB_SPEC = Path(TINY_SPEC).read_text().replace("{channels: 1, size: 8}", "{channels: 3, size: 16}")

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("one_thread"),
]  # torch.onnx's legacy exporter


def _fitted(module: torch.nn.Module, shape: tuple[int, int, int]) -> torch.nn.Module:
    """A few SGD steps on digits, so that top-1 is far from chance and differs between models."""
    data = load_data("digits", shape, split="train", max_samples=128)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(module(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return module.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("eval")
    module = _fitted(to_torch(TINY_SPEC, seed=0), (1, 8, 8))
    weights = folder / "tiny.pt"
    torch.save({"state_dict": module.state_dict(), "epoch": 1}, weights)  # a training-style checkpoint
    test = load_data("digits", (1, 8, 8), split="test")  # eval's default split where there is one
    with torch.no_grad():
        predicted = module(torch.from_numpy(test.x)).argmax(1).numpy()
    return {
        "module": module,
        "weights": weights,
        "folder": folder,
        "top1": 100.0 * float((predicted == test.y).mean()),
    }


def _export(module: torch.nn.Module, path: Path, shape: tuple[int, ...], *, dynamic: bool = True) -> None:
    axes = {"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    torch.onnx.export(
        module,
        (torch.zeros(shape),),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes=axes,
        dynamo=False,
    )


def _json_result(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("top-1 ")
    return json.loads(lines[-1])


def test_eval_spec_with_weights(tiny: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", TINY_SPEC, "--weights", str(tiny["weights"]), "--data", "digits", "--json"]) == 0
    result = _json_result(capsys)
    assert set(result) == {"top1", "top5", "samples", "split"} and result["samples"] == 360
    assert result["split"] == "test" and result["top5"] >= result["top1"]
    assert result["top1"] == pytest.approx(tiny["top1"], abs=1e-3)


def test_eval_onnx_matches_pytorch(tiny: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    dynamic, fixed = tiny["folder"] / "dynamic.onnx", tiny["folder"] / "fixed.onnx"
    _export(tiny["module"], dynamic, (1, 1, 8, 8))
    _export(tiny["module"], fixed, (7, 1, 8, 8), dynamic=False)  # 360 = 51 x 7 + 3: the last batch is padded
    for path in (dynamic, fixed):
        assert main(["eval", str(path), "--data", "digits", "--json", "--batch-size", "50"]) == 0
        result = _json_result(capsys)
        assert result["samples"] == 360 and result["top1"] == pytest.approx(tiny["top1"], abs=1e-3)


def test_eval_onnx_preprocesses_for_its_input_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = _fitted(to_torch(spec_from_string(RGB_SPEC), seed=1), (3, 16, 16))
    path = tmp_path / "rgb.onnx"
    _export(module, path, (1, 3, 16, 16))
    test = load_data("digits", (3, 16, 16), split="test")
    with torch.no_grad():
        expected = 100.0 * float((module(torch.from_numpy(test.x)).argmax(1).numpy() == test.y).mean())
    assert main(["eval", str(path), "--data", "digits", "--json"]) == 0
    assert _json_result(capsys)["top1"] == pytest.approx(expected, abs=1e-3)


def test_eval_engine_through_engine_runner(
    tiny: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import densegraph.export.tensorrt as tensorrt_backend

    opened: list[str] = []

    class FakeRunner:  # EngineRunner's interface: input_chw, outputs, and numpy batches in -> numpy logits out
        input_chw = (1, 8, 8)
        outputs: list[Any] = []  # the output tensors (none is a backbone's map)

        def __init__(self, path: str, **options: Any) -> None:
            opened.append(str(path))

        def close(self) -> None:
            pass

        def __call__(self, x: np.ndarray) -> np.ndarray:
            assert x.dtype == np.float32 and x.shape[1:] == (1, 8, 8)
            with torch.no_grad():
                return tiny["module"](torch.from_numpy(x)).numpy()

    monkeypatch.setattr(tensorrt_backend, "EngineRunner", FakeRunner)
    engine = tiny["folder"] / "model.engine"
    assert main(["eval", str(engine), "--data", "digits", "--json"]) == 0
    assert opened == [str(engine)]
    assert _json_result(capsys)["top1"] == pytest.approx(tiny["top1"], abs=1e-3)


def test_eval_errors_are_one_line(
    tiny: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a protobuf")
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    cases = [
        (["eval", TINY_SPEC, "--data", "digits"], "needs --weights"),
        (["eval", str(corrupt), "--weights", str(tiny["weights"]), "--data", "digits"], "--weights applies"),
        (["eval", str(corrupt), "--data", "digits"], "onnxruntime cannot load"),
        (["eval", str(tmp_path / "missing.onnx"), "--data", "digits"], "no such file"),
        (
            ["eval", TINY_SPEC, "--weights", str(tiny["weights"]), "--data", str(tmp_path / "x.npy")],
            "no labels",
        ),
        (
            ["eval", TINY_SPEC, "--weights", str(tiny["weights"]), "--data", str(tmp_path / "none")],
            "no such dir",
        ),
        (["eval", "specs/digits.yaml", "--weights", str(tiny["weights"]), "--data", "digits"], "do not fit"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err


# ---------------------------------------------------------------------------------------------------------
# top-5, --limit, --split, streaming folders, the ONNX preprocess record


def _reference(module: torch.nn.Module, data: Any) -> tuple[float, float]:
    with torch.no_grad():
        logits = module(torch.from_numpy(data.x))
    labels = torch.from_numpy(data.y)
    top1 = 100.0 * float((logits.argmax(1) == labels).float().mean())
    top5 = 100.0 * float((logits.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean())
    return top1, top5


def test_eval_top5_limit_and_split(tiny: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from densegraph.data import limit_indices

    base = ["eval", TINY_SPEC, "--weights", str(tiny["weights"]), "--data", "digits", "--json"]
    assert main(base) == 0
    result = _json_result(capsys)
    test = load_data("digits", (1, 8, 8), split="test")
    assert (result["top1"], result["top5"]) == pytest.approx(_reference(tiny["module"], test), abs=1e-3)
    assert main([*base, "--limit", "50", "--split", "val"]) == 0
    result = _json_result(capsys)
    val = load_data("digits", (1, 8, 8), split="val")
    subset = val.subset(limit_indices(len(val), 50))
    assert result["samples"] == 50 and result["split"] == "val"
    assert (result["top1"], result["top5"]) == pytest.approx(_reference(tiny["module"], subset), abs=1e-3)


def _digits_folder(root: Path, per_split: int = 30) -> None:
    """The digits splits written as PNG files in DIR/train|val|test/<class>/ (8-bit, as a user would have)."""
    from PIL import Image

    for split in ("train", "val", "test"):
        data = load_data(
            "digits", (1, 8, 8), split=split, max_samples=None if split == "train" else per_split
        )
        for i, (image, label) in enumerate(zip(data.x[:, 0], data.y, strict=True)):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(image * 255).astype(np.uint8), "L").save(folder / f"{i}.png")


def test_eval_streams_an_image_folder_through_workers(
    tiny: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _digits_folder(tmp_path / "digits")
    argv = [
        "eval",
        TINY_SPEC,
        "--weights",
        str(tiny["weights"]),
        "--data",
        str(tmp_path / "digits"),
        "--json",
    ]
    assert main([*argv, "--workers", "1", "--batch-size", "7"]) == 0
    result = _json_result(capsys)
    # the reference decodes the same files into memory (no DataLoader, no workers)
    test = load_data(tmp_path / "digits", (1, 8, 8), split="test")
    assert result["split"] == "test" and result["samples"] == len(test) == 30
    assert (result["top1"], result["top5"]) == pytest.approx(_reference(tiny["module"], test), abs=1e-3)
    # without a test folder the default is val, and the report says so
    (tmp_path / "digits" / "test").rename(tmp_path / "held")
    assert main(argv) == 0
    assert _json_result(capsys)["split"] == "val"


def test_eval_onnx_reads_the_preprocess_metadata(
    tiny: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx

    path = tmp_path / "meta.onnx"
    _export(tiny["module"], path, (1, 1, 8, 8))
    model = onnx.load(str(path))
    record = {"resize": None, "crop": [8, 8], "mean": [0.25], "std": [0.5], "channel_order": "rgb"}
    record |= {"scale": 255.0, "interpolation": "bilinear"}
    entry = model.metadata_props.add()
    entry.key, entry.value = "densegraph.preprocess", json.dumps(record)
    onnx.save(model, str(path))
    assert main(["eval", str(path), "--data", "digits", "--json"]) == 0
    result = _json_result(capsys)
    shifted = load_data("digits", (1, 8, 8), split="test", preprocess=record)
    assert shifted.x.min() == pytest.approx(-0.5)  # (0 - 0.25) / 0.5: the record was applied
    assert result["top1"] == pytest.approx(_reference(tiny["module"], shifted)[0], abs=1e-3)
    entry.value = json.dumps(record | {"crop": [16, 16]})
    onnx.save(model, str(path))
    assert main(["eval", str(path), "--data", "digits"]) == 2
    assert "crops to [16, 16]" in capsys.readouterr().err
