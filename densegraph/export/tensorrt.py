"""TensorRT backend: ONNX -> serialized engine + sidecar, a runner, parity checks, a portable build script.

One code path serves TensorRT 10 (JetPack 6, DLA; weak typing still exists) and TensorRT 11 (strongly typed
only: FP16 comes from a typed fp16 ONNX, INT8 only from Q/DQ nodes). The choice is made by feature detection
(``hasattr(trt.BuilderFlag, "FP16")``), never by parsing version strings. ``tensorrt`` and ``torch`` are
imported inside functions only, so importing this module (and every CPU path through it) loads neither.

Engines do not move between GPUs or TensorRT versions, so every build also writes ``DIR/build_engine.sh``
(trtexec, else ``python -m densegraph engine``) that rebuilds the same engine on the target device.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .._io import check_regular, file_sha256, write_bytes_atomic
from ..errors import BuildError, DensegraphError

__all__ = [
    "PRECISIONS",
    "INSTALL_HINT",
    "TensorRTUnavailable",
    "OnnxInfo",
    "inspect_onnx",
    "EngineOptions",
    "PrecisionPlan",
    "precision_plan",
    "engine_from_onnx",
    "trtexec_command",
    "write_build_script",
    "build_engine",
    "read_sidecar",
    "sidecar_path",
    "check_engine_compat",
    "EngineRunner",
    "verify_engine",
    "bench_engine",
    "run_engine_command",
]

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_BATCH = (1, 8, 32)
INSTALL_HINT = "pip install 'densegraph[gpu]'"
SCRIPT_NAME = "build_engine.sh"
SIDECAR_FORMAT = "densegraph.engine/1"
# The device-side fallback of build_engine.sh: the `densegraph engine` subcommand (see run_engine_command).
PYTHON_ENTRY = ("-m", "densegraph", "engine")
# Version-compatible engines also run on these later major versions (TensorRT support matrix).
_CROSS_MAJOR_COMPAT = {(8, 10), (10, 11)}

_log = logging.getLogger("densegraph.tensorrt")

Progress = Callable[[str], None]


class TensorRTUnavailable(DensegraphError):
    """TensorRT or a CUDA GPU is missing here: the ONNX and build script are kept, no engine is written."""


# ---------------------------------------------------------------------------------------------------------
# the ONNX side: what the engine is built from


@dataclass(frozen=True)
class OnnxInfo:
    """What the engine build needs to know about an ONNX model (read without onnxruntime or TensorRT)."""

    path: str
    sha256: str
    input_name: str
    input_shape: tuple[int | str, ...]
    input_dtype: str
    output_names: tuple[str, ...]
    has_fp16: bool
    has_qdq: bool
    asymmetric_qdq: tuple[str, ...] = ()  # Q/DQ nodes with a uint8 or non-zero zero point
    batch_tile: int | None = None  # a CPU build's loop over batch tiles (passes.tile_batch), TensorRT-less

    @property
    def typed(self) -> bool:
        """Precision is carried by the graph itself (fp16 tensors or Q/DQ nodes): build strongly typed."""
        return self.has_fp16 or self.has_qdq

    @property
    def precision(self) -> str:
        """The precision this ONNX was exported for."""
        return "int8" if self.has_qdq else "fp16" if self.has_fp16 else "fp32"

    @property
    def chw(self) -> tuple[int, int, int]:
        c, h, w = self.input_shape[1:]
        assert isinstance(c, int) and isinstance(h, int) and isinstance(w, int)
        return c, h, w

    @property
    def static_batch(self) -> int | None:
        n = self.input_shape[0]
        return n if isinstance(n, int) and n > 0 else None


def inspect_onnx(onnx_path: str | os.PathLike[str]) -> OnnxInfo:
    """Read the input/output signature of an ONNX model and whether it is typed (fp16 or Q/DQ)."""
    import onnx
    import onnx.numpy_helper

    path = Path(onnx_path)
    if not path.is_file():
        raise DensegraphError(
            f"no ONNX model at {path}", path=str(path), hint="build it with `densegraph build`"
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types
        raise DensegraphError(f"not a readable ONNX model: {exc}", path=str(path)) from None
    from .passes import batch_tile_of, untile_batch

    tile = batch_tile_of(model)
    if tile is not None:  # describe the graph TensorRT will get
        model = untile_batch(model).model
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise DensegraphError(
            f"the engine needs exactly one input, the ONNX has {len(inputs)}: {[v.name for v in inputs]}",
            path=str(path),
        )
    tensor_type = inputs[0].type.tensor_type
    dims: list[int | str] = []
    for d in tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise DensegraphError(
            f"input {inputs[0].name!r} must be [N, C, H, W] with static C, H, W; it is {dims}", path=str(path)
        )
    fp16 = onnx.TensorProto.FLOAT16
    has_fp16 = (
        any(t.data_type == fp16 for t in graph.initializer)
        or any(v.type.tensor_type.elem_type == fp16 for v in (*graph.value_info, *graph.input, *graph.output))
        or any(
            n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute)
            for n in graph.node
        )
    )
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    zero_points = {t.name: t for t in graph.initializer}
    asymmetric = []
    for node in qdq:
        zp = zero_points.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp is not None and (
            zp.data_type == onnx.TensorProto.UINT8 or onnx.numpy_helper.to_array(zp).any()
        ):
            asymmetric.append(node.name or node.output[0])
    return OnnxInfo(
        path=str(path),
        sha256=file_sha256(path),
        input_name=inputs[0].name,
        input_shape=tuple(dims),
        input_dtype=onnx.TensorProto.DataType.Name(tensor_type.elem_type).lower(),
        output_names=tuple(o.name for o in graph.output),
        has_fp16=has_fp16,
        has_qdq=bool(qdq),
        asymmetric_qdq=tuple(asymmetric),
        batch_tile=tile,
    )


# ---------------------------------------------------------------------------------------------------------
# options and the precision plan


@dataclass
class EngineOptions:
    """How to build an engine. ``input_name``/``input_chw`` come from the ONNX (:meth:`with_onnx`)."""

    precision: str = "fp32"
    batch: tuple[int, int, int] = DEFAULT_BATCH
    workspace_gib: float | None = None
    dla_core: int | None = None
    timing_cache: str | os.PathLike[str] | None = None
    hardware_compat: bool = False
    version_compat: bool = False
    input_name: str = "images"
    input_chw: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise DensegraphError(
                f"unknown precision {self.precision!r}", hint=f"one of {', '.join(PRECISIONS)}"
            )
        self.batch = tuple(int(b) for b in self.batch)  # type: ignore[assignment]
        if len(self.batch) != 3 or not 0 < self.batch[0] <= self.batch[1] <= self.batch[2]:
            raise DensegraphError(
                f"batch range must be MIN:OPT:MAX with 0 < MIN <= OPT <= MAX, got {self.batch}"
            )
        if self.workspace_gib is not None and not self.workspace_gib > 0:
            raise DensegraphError(f"workspace must be a positive number of GiB, got {self.workspace_gib}")
        if self.dla_core is not None:
            if self.dla_core < 0:
                raise DensegraphError(f"DLA core must be >= 0, got {self.dla_core}")
            if self.precision == "fp32":
                raise DensegraphError(
                    "DLA runs only FP16 and INT8 layers", hint="build with --precision fp16 or int8 for --dla"
                )
            if self.hardware_compat:
                raise DensegraphError(
                    "hardware-compatible engines cannot use DLA", hint="drop one of the two"
                )

    def with_onnx(self, info: OnnxInfo) -> EngineOptions:
        """These options with the input name and C, H, W of ``info``; checks a static batch fits."""
        static = info.static_batch
        if static is not None and self.profile_batches() != (static, static, static):
            raise DensegraphError(
                f"the ONNX input has a fixed batch of {static}, but the batch range is {self.batch}",
                path=info.path,
                hint=f"export with a dynamic batch, or pass --batch {static}:{static}:{static}",
            )
        return replace(self, input_name=info.input_name, input_chw=info.chw)

    def profile_batches(self) -> tuple[int, int, int]:
        """(min, opt, max) batch of the optimization profile; DLA needs static shapes, at the opt batch."""
        if self.dla_core is not None:
            return (self.batch[1],) * 3
        return self.batch

    def profile_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """The (min, opt, max) NCHW shapes of the input."""
        if self.input_chw is None:
            raise ValueError("input_chw is unknown: call with_onnx() first")
        lo, opt, hi = self.profile_batches()
        return (lo, *self.input_chw), (opt, *self.input_chw), (hi, *self.input_chw)


@dataclass(frozen=True)
class PrecisionPlan:
    """How a precision is realised: a strongly typed network, or (TensorRT 10 only) weak-typing flags."""

    strongly_typed: bool
    builder_flags: tuple[str, ...] = ()  # BuilderFlag member names, only where the module has them
    tf32: bool = True


def precision_plan(precision: str, info: OnnxInfo, *, legacy_flags: bool, dla: bool) -> PrecisionPlan:
    """Choose strong typing or weak-typing builder flags for ``precision`` on this ONNX.

    ``legacy_flags`` says the TensorRT at hand still has ``BuilderFlag.FP16``/``INT8`` (TensorRT 10). Typed
    ONNX models build strongly typed, except for DLA on TensorRT 10, which takes the precision flags.
    """
    hint_export = "`densegraph build SPEC --precision {p}` writes a matching ONNX"
    if precision == "fp32":
        if info.typed:
            raise BuildError(
                f"this ONNX is {info.precision}-typed but fp32 was asked for",
                path=info.path,
                hint=f"pass --precision {info.precision}",
            )
        # fp32 means fp32: TF32 convolutions would miss the 1e-3 parity bar.
        return PrecisionPlan(strongly_typed=False, tf32=False)
    if precision == "fp16":
        if info.has_qdq:
            raise BuildError(
                "this ONNX is int8 (Q/DQ) but fp16 was asked for",
                path=info.path,
                hint="pass --precision int8",
            )
        if info.has_fp16:
            if legacy_flags and dla:
                return PrecisionPlan(strongly_typed=False, builder_flags=("FP16",))
            return PrecisionPlan(strongly_typed=True)
        if legacy_flags:
            return PrecisionPlan(strongly_typed=False, builder_flags=("FP16",))
        raise BuildError(
            "this TensorRT is strongly typed only (no FP16 builder flag): fp16 needs an fp16-typed ONNX, "
            "this one is fp32",
            path=info.path,
            hint=hint_export.format(p="fp16"),
        )
    if not info.has_qdq:
        raise BuildError(
            "int8 needs a Q/DQ (QuantizeLinear/DequantizeLinear) ONNX; calibrators are not used",
            path=info.path,
            hint=hint_export.format(p="int8"),
        )
    if info.asymmetric_qdq:
        names = ", ".join(info.asymmetric_qdq[:3]) + (", ..." if len(info.asymmetric_qdq) > 3 else "")
        raise BuildError(
            f"TensorRT takes symmetric int8 Q/DQ only (int8 zero point 0); "
            f"{len(info.asymmetric_qdq)} node(s) are not: {names}",
            path=info.path,
            hint="quantize to signed int8 with symmetric activations (onnxruntime: ActivationSymmetric)",
        )
    if legacy_flags and dla:
        return PrecisionPlan(strongly_typed=False, builder_flags=("INT8", "FP16"))
    return PrecisionPlan(strongly_typed=True)


# ---------------------------------------------------------------------------------------------------------
# TensorRT and CUDA availability (lazy)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _gpu_info(device: int = 0) -> dict[str, str]:
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return {"name": str(torch.cuda.get_device_name(device)), "compute_capability": f"{major}.{minor}"}


def _tensorrt_installed() -> bool:
    import importlib.util

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


def _import_tensorrt(script: Path | None = None) -> Any:
    """The tensorrt module, or TensorRTUnavailable saying what is missing (without a GPU: not imported)."""
    if not _cuda_available():
        missing = "no CUDA GPU is visible"
        if not _tensorrt_installed():
            missing += " and the tensorrt Python package is not installed"
        raise _unavailable(missing, script)
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise _unavailable(f"the tensorrt Python package cannot be imported ({exc})", script) from None
    return trt


def _has_legacy_precision_flags(trt: Any) -> bool:
    """TensorRT 10 still has the weak-typing precision flags; TensorRT 11 removed them."""
    return hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.BuilderFlag, "INT8")


def _enum_name(value: Any) -> str:
    name = getattr(value, "name", None)
    return str(name) if name is not None else str(value).rsplit(".", 1)[-1]


def _recording_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that keeps warnings and errors, so failures can be reported with TensorRT's words."""
    severity = trt.ILogger.Severity
    labels = {severity.INTERNAL_ERROR: "internal error", severity.ERROR: "error", severity.WARNING: "warning"}

    class RecordingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, sev: Any, msg: str) -> None:
            label = labels.get(sev)
            _log.debug("TensorRT %s: %s", label or _enum_name(sev).lower(), msg)
            if label is not None:
                self.messages.append((label, str(msg)))

        def errors(self) -> list[str]:
            return [m for label, m in self.messages if label != "warning"]

    return RecordingLogger()


