"""bn, relu, [avgpool | global_avgpool]*, conv (unpadded) or linear -> clamp, [...], conv or linear."""

from __future__ import annotations

import torch

from .result import Op, PassResult, bn_affine

__all__ = ["fold_preactivation"]


def _commutes_with_constants(op: Op) -> bool:
    # linear ops that map a per-channel constant map to the same constant (no zero padding mixed in)
    return op["op"] == "global_avgpool" or (op["op"] == "avgpool" and op.get("padding", 0) == 0)


def fold_preactivation(ops: list[Op]) -> PassResult:
    """Per channel, ``relu(s*x + t) = s * clamp(x) + t`` with ``clamp`` = max(x, -t/s) where s > 0 and
    min(x, -t/s) where s < 0 (a channel with s = 0 is the constant relu(t)). The factor ``s`` moves into the
    weight's input channels and the constant into the bias, leaving one elementwise pass instead of two."""
    out: list[Op] = []
    count = i = 0
    while i < len(ops):
        j = i + 2
        while j < len(ops) and _commutes_with_constants(ops[j]):
            j += 1
        head = ops[i]["op"] == "bn" and i + 1 < len(ops) and ops[i + 1]["op"] == "relu"
        target = ops[j] if head and j < len(ops) else None
        if target is None or not (
            target["op"] == "linear"
            or (
                target["op"] == "conv"
                and target["padding"] == 0
                and target["post"] is None
                and target.get("groups", 1) == 1
            )
        ):
            out.append(ops[i])
            i += 1
            continue
        scale, shift = bn_affine(ops[i])
        edge = -shift / torch.where(scale == 0, torch.ones_like(scale), scale)
        inf = torch.full_like(edge, float("inf"))
        constant = torch.where(scale == 0, shift.clamp_min(0), shift)
        weight = target["weight"]
        dims = (1, -1) + (1,) * (weight.dim() - 2)
        bias = target["bias"] if target["bias"] is not None else weight.new_zeros(weight.shape[0])
        bias = bias + (weight.sum((2, 3)) if weight.dim() > 2 else weight) @ constant
        out.append(
            {
                "op": "clamp",
                "name": ops[i]["name"],
                "in_channels": ops[i]["in_channels"],
                "low": torch.where(scale > 0, edge, -inf),
                "high": torch.where(scale < 0, edge, inf),
            }
        )
        out.extend(ops[i + 2 : j])
        out.append({**target, "weight": weight * scale.view(dims), "bias": bias})
        count += 1
        i = j + 1
    return PassResult(out, count)
