"""``manifest.json``: what a ``densegraph build`` folder holds and how it was made.

The manifest is deterministic: the same inputs give the same bytes (no build time, no host name, floats
rounded to three significant digits), so two builds can be compared with ``cmp``. Its ``format`` names the
layout; a folder whose manifest has it is one ``densegraph build`` may replace.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ._io import file_sha256, write_bytes_atomic

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_FORMAT",
    "file_sha256",
    "tool_versions",
    "write_manifest",
    "read_manifest",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "densegraph.build/1"


def tool_versions(*extra: str) -> dict[str, str]:
    """Versions of densegraph, torch, onnx, onnxruntime and of the installed ``extra`` distributions."""
    from importlib import metadata

    from . import __version__

    versions = {"densegraph": __version__}
    for dist in ("torch", "onnx", "onnxruntime", *extra):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_manifest(folder: str | os.PathLike[str], manifest: dict[str, Any]) -> Path:
    """Write ``folder/manifest.json`` (a temporary file renamed into place)."""
    path = Path(folder) / MANIFEST_NAME
    write_bytes_atomic(path, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"), mode=0o644)
    return path


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The build manifest in ``folder``, or None when there is none (or it is not a densegraph manifest)."""
    path = Path(folder) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else None