# ---------------------------------------------------------------------------------------------------------
# atomic files


def _atomic_write(path: Path, data: bytes | memoryview | Any, *, mode: int = 0o644) -> None:
    """Write ``data`` (anything with the buffer protocol) to ``path`` via a temp file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data, mode=mode)


def _atomic_write_json(path: Path, obj: dict[str, Any]) -> None:
    _atomic_write(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def sidecar_path(engine_path: str | os.PathLike[str]) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def read_sidecar(engine_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar of an engine, or None when there is none (e.g. built by trtexec)."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DensegraphError(f"unreadable engine sidecar: {exc}", path=str(path)) from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise DensegraphError("not a densegraph engine sidecar", path=str(path))
    return data


# ---------------------------------------------------------------------------------------------------------
# building


def _dims(shape: Any) -> list[int]:
    return [int(d) for d in shape]


def _network_io(network: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    inputs = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        inputs.append({"name": tensor.name, "shape": _dims(tensor.shape), "dtype": _enum_name(tensor.dtype)})
    outputs = []
    for i in range(network.num_outputs):
        tensor = network.get_output(i)
        outputs.append({"name": tensor.name, "shape": _dims(tensor.shape), "dtype": _enum_name(tensor.dtype)})
    return inputs, outputs


def _parser_errors(parser: Any) -> list[str]:
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = int(err.node())
        # node_name/node_operator are newer than some TensorRT 10 releases on JetPack
        name_of = getattr(err, "node_name", None)
        op_of = getattr(err, "node_operator", None)
        detail = ", ".join(s for s in (name_of() if name_of else "", op_of() if op_of else "") if s)
        where = f"node {node}" if node >= 0 else "model"
        if detail:
            where += f" ({detail})"
        lines.append(f"{where}: {_enum_name(err.code())}: {err.desc()}")
    return lines


def _load_timing_cache(config: Any, path: Path | None, progress: Progress) -> None:
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = None
    try:
        cache = config.create_timing_cache(data)
        ok = cache is not None and config.set_timing_cache(cache, ignore_mismatch=False)
    except Exception:  # a corrupt cache file raises from the bindings
        ok = False
    if not ok:
        if data:
            progress(f"timing cache {path} is for another GPU or TensorRT version; starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)


def engine_from_onnx(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    options: EngineOptions,
    *,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Build ``engine_path`` (raw serialized engine, written atomically) and its ``.json`` sidecar.

    Returns the sidecar dict. Raises TensorRTUnavailable without TensorRT or a GPU, BuildError when the
    parser or the builder fails (with every parser error and its node, or the logger's error messages).
    """
    say = progress or (lambda _msg: None)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    info = inspect_onnx(onnx_path)
    if info.batch_tile is not None:
        raise BuildError(
            f"the model is batch-tiled for onnxruntime on the CPU (tiles of {info.batch_tile}); "
            "TensorRT takes the whole batch",
            path=str(onnx_path),
            hint="use build_engine() or `densegraph engine`, which untile it, or build with --batch-tile off",
        )
    options = options.with_onnx(info)
    trt = _import_tensorrt()
    gpu = _gpu_info()
    legacy = _has_legacy_precision_flags(trt)
    dla = options.dla_core is not None
    plan = precision_plan(options.precision, info, legacy_flags=legacy, dla=dla)
    if options.hardware_compat and tuple(map(int, gpu["compute_capability"].split("."))) < (8, 0):
        raise BuildError(
            f"hardware-compatible engines need an Ampere or newer GPU to build on, not {gpu['name']}"
        )

    logger = _recording_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if plan.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    say(f"parsing {onnx_path}")
    if not parser.parse_from_file(str(onnx_path)):
        errors = _parser_errors(parser) or logger.errors() or ["no error was reported"]
        raise BuildError(
            f"TensorRT's ONNX parser rejected the model ({len(errors)} error(s)): " + "; ".join(errors),
            path=str(onnx_path),
        )
    inputs, outputs = _network_io(network)
    if [t["name"] for t in inputs] != [options.input_name]:
        raise BuildError(f"parsed network inputs {[t['name'] for t in inputs]} != [{options.input_name!r}]")

    config = builder.create_builder_config()
    if options.workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    shape_min, shape_opt, shape_max = options.profile_shapes()
    profile.set_shape(options.input_name, shape_min, shape_opt, shape_max)
    if config.add_optimization_profile(profile) < 0:
        raise BuildError(f"invalid optimization profile {shape_min} / {shape_opt} / {shape_max}")
    for name in plan.builder_flags:
        # only reached where _has_legacy_precision_flags(trt) held (precision_plan's legacy_flags)
        config.set_flag(getattr(trt.BuilderFlag, name))
    if not plan.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if options.dla_core is not None:
        cores = int(builder.num_DLA_cores)
        if options.dla_core >= cores:
            raise BuildError(f"DLA core {options.dla_core} asked for, this device has {cores} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if options.hardware_compat:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if options.version_compat:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    cache_path = Path(options.timing_cache) if options.timing_cache is not None else None
    if cache_path is not None:
        _load_timing_cache(config, cache_path, say)

    say(f"building the {options.precision} engine (TensorRT {trt.__version__}, {gpu['name']})")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        errors = logger.errors() or ["no error was logged"]
        raise BuildError("TensorRT could not build the engine: " + "; ".join(errors), path=str(onnx_path))
    if cache_path is not None:
        cache = config.get_timing_cache()
        if cache is not None:
            _atomic_write(cache_path, cache.serialize())
    # the raw plan, nothing prepended: trtexec and any TensorRT runtime must load this file as is
    _atomic_write(engine_path, serialized)

    sidecar: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "engine": engine_path.name,
        "engine_sha256": file_sha256(engine_path),
        "engine_bytes": engine_path.stat().st_size,
        "onnx": onnx_path.name,
        "onnx_sha256": info.sha256,
        "tensorrt_version": str(trt.__version__),
        "gpu": gpu,
        "precision": options.precision,
        "strongly_typed": plan.strongly_typed,
        "builder_flags": list(plan.builder_flags),
        "tf32": plan.tf32,
        "profiles": [
            {
                "input": options.input_name,
                "min": list(shape_min),
                "opt": list(shape_opt),
                "max": list(shape_max),
            }
        ],
        "inputs": inputs,
        "outputs": outputs,
        "workspace_gib": options.workspace_gib,
        "dla_core": options.dla_core,
        "hardware_compat": "ampere+" if options.hardware_compat else None,
        "version_compatible": options.version_compat,
        "timing_cache": str(cache_path) if cache_path is not None else None,
        "build_seconds": round(seconds, 3),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "trtexec_command": trtexec_command(onnx_path, engine_path, options, legacy_flags=legacy, info=info),
    }
    _atomic_write_json(sidecar_path(engine_path), sidecar)
    say(f"wrote {engine_path} ({sidecar['engine_bytes'] / 2**20:.1f} MiB) in {seconds:.1f} s")
    return sidecar


