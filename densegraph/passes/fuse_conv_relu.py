"""conv, relu -> conv with a ReLU post-op."""

from __future__ import annotations

from .result import Op, PassResult

__all__ = ["fuse_conv_relu"]


def fuse_conv_relu(ops: list[Op]) -> PassResult:
    """Give each conv followed by a ReLU the ReLU as its post-op."""
    out: list[Op] = []
    count = 0
    for op in ops:
        if op["op"] == "relu" and out and out[-1]["op"] == "conv" and out[-1]["post"] is None:
            out[-1] = {**out[-1], "post": "relu"}
            count += 1
        else:
            out.append(op)
    return PassResult(out, count)
