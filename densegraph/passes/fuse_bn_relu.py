"""bn, relu -> affine_relu; a lone bn -> affine (its scale and shift computed once)."""

from __future__ import annotations

from .result import Op, PassResult, bn_affine

__all__ = ["fuse_bn_relu"]


def fuse_bn_relu(ops: list[Op]) -> PassResult:
    """Every inference BN as ``x * scale + shift`` (``affine``), with the ReLU after it fused in."""
    out: list[Op] = []
    count = 0
    for op in ops:
        if op["op"] == "relu" and out and out[-1]["op"] == "affine":
            out[-1] = {**out[-1], "op": "affine_relu"}
        elif op["op"] == "bn":
            scale, shift = bn_affine(op)
            out.append(
                {
                    "op": "affine",
                    "name": op["name"],
                    "in_channels": op["in_channels"],
                    "scale": scale,
                    "shift": shift,
                }
            )
            count += 1
        else:
            out.append(op)
    return PassResult(out, count)
