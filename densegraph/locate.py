"""``densegraph locate``: from an ONNX or TensorRT layer name back to the graph node and the spec line.

A built model carries its node table in ``metadata_props`` (``densegraph.nodes``, see
:mod:`densegraph.describe`), so a model file alone answers; a spec answers from its graph.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .describe import Location, locate, node_table
from .errors import BuildError, Loc

__all__ = ["locate_name", "Location"]


def locate_name(model: str | os.PathLike[str], name: str) -> list[Location]:
    """Where ``name`` comes from in ``model``: an ONNX file built by densegraph, a build folder (its
    ``model.onnx``) or a spec (``.yaml``)."""
    path = Path(model)
    if path.suffix in (".yaml", ".yml"):
        from .graph import build_graph
        from .spec import load_spec

        return locate(node_table(build_graph(load_spec(path))), name)
    if path.is_dir():
        path = path / "model.onnx"
    table = _table_of(path)
    return locate(table, name)


def _table_of(path: Path) -> dict[str, list[str]]:
    import onnx

    where = Loc(str(path))
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except FileNotFoundError:
        raise BuildError(
            "no such file", loc=where, hint="pass a model.onnx, a build folder or a spec"
        ) from None
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
        raise BuildError(f"not an ONNX model ({type(exc).__name__})", loc=where) from None
    props = {p.key: p.value for p in model.metadata_props}
    if "densegraph.nodes" not in props:
        raise BuildError(
            "the model has no densegraph node table (densegraph.nodes in its metadata)",
            loc=where,
            hint="rebuild it with this densegraph, or pass its spec instead",
        )
    return json.loads(props["densegraph.nodes"])
