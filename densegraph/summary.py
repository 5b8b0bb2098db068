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
        if kind in ("block_input", "dense_layer", "aggregate"):
            b = data["block"]
            if b not in by_block:
                info = blocks[b]
                by_block[b] = {
                    "stage": f"denseblock{b}",
                    "kind": "block",
                    "layers": info["layers"],
                    "growth_rate": info["growth_rate"],
                    "connectivity": info["connectivity"]
                    + (f":{info['window']}" if info["window"] else "")
                    + (f":{info['multiplier']:g}" if info.get("multiplier") else ""),
                    "in_channels": info["in_channels"],
                    "out_channels": info["out_channels"],
                    "size": tuple(data["out_size"]),
                    "edges": info["edges"],
                    "params": 0,
                    "macs": 0,
                    "activations": 0,
                    "concat_elements": 0,
                    "cio": 0,
                }
                rows.append(by_block[b])
            row = by_block[b]
            if kind == "aggregate":  # the block's output is its aggregation conv's
                row["out_channels"] = data["out_channels"]
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
                "cio": 0,
            }
            rows.append(row)
        for key in ("params", "macs", "activations", "concat_elements", "cio"):
            row[key] += data.get(key, 0)
    for row in rows:
        row["cio_bytes"] = row["cio"] * _BYTES_FP32
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
        "cio": total["cio"],
        "cio_bytes": total["cio"] * _BYTES_FP32,
        "input_shape": [1, c, h, w],
        # a dynamic input: the sizes it takes; every count here is at its opt size (input_shape's H, W)
        "input_range": dict(graph.graph["input_range"]) if graph.graph.get("input_range") else None,
        "output_shape": [1, *graph.graph["output_shape"]] if graph.graph["output_shape"] else None,
        # a features head (a backbone): its named outputs, with the stride from the input
        "outputs": [
            {"name": o["name"], "channels": o["channels"], "size": list(o["size"]), "stride": o["stride"]}
            for o in graph.graph.get("outputs") or []
        ],
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
                "cio": data.get("cio", 0),
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
        ("CIO", "right"),
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
            _human(row["cio_bytes"], "B"),
            _human(row["activations"] * _BYTES_FP32, "B"),
        )
    table.add_section()
    table.add_row(
        "total",
        str(data["dense_layers"]),
        "",
        "",
        str(data["edges"]),
        f"{c}→{data['output_shape'][1]}" if data["output_shape"] else f"{c}→{len(data['outputs'])} maps",
        "",
        f"{data['params']:,}",
        f"{data['macs']:,}",
        _human(data["cio_bytes"], "B"),
        _human(data["activation_bytes_fp32"], "B"),
    )
    console.print(table)
    if data["outputs"]:
        console.print(_outputs_table(data["outputs"]))
    if data["input_range"]:
        (lh, lw), (hh, hw) = data["input_range"]["min"], data["input_range"]["max"]
        console.print(
            f"dynamic input: height x width from {lh}x{lw} to {hh}x{hw}; the sizes and costs here are at the opt "
            f"size {h}x{w} (parameters do not change with the size; MACs, CIO and activations grow about as H x W)"
        )
    console.print(
        f"params {data['params']:,} ({_human(data['params'])})   MACs {data['macs']:,} ({_human(data['macs'])}, "
        f"{_human(data['flops'], 'FLOP')})   CIO {_human(data['cio_bytes'], 'B')} fp32 (bytes the convs read and "
        f"write)   activations {_human(data['activation_bytes_fp32'], 'B')} fp32 per image   "
        f"concatenation copies {_human(data['concat_elements'] * _BYTES_FP32, 'B')}"
    )
    if per_node:
        console.print(_nodes_table(data["nodes"]))


def _outputs_table(outputs: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="features head: outputs", title_justify="left")
    for col in ("output", "channels", "size", "stride"):
        table.add_column(col, justify="left" if col == "output" else "right")
    for o in outputs:
        table.add_row(o["name"], str(o["channels"]), "x".join(map(str, o["size"])), str(o["stride"]))
    return table


def _nodes_table(nodes: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="nodes", title_justify="left")
    for col in ("id", "kind", "module", "inputs", "channels", "size", "params", "MACs"):
        table.add_column(col)
    for n in nodes:
        table.add_row(
            n["id"],
            n["kind"],
            n["module"],
            str(n["inputs"]),
            f"{n['in_channels']}→{n['out_channels']}",
            "x".join(map(str, n["size"])),
            f"{n['params']:,}",
            f"{n['macs']:,}",
        )
    return table