# ---------------------------------------------------------------------------------------------------------
# trtexec and the build script


def _shape_arg(name: str, shape: Sequence[int]) -> str:
    return f"{name}:{'x'.join(str(d) for d in shape)}"


def _trtexec_args(
    onnx: str, engine: str, options: EngineOptions, plan: PrecisionPlan, *, timing_cache: str | None
) -> list[str]:
    shape_min, shape_opt, shape_max = options.profile_shapes()
    args = [
        f"--onnx={onnx}",
        f"--saveEngine={engine}",
        f"--minShapes={_shape_arg(options.input_name, shape_min)}",
        f"--optShapes={_shape_arg(options.input_name, shape_opt)}",
        f"--maxShapes={_shape_arg(options.input_name, shape_max)}",
    ]
    if options.workspace_gib is not None:
        args.append(f"--memPoolSize=workspace:{max(1, round(options.workspace_gib * 1024))}M")
    if plan.strongly_typed:
        args.append("--stronglyTyped")  # opt-in on TensorRT 10, accepted (always on) on 11
    args += [{"FP16": "--fp16", "INT8": "--int8"}[f] for f in plan.builder_flags]
    if not plan.tf32:
        args.append("--noTF32")
    if options.dla_core is not None:
        args += [f"--useDLACore={options.dla_core}", "--allowGPUFallback"]
    if options.hardware_compat:
        args.append("--hardwareCompatibilityLevel=ampere+")
    if options.version_compat:
        args.append("--versionCompatible")
    if timing_cache is not None:
        args.append(f"--timingCacheFile={timing_cache}")
    args.append("--skipInference")
    return args


