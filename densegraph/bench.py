"""``densegraph bench``: latency and throughput of a spec in PyTorch, a model.onnx in onnxruntime or a
TensorRT engine, per batch size.

Each batch size runs ``--warmup`` untimed then ``--iters`` timed forward passes on one fixed random batch
(input already in place: compute, not data loading). A row holds the median (``latency_ms_p50``), p90 and mean
latency and the throughput ``batch / mean`` in images per second — the same fields as
:func:`densegraph.export.tensorrt.bench_engine`, which measures engines (both time with
:func:`densegraph.timing.time_batches`). A batch that cannot fit in the memory
available (a spec's: its busiest node's feature maps, :func:`densegraph.cost.peak_activation_bytes`; an ONNX
model's: its input batch) is refused before anything is allocated.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._io import check_regular
from .errors import DensegraphError, Loc
from .timing import time_batches

__all__ = ["run_bench", "time_batches", "model_kind", "print_table"]

_ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
_SPEC_SUFFIXES = (".yaml", ".yml")


def model_kind(path: str) -> str:
    """``spec``, ``onnx`` or ``engine``, from the file's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in _SPEC_SUFFIXES:
        return "spec"
    if suffix == ".onnx":
        return "onnx"
    if suffix in _ENGINE_SUFFIXES:
        return "engine"
    raise DensegraphError(
        f"cannot tell what {suffix or 'a file without a suffix'!r} is",
        loc=Loc(path),
        hint="bench takes a spec (.yaml), an ONNX model (.onnx) or a TensorRT engine (.engine)",
    )


def run_bench(args: argparse.Namespace) -> int:
    """``densegraph bench MODEL [--batch-sizes 1,8] [--iters N] [--warmup N] [--frozen] [--device D] [--json]``."""
    kind = model_kind(args.model)
    what = {"spec": "spec file", "onnx": "ONNX model", "engine": "TensorRT engine"}[kind]
    check_regular(args.model, what=what, missing_hint=f"check the path to the {what}")
    if args.iters < 1 or args.warmup < 0:
        raise DensegraphError(f"--iters must be >= 1 and --warmup >= 0, got {args.iters} and {args.warmup}")
    if kind != "spec" and (args.weights or args.frozen):
        flag = "--weights" if args.weights else "--frozen"
        raise DensegraphError(f"{flag} applies only to a spec (PyTorch)", loc=Loc(args.model))
    bench = {"spec": _bench_torch, "onnx": _bench_onnx, "engine": _bench_engine}[kind]
    report = bench(args)
    report = {"model": args.model, **report, "iters": args.iters, "warmup": args.warmup}
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 0


# ---------------------------------------------------------------------------------------------------------
# backends


