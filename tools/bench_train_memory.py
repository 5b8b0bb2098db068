"""Peak memory and step time of one SGD step: plain lowering, per-layer checkpointing, ``memory_efficient=True``.

    python tools/bench_train_memory.py                      # densenet121, batch 16, 224x224, 3 timed steps
    python tools/bench_train_memory.py --batch-size 4 --size 64 --steps 2 --spec specs/densenet121.yaml

Contenders, each in a subprocess of its own (its peak RSS over its base, taken after the model, optimizer and
batch exist):

- ``plain``: ``to_torch(spec)``, the ops of torchvision's default DenseNet (concatenate, BN, ReLU, conv).
- ``checkpoint``: the same modules run as torchvision's ``memory_efficient=True`` does, with
  ``torch.utils.checkpoint`` around concatenate+BN+ReLU+conv1 of every layer (recomputed in backward).
- ``efficient``: ``to_torch(spec, memory_efficient=True)``: block buffers, BN-ReLU recomputed in backward.

Step time is the median of ``--steps`` steps after one warm-up step. With ``--rounds`` > 1 the three
subprocesses run again in turn and the medians over rounds are reported. The last line is JSON with the ratios
``peak(efficient)/peak(checkpoint)`` and ``time(efficient)/time(plain)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONTENDERS = ("plain", "checkpoint", "efficient")


def _rss_mb() -> float:
    """Current resident set size (Linux), or the peak so far elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return _peak_rss_mb()


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _checkpoint_forward(module, x):  # type: ignore[no-untyped-def]
    """torchvision's memory_efficient=True on the connection graph: checkpoint concat+BN+ReLU+conv1 per node."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    from densegraph.graph import node_inputs

    graph = module.graph
    order = list(graph.nodes)
    last_use = {u: i for i, v in enumerate(order) for u in node_inputs(graph, v)}
    values = {"input": x}
    out = x
    for i, node in enumerate(order[1:], start=1):
        inputs = [values[u] for u in node_inputs(graph, node)]
        ops = graph.nodes[node]["ops"]
        modules = [module.get_submodule(op["name"]) if op.get("name") else None for op in ops]
        start = 0
        if [op["op"] for op in ops[:3]] == ["bn", "relu", "conv"] and len(inputs) > 1 and module.training:

            def bottleneck(*tensors, bn=modules[0], relu=modules[1], conv=modules[2]):  # type: ignore[no-untyped-def]
                return conv(relu(bn(torch.cat(tensors, 1))))

            out, start = checkpoint(bottleneck, *inputs, use_reentrant=False), 3
        else:
            out = inputs[0] if len(inputs) == 1 else torch.cat(inputs, 1)
        for op, m in zip(ops[start:], modules[start:], strict=True):
            if op["op"] == "dropout":
                out = F.dropout(out, op["p"], module.training)
            elif op["op"] == "global_avgpool":
                out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
            elif m is None:
                out = F.relu(out, inplace=True)
            else:
                out = m(out)
        for u in node_inputs(graph, node):
            if last_use[u] == i:
                del values[u]
        values[node] = out
    return out


def _worker(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F

    from densegraph.lower.torch import graph_of, module_from_graph
    from densegraph.spec import load_spec

    torch.set_num_threads(args.threads)
    spec = load_spec(REPO / args.spec)
    if args.size:
        spec = dataclasses.replace(spec, input_size=(args.size, args.size))
    graph = graph_of(spec)
    module = module_from_graph(graph, seed=0, memory_efficient=args.worker == "efficient").train()
    forward = (lambda x: _checkpoint_forward(module, x)) if args.worker == "checkpoint" else module
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, *graph.graph["input_shape"], generator=generator)
    y = torch.randint(0, module.num_classes, (args.batch,), generator=generator)
    base = _rss_mb()
    times = []
    for step in range(args.steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()
        if step:  # the first step is the warm-up
            times.append(time.perf_counter() - start)
        del loss
    print(json.dumps({"peak_mb": _peak_rss_mb() - base, "step_s": statistics.median(times)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="specs/densenet121.yaml")
    parser.add_argument("--batch-size", dest="batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=None, help="input side (default: the spec's)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return

    runs: dict[str, list[dict[str, float]]] = {name: [] for name in CONTENDERS}
    for _ in range(args.rounds):
        for name in CONTENDERS:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--spec",
                args.spec,
                "--batch-size",
                str(args.batch),
            ]
            cmd += ["--steps", str(args.steps), "--threads", str(args.threads)]
            cmd += ["--size", str(args.size)] if args.size else []
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    result = {
        name: {key: statistics.median(r[key] for r in rs) for key in ("peak_mb", "step_s")}
        for name, rs in runs.items()
    }
    size = args.size or "spec"
    print(f"{args.spec}, batch {args.batch}, size {size}, {args.threads} threads, {args.steps} timed steps")
    print(f"{'contender':<12} {'peak MB':>9} {'step s':>8} {'peak/ckpt':>10} {'time/plain':>11}")
    for name, r in result.items():
        peak_ratio = r["peak_mb"] / result["checkpoint"]["peak_mb"]
        time_ratio = r["step_s"] / result["plain"]["step_s"]
        print(f"{name:<12} {r['peak_mb']:>9.0f} {r['step_s']:>8.2f} {peak_ratio:>10.2f} {time_ratio:>11.2f}")
    summary = {
        "spec": args.spec,
        "batch": args.batch,
        "size": args.size,
        "threads": args.threads,
        "results": {name: {k: round(v, 3) for k, v in r.items()} for name, r in result.items()},
        "peak_efficient_over_checkpoint": round(
            result["efficient"]["peak_mb"] / result["checkpoint"]["peak_mb"], 3
        ),
        "peak_efficient_over_plain": round(result["efficient"]["peak_mb"] / result["plain"]["peak_mb"], 3),
        "time_efficient_over_plain": round(result["efficient"]["step_s"] / result["plain"]["step_s"], 3),
        "time_checkpoint_over_plain": round(result["checkpoint"]["step_s"] / result["plain"]["step_s"], 3),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
