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
- :func:`freeze`: an inference module made by exact rewrites of each node's op list (BN folded into the conv
  before it, BN-ReLU folded into the conv after it, conv1x1/avgpool swapped, conv+ReLU fused), run on
  channels-last block buffers with oneDNN convolutions on prepacked weights. Its first call on an input shape
  runs op by op and records a :class:`_Program` that later calls with that shape replay (fixed buffers, views
  and packed weights; no re-planning).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import networkx as nx
import torch
import torch.nn.functional as F
from torch import nn

from ..cost import TILE_BYTES
from ..graph import check_graph, graph_of, node_inputs
from ..passes import EXPORT_PASSES, PASSES, frozen_ops, run_passes
from .functional import feature_outputs, forward_result, run_functional
from .fused import (
    BlockStore,
    BufferRead,
    GatherSlots,
    PreActConv,
    StoreSlot,
    bn_momentum,
    conv_pointwise,
    mkldnn_conv_available,
    pack_conv_weight,
)

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
class _Part:
    """Consecutive inputs of a node: one value (``group`` None) or channel ``ranges`` of a buffer group."""

    members: tuple[int, ...]  # value indices of the inputs it covers
    group: int | None = None
    ranges: tuple[tuple[int, int], ...] = ()


@dataclass
class _Step:
    """One graph node ready to run: where its inputs come from, the ops to apply, where its output goes."""

    node: str
    out: int  # index of this node's value
    inputs: list[int]  # indices into the value table, in concatenation order
    ops: list[tuple[str, Any]]  # (kind, module or op dict)
    free: list[int]  # values no longer needed after this step
    parts: list[_Part]  # the inputs, grouped into buffer ranges where they live in a buffer
    slot: tuple[int, int] | None  # (group, offset) when the output is written into a buffer


def _parts(
    graph: nx.DiGraph, inputs: list[str], index: dict[str, int], slots: dict[str, tuple[int, int]]
) -> list[_Part]:
    parts: list[_Part] = []
    for u in inputs:
        if u not in slots:
            parts.append(_Part((index[u],)))
            continue
        group, offset = slots[u]
        stop = offset + graph.nodes[u]["out_channels"]
        last = parts[-1] if parts else None
        if last is None or last.group != group:
            parts.append(_Part((index[u],), group, ((offset, stop),)))
            continue
        ranges = last.ranges
        if ranges[-1][1] == offset:  # adjacent in the buffer: one view covers both
            ranges = ranges[:-1] + ((ranges[-1][0], stop),)
        else:
            ranges = ranges + ((offset, stop),)
        parts[-1] = _Part(last.members + (index[u],), group, ranges)
    return parts


def _make_plan(
    graph: nx.DiGraph, ops_of: Callable[[str], list[tuple[str, Any]]], slots: dict[str, tuple[int, int]]
) -> list[_Step]:
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
        plan.append(_Step(node, i, [index[u] for u in inputs], ops_of(node), free, parts, slots.get(node)))
    return plan


@dataclass(frozen=True)
class _Stage:
    """Consecutive steps that take one value and leave one value (the buffers they use die inside)."""

    start: int
    stop: int
    entry: int  # the value index the stage reads
    groups: tuple[int, ...]  # the buffer groups it writes


def _stages(plan: list[_Step]) -> list[_Stage]:
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
            stages.append(_Stage(start, i + 1, entry, groups))
            start, entry = i + 1, step.out
    return stages


