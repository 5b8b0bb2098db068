"""DistributedDataParallel training under torchrun: two CPU processes (gloo) end with identical weights."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from densegraph.data import load_data
from densegraph.lower.torch import to_torch
from densegraph.training import RANK_DIGEST_ENV, state_dict_sha256

ROOT = Path(__file__).resolve().parents[1]
TINY_SPEC = str(ROOT / "tests" / "data" / "tiny-digits.yaml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 digits as PNG files in class folders: the workers then need no scikit-learn (a slow import)."""
    root = tmp_path_factory.mktemp("digits")
    data = load_data("digits", (1, 8, 8), split="all", max_samples=200)
    for i, (x, y) in enumerate(zip(data.x, data.y, strict=True)):
        (root / str(y)).mkdir(exist_ok=True)
        Image.fromarray((x[0] * 255).round().astype(np.uint8)).save(root / str(y) / f"{i}.png")
    return root


def _torchrun(run: Path, images: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "densegraph",
        "train",
        TINY_SPEC,
        "--data",
        str(images),
        "-o",
        str(run),
        *extra,
    ]
    env = {**os.environ, RANK_DIGEST_ENV: "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _digests(run: Path) -> list[str]:
    return [(run / f"rank{r}.sha256").read_text().strip() for r in (0, 1)]


def test_two_processes_train_and_resume_identically(tmp_path: Path, images: Path) -> None:
    run = tmp_path / "run"
    first = _torchrun(run, images, "--epochs", "1", "--batch-size", "32")
    assert "over 2 processes" in first.stdout
    assert first.stdout.count("epoch   1/1") == 1  # only rank 0 logs
    rank0, rank1 = _digests(run)
    assert rank0 == rank1

    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["args"]["world_size"] == 2
    module = to_torch(TINY_SPEC)
    module.load_state_dict(ckpt["state_dict"])  # no "module." prefix from the DDP wrapper
    assert state_dict_sha256(module) == rank0

    # resume under torchrun, extending the run to 2 epochs
    _torchrun(run, images, "--epochs", "2", "--resume")
    rank0, rank1 = _digests(run)
    assert rank0 == rank1
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and len(ckpt["metrics"]) == 2
    module.load_state_dict(ckpt["state_dict"])
    assert state_dict_sha256(module) == rank0
    assert (run / "metrics.csv").read_text().count("\n") == 3
