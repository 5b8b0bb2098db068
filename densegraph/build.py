"""``densegraph build``: a spec (and weights) to a verified ONNX model, optionally a TensorRT engine.

Stages: graph (spec -> connection graph), lower (PyTorch module, weights or seeded init), export (ONNX),
check (shapes, ONNX checker), verify (onnxruntime against the PyTorch eval module), fp16 or quantize, tile
(only with ``--batch-tile``: the final model in a scan over batch tiles,
:func:`densegraph.export.passes.tile_batch`, checked against the untiled one and, for ``auto``, kept only if
faster on this machine), picture, and for ``--target tensorrt`` the engine. Everything is written to a staging
folder beside the output folder and moved into place at the end: a failed build leaves nothing behind, a good
build already in the folder survives a failed rebuild, and a folder holding anything densegraph did not write
is never replaced (:class:`densegraph._output.BuildOutput`).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._output import BuildOutput
from .cost import batch_tile, totals
from .data import load_data
from .errors import BuildError
from .export.onnx import (
    check_onnx,
    check_opset,
    fp16_from_onnx,
    io_signature,
    onnx_from_module,
    op_counts,
    ort_session,
    parity_inputs,
    run_onnx,
    save_onnx,
    stamp,
    verify_int8,
    verify_outputs,
)
from .graph import build_graph
from .manifest import (
    MANIFEST_FORMAT,
    file_sha256,
    tool_versions,
)
from .spec import load_spec

if TYPE_CHECKING:
    import networkx as nx
    from torch import nn

__all__ = ["run_build", "choose_batch_tile", "BuildOutput", "PARITY_BATCHES", "INT8_EVAL_SAMPLES"]

MODEL_NAME = "model.onnx"
GRAPH_NAME = "graph.svg"
PARITY_BATCHES = (1, 3)  # batch 1 and a batch > 1 that is no power of two
INT8_EVAL_SAMPLES = 1000  # labelled validation images scored for the int8 report (at most)


def run_build(args: argparse.Namespace) -> int:
    """``densegraph build SPEC ...`` (see the module docstring); a user error raises DensegraphError."""
    spec = load_spec(args.spec)
    _check_arguments(args)
    engine_options = _engine_options(args) if args.target == "tensorrt" else None
    out = Path(args.output) if args.output else Path("build") / spec.name
    stages = _Stages()
    with BuildOutput(out) as output:
        stage = output.path
        with stages.stage("graph", spec.name):
            graph = build_graph(spec)
        if args.precision == "int8":
            with stages.stage("calib", f"{args.calib}, up to {args.calib_samples} samples"):
                calib = _calibration_data(args, graph)
        with stages.stage(
            "lower", "weights " + args.weights if args.weights else f"seeded init ({args.seed})"
        ):
            module = _lower(graph, args)
            export_module, rewrites = _for_export(module, plain=args.plain)
        manifest = _manifest_head(args, graph, rewrites)
        fp32_path = stage / (MODEL_NAME if args.precision == "fp32" else "model.fp32.onnx")
        model = _export(export_module, graph, args, fp32_path, stages)
        with stages.stage("verify", f"onnxruntime vs PyTorch at batch {', '.join(map(str, PARITY_BATCHES))}"):
            inputs, references = _references(module, graph, args)
            manifest["parity"] = {"fp32": verify_outputs(fp32_path, inputs, references, "fp32")}
        if args.precision == "fp16":
            with stages.stage("fp16", "float16 weights and compute, float32 input and output"):
                model, manifest["fp16"], manifest["parity"]["fp16"] = _fp16(
                    model, inputs, references, stage / MODEL_NAME
                )
        elif args.precision == "int8":
            with stages.stage("quantize", f"int8 Q/DQ, calibration {args.calib}"):
                model, manifest["calibration"], manifest["parity"]["int8"] = _int8(
                    model, fp32_path, stage / MODEL_NAME, calib, args
                )
        tile = _batch_tile(args, graph)
        if tile is not None:
            model, tile, manifest["batch_tiling"] = _tile(model, tile, args, stage / MODEL_NAME, stages)
        manifest["batch_tile"] = tile
        if tile is not None:
            manifest["rewrites"].append("batch_tiling")
        if fp32_path.name != MODEL_NAME:
            fp32_path.unlink()
        with stages.stage("picture", GRAPH_NAME):
            from .viz import write_graph

            write_graph(graph, stage / GRAPH_NAME)
        manifest.update(_model_record(model, stage / MODEL_NAME))
        manifest["graph"] = {"file": GRAPH_NAME, "sha256": file_sha256(stage / GRAPH_NAME)}
        manifest["versions"] = tool_versions(*(("onnxconverter-common",) if args.precision == "fp16" else ()))
        if engine_options is None:
            output.write_manifest(manifest)
            output.commit()
        else:
            # The engine is built in the final folder, so its sidecar and build_engine.sh name real paths; a
            # failed engine build still restores the previous build (BuildOutput keeps it aside until then).
            output.swap()
            _engine(output, engine_options, manifest, stages)
    stages.done(out, manifest)
    return 0


# ---------------------------------------------------------------------------------------------------------
# arguments


def _check_arguments(args: argparse.Namespace) -> None:
    check_opset(args.opset)
    if args.precision == "int8" and not args.calib:
        raise BuildError(
            "int8 needs calibration data",
            hint="pass --calib digits, --calib DIR (an image folder) or --calib X.npy",
        )
    if args.calib and args.precision != "int8":
        raise BuildError("--calib is only used with --precision int8")
    if args.calib_samples <= 0:
        raise BuildError(f"--calib-samples must be positive, got {args.calib_samples}")
    trt_only = [
        flag
        for flag, value in (
            ("--workspace", args.workspace),
            ("--dla", args.dla),
            ("--timing-cache", args.timing_cache),
            ("--hardware-compat", args.hardware_compat or None),
            ("--version-compat", args.version_compat or None),
        )
        if value is not None
    ]
    if args.batch_tile not in ("auto", "off") and (args.target == "tensorrt" or args.plain):
        why = "--target tensorrt (TensorRT takes whole batches)" if args.target == "tensorrt" else "--plain"
        raise BuildError(
            f"--batch-tile {args.batch_tile} does not go with {why}", hint="leave --batch-tile out"
        )
    if trt_only and args.target != "tensorrt":
        verb = "applies" if len(trt_only) == 1 else "apply"
        raise BuildError(
            f"{', '.join(trt_only)} {verb} only to TensorRT engines", hint="add --target tensorrt"
        )


def _engine_options(args: argparse.Namespace) -> Any:
    from .export.tensorrt import EngineOptions

    return EngineOptions(
        precision=args.precision,
        batch=tuple(args.batch),
        workspace_gib=args.workspace,
        dla_core=args.dla,
        timing_cache=args.timing_cache,
        hardware_compat=bool(args.hardware_compat),
        version_compat=bool(args.version_compat),
    )


# ---------------------------------------------------------------------------------------------------------
# the stages


def _lower(graph: nx.DiGraph, args: argparse.Namespace) -> nn.Module:
    from .lower.torch import to_torch

    module = to_torch(graph, seed=args.seed)
    if args.weights:
        from .lower.weights import load_weights

        load_weights(module, args.weights, model_name=args.spec)
    return module.eval()


def _for_export(module: nn.Module, *, plain: bool) -> tuple[nn.Module, list[str]]:
    """The module to export and the rewrites applied to it (none with ``--plain``)."""
    if plain:
        return module, []
    from .lower.torch import freeze

    frozen = freeze(module, for_export=True)
    rewrites: tuple[str, ...] = frozen.rewrites  # type: ignore[assignment]  # FrozenGraphModule's record
    return frozen, list(rewrites)


def _export(
    export_module: nn.Module, graph: nx.DiGraph, args: argparse.Namespace, path: Path, stages: _Stages
) -> Any:
    """Export and check the fp32 model, written to ``path``; returns it."""
    with stages.stage("export", f"ONNX opset {args.opset}, dynamic batch"):
        model = onnx_from_module(
            export_module,
            tuple(graph.graph["input_shape"]),
            path,
            opset=args.opset,
            name=graph.graph["name"],
            doc=_doc(graph),
            check=False,
        )
    with stages.stage("check", "shape inference, onnx.checker full check"):
        model = check_onnx(model)
        save_onnx(model, path)
    return model


def _batch_tile(args: argparse.Namespace, graph: nx.DiGraph) -> int | None:
    return choose_batch_tile(
        graph,
        args.batch_tile,
        precision=args.precision,
        target=args.target,
        plain=args.plain,
        max_batch=args.batch[2],
    )


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

    ``off`` (the default): none; the model runs the whole batch in one graph. ``N``: tiles of N samples.
    ``auto``: a candidate for what onnxruntime runs on the CPU (fp32 and int8 for ``--target onnx``), the most
    samples whose largest concatenation group fits :data:`densegraph.cost.TILE_BYTES`, unless a tile would
    hold ``max_batch`` (``--batch``'s MAX) anyway; the build then keeps the tiled model only if it runs
    faster than the untiled one on the build machine (:func:`time_batch_tiling`). fp16 is a GPU precision and
    TensorRT takes whole batches, so neither is tiled by ``auto``; ``plain`` (``--plain``) applies no rewrite.
    """
    if setting == "off":
        return None
    if setting != "auto":
        return int(setting)
    if plain or target == "tensorrt" or precision == "fp16":
        return None
    tile = batch_tile(graph, element_bytes=1 if precision == "int8" else 4)
    return tile if tile < max_batch else None


