"""densegraph predict: real image files through a spec + weights and its ONNX model, top-K with names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from densegraph.cli import main
from densegraph.lower.torch import to_torch
from densegraph.prediction import predict

ROOT = Path(__file__).resolve().parents[1]
TINY_SPEC = str(ROOT / "tests" / "data" / "tiny-digits.yaml")
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("one_thread"),
]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from PIL import Image

    folder = tmp_path_factory.mktemp("predict")
    module = to_torch(TINY_SPEC, seed=3).eval()
    weights = folder / "best.pt"
    torch.save({"state_dict": module.state_dict(), "classes": NAMES}, weights)
    rng = np.random.default_rng(0)
    images = []
    for i in range(3):
        pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
        path = folder / f"digit{i}.png"
        Image.fromarray(pixels, "L").save(path)
        images.append((path, pixels))
    return {"module": module, "weights": weights, "images": images, "folder": folder}


def _reference(module: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    """The digits spec's preprocessing written out: 8x8 grayscale, pixel / 255, mean 0, std 1."""
    x = torch.from_numpy(pixels.astype(np.float32) / 255.0)[None, None]
    with torch.no_grad():
        return torch.softmax(module(x).double(), dim=1)[0].numpy()


def test_predict_spec_and_weights_gives_the_top_k_with_names(model: dict) -> None:
    paths = [p for p, _ in model["images"]]
    results = predict(TINY_SPEC, paths, weights=model["weights"], top=3)
    assert [r.image for r in results] == [str(p) for p in paths]
    for result, (_, pixels) in zip(results, model["images"], strict=True):
        expected = _reference(model["module"], pixels)
        order = np.argsort(-expected)[:3]
        assert [c.index for c in result.top] == order.tolist()
        assert [c.name for c in result.top] == [NAMES[i] for i in order]
        np.testing.assert_allclose([c.probability for c in result.top], expected[order], atol=1e-5)


def test_predict_onnx_agrees_with_pytorch_and_prints_json(
    model: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx

    path = model["folder"] / "model.onnx"
    torch.onnx.export(
        model["module"],
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "densegraph.classes", json.dumps(NAMES)
    onnx.save(proto, str(path))
    images = [str(p) for p, _ in model["images"]]
    assert main(["predict", str(path), *images, "--top", "2", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3  # one JSON object per image
    for line, (_, pixels) in zip(lines, model["images"], strict=True):
        record = json.loads(line)
        expected = _reference(model["module"], pixels)
        order = np.argsort(-expected)[:2]
        assert [c["index"] for c in record["top"]] == order.tolist()
        assert [c["name"] for c in record["top"]] == [NAMES[i] for i in order]
        np.testing.assert_allclose([c["probability"] for c in record["top"]], expected[order], atol=1e-4)
    assert main(["predict", TINY_SPEC, images[0], "--weights", str(model["weights"]), "--top", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == images[0] and out[1].startswith("  1. ") and "(class " in out[1]


def test_predict_errors_are_one_line(model: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    weights = str(model["weights"])
    cases = [
        (["predict", TINY_SPEC, str(tmp_path / "missing.png"), "--weights", weights], "no such file"),
        (["predict", TINY_SPEC, str(text), "--weights", weights], "cannot decode the image"),
        (["predict", TINY_SPEC, str(text)], "needs --weights"),
        (["predict", TINY_SPEC, str(text), "--weights", weights, "--top", "0"], "--top must be positive"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
