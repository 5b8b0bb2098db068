"""Peak memory and images/s of `densegraph eval` on an image folder: streamed (DataLoader workers) vs in memory.

Generates a folder of N JPEG images (default 6,000, 320x240, 10 classes; kept with --keep), a small ImageNet-style
spec (224x224 input, resize 256 + center crop: the torchvision transform) and its random weights, then times, each
in a fresh process so that its peak RSS is its own:

- ``memory``: the loader `eval` had before streaming — decode the whole split into one float32 array
  (``densegraph.data.load_data``), then score it in batches;
- ``stream``: ``densegraph.evaluation.evaluate`` — the same decoding and transform per image in DataLoader
  workers, memory bounded by batch x workers.

Both score every image (``--split all``) with the same model; the top-1 of the two must agree. Prints peak RSS
(MiB) and images/s of each and the ratios stream/memory (targets: RSS <= 0.2x, throughput >= 1x).

    python tools/bench_data.py [--images 6000] [--workers N] [--batch-size 64] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """name: bench-data
input: {channels: 3, size: 224}
growth_rate: 4
bottleneck: 2
stem: {kind: imagenet, channels: 8}
blocks: [2, 2]
head: {classes: 10}
"""

CHILD = r"""
import json, os, resource, sys, time
import numpy as np
mode, spec, weights, folder, batch, workers = sys.argv[1:7]
from densegraph.evaluation import evaluate, load_model, score
from densegraph.data import load_data
tic = time.perf_counter()
if mode == "memory":
    model = load_model(spec, weights=weights)
    data = load_data(folder, model.input_shape, split="all", preprocess=model.preprocess)
    correct, _, samples = score(model.predict, data, batch_size=int(batch))
    top1 = 100.0 * correct / samples
else:
    result = evaluate(spec, data=folder, weights=weights, split="all", batch_size=int(batch), workers=int(workers))
    top1, samples = result.top1, result.samples
seconds = time.perf_counter() - tic
print(json.dumps({"samples": samples, "top1": round(top1, 4), "seconds": seconds}))
"""


def _make_folder(root: Path, count: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:320]
    for i in range(count):
        label = i % 10
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.stack(
            [(xx * (label + 1)) % 256, (yy * (label + 2)) % 256, ((xx + yy) * 3 + 25 * label) % 256], axis=-1
        )
        noise = rng.integers(0, 48, (240, 320, 3))
        Image.fromarray(((base + noise) % 256).astype(np.uint8), "RGB").save(
            folder / f"{i:05d}.jpg", quality=90
        )


def _run(mode: str, spec: Path, weights: Path, folder: Path, batch: int, workers: int) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(spec), str(weights), str(folder), str(batch), str(workers)],
        check=True,
        capture_output=True,
        text=True,
    )
    # ru_maxrss of RUSAGE_CHILDREN is the peak RSS of the largest waited-for descendant (the eval process or
    # one of its DataLoader workers), in KiB on Linux
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["peak_rss_mib"] = peak / 1024 if peak > before else float("nan")
    result["images_per_s"] = result["samples"] / result["seconds"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 1) - 1)))
    parser.add_argument("--batch-size", dest="batch", type=int, default=64)
    parser.add_argument("--keep", type=Path, help="generate (or reuse) the folder here and keep it")
    args = parser.parse_args()

    import torch

    from densegraph.lower.torch import to_torch
    from densegraph.spec import spec_from_string

    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        folder = args.keep or work / "images"
        if not folder.is_dir() or sum(1 for _ in folder.rglob("*.jpg")) != args.images:
            tic = time.perf_counter()
            _make_folder(folder, args.images)
            print(
                f"generated {args.images} JPEG images (320x240) in {time.perf_counter() - tic:.1f}s: {folder}"
            )
        spec = work / "bench-data.yaml"
        spec.write_text(SPEC)
        weights = work / "weights.pt"
        torch.save(to_torch(spec_from_string(SPEC), seed=0).state_dict(), weights)
        # the streamed run first: RUSAGE_CHILDREN keeps the maximum over children, so the smaller peak is
        # only readable before the larger one
        stream = _run("stream", spec, weights, folder, args.batch, args.workers)
        memory = _run("memory", spec, weights, folder, args.batch, args.workers)
        if abs(stream["top1"] - memory["top1"]) > 1e-6:
            print(f"top-1 differs: stream {stream['top1']} vs memory {memory['top1']}", file=sys.stderr)
            return 1
        print(f"{'loader':<8} {'images':>7} {'seconds':>8} {'images/s':>9} {'peak RSS MiB':>13}")
        for name, r in (("memory", memory), ("stream", stream)):
            print(
                f"{name:<8} {r['samples']:>7} {r['seconds']:>8.1f} {r['images_per_s']:>9.1f} "
                f"{r['peak_rss_mib']:>13.0f}"
            )
        print(
            f"stream/memory: peak RSS {stream['peak_rss_mib'] / memory['peak_rss_mib']:.3f}x (target <= 0.2x), "
            f"throughput {stream['images_per_s'] / memory['images_per_s']:.2f}x (target >= 1x); "
            f"{args.workers} workers, batch {args.batch}, top-1 {stream['top1']:.2f}% both"
        )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
