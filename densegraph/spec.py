"""The spec language: YAML in, a validated :class:`Spec` out, every field with its source location.

A spec describes a densely connected network by its hyper-parameters (see README, "The spec format")::

    name: densenet121
    input: {channels: 3, size: 224}
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
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ._io import read_regular
from .errors import Loc, SpecError

__all__ = [
    "Spec",
    "Block",
    "Stem",
    "Head",
    "Connectivity",
    "Preprocess",
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

CONNECTIVITY_KINDS = ("dense", "window", "log", "chain", "harmonic")
STEM_KINDS = ("imagenet", "cifar")
CHANNEL_ORDERS = ("rgb", "bgr")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CROP_FRACTION = 0.875  # torchvision/timm: resize to crop / 0.875 (224 -> 256), then center-crop
HEAD_KINDS = ("classifier", "features")
POOL_KINDS = ("max", "avg", "blur", "dwconv")
ACTIVATIONS = ("relu", "relu6")
LAYER_ORDERS = ("pre", "post")

# The module-name templates a spec's ``names:`` may set (see README, "Module names"), each with the variables
# its template may use. The defaults (:data:`densegraph.graph.DEFAULT_NAMES`) are torchvision's DenseNet names.
_STEM_VARS = ("i", "seq")
_LAYER_VARS = ("block", "layer", "layer0", "stage0", "unit0", "seq", "n")
_UNIT_VARS = ("block", "stage0", "unit0", "seq", "i")
NAME_ROLES: dict[str, tuple[str, ...]] = {
    "stem.conv": _STEM_VARS,
    "stem.norm": _STEM_VARS,
    "stem.act": _STEM_VARS,
    "stem.pool": _STEM_VARS,
    "stem.pool.conv": _STEM_VARS,
    "stem.pool.norm": _STEM_VARS,
    "layer.conv": _LAYER_VARS,
    "layer.norm": _LAYER_VARS,
    "layer.act": _LAYER_VARS,
    "layer.dwconv": _LAYER_VARS,
    "layer.dwnorm": _LAYER_VARS,
    "aggregate.conv": _UNIT_VARS,
    "aggregate.norm": _UNIT_VARS,
    "aggregate.act": _UNIT_VARS,
    "transition.norm": _UNIT_VARS,
    "transition.act": _UNIT_VARS,
    "transition.conv": _UNIT_VARS,
    "transition.pool": _UNIT_VARS,
    "transition.pool.conv": _UNIT_VARS,
    "transition.pool.norm": _UNIT_VARS,
    "head.norm": ("seq",),
    "head.act": ("seq",),
    "head.linear": ("seq",),
}

# Sizes past these are refused while reading, before any graph or tensor is allocated.
LIMITS = {
    "layers": 1024,  # per block
    "total_layers": 4096,
    "connections": 600_000,  # L(L+1)/2 summed over the blocks: bounds the graph's size
    "blocks": 64,
    "growth_rate": 8192,
    "channels": 65536,
    "bottleneck": 64,
    "size": 16384,
    "classes": 1_000_000,
    "window": 4096,
    "kernel": 15,
    "stride": 8,
    "stem_convs": 16,
    "pools": 4,
    "yaml_nodes": 10_000,  # values reached with aliases and merge keys expanded: bounds "billion laughs"
    "extends_depth": 32,
    "yaml_depth": 64,  # nesting of collections (and of merge keys) in one document
    "file_bytes": 1_000_000,  # a spec file, read with at most this many bytes + 1 (never to its end)
}


@dataclass(frozen=True)
class Connectivity:
    """Which earlier feature maps a layer of a dense block takes.

    ``dense``: the block input and every earlier layer (the paper's rule). ``window`` (``size`` n): the block
    input and the n most recent layers. ``log``: the sources at distances 1, 2, 4, 8, … (Log-DenseNet), the
    block input counting as layer 0.
    """

    kind: str = "dense"
    size: int | None = None
    multiplier: float | None = None
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ConvStage:
    """One post-activation conv stage of a stem: conv (``kernel``, ``stride``, padding kernel//2), BN, act."""

    channels: int
    kernel: int = 3
    stride: int = 1
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Pool:
    """A downsampling op: ``max`` / ``avg`` pooling (``ceil_mode`` as PyTorch's), ``blur`` (a fixed binomial
    filter of size ``kernel``, reflect-padded, then strided: timm's BlurPool2d) or ``dwconv`` (a depthwise
    conv ``kernel`` x ``kernel`` followed by BN)."""

    kind: str
    kernel: int
    stride: int
    padding: int = 0
    ceil_mode: bool = False
    loc: Loc | None = field(default=None, compare=False)


# the pool shorthands a spec may write as a plain string
POOL_SHORTHANDS = {
    "max": Pool("max", 3, 2, 1),
    "avg": Pool("avg", 2, 2, 0),
    "blur": Pool("blur", 3, 2, 1),
    "dwconv": Pool("dwconv", 3, 2, 1),
}


@dataclass(frozen=True)
class LayerTemplate:
    """What one layer of a block runs: ``pre`` activation (BN, act, conv: DenseNet) or ``post`` activation
    (conv, BN, act), the spatial ``kernel``, and ``separable`` (post only: conv1x1-BN-act, then a depthwise
    conv ``kernel`` x ``kernel`` and BN, HarDNet's CombConv)."""

    order: str = "pre"
    kernel: int = 3
    separable: bool = False
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Transition:
    """What runs between a block and the next: ``conv`` ``pre`` (BN, act, conv1x1 to ``compression`` times the
    channels: DenseNet's) or ``none``, then the ``pool`` ops in order (none: no downsampling)."""

    conv: str = "pre"
    pool: tuple[Pool, ...] = (POOL_SHORTHANDS["avg"],)
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Aggregate:
    """A post-activation conv1x1 over a block's output to ``channels`` (VoVNet's one-shot aggregation, HarDNet's
    transition conv), after an optional dropout."""

    channels: int
    dropout: float = 0.0
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Stem:
    """The layers before the first block: ``imagenet`` (conv7x7/2, BN, ReLU, maxpool3x3/2), ``cifar``
    (conv3x3/1), or ``convs`` (the listed conv stages, then the ``pool`` ops)."""

    kind: str
    channels: int
    loc: Loc | None = field(default=None, compare=False)
    locs: dict[str, Loc] = field(default_factory=dict, compare=False, hash=False)
    convs: tuple[ConvStage, ...] = ()
    pool: tuple[Pool, ...] = ()


@dataclass(frozen=True)
class Block:
    """One dense block, with every per-block option resolved (overrides over the spec's defaults).

    ``compression`` belongs to the transition that follows the block (unused for the last block).
    """

    layers: int
    growth_rate: int
    bottleneck: int
    dropout: float
    compression: float
    connectivity: Connectivity
    loc: Loc | None = field(default=None, compare=False)
    locs: dict[str, Loc] = field(default_factory=dict, compare=False, hash=False)
    widths: tuple[int, ...] | None = None
    aggregate: Aggregate | None = None
    transition: Transition = Transition()


@dataclass(frozen=True)
class Head:
    """``classifier``: (``norm``: BN, act), global average pool, (``dropout``), linear to ``classes``.
    ``features`` (a backbone): no classifier; the network outputs the named feature maps ``outputs``
    (``block<b>``: block b's output; ``stage<s>``: the output of the last block of stage s)."""

    classes: int
    loc: Loc | None = field(default=None, compare=False)
    locs: dict[str, Loc] = field(default_factory=dict, compare=False, hash=False)
    norm: bool = True
    dropout: float = 0.0
    kind: str = "classifier"
    outputs: tuple[str, ...] = ()
    output_locs: tuple[Loc, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes the model's input tensor (the spec's ``preprocess:`` section).

    In order: decode, convert to ``channel_order`` (or grayscale for 1 channel), resize the shorter side to
    ``resize`` with ``interpolation`` (``None``: resize straight to ``crop``), center-crop to ``crop`` (H, W),
    divide the pixels by ``scale``, then subtract ``mean`` and divide by ``std`` per channel.

    Defaults: ImageNet-style specs (``stem: imagenet``) get torchvision's evaluation transform (resize 256,
    center-crop 224 for a 224 input, ImageNet mean/std); other specs get a plain resize to the input size,
    ``[0, 1]`` pixels and, with 3 channels, the ImageNet mean/std.
    """

    resize: int | None
    crop: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str = "rgb"
    scale: float = 255.0
    interpolation: str = "bilinear"
    loc: Loc | None = field(default=None, compare=False)
    locs: dict[str, Loc] = field(default_factory=dict, compare=False, hash=False)

    def as_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready dict (the form the graph and the ONNX metadata carry)."""
        return {
            "resize": self.resize,
            "crop": list(self.crop),
            "mean": list(self.mean),
            "std": list(self.std),
            "channel_order": self.channel_order,
            "scale": self.scale,
            "interpolation": self.interpolation,
        }


@dataclass(frozen=True)
class Spec:
    """A validated model spec. ``locs`` maps each top-level key to where it was written."""

    name: str
    input_channels: int
    input_size: tuple[int, int]
    growth_rate: int
    bottleneck: int
    compression: float
    dropout: float
    stem: Stem
    blocks: tuple[Block, ...]
    head: Head
    connectivity: Connectivity
    preprocess: Preprocess | None = None  # None only for a hand-made Spec; load_spec always fills it
    path: str = "<string>"
    loc: Loc | None = field(default=None, compare=False)
    locs: dict[str, Loc] = field(default_factory=dict, compare=False, hash=False)
    activation: str = "relu"
    layer: LayerTemplate = LayerTemplate()
    # module-name templates by role (NAME_ROLES); empty: torchvision's names
    names: dict[str, str] = field(default_factory=dict, hash=False)
    name_locs: dict[str, Loc] = field(default_factory=dict, compare=False, hash=False)

    def loc_of(self, key: str) -> Loc:
        """Where ``key`` was written, or the spec file itself when it was defaulted."""
        return self.locs.get(key) or self.loc or Loc(self.path)


# ---------------------------------------------------------------------------------------------------------
# YAML -> located values


@dataclass
class _Val:
    """A YAML value with the location of the value and (inside a mapping) of its key."""

    value: Any  # scalar, list[_Val] or dict[str, _Val]
    loc: Loc
    key_loc: Loc | None = None

    @property
    def where(self) -> Loc:
        return self.loc


def _mark_loc(file: str, mark: Any) -> Loc:
    if mark is None:
        return Loc(file)
    return Loc(file, mark.line + 1, mark.column + 1)


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Converter:
    """Located values from a composed YAML node graph, with PyYAML's constructors only for scalars.

    Aliases are expanded here, not by PyYAML, and every value reached (an aliased subtree once per use, every
    pair a merge key brings in) counts against ``LIMITS["yaml_nodes"]``: that count is what bounds the
    "billion laughs" and merge-key expansions, whatever the PyYAML version does about them.
    """

    def __init__(self, file: str) -> None:
        self.file = file
        self.count = 0
        self.constructor = yaml.constructor.SafeConstructor()
        # id(mapping node) -> its pairs with "<<" merged in (merged first, written last); None while in progress
        self.flattened: dict[int, list[tuple[yaml.Node, yaml.Node]] | None] = {}

    def _charge(self, where: yaml.Node, depth: int) -> None:
        """Count one value reached at ``depth``; ``where`` is what the error points at when over the limits."""
        self.count += 1
        if self.count > LIMITS["yaml_nodes"] or depth > LIMITS["yaml_depth"]:
            raise SpecError(
                "the YAML document is too large or too deeply nested",
                loc=_mark_loc(self.file, where.start_mark),
                hint="a spec is a short document; check for runaway anchors/aliases",
            )

    def _merge_error(self, found: yaml.Node, expected: str) -> SpecError:
        return SpecError(
            f"invalid YAML: expected {expected} for merging, but found {found.id}",
            loc=_mark_loc(self.file, found.start_mark),
            hint="check the indentation and quoting",
        )

    def _pairs(self, node: yaml.MappingNode, depth: int) -> list[tuple[yaml.Node, yaml.Node]]:
        """``node``'s pairs with merge keys (``<<: *base`` or ``<<: [*a, *b]``) resolved as YAML 1.1 says:
        a key written in the mapping wins over a merged one, an earlier merged mapping over a later one."""
        key = id(node)
        if key in self.flattened:
            done = self.flattened[key]
            if done is None:
                raise SpecError(
                    "a merge key ('<<') includes the mapping it is part of",
                    loc=_mark_loc(self.file, node.start_mark),
                    hint="merge a separate anchored mapping",
                )
            return done
        self.flattened[key] = None
        merged: dict[object, tuple[yaml.Node, yaml.Node]] = {}
        written: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                written.append((key_node, value_node))
                continue
            if isinstance(value_node, yaml.MappingNode):
                sources = [value_node]
            elif isinstance(value_node, yaml.SequenceNode):
                sources = value_node.value
                for source in sources:
                    if not isinstance(source, yaml.MappingNode):
                        raise self._merge_error(source, "a mapping")
            else:
                raise self._merge_error(value_node, "a mapping or list of mappings")
            for source in sources:  # charged at the merge key: an alias carries no mark of where it is used
                self._charge(key_node, depth + 1)
                _check_tag(self.file, source)  # a merged mapping is read through here only
                for pair in self._pairs(source, depth + 1):
                    self._charge(key_node, depth + 1)
                    name = pair[0].value if isinstance(pair[0], yaml.ScalarNode) else id(pair[0])
                    merged.setdefault((pair[0].tag, name), pair)
        names = {(k.tag, k.value) for k, _ in written if isinstance(k, yaml.ScalarNode)}
        pairs = [pair for name, pair in merged.items() if name not in names] + written
        self.flattened[key] = pairs
        return pairs

    def convert(self, node: yaml.Node, depth: int = 0) -> _Val:
        self._charge(node, depth)
        loc = _mark_loc(self.file, node.start_mark)
        _check_tag(self.file, node)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, _Val] = {}
            for key_node, value_node in self._pairs(node, depth):
                key_loc = _mark_loc(self.file, key_node.start_mark)
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                    raise SpecError(
                        f"mapping keys must be plain names, got {key_node.value!r}"
                        if isinstance(key_node, yaml.ScalarNode)
                        else "mapping keys must be plain names",
                        loc=key_loc,
                        hint="write keys such as growth_rate, blocks, stem",
                    )
                key = key_node.value
                if key in out:  # merged pairs never repeat a name, nor one written here: two written keys
                    first = out[key].key_loc
                    raise SpecError(
                        f"duplicate key '{key}'",
                        loc=key_loc,
                        hint=f"'{key}' is already set at line {first.line if first else '?'}; keep one",
                    )
                val = self.convert(value_node, depth + 1)
                val.key_loc = key_loc
                out[key] = val
            return _Val(out, loc)
        if isinstance(node, yaml.SequenceNode):
            return _Val([self.convert(item, depth + 1) for item in node.value], loc)
        return _Val(self._scalar(node, loc), loc)

    def _scalar(self, node: yaml.Node, loc: Loc) -> Any:
        try:
            return self.constructor.construct_object(node)
        except yaml.MarkedYAMLError as exc:
            raise _yaml_error(self.file, exc) from None
        # PyYAML's scalar constructors assume a well-formed value once a tag is explicit: "!!bool maybe" is a
        # KeyError, "!!int ''" an IndexError, "!!timestamp x" an AttributeError
        except (ValueError, TypeError, OverflowError, KeyError, IndexError, AttributeError) as exc:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            text = str(node.value)
            if tag == "!!int" and sum(ch.isdigit() for ch in text) > 100:
                raise SpecError(
                    f"an integer of {sum(ch.isdigit() for ch in text)} digits",
                    loc=loc,
                    hint="is this a typo? numbers in a spec are small",
                ) from None
            shown = text if len(text) <= 40 else text[:37] + "..."
            detail = f" ({exc})" if isinstance(exc, ValueError) and len(str(exc)) <= 80 else ""
            raise SpecError(
                f"cannot read {shown!r} as {tag}{detail}",
                loc=loc,
                hint=f"write a valid {tag} value, or quote it to keep it as text",
            ) from None


