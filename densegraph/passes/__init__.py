"""Rewrites of a connection graph's op lists: one pass per module, each exact, shared by every backend.

A pass takes one node's op list (the graph's op dicts, carrying their tensors: see :func:`frozen_ops`) and
returns a :class:`PassResult` with the new list and how many sites it rewrote; it never modifies its input.
:func:`run_passes` applies a sequence of passes to every node of a graph and says what changed.
:func:`densegraph.lower.torch.freeze` and the ONNX emitter (:mod:`densegraph.export.emit`) both take their
rewrites from here, so each rewrite has one home and one exactness test (``tests/passes/``).

=========================  ==================================================================================
pass                       rewrite (all exact in real arithmetic)
=========================  ==================================================================================
``fold_bn``                conv, bn -> conv with the BN's scale in its weight and its shift in its bias
``fold_preactivation``     bn, relu, [pools], conv (unpadded) or linear -> clamp, [pools], conv or linear
``swap_pool_conv``         conv 1x1, avgpool (unpadded) -> avgpool, conv 1x1 (the conv on 4x fewer pixels)
``fuse_bn_relu``           bn, relu -> affine_relu; a lone bn -> affine
``fuse_conv_relu``         conv, relu -> conv with a ReLU post-op
``bn_to_depthwise``        a bn no conv absorbed -> a depthwise 1x1 conv (int8: BN-ReLU as one uint8 conv;
                           fp16: the scale computed in fp32, not cast from large running variances)
``avgpool_to_depthwise``   an unpadded avgpool -> a depthwise conv of weights 1/(kh*kw) (onnxruntime's int8
                           depthwise conv is fast, its QLinearAveragePool is not)
=========================  ==================================================================================

Op dicts after :func:`frozen_ops` carry float64 tensors: conv/linear ``weight`` and ``bias`` (None when
absent) and ``post`` (None or ``"relu"``); bn ``weight``, ``bias``, ``mean``, ``var``, ``eps``; every op its
``in_channels``. Passes add ``affine`` / ``affine_relu`` (``scale``, ``shift``), ``clamp`` (``low``,
``high``) and convs with ``groups``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .._threads import torch_threads
from .avgpool_to_depthwise import avgpool_to_depthwise
from .bn_to_depthwise import bn_to_depthwise
from .fold_bn import fold_bn
from .fold_preactivation import fold_preactivation
from .fuse_bn_relu import fuse_bn_relu
from .fuse_conv_relu import fuse_conv_relu
from .result import Op, PassResult
from .swap_pool_conv import swap_pool_conv

__all__ = [
    "Op",
    "PassResult",
    "GraphPassResult",
    "PASSES",
    "EXPORT_PASSES",
    "FP16_PASSES",
    "INT8_CPU_PASSES",
    "frozen_ops",
    "run_passes",
    "fold_bn",
    "fold_preactivation",
    "swap_pool_conv",
    "fuse_bn_relu",
    "fuse_conv_relu",
    "bn_to_depthwise",
    "avgpool_to_depthwise",
]

PASSES: dict[str, Callable[[list[Op]], PassResult]] = {
    "fold_bn": fold_bn,
    "fold_preactivation": fold_preactivation,
    "swap_pool_conv": swap_pool_conv,
    "fuse_bn_relu": fuse_bn_relu,
    "fuse_conv_relu": fuse_conv_relu,
    "bn_to_depthwise": bn_to_depthwise,
    "avgpool_to_depthwise": avgpool_to_depthwise,
}
"""Every pass, in the order :func:`run_passes` applies them."""

EXPORT_PASSES = ("fold_bn", "swap_pool_conv")
"""The ONNX model's rewrites: plain operators that every runtime runs (onnxruntime fuses the rest itself)."""
FP16_PASSES = (*EXPORT_PASSES, "bn_to_depthwise")
"""The fp16 model's: no BatchNormalization left to cast (its scale is computed in fp32 first)."""
INT8_CPU_PASSES = (*EXPORT_PASSES, "bn_to_depthwise", "avgpool_to_depthwise")
"""The fp32 model that the ``cpu`` int8 form quantizes: every BN-ReLU and pool an int8 conv."""


@dataclass(frozen=True)
class GraphPassResult:
    """What :func:`run_passes` returns: each node's rewritten ops, and how many sites each pass rewrote."""

    node_ops: dict[str, list[Op]]
    counts: dict[str, int]

    @property
    def applied(self) -> list[str]:
        """The passes that changed something, in order."""
        return [name for name, count in self.counts.items() if count]


@torch_threads(1)
def run_passes(node_ops: Mapping[str, list[Op]], passes: Iterable[str]) -> GraphPassResult:
    """Apply ``passes`` (names from :data:`PASSES`, run in that table's order) to every node's op list."""
    chosen = set(passes)
    unknown = sorted(chosen - set(PASSES))
    if unknown:
        raise ValueError(f"unknown passes {unknown}; known: {', '.join(PASSES)}")
    out = {node: list(ops) for node, ops in node_ops.items()}
    counts: dict[str, int] = {}
    for name, rewrite in PASSES.items():
        if name not in chosen:
            continue
        counts[name] = 0
        for node, ops in out.items():
            result = rewrite(ops)
            out[node] = result.ops
            counts[name] += result.rewrites
    return GraphPassResult(out, counts)


# state_dict suffix -> op key, for the tensors a named op carries
_TENSOR_KEYS = {"weight": "weight", "bias": "bias", "running_mean": "mean", "running_var": "var"}


@torch_threads(1)
def frozen_ops(graph: Any, state_dict: Mapping[str, Any]) -> dict[str, list[Op]]:
    """Each node's ops (dropout left out: identity in inference) with float64 copies of their tensors from
    ``state_dict`` (torchvision's keys: ``features.conv0.weight``, ``…norm1.running_var``) and their
    ``in_channels``; raises ``KeyError`` naming the node and op when a tensor is missing."""
    import torch

    from ..cost import op_output

    def tensor(key: str) -> torch.Tensor:
        return state_dict[key].detach().to(torch.float64, copy=True)

    node_ops: dict[str, list[Op]] = {}
    for node, data in graph.nodes(data=True):
        channels, size = data["in_channels"], tuple(data["in_size"])
        ops: list[Op] = []
        for op in data["ops"]:
            frozen: Op = {**op, "in_channels": op.get("in_channels", channels)}
            channels, size = op_output(op, channels, size)
            if op["op"] == "dropout":
                continue
            name = op.get("name")
            if op["op"] in ("conv", "linear"):
                frozen.update(bias=None, post=None)
            if name:
                found = False
                for suffix, key in _TENSOR_KEYS.items():
                    if f"{name}.{suffix}" in state_dict:
                        frozen[key] = tensor(f"{name}.{suffix}")
                        found = True
                if op["op"] in ("conv", "linear", "bn") and not found:
                    raise KeyError(f"{node}: op {op['op']} {name!r} has no tensors in the state_dict")
            ops.append(frozen)
        node_ops[node] = ops
    return node_ops
