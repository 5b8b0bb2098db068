"""The execution plan and block-buffer layout that the memory-efficient module and the frozen module share.

The inputs of each concatenation live in one preallocated buffer (:func:`buffer_layout`), each written once at
its channel offset; a consumer reads a channel range of it (a view when its inputs are adjacent, as with dense
connectivity; a gather otherwise). :func:`make_plan` turns a graph into steps over those buffers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import networkx as nx
import torch
from torch import nn

from ..graph import node_inputs
from .fused import (
    BlockStore,
    BufferRead,
    GatherSlots,
)


class ModuleLevel(nn.Module):
    """A named level of the module tree (``features``, ``denseblock1``, ``denselayer1``)."""


def register_module(root: nn.Module, dotted: str, module: nn.Module) -> None:
    *parents, leaf = dotted.split(".")
    parent = root
    for name in parents:
        child = getattr(parent, name, None) if name in parent._modules else None
        if child is None:
            child = ModuleLevel()
            parent.add_module(name, child)
        parent = child
    if leaf in parent._modules:
        raise ValueError(f"two ops share the module name {dotted!r}")
    parent.add_module(leaf, module)


# ---------------------------------------------------------------------------------------------------------
# Execution plan and buffer layout


@dataclass(frozen=True)
class BufferGroup:
    """One preallocated buffer: ``channels`` of ``size`` (H, W) in all, written by ``slots`` producers."""

    channels: int
    slots: int
    size: tuple[int, int]


def buffer_layout(graph: nx.DiGraph) -> tuple[list[BufferGroup], dict[str, tuple[int, int]]]:
    """Which node outputs share a buffer, and where: ``(groups, {node: (group, channel offset)})``.

    Every concatenation that no larger one already covers gets a buffer laid out as that concatenation (for a
    dense block, the transition's or head's input: the block input and all layers), so the larger consumers
    read it whole and the smaller ones read channel ranges of it.
    """
    concats = sorted((v for v in graph if graph.in_degree(v) > 1), key=graph.in_degree, reverse=True)
    groups: list[BufferGroup] = []
    slots: dict[str, tuple[int, int]] = {}
    for v in concats:
        inputs = node_inputs(graph, v)
        if any(u in slots for u in inputs):
            continue
        for u in inputs:
            slots[u] = (len(groups), graph.edges[u, v]["offset"])
        groups.append(
            BufferGroup(graph.nodes[v]["in_channels"], len(inputs), tuple(graph.nodes[v]["in_size"]))
        )
    return groups, slots


@dataclass(frozen=True)
class Part:
    """Consecutive inputs of a node: one value (``group`` None) or channel ``ranges`` of a buffer group."""

    members: tuple[int, ...]  # value indices of the inputs it covers
    group: int | None = None
    ranges: tuple[tuple[int, int], ...] = ()


@dataclass
class Step:
    """One graph node ready to run: where its inputs come from, the ops to apply, where its output goes."""

    node: str
    out: int  # index of this node's value
    inputs: list[int]  # indices into the value table, in concatenation order
    ops: list[tuple[str, Any]]  # (kind, module or op dict)
    free: list[int]  # values no longer needed after this step
    parts: list[Part]  # the inputs, grouped into buffer ranges where they live in a buffer
    slot: tuple[int, int] | None  # (group, offset) when the output is written into a buffer


def _parts(
    graph: nx.DiGraph, inputs: list[str], index: dict[str, int], slots: dict[str, tuple[int, int]]
) -> list[Part]:
    parts: list[Part] = []
    for u in inputs:
        if u not in slots:
            parts.append(Part((index[u],)))
            continue
        group, offset = slots[u]
        stop = offset + graph.nodes[u]["out_channels"]
        last = parts[-1] if parts else None
        if last is None or last.group != group:
            parts.append(Part((index[u],), group, ((offset, stop),)))
            continue
        ranges = last.ranges
        if ranges[-1][1] == offset:  # adjacent in the buffer: one view covers both
            ranges = ranges[:-1] + ((ranges[-1][0], stop),)
        else:
            ranges = ranges + ((offset, stop),)
        parts[-1] = Part(last.members + (index[u],), group, ranges)
    return parts


def make_plan(
    graph: nx.DiGraph, ops_of: Callable[[str], list[tuple[str, Any]]], slots: dict[str, tuple[int, int]]
) -> list[Step]:
    order = list(graph.nodes)
    index = {node: i for i, node in enumerate(order)}
    last_use: dict[str, int] = {}
    for i, node in enumerate(order):
        for u in node_inputs(graph, node):
            last_use[u] = i
    plan = []
    for i, node in enumerate(order):
        if node == "input":
            continue
        inputs = node_inputs(graph, node)
        free = [index[u] for u in inputs if last_use[u] == i]
        parts = _parts(graph, inputs, index, slots)
        plan.append(Step(node, i, [index[u] for u in inputs], ops_of(node), free, parts, slots.get(node)))
    return plan


@dataclass(frozen=True)
class Stage:
    """Consecutive steps that take one value and leave one value (the buffers they use die inside)."""

    start: int
    stop: int
    entry: int  # the value index the stage reads
    groups: tuple[int, ...]  # the buffer groups it writes


def plan_stages(plan: list[Step]) -> list[Stage]:
    """Cut the plan wherever a single value is live and no buffer is (after a transition, say)."""
    first_write: dict[int, int] = {}
    last_read: dict[int, int] = {}
    for i, step in enumerate(plan):
        if step.slot is not None:
            first_write.setdefault(step.slot[0], i)
        for part in step.parts:
            if part.group is not None:
                last_read[part.group] = i
    stages, start, entry, live = [], 0, 0, {0}
    for i, step in enumerate(plan):
        live.difference_update(step.free)
        if step.slot is None:
            live.add(step.out)
        open_groups = [g for g in first_write if first_write[g] <= i < last_read.get(g, i)]
        if (live == {step.out} and not open_groups) or i == len(plan) - 1:
            groups = tuple(g for g, w in first_write.items() if start <= w <= i)
            stages.append(Stage(start, i + 1, entry, groups))
            start, entry = i + 1, step.out
    return stages


def read_inputs(
    parts: list[Part], stores: list[BlockStore], values: list[Any], *, autograd: bool, writable: bool
) -> torch.Tensor:
    """A node's input concatenation: buffer views where possible (``writable``: never a view)."""
    tensors = []
    for part in parts:
        if part.group is None:
            tensors.append(values[part.members[0]])
            continue
        read = BufferRead(stores[part.group], part.ranges)
        if autograd:  # a copy that hands its gradient back to the producers' tokens
            tensors.append(GatherSlots.apply(read, *(values[j] for j in part.members)))
        else:
            assert read.store.buffer is not None
            view = read.gather(read.store.buffer)
            tensors.append(view.clone() if writable and len(parts) == 1 and len(part.ranges) == 1 else view)
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, 1)


def preactivation_at(ops: list[tuple[str, Any]], i: int) -> int:
    """How many ops from ``ops[i]`` form BN, ReLU, conv (modules) — with a 1x1 conv followed by an unpadded
    avgpool, 4 (they run as BN, ReLU, avgpool, conv: both linear, the conv on a quarter of the pixels); else 0."""
    kinds = [kind for kind, _ in ops[i : i + 4]]
    if kinds[:3] != ["bn", "relu", "conv"]:
        return 0
    bn, conv = ops[i][1], ops[i + 2][1]
    if not (isinstance(bn, nn.BatchNorm2d) and isinstance(conv, nn.Conv2d)):
        return 0
    pool = ops[i + 3][1] if len(kinds) == 4 and kinds[3] == "avgpool" else None
    if conv.groups != 1:
        return 0
    pointwise = conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)
    if pointwise and isinstance(pool, nn.AvgPool2d) and pool.padding == 0 and not pool.ceil_mode:
        return 4
    return 3
