"""Inference latency of every densegraph inference path against its plain counterpart, measured in one run.

    python tools/bench_infer.py                               # densenet121 224x224, batch 1 and 8, 2 threads
    python tools/bench_infer.py --batch-sizes 8 --iters 15 --digits
    python tools/bench_infer.py --spec specs/cifar/densenet-bc-l100-k12.yaml --size 32 --profile

Contenders (all fp32 unless said; the same weights: seeded init with non-trivial BatchNorm statistics):

- ``eager plain``: ``to_torch(spec)`` in eval mode; ``eager frozen``: ``freeze(module)``;
- ``ort torchvision``: onnxruntime on ``torch.onnx.export`` (opset 19) of :class:`TorchvisionDenseNet`, an
  independent module with torchvision's DenseNet forward pass (``torch.cat`` per layer, norm-relu-conv, the
  transition's conv before its pool) that loads the same weights by torchvision's key names (``strict``);
  for a spec torchvision cannot express (a ``cifar`` stem, non-default connectivity or per-block options),
  the plain export of ``to_torch(spec)`` stands in and the record says so;
- ``ort densegraph``: onnxruntime on the model ``densegraph build`` makes by default (emitted from the graph
  with ``EXPORT_PASSES``: :func:`densegraph.export.emit.onnx_from_graph`, untiled); ``ort tiled``: the same in a scan over batch tiles, the tile
  ``--batch-tile`` gives (``auto``: the candidate ``densegraph build --batch-tile auto`` would time);
- ``ort int8 cpu`` / ``ort int8 qdq``: :func:`densegraph.export.quantize.quantize_onnx` of densegraph's ONNX,
  ``form="cpu"`` (what ``--precision int8`` builds for onnxruntime; ``ort int8 tiled``: tiled like ``ort
  tiled``) and ``form="qdq"`` (the TensorRT form), calibrated on ``--calib-samples`` standard-normal images
  (speed only: the weights are random anyway).
- ``ort traced`` (with ``--traced``): ``torch.onnx.export`` of ``freeze(m, for_export=True)``: the same
  rewrites traced by the TorchScript exporter, as densegraph made its ONNX before it emitted it from the graph;
- with ``--openvino`` (OpenVINO CPU, ``--threads`` inference threads, latency hint, ``f32`` inference precision
  so no host silently runs bf16): ``ov torchvision`` (torchvision's export), ``ov nncf int8`` (OpenVINO's own
  post-training int8: ``nncf.quantize`` of torchvision's model on the same calibration images, the issue's
  int8 anchor) and ``ov int8 qdq`` (densegraph's ``qdq`` int8 model, which OpenVINO runs in int8), all against
  ``ort torchvision``. Rows also give ``rel_error``: max |logit error| / max |logit|, the anchor's measure.

Within a batch size, rounds alternate the contenders: the PyTorch pair and the onnxruntime group each run
back to back, in order then reversed, the PyTorch pair on ``--eager-iters`` of the ``--iters`` rounds (so load
from other processes hits a contender and its baseline alike); in a round each contender runs ``--repeat``
times in a row and only the last call is timed (its steady state). Times are medians over the rounds of wall-clock
(``perf_counter``) and process CPU time; a speedup is the median over rounds of baseline time / contender
time measured in the same round. onnxruntime gets ``--threads`` intra-op threads and 1 inter-op thread,
PyTorch ``torch.set_num_threads(--threads)``; onnxruntime's spin-waiting is off unless ``--spin`` (on a shared
machine spinning threads steal the cores the other contenders are measured on); glibc is told to keep freed
memory (``--malloc tuned``, see :func:`tune_malloc`: otherwise eager PyTorch re-faults its activations in on
every call). Errors are the max |difference| of the logits from the eager plain fp32 output on the same input.

``--digits`` also scores int8 top-1 on scikit-learn's digits (``specs/digits.yaml``, trained here by
``densegraph.training`` for ``--digits-epochs`` unless ``--digits-weights`` names a checkpoint), fp32 ONNX vs both
int8 forms. ``--profile`` prints onnxruntime's per-op time of the ONNX contenders at the largest batch.
The last line printed is JSON: times, errors, the three target ratios at the largest batch, the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# contender -> the one its speedup is measured against
BASELINES = {
    "eager plain": "eager plain",
    "eager frozen": "eager plain",
    "ort torchvision": "ort torchvision",
    "ort densegraph": "ort torchvision",
    "ort tiled": "ort densegraph",
    "ort int8 cpu": "ort torchvision",
    "ort int8 tiled": "ort int8 cpu",
    "ort int8 qdq": "ort torchvision",
    "ort traced": "ort densegraph",
    "ov torchvision": "ort torchvision",
    "ov nncf int8": "ort torchvision",
    "ov int8 qdq": "ort torchvision",
}
# (name, contender, baseline, target) at the largest batch
TARGETS = (
    ("frozen_vs_plain_eager", "eager frozen", "eager plain", 1.8),
    ("densegraph_onnx_vs_torchvision_onnx", "ort densegraph", "ort torchvision", 1.1),
    ("int8_cpu_vs_torchvision_onnx", "ort int8 cpu", "ort torchvision", 3.0),
    ("int8_cpu_vs_fp32_onnx", "ort int8 cpu", "ort densegraph", 1.5),
    # the int8 anchor: OpenVINO's own post-training int8 of torchvision's model (--openvino)
    ("int8_cpu_vs_openvino_nncf", "ort int8 cpu", "ov nncf int8", 1.0),
)


def machine() -> dict[str, Any]:
    """CPU model, core count and the SIMD features that decide the kernels (AVX2, AVX-512, VNNI)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "simd": [f for f in wanted if f in flags],
        "load_avg": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def tune_malloc() -> bool:
    """Make glibc keep freed memory in the process instead of returning it to the kernel after every call.

    By default glibc unmaps large freed blocks and trims the heap, so an eager PyTorch forward pass (which
    frees its activations) page-faults its whole working set back in on every call. On this 2-core VM that
    made densenet121's eager forward ~20x slower once onnxruntime ran in the same process between calls
    (its allocations keep resetting glibc's adaptive mmap threshold), which measures the allocator, not the
    model. 32 MiB is glibc's largest mmap threshold on 64-bit.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}


def _plain_export(module: Any, shape: tuple[int, ...], path: Path) -> None:
    """What a user gets from ``torch.onnx.export`` of ``module``: no densegraph pass at all."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                module,
                (torch.zeros(2, *shape),),
                os.fspath(path),
                dynamo=False,
                opset_version=19,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )


def torchvision_densenet(spec: Any) -> Any:
    """torchvision's DenseNet forward pass for ``spec``, written here from torchvision's design, not from
    densegraph's lowering; ``None`` when torchvision's constructor cannot express the spec."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    uniform = all(
        (b.growth_rate, b.bottleneck, b.compression, b.connectivity.kind)
        == (spec.growth_rate, spec.bottleneck, 0.5, "dense")
        for b in spec.blocks
    )  # dropout is the identity in eval mode
    if spec.stem.kind != "imagenet" or not uniform:
        return None
    k, bn_size = spec.growth_rate, spec.bottleneck

    class DenseLayer(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.norm1, self.relu1 = nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
            self.conv1 = nn.Conv2d(channels, bn_size * k, 1, bias=False)
            self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * k), nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(bn_size * k, k, 3, padding=1, bias=False)

        def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
            out = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
            return self.conv2(self.relu2(self.norm2(out)))

    class DenseBlock(nn.ModuleDict):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = [x]
            for layer in self.values():
                features.append(layer(features))
            return torch.cat(features, 1)

    class Transition(nn.Sequential):
        def __init__(self, channels: int, out: int) -> None:
            super().__init__()
            self.norm, self.relu = nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
            self.conv = nn.Conv2d(channels, out, 1, bias=False)
            self.pool = nn.AvgPool2d(2, 2)

    class DenseNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            c = spec.stem.channels
            self.features = nn.Sequential()
            self.features.add_module("conv0", nn.Conv2d(spec.input_channels, c, 7, 2, 3, bias=False))
            self.features.add_module("norm0", nn.BatchNorm2d(c))
            self.features.add_module("relu0", nn.ReLU(inplace=True))
            self.features.add_module("pool0", nn.MaxPool2d(3, 2, 1))
            for i, block in enumerate(spec.blocks, 1):
                dense = DenseBlock()
                for j in range(block.layers):
                    dense[f"denselayer{j + 1}"] = DenseLayer(c + j * k)
                self.features.add_module(f"denseblock{i}", dense)
                c += block.layers * k
                if i < len(spec.blocks):
                    self.features.add_module(f"transition{i}", Transition(c, c // 2))
                    c //= 2
            self.features.add_module("norm5", nn.BatchNorm2d(c))
            self.classifier = nn.Linear(c, spec.head.classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = F.adaptive_avg_pool2d(F.relu(self.features(x), inplace=True), (1, 1))
            return self.classifier(torch.flatten(out, 1))

    return DenseNet().eval()


def _session(path: Path, threads: int, spin: bool, profile: bool = False) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = os.fspath(path.with_suffix(""))
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def _time(
    groups: list[tuple[dict[str, Callable[[], Any]], int]], warmup: int, repeat: int = 2
) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU seconds of every contender, per round; ``groups`` are (contenders, rounds) pairs.

    The rounds of all groups are spread evenly over one sequence (the eager models, slower, get fewer rounds
    than the onnxruntime ones). In a round a group's contenders run back to back, in order on even rounds and
    reversed on odd ones: a contender and its baseline are measured next to each other, and neither always
    goes first. Each contender runs ``repeat`` times in a row and the last call is timed: its steady state,
    as a process serving that one model sees it, not the caches and allocator state another contender left.
    """
    samples: dict[str, dict[str, list[float]]] = {
        name: {"wall": [], "cpu": []} for group, _ in groups for name in group
    }
    for group, _ in groups:
        for _ in range(warmup):
            for fn in group.values():
                fn()
    total = max(rounds for _, rounds in groups)
    for r in range(total):
        for group, rounds in groups:
            if (r * rounds) // total == ((r + 1) * rounds) // total:
                continue
            names = list(group) if len(samples[next(iter(group))]["wall"]) % 2 == 0 else list(reversed(group))
            for name in names:
                for _ in range(repeat - 1):
                    group[name]()
                wall, cpu = time.perf_counter(), time.process_time()
                group[name]()
                samples[name]["wall"].append(time.perf_counter() - wall)
                samples[name]["cpu"].append(time.process_time() - cpu)
    return samples


