"""densegraph summary and the spec-only commands: JSON and tables, fast and free of backends."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from densegraph.cli import main

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "specs"


def _summary(spec: str | Path, capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    assert main(["summary", str(spec), "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)


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


def test_summary_shows_a_backbones_outputs(capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's figures: densenet121 at 224 as a backbone gives block2 [512, 28, 28], block3 [1024, 14, 14],
    block4 [1024, 7, 7], at strides 8, 16, 32 (the JSON and the table)."""
    spec = REPO / "tests" / "data" / "densenet121-features.yaml"
    data = _summary(spec, capsys)
    assert data["outputs"] == [
        {"name": "block2", "channels": 512, "size": [28, 28], "stride": 8},
        {"name": "block3", "channels": 1024, "size": [14, 14], "stride": 16},
        {"name": "block4", "channels": 1024, "size": [7, 7], "stride": 32},
    ]
    assert main(["summary", str(spec)]) == 0
    table = capsys.readouterr().out
    assert "features head: outputs" in table
    rows = [line.split("│")[1:5] for line in table.splitlines() if line.startswith("│ block")]
    assert [[cell.strip() for cell in row] for row in rows][-3:] == [
        ["block2", "512", "28x28", "8"],
        ["block3", "1024", "14x14", "16"],
        ["block4", "1024", "7x7", "32"],
    ]
