"""densegraph.heatmaps: the paper's Fig. 5 matrices, checked against hand-set weights, and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from densegraph.cli import main
from densegraph.graph import build_graph
from densegraph.heatmaps import heatmap_matrices
from densegraph.lower.torch import to_torch
from densegraph.spec import spec_from_string

ROOT = Path(__file__).resolve().parents[1]
TINY_SPEC = str(ROOT / "tests" / "data" / "tiny-digits.yaml")

# one block of 3 layers without bottleneck; window 1: layer 1 reads [input], 2 reads [input, 1], 3 reads [input, 2]
WINDOW_SPEC = """
name: window
input: {channels: 1, size: 8}
growth_rate: 2
bottleneck: 0
compression: 0.5
stem: {kind: cifar, channels: 3}
blocks: [{layers: 3, connectivity: {kind: window, size: 1}}]
head: {classes: 4}
"""


def test_hand_set_weights_give_the_expected_matrix() -> None:
    graph = build_graph(spec_from_string(WINDOW_SPEC))
    module = to_torch(graph, seed=0)
    state = module.state_dict()
    # the weight from source s (0 = block input, i = layer i) into target t is ±(10 t + s), signs alternating
    sources = ["block1.input", "block1.layer1", "block1.layer2", "block1.layer3"]
    firsts = {
        "block1.layer1": "features.denseblock1.denselayer1.conv1",
        "block1.layer2": "features.denseblock1.denselayer2.conv1",
        "block1.layer3": "features.denseblock1.denselayer3.conv1",
        "head": "classifier",
    }
    expected = np.full((4, 4), np.nan)
    for t, (target, name) in enumerate(firsts.items(), start=1):
        weight = state[f"{name}.weight"]
        weight.zero_()
        for source, _, edge in graph.in_edges(target, data=True):
            s = sources.index(source)
            value = 10.0 * t + s
            span = weight[:, edge["offset"] : edge["offset"] + edge["channels"]]
            signs = torch.ones_like(span)
            signs.view(-1)[::2] = -1
            span.copy_(value * signs)
            expected[s, t - 1] = value
    (block,) = heatmap_matrices(graph, state)
    assert block.block == 1 and block.sources == sources
    assert block.targets == [*list(firsts)[:3], "head"]
    np.testing.assert_allclose(block.matrix, expected)
    assert math.isnan(block.matrix[1, 2])  # layer 3 does not read layer 1 under window 1


def test_bottleneck_layers_use_their_first_conv() -> None:
    graph = build_graph(spec_from_string(Path(TINY_SPEC).read_text()))
    state = to_torch(graph, seed=3).state_dict()
    maps = heatmap_matrices(graph, state)
    assert [m.block for m in maps] == [1, 2]
    first = maps[0]
    assert first.targets == ["block1.layer1", "block1.layer2", "transition1"]
    w = state["features.denseblock1.denselayer2.conv1.weight"]  # the 1x1 bottleneck conv, 8 + 4 inputs
    assert first.matrix[0, 1] == pytest.approx(float(w[:, :8].abs().mean()))
    assert first.matrix[1, 1] == pytest.approx(float(w[:, 8:12].abs().mean()))
    t = state["features.transition1.conv.weight"]
    assert first.matrix[2, 2] == pytest.approx(float(t[:, 12:16].abs().mean()))
    # dense connectivity: every earlier map feeds every later layer, nothing feeds backwards
    assert (
        np.isnan(first.matrix[2, 0])
        and np.isnan(first.matrix[2, 1])
        and not np.isnan(first.matrix).all(0).any()
    )


def test_heatmap_cli_writes_figure_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "w.pt"
    torch.save({"state_dict": to_torch("specs/digits.yaml", seed=0).state_dict()}, weights)
    figure = tmp_path / "fig.png"
    assert main(["heatmap", "specs/digits.yaml", "--weights", str(weights), "-o", str(figure), "--json"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {figure}" in out and f"wrote {tmp_path / 'fig.json'}" in out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((tmp_path / "fig.json").read_text())
    assert [b["block"] for b in doc["blocks"]] == [1, 2, 3]
    last = doc["blocks"][2]
    assert last["targets"][-1] == "head" and len(last["sources"]) == 5
    matrix = last["matrix"]
    assert all(matrix[s][t] is None for s in range(5) for t in range(5) if s > t)
    assert all(matrix[s][t] > 0 for s in range(5) for t in range(5) if s <= t)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.json", "fig.png", "w.pt"]


def test_heatmap_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "w.pt"
    torch.save(to_torch(TINY_SPEC, seed=0).state_dict(), weights)
    assert (
        main(["heatmap", "specs/digits.yaml", "--weights", str(weights), "-o", str(tmp_path / "f.png")]) == 2
    )
    assert "do not fit" in capsys.readouterr().err
    assert main(["heatmap", TINY_SPEC, "--weights", str(weights), "-o", str(tmp_path / "no" / "f.png")]) == 2
    assert "output folder does not exist" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]
