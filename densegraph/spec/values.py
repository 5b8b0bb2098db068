"""Typed readers of spec values: each checks one value and raises a located :class:`SpecError` with a hint."""

from __future__ import annotations

import difflib
import math
import re

from ..errors import Loc, SpecError
from .model import (
    CONNECTIVITY_KINDS,
    LAYER_ORDERS,
    LIMITS,
    NAME_ROLES,
    POOL_KINDS,
    POOL_SHORTHANDS,
    Aggregate,
    Connectivity,
    ConvStage,
    LayerTemplate,
    Pool,
    Transition,
)
from .reader import _type_name, _Val


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