# The tiled model must beat the untiled one by this much (median of paired rounds) for `auto` to keep it: a
# measurement on a busy machine must not turn a tie into a slower default.
TILING_MARGIN = 1.03


def time_batch_tiling(
    untiled: bytes, tiled: bytes, x: np.ndarray, *, rounds: int = 7, threads: int = 0
) -> dict[str, Any]:
    """Time two serialized models side by side in onnxruntime (CPU, ``threads`` intra-op threads, 0: its
    default) on ``x``; returns median wall ms of each and the median over rounds of untiled/tiled time.

    Each round runs both back to back, in alternating order, after one warm-up call each: load from other
    processes hits both alike.
    """
    import onnxruntime as ort

    def session(data: bytes) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    runs = {"untiled": session(untiled), "tiled": session(tiled)}
    name = runs["untiled"].get_inputs()[0].name
    for run in runs.values():
        run.run(None, {name: x})
    times: dict[str, list[float]] = {"untiled": [], "tiled": []}
    for r in range(rounds):
        for form in ("untiled", "tiled") if r % 2 == 0 else ("tiled", "untiled"):
            start = time.perf_counter()
            runs[form].run(None, {name: x})
            times[form].append(time.perf_counter() - start)
    speedup = statistics.median(u / t for u, t in zip(times["untiled"], times["tiled"], strict=True))
    return {
        "untiled_ms": round(1e3 * statistics.median(times["untiled"]), 2),
        "tiled_ms": round(1e3 * statistics.median(times["tiled"]), 2),
        "speedup": round(speedup, 3),
        "rounds": rounds,
    }


