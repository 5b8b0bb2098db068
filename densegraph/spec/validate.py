"""Validation: the located YAML tree of a spec becomes a :class:`Spec`, section by section."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .._io import read_regular
from ..errors import Loc, SpecError
from .model import (
    ACTIVATIONS,
    DYNAMIC_SIZE,
    HEAD_KINDS,
    LIMITS,
    STEM_KINDS,
    Block,
    Connectivity,
    ConvStage,
    Head,
    LayerTemplate,
    Pool,
    SizeRange,
    Spec,
    Stem,
    Transition,
)
from .preprocess import _preprocess
from .reader import _Val
from .values import (
    _aggregate,
    _bool,
    _choice,
    _connectivity,
    _conv_stage,
    _feature_outputs,
    _float,
    _height_width,
    _int,
    _layer_template,
    _mapping,
    _names,
    _pools,
    _transition,
    _type_name,
    _unknown_keys,
    _widths,
)

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
    labels: tuple[str, ...] = ()
    if "head" in top:
        head_map = _mapping(top["head"], "head")
        _unknown_keys(head_map, ("kind", "classes", "norm", "dropout", "outputs", "labels"), "head")
        head_loc = top["head"].loc
        head_locs = {k: v.loc for k, v in head_map.items()}
        if "kind" in head_map:
            head_kind = _choice(head_map["kind"], "head.kind", HEAD_KINDS)
        if head_kind == "features":
            if "labels" in head_map:
                raise SpecError(
                    "head.labels names a classifier's classes; a features head has none",
                    loc=head_map["labels"].key_loc or head_map["labels"].loc,
                )
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
        if "labels" in head_map:
            labels = _labels(head_map["labels"], head_classes)
    return Head(
        head_classes, head_loc, head_locs, head_norm, head_dropout, head_kind, outputs, output_locs, labels
    )


def _labels(val: _Val, classes: int) -> tuple[str, ...]:
    """``head.labels``: a list of class names, or a file beside the spec that names it (one name a line, or a
    JSON list)."""
    where = val.loc
    if isinstance(val.value, str):
        path = Path(where.file).parent / val.value
        data = read_regular(
            path,
            limit=LIMITS["labels_bytes"],
            what="labels file",
            error=SpecError,
            loc=where,
            missing_hint=f"head.labels names {path}: a file relative to the spec's folder",
        )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SpecError(f"the labels file {val.value} is not UTF-8 text", loc=where) from None
        if text.lstrip().startswith("["):
            try:
                names = json.loads(text)
            except ValueError as exc:
                raise SpecError(f"the labels file {val.value} is not a JSON list: {exc}", loc=where) from None
        else:
            names = [line.strip() for line in text.splitlines() if line.strip()]
        what = f"the labels file {val.value}"
    elif isinstance(val.value, list):
        names = [item.value for item in val.value]
        what = "head.labels"
    else:
        raise SpecError(
            f"head.labels must be a list of class names or a file name, got {_type_name(val.value)}",
            loc=where,
            hint="labels: [cat, dog] or labels: classes.txt (one name a line, beside the spec)",
        )
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise SpecError(f"{what} must hold non-empty class names (strings)", loc=where)
    if len(names) != classes:
        raise SpecError(
            f"{what} names {len(names)} classes, the head has {classes}",
            loc=where,
            hint="one name per class, in class-index order",
        )
    return tuple(n.strip() for n in names)


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


def _name(top: dict[str, _Val], path: str) -> str:
    name = Path(path).stem if path not in ("<string>", "") else "model"
    if "name" in top:
        if not isinstance(top["name"].value, str) or not top["name"].value.strip():
            raise SpecError("name must be a non-empty string", loc=top["name"].loc)
        name = top["name"].value.strip()
        if any(ch in name for ch in "/\\\0") or name in (".", ".."):
            raise SpecError(f"name {name!r} cannot be used as a folder name", loc=top["name"].loc)
    return name


def _input(top: dict[str, _Val]) -> tuple[int, tuple[int, int], SizeRange | None]:
    """The input's channels, its (nominal) size and, for a dynamic input, its size range."""
    channels, size, size_range = 3, (224, 224), None
    if "input" in top:
        inp = _mapping(top["input"], "input")
        _unknown_keys(inp, ("channels", "size"), "input")
        if "channels" in inp:
            channels = _int(inp["channels"], "input.channels", limit="channels")
        if "size" in inp:
            if isinstance(inp["size"].value, str | dict):
                size_range = _size_range(inp["size"])
                size = size_range.opt
            else:
                size = _height_width(inp["size"], "input.size", "input height", "input width")
    return channels, size, size_range