def _bench_torch(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from .cost import peak_activation_bytes
    from .graph import build_graph
    from .lower.torch import to_torch
    from .spec import load_spec

    graph = build_graph(load_spec(args.model))
    device = torch.device(_torch_device(args.device))
    largest = max(args.batch_sizes)
    _check_batch_fits(
        peak_activation_bytes(graph, largest),
        largest,
        args.model,
        "the busiest node's feature maps, from the graph's activation count",
        torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None,
    )
    module = to_torch(graph, seed=0)
    if args.weights:
        from .lower.weights import load_weights

        load_weights(module, args.weights, model_name=args.model)
    module.eval()
    if args.frozen:
        from .lower.torch import freeze

        module = freeze(module)
    module = module.to(device)
    shape = tuple(graph.graph["input_shape"])

    def run_for(batch: int) -> Callable[[], Any]:
        x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(0)).to(device)

        def run() -> Any:
            with torch.inference_mode():
                out = module(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return out

        return run

    rows = time_batches(run_for, args.batch_sizes, iters=args.iters, warmup=args.warmup)
    return {
        "backend": "pytorch" + (" (frozen)" if args.frozen else ""),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "precision": "fp32",
        "input_shape": list(shape),
        "results": rows,
    }


def _torch_device(requested: str | None) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise DensegraphError("--device cuda asked for, but no CUDA GPU is visible to PyTorch")
    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def _bench_onnx(args: argparse.Namespace) -> dict[str, Any]:
    from .evaluate import onnx_image_model
    from .export.onnx import best_providers

    providers = best_providers()
    if args.device == "cpu":
        providers = ["CPUExecutionProvider"]
    elif args.device == "cuda":
        providers = [p for p in providers if p != "CPUExecutionProvider"]
        if not providers:
            raise DensegraphError(
                "--device cuda asked for, but this onnxruntime has no CUDA or TensorRT execution provider",
                hint="pip install onnxruntime-gpu",
            )
    model = onnx_image_model(args.model, list(providers))
    session = model.session
    fixed = model.fixed_batch
    if fixed is not None and any(b != fixed for b in args.batch_sizes):
        raise DensegraphError(
            f"the model takes a fixed batch of {fixed}",
            loc=Loc(args.model),
            hint=f"pass --batch-sizes {fixed}",
        )
    largest = max(args.batch_sizes)
    # the random batch is drawn in float64, then cast to the input's type
    _check_batch_fits(
        largest * int(np.prod(model.chw)) * (8 + np.dtype(model.dtype).itemsize),
        largest,
        args.model,
        "its input batch alone",
        None,
    )
    rng = np.random.default_rng(0)

    def run_for(batch: int) -> Callable[[], Any]:
        x = rng.standard_normal((batch, *model.chw)).astype(model.dtype)
        return lambda: model(x)

    rows = time_batches(run_for, args.batch_sizes, iters=args.iters, warmup=args.warmup)
    return {
        "backend": "onnxruntime",
        "provider": session.get_providers()[0],
        "device": "cpu" if session.get_providers()[0] == "CPUExecutionProvider" else "cuda",
        "threads": _ort_threads(session),
        "precision": _onnx_precision(args.model),
        "input_shape": list(model.chw),
        "results": rows,
    }


def _check_batch_fits(needed: int, batch: int, model: str, what: str, available: int | None) -> None:
    from ._memory import check_fits

    check_fits(
        needed,
        f"--batch-sizes {batch} ({what})",
        loc=Loc(model),
        hint="bench smaller --batch-sizes",
        available=available,
    )


def _ort_threads(session: Any) -> int | None:
    threads = session.get_session_options().intra_op_num_threads
    return int(threads) if threads else None  # 0: onnxruntime's default, one per physical core


def _onnx_precision(path: str) -> str:
    from .export.tensorrt import inspect_onnx

    return inspect_onnx(path).precision


def _bench_engine(args: argparse.Namespace) -> dict[str, Any]:
    from .export.tensorrt import EngineRunner, bench_engine

    if args.device == "cpu":
        raise DensegraphError("TensorRT engines run on the GPU only", hint="drop --device cpu")
    with EngineRunner(args.model) as runner:
        rows = bench_engine(runner, args.batch_sizes, iters=args.iters, warmup=args.warmup)
        return {
            "backend": "tensorrt",
            "device": str(runner.device),
            "precision": runner.precision,
            "input_shape": list(runner.input_chw),
            "results": rows,
        }


# ---------------------------------------------------------------------------------------------------------
# output


def print_table(report: dict[str, Any]) -> None:
    """The report of a bench run as a table: one row per batch size."""
    from rich.console import Console
    from rich.table import Table

    backend = report["backend"] + (f", {report['provider']}" if report.get("provider") else "")
    threads = f", {report['threads']} threads" if report.get("threads") else ""
    table = Table(
        title=f"{report['model']} — {backend} on {report['device']}{threads}, {report['precision'] or '?'}",
        caption=f"{report['iters']} timed runs after {report['warmup']} warm-up runs per batch size",
    )
    for column in ("batch", "median ms", "p90 ms", "mean ms", "images/s"):
        table.add_column(column, justify="right")
    for row in report["results"]:
        table.add_row(
            str(row["batch"]),
            f"{row['latency_ms_p50']:.2f}",
            f"{row['latency_ms_p90']:.2f}",
            f"{row['latency_ms_mean']:.2f}",
            f"{row['throughput_per_s']:.1f}",
        )
    Console().print(table)
