"""Latency and throughput of a spec in PyTorch, a model.onnx in onnxruntime or a TensorRT engine, per batch size.

:func:`bench` opens the model's runner (:mod:`densegraph.runners`). Each batch size runs ``warmup`` untimed then
``iters`` timed forward passes on one fixed random batch (input already in place: compute, not data loading). A
row holds the median (``latency_ms_p50``), p90 and mean latency and the throughput ``batch / mean`` in images
per second — the same fields as :func:`densegraph.export.tensorrt.bench_engine`, which measures engines (both
time with :func:`densegraph.timing.time_batches`). A batch that cannot fit in the memory available (a spec's:
its busiest node's feature maps, :func:`densegraph.cost.peak_activation_bytes`; an ONNX model's: its input
batch) is refused before anything is allocated.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._io import check_regular
from .errors import DensegraphError, Loc
from .runners import ENGINE_SUFFIXES, OnnxRuntimeRunner, TorchRunner, open_runner
from .runners.onnxruntime import providers_for
from .timing import time_batches

__all__ = ["bench", "BenchReport", "time_batches", "model_kind"]

_SPEC_SUFFIXES = (".yaml", ".yml")
_WHAT = {"spec": "spec file", "onnx": "ONNX model", "engine": "TensorRT engine"}


@dataclass
class BenchReport:
    """One bench run: where it ran and a row per batch size (``batch``, ``latency_ms_p50``, ``latency_ms_p90``,
    ``latency_ms_mean``, ``throughput_per_s``)."""

    model: str
    backend: str  # pytorch, pytorch (frozen), onnxruntime, tensorrt
    device: str
    precision: str | None
    input_shape: list[int]
    results: list[dict[str, Any]]
    iters: int
    warmup: int
    provider: str | None = None  # onnxruntime's execution provider
    threads: int | None = None  # CPU threads (PyTorch's; onnxruntime's when set, else its default)

    def as_dict(self) -> dict[str, Any]:
        """The JSON ``densegraph bench --json`` prints."""
        doc: dict[str, Any] = {"model": self.model, "backend": self.backend}
        if self.backend == "onnxruntime":
            doc["provider"] = self.provider
        doc["device"] = self.device
        if self.backend != "tensorrt":
            doc["threads"] = self.threads
        doc |= {"precision": self.precision, "input_shape": self.input_shape, "results": self.results}
        return doc | {"iters": self.iters, "warmup": self.warmup}


def model_kind(path: str) -> str:
    """``spec``, ``onnx`` or ``engine``, from the file's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in _SPEC_SUFFIXES:
        return "spec"
    if suffix == ".onnx":
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    raise DensegraphError(
        f"cannot tell what {suffix or 'a file without a suffix'!r} is",
        loc=Loc(path),
        hint="bench takes a spec (.yaml), an ONNX model (.onnx) or a TensorRT engine (.engine)",
    )


def bench(
    model: str | os.PathLike[str],
    *,
    batch_sizes: Sequence[int] = (1, 8),
    iters: int = 20,
    warmup: int = 3,
    frozen: bool = False,
    device: str | None = None,
    weights: str | os.PathLike[str] | None = None,
) -> BenchReport:
    """Time ``model`` (a spec, a ``.onnx`` or an engine) at each of ``batch_sizes``.

    ``device``: ``cpu``, ``cuda`` or ``None`` (the GPU when there is one; onnxruntime's fastest provider);
    ``weights`` and ``frozen`` (the frozen inference module) apply to a spec.
    """
    path = os.fspath(model)
    kind = model_kind(path)
    check_regular(path, what=_WHAT[kind], missing_hint=f"check the path to the {_WHAT[kind]}")
    if iters < 1 or warmup < 0:
        raise DensegraphError(f"--iters must be >= 1 and --warmup >= 0, got {iters} and {warmup}")
    batches = [int(b) for b in batch_sizes]
    if not batches or any(b < 1 for b in batches):
        raise DensegraphError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if kind != "spec" and (weights or frozen):
        flag = "--weights" if weights else "--frozen"
        raise DensegraphError(f"{flag} applies only to a spec (PyTorch)", loc=Loc(path))
    if kind == "engine" and device == "cpu":
        raise DensegraphError("TensorRT engines run on the GPU only", hint="drop --device cpu")
    providers = providers_for(device, fastest=True) if kind == "onnx" else None
    runner = open_runner(path, weights=weights, device=device, frozen=frozen, providers=providers)
    if isinstance(runner, TorchRunner):
        _check_spec_batch(runner, max(batches), path)  # before the module is made
    with runner:
        if isinstance(runner, OnnxRuntimeRunner):
            _check_onnx_batch(runner, batches, path)
        rows = runner.bench(batches, iters=iters, warmup=warmup)
        runtime = runner.report()
        if kind == "onnx":
            from .export.tensorrt import inspect_onnx

            runtime["precision"] = inspect_onnx(path).precision
        shape = list(runner.input_chw)
    return BenchReport(
        model=path,
        backend=runtime["backend"],
        device=runtime["device"],
        precision=runtime.get("precision"),
        input_shape=shape,
        results=rows,
        iters=iters,
        warmup=warmup,
        provider=runtime.get("provider"),
        threads=runtime.get("threads"),
    )


def _check_spec_batch(runner: TorchRunner, batch: int, path: str) -> None:
    import torch

    from .cost import peak_activation_bytes

    device = runner.resolve_device()
    _check_batch_fits(
        peak_activation_bytes(runner.graph, batch),
        batch,
        path,
        "the busiest node's feature maps, from the graph's activation count",
        torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None,
    )


def _check_onnx_batch(runner: OnnxRuntimeRunner, batches: list[int], path: str) -> None:
    fixed = runner.fixed_batch
    if fixed is not None and any(b != fixed for b in batches):
        raise DensegraphError(
            f"the model takes a fixed batch of {fixed}", loc=Loc(path), hint=f"pass --batch-sizes {fixed}"
        )
    largest = max(batches)
    # the random batch is drawn in float64, then cast to the input's type
    needed = largest * int(np.prod(runner.input_chw)) * (8 + runner.input_dtype.itemsize)
    _check_batch_fits(needed, largest, path, "its input batch alone", None)


def _check_batch_fits(needed: int, batch: int, model: str, what: str, available: int | None) -> None:
    from ._memory import check_fits

    check_fits(
        needed,
        f"--batch-sizes {batch} ({what})",
        loc=Loc(model),
        hint="bench smaller --batch-sizes",
        available=available,
    )