_COLLECTION_TAGS = {yaml.MappingNode: "tag:yaml.org,2002:map", yaml.SequenceNode: "tag:yaml.org,2002:seq"}
_SCALAR_TAGS = {
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "timestamp", "binary")
}


def _check_tag(file: str, node: yaml.Node) -> None:
    # yaml.compose keeps explicit tags on collections (``!!python/object/apply:os.system [...]``) and nothing
    # constructs them, so they are refused here rather than read as plain lists; a collection tag on a scalar
    # (``!!map x``) or a tag that builds something a spec has no use for (``!!set``, ``!!omap``) likewise.
    allowed = _COLLECTION_TAGS.get(type(node))
    ok = node.tag == allowed if allowed else node.tag in _SCALAR_TAGS
    if not ok:
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise SpecError(
            f"unsupported YAML tag {tag}",
            loc=_mark_loc(file, node.start_mark),
            hint="only plain YAML (safe tags) is accepted",
        )


def _yaml_error(file: str, exc: yaml.MarkedYAMLError) -> SpecError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "invalid YAML"
    if (
        exc.context and exc.problem
    ):  # PyYAML's contexts read "while scanning …" (after) or "expected …" (before)
        problem = (
            f"{problem} {exc.context}" if exc.context.startswith("while") else f"{exc.context}, {problem}"
        )
        start = exc.context_mark
        if (
            exc.context.startswith("while")
            and start is not None
            and mark is not None
            and start.line != mark.line
        ):
            problem += f" that starts at {start.line + 1}:{start.column + 1}"  # e.g. the unclosed bracket
    return SpecError(
        f"invalid YAML: {problem}", loc=_mark_loc(file, mark), hint="check the indentation and quoting"
    )