def _run_session(session: Any, x: np.ndarray) -> np.ndarray:
    return session.run(None, {"images": x})[0]


def _paired(samples: dict[str, dict[str, list[float]]], baseline: str, contender: str, clock: str) -> float:
    """Median over rounds of baseline time / contender time, both measured in the same round."""
    pairs = zip(samples[baseline][clock], samples[contender][clock], strict=True)
    return statistics.median(b / c for b, c in pairs)


def _ort_profile(path: Path, x: np.ndarray, threads: int, runs: int = 3) -> list[tuple[str, float]]:
    """(op, ms per run) from onnxruntime's profiler; Conv split by kernel (1x1, 3x3, depthwise...)."""
    session = _session(path, threads, spin=False, profile=True)
    name = session.get_inputs()[0].name
    session.run(None, {name: x})
    for _ in range(runs):
        session.run(None, {name: x})
    trace = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    for event in trace:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        op = event["args"]["op_name"]
        if op in ("Loop", "Scan"):  # a batch-tiled model: its time is its body's kernels, counted below
            continue
        shapes = event["args"].get("input_type_shape", [])
        weight = 3 if op == "QLinearConv" else 1
        if op in ("Conv", "QLinearConv") and len(shapes) > weight:
            dims = next(iter(shapes[weight].values()))
            if len(dims) == 4:
                op += f" {dims[2]}x{dims[3]}" + (" depthwise" if dims[1] == 1 else "")
            elif dims:  # prepacked int8 weights show only their per-channel scales
                op += " (int8)"
        totals[op] += event["dur"] / 1e3
    # the first run is in the trace too
    return sorted(((op, ms / (runs + 1)) for op, ms in totals.items()), key=lambda kv: -kv[1])


