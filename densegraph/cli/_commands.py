"""The subcommands: each builds its options, calls the library and prints the result."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import DensegraphError
from ._args import EXIT_USER_ERROR

# ---------------------------------------------------------------------------------------------------------
# validate / summary / graph: spec and graph stages only


def _cmd_validate(args: argparse.Namespace) -> int:
    from ..graph import build_graph
    from ..spec import load_spec

    failed = 0
    for path in args.specs:
        try:
            spec = load_spec(path)
            build_graph(spec)
        except DensegraphError as exc:
            if args.debug:
                raise
            print(exc.format(), file=sys.stderr)
            failed += 1
            continue
        if not args.quiet:
            print(f"{path}: ok ({spec.name}, {sum(b.layers for b in spec.blocks)} dense layers)")
    return EXIT_USER_ERROR if failed else 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from ..graph import build_graph
    from ..spec import load_spec
    from ..summary import print_summary, summary_dict

    graph = build_graph(load_spec(args.spec))
    if args.json:
        print(json.dumps(summary_dict(graph, per_node=args.nodes)))
    else:
        print_summary(graph, per_node=args.nodes)
    return 0


def _cmd_graph(args: argparse.Namespace) -> int:
    from ..graph import build_graph
    from ..spec import load_spec
    from ..viz import write_graph

    graph = build_graph(load_spec(args.spec))
    write_graph(graph, args.output)
    print(f"wrote {args.output}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from ..builder import BuildOptions, build_model

    options = BuildOptions(
        output=args.output,
        weights=args.weights,
        precision=args.precision,
        target=args.target,
        calib=args.calib,
        calib_samples=args.calib_samples,
        calib_batch=args.calib_batch,
        bias_correction=args.bias_correction,
        batch=tuple(args.batch_range),
        opset=args.opset,
        plain=args.plain,
        batch_tile=args.batch_tile,
        seed=args.seed,
        labels=args.labels,
        workspace=args.workspace,
        dla=args.dla,
        timing_cache=args.timing_cache,
        hardware_compat=args.hardware_compat,
        version_compat=args.version_compat,
    )
    with _StageDisplay() as display:
        result = build_model(args.spec, options, progress=display)
    print(result.summary())
    return 0


class _StageDisplay:
    """Build stages on stderr as they run (a terminal only: a spinner, then a line per stage); on a pipe or a
    file nothing shows until the final line."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.live = self.console.is_terminal
        self._status: Any = None

    def __enter__(self) -> _StageDisplay:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def __call__(self, event: Any) -> None:
        if not self.live:
            return
        name, what = event.stage, event.what
        if event.state == "start":
            self._stop()
            self._status = self.console.status(f"[bold]{name}[/] {what}", spinner="dots")
            self._status.start()
        elif event.state == "note":
            if self._status is not None:
                self._status.update(f"[bold]{name}[/] {what}")
        else:
            self._stop()
            mark = "[green]✓[/]" if event.state == "done" else "[red]✗[/]"
            took = f" [dim]({event.seconds:.1f} s)[/]" if event.state == "done" else ""
            self.console.print(f"{mark} [bold]{name:<8}[/] {what}{took}")


def _cmd_locate(args: argparse.Namespace) -> int:
    from ..locate import locate_name

    found = locate_name(args.model, args.name)
    if args.json:
        print(json.dumps([{"name": f.name, "node": f.node, "loc": f.loc} for f in found]))
        return 0
    if not found:
        print(f"{args.name}: no graph node of {args.model} has that name", file=sys.stderr)
        return 1
    for f in found:
        print(f"{f.loc}: {f.node} ({f.name})")
    return 0


# ---------------------------------------------------------------------------------------------------------
# train / eval / predict: the library does the work, this prints


