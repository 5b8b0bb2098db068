"""Runners: one interface (load / infer / release) over PyTorch, onnxruntime and TensorRT.

:func:`open_runner` chooses the runner by what the model is: a ``.onnx`` file runs in onnxruntime
(:class:`OnnxRuntimeRunner`), a ``.engine`` / ``.plan`` / ``.trt`` file in TensorRT (:class:`TensorRTRunner`),
anything else is a spec (a path, a :class:`~densegraph.spec.Spec` or a connection graph) lowered to PyTorch
(:class:`TorchRunner`). ``eval``, ``predict``, ``bench`` and the build's parity gates run models through them.
No framework is imported until a runner loads, except that an ONNX model opened with ``device=None`` or
``"cuda"`` imports onnxruntime when the runner is made, to choose its providers.

    with open_runner("build/digits/model.onnx") as runner:
        logits = runner.infer({"images": x})["logits"]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DensegraphError, Loc
from .base import BaseRunner, RunnerNotLoaded, TensorMeta
from .onnxruntime import OnnxRuntimeRunner, providers_for
from .tensorrt import TensorRTRunner
from .torch import TorchRunner

__all__ = [
    "BaseRunner",
    "TensorMeta",
    "RunnerNotLoaded",
    "TorchRunner",
    "OnnxRuntimeRunner",
    "TensorRTRunner",
    "open_runner",
    "runner_kind",
    "ONNX_SUFFIXES",
    "ENGINE_SUFFIXES",
]

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def runner_kind(model: Any) -> str:
    """``onnx``, ``engine`` or ``spec`` (everything else), from a model path's suffix."""
    if isinstance(model, str | os.PathLike):
        suffix = Path(model).suffix.lower()
        if suffix in ONNX_SUFFIXES:
            return "onnx"
        if suffix in ENGINE_SUFFIXES:
            return "engine"
    return "spec"


def open_runner(
    model: Any,
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str | None = "cpu",
    frozen: bool = False,
    providers: Sequence[str] | None = None,
) -> BaseRunner:
    """The runner for ``model``, not loaded yet (``with open_runner(...) as runner:`` loads and releases it).

    ``weights`` and ``frozen`` apply to a spec; ``device`` is ``cpu``, ``cuda`` or ``None`` (the best there
    is); ``providers`` overrides the onnxruntime execution providers ``device`` would choose. An engine
    always runs on the GPU.
    """
    kind = runner_kind(model)
    if kind == "spec":
        return TorchRunner(model, weights=weights, device=device, frozen=frozen)
    where = Loc(os.fspath(model))
    if weights is not None:
        raise DensegraphError(
            "--weights applies to a spec; an ONNX model or engine carries its weights", loc=where
        )
    if frozen:
        raise DensegraphError("--frozen applies only to a spec (PyTorch)", loc=where)
    if kind == "onnx":
        return OnnxRuntimeRunner(model, providers=providers or providers_for(device))
    return TensorRTRunner(model)
