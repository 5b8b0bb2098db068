"""How fast densegraph makes ONNX: emission from the graph against ``torch.onnx.export``, measured in one run.

    python tools/bench_emit.py                                  # densenet169, 3 alternating rounds
    python tools/bench_emit.py --build-against 7380e3e          # also `densegraph build` end to end vs a commit

Part 1 (targets: emission >= 5x faster): the frozen module of ``--spec`` (``freeze(m, for_export=True)``,
seeded init with non-trivial BatchNorm statistics) turned into serialized ONNX bytes two ways, alternating
rounds: ``emit`` is :func:`densegraph.export.onnx.onnx_from_module` (the op lists to ``onnx.helper`` nodes,
unchecked) then ``SerializeToString``; ``trace`` is ``torch.onnx.export(dynamo=False, opset 19)`` of the same
module into memory (the TorchScript exporter densegraph used before, constant folding on). Both models are run
by onnxruntime on one batch and compared with the module, and their operator counts are reported. The checker pass both need afterwards
(:func:`check_onnx`) is timed apart.

Part 2 (``--build-against REF``; target: <= 0.5x): ``densegraph build SPEC`` end to end, as a user runs it (a
fresh ``python -m densegraph`` process, default options), for this tree and for the commit ``REF`` of this
repository (``git archive`` into a temporary folder), alternating, ``--build-rounds`` each. Wall and CPU (the
child's user+system) times, medians; the ratio is this tree / REF.

The last line printed is JSON with every time and ratio.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _trace(module: Any, shape: tuple[int, ...]) -> bytes:
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                module,
                (torch.zeros(2, *shape),),
                buffer,
                dynamo=False,
                opset_version=19,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                do_constant_folding=True,
            )
    return buffer.getvalue()


def _emit(module: Any) -> bytes:
    from densegraph.export.onnx import onnx_from_module

    return onnx_from_module(module, check=False).SerializeToString()


def emission(spec: str, rounds: int, threads: int) -> dict[str, Any]:
    """Part 1: median seconds of emit and trace over alternating rounds, and both models' errors."""
    import numpy as np
    import onnx
    import torch

    from densegraph.export.onnx import check_onnx, op_counts, ort_session, run_onnx
    from densegraph.lower.torch import freeze, to_torch
    from densegraph.testing import randomize_batchnorm

    torch.set_num_threads(threads)
    module = randomize_batchnorm(to_torch(spec, seed=0).eval(), seed=1)
    frozen = freeze(module, for_export=True)
    shape = tuple(module.input_shape)
    times: dict[str, list[float]] = {"emit": [], "trace": []}
    data: dict[str, bytes] = {}
    for i in range(rounds):
        order = ("emit", "trace") if i % 2 == 0 else ("trace", "emit")
        for name in order:
            start = time.perf_counter()
            data[name] = _emit(frozen) if name == "emit" else _trace(frozen, shape)
            times[name].append(time.perf_counter() - start)
    start = time.perf_counter()
    checked = check_onnx(onnx.load_from_string(data["emit"]))
    check_seconds = time.perf_counter() - start
    x = np.random.default_rng(0).standard_normal((2, *shape), dtype=np.float32)
    with torch.inference_mode():
        reference = module(torch.from_numpy(x)).numpy()
    errors = {
        name: float(np.max(np.abs(run_onnx(ort_session(blob), x) - reference))) for name, blob in data.items()
    }
    emit, trace = statistics.median(times["emit"]), statistics.median(times["trace"])
    return {
        "spec": spec,
        "rounds": rounds,
        "threads": threads,
        "emit_s": round(emit, 3),
        "trace_s": round(trace, 3),
        "speedup": round(trace / emit, 1),
        "target": 5.0,
        "check_s": round(check_seconds, 3),
        "nodes": len(checked.graph.node),
        "max_abs_error": errors,
        # the same operators either way (the tracer adds Identity nodes over weights)
        "ops": {name: op_counts(onnx.load_from_string(blob)) for name, blob in data.items()},
        "all_s": {k: [round(v, 3) for v in vs] for k, vs in times.items()},
    }


def _checkout(ref: str, folder: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def _build_once(tree: Path, spec: str, out: Path) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "densegraph", "build", spec, "-o", str(out)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"build in {tree} failed:\n{result.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def end_to_end(spec: str, ref: str, rounds: int, ref_tree: Path | None = None) -> dict[str, Any]:
    """Part 2: ``densegraph build`` of this tree against the commit ``ref`` (or a source tree of it),
    alternating."""
    times: dict[str, dict[str, list[float]]] = {
        "this": {"wall": [], "cpu": []},
        "ref": {"wall": [], "cpu": []},
    }
    with tempfile.TemporaryDirectory(prefix="densegraph-bench-emit-") as tmp:
        trees = {"this": REPO, "ref": ref_tree.resolve() if ref_tree else _checkout(ref, Path(tmp) / "ref")}
        for i in range(rounds):
            for name in ("ref", "this") if i % 2 == 0 else ("this", "ref"):
                wall, cpu = _build_once(trees[name], spec, Path(tmp) / f"out-{name}")
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)
    med = {name: {k: statistics.median(v) for k, v in clocks.items()} for name, clocks in times.items()}
    return {
        "spec": spec,
        "ref": ref,
        "rounds": rounds,
        "this_wall_s": round(med["this"]["wall"], 1),
        "ref_wall_s": round(med["ref"]["wall"], 1),
        "this_cpu_s": round(med["this"]["cpu"], 1),
        "ref_cpu_s": round(med["ref"]["cpu"], 1),
        "ratio_wall": round(med["this"]["wall"] / med["ref"]["wall"], 2),
        "ratio_cpu": round(med["this"]["cpu"] / med["ref"]["cpu"], 2),
        "target": 0.5,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="specs/densenet169.yaml")
    parser.add_argument("--rounds", type=int, default=3, help="alternating emit/trace rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--build-against", metavar="REF", help="also time `densegraph build` against this commit"
    )
    parser.add_argument("--build-rounds", type=int, default=1)
    parser.add_argument(
        "--ref-tree", type=Path, help="a source tree of REF to use instead of `git archive REF` (no git here)"
    )
    args = parser.parse_args()
    record: dict[str, Any] = {"emission": emission(args.spec, args.rounds, args.threads)}
    e = record["emission"]
    print(
        f"{e['spec']}: emit {e['emit_s']:.2f} s, torch.onnx.export {e['trace_s']:.2f} s -> {e['speedup']:.1f}x "
        f"(target >= 5x: {'met' if e['speedup'] >= 5 else 'NOT met'}); check_onnx {e['check_s']:.2f} s; "
        f"max |err| emit {e['max_abs_error']['emit']:.1e}, trace {e['max_abs_error']['trace']:.1e}"
    )
    if args.build_against:
        b = record["build"] = end_to_end(args.spec, args.build_against, args.build_rounds, args.ref_tree)
        print(
            f"densegraph build {b['spec']}: this tree {b['this_wall_s']:.1f} s wall ({b['this_cpu_s']:.1f} s cpu), "
            f"{b['ref']} {b['ref_wall_s']:.1f} s ({b['ref_cpu_s']:.1f} s cpu) -> {b['ratio_wall']:.2f}x wall, "
            f"{b['ratio_cpu']:.2f}x cpu (target <= 0.5x: {'met' if b['ratio_wall'] <= 0.5 else 'NOT met'})"
        )
    print(json.dumps(record))


if __name__ == "__main__":
    main()