def _reader_error(file: str, text: str, exc: yaml.reader.ReaderError) -> SpecError:
    before = text[: exc.position]
    line, col = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
    code = ord(exc.character) if isinstance(exc.character, str) else int(exc.character)
    return SpecError(
        f"invalid YAML: unacceptable character #x{code:04x}: {exc.reason}",
        loc=Loc(file, line, col),
        hint="remove the control character",
    )


class _TooDeep(yaml.MarkedYAMLError):
    pass


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses deep nesting before Python's recursion limit does.

    PyYAML's scanner and parser keep explicit stacks, but its composer recurses once per nesting level, so 3000
    ``[`` in a row would end in a RecursionError; here the document is refused at ``LIMITS["yaml_depth"]``.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        self.depth += 1
        try:
            if self.depth > LIMITS["yaml_depth"]:
                raise _TooDeep(problem="too deeply nested", problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self.depth -= 1


def _compose(text: str) -> yaml.Node | None:
    loader = _SpecLoader(text)
    try:
        return loader.get_single_node()  # type: ignore[no-any-return]
    finally:
        loader.dispose()


def _parse_text(text: str, file: str) -> _Val:
    try:
        node = _compose(text)
    except _TooDeep as exc:
        raise SpecError(
            "the YAML document is too large or too deeply nested",
            loc=_mark_loc(file, exc.problem_mark),
            hint=f"a spec nests at most {LIMITS['yaml_depth']} levels",
        ) from None
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(file, exc) from None
    except yaml.reader.ReaderError as exc:
        raise _reader_error(file, text, exc) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {' '.join(str(exc).split())}", loc=Loc(file)) from None
    if node is None:
        raise SpecError(
            "the spec is empty", loc=Loc(file, 1, 1), hint="a spec is a mapping with at least 'blocks'"
        )
    root = _Converter(file).convert(node)
    if not isinstance(root.value, dict):
        raise SpecError(
            f"the spec must be a mapping of keys, got a {_type_name(root.value)}",
            loc=root.loc,
            hint="start with 'name:', 'growth_rate:', 'blocks:' …",
        )
    return root


def _read_file(path: Path, display: str, extends: _Val | None = None) -> str:
    """The text of a spec file; reading errors point at the file, or at the ``extends`` line naming it."""
    try:
        data = read_regular(
            path,
            limit=LIMITS["file_bytes"],
            what="spec file",
            error=SpecError,
            loc=Loc(display) if extends is None else extends.loc,
            missing_hint="check the path to the spec",
            too_large_hint="a spec is a short document",
        )
    except SpecError as exc:
        if extends is None:
            raise
        named = extends.value if len(extends.value) <= 60 else extends.value[:57] + "..."
        raise SpecError(f"'extends' {named!r}: {exc.message}", loc=exc.loc, hint=exc.hint) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        col = len(data[line_start : exc.start].decode("utf-8", errors="replace")) + 1
        raise SpecError(
            f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x})",
            loc=Loc(display, line, col),
            hint="save the spec as UTF-8",
        ) from None


