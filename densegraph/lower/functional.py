"""The parameter-free graph ops run as functions (ReLU6, ceil-mode pools, the blur pool's fixed filter), and what
a forward pass returns (the logits, or a features head's dict of named maps). Shared by the plain, memory-efficient
and frozen modules of :mod:`densegraph.lower.torch`."""

from __future__ import annotations

from typing import Any

import networkx as nx
import torch
import torch.nn.functional as F

from ..graph import binomial_filter

__all__ = ["blur_filter", "run_functional", "feature_outputs", "forward_result"]


def blur_filter(channels: int, kernel: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The depthwise weight ``[channels, 1, kernel, kernel]`` of a blur pool (:func:`densegraph.graph.binomial_filter`)."""
    return (
        torch.tensor(binomial_filter(kernel), dtype=torch.float64)
        .to(dtype=dtype, device=device)
        .expand(channels, 1, kernel, kernel)
    )


def run_functional(op: dict[str, Any], x: torch.Tensor, *, training: bool = False) -> torch.Tensor:
    """Run a parameter-free graph op given as its dict (see densegraph.graph's op table)."""
    kind = op["op"]
    if kind == "relu":
        return F.relu(x, inplace=True)
    if kind == "relu6":
        return F.relu6(x, inplace=True)
    if kind == "dropout":
        return F.dropout(x, p=op["p"], training=training)
    if kind == "global_avgpool":
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    if kind == "maxpool":
        return F.max_pool2d(
            x, op["kernel"], op["stride"], op.get("padding", 0), ceil_mode=op.get("ceil_mode", False)
        )
    if kind == "avgpool":
        return F.avg_pool2d(
            x, op["kernel"], op["stride"], op.get("padding", 0), ceil_mode=op.get("ceil_mode", False)
        )
    if kind == "blurpool":
        k = op["kernel"]
        pad = (k - 1) // 2
        channels = op["channels"]  # static, so that an exported graph holds the filter as a constant
        weight = blur_filter(channels, k, dtype=x.dtype, device=x.device).contiguous()
        return F.conv2d(F.pad(x, [pad] * 4, mode="reflect"), weight, stride=op["stride"], groups=channels)
    raise ValueError(f"no functional lowering for op kind {kind!r}")


def feature_outputs(graph: nx.DiGraph) -> list[tuple[str, int]]:
    """A features head's outputs as (name, index of the node's value in execution order); empty for a classifier."""
    index = {node: i for i, node in enumerate(graph.nodes)}
    return [(o["name"], index[o["node"]]) for o in graph.graph.get("outputs") or []]


def forward_result(features: list[tuple[str, int]], values: list[Any], last: Any) -> Any:
    """What a forward pass returns: the logits, or a features head's dict of named maps (as timm's features_only)."""
    if not features:
        return last
    return {name: values[i] for name, i in features}