def trtexec_command(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    options: EngineOptions,
    *,
    legacy_flags: bool | None = None,
    info: OnnxInfo | None = None,
) -> str:
    """The trtexec command line that builds the same engine.

    ``legacy_flags``: whether the target trtexec has ``--fp16``/``--int8`` (TensorRT 10). None guesses
    without importing tensorrt: TensorRT 10 for DLA builds and for fp16 from an fp32 ONNX, else strongly
    typed (valid on 10 and 11).
    """
    info = info or inspect_onnx(onnx_path)
    options = options.with_onnx(info)
    if legacy_flags is None:
        legacy_flags = options.dla_core is not None or (options.precision == "fp16" and not info.has_fp16)
    plan = precision_plan(
        options.precision, info, legacy_flags=legacy_flags, dla=options.dla_core is not None
    )
    cache = str(options.timing_cache) if options.timing_cache is not None else None
    return shlex.join(
        ["trtexec", *_trtexec_args(str(onnx_path), str(engine_path), options, plan, timing_cache=cache)]
    )


def _python_args(onnx: str, engine: str, options: EngineOptions, timing_cache: str | None) -> list[str]:
    lo, opt, hi = options.batch
    args = [
        *PYTHON_ENTRY,
        onnx,
        "-o",
        engine,
        "--precision",
        options.precision,
        "--batch",
        f"{lo}:{opt}:{hi}",
    ]
    if options.workspace_gib is not None:
        args += ["--workspace", f"{options.workspace_gib:g}"]
    if options.dla_core is not None:
        args += ["--dla", str(options.dla_core)]
    if timing_cache is not None:
        args += ["--timing-cache", timing_cache]
    if options.hardware_compat:
        args.append("--hardware-compat")
    if options.version_compat:
        args.append("--version-compat")
    return args


