"""A recording stand-in for the ``tensorrt`` module, shaped like TensorRT 8.5, 8.6, 10 or 11.

Only the surface densegraph's backend uses exists, with the real names and signatures (checked against the
real bindings by test_tensorrt_api.py): what a flavor lacks raises AttributeError, like the real module.
The flavors differ where the real ones do: TensorRT 11 has no ``BuilderFlag.FP16``/``INT8`` (strongly typed
only) and no ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``; TensorRT 8.6 has no ``STRONGLY_TYPED`` and no
``DataType.BF16``/``INT64``, and ``create_network(0)`` there is an implicit-batch network the ONNX parser
refuses; 8.5 also lacks ``BuilderFlag.VERSION_COMPATIBLE`` (what densegraph refuses as too old).

It is strict where the real one is: ``set_tensor_address`` refuses an address not aligned to 256 bytes; a
version-compatible plan deserializes only with ``Runtime.engine_host_code_allowed``; a DLA plan runs on the
core ``Runtime.DLA_core`` names at deserialization (recorded as ``("dla_core", core)`` per execution); a
strongly typed network refuses precision builder flags; a dynamic input needs exactly one optimization
profile, a static one none. Implicit quantization (8.6/10.x, weakly typed): a DLA build puts Q/DQ layers on
the GPU (with ``GPU_FALLBACK``, recorded in the plan's ``gpu_fallback``) or fails without it (NVIDIA/TensorRT
#2222: that DLA takes no explicit quantization); INT8 on a network without Q/DQ needs an
``IInt8EntropyCalibrator2`` whose cache header names this TensorRT (``TRT-<NV_TENSORRT_VERSION>-
EntropyCalibration2``), else it calibrates -- on no data here, which fails; tensors without a scale are
warned about, and the engine rounds each scaled tensor to its int8 grid when it runs.

Every call is appended to ``module.fake.calls`` as ``(what, *args)``. The "engine" is honest enough to run:
the plan is JSON describing the parsed network, and ``execute_async_v3`` reads the input from the address it
was given, runs the ONNX with onnxruntime (an fp16 model onnxruntime's CPU cannot run goes through the fake's
own fp32 upcast) and writes the result to the output address.
"""

from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import json
import struct
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VERSIONS = {"8.5": "8.5.3.1", "8": "8.6.1.6", "10": "10.16.1.11", "11": "11.4.0.106"}
CACHE_HEADERS = {"8.5": "TRT-8503-EntropyCalibration2", "8": "TRT-8601-EntropyCalibration2",
                 "10": "TRT-101601-EntropyCalibration2"}  # fmt: skip
ALIGNMENT = 256
PLAN_MAGIC = b"FAKEPLAN"


@dataclass
class FakeState:
    """Knobs and the call record of one fake module."""

    flavor: str
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    parse_errors: list[dict[str, Any]] = field(default_factory=list)
    build_error: str | None = None  # build_serialized_network logs this and returns None
    reject_timing_cache: bool = False
    num_dla_cores: int = 0
    perturb: float = 0.0  # added to every output of the "engine"
    plans: list[bytes] = field(default_factory=list)
    cache_builds: int = 0

    def named(self, what: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == what]

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


_ONNX_TO_TRT = {1: "FLOAT", 10: "HALF", 16: "BF16", 3: "INT8", 2: "UINT8", 6: "INT32", 7: "INT64", 9: "BOOL"}
_TRT_TO_NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64}