# ---------------------------------------------------------------------------------------------------------
# extends: merge a base under the overrides


def _merge(base: _Val, over: _Val) -> _Val:
    if isinstance(base.value, dict) and isinstance(over.value, dict):
        merged = dict(base.value)
        for key, val in over.value.items():
            merged[key] = _merge(base.value[key], val) if key in base.value else val
        return _Val(merged, over.loc, over.key_loc)
    return over


def _load_tree(path: Path, display: str, chain: tuple[str, ...], ref: _Val | None = None) -> _Val:
    text = _read_file(path, display, ref)
    root = _parse_text(text, display)
    extends = root.value.pop("extends", None)
    if extends is None:
        return root
    if not isinstance(extends.value, str) or not extends.value.strip():
        raise SpecError(
            "'extends' must be a relative path to another spec", loc=extends.loc, hint="extends: base.yaml"
        )
    if "\0" in extends.value:
        raise SpecError("'extends' contains a NUL byte", loc=extends.loc, hint="extends: base.yaml")
    if os.path.isabs(extends.value):
        raise SpecError(
            f"'extends' must be a path relative to this spec, got the absolute path {extends.value!r}",
            loc=extends.loc,
            hint="write it relative to the folder of this file",
        )
    base_path = path.parent / extends.value
    key = os.path.realpath(base_path)  # a symlink loop is left unresolved here and refused when read
    if key in chain:
        raise SpecError(
            f"'extends' cycle: {' -> '.join(Path(c).name for c in (*chain, key))}",
            loc=extends.loc,
            hint="a spec cannot extend itself, directly or through others",
        )
    if len(chain) >= LIMITS["extends_depth"]:
        raise SpecError("'extends' chain is too deep", loc=extends.loc)
    try:
        os.lstat(base_path)
    except FileNotFoundError:
        raise SpecError(
            f"'extends' names a file that does not exist: {extends.value}",
            loc=extends.loc,
            hint=f"looked for {key}",
        ) from None
    except OSError:
        pass  # reading it names the reason (a name too long, a folder that is a file, no permission)
    base_display = os.path.relpath(key) if not os.path.isabs(display) else key
    base = _load_tree(Path(key), base_display, (*chain, key), extends)
    merged = _merge(base, root)
    if "name" not in root.value:  # a derived spec is named after its own file unless it says otherwise
        merged.value.pop("name", None)
    return merged


# ---------------------------------------------------------------------------------------------------------
# validation


def _type_name(value: Any) -> str:
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list):
        return "list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return type(value).__name__


def _unknown_keys(mapping: dict[str, _Val], allowed: tuple[str, ...], where: str) -> None:
    for key, val in mapping.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(allowed)}"
            raise SpecError(f"unknown key '{key}' in {where}", loc=val.key_loc or val.loc, hint=hint)


def _height_width(val: _Val, what: str, height: str, width: str) -> tuple[int, int]:
    """A size given as one integer (square) or ``[height, width]``; ``what`` names it in errors."""
    if isinstance(val.value, list):
        if len(val.value) != 2:
            raise SpecError(f"{what} must be one integer or [height, width]", loc=val.loc)
        return _int(val.value[0], height, limit="size"), _int(val.value[1], width, limit="size")
    side = _int(val, what, limit="size")
    return side, side


def _int(val: _Val, what: str, *, minimum: int = 1, limit: str | None = None) -> int:
    value = val.value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{what} must be an integer, got {_type_name(value)} {value!r}", loc=val.loc)
    if isinstance(value, float) or not isinstance(value, int):
        raise SpecError(
            f"{what} must be an integer, got {value!r}", loc=val.loc, hint=f"write {what} without a fraction"
        )
    if value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise SpecError(f"{what} must be {kind}, got {value}", loc=val.loc)
    if limit is not None and value > LIMITS[limit]:
        raise SpecError(
            f"{what} of {value} is too large (the limit is {LIMITS[limit]})",
            loc=val.loc,
            hint="is this a typo? sizes this large cannot be built",
        )
    return value


def _float(val: _Val, what: str, low: float, high: float, *, low_open: bool, high_open: bool) -> float:
    value = val.value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{what} must be a number, got {_type_name(value)} {value!r}", loc=val.loc)
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if isinstance(value, int) and abs(value) > 2**64:  # float() of a 400-digit integer overflows
        raise SpecError(
            f"{what} must be in {interval}, got an integer of {len(str(abs(value)))} digits", loc=val.loc
        )
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if math.isnan(value) or too_low or too_high:
        raise SpecError(f"{what} must be in {interval}, got {value:g}", loc=val.loc)
    return value


def _mapping(val: _Val, what: str) -> dict[str, _Val]:
    if not isinstance(val.value, dict):
        raise SpecError(f"{what} must be a mapping, got {_type_name(val.value)}", loc=val.loc)
    return val.value


def _choice(val: _Val, what: str, choices: tuple[str, ...]) -> str:
    value = val.value
    if not isinstance(value, str) or value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"one of: {', '.join(choices)}"
        got = f"a {_type_name(value)}" if isinstance(value, list | dict) else repr(value)
        raise SpecError(f"{what} must be one of {', '.join(choices)}, got {got}", loc=val.loc, hint=hint)
    return value


