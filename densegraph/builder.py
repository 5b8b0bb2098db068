"""Build a spec (and weights) into a verified ONNX model, optionally a TensorRT engine: :func:`build`.

Stages: graph (spec -> connection graph), lower (the PyTorch eval module: weights or seeded init; the numerical
reference), emit (the ONNX model emitted from the graph's op lists after the passes of
:mod:`densegraph.passes`, with the module's tensors: :mod:`densegraph.export.emit`), check (shapes, ONNX
checker), verify (onnxruntime against the unrewritten PyTorch eval module at batch 1 and 3), fp16 or quantize,
tile (opt-in, ``batch_tile``: the final model in a scan over batch tiles, checked against the untiled one and
for ``auto`` kept only if faster on this machine: :mod:`densegraph.export.tiling`), picture, card
(``MODEL.md``), and for
``target="tensorrt"`` the engine. Everything is written to a staging folder beside the output folder and
moved into place at the end: a failed build leaves nothing behind, a good build already in the folder survives
a failed rebuild, and a folder holding anything densegraph did not write is never replaced
(:class:`densegraph._output.BuildOutput`).

Progress goes to a callback (:class:`StageEvent`); nothing here prints. ``densegraph build`` (the CLI) builds
:class:`BuildOptions`, calls :func:`build_model` and prints the result.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._io import write_bytes_atomic
from ._output import BuildOutput
from .cost import totals
from .data import load_data
from .describe import CARD_NAME, model_card, model_metadata, read_labels
from .errors import BuildError, Loc
from .export.onnx import (
    DEFAULT_OPSET,
    check_onnx,
    check_opset,
    check_size,
    fp16_from_onnx,
    io_signature,
    op_counts,
    ort_session,
    parity_inputs,
    run_onnx,
    save_onnx,
    set_metadata,
    stamp,
    verify_int8,
    verify_outputs,
)
from .export.tiling import choose_batch_tile, tile_model
from .graph import build_graph
from .manifest import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    file_sha256,
    tool_versions,
)
from .spec import Spec, load_spec

if TYPE_CHECKING:
    import networkx as nx
    from torch import nn

__all__ = [
    "build",
    "build_model",
    "BuildOptions",
    "BuildResult",
    "StageEvent",
    "choose_batch_tile",
    "BuildOutput",
    "PARITY_BATCHES",
    "INT8_EVAL_SAMPLES",
]

MODEL_NAME = "model.onnx"
GRAPH_NAME = "graph.svg"
PARITY_BATCHES = (1, 3)  # batch 1 and a batch > 1 that is no power of two
INT8_EVAL_SAMPLES = 1000  # labelled validation images scored for the int8 report (at most)
PRECISIONS = ("fp32", "fp16", "int8")
TARGETS = ("onnx", "tensorrt")


@dataclass(frozen=True)
class BuildOptions:
    """What to build (every field has the CLI flag of the same name; see ``densegraph build --help``).

    ``output``: the build folder (default ``build/<name>``). ``weights``: a state_dict or checkpoint
    (torchvision's keys accepted); without it the model is initialised from ``seed``. ``precision``: fp32,
    fp16 (fp16 compute, fp32 ``images``/``logits``) or int8 (needs ``calib``: ``digits``, an image folder or an
    ``.npy``; ``calib_samples`` of it). ``target``: ``onnx``, or ``tensorrt`` for an engine too (with
    ``batch`` MIN:OPT:MAX as its profile and the TensorRT fields at the end). ``plain``: emit without the graph
    rewrites. ``batch_tile``: ``off`` (default), ``auto`` (a cache-sized tile, kept only if faster on this
    machine) or a count of samples (:mod:`densegraph.export.tiling`). ``labels``: class names (a file with one
    a line or a JSON list, or a sequence), written into the model's metadata.
    """

    output: str | os.PathLike[str] | None = None
    weights: str | None = None
    precision: str = "fp32"
    target: str = "onnx"
    calib: str | None = None
    calib_samples: int = 256
    batch: tuple[int, int, int] = (1, 8, 32)
    opset: int = DEFAULT_OPSET
    plain: bool = False
    batch_tile: str | int = "off"
    seed: int = 0
    labels: str | os.PathLike[str] | Sequence[str] | None = None
    workspace: float | None = None
    dla: int | None = None
    timing_cache: str | None = None
    hardware_compat: bool = False
    version_compat: bool = False


@dataclass(frozen=True)
class StageEvent:
    """One step of a build's progress: a stage starting, done (with ``seconds``) or failed, or a ``note`` from
    inside a stage (the engine build's progress)."""

    stage: str
    what: str
    state: str  # "start", "done", "failed" or "note"
    seconds: float | None = None


Progress = Callable[[StageEvent], None]


@dataclass(frozen=True)
class BuildResult:
    """A finished build: its folder, files and manifest (``parity`` holds the gates' figures)."""

    output: Path
    model: Path
    manifest_path: Path
    card: Path
    manifest: dict[str, Any] = field(repr=False)
    engine: Path | None = None

    @property
    def parity(self) -> dict[str, Any]:
        return dict(self.manifest["parity"])

    def summary(self) -> str:
        """One line: what was built and how it compares with PyTorch."""
        manifest = self.manifest
        size = manifest["model"]["bytes"] / 2**20
        what = f"{manifest['precision']}, opset {manifest['opset']}, {size:.1f} MiB"
        return f"built {self.output}/: {MODEL_NAME} ({what}), {_parity_line(manifest['precision'], manifest['parity'])}"


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
    _check_options(options)
    if options.weights:
        from .hub import fetch_weights, is_weights_name, published_weights

        if is_weights_name(options.weights):  # torchvision / timm[:variant]: the hash-checked published file
            path = fetch_weights(published_weights(options.weights, loaded.name))
            options = replace(options, weights=str(path))
    engine_options = _engine_options(options) if options.target == "tensorrt" else None
    out = Path(options.output) if options.output else Path("build") / loaded.name
    stages = _Stages(progress)
    with BuildOutput(out) as output:
        stage = output.path
        with stages.stage("graph", loaded.name):
            graph = build_graph(loaded)
        labels = read_labels(options.labels, int(graph.graph["output_shape"][0])) if options.labels else None
        if options.precision == "int8":
            with stages.stage("calib", f"{options.calib}, up to {options.calib_samples} samples"):
                calib = _calibration_data(options, graph)
        with stages.stage(
            "lower", "weights " + options.weights if options.weights else f"seeded init ({options.seed})"
        ):
            module = _lower(graph, options, spec_path)
        metadata = model_metadata(graph, spec_path=spec_path, labels=labels)
        passes = _passes(options)
        manifest = _manifest_head(options, spec_path, graph, passes)
        fp32_path = stage / (MODEL_NAME if options.precision == "fp32" else "model.fp32.onnx")
        model = _emit(module, graph, options, passes, metadata, fp32_path, stages)
        with stages.stage("verify", f"onnxruntime vs PyTorch at batch {', '.join(map(str, PARITY_BATCHES))}"):
            inputs, references = _references(module, graph, options)
            manifest["parity"] = {"fp32": verify_outputs(fp32_path, inputs, references, "fp32")}
        if options.precision == "fp16":
            with stages.stage("fp16", "float16 weights and compute, float32 input and output"):
                model, manifest["fp16"], manifest["parity"]["fp16"] = _fp16(
                    model, inputs, references, stage / MODEL_NAME, metadata
                )
        elif options.precision == "int8":
            with stages.stage("quantize", f"int8 Q/DQ, calibration {options.calib}"):
                model, manifest["calibration"], manifest["parity"]["int8"] = _int8(
                    model, fp32_path, stage / MODEL_NAME, calib, options, metadata
                )
        tile = _batch_tile(options, graph)
        if tile is not None:
            model, tile, manifest["batch_tiling"] = _tile(model, tile, options, stage / MODEL_NAME, stages)
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
            _engine(output, engine_options, manifest, stages)
            engine = out / manifest["engine"]["file"]
    return BuildResult(out, out / MODEL_NAME, out / MANIFEST_NAME, out / CARD_NAME, manifest, engine)


# ---------------------------------------------------------------------------------------------------------
# options


def _check_options(options: BuildOptions) -> None:
    check_opset(options.opset)
    for name, value, choices in (
        ("precision", options.precision, PRECISIONS),
        ("target", options.target, TARGETS),
    ):
        if value not in choices:
            raise BuildError(f"unknown {name} {value!r}", hint=f"choose one of {', '.join(choices)}")
    low, opt, high = options.batch
    if not 0 < low <= opt <= high:
        raise BuildError(f"batch must be MIN:OPT:MAX with 0 < MIN <= OPT <= MAX, got {low}:{opt}:{high}")
    setting = str(options.batch_tile)
    if setting not in ("auto", "off") and not (setting.isdigit() and int(setting) > 0):
        raise BuildError(f"batch_tile must be auto, off or a positive count, got {options.batch_tile!r}")
    if options.precision == "int8" and not options.calib:
        raise BuildError(
            "int8 needs calibration data",
            hint="pass --calib digits, --calib DIR (an image folder) or --calib X.npy",
        )
    if options.calib and options.precision != "int8":
        raise BuildError("--calib is only used with --precision int8")
    if options.calib_samples <= 0:
        raise BuildError(f"--calib-samples must be positive, got {options.calib_samples}")
    seed = options.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise BuildError(f"--seed must be an integer in [0, 2**32), got {seed!r}")
    trt_only = [
        flag
        for flag, value in (
            ("--workspace", options.workspace),
            ("--dla", options.dla),
            ("--timing-cache", options.timing_cache),
            ("--hardware-compat", options.hardware_compat or None),
            ("--version-compat", options.version_compat or None),
        )
        if value is not None
    ]
    if setting not in ("auto", "off") and (options.target == "tensorrt" or options.plain):
        why = (
            "--target tensorrt (TensorRT takes whole batches)" if options.target == "tensorrt" else "--plain"
        )
        raise BuildError(f"--batch-tile {setting} does not go with {why}", hint="leave --batch-tile out")
    if options.target == "tensorrt":
        from .export.tensorrt.builder import MAX_PARSER_OPSET

        if options.opset > MAX_PARSER_OPSET:
            raise BuildError(
                f"--opset {options.opset} is newer than the ONNX parser of TensorRT 10.0-10.3 (JetPack 6.1/6.2) "
                f"takes (opsets <= {MAX_PARSER_OPSET})",
                hint=f"leave --opset out (19) or pass --opset {MAX_PARSER_OPSET} with --target tensorrt",
            )
    if trt_only and options.target != "tensorrt":
        verb = "applies" if len(trt_only) == 1 else "apply"
        raise BuildError(
            f"{', '.join(trt_only)} {verb} only to TensorRT engines", hint="add --target tensorrt"
        )


def _engine_options(options: BuildOptions) -> Any:
    from .export.tensorrt import EngineOptions

    return EngineOptions(
        precision=options.precision,
        batch=options.batch,
        workspace_gib=options.workspace,
        dla_core=options.dla,
        timing_cache=options.timing_cache,
        hardware_compat=bool(options.hardware_compat),
        version_compat=bool(options.version_compat),
    )


def _passes(options: BuildOptions) -> list[str]:
    """The graph passes of the emitted fp32 model: the export rewrites (none with ``plain``), and what the
    precision's converter needs (fp16: no BN left; the int8 ``cpu`` form: BN and pooling as depthwise convs)."""
    from .passes import EXPORT_PASSES, PASSES

    chosen = set() if options.plain else set(EXPORT_PASSES)
    if options.precision == "fp16":
        chosen.add("bn_to_depthwise")
    if options.precision == "int8" and options.target == "onnx":
        chosen.update(("bn_to_depthwise", "avgpool_to_depthwise"))
    return [name for name in PASSES if name in chosen]


def _command(options: BuildOptions, spec_path: str) -> str:
    """The ``densegraph build`` command line that makes this build again (into OUT)."""
    words = ["densegraph", "build", spec_path]
    defaults = BuildOptions()
    for f in fields(BuildOptions):
        value = getattr(options, f.name)
        if f.name == "output" or value == getattr(defaults, f.name) or value is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag)
        elif f.name == "batch":
            words += [flag, ":".join(map(str, value))]
        elif f.name == "labels" and not isinstance(value, str | os.PathLike):
            words += [flag, "LABELS.txt"]
        else:
            words += [flag, str(os.fspath(value) if isinstance(value, os.PathLike) else value)]
    return " ".join([*words, "-o", "OUT"])


# ---------------------------------------------------------------------------------------------------------
# the stages


def _lower(graph: nx.DiGraph, options: BuildOptions, spec_path: str) -> nn.Module:
    from .lower.torch import to_torch

    module = to_torch(graph, seed=options.seed)
    if options.weights:
        from .lower.weights import load_weights

        load_weights(module, options.weights, model_name=spec_path)
    return module.eval()


def _emit(
    module: nn.Module,
    graph: nx.DiGraph,
    options: BuildOptions,
    passes: list[str],
    metadata: dict[str, str],
    path: Path,
    stages: _Stages,
) -> Any:
    """Emit and check the fp32 model, written to ``path``; returns it."""
    from .export.emit import onnx_from_graph

    state = module.state_dict()
    check_size(sum(t.numel() * t.element_size() for t in state.values()))
    with stages.stage("emit", f"ONNX opset {options.opset} from the graph, dynamic batch"):
        model, _ = onnx_from_graph(
            graph, state, passes=passes, opset=options.opset, name=graph.graph["name"], doc=_doc(graph)
        )
        set_metadata(model, metadata)
    with stages.stage("check", "shape inference, onnx.checker full check"):
        model = check_onnx(model)
        save_onnx(model, path)
    return model


def _batch_tile(options: BuildOptions, graph: nx.DiGraph) -> int | None:
    return choose_batch_tile(
        graph,
        str(options.batch_tile),
        precision=options.precision,
        target=options.target,
        plain=options.plain,
        max_batch=options.batch[2],
    )


def _tile(
    model: Any, tile: int, options: BuildOptions, path: Path, stages: _Stages
) -> tuple[Any, int | None, dict]:
    """:func:`densegraph.export.tiling.tile_model` as a stage; the model kept is written to ``path``."""
    with stages.stage("tile", f"a scan over batch tiles of {tile} sample(s)"):
        model, kept, record = tile_model(
            model, tile, setting=str(options.batch_tile), timing_batch=options.batch[1]
        )
        if kept is not None:
            save_onnx(model, path)
    return model, kept, record


def _references(module: nn.Module, graph: nx.DiGraph, options: BuildOptions) -> tuple[list, list]:
    """The parity inputs and the unrewritten eval module's logits on them."""
    import torch

    inputs = parity_inputs(tuple(graph.graph["input_shape"]), PARITY_BATCHES)
    # One thread: the reference is a correctness check of a few GMACs. On an idle 2-core machine a second
    # thread saves ~0.6 s on densenet169; on a shared one PyTorch's OpenMP threads spin-wait for each other:
    # 38-40 s wall (12 s CPU) at 2 threads against 5.6-8.5 s (1.4-1.9 s CPU) at 1, measured side by side at
    # load 5-8 (docs/performance.md).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            references = [module(torch.from_numpy(x)).numpy() for x in inputs]
    finally:
        torch.set_num_threads(previous)
    if not all(np.all(np.isfinite(r)) for r in references):
        raise BuildError(
            "the PyTorch model's outputs are not finite (NaN or inf) on random inputs",
            hint="check the weights" if options.weights else None,
        )
    return inputs, references


def _doc(graph: nx.DiGraph) -> str:
    c, h, w = graph.graph["input_shape"]
    classes = graph.graph["output_shape"][0]
    return f"{graph.graph['name']}: images [batch, {c}, {h}, {w}] float32 -> logits [batch, {classes}]"


def _fp16(
    model: Any, inputs: list, references: list, path: Path, metadata: dict[str, str]
) -> tuple[Any, dict, dict | str]:
    """Convert to fp16 and verify it where onnxruntime's CPU kernels run it; returns model, record, parity."""
    model16, notes = fp16_from_onnx(model)
    set_metadata(model16, metadata)
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


def _calibration_data(options: BuildOptions, graph: nx.DiGraph) -> Any:
    """The int8 calibration set (the train split), loaded before any export so that bad data fails fast."""
    shape = tuple(graph.graph["input_shape"])
    assert options.calib is not None  # checked with the options
    calib = load_data(
        options.calib,
        shape,
        split="train",
        max_samples=options.calib_samples,
        preprocess=graph.graph["preprocess"],
    )
    if not np.any(calib.x):
        raise BuildError(
            f"the calibration data is all zeros ({len(calib)} samples): int8 ranges cannot be measured on it",
            loc=Loc(str(options.calib)),
            hint="calibrate on real images, preprocessed as the model expects",
        )
    return calib


def _int8(
    fp32: Any,
    fp32_path: Path,
    path: Path,
    calib: Any,
    options: BuildOptions,
    metadata: dict[str, str],
) -> tuple[Any, dict, dict]:
    """Quantize with the calibration data; score int8 against fp32 (and the labels, when there are some)."""
    import onnx

    from .export.quantize import quantize_onnx

    # TensorRT builds int8 only from symmetric Q/DQ around its convs; onnxruntime's CPU is fastest on the
    # "cpu" form (uint8 activations, int8 end to end). Both stay available through quantize_onnx.
    form = "qdq" if options.target == "tensorrt" else "cpu"
    with _root_logger_silenced():
        done = quantize_onnx(fp32_path, path, calib.x, form=form)
    model = onnx.load(os.fspath(path))
    stamp(model, fp32.graph.name, fp32.doc_string)  # the quantizer names itself the producer
    set_metadata(model, metadata)
    model = check_onnx(model)
    save_onnx(model, path)
    assert options.calib is not None  # checked with the options
    labelled = calib.y.size > 0
    shape = tuple(calib.x.shape[1:])
    scored = (
        load_data(
            options.calib, shape, split="val", max_samples=INT8_EVAL_SAMPLES, preprocess=calib.preprocess
        )
        if labelled
        else calib
    )
    fp32_logits = run_onnx(ort_session(fp32_path), scored.x)
    int8_logits = run_onnx(ort_session(path), scored.x)
    parity = verify_int8(fp32_logits, int8_logits, scored.y if labelled else None)
    parity["data"] = f"{options.calib} {'val split' if labelled else '(the calibration samples)'}"
    calibration: dict[str, Any] = {
        "source": str(options.calib),
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


def _manifest_head(
    options: BuildOptions, spec_path: str, graph: nx.DiGraph, passes: list[str]
) -> dict[str, Any]:
    from .graph import graph_sha256

    cost = totals(graph)
    head: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "name": graph.graph["name"],
        # the file's bytes, and the network it describes (`extends` bases included; comments do not count)
        "spec": {
            "path": spec_path,
            "sha256": file_sha256(spec_path),
            "graph_sha256": graph_sha256(graph),
        },
        "weights": {"path": str(options.weights), "sha256": file_sha256(options.weights)}
        if options.weights
        else None,
    }
    if not options.weights:
        head["seed"] = options.seed
    head.update(
        {
            "precision": options.precision,
            "target": options.target,
            "opset": options.opset,
            "batch": {"min": options.batch[0], "opt": options.batch[1], "max": options.batch[2]},
            "params": cost["params"],
            "macs": cost["macs"],
            "emitter": "densegraph.export.emit (from the connection graph)",
            "rewrites": list(passes),
            "command": _command(options, spec_path),
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
    """Times each stage and reports it to the progress callback (none: silent)."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        if self.progress is None:
            yield
            return
        start = time.perf_counter()
        self.progress(StageEvent(name, what, "start"))
        try:
            yield
        except BaseException:
            self.progress(StageEvent(name, what, "failed", time.perf_counter() - start))
            raise
        self.progress(StageEvent(name, what, "done", time.perf_counter() - start))

    def note(self, message: str) -> None:
        """A message from inside a stage (the engine build's progress)."""
        if self.progress is not None:
            self.progress(StageEvent("engine", message, "note"))


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
