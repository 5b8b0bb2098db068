"""The ``tensorrt`` module, imported lazily: availability, feature detection and a recording logger.

Versions are told apart by what the module has, never by parsing ``__version__``:

- ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (10.0+): typed ONNX models build strongly typed.
- ``BuilderFlag.FP16``/``INT8`` (8.6 and 10.x; removed in 11): weak-typing precision flags.
- ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` without STRONGLY_TYPED (8.x): ``create_network(0)`` is an
  implicit-batch network there, which the ONNX parser refuses, so the flag must be passed.
- ``BuilderFlag.VERSION_COMPATIBLE`` and ``IExecutionContext.execute_async_v3`` mark the oldest supported
  release, TensorRT 8.6 (JetPack 6.0); anything older is refused with one line.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import DensegraphError
from . import cuda

__all__ = [
    "INSTALL_HINT",
    "MIN_TENSORRT",
    "SCRIPT_NAME",
    "TensorRTUnavailable",
    "Features",
    "features",
    "import_tensorrt",
    "tensorrt_installed",
    "recording_logger",
    "cache_calibrator",
    "enum_name",
    "DLA_HINT",
]

INSTALL_HINT = "pip install 'densegraph[gpu]'"
MIN_TENSORRT = "8.6"
SCRIPT_NAME = "build_engine.sh"
# Where DLA exists (NVIDIA's TensorRT 10.x/11.x release notes and "Working with DLA" pages, docs/tensorrt.md)
DLA_HINT = (
    "DLA is on Jetson AGX Orin and Orin NX with TensorRT 8.6-10.7 (JetPack 6.x), and on AGX Orin with "
    "TensorRT 11.4.1+ (JetPack 7.2.2+); Thor, Orin Nano, discrete GPUs and TensorRT 10.8-11.3 have none: "
    "build without --dla"
)

_log = logging.getLogger("densegraph.tensorrt")


class TensorRTUnavailable(DensegraphError):
    """TensorRT or a CUDA GPU is missing here: the ONNX and build script are kept, no engine is written."""


@dataclass(frozen=True)
class Features:
    """What the TensorRT at hand offers (see the module docstring)."""

    strongly_typed: bool
    precision_flags: bool
    explicit_batch_flag: bool

    @property
    def label(self) -> str:
        """The release family in words: TensorRT 8.6, 10.x or 11.x."""
        if not self.strongly_typed:
            return "8.6"
        return "10.x" if self.precision_flags else "11.x"


def features(trt: Any) -> Features:
    """Feature-detect the tensorrt module ``trt``."""
    strongly = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    return Features(
        strongly_typed=strongly,
        precision_flags=hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.BuilderFlag, "INT8"),
        explicit_batch_flag=hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and not strongly,
    )


def tensorrt_installed() -> bool:
    try:
        return importlib.util.find_spec("tensorrt") is not None
    except (ImportError, ValueError):
        return "tensorrt" in sys.modules


def _unavailable(missing: str, script: Path | None) -> TensorRTUnavailable:
    where = f"run {script} on the target device" if script else f"run {SCRIPT_NAME} on the target device"
    return TensorRTUnavailable(
        f"no TensorRT engine built: {missing}",
        hint=f"{INSTALL_HINT} on a machine with an NVIDIA GPU, or {where}",
    )


def import_tensorrt(script: Path | None = None) -> Any:
    """The tensorrt module, or TensorRTUnavailable saying what is missing (without a GPU: not imported).

    Refuses a TensorRT older than :data:`MIN_TENSORRT` (by feature, see the module docstring)."""
    if not cuda.cuda_available():
        missing = "no CUDA GPU is visible"
        if not tensorrt_installed():
            missing += " and the tensorrt Python package is not installed"
        raise _unavailable(missing, script)
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise _unavailable(f"the tensorrt Python package cannot be imported ({exc})", script) from None
    supported = hasattr(trt.BuilderFlag, "VERSION_COMPATIBLE") and hasattr(
        trt.IExecutionContext, "execute_async_v3"
    )
    if not supported:
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} is too old: densegraph needs TensorRT {MIN_TENSORRT} or newer",
            hint="JetPack 6.0 ships TensorRT 8.6; on a datacenter GPU pip install 'tensorrt>=10'",
        )
    return trt


def cache_calibrator(trt: Any, cache: bytes) -> Any:
    """An ``IInt8EntropyCalibrator2`` (the calibrator DLA requires) whose calibration cache is ``cache``: it
    has no data, so TensorRT takes every scale from the cache (a cache it refuses fails the build rather than
    calibrating on nothing). TensorRT 8.6-10.x; 11 has no calibrators."""
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise DensegraphError(
            f"TensorRT {trt.__version__} has no INT8 calibrators (implicit quantization)",
            hint="TensorRT 11 builds int8 from the Q/DQ ONNX strongly typed",
        )

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.cache = bytes(cache)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> None:
            return None  # no calibration data: the scales are the cache's

        def read_calibration_cache(self) -> bytes:
            return self.cache

        def write_calibration_cache(self, cache: Any) -> None:
            pass  # densegraph wrote the cache; TensorRT's copy of it adds nothing

    return CacheCalibrator()


def enum_name(value: Any) -> str:
    name = getattr(value, "name", None)
    return str(name) if name is not None else str(value).rsplit(".", 1)[-1]


def recording_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that keeps warnings and errors, so failures can be reported with TensorRT's words.

    ``errors()`` lists the errors since the last ``forget()``: a recovered failure (a timing cache for
    another GPU) must not be repeated in the message of a later, unrelated one."""
    severity = trt.ILogger.Severity
    labels = {severity.INTERNAL_ERROR: "internal error", severity.ERROR: "error", severity.WARNING: "warning"}

    class RecordingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, sev: Any, msg: str) -> None:
            label = labels.get(sev)
            _log.debug("TensorRT %s: %s", label or enum_name(sev).lower(), msg)
            if label is not None:
                self.messages.append((label, str(msg)))

        def errors(self) -> list[str]:
            return [m for label, m in self.messages if label != "warning"]

        def forget(self) -> None:
            self.messages.clear()

    return RecordingLogger()