def _connectivity(val: _Val, what: str) -> Connectivity:
    if isinstance(val.value, str):
        kind = _choice(val, f"{what}", CONNECTIVITY_KINDS)
        if kind == "window":
            raise SpecError(
                "window connectivity needs a size", loc=val.loc, hint="connectivity: {kind: window, size: 4}"
            )
        if kind == "harmonic":
            raise SpecError(
                "harmonic connectivity needs a width multiplier",
                loc=val.loc,
                hint="connectivity: {kind: harmonic, multiplier: 1.7}",
            )
        return Connectivity(kind, None, None, val.loc)
    mapping = _mapping(val, what)
    _unknown_keys(mapping, ("kind", "size", "multiplier"), what)
    if "kind" not in mapping:
        raise SpecError(
            f"{what} needs a 'kind'", loc=val.loc, hint=f"one of: {', '.join(CONNECTIVITY_KINDS)}"
        )
    kind = _choice(mapping["kind"], f"{what}.kind", CONNECTIVITY_KINDS)
    size = multiplier = None
    if kind == "window":
        if "size" not in mapping:
            raise SpecError(
                "window connectivity needs a size", loc=val.loc, hint="connectivity: {kind: window, size: 4}"
            )
        size = _int(mapping["size"], f"{what}.size", limit="window")
    elif "size" in mapping:
        raise SpecError(
            f"'size' applies only to window connectivity, not '{kind}'", loc=mapping["size"].key_loc
        )
    if kind == "harmonic":
        if "multiplier" not in mapping:
            raise SpecError(
                "harmonic connectivity needs a width multiplier",
                loc=val.loc,
                hint="connectivity: {kind: harmonic, multiplier: 1.7}",
            )
        multiplier = _float(
            mapping["multiplier"], f"{what}.multiplier", 1.0, 8.0, low_open=False, high_open=False
        )
    elif "multiplier" in mapping:
        raise SpecError(
            f"'multiplier' applies only to harmonic connectivity, not '{kind}'",
            loc=mapping["multiplier"].key_loc,
        )
    return Connectivity(kind, size, multiplier, val.loc)


def _bool(val: _Val, what: str) -> bool:
    if not isinstance(val.value, bool):
        raise SpecError(
            f"{what} must be true or false, got {_type_name(val.value)} {val.value!r}", loc=val.loc
        )
    return val.value


def _pool(val: _Val, what: str) -> Pool:
    if isinstance(val.value, str):
        kind = _choice(val, what, POOL_KINDS)
        short = POOL_SHORTHANDS[kind]
        return Pool(short.kind, short.kernel, short.stride, short.padding, short.ceil_mode, val.loc)
    mapping = _mapping(val, what)
    _unknown_keys(mapping, ("kind", "kernel", "stride", "padding", "ceil_mode"), what)
    if "kind" not in mapping:
        raise SpecError(f"{what} needs a 'kind'", loc=val.loc, hint=f"one of: {', '.join(POOL_KINDS)}")
    kind = _choice(mapping["kind"], f"{what}.kind", POOL_KINDS)
    short = POOL_SHORTHANDS[kind]
    kernel = (
        _int(mapping["kernel"], f"{what}.kernel", limit="kernel") if "kernel" in mapping else short.kernel
    )
    stride = (
        _int(mapping["stride"], f"{what}.stride", limit="stride") if "stride" in mapping else short.stride
    )
    if "padding" in mapping:
        padding = _int(mapping["padding"], f"{what}.padding", minimum=0, limit="kernel")
        if kind == "blur":
            raise SpecError(
                "a blur pool pads by (kernel - 1) // 2 (reflect); 'padding' cannot be set",
                loc=mapping["padding"].key_loc,
            )
    else:  # a mapping's max / avg pool is unpadded unless it says so; a depthwise conv keeps "same" padding
        padding = (kernel - 1) // 2 if kind in ("blur", "dwconv") else 0
    if 2 * padding > kernel:
        raise SpecError(
            f"{what}.padding {padding} is more than half the kernel {kernel}",
            loc=mapping["padding"].loc if "padding" in mapping else val.loc,
            hint="PyTorch requires padding <= kernel / 2",
        )
    ceil_mode = False
    if "ceil_mode" in mapping:
        ceil_mode = _bool(mapping["ceil_mode"], f"{what}.ceil_mode")
        if ceil_mode and kind not in ("max", "avg"):
            raise SpecError(
                f"ceil_mode applies to max and avg pooling, not '{kind}'", loc=mapping["ceil_mode"].key_loc
            )
    return Pool(kind, kernel, stride, padding, ceil_mode, val.loc)


def _pools(val: _Val, what: str) -> tuple[Pool, ...]:
    """``none``, one pool (a shorthand or a mapping) or a list of them."""
    if val.value == "none" or val.value is None:
        return ()
    if isinstance(val.value, list):
        if len(val.value) > LIMITS["pools"]:
            raise SpecError(f"{what} lists more than {LIMITS['pools']} ops", loc=val.loc)
        return tuple(_pool(item, f"{what}[{i}]") for i, item in enumerate(val.value))
    return (_pool(val, what),)


def _conv_stage(val: _Val, what: str) -> ConvStage:
    mapping = _mapping(val, what)
    _unknown_keys(mapping, ("channels", "kernel", "stride"), what)
    if "channels" not in mapping:
        raise SpecError(f"{what} needs 'channels'", loc=val.loc, hint="{channels: 32, kernel: 3, stride: 2}")
    return ConvStage(
        _int(mapping["channels"], f"{what}.channels", limit="channels"),
        _int(mapping["kernel"], f"{what}.kernel", limit="kernel") if "kernel" in mapping else 3,
        _int(mapping["stride"], f"{what}.stride", limit="stride") if "stride" in mapping else 1,
        val.loc,
    )


def _layer_template(val: _Val) -> LayerTemplate:
    mapping = _mapping(val, "layer")
    _unknown_keys(mapping, ("order", "kernel", "separable"), "layer")
    order = _choice(mapping["order"], "layer.order", LAYER_ORDERS) if "order" in mapping else "pre"
    kernel = _int(mapping["kernel"], "layer.kernel", limit="kernel") if "kernel" in mapping else 3
    if kernel % 2 == 0:
        raise SpecError(
            f"layer.kernel must be odd (the layer keeps the map size), got {kernel}",
            loc=mapping["kernel"].loc,
        )
    separable = _bool(mapping["separable"], "layer.separable") if "separable" in mapping else False
    if separable and order != "post":
        raise SpecError(
            "separable layers are post-activation (conv1x1-BN-act, depthwise conv-BN)",
            loc=mapping["separable"].loc,
            hint="add 'order: post' to layer",
        )
    return LayerTemplate(order, kernel, separable, val.loc)


def _transition(val: _Val, what: str, base: Transition) -> Transition:
    mapping = _mapping(val, what)
    _unknown_keys(mapping, ("conv", "pool"), what)
    conv = _choice(mapping["conv"], f"{what}.conv", ("pre", "none")) if "conv" in mapping else base.conv
    pool = _pools(mapping["pool"], f"{what}.pool") if "pool" in mapping else base.pool
    return Transition(conv, pool, val.loc)


