"""The argument parser: one function per subcommand.

Each flag says one thing across the commands: ``--batch-size B`` is one batch size (train, eval),
``--batch-sizes 1,8`` a list to measure (bench), ``--batch-range MIN:OPT:MAX`` the batch sizes a model must serve
(build, engine: TensorRT's optimization profile). Every positional and flag has help text; the TensorRT flags
form their own group in ``build --help``.
"""

from __future__ import annotations

import argparse
from typing import Any

from ._args import (
    _batch_range,
    _batch_tile,
    _finite_positive_float,
    _nonnegative_int,
    _Parser,
    _positive_int_list,
    _seed,
)
from ._commands import (
    _cmd_bench,
    _cmd_build,
    _cmd_engine,
    _cmd_eval,
    _cmd_graph,
    _cmd_heatmap,
    _cmd_import_weights,
    _cmd_locate,
    _cmd_predict,
    _cmd_summary,
    _cmd_train,
    _cmd_validate,
)

_WEIGHTS_HELP = (
    "a state_dict or checkpoint (torchvision keys accepted), or published weights by name: "
    "torchvision, timm, timm:VARIANT"
)
_MODEL = "SPEC|MODEL.onnx|MODEL.engine"
_PRECISIONS = ("fp32", "fp16", "int8")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(
        prog="densegraph",
        description="A compiler for densely connected networks: YAML spec -> graph -> PyTorch, ONNX, TensorRT.",
        allow_abbrev=False,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors too")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (
        _add_validate,
        _add_summary,
        _add_graph,
        _add_build,
        _add_locate,
        _add_engine,
        _add_import_weights,
        _add_train,
        _add_eval,
        _add_predict,
        _add_bench,
        _add_heatmap,
    ):
        add(sub)
    return parser


def _command(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help, allow_abbrev=False)
    return parser


def _add_validate(sub: Any) -> None:
    p = _command(sub, "validate", "check specs and their connection graphs")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="model specs (YAML)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    p.set_defaults(func=_cmd_validate)


def _add_summary(sub: Any) -> None:
    p = _command(sub, "summary", "per-block table of channels, sizes, params, MACs, activations")
    p.add_argument("spec", metavar="SPEC", help="the model spec (YAML)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--nodes", action="store_true", help="list every node, not only blocks and transitions")
    p.set_defaults(func=_cmd_summary)


def _add_graph(sub: Any) -> None:
    p = _command(sub, "graph", "write the connection graph (.json node-link, .dot, .svg, .png)")
    p.add_argument("spec", metavar="SPEC", help="the model spec (YAML)")
    p.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="the file to write; its suffix picks the format"
    )
    p.set_defaults(func=_cmd_graph)


def _tensorrt_flags(group: Any, *, with_batch_range: bool) -> None:
    if with_batch_range:
        group.add_argument(
            "--batch-range",
            type=_batch_range,
            default=(1, 8, 32),
            metavar="MIN:OPT:MAX",
            help="batch sizes the engine serves: its optimization profile, tuned for OPT (default 1:8:32; "
            "the ONNX batch axis is always dynamic, and MAX also bounds --batch-tile auto)",
        )
    group.add_argument(
        "--workspace", type=_finite_positive_float, metavar="GiB", help="workspace memory pool limit"
    )
    group.add_argument(
        "--dla", type=_nonnegative_int, metavar="CORE", help="build for this DLA core (Jetson), GPU fallback"
    )
    group.add_argument("--timing-cache", metavar="FILE", help="timing cache to load and update")
    group.add_argument(
        "--hardware-compat",
        action="store_true",
        help="an engine for every Ampere-or-newer GPU (not on Jetson)",
    )
    group.add_argument(
        "--version-compat", action="store_true", help="an engine that also runs on later TensorRT versions"
    )


def _add_build(sub: Any) -> None:
    p = _command(sub, "build", "build a verified ONNX model (and optionally a TensorRT engine)")
    p.add_argument("spec", metavar="SPEC", help="the model spec (YAML)")
    p.add_argument("--weights", metavar="W", help=_WEIGHTS_HELP + " (default: seeded initialization)")
    p.add_argument("-o", "--output", metavar="DIR", help="output folder (default build/<name>/)")
    p.add_argument("--precision", choices=_PRECISIONS, default="fp32", help="model precision (default fp32)")
    p.add_argument(
        "--calib", metavar="SRC", help="int8 calibration data: digits, an image folder or a .npy file"
    )
    p.add_argument(
        "--calib-samples", type=int, default=256, metavar="N", help="calibration samples (default 256)"
    )
    p.add_argument(
        "--calib-batch",
        type=int,
        default=8,
        metavar="N",
        help="calibration samples run at once (default 8): bounds calibration memory, which grows with N; "
        "the MinMax ranges do not depend on it",
    )
    p.add_argument(
        "--no-bias-correction",
        dest="bias_correction",
        action="store_false",
        help="int8: keep the quantized layers' biases as they are (by default each moves by the mean shift "
        "its int8 weights put on its output, measured on the calibration data)",
    )
    p.add_argument("--opset", type=int, default=19, metavar="N", help="ONNX opset (default 19)")
    p.add_argument(
        "--target", choices=("onnx", "tensorrt"), default="onnx", help="what to build (default onnx)"
    )
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
        "--labels", metavar="FILE", help="class names (one a line, or a JSON list) for the model's metadata"
    )
    _tensorrt_flags(p.add_argument_group("TensorRT (with --target tensorrt)"), with_batch_range=True)
    p.set_defaults(func=_cmd_build)


