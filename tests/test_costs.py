"""Published parameter and MAC counts through ``densegraph summary --json``, and ``densegraph graph`` outputs."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import networkx as nx
import pytest

from densegraph import build_graph, check_graph, load_spec
from densegraph.cli import main
from densegraph.errors import DensegraphError

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "specs"

# (spec, params, MACs at the spec's input size or None): torchvision's counts for the ImageNet models (MACs at
# 224x224 counting convolutions and the classifier), the paper's Table 2 models on CIFAR-10 (10 classes).
PUBLISHED = [
    ("densenet121.yaml", 7_978_856, 2_834_161_664),
    ("densenet161.yaml", 28_681_000, 7_727_907_072),
    ("densenet169.yaml", 14_149_480, 3_359_843_328),
    ("densenet201.yaml", 20_013_928, 4_291_365_888),
    ("densenet264.yaml", 33_337_704, 5_751_653_376),
    ("cifar/densenet-l40-k12.yaml", 1_019_722, None),
    ("cifar/densenet-l100-k12.yaml", 6_979_642, None),
    ("cifar/densenet-l100-k24.yaml", 27_249_082, None),
    ("cifar/densenet-bc-l100-k12.yaml", 769_162, None),
    ("cifar/densenet-bc-l250-k24.yaml", 15_324_406, None),
    ("cifar/densenet-bc-l190-k40.yaml", 25_624_430, None),
]


# The densely connected family at 224x224 and 1000 classes: timm 1.0.31's parameter counts for its models, and
# for HarDNet those of the authors' hardnet.py (github.com/PingoLH/Pytorch-HarDNet; the paper rounds them to
# 17.6 / 36.7 / 4.2 / 3.5 M). MACs are densegraph's count (convolutions, blur filters and the classifier).
FAMILY = [
    ("densenet264d.yaml", 72_736_216, 13_470_266_880),
    ("densenetblur121d.yaml", 7_998_088, 3_075_608_576),
    ("vovnet/vovnet39a.yaml", 22_600_296, 7_072_227_328),
    ("vovnet/vovnet57a.yaml", 36_640_296, 8_930_144_256),
    ("hardnet/hardnet68.yaml", 17_565_348, 4_246_114_304),
    ("hardnet/hardnet85.yaml", 36_670_212, 9_074_081_584),
    ("hardnet/hardnet68ds.yaml", 4_180_602, 775_281_526),
    ("hardnet/hardnet39ds.yaml", 3_488_228, 429_471_474),
]


@pytest.mark.parametrize(("spec", "params", "macs"), FAMILY, ids=[p[0] for p in FAMILY])
def test_family_published_counts(
    spec: str, params: int, macs: int, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _summary(SPECS / spec, capsys)
    assert data["params"] == params
    assert data["macs"] == macs
    assert data["input_shape"] == [1, 3, 224, 224]
    assert data["output_shape"] == [1, 1000]


def test_densenet121_macs_by_block_hand_checked_cio(capsys: pytest.CaptureFixture[str]) -> None:
    # CIO (HarDNet's memory traffic): every conv reads its input and writes its output. Block 1 of densenet121
    # at 56x56: layer i reads 64 + 32 (i - 1) channels into conv1 (128 out), conv2 reads 128 and writes 32.
    data = _summary(SPECS / "densenet121.yaml", capsys)
    block1 = next(row for row in data["stages"] if row["stage"] == "denseblock1")
    pixels = 56 * 56
    expected = sum((64 + 32 * (i - 1) + 128) * pixels + (128 + 32) * pixels for i in range(1, 7))
    assert block1["cio_bytes"] == 4 * expected
    assert data["cio_bytes"] == 4 * sum(row["cio_bytes"] // 4 for row in data["stages"])


def _summary(spec: str | Path, capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    assert main(["summary", str(spec), "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)


@pytest.mark.parametrize(("spec", "params", "macs"), PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_published_counts(
    spec: str, params: int, macs: int | None, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _summary(SPECS / spec, capsys)
    assert data["params"] == params
    if macs is not None:
        assert data["macs"] == macs
        assert data["input_shape"] == [1, 3, 224, 224]
        assert data["output_shape"] == [1, 1000]
    else:
        assert data["input_shape"] == [1, 3, 32, 32]
        assert data["output_shape"] == [1, 10]
    assert data["flops"] == 2 * data["macs"]


def test_summary_json_keys_and_block_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    data = _summary(SPECS / "densenet121.yaml", capsys)
    for key in ("name", "params", "macs", "input_shape", "output_shape", "blocks"):
        assert key in data, key
    assert data["name"] == "densenet121"
    blocks = [
        (b["layers"], b["growth_rate"], b["edges"], b["in_channels"], b["out_channels"])
        for b in data["blocks"]
    ]
    # in = 64, then half of each block's output; out = in + 32 * layers; edges = L(L+1)/2
    assert blocks == [
        (6, 32, 21, 64, 256),
        (12, 32, 78, 128, 512),
        (24, 32, 300, 256, 1024),
        (16, 32, 136, 512, 1024),
    ]
    assert [b["size"] for b in data["blocks"]] == [[56, 56], [28, 28], [14, 14], [7, 7]]
    assert data["dense_layers"] == 58
    # one stem, four blocks, three transitions, a head; the stage rows add up to the totals
    assert [row["stage"] for row in data["stages"]] == [
        "stem",
        "denseblock1",
        "transition1",
        "denseblock2",
        "transition2",
        "denseblock3",
        "transition3",
        "denseblock4",
        "head",
    ]
    assert sum(row["params"] for row in data["stages"]) == data["params"]
    assert sum(row["macs"] for row in data["stages"]) == data["macs"]


def test_summary_json_per_node(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", str(SPECS / "digits.yaml"), "--json", "--nodes"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["nodes"]) == 1 + 1 + 3 * 5 + 2 + 1  # input, stem, 3 blocks of 1 + 4, 2 transitions, head
    assert sum(node["params"] for node in data["nodes"]) == data["params"]


def test_summary_table_mentions_the_totals(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", str(SPECS / "densenet121.yaml")]) == 0
    out = capsys.readouterr().out
    assert "7,978,856" in out and "2,834,161,664" in out and "denseblock4" in out


# One interpreter runs validate, summary --json and graph .json on densenet264, timing each command in CPU
# seconds (the interpreter's start-up is not ours to measure, and a busy machine would skew wall-clock time)
# and listing every module it imported.
_PROBE = """
import io, json, sys, time, contextlib
from densegraph.cli import main
spec, out = sys.argv[1], sys.argv[2]
times = {}
for name, argv in (("validate", ["validate", "-q", spec]), ("summary", ["summary", spec, "--json"]),
                   ("graph", ["graph", spec, "-o", out])):
    start = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        status = main(argv)
    times[name] = (status, time.process_time() - start)