def _aggregate(val: _Val, what: str) -> Aggregate:
    if not isinstance(val.value, dict):
        return Aggregate(_int(val, f"{what} (channels)", limit="channels"), 0.0, val.loc)
    mapping = val.value
    _unknown_keys(mapping, ("channels", "dropout"), what)
    if "channels" not in mapping:
        raise SpecError(f"{what} needs 'channels'", loc=val.loc, hint="aggregate: {channels: 256}")
    dropout = (
        _float(mapping["dropout"], f"{what}.dropout", 0.0, 1.0, low_open=False, high_open=True)
        if "dropout" in mapping
        else 0.0
    )
    return Aggregate(_int(mapping["channels"], f"{what}.channels", limit="channels"), dropout, val.loc)


def _widths(val: _Val, what: str) -> tuple[int, ...]:
    if not isinstance(val.value, list) or not val.value:
        raise SpecError(
            f"{what} must be a list of per-layer widths, got {_type_name(val.value)}",
            loc=val.loc,
            hint="widths: [16, 24, 16, 40]",
        )
    return tuple(_int(item, f"{what}[{i}]", limit="growth_rate") for i, item in enumerate(val.value))


_FEATURE_NAME = re.compile(r"^(block|stage)([1-9][0-9]*)$")


def _feature_outputs(
    head_map: dict[str, _Val], head: _Val, blocks: int
) -> tuple[tuple[str, ...], tuple[Loc, ...]]:
    here = head_map["kind"].loc.file
    for key in ("classes", "norm", "dropout"):
        # a key merged in from an extended classifier spec is dropped; one written beside 'kind' is a mistake
        if key in head_map and head_map[key].loc.file == here:
            raise SpecError(
                f"head.{key} applies to a classifier head, not a features head",
                loc=head_map[key].key_loc,
                hint="a features head outputs feature maps; drop the key",
            )
    if "outputs" not in head_map:
        raise SpecError(
            "a features head needs 'outputs'",
            loc=head.loc,
            hint="head: {kind: features, outputs: [block2, block3]}",
        )
    listed = head_map["outputs"]
    if not isinstance(listed.value, list) or not listed.value:
        raise SpecError(
            "head.outputs must be a non-empty list of feature names",
            loc=listed.loc,
            hint="outputs: [block2, block3, block4] (or stage<s>)",
        )
    names: list[str] = []
    locs: list[Loc] = []
    for i, item in enumerate(listed.value):
        value = item.value
        match = _FEATURE_NAME.match(value) if isinstance(value, str) else None
        if match is None:
            raise SpecError(
                f"head.outputs[{i}] must be block<b> or stage<s>, got {value!r}",
                loc=item.loc,
                hint="e.g. block3: the output of the third block",
            )
        if value in names:
            raise SpecError(f"head.outputs names {value} twice", loc=item.loc)
        if match.group(1) == "block" and int(match.group(2)) > blocks:
            raise SpecError(
                f"head.outputs[{i}] names {value}, but the network has {blocks} blocks", loc=item.loc
            )
        names.append(value)
        locs.append(item.loc)
    return tuple(names), tuple(locs)


def _names(val: _Val) -> tuple[dict[str, str], dict[str, Loc]]:
    mapping = _mapping(val, "names")
    _unknown_keys(mapping, tuple(NAME_ROLES), "names")
    names, locs = {}, {}
    for role, item in mapping.items():
        template = item.value
        if not isinstance(template, str) or not template.strip():
            raise SpecError(f"names.{role} must be a name template (a string)", loc=item.loc)
        try:
            template.format(**{var: 0 for var in NAME_ROLES[role]})
        except (KeyError, IndexError) as exc:
            raise SpecError(
                f"names.{role} uses {{{exc.args[0]}}}, which is not defined for this role",
                loc=item.loc,
                hint=f"the variables of {role}: {', '.join('{' + v + '}' for v in NAME_ROLES[role])}",
            ) from None
        except ValueError as exc:
            raise SpecError(f"names.{role} is not a valid template: {exc}", loc=item.loc) from None
        names[role], locs[role] = template, item.loc
    return names, locs


_TOP_KEYS = (
    "name",
    "input",
    "growth_rate",
    "bottleneck",
    "compression",
    "dropout",
    "stem",
    "blocks",
    "connectivity",
    "head",
    "preprocess",
    "extends",
    "activation",
    "layer",
    "transition",
    "names",
)
_BLOCK_KEYS = (
    "layers",
    "growth_rate",
    "bottleneck",
    "dropout",
    "compression",
    "connectivity",
    "widths",
    "aggregate",
    "transition",
)

# the options a block mapping may override: key -> reader(value, name for messages)
_OPTION_READERS: dict[str, Callable[[_Val, str], Any]] = {
    "growth_rate": lambda v, what: _int(v, what, limit="growth_rate"),
    "bottleneck": lambda v, what: _int(v, what, minimum=0, limit="bottleneck"),
    "dropout": lambda v, what: _float(v, what, 0.0, 1.0, low_open=False, high_open=True),
    "compression": lambda v, what: _float(v, what, 0.0, 1.0, low_open=True, high_open=False),
    "connectivity": _connectivity,
}


def _stem(top: dict[str, _Val], growth_rate: int, file_loc: Loc, locs: dict[str, Loc]) -> Stem:
    """The ``stem:`` section: a kind (imagenet, cifar) with channels, or a list of conv stages and pools."""
    stem_kind, stem_channels, stem_loc, stem_locs = "imagenet", 2 * growth_rate, file_loc, {}
    convs: tuple[ConvStage, ...] = ()
    stem_pool: tuple[Pool, ...] = ()
    if "stem" in top:
        stem_map = _mapping(top["stem"], "stem")
        _unknown_keys(stem_map, ("kind", "channels", "convs", "pool"), "stem")
        stem_loc = top["stem"].loc
        stem_locs = {k: v.loc for k, v in stem_map.items()}
        if "convs" in stem_map:
            for key in ("kind", "channels"):
                if key in stem_map:
                    raise SpecError(
                        f"stem.{key} cannot be combined with stem.convs",
                        loc=stem_map[key].key_loc,
                        hint="the last conv stage gives the stem's channels",
                    )
            listed = stem_map["convs"]
            if not isinstance(listed.value, list) or not listed.value:
                raise SpecError(
                    "stem.convs must be a non-empty list of conv stages",
                    loc=listed.loc,
                    hint="convs: [{channels: 32, stride: 2}, {channels: 64}]",
                )
            if len(listed.value) > LIMITS["stem_convs"]:
                raise SpecError(f"stem.convs lists more than {LIMITS['stem_convs']} stages", loc=listed.loc)
            convs = tuple(_conv_stage(item, f"stem.convs[{i}]") for i, item in enumerate(listed.value))
            stem_kind, stem_channels = "convs", convs[-1].channels
            if "pool" in stem_map:
                stem_pool = _pools(stem_map["pool"], "stem.pool")
        else:
            if "pool" in stem_map:
                raise SpecError(
                    "stem.pool applies to a stem of conv stages (stem.convs)", loc=stem_map["pool"].key_loc
                )
            if "kind" in stem_map:
                stem_kind = _choice(stem_map["kind"], "stem.kind", STEM_KINDS)
            if "channels" in stem_map:
                stem_channels = _int(stem_map["channels"], "stem.channels", limit="channels")
    if stem_channels > LIMITS["channels"]:
        raise SpecError(
            f"stem channels of {stem_channels} is too large", loc=locs.get("growth_rate", file_loc)
        )
    return Stem(stem_kind, stem_channels, stem_loc, stem_locs, convs, stem_pool)


