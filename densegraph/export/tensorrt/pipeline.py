"""The top level: ONNX -> build script, engine, sidecar, verification (:func:`build_engine`), and on the
device build + verify + benchmark in one go (:func:`engine_on_device`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BuildError, DensegraphError
from . import trt_api
from .builder import engine_from_onnx
from .onnx_info import OnnxInfo, inspect_onnx
from .options import EngineOptions
from .runner import EngineRunner
from .sidecar import atomic_write, sidecar_path, write_sidecar
from .trtexec import trtexec_commands, write_build_script
from .verify import bench_engine, verify_engine

__all__ = ["build_engine", "engine_on_device"]

Progress = Callable[[str], None]


def _report_trtexec(
    say: Progress, onnx_path: Path, engine_path: Path, options: EngineOptions, info: OnnxInfo
) -> None:
    """Report the equivalent trtexec command of each TensorRT family (one line when they agree)."""
    commands = trtexec_commands(onnx_path, engine_path, options, info=info)
    by_command: dict[str, list[str]] = {}
    for label, command in commands.items():
        if isinstance(command, DensegraphError):
            say(f"no trtexec command for {label}: {command.message}")
        else:
            by_command.setdefault(command, []).append(label.removeprefix("TensorRT "))
    for command, labels in by_command.items():
        suffix = (
            ""
            if len(by_command) == 1 and len(labels) == len(commands)
            else f"  # TensorRT {', '.join(labels)}"
        )
        if "--calib=" in command:  # else that trtexec skips the cache and calibrates on random data
            suffix += (
                " (the cache's first line must name that trtexec's version, as build_engine.sh writes it)"
            )
        say(f"equivalent trtexec command: {command}{suffix}")


def _verification_inputs(options: EngineOptions, info: OnnxInfo) -> list[np.ndarray]:
    """Random batches at each batch of the profile; a dynamic height and width adds batch 1 at the profile's
    min and max sizes (the batches run at the opt size)."""
    lo, opt, hi = options.profile_batches()
    rng = np.random.default_rng(0)
    shapes = [(n, *info.chw) for n in sorted({lo, opt, hi})]
    if options.input_hw is not None:
        c = info.chw[0]
        low, _, high = options.profile_sizes()
        shapes = list(dict.fromkeys([(lo, c, *low), *shapes, (lo, c, *high)]))
    return [rng.standard_normal(shape, dtype=np.float32) for shape in shapes]


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
    commands through ``progress``; then raises TensorRTUnavailable if TensorRT or a GPU is missing (the ONNX
    and the script stay), else builds, verifies against onnxruntime on random batches across the batch range
    and records the result in the sidecar. Returns the sidecar dict plus ``engine_path`` and ``script``.
    """
    say = progress or (lambda _msg: None)
    onnx_path, out = Path(onnx_path), Path(out_dir)
    info = inspect_onnx(onnx_path)
    engine_path = out / (engine_name or onnx_path.with_suffix(".engine").name)
    if not write_script:  # on the device itself: say and write nothing before knowing TensorRT is there
        trt_api.import_tensorrt()
    out.mkdir(parents=True, exist_ok=True)
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
    _report_trtexec(say, onnx_path, engine_path, options, info)
    trt_api.import_tensorrt(script)  # fail before any work, naming the script to run on the device

    sidecar = engine_from_onnx(onnx_path, engine_path, options, progress=say)
    if verify:
        with EngineRunner(engine_path) as runner:
            result = verify_engine(runner, onnx_path, options.precision, _verification_inputs(options, info))
        sidecar["verification"] = result
        write_sidecar(engine_path, sidecar)
        say(f"verification against onnxruntime: {result['summary']}")
        if not result["passed"]:
            raise BuildError(
                f"the engine disagrees with onnxruntime: {result['summary']}",
                path=str(engine_path),
                hint=f"details in {sidecar_path(engine_path).name}",
            )
    return {**sidecar, "engine_path": str(engine_path), "script": str(script) if script else None}


def engine_on_device(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    options: EngineOptions,
    *,
    verify: bool = True,
    bench: bool = True,
    iters: int = 20,
    warmup: int = 3,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Build, verify and benchmark an engine on this device (what ``densegraph engine`` runs).

    Returns :func:`build_engine`'s dict plus ``bench``: one latency/throughput row per distinct batch size
    of the profile (min, opt, max), the input staged on the device."""
    engine_path = Path(engine_path)
    result = build_engine(
        onnx_path,
        engine_path.parent,
        options,
        verify=verify,
        progress=progress,
        engine_name=engine_path.name,
        write_script=False,
    )
    result["bench"] = None
    if bench:
        with EngineRunner(engine_path) as runner:
            lo, hi = runner.batch_range
            batches = sorted({b for b in options.profile_batches() if lo <= b <= hi} or {lo})
            result["bench"] = bench_engine(runner, batches, iters=iters, warmup=warmup)
            result["device"] = runner.device
    return result


def _untiled_copy(onnx_path: Path, out: Path) -> Path:
    """Write ``out/<stem>.whole-batch.onnx``: ``onnx_path`` without its batch-tiling loop."""
    import onnx

    from ..passes import untile_batch

    model = untile_batch(onnx.load(str(onnx_path))).model
    target = out / f"{onnx_path.stem}.whole-batch.onnx"
    atomic_write(target, model.SerializeToString(deterministic=True))
    return target
