"""Weights in and out: torchvision state_dicts, training checkpoints, safe loading.

Every file is read with ``torch.load(path, map_location="cpu", weights_only=True)``: tensors, dicts, lists,
numbers and strings load; a pickle that names any other Python object (and so could run code) is refused
before anything in it runs. Accepted layouts:

- a plain state_dict with this package's (= torchvision's current) names;
- torchvision's legacy names from its published ImageNet files (``denselayer1.norm.1.weight`` for
  ``denselayer1.norm1.weight``), renamed with torchvision's own rule;
- a checkpoint dict holding the state_dict under ``state_dict``, ``model`` or ``model_state_dict`` (the
  checkpoints :mod:`densegraph.training` writes have ``state_dict``);
- keys prefixed ``module.`` (DistributedDataParallel) or ``_orig_mod.`` (``torch.compile``).
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import open_regular, write_atomic
from ..errors import CheckpointError, DensegraphError, Loc

__all__ = [
    "state_dict_from_file",
    "load_file",
    "normalize_state_dict",
    "load_weights",
    "check_tensors",
    "save_atomic",
    "import_weights",
    "ImportedWeights",
]

# torchvision.models.densenet._load_state_dict's rule (plus num_batches_tracked, which newer saves carry)
_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)
_CHECKPOINT_ENTRIES = ("state_dict", "model", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 3


# torch's safe unpickler names a refused global one way (``Unsupported global: GLOBAL builtins.eval``) or, for a
# module it blocks outright (torch >= 2.13), another (``unsupported GLOBAL posix.system whose module posix is
# blocked``)
_REFUSED_GLOBAL = (
    re.compile(r"Unsupported global: GLOBAL (\S+)"),
    re.compile(r"unsupported GLOBAL (\S+) whose module \S+ is blocked"),
)
# what torch.save itself pickles: a refusal that names none of these came from something else in the file
_TORCH_SAVE_MODULES = ("torch", "collections")


def load_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` with ``weights_only=True`` on CPU; every failure becomes one :class:`CheckpointError`."""
    where = Loc(os.fspath(path))
    p = Path(path)
    # a regular file only, opened before torch sees it: a FIFO or a device given as weights would hang or
    # never end
    handle = open_regular(
        path, what="weights file", error=CheckpointError, missing_hint="check the path to the weights"
    )
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4 …": the outcome is reported below
            warnings.simplefilter("ignore")
            return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = next((m.group(1) for rx in _REFUSED_GLOBAL if (m := rx.search(text))), None)
        if found is None or found.split(".", 1)[0] in _TORCH_SAVE_MODULES:
            # refused before any global (an opcode the safe unpickler lacks), or at one of torch's own that
            # something else follows: read the opcodes ourselves, and name the global from elsewhere
            found = _code_global(p) or found
        if found is not None:
            raise CheckpointError(
                f"refusing to load: the file pickles the Python object {found!r}, and loading it would run code "
                "(only tensors, dicts, lists, numbers and strings are accepted)",
                loc=where,
                hint="re-save it as a plain state_dict (torch.save(model.state_dict(), path)) where it came from",
            ) from None
        raise CheckpointError("not a PyTorch weights file (corrupt or another format)", loc=where) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"not a PyTorch weights file (corrupt or another format: {first})", loc=where
        ) from None
    except PermissionError as exc:
        raise CheckpointError(f"cannot read the file: {exc.strerror or exc}", loc=where) from None
    except OSError:  # torch's zip reader reports a truncated archive as EINVAL
        raise CheckpointError("not a PyTorch weights file (corrupt or truncated)", loc=where) from None
    except Exception as exc:  # the restricted unpickler fails on arbitrary bytes in many ways (KeyError, …)
        raise CheckpointError(
            f"not a PyTorch weights file (corrupt or another format: {type(exc).__name__})", loc=where
        ) from None
    finally:
        handle.close()


def _code_global(path: Path) -> str | None:
    """The first global a pickle (a plain one, or ``data.pkl`` of torch's zip format) names outside what
    ``torch.save`` writes, found by reading its opcodes (nothing is unpickled); ``None`` if there is none."""
    try:  # what torch's safe unpickler accepts (private: without it, torch's and collections' names pass)
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except (ImportError, AttributeError, TypeError):
        allowed = set()
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next(
                    (n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None
                )
                data = archive.read(name) if name is not None else b""
        else:
            with open(path, "rb") as f:
                data = f.read(64 << 20)
        strings: list[str] = []
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            if isinstance(arg, str) and "UNICODE" in opcode.name:
                strings = [*strings[-1:], arg]
            name = None
            if opcode.name in ("GLOBAL", "INST") and isinstance(arg, str):
                name = arg.replace(" ", ".")
            elif opcode.name == "STACK_GLOBAL" and len(strings) == 2:
                name = ".".join(strings)
            if name is not None and name not in allowed and name.split(".", 1)[0] not in _TORCH_SAVE_MODULES:
                return name
            if opcode.name == "STOP":
                break
    except Exception:  # a malformed pickle: then it is only "not a weights file"
        return None
    return None


def normalize_state_dict(obj: Any, *, where: Loc | None = None) -> dict[str, torch.Tensor]:
    """Unwrap a checkpoint to its state_dict and rename legacy / ``module.`` keys to this package's names."""
    if isinstance(obj, Mapping):
        for entry in _CHECKPOINT_ENTRIES:
            inner = obj.get(entry)
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"holds a {type(obj).__name__}, not a state_dict", loc=where, hint="expected a dict of tensors"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        entries = ", ".join(repr(str(k)) for k in list(obj)[:_SHOW]) or "nothing"
        raise CheckpointError(
            f"holds no tensors (entries: {entries})",
            loc=where,
            hint=f"expected a state_dict or a checkpoint with a {' / '.join(_CHECKPOINT_ENTRIES)} entry",
        )
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    renamed: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        match = _LEGACY_KEY.match(key)
        new = match.group(1) + match.group(2) if match else key
        if new in renamed:
            raise CheckpointError(f"holds both {key!r} and its modern name {new!r}", loc=where)
        renamed[new] = value
    return renamed


def state_dict_from_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state_dict or checkpoint safely and return the state_dict with this package's key names."""
    return normalize_state_dict(load_file(path), where=Loc(os.fspath(path)))


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", … {len(keys) - _SHOW} more" if len(keys) > _SHOW else "")


