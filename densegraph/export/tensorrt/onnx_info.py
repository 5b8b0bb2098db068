"""What an engine build needs to know about an ONNX model, read without onnxruntime or TensorRT."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..._io import file_sha256
from ...errors import DensegraphError

__all__ = ["OnnxInfo", "inspect_onnx"]

_PREPROCESS_KEY = "densegraph.preprocess"  # the metadata that carries a dynamic input's input_range


@dataclass(frozen=True)
class OnnxInfo:
    """The input/output signature of an ONNX model and how its precision is carried."""

    path: str
    sha256: str
    input_name: str
    input_shape: tuple[int | str, ...]
    input_dtype: str
    output_names: tuple[str, ...]
    has_fp16: bool
    has_qdq: bool
    asymmetric_qdq: tuple[str, ...] = ()  # Q/DQ nodes with a uint8 or non-zero zero point
    batch_tile: int | None = None  # a CPU build's scan over batch tiles (passes.tile_batch), TensorRT-less
    opset: int | None = None  # of the default ("" / ai.onnx) domain
    # a dynamic height and width: the (min, opt, max) (H, W) of densegraph's input_range metadata
    size_range: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None

    @property
    def typed(self) -> bool:
        """Precision is carried by the graph itself (fp16 tensors or Q/DQ nodes): build strongly typed."""
        return self.has_fp16 or self.has_qdq

    @property
    def precision(self) -> str:
        """The precision this ONNX was exported for."""
        return "int8" if self.has_qdq else "fp16" if self.has_fp16 else "fp32"

    @property
    def chw(self) -> tuple[int, int, int]:
        """C, H, W of the input (a dynamic height and width: the ``opt`` size)."""
        c, h, w = self.input_shape[1:]
        if self.size_range is not None:
            h, w = self.size_range[1]
        assert isinstance(c, int) and isinstance(h, int) and isinstance(w, int)
        return c, h, w

    @property
    def static_batch(self) -> int | None:
        """The batch size fixed in the model, or None when the batch axis is dynamic."""
        n = self.input_shape[0]
        return n if isinstance(n, int) and n > 0 else None


def inspect_onnx(onnx_path: str | os.PathLike[str]) -> OnnxInfo:
    """Read the input/output signature of an ONNX model and whether it is typed (fp16 or Q/DQ)."""
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise DensegraphError(
            f"no ONNX model at {path}", path=str(path), hint="build it with `densegraph build`"
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types
        raise DensegraphError(f"not a readable ONNX model: {exc}", path=str(path)) from None
    from ..passes import batch_tile_of, untile_batch

    tile = batch_tile_of(model)
    if tile is not None:  # describe the graph TensorRT will get
        model = untile_batch(model).model
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise DensegraphError(
            f"the engine needs exactly one input, the ONNX has {len(inputs)}: {[v.name for v in inputs]}",
            path=str(path),
        )
    tensor_type = inputs[0].type.tensor_type
    dims: list[int | str] = []
    for d in tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    size_range = _size_range(model, path)
    fixed = dims[1:2] if size_range is not None else dims[1:]
    if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in fixed):
        raise DensegraphError(
            f"input {inputs[0].name!r} must be [N, C, H, W] with static C, H, W; it is {dims}",
            path=str(path),
            hint="a dynamic height and width needs densegraph's input_range metadata "
            "(build the ONNX from a spec with input.size: dynamic)",
        )
    opsets = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return OnnxInfo(
        path=str(path),
        sha256=file_sha256(path),
        input_name=inputs[0].name,
        input_shape=tuple(dims),
        input_dtype=onnx.TensorProto.DataType.Name(tensor_type.elem_type).lower(),
        output_names=tuple(o.name for o in graph.output),
        has_fp16=_has_fp16(graph),
        has_qdq=any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node),
        asymmetric_qdq=_asymmetric_qdq(graph),
        batch_tile=tile,
        opset=opsets[0] if opsets else None,
        size_range=size_range,
    )


def _size_range(model: Any, path: Path) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None:
    """The ``input_range`` of the model's ``densegraph.preprocess`` metadata, checked; None when it has none."""
    from ...errors import Loc
    from ...transforms import size_range_of

    props = {p.key: p.value for p in model.metadata_props}
    try:
        record = json.loads(props.get(_PREPROCESS_KEY, "{}"))
    except json.JSONDecodeError:
        return None
    found = size_range_of(record, Loc(str(path))) if isinstance(record, dict) else None
    if found is None:
        return None
    (lh, lw), (oh, ow), (hh, hw) = (found[k] for k in ("min", "opt", "max"))
    return (lh, lw), (oh, ow), (hh, hw)


def _has_fp16(graph: Any) -> bool:
    import onnx

    fp16 = onnx.TensorProto.FLOAT16
    return (
        any(t.data_type == fp16 for t in graph.initializer)
        or any(v.type.tensor_type.elem_type == fp16 for v in (*graph.value_info, *graph.input, *graph.output))
        or any(
            n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute)
            for n in graph.node
        )
    )


def _asymmetric_qdq(graph: Any) -> tuple[str, ...]:
    """Q/DQ nodes TensorRT refuses: a uint8 or non-zero zero point."""
    import onnx
    import onnx.numpy_helper

    zero_points = {t.name: t for t in graph.initializer}
    asymmetric = []
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zp = zero_points.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp is not None and (
            zp.data_type == onnx.TensorProto.UINT8 or onnx.numpy_helper.to_array(zp).any()
        ):
            asymmetric.append(node.name or node.output[0])
    return tuple(asymmetric)
