"""How to build an engine (:class:`EngineOptions`) and how a precision is realised (:func:`precision_plan`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from ...errors import BuildError, DensegraphError
from .onnx_info import OnnxInfo

__all__ = ["PRECISIONS", "DEFAULT_BATCH", "EngineOptions", "PrecisionPlan", "precision_plan"]

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_BATCH = (1, 8, 32)


@dataclass
class EngineOptions:
    """How to build an engine. ``input_name``/``input_chw`` come from the ONNX (:meth:`with_onnx`)."""

    precision: str = "fp32"
    batch: tuple[int, int, int] = DEFAULT_BATCH
    workspace_gib: float | None = None
    dla_core: int | None = None
    timing_cache: str | os.PathLike[str] | None = None
    hardware_compat: bool = False
    version_compat: bool = False
    input_name: str = "images"
    input_chw: tuple[int, int, int] | None = None
    static_batch: bool = False  # the ONNX fixes the batch: no optimization profile, no explicit shapes
    # a dynamic height and width (from the ONNX's input_range): the profile's (min, opt, max) (H, W)
    input_hw: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise DensegraphError(
                f"unknown precision {self.precision!r}", hint=f"one of {', '.join(PRECISIONS)}"
            )
        self.batch = tuple(int(b) for b in self.batch)  # type: ignore[assignment]
        if len(self.batch) != 3 or not 0 < self.batch[0] <= self.batch[1] <= self.batch[2]:
            raise DensegraphError(
                f"batch range must be MIN:OPT:MAX with 0 < MIN <= OPT <= MAX, got {self.batch}"
            )
        if self.workspace_gib is not None and not self.workspace_gib > 0:
            raise DensegraphError(f"workspace must be a positive number of GiB, got {self.workspace_gib}")
        if self.dla_core is not None:
            if self.dla_core < 0:
                raise DensegraphError(f"DLA core must be >= 0, got {self.dla_core}")
            if self.precision == "fp32":
                raise DensegraphError(
                    "DLA runs only FP16 and INT8 layers", hint="build with --precision fp16 or int8 for --dla"
                )
            if self.hardware_compat:
                raise DensegraphError(
                    "hardware-compatible engines cannot use DLA", hint="drop one of the two"
                )

    def with_onnx(self, info: OnnxInfo) -> EngineOptions:
        """These options with the input name, C, H, W and batch kind of ``info``; checks a static batch fits."""
        static = info.static_batch
        if static is not None and self.profile_batches() != (static, static, static):
            raise DensegraphError(
                f"the ONNX input has a fixed batch of {static}, but the batch range is {self.batch}",
                path=info.path,
                hint=f"export with a dynamic batch, or pass --batch-range {static}:{static}:{static}",
            )
        return replace(
            self,
            input_name=info.input_name,
            input_chw=info.chw,
            static_batch=static is not None,
            input_hw=info.size_range,
        )

    @property
    def needs_profile(self) -> bool:
        """Whether the input has a dynamic axis (batch, or height and width), so an optimization profile."""
        return not self.static_batch or self.input_hw is not None

    def profile_batches(self) -> tuple[int, int, int]:
        """(min, opt, max) batch of the optimization profile; DLA needs static shapes, at the opt batch."""
        if self.dla_core is not None:
            return (self.batch[1],) * 3
        return self.batch

    def profile_sizes(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(min, opt, max) (H, W) of the profile: the ONNX's size range (DLA: static, its opt size), else the
        fixed size three times."""
        if self.input_chw is None:
            raise ValueError("input_chw is unknown: call with_onnx() first")
        if self.input_hw is None:
            return ((self.input_chw[1], self.input_chw[2]),) * 3
        if self.dla_core is not None:
            return (self.input_hw[1],) * 3
        return self.input_hw

    def profile_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """The (min, opt, max) NCHW shapes of the input."""
        if self.input_chw is None:
            raise ValueError("input_chw is unknown: call with_onnx() first")
        c = self.input_chw[0]
        batches, sizes = self.profile_batches(), self.profile_sizes()
        lo, opt, hi = ((n, c, *hw) for n, hw in zip(batches, sizes, strict=True))
        return lo, opt, hi


