"""The spec language: YAML in, a validated :class:`Spec` out, every field with its source location.

A spec describes a densely connected network by its hyper-parameters (see README, "The spec format")::

    name: densenet121
    input: {channels: 3, size: 224}   # size: dynamic, or {min: 160, opt: 224, max: 640}
    growth_rate: 32          # k
    bottleneck: 4            # 1x1 width = bottleneck * k; 0 = no bottleneck
    compression: 0.5         # theta of the transitions; 1.0 = none
    stem: {kind: imagenet, channels: 64}
    blocks: [6, 12, 24, 16]  # or mappings: {layers: 6, growth_rate: 48, connectivity: {kind: window, size: 4}}
    head: {classes: 1000}
    preprocess: {resize: 256, crop: 224}   # optional; see :class:`Preprocess` for the defaults

Only safe YAML is read, duplicate keys are rejected, and ``extends:`` merges a base spec (relative path, cycles
rejected) under the overrides. What the safety rests on: the file is a regular file read up to
``LIMITS["file_bytes"]`` + 1 bytes (:func:`densegraph._io.read_regular`); PyYAML (``SafeLoader``) only scans,
parses and composes the text into nodes, its composer stopped at ``LIMITS["yaml_depth"]`` levels, and constructs
scalars with its safe constructors; aliases and ``<<`` merge keys are expanded by :class:`_Converter` against
``LIMITS["yaml_nodes"]``, not by PyYAML's ``flatten_mapping`` (which, before the 2026 fix of PyYAML issue #897,
expanded repeated merges exponentially), so no PyYAML version's merge handling is relied on.

The package by job: :mod:`.model` (the dataclasses and limits), :mod:`.reader` (YAML to a located tree),
:mod:`.values` (typed value readers), :mod:`.preprocess`, :mod:`.validate` (the tree to a :class:`Spec`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import Loc, SpecError
from .model import (
    ACTIVATIONS,
    CONNECTIVITY_KINDS,
    LIMITS,
    NAME_ROLES,
    POOL_KINDS,
    STEM_KINDS,
    Aggregate,
    Block,
    Connectivity,
    ConvStage,
    Head,
    LayerTemplate,
    Pool,
    Preprocess,
    SizeRange,
    Spec,
    Stem,
    Transition,
)
from .preprocess import default_preprocess
from .reader import _load_tree, _parse_text
from .validate import _validate

__all__ = [
    "Spec",
    "Block",
    "Stem",
    "Head",
    "Connectivity",
    "Preprocess",
    "SizeRange",
    "default_preprocess",
    "ConvStage",
    "Pool",
    "LayerTemplate",
    "Transition",
    "Aggregate",
    "load_spec",
    "spec_from_string",
    "CONNECTIVITY_KINDS",
    "STEM_KINDS",
    "POOL_KINDS",
    "ACTIVATIONS",
    "NAME_ROLES",
    "LIMITS",
]


def load_spec(path: str | os.PathLike[str]) -> Spec:
    """Read, merge (``extends``) and validate a spec file; raises :class:`SpecError` on any mistake."""
    display = os.fspath(path)
    if "\0" in display:
        raise SpecError("the path contains a NUL byte", loc=Loc(display.replace("\0", "\\0")))
    tree = _load_tree(Path(display), display, (os.path.realpath(display),))
    return _validate(tree, display)


def spec_from_string(text: str, path: str = "<string>") -> Spec:
    """Validate a spec given as YAML text (``extends`` resolves relative to the current folder)."""
    root = _parse_text(text, path)
    if "extends" in root.value:
        ext = root.value["extends"]
        raise SpecError("'extends' needs a spec file, not a string", loc=ext.key_loc or ext.loc)
    return _validate(root, path)
