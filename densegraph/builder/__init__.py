"""Build a spec (and weights) into a verified ONNX model, optionally a TensorRT engine: :func:`build`.

Stages: graph (spec -> connection graph), lower (the PyTorch eval module: weights or seeded init; the numerical
reference), emit (the ONNX model emitted from the graph's op lists after the passes of
:mod:`densegraph.passes`, with the module's tensors: :mod:`densegraph.export.emit`), check (shapes, ONNX
checker), verify (onnxruntime against the unrewritten PyTorch eval module at batch 1 and 3), fp16 or quantize,
tile (opt-in, ``batch_tile``: the final model in a scan over batch tiles, checked against the untiled one and
for ``auto`` kept only if faster on this machine: :mod:`densegraph.export.tiling`), picture, card
(``MODEL.md``), and for
``target="tensorrt"`` the engine. Everything is written to a staging folder beside the output folder and
moved into place at the end: a failed build leaves nothing behind, a good build already in the folder survives
a failed rebuild, and a folder holding anything densegraph did not write is never replaced
(:class:`densegraph._output.BuildOutput`).

Progress goes to a callback (:class:`StageEvent`); nothing here prints. ``densegraph build`` (the CLI) builds
:class:`BuildOptions`, calls :func:`build_model` and prints the result.

The stages, one module each:

- :mod:`.options`       :class:`BuildOptions`, their checks, the graph passes a precision needs
- :mod:`.progress`      :class:`StageEvent` and the stage timer
- :mod:`.onnx_stage`    lower (the PyTorch reference), emit and check the fp32 ONNX, batch tiling
- :mod:`.parity_stage`  the PyTorch references and the fp16 model's gate
- :mod:`.int8_stage`    calibration data, quantization and the int8 gate
- :mod:`.engine_stage`  the TensorRT engine
- :mod:`.record`        the manifest
- :mod:`.result`        :class:`BuildResult`
- :mod:`.pipeline`      :func:`build` and :func:`build_model`, the stages in order
"""

from __future__ import annotations

from .._output import BuildOutput
from ..export.tiling import choose_batch_tile
from .int8_stage import INT8_EVAL_SAMPLES
from .options import BuildOptions
from .parity_stage import PARITY_BATCHES
from .pipeline import build, build_model
from .progress import StageEvent
from .result import BuildResult

__all__ = [
    "build",
    "build_model",
    "BuildOptions",
    "BuildResult",
    "StageEvent",
    "choose_batch_tile",
    "BuildOutput",
    "PARITY_BATCHES",
    "INT8_EVAL_SAMPLES",
]
