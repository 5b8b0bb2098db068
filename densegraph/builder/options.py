"""What a build makes: :class:`BuildOptions`, the checks that refuse a bad combination before any work, and
the graph passes the chosen precision needs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import BuildError
from ..export.onnx import DEFAULT_OPSET, check_opset

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["BuildOptions", "PRECISIONS", "TARGETS", "check_features", "check_options", "graph_passes"]

PRECISIONS = ("fp32", "fp16", "int8")
TARGETS = ("onnx", "tensorrt")


@dataclass(frozen=True)
class BuildOptions:
    """What to build (every field has the CLI flag of the same name; see ``densegraph build --help``).

    ``output``: the build folder (default ``build/<name>``). ``weights``: a state_dict or checkpoint
    (torchvision's keys accepted); without it the model is initialised from ``seed``. ``precision``: fp32,
    fp16 (fp16 compute, fp32 ``images``/``logits``) or int8 (needs ``calib``: ``digits``, an image folder or an
    ``.npy``; ``calib_samples`` of it, run through the calibrator ``calib_batch`` at a time: peak memory grows
    with it, the MinMax ranges do not depend on it; ``bias_correction`` moves each layer's bias by the mean shift
    its int8 weights cause, :mod:`densegraph.export.bias_correction`). ``target``: ``onnx``, or ``tensorrt`` for an engine too (with
    ``batch`` MIN:OPT:MAX as its profile and the TensorRT fields at the end). ``plain``: emit without the graph
    rewrites. ``batch_tile``: ``off`` (default), ``auto`` (a cache-sized tile, kept only if faster on this
    machine) or a count of samples (:mod:`densegraph.export.tiling`). ``labels``: class names (a file with one
    a line or a JSON list, or a sequence), written into the model's metadata.
    """

    output: str | os.PathLike[str] | None = None
    weights: str | None = None
    precision: str = "fp32"
    target: str = "onnx"
    calib: str | None = None
    calib_samples: int = 256
    calib_batch: int = 8
    bias_correction: bool = True
    batch: tuple[int, int, int] = (1, 8, 32)
    opset: int = DEFAULT_OPSET
    plain: bool = False
    batch_tile: str | int = "off"
    seed: int = 0
    labels: str | os.PathLike[str] | Sequence[str] | None = None
    workspace: float | None = None
    dla: int | None = None
    timing_cache: str | None = None
    hardware_compat: bool = False
    version_compat: bool = False


def check_options(options: BuildOptions) -> None:
    """Refuse, before any work, options that cannot build (each message names the flag)."""
    check_opset(options.opset)
    for name, value, choices in (
        ("precision", options.precision, PRECISIONS),
        ("target", options.target, TARGETS),
    ):
        if value not in choices:
            raise BuildError(f"unknown {name} {value!r}", hint=f"choose one of {', '.join(choices)}")
    low, opt, high = options.batch
    if not 0 < low <= opt <= high:
        raise BuildError(f"batch must be MIN:OPT:MAX with 0 < MIN <= OPT <= MAX, got {low}:{opt}:{high}")
    setting = str(options.batch_tile)
    if setting not in ("auto", "off") and not (setting.isdigit() and int(setting) > 0):
        raise BuildError(f"batch_tile must be auto, off or a positive count, got {options.batch_tile!r}")
    if options.precision == "int8" and not options.calib:
        raise BuildError(
            "int8 needs calibration data",
            hint="pass --calib digits, --calib DIR (an image folder) or --calib X.npy",
        )
    if options.calib and options.precision != "int8":
        raise BuildError("--calib is only used with --precision int8")
    if options.calib_samples <= 0:
        raise BuildError(f"--calib-samples must be positive, got {options.calib_samples}")
    if options.calib_batch <= 0:
        raise BuildError(
            f"--calib-batch must be positive, got {options.calib_batch}",
            hint="1 holds the least memory; the MinMax ranges are the same at every size",
        )
    seed = options.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise BuildError(f"--seed must be an integer in [0, 2**32), got {seed!r}")
    trt_only = [
        flag
        for flag, value in (
            ("--workspace", options.workspace),
            ("--dla", options.dla),
            ("--timing-cache", options.timing_cache),
            ("--hardware-compat", options.hardware_compat or None),
            ("--version-compat", options.version_compat or None),
        )
        if value is not None
    ]
    if setting not in ("auto", "off") and (options.target == "tensorrt" or options.plain):
        why = (
            "--target tensorrt (TensorRT takes whole batches)" if options.target == "tensorrt" else "--plain"
        )
        raise BuildError(f"--batch-tile {setting} does not go with {why}", hint="leave --batch-tile out")
    if options.target == "tensorrt":
        from ..export.tensorrt.builder import MAX_PARSER_OPSET

        if options.opset > MAX_PARSER_OPSET:
            raise BuildError(
                f"--opset {options.opset} is newer than the ONNX parser of TensorRT 10.0-10.3 (JetPack 6.1/6.2) "
                f"takes (opsets <= {MAX_PARSER_OPSET})",
                hint=f"leave --opset out (19) or pass --opset {MAX_PARSER_OPSET} with --target tensorrt",
            )
    if trt_only and options.target != "tensorrt":
        verb = "applies" if len(trt_only) == 1 else "apply"
        raise BuildError(
            f"{', '.join(trt_only)} {verb} only to TensorRT engines", hint="add --target tensorrt"
        )


def graph_passes(options: BuildOptions) -> list[str]:
    """The graph passes of the emitted fp32 model: the export rewrites (none with ``plain``), and what the
    precision's converter needs (fp16: no BN left; the int8 ``cpu`` form: BN and pooling as depthwise convs)."""
    from ..passes import EXPORT_PASSES, PASSES

    chosen = set() if options.plain else set(EXPORT_PASSES)
    if options.precision == "fp16":
        chosen.add("bn_to_depthwise")
    if options.precision == "int8" and options.target == "onnx":
        chosen.update(("bn_to_depthwise", "avgpool_to_depthwise"))
    return [name for name in PASSES if name in chosen]


def check_features(graph: nx.DiGraph, options: BuildOptions) -> None:
    """A features head (a backbone, several named outputs) builds in every precision, each map gated; labels
    and batch tiles are about one logits output."""
    if not graph.graph.get("outputs"):
        return
    if options.labels:
        raise BuildError("--labels names a classifier's classes; this spec has a features head")
    if str(options.batch_tile) not in ("off", "auto"):
        raise BuildError(
            "--batch-tile applies to a classifier; a features head has several outputs",
            hint="drop --batch-tile",
        )