def _tile(
    model: Any, tile: int, args: argparse.Namespace, path: Path, stages: _Stages
) -> tuple[Any, int | None, dict[str, Any]]:
    """The final model in a scan over batch tiles of ``tile`` samples, checked to compute what the untiled one
    does; with ``--batch-tile auto`` kept only if it is faster here. Writes the model kept to ``path``;
    returns it, its tile (``None``: untiled) and the manifest's record."""
    from .export.passes import tile_batch

    record: dict[str, Any] = {"setting": args.batch_tile, "tile": tile}
    with stages.stage("tile", f"a scan over batch tiles of {tile} sample(s)"):
        tiled = check_onnx(tile_batch(model, tile).model)
        plain_bytes = model.SerializeToString(deterministic=True)
        tiled_bytes = tiled.SerializeToString(deterministic=True)
        shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
        inputs = parity_inputs(shape, (1, tile, 2 * tile + 1), seed=1)  # padded, whole, whole and padded
        untiled_run, tiled_run = ort_session(plain_bytes), ort_session(tiled_bytes)
        want = [run_onnx(untiled_run, x) for x in inputs]
        got = [run_onnx(tiled_run, x) for x in inputs]
        err = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want, strict=True))
        scale = max(float(np.max(np.abs(w))) for w in want)
        if not all(g.shape == w.shape for g, w in zip(got, want, strict=True)) or err > 1e-5 * max(scale, 1):
            # the same kernels on the same samples: a difference is densegraph's bug, not the user's input
            raise RuntimeError(f"the batch-tiled model differs from the untiled one by {err:.3g}")
        record["max_abs_err"] = float(f"{err:.3g}")
        if args.batch_tile == "auto":
            batch = args.batch[1]
            x = parity_inputs(shape, (batch,), seed=2)[0]
            timing = time_batch_tiling(plain_bytes, tiled_bytes, x)
            record.update(batch=batch, **timing, margin=TILING_MARGIN)
            if timing["speedup"] < TILING_MARGIN:
                record["kept"] = False
                return model, None, record
        record["kept"] = True
        save_onnx(tiled, path)
    return tiled, tile, record


