"""A fake ``trtexec`` of TensorRT 8.6, 10.x or 11.x, as strict as the real one where densegraph's script
could go wrong (NVIDIA's samples/common/sampleOptions.cpp and sampleEngines.cpp):

- an option the release does not have is refused ("Unknown option"): ``--stronglyTyped`` on 8.6, ``--fp16``
  and ``--int8`` on 11.x (removed with weak typing);
- explicit shapes (``--minShapes/--optShapes/--maxShapes``) on an ONNX whose input is static are refused; on a
  dynamic one, the three must be given, agree with its static dimensions and have min <= opt <= max (the real
  one overrides missing dynamic dimensions to 1, which a network that downsamples cannot take);
- ``--calib`` (8.6 and 10.x only) is taken only with ``--int8``, and its cache must be made for this
  TensorRT (header ``TRT-<NV_TENSORRT_VERSION>-EntropyCalibration2``, the number the banner prints): the real
  one skips another version's cache and calibrates on random data (or fails, NVIDIA/Deep-Learning-Accelerator-SW
  #26), which the fake refuses;
- ``--useDLACore`` without ``--stronglyTyped`` on an ONNX with Q/DQ nodes: that DLA takes no Q/DQ layers, so they
  fall back to the GPU (a warning each) or, without ``--allowGPUFallback``, the build fails.

Every run prints the banner ``&&&& RUNNING TensorRT.trtexec [TensorRT v<NV_TENSORRT_VERSION>]``. Otherwise it
writes its arguments, one per line, to ``$FAKE_LOG`` and succeeds.
"""

from __future__ import annotations

import sys
from pathlib import Path

COMMON = {
    "--onnx", "--saveEngine", "--minShapes", "--optShapes", "--maxShapes", "--memPoolSize", "--noTF32",
    "--useDLACore", "--allowGPUFallback", "--hardwareCompatibilityLevel", "--versionCompatible",
    "--timingCacheFile", "--skipInference",
}  # fmt: skip
FLAGS = {
    "8.6": COMMON | {"--fp16", "--int8", "--calib"},
    "10": COMMON | {"--fp16", "--int8", "--calib", "--stronglyTyped"},
    "11": COMMON | {"--stronglyTyped"},
}
VERSION = {"8.6": 8602, "10": 100300, "11": 110401}  # JetPack 6.0, JetPack 6.1/6.2, JetPack 7.2.2
SHAPES = ("--minShapes", "--optShapes", "--maxShapes")

_SCRIPT = """#!{python}
import os, sys
sys.path.insert(0, {here!r})
from fake_trtexec import main
sys.exit(main({flavor!r}, sys.argv[1:], os.environ.get("FAKE_LOG")))
"""


def write_fake_trtexec(path: Path, flavor: str) -> Path:
    """An executable fake trtexec of ``flavor`` ("8.6", "10" or "11") at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_SCRIPT.format(python=sys.executable, here=str(Path(__file__).parent), flavor=flavor))
    path.chmod(0o755)
    return path


def _static_input(onnx_path: str) -> bool:
    import onnx

    graph = onnx.load(onnx_path, load_external_data=False).graph
    init = {t.name for t in graph.initializer}
    (first,) = [v for v in graph.input if v.name not in init][:1]
    return all(d.HasField("dim_value") for d in first.type.tensor_type.shape.dim)


def _input_dims(onnx_path: str) -> list[int]:
    """The first input's dims, -1 where symbolic."""
    import onnx

    graph = onnx.load(onnx_path, load_external_data=False).graph
    init = {t.name for t in graph.initializer}
    (first,) = [v for v in graph.input if v.name not in init][:1]
    return [d.dim_value if d.HasField("dim_value") else -1 for d in first.type.tensor_type.shape.dim]


def _check_shapes(onnx_path: str, values: dict[str, str]) -> int:
    """A dynamic input's --minShapes/--optShapes/--maxShapes as the real trtexec takes them; 0 when fine.

    Without any, the real one overrides every dynamic dimension to 1: a dynamic batch builds, a dynamic height
    or width (a network that downsamples cannot take 1x1) is refused here. Given shapes must agree with the
    static dimensions, and with all three given, min <= opt <= max."""
    dims = _input_dims(onnx_path)
    given = {flag: values[flag] for flag in SHAPES if flag in values}
    if not given:
        if any(d < 0 for d in dims[1:]):
            print(
                f"[E] Dynamic dimensions required for input {dims}: no shapes given, overridden to 1",
                file=sys.stderr,
            )
            return 1
        return 0
    shapes = {flag: [int(d) for d in g.rsplit(":", 1)[1].split("x")] for flag, g in given.items()}
    if any(len(s) != len(dims) for s in shapes.values()):
        print(f"[E] shapes {shapes} do not match the input's rank {len(dims)}", file=sys.stderr)
        return 1
    for i, d in enumerate(dims):
        column = [s[i] for s in shapes.values()]
        if (d > 0 and set(column) != {d}) or min(column) <= 0:
            print(f"[E] shape dimension {i}: {column} for {d}", file=sys.stderr)
            return 1
        if len(column) == 3 and not column[0] <= column[1] <= column[2]:
            print(f"[E] optimization profile dimension {i}: {column}", file=sys.stderr)
            return 1
    return 0


def _qdq_nodes(onnx_path: str) -> list[str]:
    import onnx

    graph = onnx.load(onnx_path, load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def _implicit_int8(flavor: str, args: list[str], values: dict[str, str]) -> int:
    """The checks of --calib and of DLA with Q/DQ (see the module docstring); 0 when they pass."""
    if "--calib" in values:
        if "--int8" not in args:
            print("[E] --calib needs --int8", file=sys.stderr)
            return 1
        header = Path(values["--calib"]).read_text().split("\n", 1)[0]
        if header != f"TRT-{VERSION[flavor]}-EntropyCalibration2":
            print(
                f"[E] calibration cache {header!r} is not for this TensorRT; it would calibrate",
                file=sys.stderr,
            )
            return 1
    if "--useDLACore" in values and "--stronglyTyped" not in args and "--onnx" in values:
        for name in _qdq_nodes(values["--onnx"]):
            if "--allowGPUFallback" not in args:
                print(f"[E] Layer {name} is not supported on DLA and GPU fallback is off", file=sys.stderr)
                return 1
            print(f"[W] Layer {name} is not supported on DLA, falling back to GPU", file=sys.stderr)
    return 0


def main(flavor: str, args: list[str], log: str | None) -> int:
    flags = FLAGS[flavor]
    print(f"&&&& RUNNING TensorRT.trtexec [TensorRT v{VERSION[flavor]}] # trtexec {' '.join(args)}")
    if args == ["--help"]:
        print("=== Build Options ===")
        for flag in sorted(flags):
            print(f"  {flag}                      (help text)")
        return 0
    for arg in args:
        name = arg.split("=", 1)[0]
        if name not in flags:
            print(f"[E] Unknown option: {name}", file=sys.stderr)
            return 1
    values = dict(a.split("=", 1) for a in args if "=" in a)
    onnx = values.get("--onnx")
    if _implicit_int8(flavor, args, values):
        return 1
    if onnx and any(a.split("=", 1)[0] in SHAPES for a in args) and _static_input(onnx):
        print(
            "[E] Static model does not take explicit shapes since the shape of inference tensors will be "
            "determined by the model itself",
            file=sys.stderr,
        )
        return 1
    if onnx and not _static_input(onnx) and _check_shapes(onnx, values):
        return 1
    if log:
        Path(log).write_text("\n".join(args) + "\n")
    return 0
