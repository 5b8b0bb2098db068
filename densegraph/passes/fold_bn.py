"""conv, bn -> conv with the BN's scale in its weight and its shift in its bias."""

from __future__ import annotations

import torch

from .result import Op, PassResult, bn_affine

__all__ = ["fold_bn"]


def fold_bn(ops: list[Op]) -> PassResult:
    """Fold each inference BN into the conv right before it (no post-op): ``w * s``, ``b * s + t``."""
    out: list[Op] = []
    count = 0
    for op in ops:
        if op["op"] == "bn" and out and out[-1]["op"] == "conv" and out[-1]["post"] is None:
            conv = out[-1]
            scale, shift = bn_affine(op)
            bias = conv["bias"] if conv["bias"] is not None else torch.zeros_like(shift)
            out[-1] = {
                **conv,
                "weight": conv["weight"] * scale.view(-1, 1, 1, 1),
                "bias": bias * scale + shift,
            }
            count += 1
        else:
            out.append(op)
    return PassResult(out, count)