def _read(
    parts: list[_Part], stores: list[BlockStore], values: list[Any], *, autograd: bool, writable: bool
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


def _preactivation_at(ops: list[tuple[str, Any]], i: int) -> int:
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
                    _register(self, op["name"], module)
        self._groups, slots = buffer_layout(graph)
        self._plan = _make_plan(graph, self._ops_of, {})
        self._buffered_plan = _make_plan(graph, self._ops_of, slots)

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
        count = _preactivation_at(ops, i)
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
                if autograd and len(step.parts) == 1 and part.group is not None and _preactivation_at(ops, 0):
                    read = BufferRead(stores[part.group], part.ranges)
                    out, i = self._preactivation(ops, 0, None, read, [values[j] for j in part.members])
                else:
                    writable = bool(ops) and ops[0][0] in ("relu", "relu6")  # the in-place ops
                    out = _read(step.parts, stores, values, autograd=autograd, writable=writable)
                while i < len(ops):
                    if autograd and _preactivation_at(ops, i):
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


# ---------------------------------------------------------------------------------------------------------
# Freezing: exact rewrites of each node's op list (the passes of densegraph.passes, where the frozen op dicts
# and the rewrites are described), then a buffered, channels-last execution.

REWRITES = (
    "fold_bn",
    "fold_preactivation",
    "swap_pool_conv",
    "fuse_bn_relu",
    "fuse_conv_relu",
    "block_buffers",
    "batch_tiling",
    "channels_last",
    "mkldnn",
)
"""Every rewrite :func:`freeze` knows, in the order it applies them; all are on by default."""

EXPORT_REWRITES = EXPORT_PASSES
"""The default rewrites with ``for_export=True``: they leave plain ONNX operators (Conv, BatchNormalization…)."""

_EAGER_ONLY = ("fuse_bn_relu", "fuse_conv_relu", "block_buffers", "batch_tiling", "channels_last", "mkldnn")


_PACKED_SHAPES = 4  # input shapes a frozen conv keeps prepacked weights for
# A stage whose block buffer would exceed this runs in batch tiles, so that the buffer and the per-layer
# temporaries it feeds stay in the last-level cache (see densegraph.cost.TILE_BYTES).
_TILE_BYTES = TILE_BYTES


class _FrozenOp(nn.Module):
    """One frozen op; its tensors are buffers named as in the op (``weight``, ``bias``, ``scale``, …)."""

    _TENSORS = ("weight", "bias", "mean", "var", "scale", "shift", "low", "high")
    # the buffers an op kind has (see forward); declared for type checkers, registered in __init__
    weight: torch.Tensor
    bias: torch.Tensor | None
    mean: torch.Tensor
    var: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor | None

    def __init__(self, op: dict[str, Any], dtype: torch.dtype, *, use_mkldnn: bool) -> None:
        super().__init__()
        self.kind: str = op["op"]
        # the op's attributes without its tensors (the emitter reads them back with the buffers: ops())
        self.attrs = {
            k: v for k, v in op.items() if not isinstance(v, torch.Tensor) and k not in self._TENSORS
        }
        self.stride, self.padding = op.get("stride", 1), op.get("padding", 0)
        self.kernel, self.post, self.eps = op.get("kernel", 1), op.get("post"), op.get("eps", 0.0)
        self.groups, self.ceil_mode = op.get("groups", 1), op.get("ceil_mode", False)
        self.op = {k: v for k, v in op.items() if not isinstance(v, torch.Tensor)}  # for the functional ops
        self.use_mkldnn = use_mkldnn and self.kind == "conv" and self.groups == 1
        self._packed: dict[tuple[Any, ...], torch.Tensor] = {}
        for name in self._TENSORS:
            t = op.get(name)
            if isinstance(t, torch.Tensor):
                if name in ("scale", "shift", "low", "high"):
                    t = t.view(1, -1, 1, 1)
                self.register_buffer(name, t.to(dtype).contiguous())
            elif name in ("weight", "bias") and name in op:
                self.register_buffer(name, None)
        if self.kind == "clamp" and bool(torch.isinf(op["high"]).all()):
            self.high = None  # every channel had a positive scale: a one-sided clamp

    def _apply(self, fn: Any, recurse: bool = True) -> nn.Module:
        self._packed.clear()  # prepacked weights follow the dense ones lazily
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_packed": {}}  # oneDNN tensors neither copy nor pickle

    def _packed_weight(self, shape: torch.Size) -> torch.Tensor:
        """The weight packed by oneDNN for inputs of ``shape`` (it picks the layout for the shape); kept for the
        last few shapes, and packed again when the weight is replaced or changed in place (``_version``)."""
        weight: torch.Tensor = self._buffers["weight"]  # type: ignore[assignment]
        key = (tuple(shape), weight.data_ptr(), 0 if weight.is_inference() else weight._version)
        packed = self._packed.get(key)
        if packed is None:
            if len(self._packed) >= _PACKED_SHAPES:
                self._packed.pop(next(iter(self._packed)))
            packed = self._packed[key] = pack_conv_weight(weight, self.stride, self.padding, list(shape))
        return packed

    def _mkldnn_for(self, x: torch.Tensor | _Seen) -> bool:
        return self.use_mkldnn and x.device.type == "cpu" and x.dtype == torch.float32

    def conv(self, x: torch.Tensor) -> torch.Tensor:
        if self._mkldnn_for(x):
            packed = self._packed_weight(x.shape)
            return conv_pointwise(x, packed, self.bias, self.stride, self.padding, self.post)
        out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)
        return F.relu(out, inplace=True) if self.post == "relu" else out

    def bind(self, x: _Seen, scratch: _Scratch | None) -> Callable[[torch.Tensor], torch.Tensor]:
        """This op as a call for inputs like ``x`` alone (for :class:`_Program`): a convolution with its weight
        packed for that shape; a clamp into ``scratch`` when given (its output dies at the next op)."""
        if self.kind == "conv" and self._mkldnn_for(x):
            packed = self._packed_weight(x.shape)  # the one the recorded run packed
            conv, bias, post = torch.ops.mkldnn._convolution_pointwise.default, self.bias, self.post or "none"
            padding, stride = [self.padding] * 2, [self.stride] * 2
            return lambda x: conv(x, packed, bias, padding, stride, [1, 1], 1, post, [], "")
        if self.kind == "clamp" and scratch is not None:
            low, high, cell = self._buffers["low"], self._buffers.get("high"), scratch.reserve(x)
            return lambda x: torch.clamp(x, low, high, out=cell[0])
        return self.forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = self.kind
        if kind == "conv":
            return self.conv(x)
        if kind == "clamp":
            return torch.clamp(x, self.low, self.high)
        if kind == "affine_relu":
            return torch.addcmul(self.shift, x, self.scale).relu_()
        if kind == "affine":
            return torch.addcmul(self.shift, x, self.scale)
        if kind == "bn":
            return F.batch_norm(x, self.mean, self.var, self.weight, self.bias, False, 0.0, self.eps)
        if kind == "relu":
            return F.relu(x)
        if kind == "relu6":
            return F.relu6(x)
        if kind in ("maxpool", "avgpool", "blurpool"):
            return run_functional(self.op, x)
        if kind == "global_avgpool":
            return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        if kind == "linear":
            return F.linear(x, self.weight, self.bias)
        raise ValueError(f"no frozen lowering for op kind {kind!r}")


