"""TensorRT backend: ONNX -> serialized engine + sidecar, a runner, verification, a portable build script.

The stages, one module each:

- :mod:`.onnx_info`  what the build needs to know about the ONNX (``inspect_onnx``)
- :mod:`.options`    ``EngineOptions`` and the precision plan (strong typing or weak-typing flags)
- :mod:`.trt_api`    the lazily imported ``tensorrt``: availability, feature detection, the logger
- :mod:`.cuda`       CUDA devices, memory and streams through cuda-python (torch only as a fallback)
- :mod:`.builder`    ``engine_from_onnx``
- :mod:`.sidecar`    ``model.engine.json`` and the compatibility check of a built engine
- :mod:`.trtexec`    the equivalent trtexec commands and ``build_engine.sh``
- :mod:`.runner`     ``EngineRunner``
- :mod:`.verify`     ``verify_engine`` (against onnxruntime) and ``bench_engine``
- :mod:`.pipeline`   ``build_engine`` (script, engine, verification) and ``engine_on_device`` (+ benchmark)

TensorRT 8.6 (JetPack 6.0), 10.x (JetPack 6.1/6.2, datacenter) and 11.x (strongly typed only) are told apart
by feature detection, never by version strings. ``tensorrt``, ``cuda`` and ``torch`` are imported inside
functions only, so importing this package (and every CPU path through it) loads none of them.
"""

from __future__ import annotations

from .builder import engine_from_onnx
from .onnx_info import OnnxInfo, inspect_onnx
from .options import DEFAULT_BATCH, PRECISIONS, EngineOptions, PrecisionPlan, precision_plan
from .pipeline import build_engine, engine_on_device
from .runner import EngineRunner
from .sidecar import check_engine_compat, read_sidecar, sidecar_path
from .trt_api import INSTALL_HINT, MIN_TENSORRT, SCRIPT_NAME, TensorRTUnavailable
from .trtexec import trtexec_command, trtexec_commands, write_build_script
from .verify import bench_engine, verify_engine

__all__ = [
    "PRECISIONS",
    "DEFAULT_BATCH",
    "INSTALL_HINT",
    "MIN_TENSORRT",
    "SCRIPT_NAME",
    "TensorRTUnavailable",
    "OnnxInfo",
    "inspect_onnx",
    "EngineOptions",
    "PrecisionPlan",
    "precision_plan",
    "engine_from_onnx",
    "trtexec_command",
    "trtexec_commands",
    "write_build_script",
    "build_engine",
    "engine_on_device",
    "read_sidecar",
    "sidecar_path",
    "check_engine_compat",
    "EngineRunner",
    "verify_engine",
    "bench_engine",
]
