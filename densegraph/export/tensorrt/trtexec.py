"""The trtexec command line of a build, and ``build_engine.sh``, which rebuilds the engine on the device.

trtexec differs by release: 8.6 has ``--fp16``/``--int8`` but no ``--stronglyTyped``; 10.x has both; 11.x only
``--stronglyTyped``. A static ONNX takes no ``--minShapes/--optShapes/--maxShapes`` (trtexec refuses
explicit shapes on a static model); a dynamic height and width (the ONNX's ``input_range``) is in them with
the batch: ``--minShapes=images:1x3x128x128``. The script picks its branch by testing ``trtexec --help`` for
those flags.
An int8 DLA build on 8.6/10.x is implicit quantization (``options.precision_plan``): the branch builds the
float graph ``<stem>.noqdq.onnx`` with ``--int8 --fp16 --calib=<stem>.calib.cache`` and first writes into the
cache's header the TensorRT version trtexec prints (``[TensorRT v100300]``), since TensorRT skips a cache
made for another version.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from ...errors import DensegraphError
from .calibration import implicit_int8_paths, write_implicit_int8
from .onnx_info import OnnxInfo, inspect_onnx
from .options import EngineOptions, PrecisionPlan, precision_plan
from .sidecar import atomic_write, sidecar_path
from .trt_api import SCRIPT_NAME

__all__ = [
    "SCRIPT_NAME",
    "PYTHON_ENTRY",
    "FLAVORS",
    "trtexec_command",
    "trtexec_commands",
    "write_build_script",
]

# The device-side fallback of build_engine.sh: the `densegraph engine` subcommand.
PYTHON_ENTRY = ("-m", "densegraph", "engine")
# (label, has --fp16/--int8, has --stronglyTyped) of each trtexec family
FLAVORS = (("TensorRT 8.6", True, False), ("TensorRT 10.x", True, True), ("TensorRT 11.x", False, True))
# the calibration cache header written before the device's TensorRT is known: JetPack 6.1/6.2's 10.3.0
# (build_engine.sh and the Python builder rewrite it for the TensorRT at hand)
DEFAULT_CACHE_VERSION = 100300


def _shape_arg(name: str, shape: Sequence[int]) -> str:
    return f"{name}:{'x'.join(str(d) for d in shape)}"


def _trtexec_args(
    onnx: str, engine: str, options: EngineOptions, plan: PrecisionPlan, *, timing_cache: str | None
) -> list[str]:
    calibration = None
    if plan.implicit_int8:
        float_graph, calibration = implicit_int8_paths(onnx, Path(onnx).parent)
        onnx = str(float_graph)
    args = [f"--onnx={onnx}", f"--saveEngine={engine}"]
    if options.needs_profile:
        shape_min, shape_opt, shape_max = options.profile_shapes()
        args += [
            f"--minShapes={_shape_arg(options.input_name, shape_min)}",
            f"--optShapes={_shape_arg(options.input_name, shape_opt)}",
            f"--maxShapes={_shape_arg(options.input_name, shape_max)}",
        ]
    if options.workspace_gib is not None:
        args.append(f"--memPoolSize=workspace:{max(1, round(options.workspace_gib * 1024))}M")
    if plan.strongly_typed:
        args.append("--stronglyTyped")  # opt-in on TensorRT 10, accepted (always on) on 11
    args += [{"FP16": "--fp16", "INT8": "--int8"}[f] for f in plan.builder_flags]
    if calibration is not None:
        args.append(f"--calib={calibration}")
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
    strong_typing: bool = True,
    info: OnnxInfo | None = None,
) -> str:
    """The trtexec command line that builds the same engine.

    ``legacy_flags``: whether the target trtexec has ``--fp16``/``--int8`` (8.6, 10.x); ``strong_typing``:
    whether it has ``--stronglyTyped`` (10.x, 11.x). ``legacy_flags=None`` guesses without importing
    tensorrt: TensorRT 10 for DLA builds and for fp16 from an fp32 ONNX, else strongly typed (valid on 10 and
    11). :func:`trtexec_commands` gives the command of every family instead of guessing.
    """
    info = info or inspect_onnx(onnx_path)
    options = options.with_onnx(info)
    if legacy_flags is None:
        legacy_flags = options.dla_core is not None or (options.precision == "fp16" and not info.has_fp16)
    plan = precision_plan(
        options.precision,
        info,
        legacy_flags=legacy_flags,
        dla=options.dla_core is not None,
        strong_typing=strong_typing,
    )
    cache = str(options.timing_cache) if options.timing_cache is not None else None
    return shlex.join(
        ["trtexec", *_trtexec_args(str(onnx_path), str(engine_path), options, plan, timing_cache=cache)]
    )


def trtexec_commands(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    options: EngineOptions,
    *,
    info: OnnxInfo | None = None,
) -> dict[str, str | DensegraphError]:
    """The trtexec command of each family (:data:`FLAVORS`), or why that family cannot build this engine."""
    info = info or inspect_onnx(onnx_path)
    commands: dict[str, str | DensegraphError] = {}
    for label, legacy, strong in FLAVORS:
        try:
            commands[label] = trtexec_command(
                onnx_path, engine_path, options, legacy_flags=legacy, strong_typing=strong, info=info
            )
        except DensegraphError as exc:
            commands[label] = exc
    return commands


def _python_args(onnx: str, engine: str, options: EngineOptions, timing_cache: str | None) -> list[str]:
    lo, opt, hi = options.batch
    args = [
        *PYTHON_ENTRY,
        onnx,
        "-o",
        engine,
        "--precision",
        options.precision,
        "--batch-range",
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
# (PYTHON=... to choose the interpreter), which also verifies and benchmarks the engine and writes {sidecar}.
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC=${{TRTEXEC:-$(command -v trtexec || true)}}
if [ -z "$TRTEXEC" ] && [ -x /usr/src/tensorrt/bin/trtexec ]; then
  TRTEXEC=/usr/src/tensorrt/bin/trtexec  # JetPack
fi
if [ -n "$TRTEXEC" ]; then
  rm -f {sidecar_q}  # it would describe an engine from another machine
  # feature tests, not version checks: 8.6 lacks --stronglyTyped, 11.x lacks --fp16
  usage=$("$TRTEXEC" --help 2>&1 || true)
  has() {{ grep -qE "^[[:space:]]*$1([[:space:]=]|\\$)" <<<"$usage"; }}
  if has --fp16 && ! has --stronglyTyped; then
    {trt8}
  elif has --fp16; then
    {trt10}
  else
    {trt11}
  fi
fi
exec "${{PYTHON:-python3}}" {python} "$@"
"""


