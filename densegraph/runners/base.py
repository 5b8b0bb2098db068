"""The runner interface every backend implements: load, infer, release (Polygraphy's ``BaseRunner``).

A runner is made cheaply (nothing heavy is imported or allocated), :meth:`BaseRunner.load` opens the model
(a PyTorch module, an onnxruntime session, a TensorRT engine), :meth:`BaseRunner.infer` maps a feed of named
numpy arrays to the named outputs, and :meth:`BaseRunner.release` frees what ``load`` made; ``with runner:``
does both. Every densegraph model takes one image batch ``images [batch, C, H, W]`` and gives ``logits
[batch, classes]`` (a classifier) or named feature maps ``[batch, C, H, W]`` (a backbone: a features head,
:attr:`BaseRunner.feature_names`), so a runner also offers ``runner(x) -> logits`` (a classifier's) and
``runner.outputs(x)`` (every named output) for a batch of any size, the model's own preprocessing and class
names (from the spec and weights, or the ONNX metadata), and a timed call for bench.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, DensegraphError, Loc
from ..timing import time_batches
from ..transforms import refuse_outside_range, size_range_of

__all__ = [
    "BaseRunner",
    "TensorMeta",
    "RunnerNotLoaded",
    "METADATA_PREPROCESS",
    "METADATA_CLASSES",
    "preprocess_from_metadata",
    "onnx_metadata",
]

METADATA_PREPROCESS = "densegraph.preprocess"  # ONNX metadata_props key: the spec's preprocess as JSON
METADATA_LABELS = "densegraph.labels"  # ONNX metadata_props key: the class names as a JSON list
METADATA_CLASSES = "densegraph.classes"  # ONNX metadata_props key: the number of classes


@dataclass(frozen=True)
class TensorMeta:
    """A model input or output: its name, shape (``None`` for a dimension fixed only at run time) and dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype


class RunnerNotLoaded(RuntimeError):
    """A runner used before :meth:`BaseRunner.load` or after :meth:`BaseRunner.release` (a caller's bug)."""