def make_fake_tensorrt(flavor: str) -> types.ModuleType:
    """A fresh fake ``tensorrt`` module; ``flavor`` is "8.5", "8" (8.6), "10" or "11"."""
    state = FakeState(flavor)
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", loader=None)
    trt.__version__ = VERSIONS[flavor]
    trt.fake = state

    trt8 = flavor in ("8", "8.5")
    builder_flags = ["DEBUG", "GPU_FALLBACK", "TF32", "VERSION_COMPATIBLE"]
    network_flags = ["STRONGLY_TYPED"]
    data_types = ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "BF16", "INT64"]
    compat_levels = ["AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY"]
    if flavor == "10":
        builder_flags = ["FP16", "BF16", "INT8", *builder_flags]
        network_flags = ["EXPLICIT_BATCH", *network_flags]
    if trt8:
        builder_flags = ["FP16", "INT8", *builder_flags]
        network_flags = ["EXPLICIT_BATCH"]
        data_types = data_types[:6]
        compat_levels = compat_levels[:1]
    if flavor == "8.5":
        builder_flags = builder_flags[:-1]
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", builder_flags, start=0)
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", network_flags, start=0)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM"], start=0)
    trt.DeviceType = enum.IntEnum("DeviceType", ["GPU", "DLA"], start=0)
    if flavor != "8.5":
        trt.HardwareCompatibilityLevel = enum.IntEnum("HardwareCompatibilityLevel", compat_levels, start=1)
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", ["INPUT", "OUTPUT"], start=1)
    trt.DataType = enum.IntEnum("DataType", data_types)
    precision_flags = {
        getattr(trt.BuilderFlag, f) for f in ("FP16", "BF16", "INT8") if hasattr(trt.BuilderFlag, f)
    }
    trt.ErrorCode = enum.IntEnum(
        "ErrorCode", ["SUCCESS", "INTERNAL_ERROR", "INVALID_NODE", "UNSUPPORTED_NODE", "INVALID_GRAPH"]
    )
    severity = enum.IntEnum("Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"], start=0)

    def record(*call: Any) -> None:
        state.calls.append(call)

    class ILogger:
        Severity = severity

        def __init__(self) -> None:
            record("ILogger.__init__")

        def log(self, sev: Any, msg: str) -> None:  # pragma: no cover - overridden
            raise NotImplementedError

    for member in severity:
        setattr(ILogger, member.name, member)

    class Logger(ILogger):
        def __init__(self, min_severity: Any = severity.WARNING) -> None:
            super().__init__()
            self.min_severity = min_severity

        def log(self, sev: Any, msg: str) -> None:
            pass

    @dataclass
    class ITensor:
        name: str
        shape: tuple[int, ...]
        dtype: Any

    class INetworkDefinition:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
            # TensorRT 8.x: without EXPLICIT_BATCH the network has an implicit batch dimension
            self.implicit_batch = trt8 and not (explicit is not None and flags & (1 << int(explicit)))
            strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
            self.strongly_typed = strongly is not None and bool(flags & (1 << int(strongly)))
            self._inputs: list[ITensor] = []
            self._outputs: list[ITensor] = []
            self.onnx_path: str | None = None
            self.qdq_layers: list[str] = []
            self.tensors: list[str] = []  # activation tensors (network inputs and layer outputs)

        @property
        def num_inputs(self) -> int:
            return len(self._inputs)

        @property
        def num_outputs(self) -> int:
            return len(self._outputs)

        def get_input(self, index: int) -> ITensor:
            return self._inputs[index]

        def get_output(self, index: int) -> ITensor:
            return self._outputs[index]

    class ParserError:
        def __init__(self, spec: dict[str, Any]) -> None:
            self._spec = spec

        def code(self) -> Any:
            return trt.ErrorCode[self._spec.get("code", "UNSUPPORTED_NODE")]

        def desc(self) -> str:
            return self._spec["desc"]

        def node(self) -> int:
            return self._spec.get("node", -1)

        def node_name(self) -> str:
            return self._spec.get("name", "")

        def node_operator(self) -> str:
            return self._spec.get("op", "")

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
            assert isinstance(network, INetworkDefinition) and isinstance(logger, ILogger)
            record("OnnxParser", network, logger)
            self.network = network
            self.logger = logger
            self._errors: list[ParserError] = []

        def parse_from_file(self, model: str) -> bool:
            record("OnnxParser.parse_from_file", model)
            assert isinstance(model, str)
            if state.parse_errors:
                self._errors = [ParserError(e) for e in state.parse_errors]
                return False
            if self.network.implicit_batch:
                self._errors = [
                    ParserError(
                        {"code": "INVALID_GRAPH", "desc": "the network must have an explicit batch dimension"}
                    )
                ]
                return False
            import onnx

            graph = onnx.load(model, load_external_data=False).graph
            init = {t.name for t in graph.initializer}

            def tensor(v: Any) -> ITensor:
                tt = v.type.tensor_type
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
                return ITensor(v.name, dims, trt.DataType[_ONNX_TO_TRT[tt.elem_type]])

            self.network._inputs = [tensor(v) for v in graph.input if v.name not in init]
            self.network._outputs = [tensor(v) for v in graph.output]
            self.network.onnx_path = model
            self.network.qdq_layers = [
                n.name or n.output[0]
                for n in graph.node
                if n.op_type in ("QuantizeLinear", "DequantizeLinear")
            ]
            consts = init | {n.output[0] for n in graph.node if n.op_type == "Constant"}
            self.network.tensors = [t.name for t in self.network._inputs] + [
                o for n in graph.node if n.op_type != "Constant" for o in n.output if o and o not in consts
            ]
            return True

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, index: int) -> ParserError:
            return self._errors[index]

    class IOptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - real names
            record("IOptimizationProfile.set_shape", input, tuple(min), tuple(opt), tuple(max))
            self.shapes[input] = (tuple(min), tuple(opt), tuple(max))

    class ITimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> memoryview:
            return memoryview(self.data + b"+build%d" % state.cache_builds)

    calibrators = flavor != "11"  # TensorRT 11 removed implicit quantization

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            record("IInt8EntropyCalibrator2.__init__")

        def get_batch_size(self) -> int:  # pragma: no cover - pure virtual in TensorRT
            raise NotImplementedError

        def get_batch(self, names: list[str]) -> Any:  # pragma: no cover
            raise NotImplementedError

        def read_calibration_cache(self) -> Any:  # pragma: no cover
            raise NotImplementedError

        def write_calibration_cache(self, cache: Any) -> None:  # pragma: no cover
            raise NotImplementedError

    class IBuilderConfig:
        _recorded = ("default_device_type", "DLA_core", "hardware_compatibility_level") + (
            ("int8_calibrator",) if calibrators else ()
        )

        def __init__(self, logger: ILogger) -> None:
            object.__setattr__(self, "logger", logger)
            object.__setattr__(self, "flags", set())
            object.__setattr__(self, "profiles", [])
            object.__setattr__(self, "pools", {})
            object.__setattr__(self, "cache", None)
            object.__setattr__(self, "default_device_type", trt.DeviceType.GPU)
            object.__setattr__(self, "DLA_core", -1)
            object.__setattr__(
                self, "hardware_compatibility_level", 0
            )  # NONE, which the fake has no member for
            if calibrators:
                object.__setattr__(self, "int8_calibrator", None)
            self.flags.add(trt.BuilderFlag.TF32)  # on by default, as in TensorRT

        def __setattr__(self, name: str, value: Any) -> None:
            if name not in self._recorded:
                raise AttributeError(f"IBuilderConfig has no writable attribute {name!r}")
            record(f"IBuilderConfig.{name}", value)
            object.__setattr__(self, name, value)

        def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
            record("IBuilderConfig.set_memory_pool_limit", pool, pool_size)
            assert isinstance(pool, trt.MemoryPoolType) and isinstance(pool_size, int)
            self.pools[pool] = pool_size

        def set_flag(self, flag: Any) -> None:
            assert isinstance(flag, trt.BuilderFlag)
            record("IBuilderConfig.set_flag", flag)
            self.flags.add(flag)

        def clear_flag(self, flag: Any) -> None:
            assert isinstance(flag, trt.BuilderFlag)
            record("IBuilderConfig.clear_flag", flag)
            self.flags.discard(flag)

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            record("IBuilderConfig.add_optimization_profile", profile)
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
            record("IBuilderConfig.create_timing_cache", bytes(serialized_timing_cache))
            return ITimingCache(serialized_timing_cache)

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            record("IBuilderConfig.set_timing_cache", cache.data, ignore_mismatch)
            if state.reject_timing_cache and cache.data:
                self.logger.log(severity.ERROR, "Error Code 1: Serialization (timing cache mismatch)")
                return False
            object.__setattr__(self, "cache", cache)
            return True

        def get_timing_cache(self) -> ITimingCache | None:
            record("IBuilderConfig.get_timing_cache")
            return self.cache

    class Builder:
        def __init__(self, logger: ILogger) -> None:
            assert isinstance(logger, ILogger)
            record("Builder", logger)
            self.logger = logger

        @property
        def num_DLA_cores(self) -> int:  # noqa: N802 - the real name
            return state.num_dla_cores

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            record("Builder.create_network", flags)
            assert isinstance(flags, int)
            known = sum(1 << int(f) for f in trt.NetworkDefinitionCreationFlag)
            assert flags & ~known == 0, f"unknown network flags {flags:#x}"
            return INetworkDefinition(flags)

        def create_builder_config(self) -> IBuilderConfig:
            record("Builder.create_builder_config")
            return IBuilderConfig(self.logger)

        def create_optimization_profile(self) -> IOptimizationProfile:
            record("Builder.create_optimization_profile")
            return IOptimizationProfile()

        def build_serialized_network(
            self, network: INetworkDefinition, config: IBuilderConfig
        ) -> memoryview | None:
            record("Builder.build_serialized_network", network, config)
            if state.build_error is not None:
                self.logger.log(severity.WARNING, "some warning before the failure")
                self.logger.log(severity.ERROR, state.build_error)
                return None
            refused = sorted(f.name for f in config.flags & precision_flags)
            if network.strongly_typed and refused:
                self.logger.log(
                    severity.ERROR, f"API Usage Error: {refused} not allowed with a strongly typed network"
                )
                return None
            dynamic = any(-1 in t.shape for t in network._inputs)
            if dynamic and len(config.profiles) != 1:
                self.logger.log(severity.ERROR, "a dynamic input needs exactly one optimization profile")
                return None
            for profile in config.profiles if dynamic else []:
                for t in network._inputs:  # static dims fixed, dynamic ones min <= opt <= max, all > 0
                    shapes = profile.shapes.get(t.name)
                    if shapes is None or any(len(s) != len(t.shape) for s in shapes):
                        self.logger.log(
                            severity.ERROR, f"the profile has no {len(t.shape)}-d shape of {t.name}"
                        )
                        return None
                    for i, d in enumerate(t.shape):
                        lo, opt, hi = (s[i] for s in shapes)
                        if (d > 0 and {lo, opt, hi} != {d}) or not 0 < lo <= opt <= hi:
                            self.logger.log(
                                severity.ERROR, f"profile dimension {i} of {t.name}: {lo}/{opt}/{hi}"
                            )
                            return None
            for profile in [] if dynamic else config.profiles:  # a static input's profile is its shape
                for t in network._inputs:
                    if set(profile.shapes.get(t.name, (t.shape,))) != {t.shape}:
                        self.logger.log(severity.ERROR, "the profile contradicts the static input shape")
                        return None
            dla = config.default_device_type == trt.DeviceType.DLA
            implicit = _implicit_quantization(self.logger, network, config, dla)
            if implicit is None:
                return None
            if config.cache is not None:
                state.cache_builds += 1
            profile_shapes = config.profiles[0].shapes if config.profiles else {}
            plan = {
                "version": trt.__version__,
                "onnx": network.onnx_path,
                "network_flags": network.flags,
                "builder_flags": sorted(f.name for f in config.flags),
                "device": config.default_device_type.name,
                "inputs": [[t.name, list(t.shape), t.dtype.name] for t in network._inputs],
                "outputs": [[t.name, list(t.shape), t.dtype.name] for t in network._outputs],
                "profile": {k: [list(s) for s in v] for k, v in profile_shapes.items()},
                "version_compatible": trt.BuilderFlag.VERSION_COMPATIBLE in config.flags
                if hasattr(trt.BuilderFlag, "VERSION_COMPATIBLE")
                else False,
                "dla": dla,
                **implicit,
            }
            blob = PLAN_MAGIC + json.dumps(plan).encode()
            state.plans.append(blob)
            return memoryview(blob)  # like IHostMemory: a buffer, not bytes

    def _implicit_quantization(
        logger: ILogger, network: INetworkDefinition, config: IBuilderConfig, dla: bool
    ) -> dict[str, Any] | None:
        """What the weakly typed generation does with INT8: DLA puts Q/DQ layers on the GPU; a network without
        Q/DQ takes its scales from the calibrator's cache. None (with the error logged) when it fails."""
        plan: dict[str, Any] = {"gpu_fallback": [], "int8_scales": {}}
        if network.strongly_typed:
            return (
                plan  # TensorRT 11 (and --stronglyTyped 10.x): Q/DQ taken as they are, DLA 11.4.1+ included
            )
        if dla and network.qdq_layers:
            for name in network.qdq_layers:
                if trt.BuilderFlag.GPU_FALLBACK not in config.flags:
                    logger.log(
                        severity.ERROR, f"Layer '{name}' is not supported on DLA and GPU fallback is off"
                    )
                    return None
                logger.log(severity.WARNING, f"Layer '{name}' is not supported on DLA, falling back to GPU")
            plan["gpu_fallback"] = list(network.qdq_layers)
        int8 = getattr(trt.BuilderFlag, "INT8", None)
        if int8 is None or int8 not in config.flags or network.qdq_layers:
            return plan
        calibrator = getattr(config, "int8_calibrator", None)
        if not isinstance(calibrator, IInt8EntropyCalibrator2):
            logger.log(
                severity.ERROR, "INT8 without Q/DQ needs a calibrator (IInt8EntropyCalibrator2 for DLA)"
            )
            return None
        cache = calibrator.read_calibration_cache()
        text = bytes(cache).decode() if cache else ""
        if not text.startswith(CACHE_HEADERS[flavor] + "\n"):  # TensorRT skips it and calibrates
            record("calibrate", text.split("\n", 1)[0])
            if not calibrator.get_batch([t.name for t in network._inputs]):
                logger.log(severity.ERROR, "Calibration failure: no calibration batch and no usable cache")
                return None
        scales = {}
        for line in text.splitlines()[1:]:
            name, _, value = line.rpartition(": ")
            scales[name] = struct.unpack(">f", bytes.fromhex(value))[0]
        for name in [n for n in scales if n not in network.tensors]:
            logger.log(severity.WARNING, f"calibration cache entry {name!r} names no tensor of the network")
        for name in [n for n in network.tensors if n not in scales]:
            logger.log(severity.WARNING, f"Missing scale and zero-point for tensor {name}, expect fall back")
        plan["int8_scales"] = {n: s for n, s in scales.items() if n in network.tensors}
        return plan

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine) -> None:
            self.engine = engine
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: Any) -> bool:
            record("IExecutionContext.set_input_shape", name, tuple(shape))
            static = self.engine.tensors[name][1]
            lo, _, hi = self.engine.profile.get(name, (static, static, static))
            shape = tuple(shape)
            ok = len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True))
            if ok:
                self.shapes[name] = shape
            return ok

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            if name in self.shapes:
                return self.shapes[name]
            declared = self.engine.tensors[name][1]
            if self.shapes and any(d < 0 for d in declared[1:]):  # a dynamic height and width
                return _inferred_shape(self.engine.onnx, self.shapes, name)
            batch = next(iter(self.shapes.values()))[0] if self.shapes else -1
            return tuple(batch if d < 0 else d for d in declared)

        def set_tensor_address(self, name: str, memory: int) -> bool:
            record("IExecutionContext.set_tensor_address", name)
            assert isinstance(memory, int) and memory != 0
            if memory % ALIGNMENT:
                self.engine.logger.log(
                    severity.ERROR, f"setTensorAddress: address of {name} is not aligned to {ALIGNMENT} bytes"
                )
                return False
            self.addresses[name] = memory
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            record("IExecutionContext.execute_async_v3", stream_handle)

            engine = self.engine
            (in_name,) = engine.input_names
            in_shape = self.shapes[in_name]
            x = _read(self.addresses[in_name], in_shape, engine.tensors[in_name][2])
            if engine.dla_core is not None:
                record("dla_core", engine.dla_core)
            results = _run_onnx(engine.onnx, in_name, x, engine.int8_scales)
            for out_name, value in zip(engine.output_names, results, strict=True):
                value = np.asarray(value) + state.perturb
                _write(self.addresses[out_name], value.astype(_TRT_TO_NUMPY[engine.tensors[out_name][2]]))
            return True

    class ICudaEngine:
        def __init__(self, plan: dict[str, Any], logger: ILogger, dla_core: int | None) -> None:
            self.logger = logger
            self.dla_core = dla_core
            self.onnx = plan["onnx"]
            self.tensors = {n: (trt.TensorIOMode.INPUT, tuple(s), d) for n, s, d in plan["inputs"]}
            self.tensors |= {n: (trt.TensorIOMode.OUTPUT, tuple(s), d) for n, s, d in plan["outputs"]}
            self.input_names = [n for n, *_ in plan["inputs"]]
            self.output_names = [n for n, *_ in plan["outputs"]]
            self.profile = {k: [tuple(s) for s in v] for k, v in plan["profile"].items()}
            self.int8_scales = plan["int8_scales"]

        @property
        def num_io_tensors(self) -> int:
            return len(self.tensors)

        def get_tensor_name(self, index: int) -> str:
            return list(self.tensors)[index]

        def get_tensor_mode(self, name: str) -> Any:
            return self.tensors[name][0]

        def get_tensor_dtype(self, name: str) -> Any:
            return trt.DataType[self.tensors[name][2]]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self.tensors[name][1]

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
            assert profile_index == 0
            if name not in self.profile:  # a static engine was built without a profile
                raise RuntimeError(f"no optimization profile holds {name!r}")
            return self.profile[name]

        def create_execution_context(self) -> IExecutionContext:
            record("ICudaEngine.create_execution_context")
            return IExecutionContext(self)

    class Runtime:
        _writable = ("logger", "engine_host_code_allowed", "DLA_core")

        def __init__(self, logger: ILogger) -> None:
            assert isinstance(logger, ILogger)
            record("Runtime", logger)
            object.__setattr__(self, "logger", logger)
            object.__setattr__(self, "engine_host_code_allowed", False)
            object.__setattr__(self, "DLA_core", -1)

        def __setattr__(self, name: str, value: Any) -> None:
            if name not in self._writable:
                raise AttributeError(f"Runtime has no writable attribute {name!r}")
            if name != "logger":
                record(f"Runtime.{name}", value)
            object.__setattr__(self, name, value)

        def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
            data = bytes(serialized_engine)
            record("Runtime.deserialize_cuda_engine", len(data))
            if not data.startswith(PLAN_MAGIC):
                self.logger.log(
                    severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization"
                )
                return None
            plan = json.loads(data[len(PLAN_MAGIC) :])
            if plan["version"] != trt.__version__:
                self.logger.log(
                    severity.ERROR, f"plan built with {plan['version']}, runtime {trt.__version__}"
                )
                return None
            if plan.get("version_compatible") and not self.engine_host_code_allowed:
                self.logger.log(
                    severity.ERROR,
                    "Error Code 1: Serialization (the plan contains host code; engine host code is not allowed)",
                )
                return None
            dla_core = max(self.DLA_core, 0) if plan.get("dla") else None
            if dla_core is not None and dla_core >= state.num_dla_cores:
                self.logger.log(severity.ERROR, f"DLA core {dla_core} does not exist")
                return None
            return ICudaEngine(plan, self.logger, dla_core)

    if trt8:  # node_name/node_operator came with TensorRT 10
        del ParserError.node_name, ParserError.node_operator
    if calibrators:
        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    for cls in (ILogger, Logger, Builder, OnnxParser, Runtime, ParserError):
        setattr(trt, cls.__name__, cls)
    trt.INetworkDefinition, trt.IBuilderConfig, trt.ICudaEngine = (
        INetworkDefinition,
        IBuilderConfig,
        ICudaEngine,
    )
    trt.IExecutionContext, trt.ITimingCache = IExecutionContext, ITimingCache
    return trt


