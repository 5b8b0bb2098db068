"""A spec lowered to PyTorch (with trained or published weights, or seeded), behind the runner interface.

The graph is built when the runner is made (a bad spec fails there, before torch is imported); ``load`` picks
the device, fetches published weights by name, lowers the graph (:func:`densegraph.lower.torch.to_torch`),
loads the weights strictly and, with ``frozen``, freezes the module for inference.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from ..errors import DensegraphError
from ..graph import graph_of
from ..spec import Spec
from .base import BaseRunner, TensorMeta

__all__ = ["TorchRunner", "resolve_weights"]

INPUT_NAME, OUTPUT_NAME = "images", "logits"  # the names the ONNX export gives them


def _imagenet_classes() -> list[str]:
    from importlib import resources

    text = resources.files("densegraph").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return text.splitlines()


def resolve_weights(
    graph: nx.DiGraph,
    weights: str | os.PathLike[str],
    *,
    progress: Callable[[int, int | None], None] | None = None,
) -> tuple[Path, dict[str, Any], list[str] | None]:
    """The weights file ``weights`` names (published weights are fetched), preprocess overrides, class names."""
    from ..hub import fetch_weights, is_weights_name, published_weights

    text = os.fspath(weights)
    if is_weights_name(text):
        entry = published_weights(text, graph.graph["name"])
        classes = _imagenet_classes() if entry.labels == "imagenet" else None
        return fetch_weights(entry, progress=progress), dict(entry.preprocess), classes
    from ..lower.weights import load_file

    obj = load_file(text)
    classes = obj.get("classes") if isinstance(obj, dict) else None
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        classes = None
    return Path(text), {}, classes


class TorchRunner(BaseRunner):
    """A spec (path, :class:`~densegraph.spec.Spec` or connection graph) in PyTorch.

    ``weights``: a state_dict or checkpoint file, or ``torchvision`` / ``timm[:variant]`` (without: seeded
    init, ``seed``); ``device``: ``cpu``, ``cuda`` or ``None`` (the GPU when there is one); ``frozen``: run
    :func:`densegraph.lower.torch.freeze` of the module.
    """

    backend = "pytorch"

    def __init__(
        self,
        spec: str | os.PathLike[str] | Spec | nx.DiGraph,
        *,
        weights: str | os.PathLike[str] | None = None,
        device: str | None = "cpu",
        frozen: bool = False,
        seed: int = 0,
    ) -> None:
        self.graph = graph_of(spec if isinstance(spec, Spec | nx.DiGraph) else os.fspath(spec))
        self.weights = weights
        self.requested_device = device
        self.frozen = frozen
        self.seed = seed
        self.device: Any = None  # a torch.device once resolved
        self.module: Any = None
        if isinstance(spec, nx.DiGraph):
            self._spec_name = str(self.graph.graph["name"])
        else:
            self._spec_name = spec.path if isinstance(spec, Spec) else os.fspath(spec)
        super().__init__(self._spec_name)
        self.feature_names = [o["name"] for o in self.graph.graph.get("outputs") or ()]
        size_range = self.graph.graph.get("input_range")  # a dynamic input: any size the spec's range allows
        self.size_range = {k: list(v) for k, v in size_range.items()} if size_range else None

    @property
    def name(self) -> str:
        device = self.device.type if self.device is not None else self.requested_device or "auto"
        made = f" + {os.fspath(self.weights)}" if self.weights is not None else ""
        frozen = ", frozen" if self.frozen else ""
        return f"{self._spec_name}{made} (PyTorch, {device}{frozen})"

    def resolve_device(self) -> Any:
        """The ``torch.device`` the runner uses; ``cuda`` without a GPU is one :class:`DensegraphError`."""
        if self.device is None:
            import torch

            requested = self.requested_device
            if requested == "cuda" and not torch.cuda.is_available():
                raise DensegraphError(
                    "--device cuda asked for, but no CUDA GPU is visible to PyTorch", hint="use --device cpu"
                )
            if requested is None:
                requested = "cuda" if torch.cuda.is_available() else "cpu"
            self.device = torch.device(requested)
        return self.device

    def _load(self) -> None:
        from ..lower.torch import freeze, module_from_graph
        from ..lower.weights import load_weights

        device = self.resolve_device()
        preprocess = dict(self.graph.graph["preprocess"])
        module: Any = module_from_graph(self.graph, seed=self.seed)
        if self.weights is not None:
            path, overrides, self.classes = resolve_weights(self.graph, self.weights)
            preprocess.update(overrides)
            load_weights(module, path, model_name=self._spec_name)
        if self.classes is None and self.graph.graph.get("labels"):
            self.classes = list(self.graph.graph["labels"])  # the spec's head.labels
        module.eval()
        if self.frozen:
            module = freeze(module)
        self.module = module.to(device)
        self.preprocess = preprocess

    def _release(self) -> None:
        self.module = None
        if self.device is not None and self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    @property
    def input_metadata(self) -> dict[str, TensorMeta]:
        c, h, w = (int(d) for d in self.graph.graph["input_shape"])
        if self.size_range is not None:
            return {INPUT_NAME: TensorMeta(INPUT_NAME, (None, c, None, None), np.dtype(np.float32))}
        return {INPUT_NAME: TensorMeta(INPUT_NAME, (None, c, h, w), np.dtype(np.float32))}

    @property
    def output_names(self) -> list[str]:
        return list(self.feature_names) or [OUTPUT_NAME]

    def _infer(self, feed: Mapping[str, Any]) -> dict[str, np.ndarray]:
        import torch

        x = np.ascontiguousarray(feed[INPUT_NAME], dtype=np.float32)
        with torch.inference_mode():
            batch = torch.from_numpy(x).to(self.device, non_blocking=True)
            out = self.module(batch)
        if isinstance(out, dict):  # a features head: the named maps
            return {name: value.float().cpu().numpy() for name, value in out.items()}
        return {OUTPUT_NAME: out.float().cpu().numpy()}

    def timed_call(self, batch: int, *, seed: int = 0) -> Callable[[], Any]:
        """One forward pass on a random batch already on the device (synchronized on CUDA)."""
        import torch

        self._check_loaded("timed_call")
        device, module = self.device, self.module
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn((batch, *self.input_chw), generator=generator).to(device)

        def run() -> Any:
            with torch.inference_mode():
                out = module(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return out

        return run

    def report(self) -> dict[str, Any]:
        import torch

        return {
            "backend": self.backend + (" (frozen)" if self.frozen else ""),
            "device": str(self.resolve_device()),
            "threads": torch.get_num_threads(),
            "precision": "fp32",
        }
