"""The build itself: :func:`build` and :func:`build_model` run the stages in order into a staging folder and move
it into place (see :mod:`densegraph.builder`)."""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from .._io import write_bytes_atomic
from .._output import BuildOutput
from ..describe import CARD_NAME, model_card, model_metadata, read_labels
from ..graph import build_graph
from ..manifest import MANIFEST_NAME, file_sha256, tool_versions
from ..spec import Spec, load_spec
from .engine_stage import build_engine_into, engine_options_from
from .int8_stage import calibration_data, int8_at_sizes, int8_model
from .onnx_stage import batch_tile_for, emit, lower, tile_final_model
from .options import BuildOptions, check_features, check_options, graph_passes
from .parity_stage import fp16_model, fp32_parity, parity_text
from .picture_stage import Picture
from .progress import Progress, Stages
from .record import manifest_head, model_record
from .result import GRAPH_NAME, MODEL_NAME, BuildResult

__all__ = ["build", "build_model"]


def build(
    spec: str | os.PathLike[str] | Spec,
    *,
    output: str | os.PathLike[str] | None = None,
    weights: str | None = None,
    precision: str = "fp32",
    target: str = "onnx",
    calib: str | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> BuildResult:
    """Build ``spec`` (a path or a loaded :class:`~densegraph.spec.Spec`) into a verified model folder.

    The keywords are :class:`BuildOptions`' fields; ``progress`` is called with each :class:`StageEvent`.
    A user mistake (bad spec, weights, data or option) raises :class:`~densegraph.errors.DensegraphError`
    and leaves the output folder as it was.
    """
    known = {f.name for f in fields(BuildOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"build() got unexpected options {unknown}; known: {', '.join(sorted(known))}")
    chosen = BuildOptions(
        output=output, weights=weights, precision=precision, target=target, calib=calib, **options
    )
    return build_model(spec, chosen, progress=progress)


def build_model(
    spec: str | os.PathLike[str] | Spec, options: BuildOptions, *, progress: Progress | None = None
) -> BuildResult:
    """:func:`build` with the options as one :class:`BuildOptions`."""
    spec_path = spec.path if isinstance(spec, Spec) else os.fspath(spec)
    loaded = spec if isinstance(spec, Spec) else load_spec(spec_path)
    check_options(options)
    if options.weights:
        from ..hub import fetch_weights, is_weights_name, published_weights

        if is_weights_name(options.weights):  # torchvision / timm[:variant]: the hash-checked published file
            path = fetch_weights(published_weights(options.weights, loaded.name))
            options = replace(options, weights=str(path))
    engine_options = engine_options_from(options) if options.target == "tensorrt" else None
    out = Path(options.output) if options.output else Path("build") / loaded.name
    stages = Stages(progress)
    with BuildOutput(out) as output, ExitStack() as drawing:
        stage = output.path
        with stages.stage("graph", loaded.name):
            graph = build_graph(loaded)
        check_features(graph, options)
        labels = read_labels(options.labels, int(graph.graph["output_shape"][0])) if options.labels else None
        picture = drawing.enter_context(Picture(graph, stage / GRAPH_NAME))  # drawn beside the stages below
        if options.precision == "int8":
            with stages.stage("calib", f"{options.calib}, up to {options.calib_samples} samples"):
                calib = calibration_data(options, graph)
        with stages.stage(
            "lower", "weights " + options.weights if options.weights else f"seeded init ({options.seed})"
        ):
            module = lower(graph, options, spec_path)
        metadata = model_metadata(graph, spec_path=spec_path, labels=labels)
        passes = graph_passes(options)
        manifest = manifest_head(options, spec_path, graph, passes)
        fp32_path = stage / (MODEL_NAME if options.precision == "fp32" else "model.fp32.onnx")
        model = emit(module, graph, options, passes, metadata, fp32_path, stages)
        with stages.stage("verify", f"onnxruntime vs PyTorch at {parity_text(graph)}"):
            inputs, references, fp32 = fp32_parity(module, graph, options, fp32_path)
            manifest["parity"] = {"fp32": fp32}
        if options.precision == "fp16":
            with stages.stage("fp16", "float16 weights and compute, float32 input and output"):
                model, manifest["fp16"], manifest["parity"]["fp16"] = fp16_model(
                    model, inputs, references, stage / MODEL_NAME, metadata, graph
                )
        elif options.precision == "int8":
            with stages.stage("quantize", f"int8 Q/DQ, calibration {options.calib}"):
                model, manifest["calibration"], manifest["parity"]["int8"] = int8_model(
                    model, fp32_path, stage / MODEL_NAME, calib, options, metadata
                )
                int8_at_sizes(manifest, fp32_path, stage / MODEL_NAME, calib, options, graph)
        tile = batch_tile_for(options, graph)
        if tile is not None:
            model, tile, manifest["batch_tiling"] = tile_final_model(
                model, tile, options, stage / MODEL_NAME, stages
            )
        manifest["batch_tile"] = tile
        if tile is not None:
            manifest["rewrites"].append("batch_tiling")
        if fp32_path.name != MODEL_NAME:
            fp32_path.unlink()
        with stages.stage("picture", GRAPH_NAME):
            picture.finish()
        manifest.update(model_record(model, stage / MODEL_NAME))
        manifest["graph"] = {"file": GRAPH_NAME, "sha256": file_sha256(stage / GRAPH_NAME)}
        extra = ("onnxconverter-common",) if options.precision == "fp16" else ()
        manifest["versions"] = tool_versions(*extra)
        with stages.stage("card", CARD_NAME):
            write_bytes_atomic(stage / CARD_NAME, model_card(manifest, metadata).encode("utf-8"), mode=0o644)
            manifest["card"] = {"file": CARD_NAME, "sha256": file_sha256(stage / CARD_NAME)}
        engine = None
        if engine_options is None:
            output.write_manifest(manifest)
            output.commit()
        else:
            # The engine is built in the final folder, so its sidecar and build_engine.sh name real paths; a
            # failed engine build still restores the previous build (BuildOutput keeps it aside until then).
            output.swap()
            build_engine_into(output, engine_options, manifest, stages)
            engine = out / manifest["engine"]["file"]
    return BuildResult(out, out / MODEL_NAME, out / MANIFEST_NAME, out / CARD_NAME, manifest, engine)
