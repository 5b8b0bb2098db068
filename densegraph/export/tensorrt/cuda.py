"""CUDA for the engine runner without torch: devices, memory and streams through NVIDIA's ``cuda-python``.

A Jetson often has TensorRT and numpy but no CUDA build of torch, so the run path uses ``cuda.bindings``
(cuda-python >= 12.6; ``cuda.cudart`` before that). torch is a fallback only when cuda-python is missing and
torch is already installed with CUDA; it is never imported when cuda-python is there.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DensegraphError

__all__ = ["ALIGNMENT", "cuda_available", "gpu_info", "open_device", "CudaDevice", "TorchCudaDevice"]

# TensorRT wants every I/O address aligned to 256 bytes (IExecutionContext::setTensorAddress).
ALIGNMENT = 256
_JETSON_RELEASE = Path("/etc/nv_tegra_release")


def _cudart() -> Any | None:
    """cuda-python's runtime module, or None when cuda-python is not installed."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # cuda-python < 12.6
        except ImportError:
            return None
    return cudart


def _check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(error, *values)`` result; raise on an error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    cudart = _cudart()
    if cudart is not None and err != cudart.cudaError_t.cudaSuccess:
        name = _error_name(cudart, err)
        raise DensegraphError(f"CUDA error in {what}: {name}")
    return values[0] if len(values) == 1 else tuple(values)


def _error_name(cudart: Any, err: Any) -> str:
    try:
        _, name = cudart.cudaGetErrorName(err)
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # the error name is a courtesy; never hide the error behind another
        return str(err)


def _torch_cuda() -> Any | None:
    """torch, when it is installed with a usable CUDA device (imported only here, as a fallback)."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def cuda_available() -> bool:
    """A CUDA GPU is visible (cuda-python, else torch)."""
    cudart = _cudart()
    if cudart is not None:
        err, count = cudart.cudaGetDeviceCount()
        return err == cudart.cudaError_t.cudaSuccess and count > 0
    return _torch_cuda() is not None


def gpu_info(device: int = 0) -> dict[str, Any]:
    """Name, compute capability and whether the GPU is integrated (Jetson) of CUDA device ``device``."""
    cudart = _cudart()
    if cudart is not None:
        prop = _check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return {
            "name": name.rstrip("\x00"),
            "compute_capability": f"{prop.major}.{prop.minor}",
            "integrated": bool(prop.integrated) or _JETSON_RELEASE.exists(),
        }
    torch = _torch_cuda()
    if torch is None:
        raise DensegraphError("no CUDA GPU is visible", hint="pip install cuda-python on the GPU machine")
    props = torch.cuda.get_device_properties(device)
    return {
        "name": str(props.name),
        "compute_capability": f"{props.major}.{props.minor}",
        "integrated": bool(getattr(props, "is_integrated", False)) or _JETSON_RELEASE.exists(),
    }


class CudaDevice:
    """One CUDA device and a stream of its own (cuda-python): device buffers and host<->device copies."""

    def __init__(self, index: int) -> None:
        cudart = _cudart()
        if cudart is None:
            raise DensegraphError("cuda-python is not installed", hint="pip install 'densegraph[gpu]'")
        self._cudart = cudart
        self.index = index
        _check(cudart.cudaSetDevice(index), "cudaSetDevice")  # TensorRT allocates on the current device
        self._stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers: dict[int, int] = {}  # pointer -> size

    @property
    def stream_handle(self) -> int:
        return int(self._stream)

    def malloc(self, nbytes: int) -> int:
        """A device buffer of ``nbytes`` (cudaMalloc aligns to at least 256 bytes)."""
        ptr = int(_check(self._cudart.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))
        self._buffers[ptr] = int(nbytes)
        return ptr

    def free(self, ptr: int) -> None:
        if self._buffers.pop(ptr, None) is not None:
            _check(self._cudart.cudaFree(ptr), "cudaFree")

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        """Copy a C-contiguous host array to ``ptr`` on the stream."""
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(
            self._cudart.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, kind, self._stream),
            "cudaMemcpyAsync",
        )

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        """Copy ``array.nbytes`` from ``ptr`` into a C-contiguous host array on the stream."""
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(
            self._cudart.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes, kind, self._stream),
            "cudaMemcpyAsync",
        )

    def synchronize(self) -> None:
        _check(self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        """Free every buffer and the stream."""
        for ptr in list(self._buffers):
            self.free(ptr)
        if self._stream is not None:
            _check(self._cudart.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self._stream = None


class TorchCudaDevice:
    """torch's CUDA memory and a torch stream: the zero-copy path for torch tensors already on the GPU,
    and the fallback for numpy input where cuda-python is missing."""

    def __init__(self, index: int) -> None:
        import torch

        self.index = index
        self.device = torch.device("cuda", index)
        torch.cuda.set_device(self.device)  # TensorRT allocates on the current device
        self.stream = torch.cuda.Stream(device=self.device)
        self._buffers: dict[int, Any] = {}

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

    def malloc(self, nbytes: int) -> int:
        import torch

        buf = torch.empty(max(int(nbytes), 1), dtype=torch.uint8, device=self.device)
        self._buffers[buf.data_ptr()] = buf
        return int(buf.data_ptr())

    def free(self, ptr: int) -> None:
        self._buffers.pop(ptr, None)

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        import torch

        src = torch.from_numpy(array.view(np.uint8).reshape(-1))
        with torch.cuda.stream(self.stream):
            self._view(ptr, array.nbytes).copy_(src)

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        import torch

        dst = torch.from_numpy(array.view(np.uint8).reshape(-1))
        with torch.cuda.stream(self.stream):
            dst.copy_(self._view(ptr, array.nbytes))

    def _view(self, ptr: int, nbytes: int) -> Any:
        return self._buffers[ptr][:nbytes]

    def synchronize(self) -> None:
        self.stream.synchronize()

    def hand_over(self, result: Any) -> Any:
        """Mark a result as used by the caller's stream, so the allocator does not recycle it early."""
        import torch

        result.record_stream(torch.cuda.current_stream(self.device))
        return result

    def close(self) -> None:
        self._buffers.clear()


def open_device(index: int) -> CudaDevice | TorchCudaDevice:
    """The runner's device: cuda-python where installed, else torch with CUDA."""
    if _cudart() is not None:
        return CudaDevice(index)
    if _torch_cuda() is not None:
        return TorchCudaDevice(index)
    raise DensegraphError(
        "running an engine needs cuda-python (or torch with CUDA)", hint="pip install 'densegraph[gpu]'"
    )


def is_torch_tensor(x: Any) -> bool:
    """``x`` is a torch tensor (decided without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def is_cuda_tensor(x: Any) -> bool:
    """``x`` is a torch tensor on a CUDA device (decided without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor) and x.device.type == "cuda"
