"""``check_graph``: the invariants every consumer of a connection graph relies on, as code."""

from __future__ import annotations

from typing import Any

import networkx as nx

from ..cost import op_macs, op_output, op_params, op_traffic
from ..spec import Connectivity
from .connectivity import block_outputs, layer_sources, layer_width
from .ops import node_inputs

__all__ = ["GraphError", "check_graph"]


class GraphError(AssertionError):
    """A violated graph invariant: a bug in whatever produced the graph, not a user mistake."""


def _fail(message: str) -> None:
    raise GraphError(message)


def check_graph(graph: nx.DiGraph) -> None:
    """Assert the invariants every consumer relies on; raises :class:`GraphError` on the first violation.

    Acyclic with nodes in topological order; one ``input`` (the only source) and one ``head`` (the only sink;
    a features head: its ``output`` nodes), every node reachable from the input; edge positions 0..n-1 and
    offsets that add up; each node's ``in_channels`` equal to the sum of its inputs' channels and all inputs of
    one spatial size; the op chain reproduces ``out_channels`` / ``out_size`` / ``params`` / ``macs`` / ``cio``;
    each block's layers take the sources its connectivity rule gives, in order (a dense block of L layers:
    exactly L(L+1)/2 edges), have the widths the rule or the spec gives, and the block exports what the rule
    says, read whole by what follows.
    """
    if not nx.is_directed_acyclic_graph(graph):
        _fail("the graph has a cycle")
    _check_ends(graph)
    index = {node: i for i, node in enumerate(graph.nodes)}
    for node in graph.nodes:
        if node != "input":
            _check_node(graph, node, index)
    for block in graph.graph.get("blocks", []):
        _check_block(graph, block)


def _check_ends(graph: nx.DiGraph) -> None:
    """One source, the input; the sinks: the head, or a features head's outputs; everything reachable."""
    order = list(graph.nodes)
    sources = [n for n in order if graph.in_degree(n) == 0]
    sinks = [n for n in order if graph.out_degree(n) == 0]
    if sources != ["input"] or graph.nodes["input"].get("kind") != "input":
        _fail(f"the graph must have exactly one source, 'input'; found {sources}")
    outputs = graph.graph.get("outputs")
    if outputs is not None:
        if sorted(sinks) != sorted(o["node"] for o in outputs) or any(
            graph.nodes[n].get("kind") != "output" for n in sinks
        ):
            _fail(f"the sinks must be the feature outputs {[o['node'] for o in outputs]}; found {sinks}")
        for o in outputs:
            data = graph.nodes[o["node"]]
            if (o["channels"], list(o["size"])) != (data["out_channels"], list(data["out_size"])):
                _fail(
                    f"{o['node']}: recorded as {o['channels']} x {o['size']}, it gives {data['out_channels']}"
                )
    elif len(sinks) != 1 or graph.nodes[sinks[0]].get("kind") != "head":
        _fail(f"the graph must have exactly one sink, the head; found {sinks}")
    reachable = nx.descendants(graph, "input") | {"input"}
    if len(reachable) != len(order):
        _fail(f"nodes unreachable from the input: {sorted(set(order) - reachable)}")


def _check_node(graph: nx.DiGraph, node: str, index: dict[str, int]) -> None:
    """Edges in order and adding up to ``in_channels``; the ops reproduce the node's shape and cost."""
    data = graph.nodes[node]
    inputs = node_inputs(graph, node)
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
    channels, size, params, macs, cio = data["in_channels"], data["in_size"], 0, 0, 0
    for op in data["ops"]:
        before = channels * size[0] * size[1]
        channels, size = op_output(op, channels, size)
        params += op_params(op)
        macs += op_macs(op, size)
        cio += op_traffic(op, before, channels * size[0] * size[1])
    if (channels, tuple(size), params, macs, cio) != (
        data["out_channels"],
        tuple(data["out_size"]),
        data["params"],
        data["macs"],
        data.get("cio", cio),
    ):
        _fail(
            f"{node}: its ops give {channels} channels {size}, {params} params, {macs} MACs; attributes disagree"
        )
    if data["kind"] == "block_input" and len(inputs) != 1:
        _fail(f"{node}: a block input has exactly one input")


def _check_block(graph: nx.DiGraph, block: dict[str, Any]) -> None:
    """The block's edges, sources and widths follow its rule; it exports what the rule says, read whole."""
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
    if block["connectivity"] == "chain" and edges != L:
        _fail(f"block {block['index']}: {edges} edges feed its {L} chained layers, expected {L}")
    rule = Connectivity(block["connectivity"], block["window"], block.get("multiplier"))
    expected = sum(len(layer_sources(rule, i)) for i in range(1, L + 1))
    if edges != expected:
        _fail(f"block {block['index']}: {edges} edges feed its layers, the {rule.kind} rule gives {expected}")
    maps = block["nodes"]
    for i, n in enumerate(layer_nodes, start=1):
        sources = [maps[j] for j in layer_sources(rule, i)]
        if node_inputs(graph, n) != sources:
            _fail(f"{n}: takes {node_inputs(graph, n)}, the {rule.kind} rule gives {sources}")
        if graph.nodes[n]["out_channels"] != block["widths"][i - 1]:
            _fail(
                f"{n}: produces {graph.nodes[n]['out_channels']} channels, its width is {block['widths'][i - 1]}"
            )
    if not block.get("widths_given") and block["widths"] != [
        layer_width(rule, block["growth_rate"], i) for i in range(1, L + 1)
    ]:
        _fail(
            f"block {block['index']}: widths {block['widths']} do not follow growth rate {block['growth_rate']}"
        )
    outputs = [maps[j] for j in block_outputs(rule, L)]
    if block["outputs"] != outputs:
        _fail(f"block {block['index']}: exports {block['outputs']}, the {rule.kind} rule gives {outputs}")
    if sum(graph.nodes[n]["out_channels"] for n in outputs) != block["out_channels"]:
        _fail(f"block {block['index']}: output channels do not add up")
    consumers = {v for u in outputs for v in graph.successors(u) if v not in maps}
    if not consumers or any(node_inputs(graph, v) != outputs for v in consumers):
        _fail(f"block {block['index']}: its output {outputs} is not read whole ({sorted(consumers)})")
