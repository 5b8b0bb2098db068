"""The parity gates of the ONNX models: the unrewritten PyTorch module's outputs as the reference, the fp32
model checked against them (:func:`fp32_parity`), and the fp16 model converted and checked the same way."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._threads import torch_threads
from ..errors import BuildError, ModelLoadError
from ..export.onnx import (
    flat_outputs,
    fp16_from_onnx,
    parity_inputs,
    save_onnx,
    set_metadata,
    verify_outputs,
)
from ..runners.onnxruntime import OnnxRuntimeRunner
from .options import BuildOptions

if TYPE_CHECKING:
    import networkx as nx
    from torch import nn

__all__ = [
    "PARITY_BATCHES",
    "parity_shapes",
    "parity_text",
    "with_sizes",
    "start_torch_references",
    "fp32_parity",
    "fp16_model",
]

PARITY_BATCHES = (1, 3)  # batch 1 and a batch > 1 that is no power of two


def parity_shapes(graph: nx.DiGraph) -> list[tuple[int, int, int, int]]:
    """The ``[N, C, H, W]`` of the parity inputs: :data:`PARITY_BATCHES` at the input size; a dynamic input
    adds batch 1 at its ``min`` and ``max`` sizes (each distinct size once)."""
    c, h, w = (int(v) for v in graph.graph["input_shape"])
    size_range = graph.graph.get("input_range")
    if not size_range:
        return [(n, c, h, w) for n in PARITY_BATCHES]
    (lh, lw), (hh, hw) = ((int(v) for v in size_range[key]) for key in ("min", "max"))
    shapes = [(1, c, lh, lw), *((n, c, h, w) for n in PARITY_BATCHES), (1, c, hh, hw)]
    return list(dict.fromkeys(shapes))


def parity_text(graph: nx.DiGraph) -> str:
    """What the fp32 gate runs, for the progress line: ``batch 1, 3`` or ``batch 1 at 128x128, ...``."""
    shapes = parity_shapes(graph)
    if not graph.graph.get("input_range"):
        return "batch " + ", ".join(str(s[0]) for s in shapes)
    return "batch " + ", ".join(f"{n} at {h}x{w}" for n, _, h, w in shapes)


def with_sizes(record: Any, inputs: list[np.ndarray], graph: nx.DiGraph) -> Any:
    """A dynamic model's parity record (a dict; a string says why it was not verified) with the ``sizes``
    ([H, W] per input batch) it was checked at; returns the record."""
    if isinstance(record, dict) and graph.graph.get("input_range"):
        record["sizes"] = [[int(d) for d in x.shape[2:]] for x in inputs]
    return record


def _parity_inputs(graph: nx.DiGraph) -> list[np.ndarray]:
    return [x for shape in parity_shapes(graph) for x in parity_inputs(shape[1:], shape[:1])]


def start_torch_references(
    module: nn.Module, graph: nx.DiGraph, options: BuildOptions
) -> tuple[list, Future[list]]:
    """The parity inputs (:func:`parity_shapes`) and the unrewritten eval module's outputs on them as a future,
    computed in a thread: PyTorch runs the reference (one thread, the GIL released in its kernels) while
    onnxruntime loads and runs the model beside it."""
    inputs = _parity_inputs(graph)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="densegraph-reference")
    try:
        return inputs, executor.submit(_module_outputs, module, inputs, options)
    finally:
        executor.shutdown(wait=False)


def fp32_parity(
    module: nn.Module, graph: nx.DiGraph, options: BuildOptions, path: Path
) -> tuple[list, list, dict]:
    """The fp32 gate: the model at ``path`` in onnxruntime against the module; returns the inputs, the
    references (for the fp16/int8 gates) and the parity record (a dynamic input's with its ``sizes``)."""
    inputs, reference = start_torch_references(module, graph, options)
    # onnxruntime on one thread too: the reference holds the other core meanwhile.
    parity = verify_outputs(path, inputs, reference, "fp32", threads=1)
    return inputs, reference.result(), with_sizes(parity, inputs, graph)


def _module_outputs(module: nn.Module, inputs: list, options: BuildOptions) -> list:
    import torch

    # One thread: the reference is a correctness check of a few GMACs. On an idle 2-core machine a second
    # thread saves ~0.6 s on densenet169; on a shared one PyTorch's OpenMP threads spin-wait for each other:
    # 38-40 s wall (12 s CPU) at 2 threads against 5.6-8.5 s (1.4-1.9 s CPU) at 1, measured side by side at
    # load 5-8 (docs/performance.md).
    with torch_threads(1), torch.inference_mode():
        references = []
        for x in inputs:
            out = module(torch.from_numpy(x))
            outputs = list(out.values()) if isinstance(out, dict) else [out]  # a features head's maps
            references.append(flat_outputs([o.numpy() for o in outputs]))
    if not all(np.all(np.isfinite(r)) for r in references):
        raise BuildError(
            "the PyTorch model's outputs are not finite (NaN or inf) on random inputs",
            hint="check the weights" if options.weights else None,
        )
    return references


def fp16_model(
    model: Any, inputs: list, references: list, path: Path, metadata: dict[str, str], graph: nx.DiGraph
) -> tuple[Any, dict, dict | str]:
    """Convert to fp16 and verify it where onnxruntime's CPU kernels run it; returns model, record, parity."""
    model16, record, parity = _fp16_model(model, inputs, references, path, metadata)
    return model16, record, with_sizes(parity, inputs, graph)


def _fp16_model(
    model: Any, inputs: list, references: list, path: Path, metadata: dict[str, str]
) -> tuple[Any, dict, dict | str]:
    model16, notes = fp16_from_onnx(model)
    set_metadata(model16, metadata)
    data = save_onnx(model16, path)
    record: dict[str, Any] = {
        "converter": "onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True)",
        "batchnorm": "BatchNormalization no conv absorbed -> depthwise 1x1 Conv computed in fp32, then cast",
        "warnings": notes,
    }
    runner = OnnxRuntimeRunner(data, description=f"{path} (onnxruntime)")
    try:
        runner.load()
    except ModelLoadError as exc:  # onnxruntime's CPU kernels do not cover every fp16 op on every build
        return model16, record, f"not verified: onnxruntime cannot run it here ({exc.reason})"
    with runner:
        return model16, record, verify_outputs(runner, inputs, references, "fp16")
