"""ONNX -> serialized engine + sidecar with the TensorRT Python API (``engine_from_onnx``).

One code path serves TensorRT 8.6 (JetPack 6.0: EXPLICIT_BATCH, weak typing only), 10.x (JetPack 6.1/6.2, DLA;
strong and weak typing) and 11.x (strongly typed only), chosen by :func:`trt_api.features`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..._io import file_sha256
from ...errors import BuildError
from . import cuda, trt_api
from .calibration import nv_tensorrt_version, write_implicit_int8
from .onnx_info import OnnxInfo, inspect_onnx
from .options import EngineOptions, PrecisionPlan, precision_plan
from .sidecar import SIDECAR_FORMAT, atomic_write, write_sidecar
from .trtexec import trtexec_command

__all__ = ["engine_from_onnx", "MAX_PARSER_OPSET"]

Progress = Callable[[str], None]
# The ONNX parser of TensorRT 10.0-10.3 (JetPack 6.1/6.2) covers opsets <= 20 (onnx-tensorrt's
# docs/operators.md of those releases); later opsets need a newer TensorRT.
MAX_PARSER_OPSET = 20


def _dims(shape: Any) -> list[int]:
    return [int(d) for d in shape]


def _network_io(network: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def describe(tensor: Any) -> dict[str, Any]:
        return {"name": tensor.name, "shape": _dims(tensor.shape), "dtype": trt_api.enum_name(tensor.dtype)}

    inputs = [describe(network.get_input(i)) for i in range(network.num_inputs)]
    outputs = [describe(network.get_output(i)) for i in range(network.num_outputs)]
    return inputs, outputs


def _parser_errors(parser: Any) -> list[str]:
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = int(err.node())
        # node_name/node_operator are newer than TensorRT 8.6 and some 10.x releases on JetPack
        name_of = getattr(err, "node_name", None)
        op_of = getattr(err, "node_operator", None)
        detail = ", ".join(s for s in (name_of() if name_of else "", op_of() if op_of else "") if s)
        where = f"node {node}" if node >= 0 else "model"
        if detail:
            where += f" ({detail})"
        lines.append(f"{where}: {trt_api.enum_name(err.code())}: {err.desc()}")
    return lines


def _load_timing_cache(config: Any, logger: Any, path: Path | None, progress: Progress) -> None:
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
        logger.forget()  # recovered: later failures must not repeat this error as theirs
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path, plan: PrecisionPlan) -> Any:
    """The network parsed from ONNX, with explicit batch (8.6's flag) and strong typing as the plan says."""
    found = trt_api.features(trt)
    flags = 0
    if plan.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if found.explicit_batch_flag:  # TensorRT 8.x: 0 would be an implicit-batch network
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"))  # noqa: B009
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = _parser_errors(parser) or logger.errors() or ["no error was reported"]
        raise BuildError(
            f"TensorRT's ONNX parser rejected the model ({len(errors)} error(s)): " + "; ".join(errors),
            path=str(onnx_path),
        )
    return network, parser


def _config(
    trt: Any, builder: Any, options: EngineOptions, plan: PrecisionPlan, calibration_cache: bytes | None
) -> Any:
    """The builder config: workspace, profile (dynamic batch or size only), precision flags and the calibration cache
    of implicit int8, DLA, compatibility."""
    config = builder.create_builder_config()
    if options.workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    if options.needs_profile:  # a static model has its one shape; TensorRT needs no profile for it
        profile = builder.create_optimization_profile()
        shape_min, shape_opt, shape_max = options.profile_shapes()
        profile.set_shape(options.input_name, shape_min, shape_opt, shape_max)
        if config.add_optimization_profile(profile) < 0:
            raise BuildError(f"invalid optimization profile {shape_min} / {shape_opt} / {shape_max}")
    for name in plan.builder_flags:
        # only reached where the module has the flag (precision_plan's legacy_flags)
        config.set_flag(getattr(trt.BuilderFlag, name))
    if not plan.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if calibration_cache is not None:
        if not hasattr(config, "int8_calibrator"):
            raise BuildError(f"TensorRT {trt.__version__} takes no calibration cache (implicit int8)")
        config.int8_calibrator = trt_api.cache_calibrator(trt, calibration_cache)
    if options.dla_core is not None:
        cores = int(builder.num_DLA_cores)
        if options.dla_core >= cores:
            raise BuildError(
                f"DLA core {options.dla_core} asked for, this device has {cores} DLA core(s)",
                hint=trt_api.DLA_HINT if cores == 0 else f"its DLA cores are 0..{cores - 1}",
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if options.hardware_compat:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if options.version_compat:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    return config


def _check_buildable(options: EngineOptions, info: OnnxInfo, gpu: dict[str, Any]) -> None:
    if info.batch_tile is not None:
        raise BuildError(
            f"the model is batch-tiled for onnxruntime on the CPU (tiles of {info.batch_tile}); "
            "TensorRT takes the whole batch",
            path=info.path,
            hint="use build_engine() or `densegraph engine`, which untile it, or build with --batch-tile off",
        )
    if options.hardware_compat and gpu.get("integrated"):
        # NVIDIA's support matrix: hardware compatibility is for Ampere+ discrete GPUs, not JetPack/Tegra
        raise BuildError(
            f"hardware-compatible engines are not supported on Jetson ({gpu['name']})",
            hint="drop --hardware-compat: a Jetson builds its own engine with build_engine.sh",
        )
    if options.hardware_compat and tuple(map(int, gpu["compute_capability"].split("."))) < (8, 0):
        raise BuildError(
            f"hardware-compatible engines need an Ampere or newer GPU to build on, not {gpu['name']}"
        )


def _implicit_int8(trt: Any, onnx_path: Path, folder: Path, say: Progress) -> tuple[Path, Path]:
    """Write the float graph and the calibration cache of a Q/DQ ONNX for this TensorRT's DLA."""
    model, calibration, implicit = write_implicit_int8(
        onnx_path, folder, version=nv_tensorrt_version(trt.__version__)
    )
    say(
        f"{model.name} + {calibration.name}: the Q/DQ model as implicit int8 for DLA "
        f"({len(implicit.scales)} tensor scales, {implicit.weights} weights dequantized)"
    )
    return model, calibration


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
    options = options.with_onnx(info)
    trt = trt_api.import_tensorrt()
    gpu = cuda.gpu_info()
    _check_buildable(options, info, gpu)
    found = trt_api.features(trt)
    plan = precision_plan(
        options.precision,
        info,
        legacy_flags=found.precision_flags,
        dla=options.dla_core is not None,
        strong_typing=found.strongly_typed,
    )
    logger = trt_api.recording_logger(trt)
    builder = trt.Builder(logger)
    network_onnx, calibration = onnx_path, None
    if plan.implicit_int8:
        network_onnx, calibration = _implicit_int8(trt, onnx_path, engine_path.parent, say)
    say(f"parsing {network_onnx}")
    network, _parser = _parse(trt, builder, logger, network_onnx, plan)  # the parser must outlive the build
    inputs, outputs = _network_io(network)
    if [t["name"] for t in inputs] != [options.input_name]:
        raise BuildError(f"parsed network inputs {[t['name'] for t in inputs]} != [{options.input_name!r}]")
    config = _config(trt, builder, options, plan, calibration.read_bytes() if calibration else None)
    cache_path = Path(options.timing_cache) if options.timing_cache is not None else None
    if cache_path is not None:
        _load_timing_cache(config, logger, cache_path, say)

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
            atomic_write(cache_path, cache.serialize())
    # the raw plan, nothing prepended: trtexec and any TensorRT runtime must load this file as is
    atomic_write(engine_path, serialized)
    sidecar = _sidecar(onnx_path, engine_path, options, info, plan, trt, gpu, inputs, outputs)
    sidecar["build_seconds"] = round(seconds, 3)
    if calibration is not None:
        sidecar["implicit_int8"] = {"onnx": network_onnx.name, "calibration_cache": calibration.name}
    write_sidecar(engine_path, sidecar)
    say(f"wrote {engine_path} ({sidecar['engine_bytes'] / 2**20:.1f} MiB) in {seconds:.1f} s")
    return sidecar


def _sidecar(
    onnx_path: Path,
    engine_path: Path,
    options: EngineOptions,
    info: OnnxInfo,
    plan: PrecisionPlan,
    trt: Any,
    gpu: dict[str, Any],
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
) -> dict[str, Any]:
    found = trt_api.features(trt)
    profiles = []
    if options.needs_profile:
        shape_min, shape_opt, shape_max = options.profile_shapes()
        profiles.append(
            {
                "input": options.input_name,
                "min": list(shape_min),
                "opt": list(shape_opt),
                "max": list(shape_max),
            }
        )
    return {
        "format": SIDECAR_FORMAT,
        "engine": engine_path.name,
        "engine_sha256": file_sha256(engine_path),
        "engine_bytes": engine_path.stat().st_size,
        "onnx": onnx_path.name,
        "onnx_sha256": info.sha256,
        "tensorrt_version": str(trt.__version__),
        "gpu": {"name": gpu["name"], "compute_capability": gpu["compute_capability"]},
        "precision": options.precision,
        "strongly_typed": plan.strongly_typed,
        "builder_flags": list(plan.builder_flags),
        "tf32": plan.tf32,
        "profiles": profiles,
        "inputs": inputs,
        "outputs": outputs,
        "workspace_gib": options.workspace_gib,
        "dla_core": options.dla_core,
        "hardware_compat": "ampere+" if options.hardware_compat else None,
        "version_compatible": options.version_compat,
        "timing_cache": str(options.timing_cache) if options.timing_cache is not None else None,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "trtexec_command": trtexec_command(
            onnx_path,
            engine_path,
            options,
            legacy_flags=found.precision_flags,
            strong_typing=found.strongly_typed,
            info=info,
        ),
    }
