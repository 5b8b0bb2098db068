"""Lowering of the connection graph to PyTorch.

:func:`module_from_graph` walks the graph's nodes in order and builds one :class:`GraphModule`: every named
primitive op becomes a submodule at its graph name (``features.denseblock1.denselayer1.norm1``, … — the names of
torchvision's DenseNet, so its state_dicts load with ``strict=True``), and the forward pass concatenates each
node's inputs in edge-position order and runs its ops. Nothing here knows what a DenseNet is: a new connectivity
rule or block option only changes the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import networkx as nx
import torch
import torch.nn.functional as F
from torch import nn

from ..graph import build_graph, check_graph, node_inputs
from ..spec import Spec, load_spec

__all__ = ["GraphModule", "module_from_graph", "to_torch", "init_weights", "graph_of"]


def graph_of(spec_or_graph: Any) -> nx.DiGraph:
    """Accept a connection graph, a :class:`Spec` or a spec path; return a checked graph."""
    if isinstance(spec_or_graph, nx.DiGraph):
        check_graph(spec_or_graph)
        return spec_or_graph
    if isinstance(spec_or_graph, Spec):
        return build_graph(spec_or_graph)
    return build_graph(load_spec(spec_or_graph))


def _module_for(op: dict[str, Any]) -> nn.Module | None:
    kind = op["op"]
    if kind == "conv":
        return nn.Conv2d(
            op["in_channels"],
            op["out_channels"],
            op["kernel"],
            stride=op["stride"],
            padding=op["padding"],
            bias=op["bias"],
        )
    if kind == "bn":
        return nn.BatchNorm2d(op["channels"], eps=op["eps"], momentum=op["momentum"])
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "maxpool":
        return nn.MaxPool2d(op["kernel"], stride=op["stride"], padding=op["padding"])
    if kind == "avgpool":
        return nn.AvgPool2d(op["kernel"], stride=op["stride"], padding=op.get("padding", 0))
    if kind == "linear":
        return nn.Linear(op["in_features"], op["out_features"], bias=op["bias"])
    if kind in ("dropout", "global_avgpool"):
        return None
    raise ValueError(f"no PyTorch lowering for op kind {kind!r}")


# ops that may run without a module of their own (they hold no parameters or state)
_FUNCTIONAL = ("relu", "dropout", "global_avgpool")


class _Container(nn.Module):
    """A named level of the module tree (``features``, ``denseblock1``, ``denselayer1``)."""


def _register(root: nn.Module, dotted: str, module: nn.Module) -> None:
    *parents, leaf = dotted.split(".")
    parent = root
    for name in parents:
        child = getattr(parent, name, None) if name in parent._modules else None
        if child is None:
            child = _Container()
            parent.add_module(name, child)
        parent = child
    if leaf in parent._modules:
        raise ValueError(f"two ops share the module name {dotted!r}")
    parent.add_module(leaf, module)


def _lookup(root: nn.Module, dotted: str) -> nn.Module:
    return root.get_submodule(dotted)


@dataclass
class _Step:
    """One graph node ready to run: where its inputs come from and the ops to apply."""

    node: str
    out: int  # index of this node's value
    inputs: list[int]  # indices into the value table, in concatenation order
    ops: list[tuple[str, Any]]  # (kind, module or op dict)
    free: list[int]  # values no longer needed after this step


class GraphModule(nn.Module):
    """An ``nn.Module`` lowered from a connection graph.

    Attributes: ``graph`` (the connection graph, kept for rewrites such as :func:`freeze` and for the heat map),
    ``input_shape`` (C, H, W) and ``num_classes``.
    """

    def __init__(self, graph: nx.DiGraph) -> None:
        super().__init__()
        check_graph(graph)
        self.graph = graph
        self.input_shape = tuple(graph.graph["input_shape"])
        self.num_classes = int(graph.graph["output_shape"][0])
        for node, data in graph.nodes(data=True):
            for op in data["ops"]:
                if not op.get("name"):
                    if op["op"] not in _FUNCTIONAL:
                        raise ValueError(f"{node}: op {op['op']} has parameters or state but no name")
                    continue
                module = _module_for(op)
                if module is not None:
                    _register(self, op["name"], module)
        self._plan = self._make_plan()

    def _make_plan(self) -> list[_Step]:
        graph = self.graph
        order = list(graph.nodes)
        slot = {node: i for i, node in enumerate(order)}
        last_use: dict[str, int] = {}
        for i, node in enumerate(order):
            for u in node_inputs(graph, node):
                last_use[u] = i
        plan = []
        for i, node in enumerate(order):
            if node == "input":
                continue
            ops: list[tuple[str, Any]] = []
            for op in graph.nodes[node]["ops"]:
                kind = op["op"]
                if kind in ("dropout", "global_avgpool") or not op.get("name"):
                    ops.append((kind, op))
                else:
                    ops.append((kind, _lookup(self, op["name"])))
            free = [slot[u] for u in node_inputs(graph, node) if last_use[u] == i]
            plan.append(_Step(node, i, [slot[u] for u in node_inputs(graph, node)], ops, free))
        return plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: list[torch.Tensor | None] = [None] * self.graph.number_of_nodes()
        values[0] = x
        out = x
        for step in self._plan:
            tensors = [values[i] for i in step.inputs]
            out = tensors[0] if len(tensors) == 1 else torch.cat(tensors, 1)  # type: ignore[arg-type]
            for kind, fn in step.ops:
                if kind == "dropout":
                    out = F.dropout(out, p=fn["p"], training=self.training)
                elif kind == "global_avgpool":
                    out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
                elif kind == "relu" and isinstance(fn, dict):
                    out = F.relu(out, inplace=True)
                else:
                    out = fn(out)
            for i in step.free:
                values[i] = None
            values[step.out] = out
        return out


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


def module_from_graph(graph: nx.DiGraph, *, seed: int | None = None) -> GraphModule:
    """Build the training module of ``graph``, initialized as torchvision does (seeded when ``seed`` is set)."""
    if seed is not None:
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
    try:
        module = GraphModule(graph)
        init_weights(module)
    finally:
        if seed is not None:
            torch.random.set_rng_state(state)
    return module


def to_torch(spec_or_graph: Any, *, memory_efficient: bool = False, seed: int | None = None) -> nn.Module:
    """Lower a spec, spec path or connection graph to an ``nn.Module`` with torchvision's module names."""
    graph = graph_of(spec_or_graph)
    module = module_from_graph(graph, seed=seed)
    if memory_efficient:
        raise NotImplementedError("memory_efficient lowering is not implemented yet")
    return module