def load_weights(
    module: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    model_name: str | None = None,
    origin: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Load a weights file (or a state_dict) into ``module`` strictly; a mismatch is one :class:`CheckpointError`.

    The error names the first few missing and unexpected keys and shape mismatches, with their counts, or the
    first tensor :func:`check_tensors` refuses. ``origin``: the file a state_dict came from, for the messages.
    """
    graph = getattr(module, "graph", None)
    if isinstance(source, str) and graph is not None:
        from ..hub import fetch_weights, is_weights_name, published_weights

        if is_weights_name(source):  # torchvision / timm[:variant]: the hash-checked published file
            source = fetch_weights(published_weights(source, graph.graph["name"]))
    if isinstance(source, Mapping):
        where = Loc(os.fspath(origin)) if origin is not None else None
        state = normalize_state_dict(source, where=where)
    else:
        where = Loc(os.fspath(source))
        state = state_dict_from_file(source)
    expected = module.state_dict()
    # files saved before BatchNorm counted its batches (torchvision's published ones) lack num_batches_tracked
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (file {list(v.shape)}, model {list(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_names(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_names(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} with another shape: {_names(mismatched)}")
        model = f"the model of {model_name}" if model_name else "this model"
        raise CheckpointError(
            f"the weights do not fit {model} ({'; '.join(parts)})",
            loc=where,
            hint="were they made for another spec? compare `densegraph summary SPEC` with the network that saved them",
        )
    check_tensors(state, expected, where=where)
    for key, value in expected.items():
        if key not in state:
            state[key] = torch.zeros_like(value)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # what check_tensors does not foresee: still the file's fault, one line
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"the weights cannot be loaded: {detail[:300]}", loc=where) from None
    return module


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def check_tensors(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], *, where: Loc | None = None
) -> None:
    """Refuse tensors that have the right name and shape but cannot be weights: sparse, meta (no data),
    quantized, complex, integer where the model has floating point, and NaN or infinite values (the first
    offending key is named)."""
    for key, value in state.items():
        model = expected.get(key)
        if model is None:
            continue
        problem = None
        if value.layout != torch.strided:
            problem = f"is a sparse tensor ({str(value.layout).removeprefix('torch.')})"
        elif value.is_meta:
            problem = "is a meta tensor: it has a shape but no values"
        elif value.is_quantized:
            problem = f"is quantized ({_dtype(value)})"
        elif value.is_complex():
            problem = f"is complex ({_dtype(value)})"
        elif model.is_floating_point() and not value.is_floating_point():
            problem = f"holds {_dtype(value)} values, the model {_dtype(model)}"
        if problem is not None:
            raise CheckpointError(
                f"{key} {problem}", loc=where, hint="save the dense floating-point state_dict of the model"
            )
    for key, value in state.items():
        if key in expected and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = value[~torch.isfinite(value)]
            nan = int(torch.isnan(bad).sum())
            counts = ", ".join(
                f"{n} {what}" for n, what in ((nan, "NaN"), (bad.numel() - nan, "infinite")) if n
            )
            raise CheckpointError(
                f"{key} holds non-finite values ({counts} of {value.numel()})",
                loc=where,
                hint="the run that saved these weights diverged; use an earlier checkpoint",
            )


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (see :func:`write_atomic`)."""
    write_atomic(path, lambda f: torch.save(obj, f))


@dataclass
class ImportedWeights:
    """What :func:`import_weights` wrote: a plain state_dict of ``tensors`` tensors for the spec ``spec``."""

    output: Path
    tensors: int
    parameters: int
    spec: str


def import_weights(
    source: str | os.PathLike[str], *, spec: str | os.PathLike[str], output: str | os.PathLike[str]
) -> ImportedWeights:
    """Check ``source`` (a torchvision state_dict, a checkpoint, …) against ``spec`` strictly and write its
    tensors under this package's names to ``output`` as a plain state_dict (atomically)."""
    from ..graph import build_graph
    from ..spec import load_spec
    from .torch import module_from_graph

    graph = build_graph(load_spec(spec))
    module = module_from_graph(graph, seed=0)
    load_weights(module, os.fspath(source), model_name=os.fspath(spec))
    out = Path(output)
    if not out.parent.is_dir():
        raise DensegraphError("the output folder does not exist", loc=Loc(str(out.parent) or "."))
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    try:
        save_atomic(state, out)
    except OSError as exc:
        raise DensegraphError(f"cannot write the output: {exc.strerror or exc}", loc=Loc(str(out))) from None
    params = sum(p.numel() for p in module.parameters())
    return ImportedWeights(out, len(state), params, graph.graph["name"])