def _rich_progress() -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("loss {task.fields[loss]}"),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from ..training import train

    train(
        args.spec,
        args.data,
        args.output,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        resume=args.resume,
        device=args.device,
        seed=args.seed,
        memory_efficient=args.memory_efficient,
        augment=not args.no_augment,
        threads=args.threads,
        amp=args.amp,
        channels_last=args.channels_last,
        workers=args.workers,
        log=lambda text: print(text, flush=True),
        progress=_rich_progress(),
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate

    result = evaluate(
        args.model,
        data=args.data,
        weights=args.weights,
        split=args.split,
        batch_size=args.batch_size,
        limit=args.limit,
        workers=args.workers,
        device=args.device,
    )
    print(
        f"top-1 {result.top1:.2f}% top-5 {result.top5:.2f}% ({result.correct}/{result.samples}) on the "
        f"{result.split} split of {result.source}: {result.model}"
    )
    if args.json:
        print(json.dumps(result.summary()))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..prediction import predict

    results = predict(args.model, args.images, weights=args.weights, top=args.top, device=args.device)
    for result in results:
        if args.json:
            print(json.dumps(result.as_dict()))
            continue
        print(result.image)
        for rank, score in enumerate(result.top, start=1):
            what = f"{score.name} (class {score.index})" if score.name is not None else f"class {score.index}"
            print(f"  {rank}. {what}  {100.0 * score.probability:.2f}%")
    return 0


# ---------------------------------------------------------------------------------------------------------
# the stages that need a backend: imported on use


def _cmd_engine(args: argparse.Namespace) -> int:
    """``densegraph engine MODEL.onnx -o MODEL.engine ...``: build, verify and bench an engine on this device."""
    from ..export.tensorrt import EngineOptions, engine_on_device, inspect_onnx

    if args.iters < 1 or args.warmup < 0:
        raise DensegraphError(f"--iters must be >= 1 and --warmup >= 0, got {args.iters} and {args.warmup}")
    options = EngineOptions(
        precision=args.precision or inspect_onnx(args.onnx).precision,
        batch=tuple(args.batch_range),
        workspace_gib=args.workspace,
        dla_core=args.dla,
        timing_cache=args.timing_cache,
        hardware_compat=bool(args.hardware_compat),
        version_compat=bool(args.version_compat),
    )
    result = engine_on_device(
        args.onnx,
        args.output,
        options,
        verify=not args.no_verify,
        bench=not args.no_bench,
        iters=args.iters,
        warmup=args.warmup,
        progress=lambda msg: print(msg, file=sys.stderr),
    )
    print(
        f"{result['engine_path']}: {result['precision']}, TensorRT {result['tensorrt_version']}, "
        f"{result['gpu']['name']} (sm {result['gpu']['compute_capability']})"
    )
    if result["bench"]:
        _print_bench_table(
            {
                "model": result["engine_path"],
                "backend": "tensorrt",
                "device": result["device"],
                "precision": result["precision"],
                "results": result["bench"],
                "iters": args.iters,
                "warmup": args.warmup,
            }
        )
    return 0


def _cmd_import_weights(args: argparse.Namespace) -> int:
    from ..lower.weights import import_weights

    done = import_weights(args.source, spec=args.spec, output=args.output)
    print(f"wrote {done.output} ({done.tensors} tensors, {done.parameters:,} parameters, spec {done.spec})")
    return 0


def _cmd_heatmap(args: argparse.Namespace) -> int:
    from ..heatmaps import heatmap

    result = heatmap(args.spec, weights=args.weights, output=args.output, write_json=args.json)
    for written in result.written:
        print(f"wrote {written}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from ..benchmark import bench

    report = bench(
        args.model,
        batch_sizes=args.batch_sizes,
        iters=args.iters,
        warmup=args.warmup,
        frozen=args.frozen,
        device=args.device,
        weights=args.weights,
    )
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        _print_bench_table(report.as_dict())
    return 0


def _print_bench_table(report: dict[str, Any]) -> None:
    """A bench report as a table: one row per batch size."""
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
