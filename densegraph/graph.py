"""The connection graph: the intermediate representation every backend consumes.

``build_graph(spec)`` expands a :class:`~densegraph.spec.Spec` into a ``networkx.DiGraph`` whose nodes are the
network's stages and whose edges are its connections. Nodes are inserted in topological (execution) order.

Node kinds (attribute ``kind``)
===============================

================  ==============================================================================================
kind              meaning and inputs
================  ==============================================================================================
``input``         the image batch; no inputs. ``out_channels`` / ``out_size`` are the spec's input.
``stem``          layers before the first block (``ops``: conv, and for ImageNet BN, ReLU, maxpool); one input.
``block_input``   identity: the feature maps a dense block starts from; one input (stem or transition).
``dense_layer``   one layer of a dense block: concatenates its inputs, then runs ``ops``
                  (BN-ReLU-conv1x1-BN-ReLU-conv3x3 with a bottleneck, BN-ReLU-conv3x3 without, then dropout).
``transition``    between blocks: concatenates the block's maps, then BN-ReLU-conv1x1(θ)-avgpool2x2.
``head``          after the last block: concatenates its maps, then BN-ReLU-global avgpool-linear.
================  ==============================================================================================

Node attributes: ``kind``; ``module`` (the PyTorch module path, equal to torchvision's names:
``features.denseblock1.denselayer1``); ``block`` and ``layer`` (1-based, where they apply); ``in_channels``,
``out_channels``; ``in_size``, ``out_size`` (``(height, width)``); ``ops`` (the primitive operations run after the
concatenation, in order — see below); ``params``, ``macs`` (per sample), ``activations`` (elements the ops
produce per sample), ``concat_elements`` (elements a materialised concatenation of the inputs costs, 0 with one
input); ``loc`` (``file:line:col`` of the spec entry the node comes from).

Edge ``u -> v``: ``v``'s input concatenation includes ``u``'s output. Attributes: ``channels`` (of ``u``),
``position`` (0-based index of ``u`` in ``v``'s concatenation) and ``offset`` (first channel of ``u`` in it).

Primitive ops (dicts with key ``op``; ``name`` is the full module path, or ``None`` for a functional op):

- ``conv``: ``in_channels``, ``out_channels``, ``kernel``, ``stride``, ``padding``, ``bias`` (square kernels)
- ``bn``: ``channels``, ``eps``, ``momentum`` (BatchNorm2d)
- ``relu``; ``dropout``: ``p``
- ``maxpool`` / ``avgpool``: ``kernel``, ``stride``, ``padding``
- ``global_avgpool`` (then flatten); ``linear``: ``in_features``, ``out_features``, ``bias``

The graph attributes (``g.graph``) hold ``name``, ``input_shape`` (C, H, W), ``output_shape`` (classes,),
``spec_path``, ``preprocess`` (a plain dict: ``resize`` (shorter side, or ``None`` for a straight resize to
the crop), ``crop`` ``[H, W]``, ``mean``, ``std``, ``channel_order``, ``scale``, ``interpolation`` — see
:class:`~densegraph.spec.Preprocess`) and ``blocks`` (a list of per-block dicts: ``index``, ``layers``, ``growth_rate``, ``bottleneck``,
``connectivity`` and ``window``, ``in_channels``, ``out_channels``, ``size``, ``edges`` — the connections feeding
the block's layers — and ``nodes``, the block input followed by its layers).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any

import networkx as nx

from .cost import op_macs, op_output, op_params
from .errors import Loc, SpecError
from .spec import Block, Connectivity, Spec, default_preprocess, load_spec

__all__ = [
    "build_graph",
    "check_graph",
    "graph_from_spec",
    "graph_of",
    "graph_sha256",
    "layer_sources",
    "node_inputs",
    "GraphError",
]

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


class GraphError(AssertionError):
    """A violated graph invariant: a bug in whatever produced the graph, not a user mistake."""


def layer_sources(connectivity: Connectivity, layer: int) -> list[int]:
    """Indices of the maps that dense layer ``layer`` (1-based) takes; 0 is the block input.

    The result is sorted ascending, which is also the order of the concatenation.
    """
    if connectivity.kind == "dense":
        return list(range(layer))
    if connectivity.kind == "window":
        assert connectivity.size is not None
        recent = range(max(1, layer - connectivity.size), layer)
        return [0, *recent]
    if connectivity.kind == "log":
        sources = set()
        step = 1
        while layer - step >= 0:
            sources.add(layer - step)
            step *= 2
        return sorted(sources)
    raise ValueError(f"unknown connectivity kind {connectivity.kind!r}")


def node_inputs(graph: nx.DiGraph, node: str) -> list[str]:
    """The predecessors of ``node`` in concatenation order."""
    preds = [(data["position"], u) for u, _, data in graph.in_edges(node, data=True)]
    return [u for _, u in sorted(preds)]


def _conv(name: str, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> dict[str, Any]:
    return {
        "op": "conv",
        "name": name,
        "in_channels": cin,
        "out_channels": cout,
        "kernel": kernel,
        "stride": stride,
        "padding": padding,
        "bias": False,
    }


def _bn(name: str, channels: int) -> dict[str, Any]:
    return {"op": "bn", "name": name, "channels": channels, "eps": BN_EPS, "momentum": BN_MOMENTUM}


def _relu(name: str | None) -> dict[str, Any]:
    return {"op": "relu", "name": name}


class _Builder:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.g = nx.DiGraph()

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
        params = macs = activations = 0
        for op in ops:
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
            loc=str(loc) if loc else self.spec.path,
            **extra,
        )
        offset = 0
        for position, u in enumerate(inputs):
            c = g.nodes[u]["out_channels"]
            g.add_edge(u, node, channels=c, position=position, offset=offset)
            offset += c
        return g.nodes[node]

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
            loc=str(spec.loc_of("input")),
        )
        stem = spec.stem
        if stem.kind == "imagenet":
            stem_ops = [
                _conv("features.conv0", c0, stem.channels, 7, 2, 3),
                _bn("features.norm0", stem.channels),
                _relu("features.relu0"),
                {"op": "maxpool", "name": "features.pool0", "kernel": 3, "stride": 2, "padding": 1},
            ]
        else:
            stem_ops = [_conv("features.conv0", c0, stem.channels, 3, 1, 1)]
        self.add("stem", "stem", "features", ["input"], stem_ops, stem.loc or spec.loc_of("stem"))

        previous = "stem"
        for b, block in enumerate(spec.blocks, start=1):
            previous = self._block(b, block, previous)
            if b < len(spec.blocks):
                previous = self._transition(b, block, previous)
        self._head(previous)
        g.graph["output_shape"] = (spec.head.classes,)
        return g

    def _block(self, b: int, block: Block, previous: str) -> str:
        g = self.g
        loc = block.loc
        start = f"block{b}.input"
        self.add(start, "block_input", f"features.denseblock{b}", [previous], [], loc, block=b, layer=0)
        maps = [start]
        k, bw = block.growth_rate, block.bottleneck
        edges = 0
        for i in range(1, block.layers + 1):
            node = f"block{b}.layer{i}"
            module = f"features.denseblock{b}.denselayer{i}"
            inputs = [maps[j] for j in layer_sources(block.connectivity, i)]
            cin = sum(g.nodes[u]["out_channels"] for u in inputs)
            if bw > 0:
                ops = [
                    _bn(f"{module}.norm1", cin),
                    _relu(f"{module}.relu1"),
                    _conv(f"{module}.conv1", cin, bw * k, 1),
                    _bn(f"{module}.norm2", bw * k),
                    _relu(f"{module}.relu2"),
                    _conv(f"{module}.conv2", bw * k, k, 3, 1, 1),
                ]
            else:
                ops = [
                    _bn(f"{module}.norm1", cin),
                    _relu(f"{module}.relu1"),
                    _conv(f"{module}.conv1", cin, k, 3, 1, 1),
                ]
            if block.dropout > 0:
                ops.append({"op": "dropout", "name": None, "p": block.dropout})
            self.add(node, "dense_layer", module, inputs, ops, loc, block=b, layer=i)
            maps.append(node)
            edges += len(inputs)
        self._maps = maps
        out_channels = sum(g.nodes[u]["out_channels"] for u in maps)
        conn = block.connectivity
        g.graph["blocks"].append(
            {
                "index": b,
                "layers": block.layers,
                "growth_rate": k,
                "bottleneck": bw,
                "connectivity": conn.kind,
                "window": conn.size,
                "in_channels": g.nodes[start]["out_channels"],
                "out_channels": out_channels,
                "size": list(g.nodes[start]["out_size"]),
                "edges": edges,
                "nodes": maps,
            }
        )
        return start

    def _transition(self, b: int, block: Block, start: str) -> str:
        cin = sum(self.g.nodes[u]["out_channels"] for u in self._maps)
        cout = math.floor(block.compression * cin + 1e-9)
        loc = block.locs.get("compression") or block.loc
        if cout <= 0:
            raise SpecError(
                f"compression {block.compression:g} leaves 0 channels after block {b} ({cin} channels)",
                loc=block.locs.get("compression") or self.spec.locs.get("compression") or loc,
                hint="raise compression or the growth rate",
            )
        module = f"features.transition{b}"
        ops = [
            _bn(f"{module}.norm", cin),
            _relu(f"{module}.relu"),
            _conv(f"{module}.conv", cin, cout, 1),
            {"op": "avgpool", "name": f"{module}.pool", "kernel": 2, "stride": 2, "padding": 0},
        ]
        node = f"transition{b}"
        self.add(node, "transition", module, list(self._maps), ops, loc, block=b)
        return node

    def _head(self, start: str) -> None:
        cin = sum(self.g.nodes[u]["out_channels"] for u in self._maps)
        spec = self.spec
        ops = [
            _bn("features.norm5", cin),
            _relu(None),
            {"op": "global_avgpool", "name": None},
            {
                "op": "linear",
                "name": "classifier",
                "in_features": cin,
                "out_features": spec.head.classes,
                "bias": True,
            },
        ]
        self.add("head", "head", "", list(self._maps), ops, spec.head.loc or spec.loc_of("head"))


def build_graph(spec: Spec) -> nx.DiGraph:
    """Expand ``spec`` into its connection graph (see the module docstring for the node and edge table)."""
    graph = _Builder(spec).build()
    check_graph(graph)
    return graph


graph_from_spec = build_graph


def _fail(message: str) -> None:
    raise GraphError(message)


def check_graph(graph: nx.DiGraph) -> None:
    """Assert the invariants every consumer relies on; raises :class:`GraphError` on the first violation.

    Acyclic with nodes in topological order; one ``input`` (the only source) and one ``head`` (the only sink),
    every node reachable from the input; edge positions 0..n-1 and offsets that add up; each node's
    ``in_channels`` equal to the sum of its inputs' channels and all inputs of one spatial size; the op chain
    reproduces ``out_channels`` / ``out_size`` / ``params`` / ``macs``; a dense block of L layers with dense
    connectivity has exactly L(L+1)/2 edges feeding its layers (for other rules, the count the rule gives).
    """
    if not nx.is_directed_acyclic_graph(graph):
        _fail("the graph has a cycle")
    order = list(graph.nodes)
    index = {node: i for i, node in enumerate(order)}
    sources = [n for n in order if graph.in_degree(n) == 0]
    sinks = [n for n in order if graph.out_degree(n) == 0]
    if sources != ["input"] or graph.nodes["input"].get("kind") != "input":
        _fail(f"the graph must have exactly one source, 'input'; found {sources}")
    if len(sinks) != 1 or graph.nodes[sinks[0]].get("kind") != "head":
        _fail(f"the graph must have exactly one sink, the head; found {sinks}")
    reachable = nx.descendants(graph, "input") | {"input"}
    if len(reachable) != len(order):
        _fail(f"nodes unreachable from the input: {sorted(set(order) - reachable)}")
    for node in order:
        data = graph.nodes[node]
        inputs = node_inputs(graph, node)
        if node == "input":
            continue
        positions = sorted(d["position"] for _, _, d in graph.in_edges(node, data=True))
        if positions != list(range(len(inputs))):
            _fail(f"{node}: concatenation positions {positions} are not 0..{len(inputs) - 1}")
        offset = 0
        for u in inputs:
            if index[u] >= index[node]:
                _fail(f"{node}: input {u} comes after it in the node order")
            edge = graph.edges[u, node]
            if edge["channels"] != graph.nodes[u]["out_channels"] or edge["offset"] != offset:
                _fail(f"{node}: edge from {u} carries {edge['channels']} channels at offset {edge['offset']}")
            if graph.nodes[u]["out_size"] != data["in_size"]:
                _fail(f"{node}: input {u} is {graph.nodes[u]['out_size']}, expected {data['in_size']}")
            offset += edge["channels"]
        if offset != data["in_channels"]:
            _fail(f"{node}: inputs add up to {offset} channels, in_channels is {data['in_channels']}")
        channels, size, params, macs = data["in_channels"], data["in_size"], 0, 0
        for op in data["ops"]:
            channels, size = op_output(op, channels, size)
            params += op_params(op)
            macs += op_macs(op, size)
        if (channels, tuple(size), params, macs) != (
            data["out_channels"],
            tuple(data["out_size"]),
            data["params"],
            data["macs"],
        ):
            _fail(
                f"{node}: its ops give {channels} channels {size}, {params} params, {macs} MACs; attributes disagree"
            )
        if data["kind"] == "block_input" and len(inputs) != 1:
            _fail(f"{node}: a block input has exactly one input")
    for block in graph.graph.get("blocks", []):
        layer_nodes = block["nodes"][1:]
        if len(layer_nodes) != block["layers"]:
            _fail(f"block {block['index']}: {len(layer_nodes)} layer nodes for {block['layers']} layers")
        edges = sum(graph.in_degree(n) for n in layer_nodes)
        if edges != block["edges"]:
            _fail(f"block {block['index']}: {edges} edges feed its layers, recorded {block['edges']}")
        L = block["layers"]
        if block["connectivity"] == "dense" and edges != L * (L + 1) // 2:
            _fail(
                f"block {block['index']}: {edges} edges feed its {L} layers, expected L(L+1)/2 = {L * (L + 1) // 2}"
            )
        rule = Connectivity(block["connectivity"], block["window"])
        expected = sum(len(layer_sources(rule, i)) for i in range(1, L + 1))
        if edges != expected:
            _fail(
                f"block {block['index']}: {edges} edges feed its layers, the {rule.kind} rule gives {expected}"
            )
        for n in layer_nodes:
            if graph.nodes[n]["out_channels"] != block["growth_rate"]:
                _fail(
                    f"{n}: produces {graph.nodes[n]['out_channels']} channels, growth rate is {block['growth_rate']}"
                )
        if sum(graph.nodes[n]["out_channels"] for n in block["nodes"]) != block["out_channels"]:
            _fail(f"block {block['index']}: output channels do not add up")


def graph_of(spec_or_graph: nx.DiGraph | Spec | str | os.PathLike[str]) -> nx.DiGraph:
    """Accept a connection graph, a :class:`Spec` or a spec path; return a checked graph."""
    if isinstance(spec_or_graph, nx.DiGraph):
        check_graph(spec_or_graph)
        return spec_or_graph
    if isinstance(spec_or_graph, Spec):
        return build_graph(spec_or_graph)
    return build_graph(load_spec(spec_or_graph))


def graph_sha256(graph: nx.DiGraph) -> str:
    """A digest of the graph's structure (nodes, ops, edges, shapes); spec comments and paths do not change it."""
    nodes = [
        {k: data[k] for k in ("kind", "module", "in_channels", "out_channels", "in_size", "out_size", "ops")}
        | {"node": node}
        for node, data in graph.nodes(data=True)
    ]
    edges = sorted((u, v, d["position"], d["offset"], d["channels"]) for u, v, d in graph.edges(data=True))
    doc = {
        "input_shape": list(graph.graph["input_shape"]),
        "output_shape": list(graph.graph["output_shape"]),
        "nodes": nodes,
        "edges": edges,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=list).encode()).hexdigest()