def _references(module: nn.Module, graph: nx.DiGraph, args: argparse.Namespace) -> tuple[list, list]:
    """The parity inputs and the unrewritten eval module's logits on them."""
    import torch

    inputs = parity_inputs(tuple(graph.graph["input_shape"]), PARITY_BATCHES)
    with torch.inference_mode():
        references = [module(torch.from_numpy(x)).numpy() for x in inputs]
    if not all(np.all(np.isfinite(r)) for r in references):
        raise BuildError(
            "the PyTorch model's outputs are not finite (NaN or inf) on random inputs",
            hint="check the weights" if args.weights else None,
        )
    return inputs, references


def _doc(graph: nx.DiGraph) -> str:
    c, h, w = graph.graph["input_shape"]
    classes = graph.graph["output_shape"][0]
    return f"{graph.graph['name']}: images [batch, {c}, {h}, {w}] float32 -> logits [batch, {classes}]"


def _fp16(model: Any, inputs: list, references: list, path: Path) -> tuple[Any, dict, dict | str]:
    """Convert to fp16 and verify it where onnxruntime's CPU kernels run it; returns model, record, parity."""
    model16, notes = fp16_from_onnx(model)
    data = save_onnx(model16, path)
    record: dict[str, Any] = {
        "converter": "onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True)",
        "batchnorm": "BatchNormalization no conv absorbed -> depthwise 1x1 Conv computed in fp32, then cast",
        "warnings": notes,
    }
    try:
        session = ort_session(data)
    except Exception as exc:  # onnxruntime's CPU kernels do not cover every fp16 op on every build
        return model16, record, f"not verified: onnxruntime cannot run it here ({str(exc).splitlines()[0]})"
    return model16, record, verify_outputs(session, inputs, references, "fp16")


def _calibration_data(args: argparse.Namespace, graph: nx.DiGraph) -> Any:
    """The int8 calibration set (the train split), loaded before any export so that bad data fails fast."""
    shape = tuple(graph.graph["input_shape"])
    return load_data(args.calib, shape, split="train", max_samples=args.calib_samples)


def _int8(
    fp32: Any, fp32_path: Path, path: Path, calib: Any, args: argparse.Namespace
) -> tuple[Any, dict, dict]:
    """Quantize with the calibration data; score int8 against fp32 (and the labels, when there are some)."""
    import onnx

    from .export.quantize import quantize_onnx

    # TensorRT builds int8 only from symmetric Q/DQ around its convs; onnxruntime's CPU is fastest on the
    # "cpu" form (uint8 activations, int8 end to end). Both stay available through quantize_onnx.
    form = "qdq" if args.target == "tensorrt" else "cpu"
    with _root_logger_silenced():
        done = quantize_onnx(fp32_path, path, calib.x, form=form)
    model = onnx.load(os.fspath(path))
    stamp(model, fp32.graph.name, fp32.doc_string)  # the quantizer names itself the producer
    model = check_onnx(model)
    save_onnx(model, path)
    labelled = calib.y.size > 0
    shape = tuple(calib.x.shape[1:])
    scored = load_data(args.calib, shape, split="val", max_samples=INT8_EVAL_SAMPLES) if labelled else calib
    fp32_logits = run_onnx(ort_session(fp32_path), scored.x)
    int8_logits = run_onnx(ort_session(path), scored.x)
    parity = verify_int8(fp32_logits, int8_logits, scored.y if labelled else None)
    parity["data"] = f"{args.calib} {'val split' if labelled else '(the calibration samples)'}"
    calibration: dict[str, Any] = {
        "source": str(args.calib),
        "split": "train" if labelled else None,
        **{key: value for key, value in done.items() if key != "seconds"},  # the rest is deterministic
    }
    return model, calibration, parity


@contextmanager
def _root_logger_silenced() -> Iterator[None]:
    """onnxruntime.quantization warns on the root logger ("consider pre-processing"); keep stderr to one line.

    A handler on the root logger stops ``logging.warning`` from installing its stderr default; the level drops
    the records.
    """
    root = logging.getLogger()
    handler, level = logging.NullHandler(), root.level
    root.addHandler(handler)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
        root.removeHandler(handler)


