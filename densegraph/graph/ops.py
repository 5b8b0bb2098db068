"""The primitive op dicts of the graph (see the package docstring's op table) and helpers on the IR."""

from __future__ import annotations

import math
from typing import Any

import networkx as nx

__all__ = ["BN_EPS", "BN_MOMENTUM", "node_inputs", "binomial_filter", "conv_op", "bn_op", "act_op"]

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def node_inputs(graph: nx.DiGraph, node: str) -> list[str]:
    """The predecessors of ``node`` in concatenation order."""
    preds = [(data["position"], u) for u, _, data in graph.in_edges(node, data=True)]
    return [u for _, u in sorted(preds)]


def binomial_filter(kernel: int) -> list[list[float]]:
    """The ``kernel`` x ``kernel`` filter of a ``blurpool`` op: the outer product of the binomial coefficients
    C(kernel - 1, i) / 2^(kernel - 1) with themselves (timm's BlurPool2d); every backend lowers this one."""
    row = [math.comb(kernel - 1, i) / 2 ** (kernel - 1) for i in range(kernel)]
    return [[a * b for b in row] for a in row]


def conv_op(
    name: str | None, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1
) -> dict[str, Any]:
    """A ``conv`` op (no bias; ``groups`` written only when not 1)."""
    op = {
        "op": "conv",
        "name": name,
        "in_channels": cin,
        "out_channels": cout,
        "kernel": kernel,
        "stride": stride,
        "padding": padding,
        "bias": False,
    }
    if groups != 1:
        op["groups"] = groups
    return op


def bn_op(name: str | None, channels: int) -> dict[str, Any]:
    """A ``bn`` op (PyTorch's BatchNorm2d defaults)."""
    return {"op": "bn", "name": name, "channels": channels, "eps": BN_EPS, "momentum": BN_MOMENTUM}


def act_op(kind: str, name: str | None) -> dict[str, Any]:
    """An activation op: ``relu`` or ``relu6``."""
    return {"op": kind, "name": name}
