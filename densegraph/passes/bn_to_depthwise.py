"""A BN that no conv absorbed -> a depthwise 1x1 conv (weight ``s``, bias ``t`` of ``x * s + t``)."""

from __future__ import annotations

from .result import Op, PassResult, bn_affine

__all__ = ["bn_to_depthwise"]


def bn_to_depthwise(ops: list[Op]) -> PassResult:
    """Every inference BN as a depthwise 1x1 conv of the same name. Run after ``fold_bn``: the int8 ``cpu``
    form then quantizes BN-ReLU as one uint8 conv (the ReLU its output range), and fp16 gets the scale computed
    in float64 instead of casting running variances that may exceed fp16's range."""
    out: list[Op] = []
    count = 0
    for op in ops:
        if op["op"] != "bn":
            out.append(op)
            continue
        scale, shift = bn_affine(op)
        channels = scale.shape[0]
        out.append(
            {
                "op": "conv",
                "name": op["name"],
                "in_channels": channels,
                "out_channels": channels,
                "kernel": 1,
                "stride": 1,
                "padding": 0,
                "groups": channels,
                "weight": scale.reshape(channels, 1, 1, 1),
                "bias": shift,
                "post": None,
            }
        )
        count += 1
    return PassResult(out, count)