_SCRIPT = """\
#!/usr/bin/env bash
# Builds {engine} from {onnx} on this machine: TensorRT engines do not move between GPUs or TensorRT versions.
# Written by densegraph: precision {precision}, batch {batch}{extra}.
# Uses trtexec when found (TRTEXEC=/path/to/trtexec to choose one), else `python3 -m densegraph engine`
# (PYTHON=... to choose the interpreter), which also verifies the engine and writes {sidecar}.
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC=${{TRTEXEC:-$(command -v trtexec || true)}}
if [ -z "$TRTEXEC" ] && [ -x /usr/src/tensorrt/bin/trtexec ]; then
  TRTEXEC=/usr/src/tensorrt/bin/trtexec  # JetPack
fi
if [ -n "$TRTEXEC" ]; then
  rm -f {sidecar_q}  # it would describe an engine from another machine
  # feature test, not a version check: TensorRT 10 still lists the weak-typing precision flags
  usage=$("$TRTEXEC" --help 2>&1 || true)
  if grep -qE '^[[:space:]]*--fp16([[:space:]]|$)' <<<"$usage"; then
    {legacy}
  else
    {strong}
  fi
fi
exec "${{PYTHON:-python3}}" {python} "$@"
"""


def _script_branch(args: list[str] | str) -> str:
    if isinstance(args, str):  # an error message: this TensorRT cannot build that engine
        return f"echo {shlex.quote(args)} >&2; exit 2"
    return 'exec "$TRTEXEC" ' + " ".join(shlex.quote(a) for a in args) + ' "$@"'


def write_build_script(
    out_dir: str | os.PathLike[str],
    onnx_name: str,
    engine_name: str,
    options: EngineOptions,
    *,
    info: OnnxInfo | None = None,
) -> Path:
    """Write ``out_dir/build_engine.sh`` (executable, atomically): rebuilds ``engine_name`` from the ONNX."""
    out = Path(out_dir)
    info = info or inspect_onnx(out / onnx_name)
    options = options.with_onnx(info)
    cache = Path(options.timing_cache).name if options.timing_cache is not None else None
    dla = options.dla_core is not None
    branches: list[list[str] | str] = []
    errors: list[DensegraphError] = []
    for legacy in (True, False):
        try:
            plan = precision_plan(options.precision, info, legacy_flags=legacy, dla=dla)
        except DensegraphError as exc:
            errors.append(exc)
            branches.append(f"{SCRIPT_NAME}: {exc.message} ({exc.hint})" if exc.hint else exc.message)
            continue
        branches.append(_trtexec_args(onnx_name, engine_name, options, plan, timing_cache=cache))
    if len(errors) == 2:  # no TensorRT can build this: say so now, write no script
        raise errors[0]
    extra = f", DLA core {options.dla_core}" if dla else ""
    extra += ", hardware-compatible (ampere+)" if options.hardware_compat else ""
    lo, opt, hi = options.profile_batches()
    text = _SCRIPT.format(
        engine=engine_name,
        onnx=onnx_name,
        precision=options.precision,
        batch=f"{lo}:{opt}:{hi}",
        extra=extra,
        sidecar=sidecar_path(engine_name).name,
        sidecar_q=shlex.quote(sidecar_path(engine_name).name),
        legacy=_script_branch(branches[0]),
        strong=_script_branch(branches[1]),
        python=" ".join(shlex.quote(a) for a in _python_args(onnx_name, engine_name, options, cache)),
    )
    path = out / SCRIPT_NAME
    _atomic_write(path, text.encode(), mode=0o755)
    return path


# ---------------------------------------------------------------------------------------------------------
# the top level


