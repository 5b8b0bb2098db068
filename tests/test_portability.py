"""The default ``model.onnx`` of every precision runs, unchanged, in every ONNX runtime a user may hand it to.

``densegraph build`` makes fp32, fp16 and int8 models of three specs (tests/data/tiny-digits.yaml,
tests/data/torchvision-tiny.yaml with torchvision's weights, specs/cifar/densenet-bc-l100-k12.yaml), plus the
opt-in batch-tiled form (``--batch-tile 2``, a padded ``Scan``) of the digits one, and of a dynamic-size spec
(tests/data/tiny-digits-dynamic.yaml: symbolic height and width), run at its min and max sizes, batches 1 and 2.
The others run at batches 1-9 in onnxruntime,
OpenVINO (CPU, ``INFERENCE_PRECISION_HINT=f32``), ``onnx.reference`` (the small models: it is pure numpy) and
``polygraphy run --onnxrt``, and is held to the PyTorch eval module (before any rewrite) on the same inputs
with the build's own gates (:mod:`densegraph.parity`): fp32 max abs error, fp16 relative error, int8 logits
SQNR.

Each runtime runs in a child process (tests/portability_runner.py), one batch at a time behind a progress
file: a runtime that crashes the process (OpenVINO's heap corruption on the old ``Loop`` tiling) fails the
model and batch it crashed on, and a new child carries on with the rest.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from densegraph.cli import main
from densegraph.errors import BuildError
from densegraph.lower.torch import to_torch
from densegraph.parity import check_int8, check_outputs
from densegraph.testing import randomize_batchnorm

REPO = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().parent / "portability_runner.py"
BATCHES = tuple(range(1, 10))
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Case:
    """A spec built one way; ``weights`` None: seeded init with randomized BatchNorm statistics."""

    name: str
    spec: str
    weights: str | None = None
    small: bool = False  # small enough for onnx.reference
    tile: str | None = None  # --batch-tile
    precisions: tuple[str, ...] = PRECISIONS
    sizes: tuple[tuple[int, int], ...] = ()  # a dynamic input: run at these (H, W), batches 1 and 2

    def keys(self) -> tuple[str, ...]:
        """The inputs' names: the batch (at the spec's size), or ``<batch>@<H>x<W>`` for a dynamic input."""
        if not self.sizes:
            return tuple(str(b) for b in BATCHES)
        return tuple(f"{b}@{h}x{w}" for h, w in self.sizes for b in (1, 2))


CASES = (
    Case("digits", "tests/data/tiny-digits.yaml", small=True),
    Case(
        "torchvision-tiny", "tests/data/torchvision-tiny.yaml", "tests/fixtures/torchvision-tiny-densenet.pth"
    ),
    Case("digits-tiled", "tests/data/tiny-digits.yaml", small=True, tile="2", precisions=("fp32", "int8")),
    Case("cifar-bc100", "specs/cifar/densenet-bc-l100-k12.yaml"),
    Case("digits-dynamic", "tests/data/tiny-digits-dynamic.yaml", small=True, sizes=((8, 8), (24, 20))),
)
MODELS = [(case, precision) for case in CASES for precision in case.precisions]
RUNTIMES = ("onnxruntime", "openvino", "reference", "polygraphy")


def _polygraphy_cli() -> str | None:
    """The ``polygraphy`` command: on PATH, or beside this Python (a virtual environment not activated)."""
    beside = Path(sys.executable).parent / "polygraphy"
    return shutil.which("polygraphy") or (str(beside) if beside.is_file() else None)


def _available(runtime: str) -> bool:
    module = {"reference": "onnx.reference", "polygraphy": "polygraphy"}.get(runtime, runtime)
    return importlib.util.find_spec(module) is not None and (
        runtime != "polygraphy" or bool(_polygraphy_cli())
    )


@dataclass
class Built:
    """A built model, its PyTorch reference logits per batch, and its inputs file."""

    case: Case
    precision: str
    model: Path
    inputs: Path
    references: dict[str, np.ndarray]


def _input_shape(key: str, chw: tuple[int, ...]) -> tuple[int, ...]:
    """``[N, C, H, W]`` of an input named as :meth:`Case.keys` names them."""
    if "@" not in key:
        return (int(key), *chw)
    batch, size = key.split("@")
    return (int(batch), chw[0], *(int(v) for v in size.split("x")))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    root = tmp_path_factory.mktemp("portability")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    models: dict[str, Built] = {}
    try:
        for case in CASES:
            spec = str(REPO / case.spec)
            module: Any = to_torch(spec, seed=0).eval()
            if case.weights:
                weights = REPO / case.weights
                from densegraph.lower.weights import load_weights

                load_weights(module, str(weights), model_name=spec)
            else:
                randomize_batchnorm(module, seed=1)
                weights = root / f"{case.name}.pt"
                torch.save(module.state_dict(), weights)
            shape = tuple(module.input_shape)
            rng = np.random.default_rng(7)
            inputs = {
                key: rng.standard_normal(_input_shape(key, shape), dtype=np.float32) for key in case.keys()
            }
            np.savez(root / f"{case.name}.inputs.npz", **inputs)
            with torch.inference_mode():
                references = {key: module(torch.from_numpy(x)).numpy() for key, x in inputs.items()}
            calib = root / f"{case.name}.calib.npy"
            np.save(calib, np.random.default_rng(3).standard_normal((16, *shape), dtype=np.float32))
            for precision in case.precisions:
                out = root / f"{case.name}-{precision}"
                argv = [spec, "--weights", str(weights), "--precision", precision, "-o", str(out)]
                if precision == "int8":
                    argv += ["--calib", str(calib), "--calib-samples", "16"]
                if case.tile:
                    argv += ["--batch-tile", case.tile]
                assert main(["build", *argv]) == 0, f"densegraph build {' '.join(argv)} failed"
                models[f"{case.name}-{precision}"] = Built(
                    case, precision, out / "model.onnx", root / f"{case.name}.inputs.npz", references
                )
    finally:
        torch.set_num_threads(threads)
    return models


@pytest.fixture(scope="module")
def outputs(built: dict[str, Built], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every runtime's logits (or error) for every model and batch: the children run side by side."""
    root = tmp_path_factory.mktemp("runs")
    children: dict[str, tuple[Path, list[dict[str, Any]]]] = {}
    for runtime in RUNTIMES[:3]:
        if not _available(runtime):
            continue
        jobs = [
            {
                "key": key,
                "model": str(model.model),
                "inputs": str(model.inputs),
                "batch": b,
                "output": str(root / f"{runtime}-{key}-{b}.npy"),
            }
            for key, model in built.items()
            if runtime != "reference" or model.case.small
            for b in model.case.keys()
        ]
        path = root / f"{runtime}.jobs.json"
        path.write_text(json.dumps(jobs))
        children[runtime] = (path, jobs)
    with ThreadPoolExecutor(len(children) + 1) as pool:
        running = {
            runtime: pool.submit(_run_children, path, jobs) for runtime, (path, jobs) in children.items()
        }
        if _available("polygraphy"):
            running["polygraphy"] = pool.submit(
                lambda: {key: _polygraphy(model, root) for key, model in built.items()}
            )
        return {runtime: future.result() for runtime, future in running.items()}


