"""The YAML layer under the spec: merge keys and aliases expanded by densegraph under its own limits, nesting
refused before Python's recursion limit, every malformed scalar a located SpecError, inputs read only from
regular files up to the size limit."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from densegraph import build_graph
from densegraph._io import read_regular
from densegraph.errors import DensegraphError, Loc, SpecError
from densegraph.spec import LIMITS, load_spec, spec_from_string


def _error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        build_graph(spec_from_string(text, "s.yaml"))
    assert "\n" not in info.value.format()
    return info.value


def test_merge_keys_do_not_rely_on_pyyaml_flatten_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("flatten_mapping must not be called")

    monkeypatch.setattr(yaml.constructor.SafeConstructor, "flatten_mapping", refuse)
    spec = spec_from_string(
        "growth_rate: 12\nblocks: [&b {layers: 3, growth_rate: 24}, {<<: *b, layers: 5}]\n"
    )
    assert [(b.layers, b.growth_rate) for b in spec.blocks] == [(3, 24), (5, 24)]


def test_merge_order_is_yaml_s() -> None:
    # the "Override" case of https://yaml.org/type/merge.html: `<< : [*BIG, *LEFT, *SMALL]` with `x: 1` gives
    # r: 10 (BIG, listed before SMALL, wins), x: 1 (written wins), y: 2 (LEFT). Written with block options:
    # BIG -> layers 10, LEFT -> growth_rate 0 / bottleneck 2, SMALL -> layers 1; the written growth_rate: 1.
    text = (
        "growth_rate: 12\n"
        "blocks:\n"
        "  - &LEFT {layers: 3, growth_rate: 20, bottleneck: 2}\n"
        "  - &BIG {layers: 10}\n"
        "  - &SMALL {layers: 1, compression: 0.25}\n"
        "  - <<: [*BIG, *LEFT, *SMALL]\n"
        "    growth_rate: 1\n"
    )
    block = spec_from_string(text).blocks[3]
    assert (block.layers, block.growth_rate, block.bottleneck, block.compression) == (10, 1, 2, 0.25)


def test_a_key_written_twice_is_a_duplicate_but_overriding_a_merged_key_is_not() -> None:
    ok = spec_from_string("growth_rate: 12\nblocks: [&b {layers: 3}, {<<: *b, layers: 4}]\n")
    assert [b.layers for b in ok.blocks] == [3, 4]
    error = _error("growth_rate: 12\nblocks: [{layers: 3, <<: {growth_rate: 4}, layers: 4}]\n")
    assert "duplicate key 'layers'" in error.message


def test_merge_expansion_is_bounded_in_time() -> None:
    lines = ["growth_rate: 12", "x0: &x0 {" + ", ".join(f"k{i}: 0" for i in range(40)) + "}"]
    for level in range(1, 60):  # doubles per level where merges are expanded naively: 2^60 pairs
        lines.append(f"x{level}: &x{level} {{<<: [*x{level - 1}, *x{level - 1}]}}")
    start = time.process_time()
    error = _error("\n".join(lines) + "\nblocks: [6]\n")
    assert time.process_time() - start < 2.0
    assert error.message == "unknown key 'x0' in the spec"  # read to the end: each level holds 40 keys


def test_merge_expansion_counts_against_the_node_budget() -> None:
    lines = ["growth_rate: 12"]
    for level in range(40):  # each level brings in every key before it: quadratic in the text
        fresh = ", ".join(f"k{level}_{i}: 0" for i in range(20))
        merge = f"<<: *x{level - 1}, " if level else ""
        lines.append(f"x{level}: &x{level} {{{merge}{fresh}}}")
    error = _error("\n".join(lines) + "\nblocks: [6]\n")
    assert "too large" in error.message


@pytest.mark.parametrize("depth", [LIMITS["yaml_depth"] + 1, 3000, 50_000])
def test_deep_nesting_is_a_located_error_not_a_recursion_error(depth: int) -> None:
    error = _error("growth_rate: 12\nblocks: " + "[" * depth + "6" + "]" * depth + "\n")
    assert error.loc is not None and error.loc.line == 2
    assert "too deeply nested" in error.message


def test_nesting_just_inside_the_limit_is_read() -> None:
    depth = LIMITS["yaml_depth"] - 3  # levels: the top-level mapping, the outer list, the scalar
    error = _error("growth_rate: 12\nblocks: [" + "[" * depth + "6" + "]" * depth + "]\n")
    assert "too deeply" not in error.message  # refused by validation, after reading: a list is no block


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("!!bool maybe", "cannot read 'maybe' as !!bool"),
        ("!!bool ''", "cannot read '' as !!bool"),
        ("!!int ''", "cannot read '' as !!int"),
        ("!!int '-'", "cannot read '-' as !!int"),
        ("!!int 0x", "cannot read '0x' as !!int"),
        ("!!float ''", "cannot read '' as !!float"),
        ("!!float '-'", "cannot read '-' as !!float"),
        ("!!timestamp soon", "cannot read 'soon' as !!timestamp"),
        ("!!timestamp 2024-02-30", "cannot read '2024-02-30' as !!timestamp (day is out of range"),
        ("2024-13-01", "cannot read '2024-13-01' as !!timestamp"),
        ("!!binary 'YWJ'", "failed to decode base64"),
        ("!!set {a: null}", "unsupported YAML tag !!set"),
        ("!!omap [a: 1]", "unsupported YAML tag !!omap"),
        ("!!pairs [[a, 1]]", "unsupported YAML tag !!pairs"),
        ("!!map x", "unsupported YAML tag !!map"),
        ("!!seq x", "unsupported YAML tag !!seq"),
        ("!!str {a: 1}", "unsupported YAML tag !!str"),
        ("9" * 5000, "an integer of 5000 digits"),
    ],
)
def test_malformed_scalars_are_located_spec_errors(value: str, says: str) -> None:
    error = _error(f"growth_rate: 12\nblocks: [6]\nname: {value}\n")
    assert says in error.message
    assert error.loc == Loc("s.yaml", 3, 7)


@pytest.mark.parametrize("key", ["compression", "dropout"])
def test_a_400_digit_integer_where_a_number_is_expected(key: str) -> None:
    error = _error(f"growth_rate: 12\nblocks: [6]\n{key}: {'9' * 400}\n")
    assert error.message.endswith("got an integer of 400 digits")


def test_read_regular_reads_at_most_the_limit_plus_one(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 11)
    assert read_regular(path, limit=11, what="file") == b"x" * 11
    with pytest.raises(DensegraphError, match="larger than 10 bytes"):
        read_regular(path, limit=10, what="file")
    with pytest.raises(DensegraphError, match="character device"):
        read_regular("/dev/zero", limit=10, what="file")  # refused before a byte is read


def test_a_fifo_swapped_in_after_the_check_cannot_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the race the second check covers: a regular file at stat time, a FIFO when it is opened
    from densegraph import _io

    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    real_stat = os.stat
    regular = real_stat(__file__)
    monkeypatch.setattr(
        _io.os, "stat", lambda p, *a, **k: regular if Path(p) == fifo else real_stat(p, *a, **k)
    )
    start = time.monotonic()
    with pytest.raises(SpecError, match="named pipe"):
        load_spec(fifo)
    assert time.monotonic() - start < 10
