"""How much faster can int8 be than fp32 on this CPU? onnxruntime's conv kernels, measured one conv at a time.

    python tools/probe_int8_kernels.py                         # densenet121's convs at batch 8, 2 threads
    python tools/probe_int8_kernels.py --spec specs/densenet169.yaml --batch 8 --rounds 7

Every distinct convolution of ``--spec``'s graph (its channels, kernel, stride, padding, groups and input size,
read from the graph's op lists) becomes two one-node ONNX models: fp32 ``Conv``, and the ``cpu`` int8 form's
arithmetic (uint8 activations, int8 per-channel weights in 7 bits, QuantizeLinear/DequantizeLinear around the
conv, which onnxruntime fuses into one ``QLinearConv``; the probe checks the fusion happened). Both run in
onnxruntime (``--threads``, spinning off), alternating, and the median times give each conv's GMAC/s.

The last lines give the model-weighted ratio: the fp32 time of all the graph's convs (each shape times its
count) over their int8 time. It bounds what any int8 model made of these kernels can gain over the fp32 one in
convolution time (three quarters of the fp32 model's time and nearly all of the int8 model's; see
docs/performance.md). Without VNNI (``avx512_vnni``/``avx_vnni``), MLAS's u8s8 kernels multiply through
``vpmaddubsw``/``vpmaddwd``, two instructions per 16-bit pair of products, and on many cores they are no
faster than fp32 FMA; with VNNI one ``vpdpbusd`` does it. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_infer import _time, machine  # noqa: E402

Shape = tuple[
    int, int, int, int, int, int, int, int
]  # cin, cout, kernel, stride, padding, groups, height, width


def conv_shapes(graph: Any) -> Counter[Shape]:
    """Every conv op of ``graph`` (a densegraph connection graph) as a shape, with how often it occurs."""
    from densegraph.cost import op_output

    shapes: Counter[Shape] = Counter()
    for _, data in graph.nodes(data=True):
        channels, size = data["in_channels"], tuple(data["in_size"])
        for op in data["ops"]:
            if op["op"] == "conv":
                shapes[
                    (
                        int(op.get("in_channels", channels)), int(op["out_channels"]), int(op["kernel"]),
                        int(op["stride"]), int(op["padding"]), int(op.get("groups", 1)), int(size[0]), int(size[1]),
                    )
                ] += 1  # fmt: skip
            channels, size = op_output(op, channels, size)
    return shapes


def macs(shape: Shape, batch: int) -> int:
    cin, cout, k, stride, pad, groups, h, w = shape
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    return batch * oh * ow * cout * (cin // groups) * k * k


def conv_models(shape: Shape, seed: int = 0) -> tuple[bytes, bytes]:
    """The fp32 and the int8 (QDQ, the ``cpu`` form's types) one-conv models of ``shape``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cin, cout, k, stride, pad, groups, h, w = shape
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((cout, cin // groups, k, k)) * 0.05).astype(np.float32)
    attrs = {"kernel_shape": [k, k], "strides": [stride] * 2, "pads": [pad] * 4, "group": groups}
    io = (
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, cin, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, cout, None, None])],
    )

    def model(nodes: list[Any], inits: list[Any]) -> bytes:
        graph = helper.make_graph(nodes, "probe", *io, inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]).SerializeToString()

    fp32 = model(
        [helper.make_node("Conv", ["x", "w"], ["y"], **attrs)], [numpy_helper.from_array(weight, "w")]
    )
    # per output channel, symmetric, 7 bits (reduce_range: no int16 saturation in vpmaddubsw)
    w_scale = (np.abs(weight).reshape(cout, -1).max(axis=1) / 63).astype(np.float32)
    w_q = np.clip(np.round(weight / w_scale[:, None, None, None]), -64, 63).astype(np.int8)
    inits = [
        numpy_helper.from_array(w_q, "wq"),
        numpy_helper.from_array(w_scale, "ws"),
        numpy_helper.from_array(np.zeros(cout, np.int8), "wz"),
        numpy_helper.from_array(np.array(4.0 / 255, np.float32), "xs"),
        numpy_helper.from_array(np.array(0, np.uint8), "xz"),
        numpy_helper.from_array(np.array(8.0 / 255, np.float32), "ys"),
        numpy_helper.from_array(np.array(128, np.uint8), "yz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"], **attrs),
        helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "ys", "yz"], ["y"]),
    ]
    int8 = model(nodes, inits)
    onnx.checker.check_model(onnx.ModelProto.FromString(int8))
    return fp32, int8