def _head(top: dict[str, _Val], blocks: int, file_loc: Loc) -> Head:
    """The ``head:`` section: a classifier (classes, norm, dropout) or a features head (named outputs)."""
    head_classes, head_loc, head_locs, head_norm, head_dropout = 1000, file_loc, {}, True, 0.0
    head_kind = "classifier"
    outputs: tuple[str, ...] = ()
    output_locs: tuple[Loc, ...] = ()
    if "head" in top:
        head_map = _mapping(top["head"], "head")
        _unknown_keys(head_map, ("kind", "classes", "norm", "dropout", "outputs"), "head")
        head_loc = top["head"].loc
        head_locs = {k: v.loc for k, v in head_map.items()}
        if "kind" in head_map:
            head_kind = _choice(head_map["kind"], "head.kind", HEAD_KINDS)
        if head_kind == "features":
            outputs, output_locs = _feature_outputs(head_map, top["head"], blocks)
            head_map = {}
            head_classes = 0
        elif "outputs" in head_map:
            raise SpecError(
                "head.outputs applies to a features head",
                loc=head_map["outputs"].key_loc,
                hint="head: {kind: features, outputs: [block2, block3]}",
            )
        if "classes" in head_map:
            head_classes = _int(head_map["classes"], "head.classes", limit="classes")
        if "norm" in head_map:
            head_norm = _bool(head_map["norm"], "head.norm")
        if "dropout" in head_map:
            head_dropout = _float(
                head_map["dropout"], "head.dropout", 0.0, 1.0, low_open=False, high_open=True
            )
    return Head(head_classes, head_loc, head_locs, head_norm, head_dropout, head_kind, outputs, output_locs)


def _block_options(
    item: _Val, what: str, opts: dict[str, Any], layer: LayerTemplate
) -> tuple[int, dict[str, Loc]]:
    """A block written as a mapping: its layer count and locations; the options it sets go into ``opts``."""
    mapping = item.value
    _unknown_keys(mapping, _BLOCK_KEYS, what)
    block_locs = {k: v.loc for k, v in mapping.items()}
    if "layers" not in mapping:
        raise SpecError(f"{what} needs 'layers'", loc=item.loc, hint="{layers: 6, growth_rate: 32}")
    layers = _int(mapping["layers"], f"{what}.layers", limit="layers")
    for key, read in _OPTION_READERS.items():
        if key in mapping:
            opts[key] = read(mapping[key], f"{what}.{key}")
    if "widths" in mapping:
        opts["widths"] = _widths(mapping["widths"], f"{what}.widths")
        if len(opts["widths"]) != layers:
            raise SpecError(
                f"{what}.widths lists {len(opts['widths'])} widths for {layers} layers",
                loc=mapping["widths"].loc,
                hint="give one width per layer",
            )
    if "aggregate" in mapping:
        opts["aggregate"] = _aggregate(mapping["aggregate"], f"{what}.aggregate")
    if "transition" in mapping:
        opts["transition"] = _transition(mapping["transition"], f"{what}.transition", opts["transition"])
    if opts["bottleneck"] and layer.separable:
        raise SpecError(
            "separable layers have no bottleneck",
            loc=mapping["bottleneck"].loc if "bottleneck" in mapping else item.loc,
            hint="set 'bottleneck: 0'",
        )
    return layers, block_locs


def _validate(root: _Val, path: str) -> Spec:
    top = root.value
    _unknown_keys(top, _TOP_KEYS, "the spec")
    file_loc = Loc(path)
    locs = {key: (val.key_loc or val.loc) for key, val in top.items()}

    name = Path(path).stem if path not in ("<string>", "") else "model"
    if "name" in top:
        if not isinstance(top["name"].value, str) or not top["name"].value.strip():
            raise SpecError("name must be a non-empty string", loc=top["name"].loc)
        name = top["name"].value.strip()
        if any(ch in name for ch in "/\\\0") or name in (".", ".."):
            raise SpecError(f"name {name!r} cannot be used as a folder name", loc=top["name"].loc)

    channels, size = 3, (224, 224)
    if "input" in top:
        inp = _mapping(top["input"], "input")
        _unknown_keys(inp, ("channels", "size"), "input")
        if "channels" in inp:
            channels = _int(inp["channels"], "input.channels", limit="channels")
        if "size" in inp:
            size = _height_width(inp["size"], "input.size", "input height", "input width")

    if "growth_rate" not in top:
        raise SpecError(
            "missing 'growth_rate'", loc=root.loc, hint="add e.g. 'growth_rate: 32' (the paper's k)"
        )
    growth_rate = _int(top["growth_rate"], "growth_rate", limit="growth_rate")
    bottleneck = (
        _int(top["bottleneck"], "bottleneck", minimum=0, limit="bottleneck") if "bottleneck" in top else 4
    )
    compression = (
        _float(top["compression"], "compression", 0.0, 1.0, low_open=True, high_open=False)
        if "compression" in top
        else 0.5
    )
    dropout = (
        _float(top["dropout"], "dropout", 0.0, 1.0, low_open=False, high_open=True)
        if "dropout" in top
        else 0.0
    )
    connectivity = (
        _connectivity(top["connectivity"], "connectivity") if "connectivity" in top else Connectivity()
    )

    activation = _choice(top["activation"], "activation", ACTIVATIONS) if "activation" in top else "relu"
    layer = _layer_template(top["layer"]) if "layer" in top else LayerTemplate()
    if layer.separable and bottleneck:
        raise SpecError(
            "separable layers have no bottleneck",
            loc=top["bottleneck"].loc if "bottleneck" in top else top["layer"].loc,
            hint="set 'bottleneck: 0'",
        )
    transition = (
        _transition(top["transition"], "transition", Transition()) if "transition" in top else Transition()
    )
    names, name_locs = _names(top["names"]) if "names" in top else ({}, {})

    stem = _stem(top, growth_rate, file_loc, locs)

    if "blocks" not in top:
        raise SpecError(
            "missing 'blocks'", loc=root.loc, hint="add e.g. 'blocks: [6, 12, 24, 16]' (layers per block)"
        )
    blocks_val = top["blocks"]
    if not isinstance(blocks_val.value, list):
        raise SpecError(
            f"blocks must be a list, got {_type_name(blocks_val.value)}",
            loc=blocks_val.loc,
            hint="blocks: [6, 12, 24, 16]",
        )
    if not blocks_val.value:
        raise SpecError(
            "blocks is empty", loc=blocks_val.loc, hint="a network needs at least one dense block"
        )
    if len(blocks_val.value) > LIMITS["blocks"]:
        raise SpecError(
            f"{len(blocks_val.value)} blocks is too many (the limit is {LIMITS['blocks']})",
            loc=blocks_val.loc,
        )
    blocks: list[Block] = []
    total_layers = total_connections = 0
    for i, item in enumerate(blocks_val.value, start=1):
        what = f"blocks[{i - 1}]"
        block_locs: dict[str, Loc] = {}
        opts: dict[str, Any] = {
            "growth_rate": growth_rate,
            "bottleneck": bottleneck,
            "dropout": dropout,
            "compression": compression,
            "connectivity": connectivity,
            "transition": transition,
        }
        if isinstance(item.value, dict):
            layers, block_locs = _block_options(item, what, opts, layer)
        else:
            layers = _int(item, f"{what} (layers)", limit="layers")
        total_layers += layers
        if total_layers > LIMITS["total_layers"]:
            raise SpecError(
                f"the network has more than {LIMITS['total_layers']} layers",
                loc=item.loc,
                hint="is this a typo? sizes this large cannot be built",
            )
        total_connections += layers * (layers + 1) // 2
        if total_connections > LIMITS["connections"]:
            raise SpecError(
                f"the network has more than {LIMITS['connections']:,} connections",
                loc=item.loc,
                hint="a dense block of L layers has L(L+1)/2 connections; use fewer layers per block",
            )
        blocks.append(Block(layers=layers, loc=item.loc, locs=block_locs, **opts))

    head = _head(top, len(blocks), file_loc)

    preprocess = _preprocess(top.get("preprocess"), stem.kind, channels, size, file_loc)

    return Spec(
        name=name,
        input_channels=channels,
        input_size=size,
        growth_rate=growth_rate,
        bottleneck=bottleneck,
        compression=compression,
        dropout=dropout,
        stem=stem,
        blocks=tuple(blocks),
        head=head,
        connectivity=connectivity,
        preprocess=preprocess,
        path=path,
        loc=root.loc,
        locs=locs,
        activation=activation,
        layer=layer,
        names=names,
        name_locs=name_locs,
    )


