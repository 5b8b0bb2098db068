"""A stand-in for cuda-python's runtime (``cuda.bindings.runtime``) over host memory.

Same call shapes as the real bindings: every function returns a tuple whose first item is a ``cudaError_t``;
``cudaStreamCreate`` gives a ``cudaStream_t`` object (``int()`` of it is the handle TensorRT takes);
``cudaMalloc`` gives 256-byte aligned pointers. Pointers are host addresses, so the fake TensorRT engine can
read its input from and write its output to them. Strict where the real one is: a copy must name the right
direction (a host->device copy must land in a cudaMalloc'd buffer, within its size), a freed or unknown
pointer is an error, and every call is recorded in ``module.fake.calls``.
"""

from __future__ import annotations

import ctypes
import enum
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ALIGNMENT = 256


@dataclass
class FakeCudaState:
    gpu: dict[str, Any]
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    buffers: dict[int, tuple[Any, int]] = field(default_factory=dict)  # aligned ptr -> (ctypes buffer, size)
    streams: set[int] = field(default_factory=set)

    def named(self, what: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == what]


class cudaStream_t:  # noqa: N801 - the real name
    def __init__(self, handle: int) -> None:
        self._handle = handle

    def __int__(self) -> int:
        return self._handle


def make_fake_cudart(gpu: dict[str, Any]) -> types.ModuleType:
    """A fresh fake ``cuda.bindings.runtime``; ``gpu`` has ``name``, ``compute_capability`` and optionally
    ``integrated``."""
    state = FakeCudaState(dict(gpu))
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.fake = state
    err = enum.IntEnum(
        "cudaError_t", ["cudaSuccess", "cudaErrorInvalidValue", "cudaErrorMemoryAllocation"], start=0
    )
    kinds = enum.IntEnum(
        "cudaMemcpyKind",
        [
            "cudaMemcpyHostToHost",
            "cudaMemcpyHostToDevice",
            "cudaMemcpyDeviceToHost",
            "cudaMemcpyDeviceToDevice",
        ],
        start=0,
    )
    rt.cudaError_t, rt.cudaMemcpyKind, rt.cudaStream_t = err, kinds, cudaStream_t
    ok = err.cudaSuccess

    def record(*call: Any) -> None:
        state.calls.append(call)

    def cudaGetDeviceCount() -> tuple[Any, int]:  # noqa: N802
        return ok, 1

    def cudaSetDevice(device: int) -> tuple[Any]:  # noqa: N802
        record("cudaSetDevice", device)
        return (ok if device == 0 else err.cudaErrorInvalidValue,)

    def cudaGetDeviceProperties(device: int) -> tuple[Any, Any]:  # noqa: N802
        major, minor = (int(p) for p in state.gpu["compute_capability"].split("."))
        prop = types.SimpleNamespace(
            name=state.gpu["name"].encode(),
            major=major,
            minor=minor,
            integrated=int(state.gpu.get("integrated", 0)),
        )
        return ok, prop

    def cudaStreamCreate() -> tuple[Any, cudaStream_t]:  # noqa: N802
        handle = 0x5000 + len(state.streams) + 1
        state.streams.add(handle)
        record("cudaStreamCreate", handle)
        return ok, cudaStream_t(handle)

    def _stream_ok(stream: Any) -> bool:
        return isinstance(stream, cudaStream_t) and int(stream) in state.streams

    def cudaStreamSynchronize(stream: Any) -> tuple[Any]:  # noqa: N802
        record("cudaStreamSynchronize")
        return (ok if _stream_ok(stream) else err.cudaErrorInvalidValue,)

    def cudaStreamDestroy(stream: Any) -> tuple[Any]:  # noqa: N802
        if not _stream_ok(stream):
            return (err.cudaErrorInvalidValue,)
        state.streams.discard(int(stream))
        record("cudaStreamDestroy")
        return (ok,)

    def cudaMalloc(size: int) -> tuple[Any, int]:  # noqa: N802
        buf = ctypes.create_string_buffer(int(size) + ALIGNMENT)
        base = ctypes.addressof(buf)
        ptr = base + (-base) % ALIGNMENT
        state.buffers[ptr] = (buf, int(size))
        record("cudaMalloc", int(size))
        return ok, ptr

    def cudaFree(ptr: int) -> tuple[Any]:  # noqa: N802
        if state.buffers.pop(int(ptr), None) is None:
            return (err.cudaErrorInvalidValue,)
        record("cudaFree")
        return (ok,)

    def _in_device(ptr: int, count: int) -> bool:
        return any(p <= ptr and ptr + count <= p + size for p, (_, size) in state.buffers.items())

    def cudaMemcpyAsync(dst: int, src: int, count: int, kind: Any, stream: Any) -> tuple[Any]:  # noqa: N802
        record("cudaMemcpyAsync", kind, int(count))
        device_side = {kinds.cudaMemcpyHostToDevice: dst, kinds.cudaMemcpyDeviceToHost: src}.get(kind)
        if device_side is None or not _in_device(int(device_side), int(count)) or not _stream_ok(stream):
            return (err.cudaErrorInvalidValue,)
        ctypes.memmove(int(dst), int(src), int(count))
        return (ok,)

    def cudaGetErrorName(error: Any) -> tuple[Any, bytes]:  # noqa: N802
        return ok, err(error).name.encode()

    for fn in (
        cudaGetDeviceCount,
        cudaSetDevice,
        cudaGetDeviceProperties,
        cudaStreamCreate,
        cudaStreamSynchronize,
        cudaStreamDestroy,
        cudaMalloc,
        cudaFree,
        cudaMemcpyAsync,
        cudaGetErrorName,
    ):
        setattr(rt, fn.__name__, fn)
    return rt


def install_fake_cuda(modules: Any, gpu: dict[str, Any]) -> types.ModuleType:
    """Put a fake ``cuda``/``cuda.bindings``/``cuda.bindings.runtime`` into ``modules`` (``sys.modules``, or a
    ``monkeypatch`` whose ``setitem`` undoes it); returns the runtime module."""
    rt = make_fake_cudart(gpu)
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, rt
    for name, module in (("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt)):
        if isinstance(modules, dict):
            modules[name] = module
        else:
            modules.setitem(sys.modules, name, module)
    return rt


__all__ = ["make_fake_cudart", "install_fake_cuda", "np"]
