"""Exact cost of primitive operations: output shape, parameters, multiply-accumulates.

MACs count the multiply-accumulates of convolutions and linear layers only (the convention of torchvision's
and the paper's figures); BatchNorm, ReLU, pooling and concatenation are memory-bound and counted as
activations instead. Parameters are trainable ones (BatchNorm running statistics are buffers, not parameters).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "TILE_BYTES",
    "batch_tile",
    "op_output",
    "op_params",
    "op_macs",
    "op_traffic",
    "totals",
    "peak_activation_bytes",
]

# The cache budget of one batch tile, for ``--batch-tile auto``'s candidate: a tile's largest concatenation
# group (the block buffer a dense block fills) should stay in the last-level cache from one layer to the next,
# and under glibc's mmap threshold. Tuned on 2-core AVX2 EPYC VMs (densenet121 batch 8 ran 10-15% faster in
# tiles of one sample there); an AVX-512 host ran the same tiling 8% slower than untiled, so the build times
# the candidate against the untiled model on the machine at hand and keeps it only if it wins
# (densegraph.build.time_batch_tiling): this number proposes, the measurement decides.
TILE_BYTES = 4 << 20

Size = tuple[int, int]


def _window(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool = False) -> int:
    if not ceil_mode:
        return (size + 2 * padding - kernel) // stride + 1
    # PyTorch's rule: round up, but the last window must start inside the input or its left padding
    out = -(-(size + 2 * padding - kernel) // stride) + 1
    if (out - 1) * stride >= size + padding:
        out -= 1
    return out


def op_output(op: dict[str, Any], channels: int, size: Size) -> tuple[int, Size]:
    """Channels and spatial size after ``op`` given its input (sizes may come out <= 0: callers check)."""
    kind = op["op"]
    h, w = size
    if kind == "conv":
        k, s, p = op["kernel"], op["stride"], op["padding"]
        return op["out_channels"], (_window(h, k, s, p), _window(w, k, s, p))
    if kind in ("maxpool", "avgpool"):
        k, s, p, ceil = op["kernel"], op["stride"], op.get("padding", 0), op.get("ceil_mode", False)
        return channels, (_window(h, k, s, p, ceil), _window(w, k, s, p, ceil))
    if kind == "blurpool":
        k, s = op["kernel"], op["stride"]
        return channels, (_window(h, k, s, (k - 1) // 2), _window(w, k, s, (k - 1) // 2))
    if kind == "global_avgpool":
        return channels, (1, 1)
    if kind == "linear":
        return op["out_features"], (1, 1)
    if kind in ("bn", "relu", "relu6", "dropout"):
        return channels, size
    raise ValueError(f"unknown op kind {kind!r}")


def op_params(op: dict[str, Any]) -> int:
    """Trainable parameters of ``op``."""
    kind = op["op"]
    if kind == "conv":
        k, groups = op["kernel"], op.get("groups", 1)
        weights = op["out_channels"] * (op["in_channels"] // groups) * k * k
        return weights + (op["out_channels"] if op.get("bias") else 0)
    if kind == "bn":
        return 2 * op["channels"]
    if kind == "linear":
        return op["out_features"] * op["in_features"] + (op["out_features"] if op.get("bias") else 0)
    return 0


def op_macs(op: dict[str, Any], out_size: Size) -> int:
    """Multiply-accumulates of ``op`` for one sample, given its output spatial size."""
    kind = op["op"]
    if kind == "conv":
        k = op["kernel"]
        return (
            out_size[0]
            * out_size[1]
            * op["out_channels"]
            * (op["in_channels"] // op.get("groups", 1))
            * k
            * k
        )
    if kind == "blurpool":  # a fixed depthwise filter
        return out_size[0] * out_size[1] * op["channels"] * op["kernel"] ** 2
    if kind == "linear":
        return op["out_features"] * op["in_features"]
    return 0


def op_traffic(op: dict[str, Any], in_elements: int, out_elements: int) -> int:
    """Elements a convolution reads and writes for one sample (its input and output maps; HarDNet's CIO counts
    these over every conv layer). Other ops: 0 (fused into a neighbouring conv by every runtime that matters)."""
    if op["op"] == "conv":
        return in_elements + out_elements
    return 0


def totals(graph: Any) -> dict[str, int]:
    """Sum of the per-node cost attributes of a connection graph."""
    keys = ("params", "macs", "activations", "concat_elements", "cio")
    return {key: sum(int(data.get(key, 0)) for _, data in graph.nodes(data=True)) for key in keys}


def batch_tile(graph: Any, element_bytes: int = 4, budget: int = TILE_BYTES) -> int:
    """Samples per batch tile: as many as fit the largest per-sample concatenation group in ``budget`` bytes
    (at least one). ``element_bytes``: 4 for fp32 feature maps, 1 for int8."""
    largest = max((int(data.get("concat_elements", 0)) for _, data in graph.nodes(data=True)), default=0)
    if largest == 0:  # no concatenation anywhere: the largest feature map a node outputs
        largest = max(
            data["out_channels"] * data["out_size"][0] * data["out_size"][1]
            for _, data in graph.nodes(data=True)
        )
    return max(1, budget // (largest * element_bytes))


def peak_activation_bytes(graph: Any, batch: int, element_bytes: int = 4) -> int:
    """The feature maps an inference at ``batch`` samples holds at once at its busiest node: that node's input
    (its concatenation) and every map its ops produce (its ``activations``), in bytes.

    An estimate that errs low (an eager run also keeps the maps later nodes still read), made before anything is
    allocated so that a batch that cannot fit is refused instead of exhausting the machine.
    """
    per_sample = 0
    for _, data in graph.nodes(data=True):
        height, width = data.get("in_size") or (0, 0)
        inputs = max(int(data.get("concat_elements", 0)), int(data.get("in_channels") or 0) * height * width)
        per_sample = max(per_sample, inputs + int(data.get("activations", 0)))
    return int(batch) * per_sample * element_bytes
