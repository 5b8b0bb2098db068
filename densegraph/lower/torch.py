"""Lowering of the connection graph to PyTorch: the training module, its memory-efficient form, and freezing.

:func:`module_from_graph` walks the graph's nodes in order and builds one :class:`GraphModule`: every named
primitive op becomes a submodule at its graph name (``features.denseblock1.denselayer1.norm1``, … — the names of
torchvision's DenseNet, so its state_dicts load with ``strict=True``), and the forward pass concatenates each
node's inputs in edge-position order and runs its ops. Nothing here knows what a DenseNet is: a new connectivity
rule or block option only changes the graph.

Two other executions of the same graph share a *buffer layout* (:func:`buffer_layout`): the inputs of each
concatenation live in one preallocated buffer, each written once at its channel offset, and a consumer reads a
channel range of it (a view when its inputs are adjacent, as with dense connectivity; a gather otherwise).

- ``memory_efficient=True``: same modules and parameters; in training, BN-ReLU-conv on a buffer range runs as
  :class:`~densegraph.lower.fused.PreActConv`, which recomputes BN-ReLU in backward instead of storing it.
- :func:`freeze` (:mod:`densegraph.lower.frozen`, re-exported here): an inference module made by exact rewrites
  of each node's op list, run on channels-last block buffers with oneDNN convolutions on prepacked weights.

The buffer layout and execution plan both share live in :mod:`densegraph.lower.plan`.
"""

from __future__ import annotations

from typing import Any

import networkx as nx
import torch
from torch import nn

from ..graph import check_graph, graph_of
from .frozen import EXPORT_REWRITES, REWRITES, FrozenGraphModule, freeze
from .functional import feature_outputs, forward_result, run_functional
from .fused import (
    BlockStore,
    BufferRead,
    PreActConv,
    StoreSlot,
    bn_momentum,
)
from .plan import buffer_layout, make_plan, preactivation_at, read_inputs, register_module

__all__ = [
    "GraphModule",
    "FrozenGraphModule",
    "module_from_graph",
    "to_torch",
    "freeze",
    "init_weights",
    "graph_of",
    "feature_outputs",
    "buffer_layout",
    "REWRITES",
    "EXPORT_REWRITES",
]


def _module_for(op: dict[str, Any]) -> nn.Module | None:
    kind = op["op"]
    if kind == "conv":
        return nn.Conv2d(
            op["in_channels"],
            op["out_channels"],
            op["kernel"],
            stride=op["stride"],
            padding=op["padding"],
            groups=op.get("groups", 1),
            bias=op["bias"],
        )
    if kind == "bn":
        return nn.BatchNorm2d(op["channels"], eps=op["eps"], momentum=op["momentum"])
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "relu6":
        return nn.ReLU6(inplace=True)
    if kind == "maxpool":
        return nn.MaxPool2d(
            op["kernel"], stride=op["stride"], padding=op["padding"], ceil_mode=op.get("ceil_mode", False)
        )
    if kind == "avgpool":
        return nn.AvgPool2d(
            op["kernel"],
            stride=op["stride"],
            padding=op.get("padding", 0),
            ceil_mode=op.get("ceil_mode", False),
        )
    if kind == "linear":
        return nn.Linear(op["in_features"], op["out_features"], bias=op["bias"])
    if kind in ("dropout", "global_avgpool", "blurpool"):
        return None
    raise ValueError(f"no PyTorch lowering for op kind {kind!r}")


# ops that may run without a module of their own (they hold no parameters or state)
_FUNCTIONAL = ("relu", "relu6", "dropout", "global_avgpool", "maxpool", "avgpool", "blurpool")


