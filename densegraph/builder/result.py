"""A finished build: :class:`BuildResult`, the names of the folder's files, and its one-line summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BuildResult", "MODEL_NAME", "GRAPH_NAME"]

MODEL_NAME = "model.onnx"
GRAPH_NAME = "graph.svg"


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


def _parity_line(precision: str, parity: dict[str, Any]) -> str:
    fp32 = parity["fp32"]
    line = f"parity max abs err {fp32['max_abs_err']:.2g} at batch {', '.join(map(str, fp32['batches']))}"
    if "sizes" in fp32:  # a dynamic input: each batch at its size
        runs = (f"{n} at {h}x{w}" for n, (h, w) in zip(fp32["batches"], fp32["sizes"], strict=True))
        line = f"parity max abs err {fp32['max_abs_err']:.2g} at batch {', '.join(runs)}"
    if precision == "fp16":
        fp16 = parity["fp16"]
        line += (
            f"; fp16 max rel err {fp16['max_rel_err']:.2g}" if isinstance(fp16, dict) else f"; fp16 {fp16}"
        )
    if precision == "int8":
        int8 = parity["int8"]
        if "outputs" in int8:  # a backbone: each feature map's SQNR
            maps = ", ".join(f"{name} {o['sqnr_db']:.1f}" for name, o in int8["outputs"].items())
            line += f"; int8 feature map SQNR {maps} dB"
        else:
            line += (
                f"; int8 logits SQNR {int8['sqnr_db']:.1f} dB, top-1 agreement {int8['top1_agreement']:.1%}"
            )
        if "top1_int8" in int8:
            line += f" (top-1 fp32 {int8['top1_fp32']:.1%}, int8 {int8['top1_int8']:.1%})"
        for size, at in int8.get("sizes", {}).items():  # a dynamic input's min and max sizes
            worst = "worst map " if isinstance(at, dict) and "outputs" in at else ""
            line += (
                f"; at {size} {worst}{at['sqnr_db']:.1f} dB" if isinstance(at, dict) else f"; at {size} {at}"
            )
    return line