def _session(model: bytes, threads: int, optimized: str | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized:
        options.optimized_model_filepath = optimized
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _fused(model: bytes, threads: int) -> bool:
    """Whether onnxruntime runs the int8 model as one fused quantized conv (not DQ -> float Conv -> Q)."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/opt.onnx"
        _session(model, threads, optimized=path)
        ops = [n.op_type for n in onnx.load(path).graph.node]
    return "QLinearConv" in ops and "Conv" not in ops


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--spec", default=str(Path(__file__).resolve().parents[1] / "specs" / "densenet121.yaml")
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    from densegraph.lower.torch import graph_of
    from densegraph.spec import load_spec

    graph = graph_of(load_spec(args.spec))
    shapes = conv_shapes(graph)
    host = machine()
    print(
        f"{graph.graph['name']}: {sum(shapes.values())} convs, {len(shapes)} distinct shapes, batch {args.batch}, "
        f"{args.threads} threads; {host['cpu']}, {' '.join(host['simd'])}; load {host['load_avg']}"
    )
    rows, fp32_total, int8_total, unfused = [], 0.0, 0.0, []
    for shape, count in sorted(shapes.items(), key=lambda item: -macs(item[0], args.batch) * item[1]):
        fp32, int8 = conv_models(shape)
        if not _fused(int8, args.threads):
            unfused.append(shape)
        cin, _, _, _, _, _, h, w = shape
        x = np.random.default_rng(1).uniform(0, 4, (args.batch, cin, h, w)).astype(np.float32)
        sessions = {"fp32": _session(fp32, args.threads), "int8": _session(int8, args.threads)}
        calls = {name: (lambda s=s, x=x: s.run(None, {"x": x})) for name, s in sessions.items()}
        samples = _time([(calls, args.rounds)], warmup=1)
        times = {name: statistics.median(samples[name]["wall"]) for name in sessions}
        work = macs(shape, args.batch)
        rows.append(
            {
                "shape": dict(
                    zip(
                        ("cin", "cout", "kernel", "stride", "padding", "groups", "h", "w"), shape, strict=True
                    )
                ),
                "count": count,
                "fp32_gmacs": round(work / times["fp32"] / 1e9, 1),
                "int8_gmacs": round(work / times["int8"] / 1e9, 1),
                "int8_vs_fp32": round(times["fp32"] / times["int8"], 3),
            }
        )
        fp32_total += times["fp32"] * count
        int8_total += times["int8"] * count
    for row in rows[:12]:
        s = row["shape"]
        print(
            f"{s['cin']:5d}->{s['cout']:<5d} {s['kernel']}x{s['kernel']}/{s['stride']} g{s['groups']:<4d} "
            f"{s['h']:3d}x{s['w']:<3d} x{row['count']:<3d} fp32 {row['fp32_gmacs']:6.1f} GMAC/s  "
            f"int8 {row['int8_gmacs']:6.1f} GMAC/s  int8/fp32 {row['int8_vs_fp32']:.2f}x"
        )
    if len(rows) > 12:
        print(f"... and {len(rows) - 12} more shapes")
    ceiling = fp32_total / int8_total
    print(
        f"all convs, weighted by count: fp32 {fp32_total * 1e3:.0f} ms, int8 {int8_total * 1e3:.0f} ms: "
        f"int8 kernels {ceiling:.2f}x the fp32 ones"
    )
    if unfused:
        print(f"warning: onnxruntime did not fuse {len(unfused)} int8 shapes into QLinearConv: {unfused[:3]}")
    record = {
        "spec": graph.graph["name"],
        "machine": host,
        "batch": args.batch,
        "threads": args.threads,
        "fp32_ms": round(fp32_total * 1e3, 1),
        "int8_ms": round(int8_total * 1e3, 1),
        "int8_vs_fp32": round(ceiling, 3),
        "unfused": len(unfused),
        "shapes": rows,
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