print(json.dumps({"times": times, "modules": sorted(sys.modules)}))
"""


def test_spec_stages_are_fast_and_import_no_backend(tmp_path: Path) -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(SPECS / "densenet264.yaml"), str(tmp_path / "g.json")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0, result.stderr
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert cpu < 3.0, f"the whole process, imports included, took {cpu:.2f} s of CPU time"
    probe = json.loads(result.stdout)
    for command, (status, seconds) in probe["times"].items():
        assert status == 0, command
        assert seconds < 0.5, f"densegraph {command} densenet264 took {seconds:.2f} s"
    roots = {name.split(".")[0] for name in probe["modules"]}
    assert not roots & {"torch", "onnx", "onnxruntime", "tensorrt", "matplotlib"}, roots & {
        "torch",
        "onnx",
        "onnxruntime",
        "tensorrt",
        "matplotlib",
    }
    assert json.loads((tmp_path / "g.json").read_text())["graph"]["name"] == "densenet264"


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


@pytest.mark.parametrize(
    ("spec", "fp32", "int8"),
    [("densenet121.yaml", 1, 5), ("cifar/densenet-bc-l100-k12.yaml", 4, 18), ("digits.yaml", 227, 910)],
)
def test_batch_tile_fits_the_largest_concatenation_in_the_budget(spec: str, fp32: int, int8: int) -> None:
    from densegraph.cost import TILE_BYTES, batch_tile

    graph = build_graph(load_spec(SPECS / spec))
    largest = max(data["concat_elements"] for _, data in graph.nodes(data=True))
    assert (batch_tile(graph), batch_tile(graph, element_bytes=1)) == (fp32, int8)
    for element_bytes, tile in ((4, fp32), (1, int8)):
        # the most samples whose largest concatenation fits (one at least)
        assert tile == 1 or tile * largest * element_bytes <= TILE_BYTES
        assert (tile + 1) * largest * element_bytes > TILE_BYTES
    assert batch_tile(graph, budget=1) == 1
