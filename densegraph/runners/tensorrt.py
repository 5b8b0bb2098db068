"""A serialized TensorRT engine behind the runner interface: a thin layer over
:class:`densegraph.export.tensorrt.EngineRunner`, which does the work (I/O discovery, profiles, buffers,
zero-copy torch tensors). Neither tensorrt nor torch is imported here: the engine runner imports tensorrt and
cuda-python when it loads, and torch never on numpy batches.

An engine carries no metadata; its preprocessing and class names are read from the ONNX it was built from,
beside it with the same stem (``model.engine`` -> ``model.onnx``), when that is there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Loc
from .base import BaseRunner, TensorMeta, onnx_metadata, preprocess_from_metadata

__all__ = ["TensorRTRunner"]


def _backend() -> Any:
    """The TensorRT backend package, looked up on use (so tests may put a stand-in engine runner there)."""
    from ..export import tensorrt

    return tensorrt


class TensorRTRunner(BaseRunner):
    """An engine file on CUDA device ``device``; ``check_compat`` and ``dla_core`` as
    :class:`~densegraph.export.tensorrt.EngineRunner`'s."""

    backend = "tensorrt"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device: int = 0,
        check_compat: bool = True,
        dla_core: int | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.options: dict[str, Any] = {"device": device, "check_compat": check_compat, "dla_core": dla_core}
        super().__init__(f"{self.path} (TensorRT)")
        self.engine: Any = None  # the EngineRunner once loaded

    def _load(self) -> None:
        engine = _backend().EngineRunner(self.path, **self.options)
        beside = Path(self.path).with_suffix(".onnx")
        metadata = onnx_metadata(beside) if beside.is_file() else {}
        c, h, w = (int(d) for d in engine.input_chw)  # a dynamic height and width: the profile's opt
        self.size_range = getattr(engine, "size_range", None)
        try:
            self.preprocess, self.classes = preprocess_from_metadata(metadata, (c, h, w), Loc(str(beside)))
        except BaseException:
            engine.close()  # the engine is not handed out: free it now
            raise
        self.engine = engine
        if engine.outputs and all(
            len(t.shape) == 4 and t.name != "logits" for t in engine.outputs
        ):  # a backbone's named maps
            self.feature_names = list(engine.output_names)

    def _release(self) -> None:
        engine, self.engine = self.engine, None
        engine.close()

    @property
    def input_metadata(self) -> dict[str, TensorMeta]:
        self._check_loaded("input_metadata")
        (tensor,) = self.engine.inputs
        shape = tuple(None if d < 0 else int(d) for d in tensor.shape)
        return {tensor.name: TensorMeta(tensor.name, shape, tensor.numpy_dtype)}

    @property
    def output_names(self) -> list[str]:
        self._check_loaded("output_names")
        return list(self.engine.output_names)

    @property
    def input_chw(self) -> tuple[int, int, int]:
        self._check_loaded("input_chw")
        c, h, w = (int(d) for d in self.engine.input_chw)
        return c, h, w

    def _infer(self, feed: Mapping[str, Any]) -> dict[str, np.ndarray]:
        (x,) = feed.values()
        out = self.engine(x)
        return dict(out) if isinstance(out, dict) else {self.output_names[0]: out}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Float32 logits for ``x`` ``[n, C, H, W]``: the engine runner splits and pads to its profile (and
        refuses a height or width outside a dynamic profile)."""
        self._check_loaded("__call__")
        self.check_classifier()
        return np.asarray(self.engine(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name for ``x`` ``[n, C, H, W]`` (a backbone's maps), split and padded as logits."""
        self._check_loaded("outputs")
        got = self._infer({self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return {name: np.asarray(got[name], dtype=np.float32) for name in self.output_names}

    def timed_call(self, batch: int, *, seed: int = 0) -> Callable[[], Any]:
        """Inside the profile's batch range the input is staged on the device once (engine time, no copies);
        outside it each call includes the copies and the splitting."""
        self._check_loaded("timed_call")
        lo, hi = self.engine.batch_range
        if lo <= batch <= hi:
            return self.engine.timed_call(batch, seed=seed)
        x = np.random.default_rng(seed).standard_normal((batch, *self.input_chw)).astype(np.float32)
        return lambda: self.engine(x)

    def bench(self, batch_sizes: Sequence[int], *, iters: int = 20, warmup: int = 3) -> list[dict[str, Any]]:
        """:func:`densegraph.export.tensorrt.bench_engine`'s rows (each says whether its input was staged)."""
        self._check_loaded("bench")
        return list(_backend().bench_engine(self.engine, batch_sizes, iters=iters, warmup=warmup))

    def report(self) -> dict[str, Any]:
        self._check_loaded("report")
        return {
            "backend": self.backend,
            "device": str(self.engine.device),
            "precision": self.engine.precision,
        }
