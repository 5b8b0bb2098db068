"""Freezing: an inference module made by exact rewrites of each node's op list, and the engine that runs it.

:func:`freeze` runs the passes of :mod:`densegraph.passes` (where the frozen op dicts and the rewrites are
described: BN folded into the conv before it, BN-ReLU folded into the conv after it, conv1x1/avgpool swapped,
conv+ReLU fused) and builds a :class:`FrozenGraphModule`: channels-last block buffers, oneDNN convolutions on
prepacked weights. Its first call on an input shape runs op by op and records a :class:`_Program` that later
calls with that shape replay (fixed buffers, views and packed weights; no re-planning).
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
from ..passes import EXPORT_PASSES, PASSES, frozen_ops, run_passes
from .functional import feature_outputs, forward_result, run_functional
from .fused import (
    BlockStore,
    conv_pointwise,
    mkldnn_conv_available,
    pack_conv_weight,
)
from .plan import Part, Stage, Step, buffer_layout, make_plan, plan_stages, read_inputs, register_module

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
                    register_module(self, op["name"], frozen)
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
        self._plan = make_plan(graph, lambda node: [(m.kind, m) for m in modules[node]], slots)
        self._stages = plan_stages(self._plan)
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

    def _tiles(self, stage: Stage, x: torch.Tensor) -> int:
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
        steps: list[Step],
        values: list[Any],
        stores: list[BlockStore],
        seen: dict[tuple[int, int], _Seen] | None = None,
    ) -> None:
        """Run ``steps`` op by op, writing block outputs into ``stores`` (``seen``: filled with what each op's
        input looked like, keyed by (step index in ``steps``, op index))."""
        for i, step in enumerate(steps):
            out = read_inputs(step.parts, stores, values, autograd=False, writable=False)
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
        step: Step,
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

            def source(values: list[Any], parts: list[Part] = parts) -> torch.Tensor:
                out = read_inputs(parts, stores, values, autograd=False, writable=False)
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
