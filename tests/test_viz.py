"""densegraph graph (densegraph.viz): node-link JSON, DOT, pictures, and the heat-map drawing."""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import networkx as nx
import pytest

from densegraph import build_graph, check_graph, load_spec
from densegraph.cli import main
from densegraph.errors import DensegraphError

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "specs"


# ---------------------------------------------------------------------------------------------------------
# densegraph graph


SMALL = SPECS / "examples" / "cifar-mixed.yaml"


def _jsonable(value: object) -> object:
    return json.loads(json.dumps(value))


def test_graph_json_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "graph.json"
    assert main(["graph", str(SMALL), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    original = build_graph(load_spec(SMALL))
    loaded = nx.node_link_graph(json.loads(out.read_text()), edges="edges")
    assert isinstance(loaded, nx.DiGraph)
    assert list(loaded.nodes) == list(original.nodes)  # execution order survives
    assert set(loaded.edges) == set(original.edges)
    for node, data in original.nodes(data=True):
        assert loaded.nodes[node] == _jsonable(data), node
    for u, v, data in original.edges(data=True):
        assert loaded.edges[u, v] == data
    assert loaded.graph == _jsonable(original.graph)
    check_graph(loaded)  # the invariants still hold on the file's contents


def test_graph_json_is_deterministic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["graph", str(SMALL), "-o", str(first)]) == 0
    assert main(["graph", str(SMALL), "-o", str(second)]) == 0
    assert first.read_bytes() == second.read_bytes()


def test_graph_dot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "graph.dot"
    assert main(["graph", str(SMALL), "-o", str(out)]) == 0
    text = out.read_text()
    graph = build_graph(load_spec(SMALL))
    assert text.startswith('digraph "cifar-mixed" {') and text.rstrip().endswith("}")
    assert text.count("{") == text.count("}")
    edge_lines = [
        line for line in text.splitlines() if re.fullmatch(r'  "[^"]+" -> "[^"]+" \[label="\d+"\];', line)
    ]
    assert len(edge_lines) == graph.number_of_edges()
    assert '  "block3.layer4" -> "block3.layer8" [label="24"];' in edge_lines
    assert '  "block1.input" -> "transition1" [label="24"];' in edge_lines
    assert [line.strip() for line in text.splitlines() if "subgraph" in line] == [
        f"subgraph cluster_block{b} {{" for b in (1, 2, 3)
    ]
    assert 'label="dense block 3: 16 layers, k=24, log";' in text
    assert '"block2.layer3" [label="block2.layer3\\ndense_layer\\n84 -> 12 ch, 16x16"' in text
    assert '"transition1" [label="transition1\\ntransition\\n120 -> 60 ch, 32x32 -> 16x16"' in text


@pytest.mark.parametrize("suffix", [".svg", ".png"])
def test_graph_figure_small_spec(suffix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"graph{suffix}"
    assert main(["graph", str(SMALL), "-o", str(out)]) == 0
    data = out.read_bytes()
    if suffix == ".png":
        from PIL import Image

        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(out) as image:
            assert image.width > 1000 and image.height > 600
    else:
        root = ET.fromstring(data)
        assert root.tag.endswith("svg")
        # text is drawn as paths; matplotlib keeps each string in a comment beside it
        assert (
            b"<!-- cifar-mixed: 32 dense layers, 165 connections, 666,118 parameters, 131,074,572 MACs -->"
            in data
        )
        assert b"<!-- block 3: 16 layers, k=24, log -->" in data
        assert data.count(b"<image") == 3  # one connectivity matrix per block
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left behind


def test_graph_svg_of_densenet121_is_byte_for_byte_reproducible(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "a.svg", tmp_path / "b.svg"
    assert main(["graph", str(SPECS / "densenet121.yaml"), "-o", str(first)]) == 0
    assert main(["graph", str(SPECS / "densenet121.yaml"), "-o", str(second)]) == 0
    assert first.read_bytes() == second.read_bytes()
    assert b"<dc:date>" not in first.read_bytes()
    ET.fromstring(first.read_bytes())


def test_connectivity_matrices_follow_the_rule() -> None:
    from densegraph.viz import connectivity_matrix

    graph = build_graph(load_spec(SPECS / "examples" / "densenet121-window4.yaml"))
    matrix = connectivity_matrix(graph, 3)
    assert matrix.shape == (24, 24)
    for target in range(1, 25):
        sources = {int(s) for s in matrix[:, target - 1].nonzero()[0]}
        assert sources == {0, *range(max(1, target - 4), target)}, target
    assert int(matrix.sum()) == graph.graph["blocks"][2]["edges"]
    with pytest.raises(ValueError):
        connectivity_matrix(graph, 5)


def test_graph_unsupported_suffix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "graph.txt"
    assert main(["graph", str(SMALL), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"{out}: error: cannot write a graph as '.txt' (hint: use one of .json, .dot, .svg, .png)"
    assert not out.exists()


def test_graph_output_folder_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "no" / "such" / "folder" / "g.json"
    assert main(["graph", str(SMALL), "-o", str(missing)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "does not exist" in err and "(hint: " in err

    import densegraph._io as io

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(io.tempfile, "mkstemp", refuse)
    assert main(["graph", str(SMALL), "-o", str(tmp_path / "g.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{tmp_path / 'g.json'}: error: cannot write in the folder")
    assert "Permission denied" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to read-only folders"
)
def test_graph_read_only_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert main(["graph", str(SMALL), "-o", str(folder / "g.json")]) == 2
        assert "cannot write in the folder" in capsys.readouterr().err
    finally:
        folder.chmod(0o700)


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import densegraph.viz as viz

    out = tmp_path / "g.json"
    graph = build_graph(load_spec(SMALL))
    viz.write_graph(graph, out)
    before = out.read_bytes()

    def half_written(graph: nx.DiGraph) -> str:
        raise RuntimeError("interrupted while serialising")

    monkeypatch.setattr(viz, "graph_json", half_written)
    with pytest.raises(RuntimeError):
        viz.write_graph(graph, out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.json"]
    monkeypatch.undo()
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(DensegraphError, match="is a folder, not a regular file"):  # never renamed over
        viz.write_graph(graph, tmp_path / "folder.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.json", "g.json"]


# ---------------------------------------------------------------------------------------------------------
# heat-map drawing (the matrices come from `densegraph heatmap`)


def test_normalise_per_target_keeps_gaps_and_scales_columns() -> None:
    import numpy as np

    from densegraph.viz import normalise_per_target

    nan = float("nan")
    matrix = np.array([[2.0, 1.0, 0.0], [nan, 4.0, 0.0], [nan, nan, nan]])
    out = normalise_per_target(matrix)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(matrix))
    np.testing.assert_allclose(out[0], [1.0, 0.25, 0.0])
    np.testing.assert_allclose(out[1, 1:], [1.0, 0.0])
    assert np.nanmax(out) <= 1.0 and np.nanmin(out) >= 0.0


def test_draw_heatmap_writes_reproducible_figures(tmp_path: Path) -> None:
    import numpy as np

    from densegraph.viz import draw_heatmap

    rng = np.random.default_rng(0)
    matrices = []
    for layers in (4, 12):
        matrix = np.abs(rng.normal(size=(layers, layers)))
        matrix[np.tril_indices(layers, -1)] = np.nan  # source s feeds targets s + 1 .. L only
        matrices.append(matrix)
    draw_heatmap(matrices, ["block 1", "block 2"], tmp_path / "a.svg")
    draw_heatmap(matrices, ["block 1", "block 2"], tmp_path / "b.svg")
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()
    draw_heatmap(matrices, ["block 1", "block 2"], tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(DensegraphError, match="cannot write a heat map"):
        draw_heatmap(matrices, ["block 1", "block 2"], tmp_path / "d.gif")
    with pytest.raises(ValueError):
        draw_heatmap(matrices, ["only one title"], tmp_path / "e.png")
