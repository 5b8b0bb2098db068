"""The build's manifest: what was built from what (spec, weights, options, the command that makes it again), and
the record of the model file."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cost import totals
from ..export.onnx import io_signature, op_counts
from ..manifest import MANIFEST_FORMAT, file_sha256
from .options import BuildOptions

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["manifest_head", "model_record", "command_line"]


def manifest_head(
    options: BuildOptions, spec_path: str, graph: nx.DiGraph, passes: list[str]
) -> dict[str, Any]:
    """The manifest's first fields: spec, weights, options, cost, rewrites and the command line."""
    from ..graph import graph_sha256

    cost = totals(graph)
    head: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "name": graph.graph["name"],
        # the file's bytes, and the network it describes (`extends` bases included; comments do not count)
        "spec": {
            "path": spec_path,
            "sha256": file_sha256(spec_path),
            "graph_sha256": graph_sha256(graph),
        },
        "weights": {"path": str(options.weights), "sha256": file_sha256(options.weights)}
        if options.weights
        else None,
    }
    if not options.weights:
        head["seed"] = options.seed
    head.update(
        {
            "precision": options.precision,
            "target": options.target,
            "opset": options.opset,
            "batch": {"min": options.batch[0], "opt": options.batch[1], "max": options.batch[2]},
            "params": cost["params"],
            "macs": cost["macs"],
            "emitter": "densegraph.export.emit (from the connection graph)",
            "rewrites": list(passes),
            "command": command_line(options, spec_path),
        }
    )
    return head


def model_record(model: Any, path: Path) -> dict[str, Any]:
    """The manifest's record of the model file (name, sha256, bytes, ops) and its inputs and outputs."""
    return {
        "model": {
            "file": path.name,
            "sha256": file_sha256(path),
            "bytes": path.stat().st_size,
            "ops": op_counts(model),
        },
        **io_signature(model),
    }


def command_line(options: BuildOptions, spec_path: str) -> str:
    """The ``densegraph build`` command line that makes this build again (into OUT)."""
    words = ["densegraph", "build", spec_path]
    defaults = BuildOptions()
    for f in fields(BuildOptions):
        value = getattr(options, f.name)
        if f.name == "output" or value == getattr(defaults, f.name) or value is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag)
        elif f.name == "batch":
            words += [flag, ":".join(map(str, value))]
        elif f.name == "labels" and not isinstance(value, str | os.PathLike):
            words += [flag, "LABELS.txt"]
        else:
            words += [flag, str(os.fspath(value) if isinstance(value, os.PathLike) else value)]
    return " ".join([*words, "-o", "OUT"])
