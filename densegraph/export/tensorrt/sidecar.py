"""The ``model.engine.json`` sidecar: what an engine was built with, and whether it may run here."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..._io import write_bytes_atomic
from ...errors import DensegraphError
from .trt_api import SCRIPT_NAME

__all__ = ["SIDECAR_FORMAT", "sidecar_path", "read_sidecar", "write_sidecar", "check_engine_compat"]

SIDECAR_FORMAT = "densegraph.engine/1"
# Version-compatible engines also run on these later major versions (TensorRT support matrix).
_CROSS_MAJOR_COMPAT = {(8, 10), (10, 11)}


def atomic_write(path: Path, data: bytes | memoryview | Any, *, mode: int = 0o644) -> None:
    """Write ``data`` (anything with the buffer protocol) to ``path`` via a temp file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data, mode=mode)


def sidecar_path(engine_path: str | os.PathLike[str]) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def write_sidecar(engine_path: str | os.PathLike[str], sidecar: dict[str, Any]) -> None:
    atomic_write(sidecar_path(engine_path), (json.dumps(sidecar, indent=2) + "\n").encode())


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
