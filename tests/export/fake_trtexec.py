"""A fake ``trtexec`` of TensorRT 8.6, 10.x or 11.x, as strict as the real one where densegraph's script
could go wrong (NVIDIA's samples/common/sampleOptions.cpp and sampleEngines.cpp):

- an option the release does not have is refused ("Unknown option"): ``--stronglyTyped`` on 8.6, ``--fp16``
  and ``--int8`` on 11.x (removed with weak typing);
- explicit shapes (``--minShapes/--optShapes/--maxShapes``) on an ONNX whose input is static are refused.

Otherwise it writes its arguments, one per line, to ``$FAKE_LOG`` and succeeds.
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
    "8.6": COMMON | {"--fp16", "--int8"},
    "10": COMMON | {"--fp16", "--int8", "--stronglyTyped"},
    "11": COMMON | {"--stronglyTyped"},
}
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


def main(flavor: str, args: list[str], log: str | None) -> int:
    flags = FLAGS[flavor]
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
    onnx = next((a.split("=", 1)[1] for a in args if a.startswith("--onnx=")), None)
    if onnx and any(a.split("=", 1)[0] in SHAPES for a in args) and _static_input(onnx):
        print(
            "[E] Static model does not take explicit shapes since the shape of inference tensors will be "
            "determined by the model itself",
            file=sys.stderr,
        )
        return 1
    if log:
        Path(log).write_text("\n".join(args) + "\n")
    return 0