_PREPROCESS_KEYS = ("resize", "crop", "mean", "std", "channel_order", "scale", "interpolation")


def default_preprocess(stem_kind: str, channels: int, size: tuple[int, int]) -> Preprocess:
    """The preprocessing a spec gets when it does not say: torchvision's for ImageNet stems, a plain resize else."""
    mean = IMAGENET_MEAN if channels == 3 else (0.0,) * channels
    std = IMAGENET_STD if channels == 3 else (1.0,) * channels
    # a stem of conv stages is how the ImageNet variants (timm's deep stems, VoVNet, HarDNet) are written
    imagenet = stem_kind in ("imagenet", "convs")
    resize = math.floor(min(size) / IMAGENET_CROP_FRACTION) if imagenet else None
    return Preprocess(resize=resize, crop=size, mean=mean, std=std)


def _number_list(val: _Val, what: str, channels: int, *, positive: bool) -> tuple[float, ...]:
    items = val.value if isinstance(val.value, list) else None
    if items is None or len(items) != channels:
        got = f"{len(items)} values" if items is not None else f"a {_type_name(val.value)}"
        raise SpecError(
            f"{what} must be a list of {channels} numbers (one per input channel), got {got}",
            loc=val.loc,
            hint=f"e.g. {what.split('.')[-1]}: {list(IMAGENET_MEAN if channels == 3 else (0.5,) * channels)}",
        )
    out = []
    for item in items:
        value = item.value
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**64:
            # math.isfinite and float() of a 400-digit integer raise OverflowError
            raise SpecError(
                f"{what} must hold finite numbers, got an integer of {len(str(abs(value)))} digits",
                loc=item.loc,
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SpecError(f"{what} must hold finite numbers, got {value!r}", loc=item.loc)
        if positive and value <= 0:
            raise SpecError(f"{what} must hold positive numbers, got {value!r}", loc=item.loc)
        out.append(float(value))
    return tuple(out)


def _preprocess(
    val: _Val | None, stem_kind: str, channels: int, size: tuple[int, int], file_loc: Loc
) -> Preprocess:
    base = default_preprocess(stem_kind, channels, size)
    if val is None:
        return Preprocess(**{**base.__dict__, "loc": file_loc})
    mapping = _mapping(val, "preprocess")
    _unknown_keys(mapping, _PREPROCESS_KEYS, "preprocess")
    values: dict[str, Any] = {k: getattr(base, k) for k in _PREPROCESS_KEYS}
    if "crop" in mapping:
        cv = mapping["crop"]
        crop = _height_width(cv, "preprocess.crop", "preprocess.crop height", "preprocess.crop width")
        if crop != size:
            raise SpecError(
                f"preprocess.crop {list(crop)} differs from the input size {list(size)}",
                loc=cv.loc,
                hint="the crop is what the model takes; set input.size to it, or drop crop",
            )
    if "resize" in mapping:
        rv = mapping["resize"]
        values["resize"] = None if rv.value is None else _int(rv, "preprocess.resize", limit="size")
        if values["resize"] is not None and values["resize"] < min(size):
            raise SpecError(
                f"preprocess.resize {values['resize']} is smaller than the crop {list(size)}",
                loc=rv.loc,
                hint="resize sets the shorter side before the center crop; use at least the crop size, "
                "or null to resize straight to the crop",
            )
    if "mean" in mapping:
        values["mean"] = _number_list(mapping["mean"], "preprocess.mean", channels, positive=False)
    if "std" in mapping:
        values["std"] = _number_list(mapping["std"], "preprocess.std", channels, positive=True)
    if "channel_order" in mapping:
        values["channel_order"] = _choice(
            mapping["channel_order"], "preprocess.channel_order", CHANNEL_ORDERS
        )
        if channels != 3 and values["channel_order"] != "rgb":
            raise SpecError(
                f"preprocess.channel_order applies to 3-channel inputs; this model takes {channels}",
                loc=mapping["channel_order"].loc,
            )
    if "scale" in mapping:
        values["scale"] = _float(
            mapping["scale"], "preprocess.scale", 0.0, 1e9, low_open=True, high_open=False
        )
    if "interpolation" in mapping:
        values["interpolation"] = _choice(
            mapping["interpolation"], "preprocess.interpolation", INTERPOLATIONS
        )
    locs = {k: v.loc for k, v in mapping.items()}
    return Preprocess(**values, loc=val.loc, locs=locs)


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
