"""An ONNX model in onnxruntime, behind the runner interface.

On load the model is checked to be what densegraph feeds and reads: one float image input ``[batch, C, H, W]``
(fixed C, H, W; or symbolic H, W with the size range in its ``densegraph.preprocess`` metadata) and float
logits ``[batch, classes]``, or a backbone's float feature maps ``[batch, C, H, W]`` (every output rank 4, none
named ``logits``: :attr:`~.base.BaseRunner.feature_names`); anything else, and any failure inside onnxruntime,
is one :class:`~densegraph.errors.DensegraphError` naming the model. onnxruntime is imported on load.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .._io import check_regular
from ..errors import BuildError, DensegraphError, Loc, ModelLoadError
from ..transforms import size_range_of
from .base import METADATA_PREPROCESS, BaseRunner, TensorMeta, preprocess_from_metadata

__all__ = ["OnnxRuntimeRunner", "import_onnxruntime", "best_providers", "providers_for"]

_IMAGE_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_LOGIT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)")
_EXPECTS = "one input, images [batch, C, H, W] float32 (or float16)"


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or one clear error naming the extra that installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise BuildError(
            "onnxruntime is not installed (it runs and verifies the ONNX models)",
            hint="pip install 'densegraph[cpu]', or 'densegraph[gpu]' on an NVIDIA GPU machine (not both)",
        ) from None
    return onnxruntime


def best_providers() -> list[str]:
    """The onnxruntime execution providers to use, best first: TensorRT, CUDA, then CPU where present."""
    ort = import_onnxruntime()

    available = set(ort.get_available_providers())
    preferred = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    return [p for p in preferred if p in available] or ["CPUExecutionProvider"]


def providers_for(device: str | None, *, fastest: bool = False) -> list[str]:
    """Execution providers for ``device``: ``cpu``; ``cuda`` (CUDA with the CPU for what it lacks, or with
    ``fastest`` every GPU provider, TensorRT's first); ``None``: the best this onnxruntime has."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device is None:
        return best_providers()
    if fastest:
        gpu = [p for p in best_providers() if p != "CPUExecutionProvider"]
        if not gpu:
            raise DensegraphError(
                "--device cuda asked for, but this onnxruntime has no CUDA or TensorRT execution provider",
                hint="pip install onnxruntime-gpu",
            )
        return gpu
    if "CUDAExecutionProvider" not in import_onnxruntime().get_available_providers():
        raise DensegraphError(
            "--device cuda: onnxruntime has no CUDA provider", hint="pip install 'densegraph[gpu]'"
        )
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _rank(shape: Any) -> int | None:
    """The rank onnxruntime reports for a value (None: unknown)."""
    return len(shape) if isinstance(shape, list) else None


def _ort_reason(exc: Exception) -> str:
    """onnxruntime's message without its source path and C++ signature: ``the Reshape node: The input …``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    found = re.search(r"while running (\S+) node.*?Status Message: (.*)", text)
    if found is None:
        return text
    reason = re.sub(r"^/\S+:\d+ \S+\(.*?\) ", "", found.group(2))
    return f"the {found.group(1)} node: {reason}"


def _size_range(metadata: Mapping[str, str], where: Loc) -> dict[str, list[int]] | None:
    """A dynamic model's size range, from its ``densegraph.preprocess`` metadata (None: a fixed size)."""
    try:
        record = json.loads(metadata.get(METADATA_PREPROCESS, "{}"))
    except json.JSONDecodeError:
        return None  # preprocess_from_metadata reports it
    return size_range_of(record, where) if isinstance(record, dict) else None


class OnnxRuntimeRunner(BaseRunner):
    """An onnxruntime session on ``model`` (a path, or serialized bytes named by ``description``).

    ``providers`` default to the CPU's; ``threads`` sets intra-op threads (default: onnxruntime's, one per
    physical core); ``optimize=False`` turns onnxruntime's graph optimizations off. A model with a fixed
    batch is run in chunks of that batch by ``runner(x)``.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        optimize: bool = True,
        description: str | None = None,
    ) -> None:
        self.path = None if isinstance(model, bytes) else os.fspath(model)
        self._model = model if isinstance(model, bytes) else None
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.threads = threads
        self.optimize = optimize
        super().__init__(description or f"{self.path} (onnxruntime)")
        self.session: Any = None
        self.fixed_batch: int | None = None
        self.metadata: dict[str, str] = {}
        self._inputs: dict[str, TensorMeta] = {}
        self._outputs: list[str] = []

    @property
    def _where(self) -> Loc | None:
        return Loc(self.path) if self.path is not None else None

    @property
    def name(self) -> str:
        if self.session is None or self.path is None:
            return self._description
        return f"{self.path} (onnxruntime, {self.session.get_providers()[0]})"

    def _load(self) -> None:
        ort = import_onnxruntime()
        if self.path is not None:
            check_regular(self.path, what="ONNX model", missing_hint="check the path to the ONNX model")
        options = ort.SessionOptions()
        options.log_severity_level = 4  # fatal only: a failure is reported once, as one line, by the caller
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        if not self.optimize:  # the graph as written (e.g. Q/DQ not fused into int8 kernels)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        source = self._model if self._model is not None else self.path
        try:
            session = ort.InferenceSession(source, options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(
                f"onnxruntime cannot load the model: {first}", reason=first, loc=self._where
            ) from None
        where = self._where or Loc(self._description)
        metadata = dict(session.get_modelmeta().custom_metadata_map or {})
        self.size_range = _size_range(metadata, where)
        self._check_io(session, dynamic=self.size_range is not None)
        self.session = session
        self.metadata = metadata
        (meta,) = self._inputs.values()
        c, h, w = (int(d or 0) for d in meta.shape[1:])  # fixed: checked above
        if self.size_range is not None:
            h, w = self.size_range["opt"]
        self.preprocess, self.classes = preprocess_from_metadata(self.metadata, (c, h, w), where)

    def _check_io(self, session: Any, *, dynamic: bool = False) -> None:
        where = self._where
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1:
            names = ", ".join(f"{i.name!r} {i.type} {list(i.shape)}" for i in inputs) or "none"
            raise DensegraphError(
                f"the model has {len(inputs)} required inputs ({names}); densegraph feeds {_EXPECTS}",
                loc=where,
            )
        inp = inputs[0]
        dtype = _IMAGE_TYPES.get(inp.type)
        if dtype is None:
            raise DensegraphError(
                f"input {inp.name!r} is {inp.type}; densegraph feeds {_EXPECTS}",
                loc=where,
                hint="this model does not take images",
            )
        shape = list(inp.shape)
        fixed = shape[1:2] if dynamic else shape[1:]  # a dynamic model's H, W: its metadata's input_range
        if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in fixed):
            raise DensegraphError(
                f"input {inp.name!r} has shape {shape}; densegraph feeds {_EXPECTS} with fixed C, H, W",
                loc=where,
                hint=f"a model with a dynamic height and width needs densegraph's {METADATA_PREPROCESS} "
                "input_range (build it from a spec with input.size: dynamic)",
            )
        if dynamic:
            shape[2:] = [None, None]
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self._inputs = {inp.name: TensorMeta(inp.name, (self.fixed_batch, *shape[1:]), np.dtype(dtype))}
        if all(o.type in _LOGIT_TYPES and _rank(o.shape) == 4 and o.name != "logits" for o in outputs):
            # a backbone (a features head): every output a named map [batch, C, H, W] (maps named "logits"
            # are a classifier gone wrong, refused below)
            self._outputs = [o.name for o in outputs]
            self.feature_names = list(self._outputs)
            return
        out = next((o for o in outputs if o.name == "logits"), outputs[0])
        if out.type not in _LOGIT_TYPES or (isinstance(out.shape, list) and len(out.shape) != 2):
            raise DensegraphError(
                f"output {out.name!r} is {out.type} {list(out.shape)}; expected float logits [batch, classes] "
                "(or a backbone's feature maps [batch, C, H, W])",
                loc=where,
            )
        self._outputs = [out.name, *(o.name for o in outputs if o.name != out.name)]

    def _release(self) -> None:
        self.session = None  # onnxruntime frees the session with its last reference

    @property
    def input_metadata(self) -> dict[str, TensorMeta]:
        self._check_loaded("input_metadata")
        return dict(self._inputs)

    @property
    def output_names(self) -> list[str]:
        self._check_loaded("output_names")
        return list(self._outputs)

    def _infer(self, feed: Mapping[str, Any]) -> dict[str, np.ndarray]:
        try:
            values = self.session.run(self._outputs, dict(feed))
        except Exception as exc:
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            shape = list(np.shape(next(iter(feed.values()))))
            raise DensegraphError(
                f"onnxruntime failed running the model on a batch {shape}: {_ort_reason(exc)}",
                loc=self._where,
                hint="eval and bench feed images [batch, C, H, W] to a model exported for them",
            ) from None
        return dict(zip(self._outputs, values, strict=True))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Float32 logits for ``x`` ``[n, C, H, W]``, in chunks of the model's batch where it is fixed."""
        self.check_classifier()
        return self._chunked(x, lambda chunk: {"": self._logits(chunk)})[""]

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every named output for ``x`` ``[n, C, H, W]``, in chunks of the model's batch where it is fixed."""
        return self._chunked(x, super().outputs)

    def _chunked(
        self, x: np.ndarray, run: Callable[[np.ndarray], dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        fixed = self.fixed_batch
        if fixed is None:
            return run(x)
        pieces: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(x), fixed):
            chunk = x[start : start + fixed]
            n = len(chunk)
            if n < fixed:
                chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), chunk.dtype)])
            for name, value in run(chunk).items():
                pieces.setdefault(name, []).append(value[:n])
        return {name: np.concatenate(p) for name, p in pieces.items()}

    def _logits(self, x: np.ndarray) -> np.ndarray:
        logits = super().__call__(x)
        if logits.ndim != 2 or logits.shape[0] != len(x):
            raise DensegraphError(
                f"the model gave outputs of shape {list(logits.shape)} for {len(x)} inputs; expected "
                "[batch, classes]",
                loc=self._where,
            )
        return logits

    def report(self) -> dict[str, Any]:
        self._check_loaded("report")
        provider = self.session.get_providers()[0]
        threads = self.session.get_session_options().intra_op_num_threads
        return {
            "backend": self.backend,
            "provider": provider,
            "device": "cpu" if provider == "CPUExecutionProvider" else "cuda",
            "threads": int(threads) if threads else None,  # 0: onnxruntime's default, one per physical core
        }
