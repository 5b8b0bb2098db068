"""conv 1x1 (stride 1, unpadded), avgpool (unpadded) -> avgpool, conv: both linear, the conv 4x cheaper."""

from __future__ import annotations

from .result import Op, PassResult

__all__ = ["swap_pool_conv"]


def swap_pool_conv(ops: list[Op]) -> PassResult:
    """Run an unpadded average pool before the pointwise conv that precedes it (both are linear and act on
    different axes, so they commute; the conv then sees a quarter of the pixels for a 2x2 pool)."""
    out = list(ops)
    count = 0
    for i in range(len(out) - 1):
        conv, pool = out[i], out[i + 1]
        if (
            conv["op"] == "conv"
            and (conv["kernel"], conv["stride"], conv["padding"]) == (1, 1, 0)
            and conv["post"] is None
            and pool["op"] == "avgpool"
            and pool.get("padding", 0) == 0
            and not pool.get("ceil_mode", False)
        ):
            out[i], out[i + 1] = {**pool, "in_channels": conv["in_channels"]}, conv
            count += 1
    return PassResult(out, count)
