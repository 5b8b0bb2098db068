"""Class names in the spec (head.labels): read, carried by the graph into the ONNX metadata, shown by predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import densegraph
from densegraph import build_graph, load_spec, spec_from_string
from densegraph.errors import SpecError

TINY = """
name: tiny
input: {channels: 1, size: 8}
growth_rate: 4
bottleneck: 0
stem: {kind: cifar, channels: 8}
blocks: [2]
head: {classes: 3, labels: LABELS}
"""


def _spec(tmp_path: Path, labels: str) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.replace("LABELS", labels))
    return path


def test_labels_as_a_list_and_as_a_file_beside_the_spec(tmp_path: Path) -> None:
    assert load_spec(_spec(tmp_path, "[cat, dog, ' bird ']")).head.labels == ("cat", "dog", "bird")
    (tmp_path / "names.txt").write_text(
        "crane\ncrane\n\nheron\n"
    )  # ImageNet has a name twice; blanks skipped
    assert load_spec(_spec(tmp_path, "names.txt")).head.labels == ("crane", "crane", "heron")
    (tmp_path / "names.json").write_text('["a", "b", "c"]')
    graph = build_graph(load_spec(_spec(tmp_path, "names.json")))
    assert graph.graph["labels"] == ["a", "b", "c"]
    assert "labels" not in build_graph(spec_from_string(TINY.replace(", labels: LABELS", ""))).graph


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("[cat, dog]", "head.labels names 2 classes, the head has 3"),
        ("[cat, 2, dog]", "head.labels must hold non-empty class names"),
        ("{a: 1}", "head.labels must be a list of class names or a file name, got mapping"),
        ("bad.json", "the labels file bad.json is not a JSON list"),
    ],
)
def test_bad_labels_are_one_located_error(tmp_path: Path, labels: str, message: str) -> None:
    (tmp_path / "bad.json").write_text("[1, 2,")
    with pytest.raises(SpecError, match=message) as caught:
        load_spec(_spec(tmp_path, labels))
    assert str(caught.value.loc).startswith(str(tmp_path / "tiny.yaml") + ":8:28")


def test_spec_labels_reach_the_model_and_predict(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "[cat, dog, bird]")
    result = densegraph.build(str(spec), output=str(tmp_path / "out"))
    metadata = {p.key: p.value for p in onnx.load(result.model).metadata_props}
    assert json.loads(metadata["densegraph.labels"]) == ["cat", "dog", "bird"]
    overridden = tmp_path / "other.txt"
    overridden.write_text("x\ny\nz\n")
    again = densegraph.build(str(spec), output=str(tmp_path / "out2"), labels=str(overridden))
    metadata = {p.key: p.value for p in onnx.load(again.model).metadata_props}
    assert json.loads(metadata["densegraph.labels"]) == ["x", "y", "z"]  # --labels wins over the spec

    from PIL import Image

    from densegraph.prediction import predict

    image = tmp_path / "img.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(image)
    import torch

    weights = tmp_path / "w.pt"
    torch.save(densegraph.to_torch(str(spec), seed=0).state_dict(), weights)
    for model, kwargs in ((str(result.model), {}), (str(spec), {"weights": str(weights)})):
        (prediction,) = predict(model, [str(image)], top=3, **kwargs)
        assert {score.name for score in prediction.top} == {"cat", "dog", "bird"}
