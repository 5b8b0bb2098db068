"""Run a serialized engine: numpy in and out through cuda-python (no torch needed), torch CUDA tensors
zero-copy when torch is there.

What the runner sets before it deserializes, as trtexec does: the DLA core (``runtime.DLA_core``, from the
sidecar or the caller) and, for a version-compatible plan (which embeds the lean runtime),
``runtime.engine_host_code_allowed``. Whether a plan needs the latter is decided from the engine itself: a
sidecar that says so sets it up front, otherwise a plan that fails to load is retried once with it (trtexec
deletes the sidecar when it rebuilds the engine on the device).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..._io import check_regular
from ...errors import DensegraphError
from ...transforms import refuse_outside_range
from . import cuda, trt_api
from .sidecar import check_engine_compat, read_sidecar, sidecar_path
from .trt_api import SCRIPT_NAME

__all__ = ["EngineRunner"]

_log = logging.getLogger("densegraph.tensorrt")

_NUMPY_DTYPES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
}


@dataclass(frozen=True)
class _Tensor:
    name: str
    dtype: str  # the TensorRT DataType member name
    shape: tuple[int, ...]

    @property
    def numpy_dtype(self) -> Any:
        if self.dtype not in _NUMPY_DTYPES:
            raise DensegraphError(
                f"engine tensor {self.name!r} has type {self.dtype}, which numpy cannot hold"
            )
        return np.dtype(_NUMPY_DTYPES[self.dtype])


def _engine_dtypes(trt: Any) -> dict[Any, str]:
    """TensorRT data types the runner handles, by feature: BF16 and INT64 are newer than TensorRT 8.6."""
    dtypes = {
        trt.DataType.FLOAT: "FLOAT",
        trt.DataType.HALF: "HALF",
        trt.DataType.INT8: "INT8",
        trt.DataType.UINT8: "UINT8",
        trt.DataType.INT32: "INT32",
        trt.DataType.BOOL: "BOOL",
    }
    for name, member in (
        ("BF16", getattr(trt.DataType, "BF16", None)),
        ("INT64", getattr(trt.DataType, "INT64", None)),
    ):
        if member is not None:
            dtypes[member] = name
    return dtypes


def _dims(shape: Any) -> list[int]:
    return [int(d) for d in shape]


class EngineRunner:
    """Runs a serialized engine on numpy or torch batches of ``[N, C, H, W]``; returns logits.

    An engine with a dynamic height and width takes any H, W within its profile (``size_range``), set per call.

    numpy in -> numpy out; a torch CPU tensor in -> a torch CPU tensor out; a torch CUDA tensor in -> a torch
    CUDA tensor out, without a copy unless its address is not 256-byte aligned. Batches larger than the
    profile's max are split, smaller than its min (static DLA shapes) are zero-padded.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        check_compat: bool = True,
        device: int = 0,
        dla_core: int | None = None,
    ) -> None:
        """Load ``path`` on CUDA device ``device``; ``check_compat`` compares the sidecar's TensorRT version
        and compute capability with this machine's first; ``dla_core`` overrides the sidecar's DLA core."""
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
        trt = trt_api.import_tensorrt()
        if check_compat and self.sidecar is not None:
            check_engine_compat(
                self.sidecar,
                trt.__version__,
                cuda.gpu_info(device)["compute_capability"],
                path=str(self.path),
            )
        self.index = device
        self._device = cuda.open_device(device)  # before the runtime: TensorRT uses the current device
        self._torch_device: Any = None
        self._buffers: dict[str, tuple[int, int]] = {}  # tensor name -> (device pointer, bytes)
        self._logger = trt_api.recording_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        core = dla_core if dla_core is not None else (self.sidecar or {}).get("dla_core")
        if core is not None:
            self._runtime.DLA_core = int(core)  # before deserializing, as trtexec's setDLACore
        self._engine = self._deserialize(trt, data)
        self._discover_io(trt)
        context = self._engine.create_execution_context()
        if context is None:
            raise DensegraphError("TensorRT could not create an execution context (out of GPU memory?)")
        self._context = context

    def _deserialize(self, trt: Any, data: bytes) -> Any:
        runtime = self._runtime
        host_code = bool(self.sidecar and self.sidecar.get("version_compatible"))
        if host_code:
            runtime.engine_host_code_allowed = True  # version-compatible plans embed the lean runtime
        engine = runtime.deserialize_cuda_engine(data)
        errors = self._logger.errors()
        if engine is None and not host_code:
            self._logger.forget()
            runtime.engine_host_code_allowed = True  # maybe version-compatible without a sidecar (trtexec)
            engine = runtime.deserialize_cuda_engine(data)
            if engine is not None:
                _log.info("%s is version-compatible: loaded with engine host code allowed", self.path)
        if engine is None:
            text = "; ".join(errors) or "no error was logged"
            raise DensegraphError(
                f"TensorRT {trt.__version__} cannot load this engine: {text}",
                path=str(self.path),
                hint=f"engines are tied to a GPU and TensorRT version; rebuild with {SCRIPT_NAME}",
            )
        return engine

    def _discover_io(self, trt: Any) -> None:
        engine = self._engine
        dtypes = _engine_dtypes(trt)
        self.inputs: list[_Tensor] = []
        self.outputs: list[_Tensor] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            trt_dtype = engine.get_tensor_dtype(name)
            if trt_dtype not in dtypes:
                raise DensegraphError(
                    f"engine tensor {name!r} has unsupported type {trt_api.enum_name(trt_dtype)}"
                )
            tensor = _Tensor(name, dtypes[trt_dtype], tuple(_dims(engine.get_tensor_shape(name))))
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(tensor)
        if len(self.inputs) != 1 or not self.outputs:
            raise DensegraphError(
                f"expected one input and at least one output, the engine has {len(self.inputs)} and "
                f"{len(self.outputs)}",
                path=str(self.path),
            )
        shape = self.inputs[0].shape
        # a dynamic height and width: {"min", "opt", "max"} -> [H, W] from the profile; None for a fixed size
        self.size_range: dict[str, list[int]] | None = None
        if all(d > 0 for d in shape):  # a static engine has no profile to ask
            self.batch_range = (shape[0], shape[0])
            return
        profile = [_dims(s) for s in engine.get_tensor_profile_shape(self.input_name, 0)]
        self.batch_range = (profile[0][0], profile[2][0])
        if len(shape) == 4 and (shape[2] < 0 or shape[3] < 0):
            self.size_range = {key: p[2:] for key, p in zip(("min", "opt", "max"), profile, strict=True)}

    @property
    def device(self) -> str:
        """The CUDA device the engine runs on, e.g. ``cuda:0``."""
        return f"cuda:{self.index}"

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def input_chw(self) -> tuple[int, ...]:
        """C, H, W of the input (a dynamic height and width: the profile's opt size)."""
        if self.size_range is not None:
            return (self.inputs[0].shape[1], *self.size_range["opt"])
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
        """Release the context, engine and runtime (in that order), then the device buffers and stream."""
        for attr in ("_context", "_engine", "_runtime"):
            if hasattr(self, attr):
                delattr(self, attr)
        device = self.__dict__.pop("_device", None)
        if device is not None:
            device.close()
        self._buffers = {}

    # -----------------------------------------------------------------------------------------------------
    # numpy through cuda-python

    def _chunks(self, n: int) -> Iterator[tuple[int, int]]:
        hi = self.batch_range[1]
        for start in range(0, n, hi):
            yield start, min(n, start + hi)

    def _buffer(self, name: str, nbytes: int) -> int:
        """A device buffer for ``name`` of at least ``nbytes``, kept across calls (cudaMalloc: aligned)."""
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self._device.synchronize()  # queued work may still use the old buffer
                self._device.free(ptr)
            ptr, size = self._device.malloc(nbytes), nbytes
            self._buffers[name] = (ptr, size)
        return ptr

    def _bind_input(self, shape: tuple[int, ...], ptr: int) -> None:
        context, name = self._context, self.input_name
        if not context.set_input_shape(name, shape):
            raise DensegraphError(f"TensorRT rejected input shape {shape} for {name!r}")
        if not context.set_tensor_address(name, ptr):
            raise DensegraphError(f"TensorRT rejected the address of {name!r}: {self._logged()}")

    def _output_shape(self, out: _Tensor) -> tuple[int, ...]:
        shape = tuple(_dims(self._context.get_tensor_shape(out.name)))
        if any(d < 0 for d in shape):
            raise DensegraphError(f"output {out.name!r} has unresolved shape {shape}")
        return shape

    def _bind_outputs(self) -> list[tuple[_Tensor, np.ndarray, int]]:
        """Host arrays and device buffers for every output at the current input shape, bound to the context."""
        bound = []
        for out in self.outputs:
            host = np.empty(self._output_shape(out), dtype=out.numpy_dtype)
            ptr = self._buffer(out.name, host.nbytes)
            if not self._context.set_tensor_address(out.name, ptr):
                raise DensegraphError(f"TensorRT rejected the address of {out.name!r}: {self._logged()}")
            bound.append((out, host, ptr))
        return bound

    def _execute(self, stream: int) -> None:
        if not self._context.execute_async_v3(stream):
            raise DensegraphError(f"TensorRT inference failed: {self._logged()}", path=str(self.path))

    def _logged(self) -> str:
        return "; ".join(self._logger.errors()) or "no error was logged"

    def _padded(self, chunk: np.ndarray) -> np.ndarray:
        lo = self.batch_range[0]
        if len(chunk) < lo:
            pad = np.zeros((lo - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        return np.ascontiguousarray(chunk)

    def _run_numpy(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=self.inputs[0].numpy_dtype)
        pieces: dict[str, list[np.ndarray]] = {t.name: [] for t in self.outputs}
        for start, stop in self._chunks(len(x)):
            chunk = self._padded(x[start:stop])
            ptr = self._buffer(self.input_name, chunk.nbytes)
            self._device.to_device(ptr, chunk)
            self._bind_input(tuple(chunk.shape), ptr)
            bound = self._bind_outputs()
            self._execute(self._device.stream_handle)
            for out, host, out_ptr in bound:
                self._device.to_host(host, out_ptr)
                pieces[out.name].append(host[: stop - start])
        self._device.synchronize()
        return {name: np.concatenate(p) if len(p) > 1 else p[0] for name, p in pieces.items()}

    def timed_call(self, batch: int, *, seed: int = 0) -> Callable[[], None]:
        """A call that runs the engine once on a random batch staged on the device (no transfers timed)."""
        lo, hi = self.batch_range
        if not lo <= batch <= hi:
            raise DensegraphError(f"batch {batch} is outside the engine's batch range {lo}..{hi}")
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((batch, *self.input_chw)).astype(self.inputs[0].numpy_dtype)
        ptr = self._buffer(self.input_name, x.nbytes)
        self._device.to_device(ptr, x)
        self._bind_input(tuple(x.shape), ptr)
        self._bind_outputs()
        self._device.synchronize()
        stream = self._device.stream_handle

        def run() -> None:
            self._execute(stream)
            self._device.synchronize()

        return run

    # -----------------------------------------------------------------------------------------------------
    # torch CUDA tensors, zero-copy

    def _zero_copy_device(self, x: Any) -> Any:
        """The torch device for a CUDA tensor (zero-copy path), or None for anything else."""
        if not cuda.is_cuda_tensor(x):
            return None
        if self._torch_device is None:
            self._torch_device = cuda.TorchCudaDevice(self.index)
        return self._torch_device

    def _run_torch(self, x: Any, device: Any) -> dict[str, Any]:
        import torch

        dtypes = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8}
        dtypes |= {"UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool}
        lo = self.batch_range[0]
        pieces: dict[str, list[Any]] = {t.name: [] for t in self.outputs}
        keep: list[Any] = []  # device buffers must outlive the enqueued work
        with device.scope():
            for start, stop in self._chunks(int(x.shape[0])):
                chunk = x[start:stop].to(device.device, dtype=dtypes[self.inputs[0].dtype], non_blocking=True)
                if chunk.shape[0] < lo:
                    pad = torch.zeros(
                        (lo - chunk.shape[0], *chunk.shape[1:]), dtype=chunk.dtype, device=chunk.device
                    )
                    chunk = torch.cat([chunk, pad])
                if not chunk.is_contiguous() or chunk.data_ptr() % cuda.ALIGNMENT:
                    chunk = _aligned_empty(torch, tuple(chunk.shape), chunk.dtype, chunk.device).copy_(chunk)
                self._bind_input(tuple(chunk.shape), chunk.data_ptr())
                keep.append(chunk)
                for out in self.outputs:
                    buf = _aligned_empty(torch, self._output_shape(out), dtypes[out.dtype], device.device)
                    if not self._context.set_tensor_address(out.name, buf.data_ptr()):
                        raise DensegraphError(
                            f"TensorRT rejected the address of {out.name!r}: {self._logged()}"
                        )
                    keep.append(buf)
                    pieces[out.name].append(buf[: stop - start])
                self._execute(device.stream_handle)
        device.synchronize()
        return {name: torch.cat(bufs) if len(bufs) > 1 else bufs[0] for name, bufs in pieces.items()}

    # -----------------------------------------------------------------------------------------------------

    def __call__(self, x: Any) -> Any:
        """Logits for a batch (the single output; a dict by name when the engine has several)."""
        device = self._zero_copy_device(x)
        torch_cpu = device is None and cuda.is_torch_tensor(x)
        if device is None and not torch_cpu:
            x = np.asarray(x)
        shape = tuple(int(d) for d in x.shape)
        expected = self.inputs[0].shape[1:]
        if len(shape) != 4 or any(e > 0 and d != e for d, e in zip(shape[1:], expected, strict=True)):
            wanted = ", ".join(str(d) if d > 0 else "?HW"[i] for i, d in enumerate(expected))
            raise DensegraphError(f"expected input [N, {wanted}], got {list(shape)}")
        refuse_outside_range(self.size_range, shape, f"{self.path.name} (TensorRT)")
        if shape[0] == 0:
            raise DensegraphError("empty batch")
        if device is not None:
            results = {k: device.hand_over(v) for k, v in self._run_torch(x, device).items()}
        elif torch_cpu:  # through numpy, back to torch
            import torch

            outs = self._run_numpy(x.detach().numpy())
            results = {k: torch.from_numpy(v) for k, v in outs.items()}
        else:
            results = self._run_numpy(x)
        return next(iter(results.values())) if len(results) == 1 else results


def _aligned_empty(torch: Any, shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
    """An uninitialised tensor whose address is a multiple of :data:`cuda.ALIGNMENT`."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = int(np.prod(shape)) * itemsize
    raw = torch.empty(nbytes + cuda.ALIGNMENT, dtype=torch.uint8, device=device)
    offset = (-raw.data_ptr()) % cuda.ALIGNMENT
    return raw[offset : offset + nbytes].view(dtype).view(shape)
