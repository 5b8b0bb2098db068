"""``densegraph summary``: a model's cost, per block and transition, from the connection graph alone."""

from __future__ import annotations

from typing import Any

import networkx as nx

from .cost import totals
from .graph import check_graph

__all__ = ["summary_dict", "summary_rows", "print_summary"]

_BYTES_FP32 = 4


def _group(graph: nx.DiGraph) -> list[dict[str, Any]]:
    """Rows for the stem, each block (its layers summed), each transition and the head, in order."""
    rows: list[dict[str, Any]] = []
    by_block: dict[int, dict[str, Any]] = {}
    blocks = {b["index"]: b for b in graph.graph["blocks"]}
    for node, data in graph.nodes(data=True):
        kind = data["kind"]
        if kind == "input":
            continue
        if kind in ("block_input", "dense_layer"):
            b = data["block"]
            if b not in by_block:
                info = blocks[b]
                by_block[b] = {
                    "stage": f"denseblock{b}",
                    "kind": "block",
                    "layers": info["layers"],
                    "growth_rate": info["growth_rate"],
                    "connectivity": info["connectivity"] + (f":{info['window']}" if info["window"] else ""),
                    "in_channels": info["in_channels"],
                    "out_channels": info["out_channels"],
                    "size": tuple(data["out_size"]),
                    "edges": info["edges"],
                    "params": 0,
                    "macs": 0,
                    "activations": 0,
                    "concat_elements": 0,
                }
                rows.append(by_block[b])
            row = by_block[b]
        else:
            row = {
                "stage": {"stem": "stem", "head": "head"}.get(kind, node),
                "kind": kind,
                "layers": None,
                "growth_rate": None,
                "connectivity": None,
                "in_channels": data["in_channels"],
                "out_channels": data["out_channels"],
                "size": tuple(data["out_size"]),
                "edges": graph.in_degree(node),
                "params": 0,
                "macs": 0,
                "activations": 0,
                "concat_elements": 0,
            }
            rows.append(row)
        for key in ("params", "macs", "activations", "concat_elements"):
            row[key] += data[key]
    return rows


def summary_rows(graph: nx.DiGraph) -> list[dict[str, Any]]:
    """The per-stage rows of the summary table."""
    return _group(graph)


def summary_dict(graph: nx.DiGraph, *, per_node: bool = False) -> dict[str, Any]:
    """The JSON form of ``densegraph summary``."""
    check_graph(graph)
    total = totals(graph)
    c, h, w = graph.graph["input_shape"]
    out: dict[str, Any] = {
        "name": graph.graph["name"],
        "spec": graph.graph["spec_path"],
        "params": total["params"],
        "macs": total["macs"],
        "flops": 2 * total["macs"],
        "activations": total["activations"],
        "activation_bytes_fp32": total["activations"] * _BYTES_FP32,
        "concat_elements": total["concat_elements"],
        "input_shape": [1, c, h, w],
        "output_shape": [1, *graph.graph["output_shape"]],
        "dense_layers": sum(b["layers"] for b in graph.graph["blocks"]),
        "edges": graph.number_of_edges(),
        "blocks": [
            {
                "layers": b["layers"],
                "growth_rate": b["growth_rate"],
                "bottleneck": b["bottleneck"],
                "connectivity": b["connectivity"],
                "window": b["window"],
                "edges": b["edges"],
                "in_channels": b["in_channels"],
                "out_channels": b["out_channels"],
                "size": b["size"],
            }
            for b in graph.graph["blocks"]
        ],
        "stages": [{**row, "size": list(row["size"])} for row in _group(graph)],
    }
    if per_node:
        out["nodes"] = [
            {
                "id": node,
                "kind": data["kind"],
                "module": data["module"],
                "in_channels": data["in_channels"],
                "out_channels": data["out_channels"],
                "size": list(data["out_size"]),
                "inputs": graph.in_degree(node),
                "params": data["params"],
                "macs": data["macs"],
                "activations": data["activations"],
            }
            for node, data in graph.nodes(data=True)
        ]
    return out


def _human(n: float, unit: str = "") -> str:
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def print_summary(graph: nx.DiGraph, *, per_node: bool = False) -> None:
    """Print the summary as rich tables."""
    from rich.console import Console
    from rich.table import Table

    data = summary_dict(graph, per_node=per_node)
    console = Console()
    if not console.is_terminal:  # pipes and CI logs: do not squeeze the table into 80 columns
        console.width = max(console.width, 150)
    c, h, w = graph.graph["input_shape"]
    table = Table(title=f"{data['name']}  ({data['spec']})  input {c}x{h}x{w}", title_justify="left")
    for col, justify in (
        ("stage", "left"),
        ("layers", "right"),
        ("k", "right"),
        ("connectivity", "left"),
        ("edges", "right"),
        ("channels", "right"),
        ("size", "right"),
        ("params", "right"),
        ("MACs", "right"),
        ("activations", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in data["stages"]:
        table.add_row(
            row["stage"],
            "" if row["layers"] is None else str(row["layers"]),
            "" if row["growth_rate"] is None else str(row["growth_rate"]),
            row["connectivity"] or "",
            str(row["edges"]),
            f"{row['in_channels']}→{row['out_channels']}",
            "x".join(map(str, row["size"])),
            f"{row['params']:,}",
            f"{row['macs']:,}",
            _human(row["activations"] * _BYTES_FP32, "B"),
        )
    table.add_section()
    table.add_row(
        "total",
        str(data["dense_layers"]),
        "",
        "",
        str(data["edges"]),
        f"{c}→{data['output_shape'][1]}",
        "",
        f"{data['params']:,}",
        f"{data['macs']:,}",
        _human(data["activation_bytes_fp32"], "B"),
    )
    console.print(table)
    console.print(
        f"params {data['params']:,} ({_human(data['params'])})   MACs {data['macs']:,} ({_human(data['macs'])}, "
        f"{_human(data['flops'], 'FLOP')})   activations {_human(data['activation_bytes_fp32'], 'B')} fp32 per image   "
        f"concatenation copies {_human(data['concat_elements'] * _BYTES_FP32, 'B')}"
    )
    if per_node:
        nodes = Table(title="nodes", title_justify="left")
        for col in ("id", "kind", "module", "inputs", "channels", "size", "params", "MACs"):
            nodes.add_column(col)
        for n in data["nodes"]:
            nodes.add_row(
                n["id"],
                n["kind"],
                n["module"],
                str(n["inputs"]),
                f"{n['in_channels']}→{n['out_channels']}",
                "x".join(map(str, n["size"])),
                f"{n['params']:,}",
                f"{n['macs']:,}",
            )
        console.print(nodes)
