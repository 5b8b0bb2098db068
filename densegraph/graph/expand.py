"""``graph_from_spec``: a :class:`~densegraph.spec.Spec` expanded into its connection graph (the package
docstring describes the nodes, edges and ops it makes)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import networkx as nx

from ..cost import op_macs, op_output, op_params, op_traffic
from ..errors import Loc, SpecError
from ..spec import Block, ConvStage, Pool, Spec, default_preprocess
from .check import check_graph
from .connectivity import block_outputs, layer_sources, layer_width
from .names import ModuleNames
from .ops import act_op, bn_op, conv_op

__all__ = ["build_graph", "graph_from_spec"]


class _Builder:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.g = nx.DiGraph()
        self.name = ModuleNames(spec)
        self.seq = 0  # running index of the top-level units (stem stages, blocks, transitions, head)

    def add(
        self,
        node: str,
        kind: str,
        module: str,
        inputs: list[str],
        ops: list[dict[str, Any]],
        loc: Loc | None,
        **extra: Any,
    ) -> dict[str, Any]:
        g = self.g
        in_channels = sum(g.nodes[u]["out_channels"] for u in inputs)
        in_size = g.nodes[inputs[0]]["out_size"]
        channels, size = in_channels, in_size
        params = macs = activations = cio = 0
        for op in ops:
            before = channels * size[0] * size[1]
            if op["op"] == "blurpool" and min(size) < 2:
                raise SpecError(
                    f"blur pooling in {module or node} needs maps of at least 2x2, got {size[0]}x{size[1]}",
                    loc=loc,
                    hint="use a larger input size or fewer downsampling stages",
                )
            channels, size = op_output(op, channels, size)
            if channels <= 0 or size[0] <= 0 or size[1] <= 0:
                raise SpecError(
                    f"{op['op']} in {module or node} leaves {channels} channels of {size[0]}x{size[1]}: "
                    f"the feature maps collapse (input {in_size[0]}x{in_size[1]})",
                    loc=loc,
                    hint="use a larger input size, fewer blocks, or more channels",
                )
            params += op_params(op)
            macs += op_macs(op, size)
            activations += channels * size[0] * size[1]
            cio += op_traffic(op, before, channels * size[0] * size[1])
        g.add_node(
            node,
            kind=kind,
            module=module,
            in_channels=in_channels,
            out_channels=channels,
            in_size=in_size,
            out_size=size,
            ops=ops,
            params=params,
            macs=macs,
            activations=activations,
            concat_elements=in_channels * in_size[0] * in_size[1] if len(inputs) > 1 else 0,
            cio=cio,
            loc=str(loc) if loc else self.spec.path,
            **extra,
        )
        offset = 0
        for position, u in enumerate(inputs):
            c = g.nodes[u]["out_channels"]
            g.add_edge(u, node, channels=c, position=position, offset=offset)
            offset += c
        return g.nodes[node]

    def pools(
        self, pools: tuple[Pool, ...], channels: int, role: str, **variables: Any
    ) -> list[dict[str, Any]]:
        """The ops of a list of pools on ``channels`` maps (``role``: stem.pool or transition.pool)."""
        ops: list[dict[str, Any]] = []
        for i, pool in enumerate(pools):
            if pool.kind == "dwconv":
                ops.append(
                    conv_op(
                        self.name(f"{role}.conv", i=i, **variables),
                        channels,
                        channels,
                        pool.kernel,
                        pool.stride,
                        pool.padding,
                        groups=channels,
                    )
                )
                ops.append(bn_op(self.name(f"{role}.norm", i=i, **variables), channels))
            elif pool.kind == "blur":
                ops.append(
                    {
                        "op": "blurpool",
                        "name": None,
                        "channels": channels,
                        "kernel": pool.kernel,
                        "stride": pool.stride,
                    }
                )
            else:
                op = {
                    "op": "maxpool" if pool.kind == "max" else "avgpool",
                    "name": self.name(role, i=i, **variables),
                    "kernel": pool.kernel,
                    "stride": pool.stride,
                    "padding": pool.padding,
                }
                if pool.ceil_mode:
                    op["ceil_mode"] = True
                ops.append(op)
        return ops

    def build(self) -> nx.DiGraph:
        spec, g = self.spec, self.g
        c0, (h, w) = spec.input_channels, spec.input_size
        g.graph.update(
            name=spec.name,
            input_shape=(c0, h, w),
            spec_path=spec.path,
            preprocess=(spec.preprocess or default_preprocess(spec.stem.kind, c0, (h, w))).as_dict(),
            blocks=[],
        )
        g.add_node(
            "input",
            kind="input",
            module="",
            in_channels=c0,
            out_channels=c0,
            in_size=(h, w),
            out_size=(h, w),
            ops=[],
            params=0,
            macs=0,
            activations=0,
            concat_elements=0,
            cio=0,
            loc=str(spec.loc_of("input")),
        )
        self._stem()
        wanted = self._feature_blocks()
        output_locs = dict(zip(spec.head.outputs, spec.head.output_locs, strict=False))
        last = max(wanted.values(), default=len(spec.blocks))
        features: list[dict[str, Any]] = []
        tail, stage0, unit0 = ["stem"], 0, 0
        for b, block in enumerate(spec.blocks[:last], start=1):
            tail = self._block(b, block, tail[0], stage0, unit0)
            if block.aggregate is not None:
                tail = [self._aggregate(b, block, tail, stage0, unit0)]
            for name in (n for n, wb in wanted.items() if wb == b):
                features.append(self._output(name, b, tail, output_locs.get(name)))
            unit0 += 1
            if b < last:
                trans = block.transition
                if trans.conv == "pre" or trans.pool:
                    tail = [self._transition(b, block, tail, stage0, unit0)]
                    if trans.pool:
                        stage0, unit0 = stage0 + 1, 0
                elif len(tail) > 1:
                    raise SpecError(
                        f"block {b} ends in {len(tail)} maps and nothing joins them before block {b + 1}",
                        loc=block.locs.get("transition") or block.loc,
                        hint="give the block an 'aggregate' conv, or a transition with a conv or a pool",
                    )
        if spec.head.kind == "features":
            g.graph["outputs"] = features
            g.graph["output_shape"] = ()
        else:
            self._head(tail)
            g.graph["output_shape"] = (spec.head.classes,)
            if spec.head.labels:
                g.graph["labels"] = list(spec.head.labels)
        return g

    def _stem(self) -> None:
        """The stem node: torchvision's ImageNet stem, the CIFAR conv, or the spec's conv stages and pools."""
        spec, c0 = self.spec, self.spec.input_channels
        stem = spec.stem
        stem_loc = stem.loc or spec.loc_of("stem")
        if stem.kind == "cifar":
            stem_ops = [conv_op(self.name("stem.conv", i=0, seq=0), c0, stem.channels, 3, 1, 1)]
            self.seq = 1
        else:
            convs: tuple[ConvStage, ...] = stem.convs
            pools: tuple[Pool, ...] = stem.pool
            if stem.kind == "imagenet":  # torchvision's: conv7x7/2, BN, ReLU, maxpool3x3/2
                convs, pools = (ConvStage(stem.channels, 7, 2),), (Pool("max", 3, 2, 1),)
            stem_ops, cin = [], c0
            for i, stage in enumerate(convs):
                seq = self.seq
                stem_ops += [
                    conv_op(
                        self.name("stem.conv", i=i, seq=seq),
                        cin,
                        stage.channels,
                        stage.kernel,
                        stage.stride,
                        stage.kernel // 2,
                    ),
                    bn_op(self.name("stem.norm", i=i, seq=seq), stage.channels),
                    act_op(spec.activation, self.name("stem.act", i=i, seq=seq)),
                ]
                cin = stage.channels
                self.seq += 1
            if pools:
                stem_ops += self.pools(pools, cin, "stem.pool", seq=self.seq)
                self.seq += 1
        self.add("stem", "stem", "features", ["input"], stem_ops, stem_loc)

    def _feature_blocks(self) -> dict[str, int]:
        """The block (1-based) whose output each requested feature is (``stage<s>``: its stage's last block)."""
        spec = self.spec
        stage_last: dict[int, int] = {}
        stage = 1
        for b, block in enumerate(spec.blocks, start=1):
            stage_last[stage] = b
            if b < len(spec.blocks) and block.transition.pool:
                stage += 1
        locs = spec.head.output_locs or (None,) * len(spec.head.outputs)
        wanted = {}
        for name, loc in zip(spec.head.outputs, locs, strict=True):
            index = int(name.removeprefix("block").removeprefix("stage"))
            if name.startswith("stage"):
                if index not in stage_last:
                    raise SpecError(
                        f"head.outputs names {name}, but the network has {len(stage_last)} stages",
                        loc=loc or spec.loc_of("head"),
                        hint="a new stage starts after each transition that downsamples",
                    )
                index = stage_last[index]
            wanted[name] = index
        return wanted

    def _output(self, name: str, b: int, maps: list[str], loc: Loc | None) -> dict[str, Any]:
        """A features head's output node: the concatenation of ``maps``, block ``b``'s output; ``loc`` its
        entry in ``head.outputs``."""
        node = f"output.{name}"
        loc = loc or self.spec.head.loc or self.spec.loc_of("head")
        data = self.add(node, "output", "", maps, [], loc, block=b)
        h0 = self.spec.input_size[0]
        h, w = data["out_size"]
        return {
            "name": name,
            "node": node,
            "block": b,
            "channels": data["out_channels"],
            "size": [h, w],
            "stride": h0 / h if h0 % h else h0 // h,
        }

    def _layer_ops(self, spec_block: Block, cin: int, width: int, **variables: Any) -> list[dict[str, Any]]:
        spec, layer = self.spec, self.spec.layer
        bw, kernel, act = spec_block.bottleneck, layer.kernel, spec.activation

        def conv(n: int, cin: int, cout: int, kernel: int) -> dict[str, Any]:
            return conv_op(self.name("layer.conv", n=n, **variables), cin, cout, kernel, 1, kernel // 2)

        def norm(n: int, channels: int) -> dict[str, Any]:
            return bn_op(self.name("layer.norm", n=n, **variables), channels)

        def activation(n: int) -> dict[str, Any]:
            return act_op(act, self.name("layer.act", n=n, **variables))

        if layer.separable:
            return [
                conv(1, cin, width, 1),
                norm(1, width),
                activation(1),
                conv_op(
                    self.name("layer.dwconv", n=1, **variables), width, width, kernel, 1, kernel // 2, width
                ),
                bn_op(self.name("layer.dwnorm", n=1, **variables), width),
            ]
        if layer.order == "pre":
            if bw > 0:
                return [
                    norm(1, cin),
                    activation(1),
                    conv(1, cin, bw * width, 1),
                    norm(2, bw * width),
                    activation(2),
                    conv(2, bw * width, width, kernel),
                ]
            return [norm(1, cin), activation(1), conv(1, cin, width, kernel)]
        if bw > 0:
            return [
                conv(1, cin, bw * width, 1),
                norm(1, bw * width),
                activation(1),
                conv(2, bw * width, width, kernel),
                norm(2, width),
                activation(2),
            ]
        return [conv(1, cin, width, kernel), norm(1, width), activation(1)]

    def _block(self, b: int, block: Block, previous: str, stage0: int, unit0: int) -> list[str]:
        g = self.g
        loc = block.loc
        start = f"block{b}.input"
        seq = self.seq
        self.seq += 1
        self.add(start, "block_input", f"features.denseblock{b}", [previous], [], loc, block=b, layer=0)
        maps = [start]
        conn = block.connectivity
        widths = []
        edges = 0
        for i in range(1, block.layers + 1):
            node = f"block{b}.layer{i}"
            module = f"features.denseblock{b}.denselayer{i}"
            inputs = [maps[j] for j in layer_sources(conn, i)]
            cin = sum(g.nodes[u]["out_channels"] for u in inputs)
            width = block.widths[i - 1] if block.widths else layer_width(conn, block.growth_rate, i)
            variables = {
                "block": b,
                "layer": i,
                "layer0": i - 1,
                "stage0": stage0,
                "unit0": unit0,
                "seq": seq,
            }
            ops = self._layer_ops(block, cin, width, **variables)
            if block.dropout > 0:
                ops.append({"op": "dropout", "name": None, "p": block.dropout})
            self.add(node, "dense_layer", module, inputs, ops, loc, block=b, layer=i)
            maps.append(node)
            widths.append(width)
            edges += len(inputs)
        outputs = [maps[j] for j in block_outputs(conn, block.layers)]
        g.graph["blocks"].append(
            {
                "index": b,
                "layers": block.layers,
                "growth_rate": block.growth_rate,
                "bottleneck": block.bottleneck,
                "connectivity": conn.kind,
                "window": conn.size,
                "multiplier": conn.multiplier,
                "widths": widths,
                "widths_given": block.widths is not None,
                "in_channels": g.nodes[start]["out_channels"],
                "out_channels": sum(g.nodes[u]["out_channels"] for u in outputs),
                "size": list(g.nodes[start]["out_size"]),
                "edges": edges,
                "nodes": maps,
                "outputs": outputs,
            }
        )
        return outputs

    def _aggregate(self, b: int, block: Block, maps: list[str], stage0: int, unit0: int) -> str:
        assert block.aggregate is not None
        cin = sum(self.g.nodes[u]["out_channels"] for u in maps)
        cout = block.aggregate.channels
        ops: list[dict[str, Any]] = []
        if block.aggregate.dropout > 0:
            ops.append({"op": "dropout", "name": None, "p": block.aggregate.dropout})
            self.seq += 1
        variables = {"block": b, "stage0": stage0, "unit0": unit0, "seq": self.seq, "i": 0}
        ops += [
            conv_op(self.name("aggregate.conv", **variables), cin, cout, 1),
            bn_op(self.name("aggregate.norm", **variables), cout),
            act_op(self.spec.activation, self.name("aggregate.act", **variables)),
        ]
        self.seq += 1
        node = f"block{b}.aggregate"
        self.add(node, "aggregate", "", maps, ops, block.aggregate.loc or block.loc, block=b)
        return node

    def _transition(self, b: int, block: Block, maps: list[str], stage0: int, unit0: int) -> str:
        cin = sum(self.g.nodes[u]["out_channels"] for u in maps)
        trans = block.transition
        loc = block.locs.get("compression") or block.locs.get("transition") or block.loc
        variables = {"block": b, "stage0": stage0, "unit0": unit0, "seq": self.seq, "i": 0}
        ops: list[dict[str, Any]] = []
        channels = cin
        if trans.conv == "pre":
            channels = math.floor(block.compression * cin + 1e-9)
            if channels <= 0:
                raise SpecError(
                    f"compression {block.compression:g} leaves 0 channels after block {b} ({cin} channels)",
                    loc=block.locs.get("compression") or self.spec.locs.get("compression") or loc,
                    hint="raise compression or the growth rate",
                )
            ops = [
                bn_op(self.name("transition.norm", **variables), cin),
                act_op(self.spec.activation, self.name("transition.act", **variables)),
                conv_op(self.name("transition.conv", **variables), cin, channels, 1),
            ]
        del variables["i"]
        ops += self.pools(trans.pool, channels, "transition.pool", **variables)
        self.seq += 1
        node = f"transition{b}"
        self.add(node, "transition", f"features.transition{b}", maps, ops, loc, block=b)
        return node

    def _head(self, maps: list[str]) -> None:
        cin = sum(self.g.nodes[u]["out_channels"] for u in maps)
        spec = self.spec
        head = spec.head
        ops: list[dict[str, Any]] = []
        if head.norm:
            ops += [
                bn_op(self.name("head.norm", seq=self.seq), cin),
                act_op(spec.activation, self.name("head.act", seq=self.seq)),
            ]
        ops.append({"op": "global_avgpool", "name": None})
        if head.dropout > 0:
            ops.append({"op": "dropout", "name": None, "p": head.dropout})
        ops.append(
            {
                "op": "linear",
                "name": self.name("head.linear", seq=self.seq),
                "in_features": cin,
                "out_features": head.classes,
                "bias": True,
            }
        )
        self.add("head", "head", "", maps, ops, head.loc or spec.loc_of("head"))


def build_graph(spec: Spec) -> nx.DiGraph:
    """Expand ``spec`` into its connection graph (see the module docstring for the node and edge table).

    A dynamic input (``spec.input_range``) is expanded at its ``opt`` size (every shape and cost is that
    size's) and its range is checked to be one the network takes: see :func:`_check_size_range`."""
    graph = _Builder(spec).build()
    if spec.input_range is not None:
        _check_size_range(spec, graph)
        graph.graph["input_range"] = spec.input_range.as_dict()
    check_graph(graph)
    return graph


def _total_stride(graph: nx.DiGraph, node: str) -> int:
    """The product of the strides of every op before ``node`` (its maps are input / that, rounded)."""
    stride = 1
    for u in nx.ancestors(graph, node):
        for op in graph.nodes[u]["ops"]:
            stride *= int(op.get("stride", 1))
    return stride


def _check_size_range(spec: Spec, graph: nx.DiGraph) -> None:
    """Refuse a size range the network cannot take.

    Feature maps shrink monotonically with the input, so the network takes every size of the range when it
    takes ``min`` (no map collapses, a blur pool sees at least 2x2). A features head's maps are consumed by
    stride (an FPN adds an upsampled map to the next one), so its ``min``, ``opt`` and ``max`` must be
    multiples of its deepest output's stride: there every output is exactly input / stride.
    """
    assert spec.input_range is not None
    size_range = spec.input_range
    low = size_range.min
    where = size_range.locs.get("min") or size_range.loc or spec.loc_of("input")
    if low != size_range.opt:
        try:
            _Builder(replace(spec, input_size=low, input_range=None)).build()
        except SpecError as exc:
            raise SpecError(
                f"the network cannot take its smallest input {low[0]}x{low[1]}: {exc.message}",
                loc=where,
                hint="raise input.size's min: the network downsamples it too far",
            ) from None
    outputs = graph.graph.get("outputs") or []
    if not outputs:
        return
    stride = max(_total_stride(graph, o["node"]) for o in outputs)
    for key in ("min", "opt", "max"):
        h, w = getattr(size_range, key)
        if h % stride or w % stride:
            down = ((h // stride) * stride, (w // stride) * stride)
            up = (-(-h // stride) * stride, -(-w // stride) * stride)
            sizes = " or ".join(f"{a}x{b}" for a, b in (down, up) if a and b)
            raise SpecError(
                f"input.size's {key} {h}x{w} is not a multiple of {stride}, the stride of the deepest "
                "features output",
                loc=size_range.locs.get(key) or size_range.loc or spec.loc_of("input"),
                hint=f"use multiples of {stride} (e.g. {sizes}): there every output is exactly input / stride",
            )


graph_from_spec = build_graph