def _run_children(jobs_path: Path, jobs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run the jobs in a child, restarting it after a crash; (model key -> batch -> logits or error)."""
    progress = Path(str(jobs_path) + ".progress")
    crashes: dict[int, str] = {}
    runtime = jobs_path.name.split(".")[0]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(len(jobs) + 1):
        child = subprocess.run(
            [sys.executable, str(RUNNER), runtime, str(jobs_path)], capture_output=True, text=True, env=env
        )
        lines = progress.read_text().splitlines() if progress.exists() else []
        started = [int(line.split()[1]) for line in lines if line.startswith("start")]
        finished = {int(line.split()[1]) for line in lines if line.startswith(("done", "crash"))}
        open_jobs = [i for i in started if i not in finished]
        if child.returncode == 0 and not open_jobs:
            break
        if not open_jobs:  # died before its first job: the runtime itself does not load
            raise AssertionError(f"the {runtime} child failed ({child.returncode}): {child.stderr[-2000:]}")
        crashed = open_jobs[-1]
        crashes[crashed] = f"the process died (exit {child.returncode}): {child.stderr.strip()[-300:]}"
        with progress.open("a") as log:
            log.write(f"crash {crashed}\n")
    results: dict[str, dict[str, Any]] = {}
    for index, job in enumerate(jobs):
        out = Path(job["output"])
        if index in crashes:
            got: Any = crashes[index]
        elif out.exists():
            got = np.load(out)
        else:
            error = Path(str(out) + ".error")
            got = error.read_text().strip().splitlines()[-1] if error.exists() else "no output"
        results.setdefault(job["key"], {})[job["batch"]] = got
    return results


def _polygraphy(model: Built, root: Path) -> dict[str, Any]:
    """``polygraphy run --onnxrt`` on all batches at once (one iteration each); on failure, batch by batch."""
    from polygraphy.json import load_json, save_json

    data = np.load(model.inputs)

    def run(batches: tuple[str, ...], tag: str) -> list[np.ndarray] | str:
        feeds, results = root / f"poly-{tag}.in.json", root / f"poly-{tag}.out.json"
        save_json([{"images": data[b]} for b in batches], str(feeds))
        child = subprocess.run(
            [str(_polygraphy_cli()), "run", str(model.model), "--onnxrt", "--load-inputs", str(feeds)]
            + ["--save-outputs", str(results)],
            capture_output=True,
            text=True,
        )
        if child.returncode != 0:
            return f"polygraphy exit {child.returncode}: {child.stdout.strip()[-300:]}"
        (iterations,) = load_json(str(results)).values()
        return [np.asarray(it["logits"]) for it in iterations]

    tag = model.model.parent.name
    keys = model.case.keys()
    together = run(keys, tag)
    if not isinstance(together, str):
        return dict(zip(keys, together, strict=True))
    return {b: (got if isinstance(got := run((b,), f"{tag}-{b}"), str) else got[0]) for b in keys}


def _failure(got: Any, reference: np.ndarray, precision: str, runtime: str) -> str | None:
    """Why ``got`` misses the build's gate for ``precision`` against the PyTorch logits (None: it passes)."""
    if isinstance(got, str):
        return got
    got = np.asarray(got)
    if got.shape != reference.shape:
        return f"logits of shape {list(got.shape)}, PyTorch {list(reference.shape)}"
    try:
        if precision == "int8":
            check_int8(reference, got.astype(np.float32), runtime=runtime)
        else:
            check_outputs([got.astype(np.float32)], [reference], precision, runtime=runtime)
    except BuildError as exc:
        return exc.message
    return None


@pytest.mark.parametrize(
    ("key", "runtime"),
    [
        (f"{case.name}-{precision}", runtime)
        for case, precision in MODELS
        for runtime in RUNTIMES
        if runtime != "reference" or case.small  # onnx.reference is pure numpy: small models only
    ],
)
def test_model_runs_at_every_batch(
    built: dict[str, Built], outputs: dict[str, Any], key: str, runtime: str
) -> None:
    if not _available(runtime):
        pytest.skip(f"{runtime} is not installed (pip install 'densegraph[dev]')")
    model = built[key]
    got = outputs[runtime][key]
    failures = {
        b: why
        for b in model.case.keys()
        if (why := _failure(got[b], model.references[b], model.precision, runtime))
    }
    assert not failures, f"{key} in {runtime}: " + "; ".join(
        f"batch {b}: {why}" for b, why in failures.items()
    )


@pytest.mark.parametrize("key", [f"{case.name}-{precision}" for case, precision in MODELS if not case.tile])
def test_default_model_is_one_flat_graph(built: dict[str, Built], key: str) -> None:
    """Netron shows the network and TensorRT takes it as it is: every node at the top level, no subgraph,
    nothing tiled."""
    from densegraph.export.tensorrt import inspect_onnx

    model = onnx.load(built[key].model)
    assert not [
        n.op_type for n in model.graph.node if any(a.type == onnx.AttributeProto.GRAPH for a in n.attribute)
    ]
    assert sum(n.op_type == "Conv" or n.op_type == "QLinearConv" for n in model.graph.node) >= 5
    assert inspect_onnx(built[key].model).batch_tile is None
    manifest = json.loads((built[key].model.parent / "manifest.json").read_text())
    assert manifest["batch_tile"] is None and "batch_tiling" not in manifest["rewrites"]
