"""One epoch: the augmentation, precision (autocast, grad scaler, channels_last), the SGD steps, the evaluation
on a split, and the test figure of ``best.pt`` once training ends."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset, ImageFiles, worker_errors
from ..errors import DensegraphError
from ..lower.weights import load_file
from .distributed import Dist, all_sum

__all__ = [
    "AMP_MODES",
    "Precision",
    "check_precision",
    "epoch_generator",
    "train_epoch",
    "evaluate_split",
    "test_figure",
    "NoProgress",
]

AMP_MODES = ("bf16", "fp16")


def shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels in each direction, filling with zeros."""
    b, c, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s))
    dy = torch.randint(0, 2 * s + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * s + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)).to(x.device)
    cols = (dx[:, None] + torch.arange(w)).to(x.device)
    padded = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * s))
    return padded.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def epoch_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """The generator of one rank's augmentation in one epoch: a function of (seed, epoch, rank) only."""
    value = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(value)


@dataclass
class Precision:
    """Autocast dtype (None: fp32), the fp16 grad scaler, and the memory format of inputs."""

    device: torch.device
    amp: str | None = None
    channels_last: bool = False
    scaler: Any = None

    def autocast(self) -> Any:
        if self.amp is None:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def check_precision(amp: str | None, channels_last: bool, device: torch.device) -> Precision:
    """The :class:`Precision` of ``--amp`` and ``--channels-last`` on ``device``, or a user error."""
    if amp is not None and amp not in AMP_MODES:
        raise DensegraphError(f"--amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise DensegraphError(
            "--amp fp16 needs a CUDA GPU (CPU autocast computes in bf16)", hint="use --amp bf16 on CPU"
        )
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    return Precision(device, amp, channels_last, scaler)


def precision_note(amp: str | None, device: torch.device) -> str | None:
    """A line for the log when ``--amp bf16`` on this CPU is emulated rather than computed natively.

    Without AVX512-BF16 or AMX, oneDNN widens bf16 to fp32 around every op: densenet121's training step ran
    10x slower than fp32 on an AVX2 host (tools/bench_train_amp.py, README), for 0.70x the peak memory.
    """
    if amp != "bf16" or device.type != "cpu":
        return None
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    return (
        "note: this CPU has no native bf16 (AVX512-BF16 or AMX): --amp bf16 saves memory but runs "
        "several times slower than fp32 here"
    )


def train_epoch(
    model: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    max_shift: int,
    generator: torch.Generator,
    on_batch: Callable[[float], None],
    precision: Precision | None = None,
) -> tuple[float, float, float]:
    """One pass of SGD over ``loader``: (summed loss, correct, samples) of this process."""
    model.train()
    precision = precision or Precision(device)
    loss_sum = correct = count = 0.0
    for x, y in worker_errors(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if max_shift:
            x = shift(x, max_shift, generator)
        with precision.autocast():
            logits = model(precision.inputs(x))
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if precision.scaler is not None:
            precision.scaler.scale(loss).backward()
            precision.scaler.step(optimizer)
            precision.scaler.update()
        else:
            loss.backward()
            optimizer.step()
        n = y.shape[0]
        loss_value = float(loss.detach())
        loss_sum += loss_value * n
        correct += float((logits.detach().argmax(1) == y).sum())
        count += n
        on_batch(loss_value)
    return loss_sum, correct, count


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    data: Dataset | ImageFiles,
    batch_size: int,
    device: torch.device,
    dist: Dist,
    precision: Precision | None = None,
    workers: int | None = None,
) -> tuple[float, float, float]:
    """(summed loss, correct, samples) of this process's share of ``data`` (every ``world``-th sample)."""
    model.eval()
    precision = precision or Precision(device)
    index = np.arange(dist.rank, len(data), dist.world)
    loss_sum = correct = 0.0
    if isinstance(data, Dataset):
        batches: Any = (
            (torch.from_numpy(data.x[b]), torch.from_numpy(data.y[b]))
            for b in (index[s : s + batch_size] for s in range(0, len(index), batch_size))
        )
    else:
        from torch.utils.data import DataLoader

        from ..data import default_workers

        count = default_workers() if workers is None else workers
        batches = DataLoader(
            cast(Any, data.subset(index)),  # map-style: __len__ and __getitem__
            batch_size=batch_size,
            num_workers=count,
            pin_memory=device.type == "cuda",
            prefetch_factor=2 if count else None,
        )
    for x, y in worker_errors(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with precision.autocast():
            logits = model(precision.inputs(x)).float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += float((logits.argmax(1) == y).sum())
    return loss_sum, correct, float(len(index))


def test_figure(
    model: nn.Module,
    best_path: Path,
    test_set: Dataset | ImageFiles | None,
    batch_size: int,
    device: torch.device,
    dist: Dist,
    precision: Precision,
    workers: int | None,
) -> tuple[float | None, int]:
    """Top-1 of ``best.pt`` (chosen on val) on the test split; ``(None, 0)`` when there is none."""
    if test_set is None:
        return None, 0
    if dist.active:
        torch.distributed.barrier()  # rank 0 has written best.pt before any rank reads it
    if not best_path.is_file():
        return None, 0
    state = load_file(best_path)["state_dict"]
    best = copy.deepcopy(model)  # the trained model stays as it ended (last.pt)
    best.load_state_dict(state)
    sums = evaluate_split(best, test_set, batch_size, device, dist, precision, workers)
    _, correct, count = all_sum(list(sums), dist, device)
    return round(100.0 * correct / count, 4), int(count)


class NoProgress:
    """Stands in for a ``rich.progress.Progress`` when the caller passes none."""

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None

    def remove_task(self, *args: Any) -> None:
        return None