def _run_onnx(path: str, in_name: str, x: np.ndarray, int8_scales: dict[str, float]) -> list[np.ndarray]:
    """onnxruntime on the CPU; an fp16 model it has no kernels for runs as an fp32 upcast (the fake's own);
    implicit int8 rounds each tensor of ``int8_scales`` to its int8 grid."""
    import onnx
    import onnxruntime as ort

    source: Any = path
    options = ort.SessionOptions()
    if int8_scales:
        source = round_to_int8(onnx.load(path), int8_scales).SerializeToString()
    if int8_scales or any(n.op_type == "QuantizeLinear" for n in onnx.load(path).graph.node):
        # int8 as TensorRT computes it: the Q/DQ arithmetic as written, not onnxruntime's fused kernels
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception:  # NOT_IMPLEMENTED for fp16 kernels
        model = onnx.load(path)
        _fp16_to_fp32(model.graph)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {in_name: x})


def _inferred_shape(path: str, inputs: dict[str, tuple[int, ...]], name: str) -> tuple[int, ...]:
    """An output's shape for the set input shapes, as TensorRT resolves it: ONNX shape inference on the model
    with those input shapes fixed (-1 where it cannot tell)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    for value in model.graph.input:
        if value.name in inputs:
            for dim, size in zip(value.type.tensor_type.shape.dim, inputs[value.name], strict=True):
                dim.ClearField("dim_param")
                dim.dim_value = size
    for value in model.graph.output:
        value.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    (out,) = [v for v in inferred.graph.output if v.name == name]
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in out.type.tensor_type.shape.dim)


def round_to_int8(model: Any, scales: dict[str, float]) -> Any:
    """A copy of ``model`` whose tensors named in ``scales`` go through a symmetric int8 QuantizeLinear/
    DequantizeLinear at that scale: what TensorRT's implicit quantization does to them (the test's own)."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    outputs = {v.name for v in graph.output}
    source = {n: f"{n}_float" if n in outputs else n for n in scales}  # a graph output keeps its name
    rounded = {n: n if n in outputs else f"{n}_int8" for n in scales}
    pairs = {}
    for i, name in enumerate(scales):
        graph.initializer.extend(
            [numpy_helper.from_array(np.array(scales[name], np.float32), f"_s{i}"),
             numpy_helper.from_array(np.array(0, np.int8), f"_z{i}")]
        )  # fmt: skip
        pairs[source[name]] = [
            helper.make_node("QuantizeLinear", [source[name], f"_s{i}", f"_z{i}"], [f"_q{i}"]),
            helper.make_node("DequantizeLinear", [f"_q{i}", f"_s{i}", f"_z{i}"], [rounded[name]]),
        ]
    order = list(graph.node)
    graph.ClearField("node")
    for value in graph.input:  # graph inputs first, the rest right after their producer
        graph.node.extend(pairs.get(value.name, []))
    for node in order:
        for j, name in enumerate(node.input):
            node.input[j] = rounded.get(name, name)
        for j, name in enumerate(node.output):
            node.output[j] = source.get(name, name)
        graph.node.append(node)
        for name in node.output:
            graph.node.extend(pairs.get(name, []))
    return out