class FrozenGraphModule(nn.Module):
    """An inference module made by :func:`freeze`: eval semantics only, tensors as buffers (no parameters).

    Attributes as :class:`GraphModule` (``graph``, ``input_shape``, ``num_classes``) and ``rewrites`` (those
    applied). ``state_dict`` keys are the op names of the graph (a BN folded away leaves none).
    """

    def __init__(
        self,
        graph: nx.DiGraph,
        node_ops: dict[str, list[dict[str, Any]]],
        rewrites: tuple[str, ...],
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.graph = graph
        self.input_shape = tuple(graph.graph["input_shape"])
        shape = graph.graph["output_shape"]
        self.num_classes = int(shape[0]) if shape else 0  # 0: a features head (a backbone), as timm's
        self.rewrites = rewrites
        self.channels_last = "channels_last" in rewrites
        use_mkldnn = "mkldnn" in rewrites and mkldnn_conv_available()
        modules: dict[str, list[_FrozenOp]] = {}
        for node, ops in node_ops.items():
            modules[node] = []
            for op in ops:
                frozen = _FrozenOp(op, dtype, use_mkldnn=use_mkldnn)
                if op.get("name"):
                    _register(self, op["name"], frozen)
                modules[node].append(frozen)
        self._op_list = [op for ops in modules.values() for op in ops]  # a plain list: not submodules twice
        self._node_modules = modules
        self._programs: dict[tuple[Any, ...], _Program] = {}
        self.register_load_state_dict_post_hook(FrozenGraphModule._forget_programs)
        # oneDNN's fused convolutions have no backward, and block buffers are written in place
        self._not_differentiable = tuple(r for r in ("block_buffers", "mkldnn") if r in rewrites)
        if "block_buffers" in rewrites:
            self._groups, slots = buffer_layout(graph)
        else:
            self._groups, slots = [], {}
        self._plan = _make_plan(graph, lambda node: [(m.kind, m) for m in modules[node]], slots)
        self._stages = _stages(self._plan)
        self._features = feature_outputs(graph)
        # batch tiles carry one value from stage to stage; a features head's outputs live across stages
        self.batch_tiling = "batch_tiling" in rewrites and not self._features

    def node_ops(self) -> dict[str, list[dict[str, Any]]]:
        """Each node's rewritten ops as op dicts carrying this module's tensors (what the ONNX emitter takes:
        :func:`densegraph.export.emit.onnx_from_ops`)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for node, ops in self._node_modules.items():
            out[node] = []
            for op in ops:
                tensors = {
                    k: v.view(-1) if v is not None and k in ("scale", "shift", "low", "high") else v
                    for k, v in op._buffers.items()
                }
                out[node].append({**op.attrs, "op": op.kind, **tensors})
        return out

    def op_kinds(self, node: str) -> list[str]:
        """The ops ``node`` runs after the rewrites, e.g. ``['clamp', 'conv+relu', 'conv']``."""
        step = next((step for step in self._plan if step.node == node), None)
        if step is None:
            raise KeyError(f"{node!r} runs no ops")
        return [kind + (f"+{op.post}" if op.post else "") for kind, op in step.ops]

    def _tiles(self, stage: _Stage, x: torch.Tensor) -> int:
        """How many batch tiles to run ``stage`` in for the input ``x``: enough that its largest buffer fits
        ``_TILE_BYTES``."""
        if not self.batch_tiling or not stage.groups:
            return 1
        scale = (
            x.shape[2] * x.shape[3] / (self.input_shape[1] * self.input_shape[2])
        )  # input size vs the spec's
        per_sample = max(
            self._groups[g].channels * self._groups[g].size[0] * self._groups[g].size[1] for g in stage.groups
        )
        per_tile = max(1, int(_TILE_BYTES // (per_sample * scale * x.element_size())))
        return -(-x.shape[0] // per_tile)

    def _run(
        self,
        steps: list[_Step],
        values: list[Any],
        stores: list[BlockStore],
        seen: dict[tuple[int, int], _Seen] | None = None,
    ) -> None:
        """Run ``steps`` op by op, writing block outputs into ``stores`` (``seen``: filled with what each op's
        input looked like, keyed by (step index in ``steps``, op index))."""
        for i, step in enumerate(steps):
            out = _read(step.parts, stores, values, autograd=False, writable=False)
            if not step.ops and step.slot is None:  # an output: never a view of a buffer that is reused
                out = out.clone() if len(step.parts) == 1 and len(step.parts[0].ranges) <= 1 else out
            for j, (_, op) in enumerate(step.ops):
                if seen is not None:
                    seen[i, j] = _Seen.of(out)
                out = op(out)
            for k in step.free:
                values[k] = None
            if step.slot is None:
                values[step.out] = out
            else:
                stores[step.slot[0]].write(step.slot[1], out)

    def _interpret(self, x: torch.Tensor, recording: _Program | None = None) -> torch.Tensor:
        """The forward pass op by op, each stage on fresh block buffers (or, when ``recording``, on buffers the
        program keeps, one set per tile size, noting what it needs to replay the run)."""
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.channels_last:
            x = x.contiguous(memory_format=memory_format)
        values: list[Any] = [None] * self.graph.number_of_nodes()
        values[0] = x
        for s, stage in enumerate(self._stages):
            steps = self._plan[stage.start : stage.stop]
            source, exit_ = values[stage.entry], steps[-1].out
            bounds = _tile_bounds(source.shape[0], self._tiles(stage, x))
            outputs: list[torch.Tensor] = []
            for start, stop in bounds:
                local: list[Any] = values if len(bounds) == 1 else [None] * len(values)
                local[stage.entry] = source if len(bounds) == 1 else source[start:stop]
                seen = None
                if recording is None:
                    stores = [BlockStore(g.channels, g.slots, memory_format) for g in self._groups]
                else:
                    stores, seen = recording.tile(s, start, stop, memory_format)
                self._run(steps, local, stores, seen)
                out: torch.Tensor = local[exit_]
                if recording is not None and any(_shares_memory(out, store.buffer) for store in stores):
                    out = out.clone()  # the program's buffers are rewritten by the next tile and call
                outputs.append(out)
            values[stage.entry], values[exit_] = None, outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        return forward_result(self._features, values, values[self._plan[-1].out])

    def _hooked(self) -> bool:
        return any(m._forward_hooks or m._forward_pre_hooks for m in self._op_list) or bool(
            nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled() and self._not_differentiable:
            raise RuntimeError(
                f"this frozen module is for inference: rewrites {list(self._not_differentiable)} have no "
                "gradient; differentiate the module it was frozen from, or freeze(module, for_export=True)"
            )
        if (
            x.requires_grad
            or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling()
            or self._hooked()
        ):
            return self._interpret(x)
        # one program per thread and input: a program's buffers are its own, so concurrent calls never share them
        key = (threading.get_ident(), tuple(x.shape), x.dtype, x.device)
        program = self._programs.pop(key, None)
        if program is not None and program.current():
            out = program(x)
        else:
            for stale in list(self._programs)[: max(0, len(self._programs) + 1 - _PACKED_SHAPES)]:
                self._programs.pop(stale, None)  # least recently used; other threads may evict too
            program = _Program(self)
            out = self._interpret(x, program)
            program.compile(self)
        self._programs[key] = program  # most recently used last
        return out

    def _forget_programs(self, *_: Any) -> None:
        """Drop every recorded program and prepacked weight (after new weights are loaded)."""
        self._programs.clear()
        for op in self._op_list:
            op._packed.clear()

    def _apply(self, fn: Any, recurse: bool = True) -> nn.Module:
        self._programs.clear()  # programs hold the old tensors
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_programs": {}}


@dataclass(frozen=True)
class _Seen:
    """What an op's input looked like when a program was recorded."""

    shape: torch.Size
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, t: torch.Tensor) -> _Seen:
        return cls(t.shape, t.stride(), t.dtype, t.device)

    def dense_strides(self) -> tuple[int, ...]:
        """Strides of a dense tensor of this shape with the dimensions laid out in this one's stride order."""
        dims = sorted(range(len(self.shape)), key=lambda d: (self.stride[d], self.shape[d]), reverse=True)
        strides, step = [0] * len(self.shape), 1
        for d in reversed(dims):
            strides[d] = step
            step *= self.shape[d]
        return tuple(strides)