class BaseRunner(abc.ABC):
    """Load / infer / release one model; a context manager (``with runner:`` loads, then releases).

    Subclasses implement :meth:`_load`, :meth:`_infer`, :meth:`_release`, :attr:`input_metadata` and
    :attr:`output_names`; :meth:`__call__` and :meth:`timed_call` have generic forms they may sharpen.
    """

    backend = "?"  # pytorch, onnxruntime, tensorrt: what ``bench`` reports

    def __init__(self, description: str) -> None:
        self._description = description
        self.is_loaded = False
        self.preprocess: dict[str, Any] | None = None  # the model's input transform, set by load()
        self.classes: list[str] | None = None  # the model's class names where it carries them
        self.feature_names: list[str] = []  # a backbone's named feature maps (empty: a classifier's logits)
        # a dynamic model's sizes, set by load(): {"min", "opt", "max"} -> [H, W]; None for a fixed size
        self.size_range: dict[str, list[int]] | None = None

    # ---------------------------------------------------------------------------------------------------
    # the interface

    @property
    def name(self) -> str:
        """What the runner runs, readably: ``model.onnx (onnxruntime, CPUExecutionProvider)``."""
        return self._description

    def load(self) -> BaseRunner:
        """Open the model (a no-op when loaded); returns the runner."""
        if not self.is_loaded:
            self._load()
            self.is_loaded = True
        return self

    def release(self) -> None:
        """Free what :meth:`load` made (a no-op when not loaded); :meth:`infer` refuses until loaded again."""
        if self.is_loaded:
            self.is_loaded = False
            self._release()

    def __enter__(self) -> BaseRunner:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def infer(self, feed: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The model's outputs by name for ``feed``, one array per input name (as :attr:`input_metadata`)."""
        self._check_loaded("infer")
        expected = list(self.input_metadata)
        if sorted(feed) != sorted(expected):
            raise DensegraphError(
                f"the feed names {sorted(feed)}, the model takes {expected}",
                hint=f"infer({{{', '.join(repr(n) + ': ...' for n in expected)}}})",
            )
        self.check_input_size(np.shape(feed[expected[0]]))
        return self._infer(feed)

    def check_input_size(self, shape: Sequence[int]) -> None:
        """Refuse, in one line, an image batch whose height or width is outside a dynamic model's range."""
        refuse_outside_range(self.size_range, shape, self.name)

    @property
    @abc.abstractmethod
    def input_metadata(self) -> dict[str, TensorMeta]:
        """Each input's name, shape and dtype (onnxruntime and TensorRT runners must be loaded first)."""

    @property
    @abc.abstractmethod
    def output_names(self) -> list[str]:
        """The outputs :meth:`infer` returns (onnxruntime and TensorRT runners must be loaded first)."""

    @abc.abstractmethod
    def _load(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feed: Mapping[str, Any]) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def _release(self) -> None: ...

    def _check_loaded(self, what: str) -> None:
        if not self.is_loaded:
            raise RunnerNotLoaded(
                f"{what}() on {self.name}, which is not loaded: call load() first (or use `with runner:`); "
                "a released runner must be loaded again"
            )

    # ---------------------------------------------------------------------------------------------------
    # the image classifier every densegraph model is

    @property
    def input_name(self) -> str:
        """The one input, ``images``."""
        return next(iter(self.input_metadata))

    @property
    def output_name(self) -> str:
        """The logits output (``logits`` where the model names one so, else the first)."""
        names = self.output_names
        return "logits" if "logits" in names else names[0]

    @property
    def input_chw(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the image input: a dynamic model's ``opt`` size (what its preprocessing resizes
        to, and what eval, predict and bench feed it)."""
        c, h, w = self.input_metadata[self.input_name].shape[1:]
        if self.size_range is not None:
            h, w = self.size_range["opt"]
        assert c is not None and h is not None and w is not None  # checked on load by every runner
        return c, h, w

    @property
    def input_dtype(self) -> np.dtype:
        return self.input_metadata[self.input_name].dtype

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Float32 logits ``[n, classes]`` for an image batch ``[n, C, H, W]`` of any size."""
        self.check_classifier()
        feed = {self.input_name: np.ascontiguousarray(x, dtype=self.input_dtype)}
        return np.asarray(self.infer(feed)[self.output_name], dtype=np.float32)

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every named output as float32 for an image batch ``[n, C, H, W]`` (a backbone's feature maps, or
        a classifier's logits), in :attr:`output_names` order."""
        feed = {self.input_name: np.ascontiguousarray(x, dtype=self.input_dtype)}
        got = self.infer(feed)
        return {name: np.asarray(got[name], dtype=np.float32) for name in self.output_names}

    def check_classifier(self, lacks: str = "logits", *, loc: Loc | None = None) -> None:
        """Refuse a backbone where a classifier is needed: one :class:`DensegraphError` naming its feature
        maps and what it ``lacks``."""
        if self.feature_names:
            raise DensegraphError(
                f"{'the model' if loc else self.name} is a backbone (a features head): it outputs the feature "
                f"maps {', '.join(self.feature_names)} and has no {lacks}",
                loc=loc,
                hint="densegraph bench times it; runner.outputs(x) gives the maps by name",
            )

    def timed_call(self, batch: int, *, seed: int = 0) -> Callable[[], Any]:
        """One inference on a fixed random batch of ``batch`` images already in place, for timing."""
        self._check_loaded("timed_call")
        rng = np.random.default_rng(seed)
        feed = {self.input_name: rng.standard_normal((batch, *self.input_chw)).astype(self.input_dtype)}
        return lambda: self._infer(feed)

    def bench(self, batch_sizes: Sequence[int], *, iters: int = 20, warmup: int = 3) -> list[dict[str, Any]]:
        """Latency and throughput rows per batch size (:func:`densegraph.timing.time_batches`)."""
        self._check_loaded("bench")
        return time_batches(self.timed_call, batch_sizes, iters=iters, warmup=warmup)

    def report(self) -> dict[str, Any]:
        """What ``bench`` reports about the runner: ``backend``, ``device`` and, where known, ``provider``,
        ``threads`` and ``precision``."""
        return {"backend": self.backend}


# ---------------------------------------------------------------------------------------------------------
# the model's own preprocessing and class names, from ONNX metadata


def preprocess_from_metadata(
    metadata: Mapping[str, str], shape: tuple[int, int, int], where: Loc
) -> tuple[dict[str, Any], list[str] | None]:
    """The preprocess record and class names a model's ``densegraph.*`` metadata gives (CIFAR-style defaults
    for the input ``shape`` when it has none); a malformed record is one :class:`DataError` at ``where``."""
    from ..spec import default_preprocess
    from ..transforms import check_preprocess

    preprocess = default_preprocess("cifar", shape[0], (shape[1], shape[2])).as_dict()
    if METADATA_PREPROCESS in metadata:
        try:
            preprocess = json.loads(metadata[METADATA_PREPROCESS])
        except json.JSONDecodeError:
            raise DataError(f"the model's {METADATA_PREPROCESS} metadata is not JSON", loc=where) from None
        preprocess = check_preprocess(preprocess, shape[0], where)
        size_range = size_range_of(preprocess, where)
        if size_range is not None and tuple(size_range["opt"]) != shape[1:]:
            raise DataError(
                f"the model's {METADATA_PREPROCESS} input_range has opt {size_range['opt']}, the model is run "
                f"at {list(shape[1:])}",
                loc=where,
            )
        if tuple(preprocess["crop"]) != shape[1:]:
            raise DataError(
                f"the model's {METADATA_PREPROCESS} crops to {preprocess['crop']}, its input is {list(shape[1:])}",
                loc=where,
            )
    classes = None
    for key in (
        METADATA_LABELS,
        METADATA_CLASSES,
    ):  # densegraph.classes held the names before it held the count
        try:
            value = json.loads(metadata[key]) if key in metadata else None
        except json.JSONDecodeError:
            value = None
        if isinstance(value, list) and all(isinstance(c, str) for c in value):
            classes = value
            break
    return preprocess, classes


def onnx_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of the ONNX model at ``path``; empty when it cannot be read."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # a broken neighbour is no reason to refuse the engine
        return {}
    return {p.key: p.value for p in proto.metadata_props}