def build_engine(
    onnx_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: EngineOptions,
    *,
    verify: bool = True,
    progress: Progress | None = None,
    engine_name: str | None = None,
    write_script: bool = True,
) -> dict[str, Any]:
    """Build ``out_dir/<model>.engine`` from an ONNX: script and trtexec command first, then engine + sidecar.

    Always writes ``build_engine.sh`` (unless ``write_script`` is False) and reports the equivalent trtexec
    command through ``progress``; then raises TensorRTUnavailable if TensorRT or a GPU is missing (the ONNX
    and the script stay), else builds, verifies against onnxruntime on random batches across the batch range
    and records the result in the sidecar. Returns the sidecar dict plus ``engine_path`` and ``script``.
    """
    say = progress or (lambda _msg: None)
    onnx_path, out = Path(onnx_path), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = inspect_onnx(onnx_path)
    engine_path = out / (engine_name or onnx_path.with_suffix(".engine").name)
    if not write_script:  # on the device itself: say and write nothing before knowing TensorRT is there
        _import_tensorrt()
    if info.batch_tile is not None:
        onnx_path = _untiled_copy(onnx_path, out)
        say(f"{onnx_path.name}: the whole-batch graph of the batch-tiled model, for TensorRT")
        info = inspect_onnx(onnx_path)
    options = options.with_onnx(info)
    script: Path | None = None
    if write_script:
        if onnx_path.resolve().parent != out.resolve():  # the folder must be self-contained for the device
            local = out / onnx_path.name
            shutil.copyfile(onnx_path, local)
            onnx_path = local
        script = write_build_script(out, onnx_path.name, engine_path.name, options, info=info)
        say(f"wrote {script}")
    say("equivalent trtexec command: " + trtexec_command(onnx_path, engine_path, options, info=info))
    _import_tensorrt(script)  # fail before any work, naming the script to run on the device

    sidecar = engine_from_onnx(onnx_path, engine_path, options, progress=say)
    if verify:
        lo, opt, hi = options.profile_batches()
        rng = np.random.default_rng(0)
        inputs = [rng.standard_normal((n, *info.chw), dtype=np.float32) for n in sorted({lo, opt, hi})]
        with EngineRunner(engine_path) as runner:
            result = verify_engine(runner, onnx_path, options.precision, inputs)
        sidecar["verification"] = result
        _atomic_write_json(sidecar_path(engine_path), sidecar)
        say(f"verification against onnxruntime: {result['summary']}")
        if not result["passed"]:
            raise BuildError(
                f"the engine disagrees with onnxruntime: {result['summary']}",
                path=str(engine_path),
                hint=f"details in {sidecar_path(engine_path).name}",
            )
    return {**sidecar, "engine_path": str(engine_path), "script": str(script) if script else None}


def _untiled_copy(onnx_path: Path, out: Path) -> Path:
    """Write ``out/<stem>.whole-batch.onnx``: ``onnx_path`` without its batch-tiling loop."""
    import onnx

    from .passes import untile_batch

    model = untile_batch(onnx.load(str(onnx_path))).model
    target = out / f"{onnx_path.stem}.whole-batch.onnx"
    _atomic_write(target, model.SerializeToString(deterministic=True))
    return target


def run_engine_command(args: argparse.Namespace) -> int:
    """``densegraph engine MODEL.onnx -o MODEL.engine ...``: build (and verify) an engine on this device."""
    precision = args.precision or inspect_onnx(args.onnx).precision
    options = EngineOptions(
        precision=precision,
        batch=tuple(args.batch),
        workspace_gib=args.workspace,
        dla_core=args.dla,
        timing_cache=args.timing_cache,
        hardware_compat=bool(args.hardware_compat),
        version_compat=bool(getattr(args, "version_compat", False)),
    )
    engine_file = Path(args.output)
    result = build_engine(
        args.onnx,
        engine_file.parent,
        options,
        verify=not args.no_verify,
        progress=lambda msg: print(msg, file=sys.stderr),
        engine_name=engine_file.name,
        write_script=False,
    )
    print(
        f"{result['engine_path']}: {result['precision']}, TensorRT {result['tensorrt_version']}, "
        f"{result['gpu']['name']} (sm {result['gpu']['compute_capability']})"
    )
    return 0


# ---------------------------------------------------------------------------------------------------------
# running


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in str(version).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_engine_compat(
    sidecar: dict[str, Any], trt_version: str, compute_capability: str, *, path: str = ""
) -> None:
    """Refuse an engine built for another TensorRT or GPU, unless it was built version/hardware compatible."""
    built_version = str(sidecar.get("tensorrt_version", ""))
    rebuild = f"rebuild it here with {SCRIPT_NAME} (next to model.onnx)"
    if built_version != str(trt_version):
        built, here = _version_tuple(built_version), _version_tuple(trt_version)
        ok = (
            bool(sidecar.get("version_compatible"))
            and here >= built
            and bool(built)
            and (here[0] == built[0] or (built[0], here[0]) in _CROSS_MAJOR_COMPAT)
        )
        if not ok:
            raise DensegraphError(
                f"engine built with TensorRT {built_version}, this is TensorRT {trt_version}",
                path=path,
                hint=rebuild,
            )
    built_cc = str(sidecar.get("gpu", {}).get("compute_capability", ""))
    if built_cc != str(compute_capability):
        ok = sidecar.get("hardware_compat") == "ampere+" and _version_tuple(compute_capability) >= (8, 0)
        if not ok:
            name = sidecar.get("gpu", {}).get("name", "another GPU")
            raise DensegraphError(
                f"engine built for compute capability {built_cc} ({name}), this GPU is {compute_capability}",
                path=path,
                hint=rebuild,
            )


class _TorchCudaDevice:
    """The CUDA device and the torch stream the runner enqueues on (torch owns all device memory)."""

    def __init__(self, index: int) -> None:
        import torch

        self.device = torch.device("cuda", index)
        torch.cuda.set_device(self.device)  # TensorRT allocates on the current device
        self.stream = torch.cuda.Stream(device=self.device)

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Enqueue on the runner's stream, after whatever the caller's stream has queued (e.g. the input)."""
        import torch

        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            yield

    def synchronize(self) -> None:
        self.stream.synchronize()

    def hand_over(self, result: Any) -> Any:
        """Mark a result as used by the caller's stream, so the allocator does not recycle it early."""
        import torch

        result.record_stream(torch.cuda.current_stream(self.device))
        return result


