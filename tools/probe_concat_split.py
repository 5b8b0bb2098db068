"""Does splitting the dense layers' input concatenations pay in onnxruntime? A measured probe, not a build option.

    python tools/probe_concat_split.py                                  # densenet121, chunks 3,4,6, batches 1,8
    python tools/probe_concat_split.py --chunks 4 --batch-sizes 8 --rounds 21

densegraph's fp32 model joins a node's L inputs with one ``Concat`` and runs BatchNorm, ReLU and a 1x1 conv on
the result, so a block of L layers copies sum(c0 + l*k) channels: quadratic in L, and memory-bound. The
rewrite probed here keeps, for each chunk of ``m`` layers, one shared concatenation ``A`` of the inputs that
are already ``m``-aligned and a small concatenation ``B`` of the newest ones, and splits the BN-ReLU-conv by
input channels: ``conv(relu(bn(concat(A, B)))) = conv_A(relu(bn_A(A))) + conv_B(relu(bn_B(B)))`` (the conv is
linear in its input channels, BN and ReLU act per channel), the bias on ``conv_B``. It is exact in real
arithmetic; the probe checks each variant's outputs against the flat model's. onnxruntime fuses the ``Add``
into ``conv_B`` (NCHWc ``Sum``), so the cost is the smaller GEMMs of ``conv_B`` (their K is at most ``m*k``)
against the copies saved.

The rewrite matches the ONNX pattern ``Concat -> BatchNormalization -> Relu -> Conv 1x1`` (no family names);
each variant is timed against the flat model in alternating rounds (``bench_infer``'s timing: two threads,
spinning off, the last of two calls timed) and the last line printed is JSON with the paired ratios
(flat time / variant time: above 1 the split is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_infer import _emit, _paired, _session, _time, machine  # noqa: E402


def split_concats(model: Any, chunk: int) -> tuple[Any, int]:
    """A copy of ``model`` with every ``Concat`` of more than ``chunk`` inputs that feeds only
    BatchNormalization -> Relu -> Conv (1x1, stride 1, unpadded, ungrouped) split as the module docstring says;
    returns it and the number of layers rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(model)
    channels = {
        v.name: v.type.tensor_type.shape.dim[1].dim_value
        for v in (*inferred.graph.value_info, *inferred.graph.input)
        if len(v.type.tensor_type.shape.dim) == 4
    }
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def only_reader(value: str, op_type: str) -> Any:
        found = readers.get(value, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type else None

    def attrs(node: Any) -> dict[str, Any]:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name])

    nodes, added, shared, rewritten, skip = [], [], {}, 0, set()
    for node in graph.node:
        if id(node) in skip:
            continue
        bn = only_reader(node.output[0], "BatchNormalization") if node.op_type == "Concat" else None
        relu = bn and only_reader(bn.output[0], "Relu")
        conv = relu and only_reader(relu.output[0], "Conv")
        pieces = list(node.input)
        if not (
            conv
            and len(pieces) > chunk
            and attrs(node).get("axis") == 1
            and attrs(conv).get("group", 1) == 1
            and list(attrs(conv).get("kernel_shape", [])) == [1, 1]
            and not any(attrs(conv).get("pads", [0]))
            and set(attrs(conv).get("strides", [1])) == {1}
            and all(p in channels for p in pieces)
        ):
            nodes.append(node)
            continue
        split = ((len(pieces) - 1) // chunk) * chunk
        a_pieces, b_pieces = pieces[:split], pieces[split:]
        weight, tensors = array(conv.input[1]), [array(n) for n in bn.input[1:]]
        cut = sum(channels[p] for p in a_pieces)
        terms = []
        for part, group, sl in (("A", a_pieces, slice(0, cut)), ("B", b_pieces, slice(cut, None))):
            key = tuple(group)
            if key not in shared:
                shared[key] = group[0] if len(group) == 1 else f"{node.name}.{part}"
                if len(group) > 1:
                    nodes.append(helper.make_node("Concat", group, [shared[key]], name=shared[key], axis=1))
            base = f"{conv.name}.{part}"
            names = [f"{bn.name}.{part}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
            added += [
                numpy_helper.from_array(np.ascontiguousarray(t[sl]), n)
                for t, n in zip(tensors, names, strict=True)
            ]
            added.append(numpy_helper.from_array(np.ascontiguousarray(weight[:, sl]), f"{base}.weight"))
            inputs = [f"{relu.name}.{part}", f"{base}.weight"]
            if part == "B" and len(conv.input) > 2:
                inputs.append(conv.input[2])
            nodes += [
                helper.make_node(
                    "BatchNormalization", [shared[key], *names], [f"{bn.name}.{part}"], name=f"{bn.name}.{part}",
                    epsilon=attrs(bn).get("epsilon", 1e-5),
                ),
                helper.make_node("Relu", [f"{bn.name}.{part}"], inputs[:1], name=inputs[0]),
                helper.make_node("Conv", inputs, [base], name=base, **attrs(conv)),
            ]  # fmt: skip
            terms.append(base)
        nodes.append(helper.make_node("Add", terms, [conv.output[0]], name=conv.name))
        skip |= {id(bn), id(relu), id(conv)}
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for n in nodes for name in n.input}
    kept = [i for i in (*graph.initializer, *added) if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    return model, rewritten


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--spec", default=str(Path(__file__).resolve().parents[1] / "specs" / "densenet121.yaml")
    )
    parser.add_argument("--chunks", default="3,4,6", help="comma-separated chunk sizes m")
    parser.add_argument("--batch-sizes", dest="batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    import onnx

    from densegraph.lower.torch import graph_of, module_from_graph
    from densegraph.passes import EXPORT_PASSES
    from densegraph.spec import load_spec
    from densegraph.testing import randomize_batchnorm

    spec = load_spec(args.spec)
    graph = graph_of(spec)
    shape = tuple(graph.graph["input_shape"])
    plain = module_from_graph(graph, seed=0).eval()
    randomize_batchnorm(plain, seed=1)
    host = machine()
    print(
        f"{graph.graph['name']} {'x'.join(map(str, shape))}; {host['cpu']}, {' '.join(host['simd'])}; load {host['load_avg']}"
    )
    record: dict[str, Any] = {"spec": graph.graph["name"], "machine": host, "batches": {}}
    with tempfile.TemporaryDirectory(prefix="densegraph-split-") as tmp:
        folder = Path(tmp)
        _emit(plain, EXPORT_PASSES, folder / "flat.onnx")
        flat = onnx.load(os.fspath(folder / "flat.onnx"))
        paths = {"flat": folder / "flat.onnx"}
        for m in (int(c) for c in args.chunks.split(",")):
            split, count = split_concats(flat, m)
            onnx.save(split, folder / f"split{m}.onnx")
            paths[f"split {m}"] = folder / f"split{m}.onnx"
            print(
                f"split {m}: {count} layers rewritten, {len(split.graph.node)} nodes (flat {len(flat.graph.node)})"
            )
        sessions = {name: _session(path, args.threads, spin=False) for name, path in paths.items()}
        for batch in (int(b) for b in args.batches.split(",")):
            x = np.random.default_rng(batch).standard_normal((batch, *shape), dtype=np.float32)
            outputs = {name: s.run(None, {"images": x})[0] for name, s in sessions.items()}
            calls = {name: (lambda s=s, x=x: s.run(None, {"images": x})) for name, s in sessions.items()}
            samples = _time([(calls, args.rounds)], warmup=1)
            rows = {}
            for name in sessions:
                rows[name] = {
                    "wall_ms": round(statistics.median(samples[name]["wall"]) * 1e3, 1),
                    "speedup": round(_paired(samples, "flat", name, "wall"), 3),
                    "max_abs_diff": float(np.abs(outputs[name] - outputs["flat"]).max()),
                }
                print(
                    f"batch {batch:3d}  {name:9s} {rows[name]['wall_ms']:8.1f} ms  "
                    f"{rows[name]['speedup']:.3f}x vs flat  max |diff| {rows[name]['max_abs_diff']:.1e}"
                )
            record["batches"][str(batch)] = rows
    print(json.dumps(record))


if __name__ == "__main__":
    main()
