"""The argument parser: one function per subcommand."""

from __future__ import annotations

import argparse

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
    _cmd_build,
    _cmd_engine,
    _cmd_eval,
    _cmd_graph,
    _cmd_locate,
    _cmd_predict,
    _cmd_summary,
    _cmd_train,
    _cmd_validate,
    _lazy,
)


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
        "--lr",
        type=_finite_positive_float,
        default=0.1,
        metavar="LR",
        help="initial learning rate (default 0.1)",
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
    from .. import __version__

    return __version__
