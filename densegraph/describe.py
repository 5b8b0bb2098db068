"""What a built model says about itself: ONNX ``metadata_props``, the preprocessing it expects, the node table
that :func:`locate` reads, and the ``MODEL.md`` card of a build folder.

Metadata keys (all strings; JSON where marked):

=============================  ===============================================================================
key                            value
=============================  ===============================================================================
``densegraph.version``         the densegraph that built it
``densegraph.spec``            the spec's ``name``
``densegraph.spec_sha256``     SHA-256 of the spec file's bytes
``densegraph.graph_sha256``    SHA-256 of the connection graph (structure, ops, shapes; not comments)
``densegraph.params``          trainable parameters; ``densegraph.macs``: multiply-accumulates per sample
``densegraph.classes``         number of logits (a classifier)
``densegraph.outputs``         JSON (a features head): ``name``, ``channels``, ``size`` [H, W], ``stride``
``densegraph.labels``          JSON list of class names (when the spec or ``labels`` names them)
``densegraph.preprocess``      JSON: ``input_size`` [C, H, W], ``channel_order``, ``resize``, ``crop``,
                               ``interpolation``, ``scale``, ``mean``, ``std`` (see :func:`preprocess_of`);
                               a dynamic model's ``input_range`` {``min``, ``opt``, ``max``: [H, W]} (its
                               ``input_size`` and ``crop`` are the ``opt`` size)
``densegraph.nodes``           JSON: name prefix -> [graph node, spec ``file:line:col``] (see :func:`locate`)
``densegraph.batch_tile``      the batch tile, when the model runs in tiles
=============================  ===============================================================================
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BuildError, Loc

if TYPE_CHECKING:
    import networkx as nx

__all__ = [
    "CARD_NAME",
    "Location",
    "preprocess_of",
    "read_labels",
    "node_table",
    "model_metadata",
    "locate",
    "model_card",
]

CARD_NAME = "MODEL.md"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_of(graph: nx.DiGraph) -> dict[str, Any]:
    """The preprocessing the model expects: the spec's ``preprocess:`` section when it has one
    (``graph.graph["preprocess"]``), else the default for its input.

    The default for a 3-channel network with a downsampling stem (an ImageNet-style spec: its stem ends in a
    max-pool) is torchvision's ImageNet transform scaled to the input size (resize the short side to
    size * 256 / 224, center-crop, RGB, pixels / 255, ImageNet mean and std); for other specs it is what
    ``densegraph train`` feeds them (resize to the input size, [0, 1], ImageNet mean and std with 3 channels,
    none with 1).
    """
    c, h, w = (int(v) for v in graph.graph["input_shape"])
    size_range = graph.graph.get("input_range")
    dynamic = {"input_range": dict(size_range)} if size_range else {}
    given = graph.graph.get("preprocess")
    if given:
        return {"input_size": [c, h, w], **dynamic, **dict(given)}
    stem_ops = graph.nodes["stem"]["ops"] if "stem" in graph else []
    imagenet_style = c == 3 and any(op["op"] == "maxpool" for op in stem_ops)
    color = c == 3
    return {
        "input_size": [c, h, w],
        "channel_order": "rgb" if color else "gray",
        "resize": round(min(h, w) * 256 / 224) if imagenet_style else [h, w],
        "crop": [h, w] if imagenet_style else None,
        "interpolation": "bilinear",
        "scale": 255.0,
        "mean": list(_IMAGENET_MEAN) if color else [0.0],
        "std": list(_IMAGENET_STD) if color else [1.0],
        **dynamic,
    }


def read_labels(source: str | os.PathLike[str] | Sequence[str], classes: int) -> list[str]:
    """Class names from a file (a JSON list, or one name a line) or a sequence; there must be ``classes``."""
    where = Loc(os.fspath(source)) if isinstance(source, str | os.PathLike) else None
    if where is not None:
        try:
            text = Path(source).read_text(encoding="utf-8")  # type: ignore[arg-type]
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise BuildError(
                f"cannot read the labels: {reason}", loc=where, hint="pass a text file"
            ) from None
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                labels = json.loads(stripped)
            except ValueError as exc:
                raise BuildError(f"the labels are not a JSON list: {exc}", loc=where) from None
        else:
            labels = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        labels = list(source)  # type: ignore[arg-type]
    if not all(isinstance(label, str) and label for label in labels):
        raise BuildError("every label must be a non-empty string", loc=where)
    if len(labels) != classes:
        raise BuildError(
            f"{len(labels)} labels for a model with {classes} classes",
            loc=where,
            hint="one name a line, in class-index order",
        )
    return labels


def node_table(graph: nx.DiGraph) -> dict[str, list[str]]:
    """Name prefix -> [graph node, spec location]: each node's module path (or id), every op name that does
    not start with it (the head's ``features.norm5``, ``classifier``), and a features head's output names (the
    ONNX outputs and engine bindings ``block3``, at their entry in ``head.outputs``)."""
    table: dict[str, list[str]] = {}
    for o in graph.graph.get("outputs") or ():
        table[o["name"]] = [o["node"], str(graph.nodes[o["node"]].get("loc", ""))]
    for node, data in graph.nodes(data=True):
        if data["kind"] == "input":
            continue
        prefix = data.get("module") or node
        entry = [node, str(data.get("loc", ""))]
        table.setdefault(prefix, entry)
        for op in data["ops"]:
            name = op.get("name")
            if name and not name.startswith(prefix + "."):
                table[name] = entry
    return dict(sorted(table.items()))


def model_metadata(
    graph: nx.DiGraph, *, spec_path: str | os.PathLike[str], labels: Sequence[str] | None = None
) -> dict[str, str]:
    """The ``metadata_props`` of a model built from ``graph`` (see the module docstring)."""
    from . import __version__
    from ._io import file_sha256
    from .cost import totals
    from .graph import graph_sha256

    cost = totals(graph)
    metadata = {
        "densegraph.version": __version__,
        "densegraph.spec": str(graph.graph["name"]),
        "densegraph.spec_sha256": file_sha256(spec_path),
        "densegraph.graph_sha256": graph_sha256(graph),
        "densegraph.params": str(cost["params"]),
        "densegraph.macs": str(cost["macs"]),
        "densegraph.preprocess": json.dumps(preprocess_of(graph), sort_keys=True),
        "densegraph.nodes": json.dumps(node_table(graph), sort_keys=True, separators=(",", ":")),
    }
    features = graph.graph.get("outputs")
    if features:
        keys = ("name", "channels", "size", "stride")
        metadata["densegraph.outputs"] = json.dumps([{k: o[k] for k in keys} for o in features])
    else:
        metadata["densegraph.classes"] = str(int(graph.graph["output_shape"][0]))
    labels = labels if labels is not None else graph.graph.get("labels")
    if labels:
        metadata["densegraph.labels"] = json.dumps(list(labels))
    return metadata


@dataclass(frozen=True)
class Location:
    """Where a layer name comes from: the ``name`` part matched, the graph ``node`` and the spec ``loc``."""

    name: str
    node: str
    loc: str


_TOKEN = re.compile(r"[A-Za-z_][\w.]*")


def locate(table: Mapping[str, Sequence[str]], layer: str) -> list[Location]:
    """The graph nodes a layer name refers to: every name in ``layer`` (a TensorRT fusion names several, an
    int8 or profiler name adds suffixes such as ``_QuantizeLinear``) matched to the longest prefix in ``table``
    (:func:`node_table`) that ends at a name boundary. In ``layer`` order, each node once."""
    found: list[Location] = []
    for token in _TOKEN.findall(layer):
        best = ""
        for prefix in table:
            if len(prefix) > len(best) and token.startswith(prefix):
                rest = token[len(prefix) :]
                if not rest or not rest[0].isalnum():
                    best = prefix
        if best:
            node, loc = table[best][0], table[best][1]
            if all(f.node != node for f in found):
                found.append(Location(best, node, loc))
    return found


def model_card(manifest: Mapping[str, Any], metadata: Mapping[str, str]) -> str:
    """The ``MODEL.md`` of a build folder, from its manifest and the model's metadata (deterministic)."""
    name = manifest["name"]
    precision = manifest["precision"]
    preprocess = json.loads(metadata["densegraph.preprocess"])
    labels = json.loads(metadata["densegraph.labels"]) if "densegraph.labels" in metadata else None
    (inp,), outs = manifest["inputs"], manifest["outputs"]
    lines = [
        f"# {name}",
        "",
        f"An ONNX model (`{manifest['model']['file']}`, {precision}, opset {manifest['opset']}) of the densely "
        f"connected network in `{manifest['spec']['path']}`, built by densegraph "
        f"{manifest['versions'].get('densegraph', '')}: emitted from the spec's connection graph "
        f"(rewrites: {', '.join(manifest['rewrites']) or 'none'}) and checked against PyTorch.",
        "",
        "## Input and output",
        "",
        "| tensor | shape | dtype |",
        "|---|---|---|",
        f"| `{inp['name']}` (input) | {_shape(inp['shape'])} | {inp['dtype']} |",
        *(f"| `{out['name']}` (output) | {_shape(out['shape'])} | {out['dtype']} |" for out in outs),
        "",
        _outputs_line(metadata, labels),
        "",
        "Preprocessing (`densegraph.preprocess` in the model's metadata): " + _preprocess_line(preprocess),
        "",
        *_range_lines(preprocess.get("input_range")),
        "## Cost",
        "",
        f"{manifest['params']:,} parameters, {manifest['macs'] / 1e9:.3g} GMACs per image "
        f"({manifest['model']['bytes'] / 2**20:.1f} MiB file).",
        "",
        "## Parity",
        "",
        *_parity_lines(manifest["parity"]),
        "",
        "## Provenance",
        "",
        f"- spec `{manifest['spec']['path']}`, sha256 `{manifest['spec']['sha256']}`",
        f"- graph sha256 `{manifest['spec']['graph_sha256']}`",
        (
            f"- weights `{manifest['weights']['path']}`, sha256 `{manifest['weights']['sha256']}`"
            if manifest.get("weights")
            else f"- weights: none (torchvision's initialisation, seed {manifest.get('seed')}): not a trained model"
        ),
        f"- model sha256 `{manifest['model']['sha256']}`",
        "- tools: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items()),
        "",
        "## Reproduce",
        "",
        "```sh",
        manifest["command"],
        f"densegraph locate {manifest['model']['file']} features.denseblock1   # ONNX/TensorRT name -> spec line",
        "```",
        "",
    ]
    return "\n".join(lines)


def _shape(shape: Sequence[Any]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _range_lines(size_range: Mapping[str, Sequence[int]] | None) -> list[str]:
    if not size_range:
        return []
    (lh, lw), (oh, ow), (hh, hw) = (size_range[k] for k in ("min", "opt", "max"))
    return [
        f"Dynamic input size: height and width from {lh}x{lw} to {hh}x{hw}, tuned for (and preprocessed to) "
        f"{oh}x{ow}; the MACs below are counted at {oh}x{ow}.",
        "",
    ]


def _preprocess_line(p: Mapping[str, Any]) -> str:
    resize = p.get("resize")
    parts = [f"{p.get('channel_order', '?')} images"]
    if resize is not None:
        what = f"short side to {resize}" if isinstance(resize, int) else f"to {resize[0]}x{resize[1]}"
        parts.append(f"resized ({p.get('interpolation', 'bilinear')}) {what}")
    if p.get("crop"):
        parts.append(f"center-cropped to {p['crop'][0]}x{p['crop'][1]}")
    if p.get("scale") is not None:
        parts.append(f"pixel values divided by {p['scale']:.6g}")
    parts.append(f"normalised with mean {p.get('mean')} and std {p.get('std')}, laid out NCHW")
    return ", ".join(parts) + "."


def _parity_lines(parity: Mapping[str, Any]) -> list[str]:
    lines = []
    for precision, result in parity.items():
        if not isinstance(result, dict):
            lines.append(f"- {precision}: {result}")
        elif precision == "int8" and "outputs" in result:  # a backbone's feature maps, each to the bar
            maps = ", ".join(f"`{name}` {o['sqnr_db']:.1f} dB" for name, o in result["outputs"].items())
            lines.append(
                f"- int8 vs the fp32 model on {result.get('data', 'the calibration data')}: feature map "
                f"SQNR {maps} ({result['criterion']})."
            )
        elif precision == "int8":
            line = (
                f"- int8 vs the fp32 model on {result.get('data', 'the calibration data')}: logits SQNR "
                f"{result['sqnr_db']:.1f} dB, top-1 agreement {result['top1_agreement']:.1%}"
            )
            if "top1_int8" in result:
                line += f", top-1 fp32 {result['top1_fp32']:.1%} / int8 {result['top1_int8']:.1%}"
            lines.append(line + ".")
        else:
            lines.append(
                f"- {precision}: onnxruntime vs {result['reference']} ({_batches(result)}): max abs error "
                f"{result['max_abs_err']:.2g}, max "
                f"relative error {result['max_rel_err']:.2g} ({result['criterion']}: "
                f"{'passed' if result['passed'] else 'FAILED'})."
            )
    return lines


def _batches(result: Mapping[str, Any]) -> str:
    if "sizes" not in result:
        return f"batch {', '.join(map(str, result['batches']))}"
    runs = (f"{n} at {h}x{w}" for n, (h, w) in zip(result["batches"], result["sizes"], strict=True))
    return "batch " + ", ".join(runs)


def _outputs_line(metadata: Mapping[str, str], labels: Sequence[str] | None) -> str:
    if "densegraph.outputs" in metadata:
        maps = json.loads(metadata["densegraph.outputs"])
        listed = ", ".join(f"`{o['name']}` (stride {o['stride']})" for o in maps)
        return f"A backbone (features head): the outputs are feature maps {listed}."
    names = (
        f": {', '.join(labels)}."
        if labels and len(labels) <= 20
        else " (names in `densegraph.labels`)."
        if labels
        else " (no class names given)."
    )
    return f"`logits` are unnormalised scores for {metadata['densegraph.classes']} classes" + names