@dataclass(frozen=True)
class _Tensor:
    name: str
    dtype: Any  # torch.dtype
    shape: tuple[int, ...]


def _torch_dtypes(trt: Any) -> dict[Any, Any]:
    import torch

    return {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.BF16: torch.bfloat16,
        trt.DataType.INT8: torch.int8,
        trt.DataType.UINT8: torch.uint8,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool,
    }


class EngineRunner:
    """Runs a serialized engine on numpy or torch batches of ``[N, C, H, W]``; returns logits.

    numpy in -> numpy out (host); torch in -> torch out (on the input's device if CUDA). Batches larger than
    the profile's max are split, smaller than its min (static DLA shapes) are zero-padded.
    """

    def __init__(self, path: str | os.PathLike[str], *, check_compat: bool = True, device: int = 0) -> None:
        """Load ``path`` on CUDA device ``device`` (made the current device); ``check_compat`` compares the
        sidecar's TensorRT version and compute capability with this machine's first."""
        self.path = Path(path)
        check_regular(self.path, what="TensorRT engine", missing_hint="check the path to the engine")
        self.sidecar = read_sidecar(self.path)
        data = self.path.read_bytes()
        if self.sidecar is not None and self.sidecar.get("engine_sha256") != hashlib.sha256(data).hexdigest():
            _log.warning(
                "%s does not describe %s (rebuilt elsewhere?); ignoring it",
                sidecar_path(self.path),
                self.path,
            )
            self.sidecar = None
        trt = _import_tensorrt()
        if check_compat and self.sidecar is not None:
            check_engine_compat(
                self.sidecar, trt.__version__, _gpu_info(device)["compute_capability"], path=str(self.path)
            )
        self._cuda = self._open_device(device)  # torch first, so TensorRT shares its CUDA context
        self._logger = _recording_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        if self.sidecar is not None and self.sidecar.get("version_compatible"):
            self._runtime.engine_host_code_allowed = True  # version-compatible plans embed the lean runtime
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            errors = "; ".join(self._logger.errors()) or "no error was logged"
            raise DensegraphError(
                f"TensorRT {trt.__version__} cannot load this engine: {errors}",
                path=str(self.path),
                hint=f"engines are tied to a GPU and TensorRT version; rebuild with {SCRIPT_NAME}",
            )
        self._engine = engine
        dtypes = _torch_dtypes(trt)
        self.inputs: list[_Tensor] = []
        self.outputs: list[_Tensor] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            trt_dtype = engine.get_tensor_dtype(name)
            if trt_dtype not in dtypes:
                raise DensegraphError(f"engine tensor {name!r} has unsupported type {_enum_name(trt_dtype)}")
            tensor = _Tensor(name, dtypes[trt_dtype], tuple(_dims(engine.get_tensor_shape(name))))
            (self.inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else self.outputs).append(
                tensor
            )
        if len(self.inputs) != 1 or not self.outputs:
            raise DensegraphError(
                f"expected one input and at least one output, the engine has {len(self.inputs)} and "
                f"{len(self.outputs)}",
                path=str(self.path),
            )
        shape_min, _, shape_max = (_dims(s) for s in engine.get_tensor_profile_shape(self.input_name, 0))
        self.batch_range = (shape_min[0], shape_max[0])
        context = engine.create_execution_context()
        if context is None:
            raise DensegraphError("TensorRT could not create an execution context (out of GPU memory?)")
        self._context = context

    @staticmethod
    def _open_device(index: int) -> Any:
        return _TorchCudaDevice(index)

    @property
    def device(self) -> Any:
        """The torch device the engine runs on."""
        return self._cuda.device

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def input_chw(self) -> tuple[int, ...]:
        return self.inputs[0].shape[1:]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def precision(self) -> str | None:
        return self.sidecar.get("precision") if self.sidecar else None

    def __enter__(self) -> EngineRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the context, engine and runtime (in that order)."""
        for attr in ("_context", "_engine", "_runtime"):
            if hasattr(self, attr):
                delattr(self, attr)

    def _chunks(self, n: int) -> Iterator[tuple[int, int]]:
        hi = self.batch_range[1]
        for start in range(0, n, hi):
            yield start, min(n, start + hi)

    def _run(self, x: Any) -> dict[str, Any]:
        import torch

        lo, _ = self.batch_range
        inp = self.inputs[0]
        n = int(x.shape[0])
        pieces: dict[str, list[Any]] = {t.name: [] for t in self.outputs}
        keep: list[Any] = []  # device buffers must outlive the enqueued work
        context = self._context
        with self._cuda.scope():
            for start, stop in self._chunks(n):
                chunk = x[start:stop].to(self._cuda.device, dtype=inp.dtype, non_blocking=True)
                if chunk.shape[0] < lo:
                    pad = torch.zeros(
                        (lo - chunk.shape[0], *chunk.shape[1:]), dtype=chunk.dtype, device=chunk.device
                    )
                    chunk = torch.cat([chunk, pad])
                chunk = chunk.contiguous()
                if not context.set_input_shape(inp.name, tuple(chunk.shape)):
                    raise DensegraphError(
                        f"TensorRT rejected input shape {tuple(chunk.shape)} for {inp.name!r}"
                    )
                if not context.set_tensor_address(inp.name, chunk.data_ptr()):
                    raise DensegraphError(f"TensorRT rejected the address of {inp.name!r}")
                keep.append(chunk)
                for out in self.outputs:
                    shape = tuple(_dims(context.get_tensor_shape(out.name)))
                    if any(d < 0 for d in shape):
                        raise DensegraphError(f"output {out.name!r} has unresolved shape {shape}")
                    buf = torch.empty(shape, dtype=out.dtype, device=self._cuda.device)
                    if not context.set_tensor_address(out.name, buf.data_ptr()):
                        raise DensegraphError(f"TensorRT rejected the address of {out.name!r}")
                    keep.append(buf)
                    pieces[out.name].append(buf[: stop - start])
                if not context.execute_async_v3(self._cuda.stream_handle):
                    errors = "; ".join(self._logger.errors()) or "no error was logged"
                    raise DensegraphError(f"TensorRT inference failed: {errors}", path=str(self.path))
        self._cuda.synchronize()
        return {name: torch.cat(bufs) if len(bufs) > 1 else bufs[0] for name, bufs in pieces.items()}

    def __call__(self, x: Any) -> Any:
        """Logits for a batch (the single output; a dict by name when the engine has several)."""
        import torch

        as_numpy = not isinstance(x, torch.Tensor)
        batch = torch.from_numpy(np.ascontiguousarray(x)) if as_numpy else x
        if batch.ndim != 4 or any(
            e > 0 and d != e for d, e in zip(batch.shape[1:], self.input_chw, strict=True)
        ):
            raise DensegraphError(
                f"expected input [N, {', '.join(map(str, self.input_chw))}], got {list(batch.shape)}"
            )
        if batch.shape[0] == 0:
            raise DensegraphError("empty batch")
        outs = self._run(batch)
        if as_numpy:
            results = {k: v.cpu().numpy() for k, v in outs.items()}
        elif batch.device.type != "cuda":
            results = {k: v.to(batch.device) for k, v in outs.items()}
        else:
            results = {k: self._cuda.hand_over(v) for k, v in outs.items()}
        return next(iter(results.values())) if len(results) == 1 else results


# ---------------------------------------------------------------------------------------------------------
# verification and benchmarks


_CRITERIA = {
    "fp32": "|trt - ort| <= 1e-3 + 1e-3 * |ort| elementwise",
    "fp16": "max |trt - ort| <= 1e-2 * max |ort|",
    "int8": "top-1 agreement >= {agree:.0%}",
}


def verify_engine(
    runner: EngineRunner | Callable[[np.ndarray], Any],
    onnx_path: str | os.PathLike[str],
    precision: str,
    inputs: Iterable[np.ndarray],
    *,
    int8_min_agreement: float = 0.9,
) -> dict[str, Any]:
    """Compare the engine with onnxruntime (CPU) on the same ONNX and inputs; a dict for the sidecar."""
    import onnxruntime as ort

    if precision not in PRECISIONS:
        raise DensegraphError(f"unknown precision {precision!r}")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    in_name = session.get_inputs()[0].name
    batches, max_abs, max_scale, worst_rel, agree, total, passed = [], 0.0, 0.0, 0.0, 0, 0, True
    for x in inputs:
        x = np.ascontiguousarray(x, dtype=np.float32)
        ref = np.asarray(session.run(None, {in_name: x})[0], dtype=np.float32)
        got = runner(x)
        if isinstance(got, dict):
            got = next(iter(got.values()))
        got = np.asarray(got, dtype=np.float32)
        if got.shape != ref.shape:
            raise BuildError(f"engine output shape {got.shape} != onnxruntime {ref.shape}")
        err = float(np.max(np.abs(got - ref)))
        scale = float(np.max(np.abs(ref)))
        max_abs, max_scale = max(max_abs, err), max(max_scale, scale)
        worst_rel = max(worst_rel, err / max(scale, 1e-12))
        agree += int(np.sum(got.argmax(axis=1) == ref.argmax(axis=1)))
        total += len(x)
        batches.append(len(x))
        if precision == "fp32":
            passed &= bool(np.allclose(got, ref, rtol=1e-3, atol=1e-3))
        elif precision == "fp16":
            passed &= err <= 1e-2 * max(scale, 1e-12)
    agreement = agree / max(total, 1)
    if precision == "int8":
        passed = agreement >= int8_min_agreement
    criterion = _CRITERIA[precision].format(agree=int8_min_agreement)
    summary = (
        f"{'pass' if passed else 'FAIL'} ({criterion}): max abs err {max_abs:.3g}, "
        f"max rel err {worst_rel:.3g}, top-1 agreement {agreement:.1%} over {total} samples"
    )
    return {
        "reference": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "precision": precision,
        "criterion": criterion,
        "batches": batches,
        "samples": total,
        "max_abs_err": max_abs,
        "max_rel_err": worst_rel,
        "top1_agreement": agreement,
        "passed": bool(passed),
        "summary": summary,
    }


def bench_engine(
    runner: EngineRunner, batch_sizes: Sequence[int], *, iters: int = 20, warmup: int = 3
) -> list[dict[str, Any]]:
    """Latency and throughput per batch size, input already on the device (engine time, not transfers)."""
    import torch

    from ..bench import time_batches

    def run_for(batch: int) -> Any:
        x = torch.randn((batch, *runner.input_chw), generator=torch.Generator().manual_seed(0))
        x = x.to(runner.device)
        return lambda: runner(x)  # the runner synchronizes its stream before returning

    return time_batches(run_for, batch_sizes, iters=iters, warmup=warmup)
