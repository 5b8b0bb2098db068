"""The paper's training recipe as code: its numbers, the optimizer and schedule they make, and the checks that
refuse a recipe a run cannot train with."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DensegraphError

__all__ = [
    "DEFAULT_EPOCHS",
    "LR_DECAY",
    "Recipe",
    "check_recipe",
    "sgd",
    "lr_schedule",
]

DEFAULT_EPOCHS = 30
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
LR_MILESTONES = (0.5, 0.75)
LR_DECAY = 0.1
SEED_LIMIT = 2**32  # numpy's legacy seeding, which the run also seeds, takes [0, 2**32)


@dataclass(frozen=True)
class Recipe:
    """What a run trains with; a resumed run takes all of it but ``epochs`` from its checkpoint's ``args``."""

    epochs: int
    batch_size: int
    lr: float
    seed: int
    augment: bool
    memory_efficient: bool
    amp: str | None
    channels_last: bool


def check_recipe(*, epochs: Any, batch_size: Any, lr: Any, seed: Any, flag_prefix: str = "--") -> None:
    """Refuse numbers a run cannot train with (each message names its flag)."""

    def whole(value: Any) -> bool:
        return isinstance(value, int | np.integer) and not isinstance(value, bool)

    if not whole(epochs) or epochs < 1:
        raise DensegraphError(f"{flag_prefix}epochs must be a positive integer, got {epochs!r}")
    if not whole(batch_size) or batch_size < 1:
        raise DensegraphError(f"{flag_prefix}batch-size must be a positive integer, got {batch_size!r}")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or not lr > 0:
        raise DensegraphError(
            f"{flag_prefix}lr must be a positive finite number, got {lr!r}",
            hint="the paper's recipe uses 0.1",
        )
    if not whole(seed) or not 0 <= seed < SEED_LIMIT:
        raise DensegraphError(f"{flag_prefix}seed must be an integer in [0, 2**32), got {seed!r}")


def sgd(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum 0.9 and weight decay 1e-4."""
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, nesterov=True
    )


def lr_schedule(optimizer: torch.optim.Optimizer, epochs: int) -> Any:
    """The learning rate divided by 10 at 50% and 75% of ``epochs``."""
    milestones = sorted({max(1, round(f * epochs)) for f in LR_MILESTONES})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=LR_DECAY)
