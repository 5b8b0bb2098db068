"""The ``densegraph`` command line.

Each subcommand's work lives in the stage module that owns it; this file only parses arguments, imports the
stage lazily (``validate``, ``summary`` and ``graph`` never import torch, onnx or onnxruntime) and turns a
:class:`~densegraph.errors.DensegraphError` into one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .errors import DensegraphError

__all__ = ["main", "build_parser"]

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse with its refusals on one line, like every other densegraph error (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(
            EXIT_USER_ERROR, f"{self.prog}: error: {message} (hint: `{self.prog} --help` lists the options)\n"
        )


def _finite_positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _int_in(text: str, high: int | None, expected: str) -> int:
    """An integer in [0, ``high``) (no upper bound when ``high`` is None); ``expected`` words the range."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0 or (high is not None and value >= high):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _seed(text: str) -> int:
    return _int_in(text, 2**32, "an integer in [0, 2**32)")


def _nonnegative_int(text: str) -> int:
    return _int_in(text, None, "an integer >= 0")


def _positive_int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _batch_range(text: str) -> tuple[int, int, int]:
    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:OPT:MAX (e.g. 1:8:32), got {text!r}") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not (0 < values[0] <= values[1] <= values[2] < 2**31):
        raise argparse.ArgumentTypeError(
            f"expected MIN:OPT:MAX with 0 < MIN <= OPT <= MAX < 2**31 (TensorRT's dimensions), got {text!r}"
        )
    return values[0], values[1], values[2]


def _batch_tile(text: str) -> str:
    if text in ("off", "auto") or (text.isdigit() and int(text) > 0):
        return text
    raise argparse.ArgumentTypeError(f"expected off, auto or a positive number of samples, got {text!r}")


# ---------------------------------------------------------------------------------------------------------
# validate / summary / graph: spec and graph stages only


def _cmd_validate(args: argparse.Namespace) -> int:
    from .graph import build_graph
    from .spec import load_spec

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
    from .graph import build_graph
    from .spec import load_spec
    from .summary import print_summary, summary_dict

    graph = build_graph(load_spec(args.spec))
    if args.json:
        print(json.dumps(summary_dict(graph, per_node=args.nodes)))
    else:
        print_summary(graph, per_node=args.nodes)
    return 0


