"""Eval latency of the plain PyTorch lowering against ``freeze(module)``, measured side by side.

    python tools/bench_torch_infer.py                      # densenet121, 224x224, batch 1 and 8, 2 threads
    python tools/bench_torch_infer.py --iters 3 --batch-sizes 8 --spec specs/densenet121.yaml --size 224
    python tools/bench_torch_infer.py --ablate             # also each rewrite left out in turn
    python tools/bench_torch_infer.py --profile            # torch.profiler table and the convolution floor

glibc is told to keep freed memory (``--malloc tuned``, as ``tools/bench_infer.py`` does: otherwise the plain
module page-faults its activations back in on every call, which flatters the frozen one).
Contenders take turns, ``--repeat`` calls each per round (the first call of each turn is not timed: it pays
for the other contender's allocations), for ``--iters`` rounds; the figures are medians of the timed calls. The last line is JSON: per batch, the median milliseconds, the speedup plain/frozen and the largest
absolute difference of the outputs.

``--profile`` also profiles ``--profile-calls`` frozen calls at the largest batch and reports the median time
spent in convolutions alone next to the time the frozen module may take to be ``--target`` times faster than
plain: when the convolutions (oneDNN's kernels, at this machine's GEMM rate) already exceed that budget, no
rewrite of the remaining ops can reach the target here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from densegraph.lower.torch import REWRITES, freeze, graph_of, module_from_graph  # noqa: E402
from densegraph.spec import load_spec  # noqa: E402
from densegraph.testing import randomize_batchnorm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_infer import tune_malloc  # noqa: E402


def _time(contenders: dict[str, Callable[[], torch.Tensor]], iters: int, repeat: int) -> dict[str, float]:
    """Median milliseconds per call. Each round runs every contender ``repeat`` times in a row and keeps all
    but the first call, so each is timed in its steady state (its own allocator pattern; the first call after
    another contender pays that one's page faults), while the rounds interleave the contenders."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    with torch.inference_mode():
        for _ in range(iters):
            for name, fn in contenders.items():
                for call in range(repeat):
                    start = time.perf_counter()
                    fn()
                    if call:
                        samples[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(s) for name, s in samples.items()}


def _profile(frozen: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace) -> dict[str, float]:
    """Print the profiler table of one frozen call; return the medians, over ``--profile-calls`` calls, of the
    self time of its convolutions and of all its ops (ms)."""
    from torch.profiler import ProfilerActivity, profile

    conv, total = [], []
    with torch.inference_mode():
        frozen(x)  # recorded: the profiled calls replay
        for call in range(max(1, args.profile_calls)):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                frozen(x)
            events = prof.key_averages()
            conv.append(sum(e.self_cpu_time_total for e in events if "convolution" in e.key) / 1e3)
            total.append(sum(e.self_cpu_time_total for e in events) / 1e3)
            if call == 0:
                print(events.table(sort_by="self_cpu_time_total", row_limit=15))
    return {"conv_ms": round(statistics.median(conv), 2), "op_ms": round(statistics.median(total), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="specs/densenet121.yaml")
    parser.add_argument("--size", type=int, default=None, help="input side (default: the spec's)")
    parser.add_argument("--batch-sizes", dest="batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--iters", type=int, default=5, help="rounds over the contenders")
    parser.add_argument("--repeat", type=int, default=3, help="calls per contender per round (first untimed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ablate", action="store_true", help="also time freeze without each rewrite")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print a torch.profiler table of the frozen module and its convolution floor",
    )
    parser.add_argument("--profile-calls", type=int, default=3, help="profiled calls for the floor")
    parser.add_argument(
        "--target", type=float, default=1.8, help="speedup the floor is compared with (issue 6: 1.8)"
    )
    parser.add_argument(
        "--malloc",
        choices=("tuned", "default"),
        default="tuned",
        help="tuned: glibc keeps freed memory, as in tools/bench_infer.py; default: glibc as it comes",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc_tuned = tune_malloc() if args.malloc == "tuned" else False

    spec = load_spec(args.spec)
    if args.size:
        spec = dataclasses.replace(spec, input_size=(args.size, args.size))
    graph = graph_of(spec)
    # non-trivial BN statistics, so that every fold is exercised (the same as tools/bench_infer.py's)
    plain = randomize_batchnorm(module_from_graph(graph, seed=0).eval(), seed=1)
    start = time.perf_counter()
    frozen = freeze(plain)
    freeze_s = time.perf_counter() - start
    contenders = {"plain": plain, "frozen": frozen}
    if args.ablate:
        for rewrite in REWRITES:
            contenders[f"-{rewrite}"] = freeze(plain, rewrites=[r for r in REWRITES if r != rewrite])

    c, h, w = graph.graph["input_shape"]
    result: dict[str, object] = {
        "spec": args.spec,
        "input": [c, h, w],
        "threads": args.threads,
        "malloc_tuned": malloc_tuned,
        "freeze_s": round(freeze_s, 2),
        "batches": {},
    }
    print(
        f"{graph.graph['name']} {c}x{h}x{w}, {args.threads} threads, freeze took {freeze_s:.2f} s"
        + (", malloc tuned" if malloc_tuned else "")
    )
    print(f"{'batch':>5}  {'contender':<22} {'ms':>9} {'speedup':>8} {'max |diff|':>11}")
    for batch in args.batch:
        x = torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(batch))
        with torch.inference_mode():
            reference = plain(x)
            errors = {name: float((m(x) - reference).abs().max()) for name, m in contenders.items()}
        ms = _time(
            {name: (lambda m=m, x=x: m(x)) for name, m in contenders.items()}, args.iters, max(2, args.repeat)
        )
        for name in contenders:
            speedup = ms["plain"] / ms[name]
            print(f"{batch:>5}  {name:<22} {ms[name]:>9.1f} {speedup:>7.2f}x {errors[name]:>11.2e}")
        result["batches"][str(batch)] = {  # type: ignore[index]
            "ms": {name: round(v, 2) for name, v in ms.items()},
            "speedup": round(ms["plain"] / ms["frozen"], 3),
            "max_abs_error": errors["frozen"],
        }
    if args.profile:  # at the last batch size, whose times `ms` holds
        floor = _profile(frozen, torch.randn(args.batch[-1], c, h, w), args)
        floor["budget_ms"] = round(ms["plain"] / args.target, 2)
        result["profile"] = floor
        print(
            f"batch {args.batch[-1]}: convolutions alone {floor['conv_ms']:.1f} ms of {floor['op_ms']:.1f} ms "
            f"op time (median of {args.profile_calls} profiled calls); {args.target}x over plain needs "
            f"<= {floor['budget_ms']:.1f} ms in all"
            + (": the convolutions alone exceed it" if floor["conv_ms"] > floor["budget_ms"] else "")
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