def _fp16_to_fp32(graph: Any) -> None:
    from onnx import TensorProto, numpy_helper

    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT16:
            graph.initializer[i].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name)
            )
    for v in [*graph.input, *graph.output, *graph.value_info]:
        if v.type.tensor_type.elem_type == TensorProto.FLOAT16:
            v.type.tensor_type.elem_type = TensorProto.FLOAT
    for node in graph.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT16:
                a.i = TensorProto.FLOAT


def _read(address: int, shape: tuple[int, ...], dtype_name: str) -> np.ndarray:
    dtype = np.dtype(_TRT_TO_NUMPY[dtype_name])
    count = int(np.prod(shape))
    raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(address)
    return np.frombuffer(bytes(raw), dtype=dtype).reshape(shape)


def _write(address: int, value: np.ndarray) -> None:
    data = np.ascontiguousarray(value).tobytes()
    ctypes.memmove(address, data, len(data))


# ---------------------------------------------------------------------------------------------------------
# tiny real ONNX models with the project's signature: images [batch, 3, hw, hw] float32 -> logits [batch, 5]


def make_tiny_onnx(
    path: Path, kind: str = "fp32", *, batch: int | str = "batch", classes: int = 5, hw: int = 8
) -> Path:
    """GlobalAveragePool -> Flatten -> Gemm; ``kind`` fp16 is typed (fp16 inside, Casts at the float32 I/O),
    int8 has symmetric QuantizeLinear/DequantizeLinear on the input and the weights, uint8 an asymmetric
    (uint8, zero point 128) input Q/DQ."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    weight = rng.standard_normal((classes, 3)).astype(np.float32)
    bias = rng.standard_normal(classes).astype(np.float32)
    nodes = []
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    x, w = "images", "w"
    if kind in ("int8", "uint8"):  # uint8: asymmetric activations, which TensorRT refuses
        x_zero = np.array(128, np.uint8) if kind == "uint8" else np.array(0, np.int8)
        inits += [
            numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
            numpy_helper.from_array(x_zero, "x_zero"),
            numpy_helper.from_array(np.array(0.02, np.float32), "w_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["images", "x_scale", "x_zero"], ["xq"], name="q_in"),
            helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xdq"], name="dq_in"),
            helper.make_node("QuantizeLinear", ["w", "w_scale", "w_zero"], ["wq"], name="q_w"),
            helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zero"], ["wdq"], name="dq_w"),
        ]
        x, w = "xdq", "wdq"
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", w, "b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, hw, hw])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    if kind == "fp16":
        from onnxconverter_common import float16

        model = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
