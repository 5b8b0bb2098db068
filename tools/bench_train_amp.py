"""Training step time and peak memory of densenet121 (batch 16) under fp32, bf16/fp16 autocast and channels_last.

Each mode runs in its own process (so that its peak memory is its own): ``--warmup`` steps, then ``--iters``
timed SGD steps of the training loop `densegraph train` runs (``densegraph.training.loop.train_epoch`` on random
224x224 images). Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA and the process's peak RSS on CPU.
Prints each mode's median step time and peak memory and their ratios against fp32 measured in the same run.

    python tools/bench_train_amp.py [--device cpu|cuda] [--iters 3] [--warmup 1] [--batch-size 16] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, statistics, sys, time
import torch
spec, device, batch, iters, warmup, threads, amp, channels_last, mem_eff = sys.argv[1:10]
if int(threads):
    torch.set_num_threads(int(threads))
from densegraph.lower.torch import to_torch
from densegraph.training.loop import check_precision, train_epoch
dev = torch.device(device)
torch.manual_seed(0)
model = to_torch(spec, seed=0, memory_efficient=mem_eff == "1").to(dev)
if channels_last == "1":
    model = model.to(memory_format=torch.channels_last)
precision = check_precision(None if amp == "fp32" else amp, channels_last == "1", dev)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(int(batch), 3, 224, 224)
y = torch.randint(0, 1000, (int(batch),))
times = []
for step in range(int(warmup) + int(iters)):
    if dev.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    train_epoch(model, [(x, y)], optimizer, dev, 0, torch.Generator(), lambda loss: None, precision)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    if step >= int(warmup):
        times.append(time.perf_counter() - tic)
if dev.type == "cuda":
    peak = torch.cuda.max_memory_allocated() / 2**20
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"step_s": statistics.median(times), "peak_mib": peak}))
"""

MODES = [
    ("fp32", "fp32", False, False),
    ("bf16", "bf16", False, False),
    ("channels_last", "fp32", True, False),
    ("bf16+channels_last", "bf16", True, False),
    ("fp32 memory-efficient", "fp32", False, True),
]
CUDA_MODES = [("fp16", "fp16", False, False), ("fp16+channels_last", "fp16", True, False)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", dest="batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--spec", default=str(ROOT / "specs" / "densenet121.yaml"))
    args = parser.parse_args()
    modes = MODES + (CUDA_MODES if args.device == "cuda" else [])
    results = {}
    for name, amp, channels_last, mem_eff in modes:
        argv = [args.spec, args.device, args.batch, args.iters, args.warmup, args.threads, amp]
        argv += ["1" if channels_last else "0", "1" if mem_eff else "0"]
        done = subprocess.run(
            [sys.executable, "-c", CHILD, *map(str, argv)], capture_output=True, text=True, check=False
        )
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{name}: failed: {last}")
            continue
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    base = results.get("fp32")
    memory = "peak CUDA MiB" if args.device == "cuda" else "peak RSS MiB"
    print(f"densenet121 training step, batch {args.batch}, {args.device}, median of {args.iters}")
    print(f"{'mode':<24} {'step s':>8} {'vs fp32':>8} {memory:>14} {'vs fp32':>8}")
    for name, r in results.items():
        speed = f"{base['step_s'] / r['step_s']:.2f}x" if base else "-"
        mem = f"{r['peak_mib'] / base['peak_mib']:.2f}x" if base else "-"
        print(f"{name:<24} {r['step_s']:>8.3f} {speed:>8} {r['peak_mib']:>14.0f} {mem:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
