"""Batch tiling, opt-in: the final model in a scan over batch tiles, kept only where it is exact and faster.

:func:`choose_batch_tile` says which tile a build tries (``--batch-tile``): ``off`` (the default) none, ``N``
tiles of N samples, ``auto`` the most samples whose largest concatenation group fits the cache budget
(:data:`densegraph.cost.TILE_BYTES`). :func:`tile_model` wraps the model with
:func:`densegraph.export.passes.tile_batch`, checks that it computes what the untiled model does at a padded, a
whole and a whole-and-padded batch, and for ``auto`` times both side by side on the build machine
(:func:`time_batch_tiling`), keeping the tiles only if they win by :data:`TILING_MARGIN`: a speed policy is
measured where it runs, never carried over from another machine.
"""

from __future__ import annotations

import statistics
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from ..cost import batch_tile
from ..parity import parity_inputs
from .onnx import check_onnx

if TYPE_CHECKING:
    import networkx as nx
    import onnx

__all__ = ["TILING_MARGIN", "choose_batch_tile", "tile_model", "time_batch_tiling"]

# The tiled model must beat the untiled one by this much (median of paired rounds) for `auto` to keep it: a
# measurement on a busy machine must not turn a tie into a slower default.
TILING_MARGIN = 1.03


def choose_batch_tile(
    graph: nx.DiGraph,
    setting: str = "off",
    *,
    precision: str = "fp32",
    target: str = "onnx",
    plain: bool = False,
    max_batch: int = 32,
) -> int | None:
    """The batch tile a build tries (``--batch-tile`` is ``setting``), or ``None`` for none.

    ``auto`` proposes a tile only for what onnxruntime runs on the CPU (fp32 and int8, ``--target onnx``) and
    only when a tile would be smaller than ``max_batch`` (``--batch-range``'s MAX); fp16 is a GPU precision and
    TensorRT takes whole batches; ``plain`` applies no rewrite at all.
    """
    if setting == "off":
        return None
    if setting != "auto":
        return int(setting)
    if plain or target == "tensorrt" or precision == "fp16":
        return None
    tile = batch_tile(graph, element_bytes=1 if precision == "int8" else 4)
    return tile if tile < max_batch else None


def time_batch_tiling(
    untiled: bytes, tiled: bytes, x: np.ndarray, *, rounds: int = 7, threads: int = 0
) -> dict[str, Any]:
    """Time two serialized models side by side in onnxruntime (CPU, ``threads`` intra-op threads, 0: its
    default) on ``x``; returns the median wall ms of each and the median over rounds of untiled/tiled time.

    Each round runs both back to back, in alternating order, after one warm-up call each: load from other
    processes hits both alike.
    """
    from ..runners.onnxruntime import OnnxRuntimeRunner

    runners = {
        "untiled": OnnxRuntimeRunner(untiled, threads=threads, description="the untiled model"),
        "tiled": OnnxRuntimeRunner(tiled, threads=threads, description="the batch-tiled model"),
    }
    with runners["untiled"], runners["tiled"]:
        runs = {form: partial(runner.infer, {runner.input_name: x}) for form, runner in runners.items()}
        for run in runs.values():
            run()
        times: dict[str, list[float]] = {"untiled": [], "tiled": []}
        for r in range(rounds):
            for form in ("untiled", "tiled") if r % 2 == 0 else ("tiled", "untiled"):
                start = time.perf_counter()
                runs[form]()
                times[form].append(time.perf_counter() - start)
    speedup = statistics.median(u / t for u, t in zip(times["untiled"], times["tiled"], strict=True))
    return {
        "untiled_ms": round(1e3 * statistics.median(times["untiled"]), 2),
        "tiled_ms": round(1e3 * statistics.median(times["tiled"]), 2),
        "speedup": round(speedup, 3),
        "rounds": rounds,
    }


def tile_model(
    model: onnx.ModelProto, tile: int, *, setting: str, timing_batch: int
) -> tuple[onnx.ModelProto, int | None, dict[str, Any]]:
    """``model`` in a scan over batch tiles of ``tile`` samples, checked to compute what the untiled one does;
    with ``setting == "auto"`` kept only if it runs faster here at ``timing_batch``.

    Returns the model kept, its tile (``None``: untiled) and the manifest's record.
    """
    from ..runners.onnxruntime import OnnxRuntimeRunner
    from .passes import tile_batch

    record: dict[str, Any] = {"setting": setting, "tile": tile}
    tiled = check_onnx(tile_batch(model, tile).model)
    plain_bytes = model.SerializeToString(deterministic=True)
    tiled_bytes = tiled.SerializeToString(deterministic=True)
    with OnnxRuntimeRunner(plain_bytes) as untiled_run, OnnxRuntimeRunner(tiled_bytes) as tiled_run:
        shape = untiled_run.input_chw  # a dynamic input: its opt size
        inputs = parity_inputs(shape, (1, tile, 2 * tile + 1), seed=1)  # padded, whole, whole and padded
        want = [untiled_run(x) for x in inputs]
        got = [tiled_run(x) for x in inputs]
    same_shapes = all(g.shape == w.shape for g, w in zip(got, want, strict=True))
    err = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want, strict=True)) if same_shapes else np.inf
    scale = max(float(np.max(np.abs(w))) for w in want)
    if err > 1e-5 * max(scale, 1.0):
        # the same kernels on the same samples: a difference is densegraph's bug, not the user's input
        raise RuntimeError(f"the batch-tiled model differs from the untiled one by {err:.3g}")
    record["max_abs_err"] = float(f"{err:.3g}")
    if setting == "auto":
        x = parity_inputs(shape, (timing_batch,), seed=2)[0]
        timing = time_batch_tiling(plain_bytes, tiled_bytes, x)
        record.update(batch=timing_batch, **timing, margin=TILING_MARGIN)
        if timing["speedup"] < TILING_MARGIN:
            record["kept"] = False
            return model, None, record
    record["kept"] = True
    return tiled, tile, record
