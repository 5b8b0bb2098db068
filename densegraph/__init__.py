"""densegraph: a compiler for densely connected networks.

YAML spec -> :func:`load_spec` -> :func:`build_graph` (a networkx connection graph with exact cost) -> backends
(``densegraph.lower.torch``, ``densegraph.export.onnx``, ``densegraph.export.tensorrt``) -> runners
(:mod:`densegraph.runners`); :func:`build` makes a verified model folder (:mod:`densegraph.builder`),
:func:`bench` times a model, :func:`heatmap` draws the paper's Fig. 5, :func:`import_weights` converts weights. Importing this package
imports neither torch, onnx, onnxruntime nor tensorrt; the backends are loaded on first use.
"""

from __future__ import annotations

from typing import Any

from .errors import DensegraphError, Loc, SpecError
from .graph import build_graph, check_graph, graph_from_spec
from .spec import Spec, load_spec, spec_from_string

__version__ = "0.1.0"

__all__ = [
    "DensegraphError",
    "Loc",
    "SpecError",
    "Spec",
    "load_spec",
    "spec_from_string",
    "build_graph",
    "graph_from_spec",
    "check_graph",
    "to_torch",
    "freeze",
    "build",
    "train",
    "evaluate",
    "predict",
    "bench",
    "heatmap",
    "import_weights",
    "__version__",
]


def to_torch(spec_or_graph: Any, **kwargs: Any) -> Any:
    """Lower a spec or connection graph to a ``torch.nn.Module`` (see :mod:`densegraph.lower.torch`)."""
    from .lower.torch import to_torch as _to_torch

    return _to_torch(spec_or_graph, **kwargs)


def freeze(module: Any, **kwargs: Any) -> Any:
    """Turn a trained module into a fast inference module (see :mod:`densegraph.lower.torch`)."""
    from .lower.torch import freeze as _freeze

    return _freeze(module, **kwargs)


def build(spec: Any, **options: Any) -> Any:
    """Build a spec into a verified ONNX model folder; returns a :class:`~densegraph.builder.BuildResult`
    (keywords: :class:`~densegraph.builder.BuildOptions`' fields and ``progress``; see
    :func:`densegraph.builder.build`)."""
    from .builder import build as _build

    return _build(spec, **options)


def bench(model: Any, **options: Any) -> Any:
    """Latency and throughput of a spec, a ``.onnx`` or an engine per batch size; a
    :class:`~densegraph.benchmark.BenchReport` (keywords: see :func:`densegraph.benchmark.bench`)."""
    from .benchmark import bench as _bench

    return _bench(model, **options)


def heatmap(spec: Any, **options: Any) -> Any:
    """The paper's Fig. 5 for a spec with ``weights``, drawn to ``output``; a
    :class:`~densegraph.heatmaps.HeatmapResult` (keywords: see :func:`densegraph.heatmaps.heatmap`)."""
    from .heatmaps import heatmap as _heatmap

    return _heatmap(spec, **options)


def import_weights(source: Any, **options: Any) -> Any:
    """Check a torchvision state_dict or checkpoint against ``spec`` and write it to ``output``; an
    :class:`~densegraph.lower.weights.ImportedWeights` (see :func:`densegraph.lower.weights.import_weights`)."""
    from .lower.weights import import_weights as _import_weights

    return _import_weights(source, **options)


def train(spec: Any, data: Any, run_dir: Any, **options: Any) -> Any:
    """Train a spec on ``digits``, an image folder or datasets into ``run_dir`` (see
    :func:`densegraph.training.train`); returns the run's summary."""
    from .training import train as _train

    return _train(spec, data, run_dir, **options)


def evaluate(model: Any, **options: Any) -> Any:
    """Top-1/top-5 of a spec+weights, a ``model.onnx`` or an engine on real data (see
    :func:`densegraph.evaluation.evaluate`); returns an ``EvalResult``."""
    from .evaluation import evaluate as _evaluate

    return _evaluate(model, **options)


def predict(model: Any, images: Any, **options: Any) -> Any:
    """The top classes of image files (see :func:`densegraph.prediction.predict`); returns one ``Prediction``
    per image."""
    from .prediction import predict as _predict

    return _predict(model, images, **options)
