"""Half-written pairs: ``heatmap -o FIG.png --json`` writes FIG.png and FIG.json together or not at all.

An earlier pair (the user's last good run) must survive any failure byte for byte: bad weights, a document that
cannot be JSON, a JSON write that fails, a rename that fails halfway.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile import REPO, assert_refused, run_cli, snapshot

import densegraph.heatmaps as heatmap
from densegraph.cli import main
from densegraph.lower.torch import to_torch

TINY = str(REPO / "tests" / "data" / "tiny-digits.yaml")


@pytest.fixture
def earlier(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """Good weights, and the pair an earlier run left: FIG.png and FIG.json."""
    weights = tmp_path / "w.pt"
    torch.save(to_torch(TINY, seed=0).state_dict(), weights)
    figure = tmp_path / "fig.png"
    figure.write_bytes(b"\x89PNG earlier figure")
    figure.with_suffix(".json").write_text('{"earlier": true}\n')
    return weights, figure, snapshot(tmp_path)


def _in_process(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_non_finite_weights_leave_the_earlier_pair(tmp_path: Path, earlier: tuple[Path, Path, dict]) -> None:
    weights, figure, before = earlier
    state = torch.load(weights, weights_only=True)
    state["classifier.weight"][0, 0] = float("inf")
    bad = tmp_path / "w.pt"
    torch.save(state, bad)
    before = snapshot(tmp_path)
    result = run_cli("heatmap", TINY, "--weights", bad, "-o", figure, "--json")
    assert_refused(result, names=bad, says="classifier.weight holds non-finite values (1 infinite of")
    assert snapshot(tmp_path) == before


def test_a_document_that_cannot_be_json_writes_neither(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    earlier: tuple[Path, Path, dict],
) -> None:
    weights, figure, before = earlier
    real = heatmap.heatmap_matrices

    def overflowing(graph, state):  # type: ignore[no-untyped-def]
        maps = real(graph, state)
        maps[0].matrix[0, 0] = np.inf  # what float32 weights near the limit would average to
        return maps

    monkeypatch.setattr(heatmap, "heatmap_matrices", overflowing)
    code, err = _in_process(capsys, "heatmap", TINY, "--weights", weights, "-o", figure, "--json")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"{weights}: error: the weights give non-finite averages")
    assert snapshot(tmp_path) == before


def test_a_failed_json_write_leaves_the_earlier_figure(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    earlier: tuple[Path, Path, dict],
) -> None:
    weights, figure, before = earlier

    def disk_full(path, write, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(heatmap, "write_atomic", disk_full)
    code, err = _in_process(capsys, "heatmap", TINY, "--weights", weights, "-o", figure, "--json")
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err
    assert snapshot(tmp_path) == before  # the figure drawn first was never put in place; no staging left


def test_a_rename_failing_halfway_puts_the_first_back(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    earlier: tuple[Path, Path, dict],
) -> None:
    weights, figure, before = earlier
    real = os.replace

    def second_fails(src, dst):  # type: ignore[no-untyped-def]
        if Path(dst) == figure.with_suffix(".json") and ".tmp" in str(src) and "previous-" not in str(src):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        return real(src, dst)

    monkeypatch.setattr(heatmap.os, "replace", second_fails)
    code, err = _in_process(capsys, "heatmap", TINY, "--weights", weights, "-o", figure, "--json")
    assert code == 2 and err.count("\n") == 1 and "Input/output error" in err
    assert snapshot(tmp_path) == before


def test_a_json_target_that_is_a_folder_is_refused_first(
    tmp_path: Path, earlier: tuple[Path, Path, dict]
) -> None:
    weights, figure, _ = earlier
    figure.with_suffix(".json").unlink()
    figure.with_suffix(".json").mkdir()
    before = snapshot(tmp_path)
    result = run_cli("heatmap", TINY, "--weights", weights, "-o", figure, "--json")
    assert_refused(result, names=figure.with_suffix(".json"), says="not a regular file: not replacing it")
    assert snapshot(tmp_path) == before


def test_the_pair_is_replaced_together(tmp_path: Path, earlier: tuple[Path, Path, dict]) -> None:
    weights, figure, before = earlier
    result = run_cli("heatmap", TINY, "--weights", weights, "-o", figure, "--json")
    assert result.returncode == 0, result.stderr
    after = snapshot(tmp_path)
    assert sorted(after) == sorted(before)  # no staging folder or backup left beside them
    assert after[str(figure)] != before[str(figure)] and figure.read_bytes().startswith(b"\x89PNG\r\n")
    assert after[str(figure.with_suffix(".json"))] != before[str(figure.with_suffix(".json"))]
