"""The TensorRT engine of a build (``target="tensorrt"``), built in the final folder from its ONNX model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._output import BuildOutput
from .options import BuildOptions
from .progress import Stages
from .result import MODEL_NAME

__all__ = ["engine_options_from", "build_engine_into"]


def engine_options_from(options: BuildOptions) -> Any:
    """The TensorRT backend's :class:`EngineOptions` for this build."""
    from ..export.tensorrt import EngineOptions

    return EngineOptions(
        precision=options.precision,
        batch=options.batch,
        workspace_gib=options.workspace,
        dla_core=options.dla,
        timing_cache=options.timing_cache,
        hardware_compat=bool(options.hardware_compat),
        version_compat=bool(options.version_compat),
    )


def build_engine_into(output: BuildOutput, options: Any, manifest: dict[str, Any], stages: Stages) -> None:
    """Build, verify and record the engine in the build folder, then commit it (without TensorRT: commit
    the ONNX and ``build_engine.sh`` for the device, and re-raise)."""
    from ..export.tensorrt import TensorRTUnavailable, build_engine

    folder = output.path
    with stages.stage("engine", f"TensorRT {options.precision}, batch {':'.join(map(str, options.batch))}"):
        try:
            result = build_engine(folder / MODEL_NAME, folder, options, progress=stages.note)
        except TensorRTUnavailable as exc:
            # The ONNX and build_engine.sh are the deliverable for the device: keep them, then report.
            manifest["engine"] = {"built": False, "script": "build_engine.sh", "reason": exc.message}
            output.write_manifest(manifest, later=_written_by_script(options))
            output.commit()
            raise
    manifest["engine"] = {
        "built": True,
        "file": Path(result["engine_path"]).name,
        "sha256": result["engine_sha256"],
        "script": "build_engine.sh",
        "tensorrt_version": result["tensorrt_version"],
        "gpu": result["gpu"],
        "verification": result.get("verification", {}).get("summary"),
    }
    output.write_manifest(manifest)
    output.commit()


def _written_by_script(options: Any) -> list[str]:
    """The files ``build_engine.sh`` writes into the build folder on the device (the manifest claims them)."""
    from ..export.tensorrt import sidecar_path

    engine = Path(MODEL_NAME).with_suffix(".engine").name
    names = [engine, sidecar_path(engine).name]
    if options.timing_cache is not None:
        names.append(Path(options.timing_cache).name)
    if options.precision == "int8" and options.dla_core is not None:
        from ..export.tensorrt.calibration import implicit_int8_paths

        # its header is rewritten to name the device's TensorRT version
        names.append(implicit_int8_paths(MODEL_NAME, ".")[1].name)
    return names