_HEADER = """\
v=$(sed -nE 's/.*\\[TensorRT v([0-9]+)\\].*/\\1/p' <<<"$usage" | head -n 1)
if [ -z "$v" ]; then
  echo {error} >&2; exit 2
fi
sed -i "1s/^TRT-[0-9]*-/TRT-$v-/" {cache}  # TensorRT skips a calibration cache of another version"""


def _script_branch(args: list[str] | str) -> str:
    if isinstance(args, str):  # an error message: this TensorRT cannot build that engine
        return f"echo {shlex.quote(args)} >&2; exit 2"
    lines = []
    calibration = next((a.split("=", 1)[1] for a in args if a.startswith("--calib=")), None)
    if calibration is not None:
        error = f"{SCRIPT_NAME}: trtexec --help names no TensorRT version, which the calibration cache needs"
        lines += _HEADER.format(error=shlex.quote(error), cache=shlex.quote(calibration)).splitlines()
    lines.append('exec "$TRTEXEC" ' + " ".join(shlex.quote(a) for a in args) + ' "$@"')
    return "\n    ".join(lines)


def write_build_script(
    out_dir: str | os.PathLike[str],
    onnx_name: str,
    engine_name: str,
    options: EngineOptions,
    *,
    info: OnnxInfo | None = None,
) -> Path:
    """Write ``out_dir/build_engine.sh`` (executable, atomically): rebuilds ``engine_name`` from the ONNX.

    For an int8 DLA build it also writes the float graph and calibration cache the TensorRT 8.6/10.x branches
    build from (:mod:`.calibration`)."""
    out = Path(out_dir)
    info = info or inspect_onnx(out / onnx_name)
    options = options.with_onnx(info)
    cache = Path(options.timing_cache).name if options.timing_cache is not None else None
    dla = options.dla_core is not None
    branches: list[list[str] | str] = []
    errors: list[DensegraphError] = []
    for _label, legacy, strong in FLAVORS:
        try:
            plan = precision_plan(options.precision, info, legacy_flags=legacy, dla=dla, strong_typing=strong)
        except DensegraphError as exc:
            errors.append(exc)
            branches.append(f"{SCRIPT_NAME}: {exc.message} ({exc.hint})" if exc.hint else exc.message)
            continue
        branches.append(_trtexec_args(onnx_name, engine_name, options, plan, timing_cache=cache))
    if len(errors) == len(FLAVORS):  # no TensorRT can build this: say so now, write no script
        raise errors[0]
    if any(isinstance(b, list) and any(a.startswith("--calib=") for a in b) for b in branches):
        write_implicit_int8(out / onnx_name, out, version=DEFAULT_CACHE_VERSION)
    extra = f", DLA core {options.dla_core}" if dla else ""
    extra += ", hardware-compatible (ampere+)" if options.hardware_compat else ""
    lo, opt, hi = options.profile_batches()
    if options.input_hw is not None:
        extra += ", size " + ":".join(f"{h}x{w}" for h, w in options.profile_sizes())
    text = _SCRIPT.format(
        engine=engine_name,
        onnx=onnx_name,
        precision=options.precision,
        batch=f"{lo}:{opt}:{hi}",
        extra=extra,
        sidecar=sidecar_path(engine_name).name,
        sidecar_q=shlex.quote(sidecar_path(engine_name).name),
        trt8=_script_branch(branches[0]),
        trt10=_script_branch(branches[1]),
        trt11=_script_branch(branches[2]),
        python=" ".join(shlex.quote(a) for a in _python_args(onnx_name, engine_name, options, cache)),
    )
    path = out / SCRIPT_NAME
    atomic_write(path, text.encode(), mode=0o755)
    return path