@dataclass(frozen=True)
class PrecisionPlan:
    """How a precision is realised: a strongly typed network, or weak-typing builder flags."""

    strongly_typed: bool
    builder_flags: tuple[str, ...] = ()  # BuilderFlag member names, only where the module has them
    tf32: bool = True
    # DLA int8 on TensorRT 8.6/10.x: build from the Q/DQ-free float graph with a calibration cache of the
    # Q/DQ scales (calibration.py), since that DLA takes no explicit quantization
    implicit_int8: bool = False


def precision_plan(
    precision: str, info: OnnxInfo, *, legacy_flags: bool, dla: bool, strong_typing: bool = True
) -> PrecisionPlan:
    """Choose strong typing or weak-typing builder flags for ``precision`` on this ONNX.

    ``legacy_flags``: the TensorRT at hand still has ``BuilderFlag.FP16``/``INT8`` (8.6 and 10.x).
    ``strong_typing``: it has ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (10.x and 11.x). Typed ONNX
    models build strongly typed where that exists, except for DLA on TensorRT 10, which takes the precision
    flags; TensorRT 8.6 builds every precision with the flags (a typed ONNX keeps its casts and Q/DQ). An int8
    DLA build with the flags (8.6, 10.x) is implicit quantization: DLA there takes no Q/DQ layers, so the
    float graph is built with INT8+FP16 and a calibration cache of the Q/DQ scales; TensorRT 11.4.1+ DLA
    takes the Q/DQ graph strongly typed.
    """
    hint_export = "`densegraph build SPEC --precision {p}` writes a matching ONNX"
    if precision == "fp32":
        if info.typed:
            raise BuildError(
                f"this ONNX is {info.precision}-typed but fp32 was asked for",
                path=info.path,
                hint=f"pass --precision {info.precision}",
            )
        # fp32 means fp32: TF32 convolutions would miss the 1e-3 parity bar.
        return PrecisionPlan(strongly_typed=False, tf32=False)
    weak = legacy_flags and (dla or not strong_typing)
    if precision == "fp16":
        if info.has_qdq:
            raise BuildError(
                "this ONNX is int8 (Q/DQ) but fp16 was asked for",
                path=info.path,
                hint="pass --precision int8",
            )
        if info.has_fp16 and not weak and strong_typing:
            return PrecisionPlan(strongly_typed=True)
        if legacy_flags:
            return PrecisionPlan(strongly_typed=False, builder_flags=("FP16",))
        raise BuildError(
            "this TensorRT is strongly typed only (no FP16 builder flag): fp16 needs an fp16-typed ONNX, "
            "this one is fp32",
            path=info.path,
            hint=hint_export.format(p="fp16"),
        )
    if not info.has_qdq:
        raise BuildError(
            "int8 needs a Q/DQ (QuantizeLinear/DequantizeLinear) ONNX; its scales are the calibration",
            path=info.path,
            hint=hint_export.format(p="int8"),
        )
    if info.asymmetric_qdq:
        names = ", ".join(info.asymmetric_qdq[:3]) + (", ..." if len(info.asymmetric_qdq) > 3 else "")
        raise BuildError(
            f"TensorRT takes symmetric int8 Q/DQ only (int8 zero point 0); "
            f"{len(info.asymmetric_qdq)} node(s) are not: {names}",
            path=info.path,
            hint="quantize to signed int8 with symmetric activations (onnxruntime: ActivationSymmetric)",
        )
    if weak and dla:  # NVIDIA/TensorRT#2222, Model-Optimizer#1661: that DLA runs implicit quantization only
        return PrecisionPlan(strongly_typed=False, builder_flags=("INT8", "FP16"), implicit_int8=True)
    if weak:  # TensorRT 8.6 takes Q/DQ only with the INT8 flag set; FP16 lets the rest run in half
        return PrecisionPlan(strongly_typed=False, builder_flags=("INT8", "FP16"))
    if not strong_typing:
        raise BuildError("this TensorRT has neither strong typing nor the INT8 builder flag")
    return PrecisionPlan(strongly_typed=True)
