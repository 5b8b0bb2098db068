"""The connection graph: the intermediate representation every backend consumes.

``build_graph(spec)`` expands a :class:`~densegraph.spec.Spec` into a ``networkx.DiGraph`` whose nodes are the
network's stages and whose edges are its connections. Nodes are inserted in topological (execution) order.
The package's modules by job: :mod:`.expand` (spec -> graph), :mod:`.connectivity` (the rules: sources,
exported maps, widths), :mod:`.names` (module names as data), :mod:`.ops` (the primitive op dicts),
:mod:`.check` (the invariants).

Node kinds (attribute ``kind``)
===============================

================  ==============================================================================================
kind              meaning and inputs
================  ==============================================================================================
``input``         the image batch; no inputs. ``out_channels`` / ``out_size`` are the spec's input.
``stem``          layers before the first block (``ops``: torchvision's conv7x7-BN-ReLU-maxpool, the CIFAR
                  conv, or the spec's conv stages (conv-BN-act each) and pools); one input.
``block_input``   identity: the feature maps a block starts from; one input (stem, transition or aggregate).
``dense_layer``   one layer of a block: concatenates the inputs its connectivity rule gives, then runs ``ops``
                  (pre-activation BN-act-conv, post-activation conv-BN-act, with an optional 1x1 bottleneck,
                  or separable conv1x1-BN-act-depthwise-BN; then dropout).
``aggregate``     a block's 1x1 conv-BN-act over the maps the block exports (one-shot aggregation); optional.
``transition``    between blocks: concatenates the block's exported maps, then (pre-activation BN-act-conv1x1
                  to ``compression`` times the channels) and the pools.
``head``          a classifier: concatenates the maps, then (BN-act) global avgpool (dropout) linear.
``output``        a features head's named output (``g.graph["outputs"]``): the concatenation of one block's
                  output maps (after its aggregate, before its transition); no ops. A sink.
================  ==============================================================================================

Node attributes: ``kind``; ``module`` (a module path prefix, torchvision's by default:
``features.denseblock1.denselayer1``); ``block`` and ``layer`` (1-based, where they apply); ``in_channels``,
``out_channels``; ``in_size``, ``out_size`` (``(height, width)``); ``ops`` (the primitive operations run after the
concatenation, in order — see below); ``params``, ``macs`` (per sample), ``activations`` (elements the ops
produce per sample), ``concat_elements`` (elements a materialised concatenation of the inputs costs, 0 with one
input), ``cio`` (elements the node's convs read and write: HarDNet's memory traffic); ``loc`` (``file:line:col``
of the spec entry the node comes from).

Edge ``u -> v``: ``v``'s input concatenation includes ``u``'s output. Attributes: ``channels`` (of ``u``),
``position`` (0-based index of ``u`` in ``v``'s concatenation) and ``offset`` (first channel of ``u`` in it).

Primitive ops (dicts with key ``op``; ``name`` is the full module path, or ``None`` for a functional op; module
names come from templates by role, :mod:`.names`):

- ``conv``: ``in_channels``, ``out_channels``, ``kernel``, ``stride``, ``padding``, ``bias`` (square kernels),
  ``groups`` (only when not 1: depthwise)
- ``bn``: ``channels``, ``eps``, ``momentum`` (BatchNorm2d)
- ``relu``; ``relu6`` (min(max(x, 0), 6)); ``dropout``: ``p``
- ``maxpool`` / ``avgpool``: ``kernel``, ``stride``, ``padding``, ``ceil_mode`` (only when true: PyTorch's rule)
- ``blurpool``: ``channels``, ``kernel``, ``stride``: reflect padding by (kernel - 1) // 2, then the fixed
  binomial filter (:func:`binomial_filter`) as a strided depthwise conv (timm's BlurPool2d); no parameters
- ``global_avgpool`` (then flatten); ``linear``: ``in_features``, ``out_features``, ``bias``

The graph attributes (``g.graph``) hold ``name``, ``input_shape`` (C, H, W; a dynamic input's ``opt`` size, at
which every node's sizes and costs are computed), ``input_range`` (a dynamic input only: ``min``, ``opt``,
``max``, each [H, W]: the sizes the model takes), ``output_shape`` (classes,; ``()``
for a features head), ``outputs`` (a features head only: per output ``name``, ``node``, ``block``,
``channels``, ``size`` [H, W], ``stride``), ``labels`` (a classifier whose spec names its classes:
``head.labels``), ``spec_path``, ``preprocess`` (a plain dict: ``resize`` (shorter
side, or ``None`` for a straight resize to the crop), ``crop`` ``[H, W]``, ``mean``, ``std``, ``channel_order``,
``scale``, ``interpolation`` — see :class:`~densegraph.spec.Preprocess`) and ``blocks`` (a list of per-block
dicts: ``index``, ``layers``, ``growth_rate``, ``bottleneck``, ``connectivity``, ``window``, ``multiplier``,
``widths`` (per layer) and ``widths_given``, ``in_channels``, ``out_channels``, ``size``, ``edges`` — the
connections feeding the block's layers —, ``nodes``, the block input followed by its layers, and ``outputs``,
the maps the block exports).
"""

from __future__ import annotations

import hashlib
import json
import os

import networkx as nx

from ..spec import Spec, load_spec
from .check import GraphError, check_graph
from .connectivity import block_outputs, layer_sources, layer_width
from .expand import build_graph, graph_from_spec
from .names import DEFAULT_NAMES
from .ops import BN_EPS, BN_MOMENTUM, binomial_filter, node_inputs

__all__ = [
    "build_graph",
    "check_graph",
    "graph_from_spec",
    "graph_of",
    "graph_sha256",
    "layer_sources",
    "block_outputs",
    "layer_width",
    "node_inputs",
    "binomial_filter",
    "GraphError",
    "DEFAULT_NAMES",
    "BN_EPS",
    "BN_MOMENTUM",
]


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
    if graph.graph.get("input_range"):  # only then: a fixed-size graph keeps the digest it always had
        doc["input_range"] = graph.graph["input_range"]
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=list).encode()).hexdigest()