class _Scratch:
    """One allocation that every clamp writes into (a clamp's output is dead once the next op has run)."""

    def __init__(self) -> None:
        self.numel = 0
        self.cells: list[tuple[list[Any], _Seen]] = []

    def reserve(self, like: _Seen) -> list[Any]:
        """A cell that :meth:`allocate` fills with a tensor shaped as ``like``, dense in its dimension order."""
        self.numel = max(self.numel, like.shape.numel())
        cell: list[Any] = [None]
        self.cells.append((cell, like))
        return cell

    def allocate(self) -> None:
        if not self.cells:
            return
        like = self.cells[0][1]
        memory = torch.empty(self.numel, dtype=like.dtype, device=like.device)
        for cell, seen in self.cells:
            cell[0] = memory.as_strided(seen.shape, seen.dense_strides())


class _Program:
    """A frozen module's forward pass for one input, replayed without re-planning: block buffers and the scratch
    a clamp writes into are allocated once and kept, every buffer read and slot write is a fixed view of them,
    and each convolution calls oneDNN with its weight packed for its input shape.

    Made by :meth:`FrozenGraphModule._interpret` recording a run into it (:meth:`tile`), then :meth:`compile`.
    """

    def __init__(self, module: FrozenGraphModule) -> None:
        self.channels_last = module.channels_last
        self.size = module.graph.number_of_nodes()
        self.output = module._plan[-1].out
        self._features = module._features
        # the convolution weights packed into the program: (the op's buffers, the tensor, its version)
        self.weights: list[tuple[dict[str, Any], torch.Tensor, int | None]] = []
        for op in module._op_list:
            if op.kind == "conv":
                weight: torch.Tensor = op._buffers["weight"]  # type: ignore[assignment]
                self.weights.append((op._buffers, weight, None if weight.is_inference() else weight._version))
        # per stage: (entry value, exit value, [(tile start, tile stop, instructions)])
        self.stages: list[tuple[int, int, list[tuple[int, int, list[_Instruction]]]]] = []
        self._groups = module._groups
        self._recorded: dict[tuple[int, int], tuple[list[BlockStore], dict[tuple[int, int], _Seen]]] = {}
        self._tiles: dict[int, list[tuple[int, int]]] = {}

    def tile(
        self, stage: int, start: int, stop: int, memory_format: torch.memory_format
    ) -> tuple[list[BlockStore], dict[tuple[int, int], _Seen] | None]:
        """The buffers a tile of ``stage`` runs on (kept; shared by the tiles of one size), and where to note
        what its ops see (None when a tile of that size was already recorded)."""
        self._tiles.setdefault(stage, []).append((start, stop))
        recorded = self._recorded.get((stage, stop - start))
        if recorded is not None:
            return recorded[0], None
        stores = [BlockStore(g.channels, g.slots, memory_format) for g in self._groups]
        self._recorded[stage, stop - start] = (stores, {})
        return stores, self._recorded[stage, stop - start][1]

    def compile(self, module: FrozenGraphModule) -> None:
        """Turn the recorded run into instructions."""
        scratch = _Scratch()
        instructions: dict[tuple[int, int], list[_Instruction]] = {}
        for (s, size), (stores, seen) in self._recorded.items():
            stage = module._stages[s]
            instructions[s, size] = [
                _Instruction.make(
                    step, i, module.graph.nodes[step.node]["out_channels"], stores, seen, scratch
                )
                for i, step in enumerate(module._plan[stage.start : stage.stop])
            ]
        scratch.allocate()
        for s, stage in enumerate(module._stages):
            tiles = [(a, b, instructions[s, b - a]) for a, b in self._tiles[s]]
            self.stages.append((stage.entry, module._plan[stage.stop - 1].out, tiles))
        self._recorded.clear()

    def current(self) -> bool:
        """Whether the packed weights are still the module's: no tensor replaced or edited in place (inference
        tensors have no version counter; loading a state_dict forgets the programs instead)."""
        return all(
            buffers["weight"] is weight and (version is None or weight._version == version)
            for buffers, weight, version in self.weights
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        values: list[Any] = [None] * self.size
        values[0] = x
        for entry, exit_, tiles in self.stages:
            if len(tiles) == 1:
                _replay(tiles[0][2], values)
                continue
            source, outputs = values[entry], []
            for start, stop, instructions in tiles:
                local: list[Any] = [None] * self.size
                local[entry] = source[start:stop]
                _replay(instructions, local)
                outputs.append(local[exit_])
            values[entry], values[exit_] = None, torch.cat(outputs)
        return forward_result(self._features, values, values[self.output])


def _shares_memory(t: torch.Tensor, buffer: torch.Tensor | None) -> bool:
    return buffer is not None and t.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()


def _tile_bounds(batch: int, tiles: int) -> list[tuple[int, int]]:
    """The (start, stop) rows of ``tiles`` near-equal tiles of a batch (as ``tensor_split``)."""
    if tiles <= 1:
        return [(0, batch)]
    tiles = min(tiles, batch)
    bounds, start = [], 0
    for i in range(tiles):
        stop = start + batch // tiles + (1 if i < batch % tiles else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


@dataclass
class _Instruction:
    """One step of a :class:`_Program`: where its input comes from (a value index, a fixed view of a block
    buffer, or a gather), the op calls, and where the output goes (a value index or a fixed slot view)."""

    source: int | torch.Tensor | Callable[[list[Any]], torch.Tensor]
    ops: list[Callable[[torch.Tensor], torch.Tensor]]
    target: int | torch.Tensor
    free: list[int]

    @classmethod
    def make(
        cls,
        step: _Step,
        i: int,
        width: int,
        stores: list[BlockStore],
        seen: dict[tuple[int, int], _Seen],
        scratch: _Scratch,
    ) -> _Instruction:
        source: int | torch.Tensor | Callable[[list[Any]], torch.Tensor]
        parts = step.parts
        if len(parts) == 1 and parts[0].group is None:
            source = parts[0].members[0]
        elif len(parts) == 1 and len(parts[0].ranges) == 1 and step.ops:
            (start, stop), buffer = parts[0].ranges[0], stores[parts[0].group].buffer  # type: ignore[index]
            assert buffer is not None
            source = buffer[:, start:stop]
        else:  # a gather; or a node without ops, whose value must not alias a buffer the next tile rewrites

            def source(values: list[Any], parts: list[_Part] = parts) -> torch.Tensor:
                out = _read(parts, stores, values, autograd=False, writable=False)
                return out if len(parts) > 1 or len(parts[0].ranges) > 1 else out.clone()

        last = len(step.ops) - 1
        ops = [op.bind(seen[i, j], scratch if j < last else None) for j, (_, op) in enumerate(step.ops)]
        target: int | torch.Tensor = step.out
        if step.slot is not None:
            group, offset = step.slot
            buffer = stores[group].buffer
            assert buffer is not None
            target = buffer[:, offset : offset + width]
        return cls(source, ops, target, list(step.free))


def _replay(instructions: list[_Instruction], values: list[Any]) -> None:
    for ins in instructions:
        source = ins.source
        if isinstance(source, int):
            out = values[source]
        elif isinstance(source, torch.Tensor):
            out = source
        else:
            out = source(values)
        for op in ins.ops:
            out = op(out)
        for k in ins.free:
            values[k] = None
        target = ins.target
        if isinstance(target, int):
            values[target] = out
        else:
            target.copy_(out)


def freeze(
    module: nn.Module, *, for_export: bool = False, rewrites: Iterable[str] | None = None
) -> nn.Module:
    """An inference module equal to ``module`` in eval mode, made by exact rewrites of its graph's op lists.

    ``module`` is a :class:`GraphModule` (plain or memory-efficient) and is not modified. ``for_export=True``
    keeps to what ``torch.onnx.export`` maps to plain ONNX operators: NCHW, ``torch.cat``, BN folded into the
    conv before it, conv1x1/avgpool swapped (:data:`EXPORT_REWRITES`). ``rewrites`` picks a subset of
    :data:`REWRITES` (for ablations and tests); by default all apply.
    """
    graph = getattr(module, "graph", None)
    if not isinstance(graph, nx.DiGraph):
        raise TypeError(f"freeze needs a module lowered from a connection graph, got {type(module).__name__}")
    chosen = tuple(EXPORT_REWRITES if for_export else REWRITES) if rewrites is None else tuple(rewrites)
    unknown = [r for r in chosen if r not in REWRITES]
    if unknown:
        raise ValueError(f"unknown rewrites {unknown}; known: {', '.join(REWRITES)}")
    if for_export and any(r in _EAGER_ONLY for r in chosen):
        raise ValueError(
            f"rewrites {[r for r in chosen if r in _EAGER_ONLY]} do not export; use them with for_export=False"
        )
    chosen = tuple(r for r in REWRITES if r in chosen)
    reference = next(module.parameters())
    node_ops = run_passes(frozen_ops(graph, module.state_dict()), [r for r in chosen if r in PASSES]).node_ops
    return FrozenGraphModule(graph, node_ops, chosen, reference.dtype).to(reference.device).eval()
