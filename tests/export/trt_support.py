"""Helpers of the TensorRT backend's tests: install a fake ``tensorrt`` (fake_tensorrt.py) and a fake
cuda-python (fake_cuda.py) in ``sys.modules``; tiny models and builds."""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_cuda import install_fake_cuda  # noqa: E402
from fake_tensorrt import make_fake_tensorrt, make_tiny_onnx  # noqa: E402

FAKE_GPU = {"name": "Fake GPU", "compute_capability": "8.6"}

# The first lines of a child interpreter in which `import torch` fails (the run path must not need it).
NO_TORCH = """
import sys
from importlib.abc import MetaPathFinder

class NoTorch(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked for this test")
        return None

sys.meta_path.insert(0, NoTorch())
"""


@functools.cache
def gpu_reason() -> str | None:
    """Why real engines cannot be built here (no CUDA GPU, no tensorrt package); None where they can."""
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU (torch.cuda.is_available() is False)"
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"needs the tensorrt package (pip install 'densegraph[gpu]'): {exc}"
    return None


def install_fake(monkeypatch: pytest.MonkeyPatch, flavor: str, gpu: dict[str, Any] | None = None) -> Any:
    """A fake TensorRT of ``flavor`` and a fake cuda-python whose one GPU is ``gpu``; the fake cuda module is
    ``trt.cuda``."""
    trt = make_fake_tensorrt(flavor)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    trt.cuda = install_fake_cuda(monkeypatch, gpu or FAKE_GPU)
    return trt


class CpuDevice:
    """Stands in for the runner's torch CUDA device: torch CPU memory and stream 0 (the fake reads
    addresses), so the zero-copy torch path runs without a GPU."""

    import torch as _torch

    device = _torch.device("cpu")
    stream_handle = 0

    def scope(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        pass

    def hand_over(self, tensor: Any) -> Any:
        return tensor


def model(tmp_path: Path, kind: str = "fp32", **kw: Any) -> Path:
    return make_tiny_onnx(tmp_path / "model.onnx", kind, **kw)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def build(tmp_path: Path, kind: str = "fp32", **options: Any) -> tuple[Path, dict[str, Any]]:
    from densegraph.export.tensorrt import EngineOptions, engine_from_onnx

    onnx = model(tmp_path, kind)
    engine = tmp_path / "model.engine"
    sidecar = engine_from_onnx(onnx, engine, EngineOptions(precision=kind, **options))
    return engine, sidecar
