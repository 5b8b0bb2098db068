"""Helpers for checking rewrites and measuring them (used by the tests and the benchmarks under ``tools/``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__all__ = ["randomize_batchnorm"]


def randomize_batchnorm(
    module: nn.Module, *, seed: int = 0, scale: tuple[float, float] = (0.5, 1.5)
) -> nn.Module:
    """Give every BatchNorm2d of ``module`` non-trivial statistics and affine parameters, in place.

    A freshly initialised BN (mean 0, variance 1, weight 1, bias 0) is nearly the identity, so folding it
    proves little; drawn from ``seed``: running mean in [-0.5, 0.5], running variance in [0.5, 2], weight in
    ``scale`` (a negative lower end gives some channels a negative scale: the two-sided case of
    BN-ReLU folds), bias in [-0.5, 0.5]. Returns ``module``.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if (
                isinstance(m, torch.nn.BatchNorm2d)
                and m.running_mean is not None
                and m.running_var is not None
            ):
                m.running_mean.uniform_(-0.5, 0.5, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)
                if m.weight is not None and m.bias is not None:
                    m.weight.uniform_(*scale, generator=generator)
                    m.bias.uniform_(-0.5, 0.5, generator=generator)
    return module
