"""An unpadded average pool -> a depthwise conv with weights ``1 / (kh * kw)``."""

from __future__ import annotations

import torch

from .result import Op, PassResult

__all__ = ["avgpool_to_depthwise"]


def avgpool_to_depthwise(ops: list[Op]) -> PassResult:
    """Every average pool without padding or ceil mode as a depthwise conv of the same name (onnxruntime's int8
    depthwise conv is fast, its QLinearAveragePool is not)."""
    out: list[Op] = []
    count = 0
    for op in ops:
        if op["op"] != "avgpool" or op.get("padding", 0) or op.get("ceil_mode", False):
            out.append(op)
            continue
        channels, kernel = op["in_channels"], op["kernel"]
        out.append(
            {
                "op": "conv",
                "name": op["name"],
                "in_channels": channels,
                "out_channels": channels,
                "kernel": kernel,
                "stride": op["stride"],
                "padding": 0,
                "groups": channels,
                "weight": torch.full(
                    (channels, 1, kernel, kernel), 1.0 / (kernel * kernel), dtype=torch.float64
                ),
                "bias": None,
                "post": None,
            }
        )
        count += 1
    return PassResult(out, count)