_RANGE_HINT = "size: dynamic, or a range: size: {min: [160, 160], opt: [224, 224], max: [640, 640]}"


def _size_range(val: _Val) -> SizeRange:
    """``dynamic`` (:data:`DYNAMIC_SIZE`) or ``{min, opt, max}``, each one integer or ``[height, width]``."""
    if isinstance(val.value, str):
        if val.value != "dynamic":
            raise SpecError(
                f"input.size must be an integer, [height, width], 'dynamic' or a range, got {val.value!r}",
                loc=val.loc,
                hint=_RANGE_HINT,
            )
        return replace(DYNAMIC_SIZE, loc=val.loc)
    mapping = _mapping(val, "input.size")
    _unknown_keys(mapping, ("min", "opt", "max"), "input.size")
    for key in ("min", "opt", "max"):
        if key not in mapping:
            raise SpecError(f"the input.size range has no '{key}'", loc=val.loc, hint=_RANGE_HINT)
    sizes = {
        key: _height_width(
            mapping[key], f"input.size.{key}", f"input.size.{key} height", f"input.size.{key} width"
        )
        for key in ("min", "opt", "max")
    }
    for i, side in enumerate(("height", "width")):
        low, opt, high = (sizes[key][i] for key in ("min", "opt", "max"))
        if not low <= opt <= high:
            bad = "max" if low > high else "opt"
            raise SpecError(
                f"the input.size range must have min <= opt <= max; its {side}s are {low}, {opt}, {high}",
                loc=mapping[bad].loc,
                hint="opt is the size the model is tuned for and its costs are counted at",
            )
    return SizeRange(
        sizes["min"], sizes["opt"], sizes["max"], loc=val.loc, locs={k: v.loc for k, v in mapping.items()}
    )


def _block_defaults(root: _Val, top: dict[str, _Val]) -> dict[str, Any]:
    """The options every block takes unless its own mapping overrides them."""
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
    return {
        "growth_rate": growth_rate,
        "bottleneck": bottleneck,
        "dropout": dropout,
        "compression": compression,
        "connectivity": connectivity,
    }


def _layer(top: dict[str, _Val], bottleneck: int) -> tuple[str, LayerTemplate, Transition]:
    """The activation, the layer template and the default transition."""
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
    return activation, layer, transition


def _blocks(root: _Val, top: dict[str, _Val], defaults: dict[str, Any], layer: LayerTemplate) -> list[Block]:
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
        opts = dict(defaults)
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
    return blocks


def _validate(root: _Val, path: str) -> Spec:
    """The spec a located tree describes, its sections read in the order their errors are reported."""
    top = root.value
    _unknown_keys(top, _TOP_KEYS, "the spec")
    file_loc = Loc(path)
    locs = {key: (val.key_loc or val.loc) for key, val in top.items()}
    name = _name(top, path)
    channels, size, size_range = _input(top)
    defaults = _block_defaults(root, top)
    activation, layer, transition = _layer(top, defaults["bottleneck"])
    names, name_locs = _names(top["names"]) if "names" in top else ({}, {})
    stem = _stem(top, defaults["growth_rate"], file_loc, locs)
    blocks = _blocks(root, top, {**defaults, "transition": transition}, layer)
    head = _head(top, len(blocks), file_loc)
    preprocess = _preprocess(top.get("preprocess"), stem.kind, channels, size, file_loc)
    return Spec(
        name=name,
        input_channels=channels,
        input_size=size,
        growth_rate=defaults["growth_rate"],
        bottleneck=defaults["bottleneck"],
        compression=defaults["compression"],
        dropout=defaults["dropout"],
        stem=stem,
        blocks=tuple(blocks),
        head=head,
        connectivity=defaults["connectivity"],
        preprocess=preprocess,
        path=path,
        loc=root.loc,
        locs=locs,
        activation=activation,
        layer=layer,
        names=names,
        name_locs=name_locs,
        input_range=size_range,
    )