class GraphModule(nn.Module):
    """An ``nn.Module`` lowered from a connection graph.

    Attributes: ``graph`` (the connection graph, kept for rewrites such as :func:`freeze` and for the heat map),
    ``input_shape`` (C, H, W), ``num_classes`` and ``memory_efficient`` (run on block buffers, recomputing
    BN-ReLU in backward; the modules and state_dict are the same either way, and it may be switched at will).
    """

    def __init__(self, graph: nx.DiGraph, *, memory_efficient: bool = False) -> None:
        super().__init__()
        check_graph(graph)
        self.graph = graph
        self.input_shape = tuple(graph.graph["input_shape"])
        shape = graph.graph["output_shape"]
        self.num_classes = int(shape[0]) if shape else 0  # 0: a features head (a backbone), as timm's
        self.memory_efficient = memory_efficient
        self._features = feature_outputs(graph)
        for node, data in graph.nodes(data=True):
            for op in data["ops"]:
                if not op.get("name"):
                    if op["op"] not in _FUNCTIONAL:
                        raise ValueError(f"{node}: op {op['op']} has parameters or state but no name")
                    continue
                module = _module_for(op)
                if module is not None:
                    register_module(self, op["name"], module)
        self._groups, slots = buffer_layout(graph)
        self._plan = make_plan(graph, self._ops_of, {})
        self._buffered_plan = make_plan(graph, self._ops_of, slots)

    def _ops_of(self, node: str) -> list[tuple[str, Any]]:
        ops: list[tuple[str, Any]] = []
        for op in self.graph.nodes[node]["ops"]:
            if op["op"] in ("dropout", "global_avgpool", "blurpool") or not op.get("name"):
                ops.append((op["op"], op))
            else:
                ops.append((op["op"], self.get_submodule(op["name"])))
        return ops

    def _run_op(self, kind: str, fn: Any, out: torch.Tensor) -> torch.Tensor:
        if isinstance(fn, dict):
            return run_functional(fn, out, training=self.training)
        return fn(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.memory_efficient:
            return self._forward_buffered(x)
        values: list[torch.Tensor | None] = [None] * self.graph.number_of_nodes()
        values[0] = x
        out = x
        for step in self._plan:
            tensors = [values[i] for i in step.inputs]
            out = tensors[0] if len(tensors) == 1 else torch.cat(tensors, 1)  # type: ignore[arg-type, assignment]
            for kind, fn in step.ops:
                out = self._run_op(kind, fn, out)
            for i in step.free:
                values[i] = None
            values[step.out] = out
        return forward_result(self._features, values, out)

    def _preactivation(
        self,
        ops: list[tuple[str, Any]],
        i: int,
        x: torch.Tensor | None,
        read: BufferRead | None,
        tokens: list[Any],
    ) -> tuple[torch.Tensor, int]:
        """Run the pre-activation at ``ops[i]`` as :class:`PreActConv`; returns its output and the next op index."""
        count = preactivation_at(ops, i)
        bn, conv = ops[i][1], ops[i + 2][1]
        pool = ops[i + 3][1] if count == 4 else None
        momentum = bn_momentum(bn)
        use_stats = not bn.training or bn.track_running_stats
        out = PreActConv.apply(
            x,
            read,
            bn.weight,
            bn.bias,
            bn.running_mean if use_stats else None,
            bn.running_var if use_stats else None,
            bn.training or bn.running_mean is None,
            momentum,
            bn.eps,
            conv.weight,
            conv.bias,
            conv.stride[0],
            conv.padding[0],
            (pool.kernel_size, pool.stride) if pool is not None else None,
            *tokens,
        )
        return out, i + count

    def _forward_buffered(self, x: torch.Tensor) -> torch.Tensor:
        autograd = torch.is_grad_enabled()
        stores = [BlockStore(g.channels, g.slots, torch.contiguous_format) for g in self._groups]
        values: list[Any] = [None] * self.graph.number_of_nodes()
        values[0] = x
        out = x
        try:
            for step in self._buffered_plan:
                ops, i = step.ops, 0
                part = step.parts[0]
                if autograd and len(step.parts) == 1 and part.group is not None and preactivation_at(ops, 0):
                    read = BufferRead(stores[part.group], part.ranges)
                    out, i = self._preactivation(ops, 0, None, read, [values[j] for j in part.members])
                else:
                    writable = bool(ops) and ops[0][0] in ("relu", "relu6")  # the in-place ops
                    out = read_inputs(step.parts, stores, values, autograd=autograd, writable=writable)
                while i < len(ops):
                    if autograd and preactivation_at(ops, i):
                        out, i = self._preactivation(ops, i, out, None, [])
                    else:
                        out, i = self._run_op(*ops[i], out), i + 1
                for j in step.free:
                    values[j] = None
                if step.slot is None:
                    values[step.out] = out
                elif autograd:
                    values[step.out] = StoreSlot.apply(out, stores[step.slot[0]], step.slot[1])
                else:
                    stores[step.slot[0]].write(step.slot[1], out)
        finally:
            for store in stores:  # consumers that need a buffer in backward hold it themselves
                store.buffer = None
                store.release_scratch()
        return forward_result(self._features, values, out)


def init_weights(module: nn.Module) -> None:
    """torchvision's DenseNet initialization: Kaiming-normal convs, BN weight 1 / bias 0, zero linear bias."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.constant_(m.bias, 0)


def module_from_graph(
    graph: nx.DiGraph, *, seed: int | None = None, memory_efficient: bool = False
) -> GraphModule:
    """Build the training module of ``graph``, initialized as torchvision does (seeded when ``seed`` is set)."""
    if seed is not None:
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
    try:
        module = GraphModule(graph, memory_efficient=memory_efficient)
        init_weights(module)
    finally:
        if seed is not None:
            torch.random.set_rng_state(state)
    return module


def to_torch(
    spec_or_graph: Any, *, memory_efficient: bool = False, frozen: bool = False, seed: int | None = None
) -> nn.Module:
    """Lower a spec, spec path or connection graph to an ``nn.Module`` with torchvision's module names.

    ``memory_efficient``: train on block buffers, recomputing BN-ReLU in backward (same state_dict).
    ``frozen``: return :func:`freeze` of the freshly initialized module (for benchmarks; freeze trained ones).
    """
    if memory_efficient and frozen:
        raise ValueError("memory_efficient is a training mode and frozen an inference module: choose one")
    graph = graph_of(spec_or_graph)
    module = module_from_graph(graph, seed=seed, memory_efficient=memory_efficient)
    return freeze(module) if frozen else module