def _cmd_graph(args: argparse.Namespace) -> int:
    from .graph import build_graph
    from .spec import load_spec
    from .viz import write_graph

    graph = build_graph(load_spec(args.spec))
    write_graph(graph, args.output)
    print(f"wrote {args.output}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from .builder import BuildOptions, build_model

    options = BuildOptions(
        output=args.output,
        weights=args.weights,
        precision=args.precision,
        target=args.target,
        calib=args.calib,
        calib_samples=args.calib_samples,
        batch=tuple(args.batch),
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
    from .locate import locate_name

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
    from .train import train

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
    from .evaluate import evaluate

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
    from .predict import predict

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
    from .export.tensorrt import EngineOptions, engine_on_device, inspect_onnx

    if args.iters < 1 or args.warmup < 0:
        raise DensegraphError(f"--iters must be >= 1 and --warmup >= 0, got {args.iters} and {args.warmup}")
    options = EngineOptions(
        precision=args.precision or inspect_onnx(args.onnx).precision,
        batch=tuple(args.batch),
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
        from .bench import print_table

        print_table(
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


def _lazy(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(module, __package__), function)(args) or 0)

    return run


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(
        prog="densegraph",
        description="A compiler for densely connected networks: YAML spec -> graph -> PyTorch, ONNX, TensorRT.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors too")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("validate", help="check specs and their connection graphs")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("summary", help="per-block table of channels, sizes, params, MACs, activations")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--nodes", action="store_true", help="list every node, not only blocks and transitions")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("graph", help="write the connection graph (.json node-link, .dot, .svg, .png)")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.set_defaults(func=_cmd_graph)

    p = sub.add_parser("build", help="build a verified ONNX model (and optionally a TensorRT engine)")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument(
        "--weights",
        metavar="W",
        help="a state_dict or checkpoint (torchvision keys accepted), or torchvision / timm[:VARIANT]",
    )
    p.add_argument("-o", "--output", metavar="DIR", help="output folder (default build/<name>/)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    p.add_argument(
        "--calib", metavar="SRC", help="int8 calibration data: digits, an image folder or a .npy file"
    )
    p.add_argument(
        "--calib-samples", type=int, default=256, metavar="N", help="calibration samples (default 256)"
    )
    p.add_argument(
        "--batch",
        type=_batch_range,
        default=(1, 8, 32),
        metavar="MIN:OPT:MAX",
        help="batch sizes to serve (TensorRT's profile; MAX also bounds auto batch tiling)",
    )
    p.add_argument("--opset", type=int, default=19, metavar="N", help="ONNX opset (default 19)")
    p.add_argument("--target", choices=("onnx", "tensorrt"), default="onnx")
    p.add_argument("--plain", action="store_true", help="export without the graph rewrites (for comparison)")
    p.add_argument(
        "--batch-tile",
        type=_batch_tile,
        default="off",
        metavar="off|auto|N",
        help="run the graph in a scan over batch tiles of N samples (auto: sized to the cache, kept only "
        "if faster on this machine; default off)",
    )
    p.add_argument("--seed", type=_seed, default=0, help="seed of the initialization when no --weights")
    p.add_argument(
        "--workspace", type=_finite_positive_float, metavar="GiB", help="TensorRT workspace pool limit"
    )
    p.add_argument(
        "--dla", type=_nonnegative_int, metavar="CORE", help="build for this DLA core (Jetson), GPU fallback"
    )
    p.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache to load and update")
    p.add_argument("--hardware-compat", action="store_true", help="TensorRT engine for Ampere and newer GPUs")
    p.add_argument(
        "--version-compat",
        action="store_true",
        help="TensorRT engine that also runs on later TensorRT versions",
    )
    p.add_argument(
        "--labels", metavar="FILE", help="class names (one a line, or a JSON list) for the model's metadata"
    )
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser(
        "locate", help="map an ONNX or TensorRT layer name back to its graph node and spec line"
    )
    p.add_argument("model", metavar="MODEL.onnx|BUILD_DIR|SPEC")
    p.add_argument("name", metavar="NAME", help="a node, tensor or layer name (a fused TensorRT name too)")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=_cmd_locate)

    p = sub.add_parser("engine", help="build a TensorRT engine from an ONNX model (on the target device)")
    p.add_argument("onnx", metavar="MODEL.onnx")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.engine")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default=None,
        help="default: what the ONNX is typed as",
    )
    p.add_argument("--batch", type=_batch_range, default=(1, 8, 32), metavar="MIN:OPT:MAX")
    p.add_argument("--workspace", type=_finite_positive_float, metavar="GiB")
    p.add_argument("--dla", type=_nonnegative_int, metavar="CORE")
    p.add_argument("--timing-cache", metavar="FILE")
    p.add_argument("--hardware-compat", action="store_true")
    p.add_argument("--version-compat", action="store_true")
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with onnxruntime")
    p.add_argument("--no-bench", action="store_true", help="skip the latency/throughput table")
    p.add_argument(
        "--iters", type=int, default=20, metavar="N", help="timed runs per batch size (default 20)"
    )
    p.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed runs first (default 3)")
    p.set_defaults(func=_cmd_engine)

    p = sub.add_parser("import-weights", help="convert a torchvision state_dict or checkpoint for a spec")
    p.add_argument("source", metavar="SRC")
    p.add_argument("--spec", required=True, metavar="SPEC")
    p.add_argument("-o", "--output", required=True, metavar="OUT.pt")
    p.set_defaults(func=_lazy(".lower.weights", "run_import_weights"))

    weights_help = (
        "a state_dict or checkpoint (torchvision keys accepted), or published weights by name: "
        "torchvision, timm, timm:VARIANT"
    )
    p = sub.add_parser("train", help="train a spec on real data (digits or an image folder)")
    p.add_argument("spec", metavar="SPEC", help="the model spec (YAML)")
    p.add_argument("--data", required=True, metavar="digits|DIR", help="digits or an image folder")
    p.add_argument(
        "-o", "--output", required=True, metavar="RUN", help="run folder (last.pt, best.pt, metrics)"
    )
    p.add_argument(
        "--epochs", type=int, default=None, metavar="N", help="default 30; with --resume, as recorded"
    )
    p.add_argument("--batch-size", type=int, default=64, metavar="B", help="global batch size (default 64)")
    p.add_argument(
        "--lr", type=_finite_positive_float, default=0.1, metavar="LR", help="initial learning rate (default 0.1)"
    )
    p.add_argument("--resume", action="store_true", help="continue from RUN/last.pt")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--seed", type=_seed, default=0, help="initialisation and shuffling seed")
    p.add_argument("--memory-efficient", action="store_true", help="shared block buffers, recomputed BN-ReLU")
    p.add_argument(
        "--amp", choices=("bf16", "fp16"), default=None, help="autocast: bf16 (CPU or CUDA), fp16 (CUDA)"
    )
    p.add_argument("--channels-last", action="store_true", help="NHWC tensors for the convolutions")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="image-decoding processes (default: cores - 1, max 8)",
    )
    p.add_argument(
        "--threads",
        type=_nonnegative_int,
        default=None,
        metavar="N",
        help="CPU threads per process (default: $OMP_NUM_THREADS if set, else 1, as torchrun does; 0: all cores)",
    )
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "eval", help="top-1 and top-5 of a spec+weights, a model.onnx or a model.engine on real data"
    )
    p.add_argument("model", metavar="SPEC|MODEL.onnx|MODEL.engine")
    p.add_argument("--weights", metavar="W", help=weights_help)
    p.add_argument("--data", required=True, metavar="digits|DIR", help="digits or an image folder")
    p.add_argument(
        "--split",
        choices=("train", "val", "test", "all"),
        default=None,
        help="default: test where the data has one, else val",
    )
    p.add_argument(
        "--limit", type=int, default=None, metavar="N", help="score a fixed random subset of N images"
    )
    p.add_argument("--batch-size", type=int, default=64, metavar="B")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="image-decoding processes")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", action="store_true", help='also print {"top1", "top5", "samples", "split"}')
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict", help="classify image files with a spec+weights, a model.onnx or an engine")
    p.add_argument("model", metavar="SPEC|MODEL.onnx|MODEL.engine")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--weights", metavar="W", help=weights_help)
    p.add_argument("--top", type=int, default=5, metavar="K", help="classes to show per image (default 5)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("bench", help="latency and throughput of a spec, a model.onnx or a model.engine")
    p.add_argument("model", metavar="SPEC|MODEL.onnx|MODEL.engine")
    p.add_argument("--weights", metavar="W")
    p.add_argument("--batch", type=_positive_int_list, default=[1, 8], metavar="1,8")
    p.add_argument("--iters", type=int, default=20, metavar="N")
    p.add_argument("--warmup", type=int, default=3, metavar="N")
    p.add_argument("--frozen", action="store_true", help="PyTorch: bench the frozen inference module")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: the GPU when there is one")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_lazy(".bench", "run_bench"))

    p = sub.add_parser("heatmap", help="the paper's Fig. 5: average |weight| from each source to each layer")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--weights", required=True, metavar="W")
    p.add_argument("-o", "--output", required=True, metavar="FIG.png")
    p.add_argument("--json", action="store_true", help="also write the matrices to FIG.json")
    p.set_defaults(func=_lazy(".heatmap", "run_heatmap"))
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], Any] = args.func
    try:
        return int(func(args) or 0)
    except DensegraphError as exc:
        if args.debug:
            raise
        print(exc.format(), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception:
        print(
            "densegraph: internal error (a bug in densegraph, not in your input); please report it with the "
            "traceback below",
            file=sys.stderr,
        )
        raise