def _add_locate(sub: Any) -> None:
    p = _command(sub, "locate", "map an ONNX or TensorRT layer name back to its graph node and spec line")
    p.add_argument("model", metavar="MODEL.onnx|BUILD_DIR|SPEC", help="a built model, its folder, or a spec")
    p.add_argument("name", metavar="NAME", help="a node, tensor or layer name (a fused TensorRT name too)")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=_cmd_locate)


def _add_engine(sub: Any) -> None:
    p = _command(sub, "engine", "build a TensorRT engine from an ONNX model (on the target device)")
    p.add_argument("onnx", metavar="MODEL.onnx", help="an ONNX model (densegraph's or another)")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.engine", help="the engine file to write")
    p.add_argument(
        "--precision", choices=_PRECISIONS, default=None, help="default: what the ONNX is typed as"
    )
    _tensorrt_flags(p.add_argument_group("TensorRT"), with_batch_range=True)
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with onnxruntime")
    p.add_argument("--no-bench", action="store_true", help="skip the latency/throughput table")
    p.add_argument(
        "--iters", type=int, default=20, metavar="N", help="timed runs per batch size (default 20)"
    )
    p.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed runs first (default 3)")
    p.set_defaults(func=_cmd_engine)


def _add_import_weights(sub: Any) -> None:
    p = _command(sub, "import-weights", "convert a torchvision or timm state_dict or checkpoint for a spec")
    p.add_argument("source", metavar="SRC", help="the weights file (.pth, .pt, .bin)")
    p.add_argument("--spec", required=True, metavar="SPEC", help="the model spec the weights are for")
    p.add_argument("-o", "--output", required=True, metavar="OUT.pt", help="the state_dict file to write")
    p.set_defaults(func=_cmd_import_weights)


def _add_train(sub: Any) -> None:
    p = _command(sub, "train", "train a spec on real data (digits or an image folder)")
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
        "--lr",
        type=_finite_positive_float,
        default=0.1,
        metavar="LR",
        help="initial learning rate (default 0.1)",
    )
    p.add_argument("--resume", action="store_true", help="continue from RUN/last.pt")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train (default cpu)")
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


def _add_eval(sub: Any) -> None:
    p = _command(
        sub, "eval", "top-1 and top-5 of a spec+weights, a model.onnx or a model.engine on real data"
    )
    p.add_argument("model", metavar=_MODEL, help="what to evaluate")
    p.add_argument("--weights", metavar="W", help=_WEIGHTS_HELP + " (a spec needs them)")
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
    p.add_argument("--batch-size", type=int, default=64, metavar="B", help="images per batch (default 64)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="image-decoding processes")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    p.add_argument("--json", action="store_true", help='also print {"top1", "top5", "samples", "split"}')
    p.set_defaults(func=_cmd_eval)


def _add_predict(sub: Any) -> None:
    p = _command(sub, "predict", "classify image files with a spec+weights, a model.onnx or an engine")
    p.add_argument("model", metavar=_MODEL, help="the model to run")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--weights", metavar="W", help=_WEIGHTS_HELP + " (a spec needs them)")
    p.add_argument("--top", type=int, default=5, metavar="K", help="classes to show per image (default 5)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(func=_cmd_predict)


def _add_bench(sub: Any) -> None:
    p = _command(sub, "bench", "latency and throughput of a spec, a model.onnx or a model.engine")
    p.add_argument("model", metavar=_MODEL, help="the model to time")
    p.add_argument("--weights", metavar="W", help="weights for a spec (default: seeded initialization)")
    p.add_argument(
        "--batch-sizes",
        type=_positive_int_list,
        default=[1, 8],
        metavar="1,8",
        help="batch sizes to time, comma-separated (default 1,8)",
    )
    p.add_argument(
        "--iters", type=int, default=20, metavar="N", help="timed runs per batch size (default 20)"
    )
    p.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed runs first (default 3)")
    p.add_argument("--frozen", action="store_true", help="PyTorch: bench the frozen inference module")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: the GPU when there is one")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=_cmd_bench)


def _add_heatmap(sub: Any) -> None:
    p = _command(sub, "heatmap", "the paper's Fig. 5: average |weight| from each source to each layer")
    p.add_argument("spec", metavar="SPEC", help="the model spec (YAML)")
    p.add_argument("--weights", required=True, metavar="W", help="trained weights for the spec")
    p.add_argument("-o", "--output", required=True, metavar="FIG.png", help="the figure to write")
    p.add_argument("--json", action="store_true", help="also write the matrices to FIG.json")
    p.set_defaults(func=_cmd_heatmap)


def _version() -> str:
    from .. import __version__

    return __version__