def _digits(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Top-1 on the digits val split: fp32 ONNX vs the two int8 forms (calibrated on the train split)."""
    import torch

    from densegraph.data import load_data
    from densegraph.export.onnx import ort_session, run_onnx
    from densegraph.export.quantize import quantize_onnx
    from densegraph.lower.torch import to_torch
    from densegraph.passes import EXPORT_PASSES, INT8_CPU_PASSES

    spec = Path(__file__).resolve().parents[1] / "specs" / "digits.yaml"
    weights = args.digits_weights
    started = time.perf_counter()
    if weights is None:
        from densegraph.training import train

        run = scratch / "digits-run"
        summary = train(spec, "digits", run, epochs=args.digits_epochs, log=lambda _: None)
        weights = run / "best.pt"
        print(
            f"digits: trained {args.digits_epochs} epochs in {summary['seconds']:.0f} s, "
            f"val top-1 {summary['best_top1']:.2f}%"
        )
    module: Any = to_torch(spec)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    module.load_state_dict(state.get("state_dict", state))
    module.eval()
    shape = tuple(module.input_shape)
    fp32 = scratch / "digits.fp32.onnx"
    _emit(module, EXPORT_PASSES, fp32)
    _emit(module, INT8_CPU_PASSES, scratch / "digits.fp32.cpu.onnx")
    train_split = load_data("digits", shape, split="train")
    val = load_data("digits", shape, split="val")
    calib = train_split.x[np.random.default_rng(0).permutation(len(train_split))[: args.digits_calib]]

    def top1(path: Path) -> float:
        return 100.0 * float(np.mean(run_onnx(ort_session(path), val.x).argmax(1) == val.y))

    result: dict[str, Any] = {"weights": str(weights), "val_samples": len(val), "calib_samples": len(calib)}
    result["fp32_top1"] = round(top1(fp32), 2)
    for form in ("cpu", "qdq"):
        path = scratch / f"digits.int8.{form}.onnx"
        quantize_onnx(scratch / "digits.fp32.cpu.onnx" if form == "cpu" else fp32, path, calib, form=form)
        result[f"int8_{form}_top1"] = round(top1(path), 2)
        result[f"int8_{form}_drop"] = round(result["fp32_top1"] - result[f"int8_{form}_top1"], 2)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="specs/densenet121.yaml")
    parser.add_argument("--size", type=int, default=None, help="input side (default: the spec's)")
    parser.add_argument("--batch-sizes", dest="batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--iters", type=int, default=20, help="timed onnxruntime rounds per batch size")
    parser.add_argument("--eager-iters", type=int, default=8, help="timed PyTorch rounds per batch size")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--repeat", type=int, default=2, help="calls per contender per round, the last one timed (1: cold)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spin", action="store_true", help="let onnxruntime's threads spin-wait")
    parser.add_argument(
        "--malloc",
        choices=("tuned", "default"),
        default="tuned",
        help="tuned: glibc keeps freed memory (see tune_malloc); default: glibc as it comes",
    )
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument(
        "--batch-tile", default="auto", help="auto|off|N: densegraph's batch tile, as `densegraph build`"
    )
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 contenders")
    parser.add_argument(
        "--traced", action="store_true", help="also the TorchScript trace of the frozen module (ort traced)"
    )
    parser.add_argument("--digits", action="store_true", help="also score int8 top-1 on digits")
    parser.add_argument("--digits-weights", type=Path, default=None, help="a digits checkpoint (else train)")
    parser.add_argument("--digits-epochs", type=int, default=6)
    parser.add_argument("--digits-calib", type=int, default=256)
    parser.add_argument("--profile", action="store_true", help="onnxruntime per-op times, largest batch")
    parser.add_argument(
        "--openvino",
        action="store_true",
        help="also OpenVINO: torchvision fp32, NNCF int8, densegraph qdq int8",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the ONNX models in this folder")
    return parser.parse_args()


def _tile_of(graph: Any, args: argparse.Namespace, precision: str) -> int | None:
    """The batch tile ``densegraph build --precision PRECISION --batch-tile ...`` tries (default --batch)."""
    from densegraph.export.tiling import choose_batch_tile

    return choose_batch_tile(graph, args.batch_tile, precision=precision)


def _emit(module: Any, passes: Any, path: Path) -> None:
    """densegraph's fp32 ONNX of ``module``, emitted from its graph with ``passes``."""
    from densegraph.export.emit import onnx_from_graph
    from densegraph.export.onnx import check_onnx, save_onnx

    model, _ = onnx_from_graph(module.graph, module.state_dict(), passes=passes, opset=19)
    save_onnx(check_onnx(model), path)


def _tiled(source: Path, target: Path, tile: int) -> None:
    import onnx

    from densegraph.export.onnx import check_onnx, save_onnx
    from densegraph.export.passes import tile_batch

    save_onnx(check_onnx(tile_batch(onnx.load(os.fspath(source)), tile).model), target)


def _reference_module(plain: Any, spec: Any) -> tuple[Any, str]:
    """The baseline's module and what it is: torchvision's own DenseNet where torchvision is installed (it
    cannot be next to torch 2.13), else :func:`torchvision_densenet`, both with ``plain``'s weights loaded by
    torchvision's key names; ``plain`` itself for a spec torchvision cannot express."""
    reference = torchvision_densenet(spec)
    if reference is None:
        return plain, "torch.onnx.export of to_torch(spec) (torchvision cannot express this spec)"
    what = "TorchvisionDenseNet (torchvision's forward pass, written in tools/bench_infer.py)"
    try:
        import torchvision
    except ImportError:
        torchvision = None
    if torchvision is not None and spec.input_channels == 3:  # torchvision's stem takes RGB
        reference = torchvision.models.DenseNet(
            growth_rate=spec.growth_rate,
            block_config=tuple(b.layers for b in spec.blocks),
            num_init_features=spec.stem.channels,
            bn_size=spec.bottleneck,
            num_classes=spec.head.classes,
        ).eval()
        what = f"torchvision {torchvision.__version__} DenseNet"
    reference.load_state_dict(plain.state_dict(), strict=True)
    return reference, f"torch.onnx.export of {what}, the same weights"


def _calibration(args: argparse.Namespace, shape: tuple[int, ...]) -> np.ndarray:
    """The calibration images every int8 contender is calibrated on (standard normal, seeded)."""
    return np.random.default_rng(0).standard_normal((args.calib_samples, *shape), dtype=np.float32)


def _openvino(paths: dict[str, Path], calib: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """The OpenVINO contenders (see the module docstring): name -> a function of the input batch."""
    import nncf
    import openvino as ov

    core = ov.Core()
    config = {
        "INFERENCE_NUM_THREADS": args.threads,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }
    torchvision = core.read_model(os.fspath(paths["ort torchvision"]))
    models = {"ov torchvision": torchvision}
    dataset = nncf.Dataset([calib[i : i + 1] for i in range(len(calib))])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # nncf's progress bars
        warnings.simplefilter("ignore")
        models["ov nncf int8"] = nncf.quantize(
            core.read_model(os.fspath(paths["ort torchvision"])), dataset, subset_size=len(calib)
        )
    if "ort int8 qdq" in paths:
        models["ov int8 qdq"] = core.read_model(os.fspath(paths["ort int8 qdq"]))
    runners = {}
    for name, model in models.items():
        request = core.compile_model(model, "CPU", config).create_infer_request()
        runners[name] = functools.partial(_run_openvino, request)
    return runners


def _run_openvino(request: Any, x: np.ndarray) -> np.ndarray:
    return request.infer({0: x})[0]


def _prepare_onnx(
    plain: Any, spec: Any, graph: Any, shape: tuple[int, ...], folder: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Write the ONNX contenders; returns their paths, preparation times, tiles and the quantizer's reports."""
    from densegraph.export.quantize import quantize_onnx
    from densegraph.lower.torch import freeze
    from densegraph.passes import EXPORT_PASSES, INT8_CPU_PASSES

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    reference, baseline = _reference_module(plain, spec)
    _plain_export(reference, shape, folder / "torchvision.onnx")
    seconds["export_torchvision"] = time.perf_counter() - start
    start = time.perf_counter()
    _emit(plain, EXPORT_PASSES, folder / "densegraph.onnx")
    seconds["export_densegraph"] = time.perf_counter() - start
    tiles = {"fp32": _tile_of(graph, args, "fp32"), "int8": _tile_of(graph, args, "int8")}
    paths = {"ort torchvision": folder / "torchvision.onnx", "ort densegraph": folder / "densegraph.onnx"}
    if tiles["fp32"]:
        _tiled(folder / "densegraph.onnx", folder / "tiled.onnx", tiles["fp32"])
        paths["ort tiled"] = folder / "tiled.onnx"
    if args.traced:
        start = time.perf_counter()
        _plain_export(freeze(plain, for_export=True), shape, folder / "traced.onnx")
        seconds["export_traced"] = time.perf_counter() - start
        paths["ort traced"] = folder / "traced.onnx"
    reports: dict[str, Any] = {}
    if not args.no_int8:
        calib = _calibration(args, shape)
        _emit(plain, INT8_CPU_PASSES, folder / "densegraph.cpu.onnx")
        for form in ("cpu", "qdq"):
            start = time.perf_counter()
            path = folder / f"int8.{form}.onnx"
            source = folder / ("densegraph.cpu.onnx" if form == "cpu" else "densegraph.onnx")
            info = quantize_onnx(source, path, calib, form=form)
            seconds[f"quantize_{form}"] = time.perf_counter() - start
            reports[form] = {k: info[k] for k in ("quantized_nodes", "reduce_range")}
            paths[f"ort int8 {form}"] = path
            if form == "cpu" and tiles["int8"]:
                _tiled(path, folder / "int8.cpu.tiled.onnx", tiles["int8"])
                paths["ort int8 tiled"] = folder / "int8.cpu.tiled.onnx"
    return {
        "paths": paths,
        "baseline": baseline,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "tiles": tiles,
        "int8": reports,
    }


def _measure(
    batch: int,
    plain: Any,
    frozen: Any,
    sessions: dict[str, Any],
    shape: tuple[int, ...],
    args: argparse.Namespace,
    others: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Times (median ms), paired speedups against each contender's baseline and errors at one batch size; and
    the paired ratios of :data:`TARGETS`."""
    import torch

    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
    xn = x.numpy()
    eager: dict[str, Callable[[], Any]] = {"eager plain": lambda: plain(x)}
    if frozen is not None:
        eager["eager frozen"] = lambda: frozen(x)
    ort: dict[str, Callable[[], Any]] = {
        name: functools.partial(_run_session, session, xn) for name, session in sessions.items()
    }
    ort.update({name: functools.partial(run, xn) for name, run in (others or {}).items()})
    with torch.inference_mode():
        reference = plain(x).numpy().astype(np.float64)
        errors = {
            name: float(np.max(np.abs(np.asarray(fn(), dtype=np.float64) - reference)))
            for name, fn in {**eager, **ort}.items()
        }
        samples = _time([(eager, args.eager_iters), (ort, args.iters)], args.warmup, args.repeat)
    ratios = {
        label: {
            "wall": round(_paired(samples, baseline, contender, "wall"), 3),
            "cpu": round(_paired(samples, baseline, contender, "cpu"), 3),
        }
        for label, contender, baseline, _ in TARGETS
        if contender in samples and baseline in samples
    }
    rows: dict[str, Any] = {}
    for name, clocks in samples.items():
        base = BASELINES[name]
        rows[name] = {
            "wall_ms": round(1e3 * statistics.median(clocks["wall"]), 2),
            "cpu_ms": round(1e3 * statistics.median(clocks["cpu"]), 2),
            "max_abs_error": errors[name],
            "rel_error": round(errors[name] / float(np.max(np.abs(reference))), 5),
        }
        if base != name and base in samples:
            rows[name]["speedup"] = {
                "vs": base,
                "wall": round(_paired(samples, base, name, "wall"), 3),
                "cpu": round(_paired(samples, base, name, "cpu"), 3),
            }
    return rows, ratios


def main() -> None:
    args = _arguments()
    malloc_tuned = tune_malloc() if args.malloc == "tuned" else False
    batches = [int(b) for b in args.batches.split(",")]

    import torch
    from rich.console import Console
    from rich.table import Table

    from densegraph.lower.torch import freeze, graph_of, module_from_graph
    from densegraph.spec import load_spec
    from densegraph.testing import randomize_batchnorm

    torch.set_num_threads(args.threads)
    console = Console(highlight=False, width=120)
    spec = load_spec(args.spec)
    if args.size:
        spec = dataclasses.replace(spec, input_size=(args.size, args.size))
    graph = graph_of(spec)
    shape = tuple(graph.graph["input_shape"])
    host = machine()
    console.print(
        f"[bold]{graph.graph['name']}[/] {'x'.join(map(str, shape))}, batches {batches}, "
        f"{args.iters} onnxruntime / {args.eager_iters} PyTorch rounds, "
        f"{args.threads} threads; {host['cpu']}, {host['cores']} cores, {' '.join(host['simd'])}; "
        f"load {host['load_avg']}; malloc {'tuned' if malloc_tuned else 'glibc default'}"
    )
    plain = module_from_graph(graph, seed=0).eval()
    # non-trivial BN statistics: every fold and int8 BN-ReLU conv exercised
    randomize_batchnorm(plain, seed=1)
    notes: list[str] = []
    try:
        frozen = freeze(plain)
    except Exception as exc:  # freeze is another stage's work: report it rather than lose the whole run
        frozen = None
        notes.append(f"eager frozen skipped: freeze failed ({exc})")

    with tempfile.TemporaryDirectory(prefix="densegraph-bench-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        prepared = _prepare_onnx(plain, spec, graph, shape, folder, args)
        console.print(
            "prepared (s): "
            + ", ".join(f"{k} {v}" for k, v in prepared["seconds"].items())
            + f"; batch tiles: fp32 {prepared['tiles']['fp32']}, int8 cpu {prepared['tiles']['int8']}"
        )
        console.print(f"baseline: {prepared['baseline']}")
        sessions = {name: _session(path, args.threads, args.spin) for name, path in prepared["paths"].items()}
        others = _openvino(prepared["paths"], _calibration(args, shape), args) if args.openvino else None
        measured = {str(b): _measure(b, plain, frozen, sessions, shape, args, others) for b in batches}
        results = {b: rows for b, (rows, _) in measured.items()}

        table = Table(title="inference latency: medians of alternating rounds; speedup = paired median")
        for column in ("batch", "contender", "wall ms", "cpu ms", "speedup", "over", "max |err|", "rel err"):
            table.add_column(
                column, justify="left" if column in ("contender", "over") else "right", no_wrap=True
            )
        for batch, rows in results.items():
            for name, row in rows.items():
                up = row.get("speedup")
                table.add_row(
                    batch,
                    name,
                    f"{row['wall_ms']:.1f}",
                    f"{row['cpu_ms']:.1f}",
                    f"{up['wall']:.2f}x" if up else "",
                    up["vs"] if up else "",
                    f"{row['max_abs_error']:.1e}",
                    f"{row['rel_error']:.3f}",
                )
            table.add_section()
        console.print(table)

        largest = str(max(batches))
        ratios: dict[str, Any] = {}
        for label, contender, baseline, target in TARGETS:
            up = measured[largest][1].get(label)
            if up is None:
                continue
            ratios[label] = {
                "batch": int(largest),
                "contender": contender,
                "baseline": baseline,
                "wall": up["wall"],
                "cpu": up["cpu"],
                "target": target,
                "met": up["wall"] >= target,
                "max_abs_error": results[largest][contender]["max_abs_error"],
            }
            verdict = "[green]met[/]" if up["wall"] >= target else "[red]not met[/]"
            console.print(
                f"{label}: {up['wall']:.2f}x wall ({up['cpu']:.2f}x cpu) at batch {largest}, "
                f"target {target}x: {verdict}"
            )

        profile: dict[str, list[tuple[str, float]]] = {}
        if args.profile:
            x = np.random.default_rng(1).standard_normal((int(largest), *shape), dtype=np.float32)
            for name, path in prepared["paths"].items():
                profile[name] = [(op, round(ms, 2)) for op, ms in _ort_profile(path, x, args.threads)]
                total = sum(ms for _, ms in profile[name])
                console.print(f"[bold]{name}[/] profile, batch {largest}: {total:.0f} ms in kernels")
                for op, ms in profile[name][:8]:
                    console.print(f"    {op:<26} {ms:9.1f} ms {100 * ms / total:5.1f}%")

        digits = _digits(args, folder) if args.digits else None
        if digits:
            console.print(
                f"digits top-1: fp32 {digits['fp32_top1']:.2f}%, int8 cpu {digits['int8_cpu_top1']:.2f}% "
                f"(drop {digits['int8_cpu_drop']:.2f}), int8 qdq {digits['int8_qdq_top1']:.2f}% "
                f"(drop {digits['int8_qdq_drop']:.2f})"
            )
        for note in notes:
            console.print(f"note: {note}")
        record = {
            "spec": args.spec,
            "input": list(shape),
            "threads": args.threads,
            "spin": args.spin,
            "malloc_tuned": malloc_tuned,
            "iters": {"onnxruntime": args.iters, "pytorch": args.eager_iters, "repeat": args.repeat},
            "machine": host,
            "versions": versions(),
            "baseline": prepared["baseline"],
            "prepare_s": prepared["seconds"],
            "batch_tiles": prepared["tiles"],
            "int8": prepared["int8"],
            "batches": results,
            "ratios": ratios,
            "digits": digits,
            "notes": notes,
        }
        if profile:
            record["profile"] = profile
        print(json.dumps(record))


if __name__ == "__main__":
    main()