def _engine(output: BuildOutput, options: Any, manifest: dict[str, Any], stages: _Stages) -> None:
    from .export.tensorrt import TensorRTUnavailable, build_engine

    folder = output.path
    with stages.stage("engine", f"TensorRT {options.precision}, batch {':'.join(map(str, options.batch))}"):
        try:
            result = build_engine(folder / MODEL_NAME, folder, options, progress=stages.note)
        except TensorRTUnavailable as exc:
            # The ONNX and build_engine.sh are the deliverable for the device: keep them, then report.
            manifest["engine"] = {"built": False, "script": "build_engine.sh", "reason": exc.message}
            output.write_manifest(manifest, later=_written_by_script(options))
            output.commit()
            raise
    manifest["engine"] = {
        "built": True,
        "file": Path(result["engine_path"]).name,
        "sha256": result["engine_sha256"],
        "script": "build_engine.sh",
        "tensorrt_version": result["tensorrt_version"],
        "gpu": result["gpu"],
        "verification": result.get("verification", {}).get("summary"),
    }
    output.write_manifest(manifest)
    output.commit()


def _written_by_script(options: Any) -> list[str]:
    """The files ``build_engine.sh`` writes into the build folder on the device (the manifest claims them)."""
    from .export.tensorrt import sidecar_path

    engine = Path(MODEL_NAME).with_suffix(".engine").name
    names = [engine, sidecar_path(engine).name]
    if options.timing_cache is not None:
        names.append(Path(options.timing_cache).name)
    return names


# ---------------------------------------------------------------------------------------------------------
# the manifest


def _manifest_head(args: argparse.Namespace, graph: nx.DiGraph, rewrites: list[str]) -> dict[str, Any]:
    from .train import graph_sha256

    cost = totals(graph)
    head: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "name": graph.graph["name"],
        # the file's bytes, and the network it describes (`extends` bases included; comments do not count)
        "spec": {
            "path": str(args.spec),
            "sha256": file_sha256(args.spec),
            "graph_sha256": graph_sha256(graph),
        },
        "weights": {"path": str(args.weights), "sha256": file_sha256(args.weights)} if args.weights else None,
    }
    if not args.weights:
        head["seed"] = args.seed
    head.update(
        {
            "precision": args.precision,
            "target": args.target,
            "opset": args.opset,
            "batch": {"min": args.batch[0], "opt": args.batch[1], "max": args.batch[2]},
            "params": cost["params"],
            "macs": cost["macs"],
            "rewrites": rewrites,
        }
    )
    return head


def _model_record(model: Any, path: Path) -> dict[str, Any]:
    return {
        "model": {
            "file": path.name,
            "sha256": file_sha256(path),
            "bytes": path.stat().st_size,
            "ops": op_counts(model),
        },
        **io_signature(model),
    }


# ---------------------------------------------------------------------------------------------------------
# progress


class _Stages:
    """The stages on stderr as they run (a terminal only); on a pipe or a file only the final lines show."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.live = self.console.is_terminal
        self._status: Any = None

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        start = time.perf_counter()
        if not self.live:
            yield
            return
        with self.console.status(f"[bold]{name}[/] {what}", spinner="dots") as status:
            self._status = status
            try:
                yield
            except BaseException:
                self.console.print(f"[red]✗[/] [bold]{name:<8}[/] {what}")
                raise
            finally:
                self._status = None
        self.console.print(
            f"[green]✓[/] [bold]{name:<8}[/] {what} [dim]({time.perf_counter() - start:.1f} s)[/]"
        )

    def note(self, message: str) -> None:
        """A message from inside a stage (the engine build's progress)."""
        if self._status is not None:
            self._status.update(f"[bold]engine[/] {message}")

    def done(self, out: Path, manifest: dict[str, Any]) -> None:
        parity = manifest["parity"]
        check = _parity_line(manifest["precision"], parity)
        size = manifest["model"]["bytes"] / 2**20
        what = f"{manifest['precision']}, opset {manifest['opset']}, {size:.1f} MiB"
        print(f"built {out}/: {MODEL_NAME} ({what}), {check}")


def _parity_line(precision: str, parity: dict[str, Any]) -> str:
    fp32 = parity["fp32"]
    line = f"parity max abs err {fp32['max_abs_err']:.2g} at batch {', '.join(map(str, fp32['batches']))}"
    if precision == "fp16":
        fp16 = parity["fp16"]
        line += (
            f"; fp16 max rel err {fp16['max_rel_err']:.2g}" if isinstance(fp16, dict) else f"; fp16 {fp16}"
        )
    if precision == "int8":
        int8 = parity["int8"]
        line += f"; int8 logits SQNR {int8['sqnr_db']:.1f} dB, top-1 agreement {int8['top1_agreement']:.1%}"
        if "top1_int8" in int8:
            line += f" (top-1 fp32 {int8['top1_fp32']:.1%}, int8 {int8['top1_int8']:.1%})"
    return line
