"""The spec language: defaults, per-block overrides, connectivity forms, ``extends``, input sizes, locations."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from densegraph import build_graph, load_spec, spec_from_string
from densegraph.errors import Loc, SpecError
from densegraph.spec import Block, Connectivity, Head, Stem

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted([*REPO.glob("specs/**/*.yaml"), *REPO.glob("tests/data/*.yaml")])


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _where(path: str, text: str, line: int, token: str) -> Loc:
    """The location of the first ``token`` on 1-based ``line`` of ``text``, found without YAML."""
    column = text.splitlines()[line - 1].index(token) + 1
    return Loc(path, line, column)


# ---------------------------------------------------------------------------------------------------------
# defaults and overrides


def test_defaults_of_a_minimal_spec() -> None:
    spec = spec_from_string("growth_rate: 12\nblocks: [3, 5]\n")
    assert spec.name == "model"
    assert spec.path == "<string>"
    assert (spec.input_channels, spec.input_size) == (3, (224, 224))
    assert (spec.growth_rate, spec.bottleneck, spec.compression, spec.dropout) == (12, 4, 0.5, 0.0)
    assert spec.stem == Stem("imagenet", 24)  # 2k channels, as in DenseNet-BC
    assert spec.head == Head(1000)
    assert spec.connectivity == Connectivity("dense", None)
    assert spec.blocks == (
        Block(
            layers=3, growth_rate=12, bottleneck=4, dropout=0.0, compression=0.5, connectivity=Connectivity()
        ),
        Block(
            layers=5, growth_rate=12, bottleneck=4, dropout=0.0, compression=0.5, connectivity=Connectivity()
        ),
    )


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    path = _write(tmp_path / "my-net.yaml", "growth_rate: 12\nblocks: [3]\n")
    assert load_spec(path).name == "my-net"
    _write(path, "name: '  padded  '\ngrowth_rate: 12\nblocks: [3]\n")
    assert load_spec(path).name == "padded"


def test_stem_channels_default_to_twice_the_growth_rate_for_either_kind() -> None:
    spec = spec_from_string("growth_rate: 40\nstem: {kind: cifar}\nblocks: [3]\n")
    assert spec.stem == Stem("cifar", 80)
    spec = spec_from_string("growth_rate: 40\nstem: {channels: 16}\nblocks: [3]\n")
    assert spec.stem == Stem("imagenet", 16)


def test_per_block_overrides_take_precedence_over_the_spec_defaults() -> None:
    text = """\
growth_rate: 12
bottleneck: 2
compression: 0.5
dropout: 0.1
connectivity: log
blocks:
  - 4
  - {layers: 3, growth_rate: 24, bottleneck: 0, dropout: 0.0, compression: 1.0, connectivity: {kind: window, size: 2}}
  - {layers: 5, connectivity: dense}
  - {layers: 2, compression: 0.25}
"""
    blocks = spec_from_string(text).blocks
    assert blocks[0] == Block(4, 12, 2, 0.1, 0.5, Connectivity("log"))
    assert blocks[1] == Block(3, 24, 0, 0.0, 1.0, Connectivity("window", 2))
    assert blocks[2] == Block(5, 12, 2, 0.1, 0.5, Connectivity("dense"))
    assert blocks[3] == Block(2, 12, 2, 0.1, 0.25, Connectivity("log"))


def test_integral_floats_and_ints_are_both_numbers_for_rates() -> None:
    spec = spec_from_string("growth_rate: 12\ncompression: 1\ndropout: 0\nblocks: [3]\n")
    assert spec.compression == 1.0 and isinstance(spec.compression, float)
    assert spec.dropout == 0.0


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("dense", Connectivity("dense")),
        ("log", Connectivity("log")),
        ("{kind: dense}", Connectivity("dense")),
        ("{kind: log}", Connectivity("log")),
        ("{kind: window, size: 3}", Connectivity("window", 3)),
        ("\n  kind: window\n  size: 1", Connectivity("window", 1)),
    ],
)
def test_connectivity_forms(written: str, expected: Connectivity) -> None:
    top = spec_from_string(f"growth_rate: 12\nconnectivity: {written}\nblocks: [4, {{layers: 2}}]\n")
    assert top.connectivity == expected
    assert [b.connectivity for b in top.blocks] == [expected, expected]
    per_block = spec_from_string(
        f"growth_rate: 12\nblocks:\n  - layers: 4\n    connectivity: {written.replace(chr(10), chr(10) + '    ')}\n  - 2\n"
    )
    assert [b.connectivity for b in per_block.blocks] == [expected, Connectivity("dense")]


def test_yaml_merge_keys_are_resolved() -> None:
    spec = spec_from_string(
        "growth_rate: 12\nblocks: [&wide {layers: 3, growth_rate: 24}, {<<: *wide, layers: 5}]\n"
    )
    assert [(b.layers, b.growth_rate) for b in spec.blocks] == [(3, 24), (5, 24)]


def test_spec_equality_ignores_locations_and_formatting() -> None:
    compact = spec_from_string("growth_rate: 12\nblocks: [3, 4]\n", "x.yaml")
    spread = spec_from_string("# a comment\n\nblocks:\n  - 3\n  - {layers: 4}\ngrowth_rate: 12\n", "x.yaml")
    assert compact == spread
    assert compact.locs != spread.locs


def test_specs_are_frozen() -> None:
    spec = spec_from_string("growth_rate: 12\nblocks: [3]\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.growth_rate = 24  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.blocks[0].layers = 1  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------------
# input size


@pytest.mark.parametrize(
    ("written", "size"), [("32", (32, 32)), ("[32, 48]", (32, 48)), ("[64, 16]", (64, 16))]
)
def test_input_size_as_int_or_height_width(written: str, size: tuple[int, int]) -> None:
    spec = spec_from_string(
        f"input: {{channels: 1, size: {written}}}\ngrowth_rate: 4\nstem: {{kind: cifar}}\nblocks: [2, 2]\n"
    )
    assert spec.input_size == size
    graph = build_graph(spec)
    assert graph.graph["input_shape"] == (1, *size)
    assert graph.nodes["block2.input"]["out_size"] == (size[0] // 2, size[1] // 2)


def test_input_channels_default_when_only_size_is_given() -> None:
    spec = spec_from_string("input: {size: 64}\ngrowth_rate: 4\nblocks: [2]\n")
    assert (spec.input_channels, spec.input_size) == (3, (64, 64))


# ---------------------------------------------------------------------------------------------------------
# extends


BASE = """\
name: base
input: {channels: 1, size: 28}
growth_rate: 12
bottleneck: 2
connectivity: {kind: window, size: 4}
stem: {kind: cifar, channels: 16}
blocks: [2, 2]
head: {classes: 10}
"""


def test_extends_merges_mappings_and_replaces_everything_else(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", BASE)
    child = _write(
        tmp_path / "sub" / "child.yaml",
        "extends: ../base.yaml\ninput: {size: 32}\nconnectivity: {size: 2}\nstem: {channels: 8}\nblocks: [3]\n",
    )
    spec = load_spec(child)
    assert spec.name == "child"  # named after its own file, not the base's name
    assert (spec.input_channels, spec.input_size) == (1, (32, 32))
    assert spec.connectivity == Connectivity("window", 2)
    assert spec.stem == Stem("cifar", 8)
    assert [b.layers for b in spec.blocks] == [3]  # lists are replaced, not concatenated
    assert (spec.growth_rate, spec.bottleneck, spec.head.classes) == (12, 2, 10)


def test_extends_keeps_an_explicit_name_and_replaces_a_mapping_by_a_scalar(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", BASE)
    child = _write(tmp_path / "child.yaml", "extends: base.yaml\nname: renamed\nconnectivity: log\n")
    spec = load_spec(child)
    assert spec.name == "renamed"
    assert spec.connectivity == Connectivity("log")
    assert [b.connectivity for b in spec.blocks] == [Connectivity("log")] * 2


def test_extends_chains_resolve_relative_to_each_file(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", BASE)
    _write(tmp_path / "sub" / "child.yaml", "extends: ../base.yaml\ngrowth_rate: 24\n")
    grand = _write(
        tmp_path / "other" / "deeper" / "grand.yaml", "extends: ../../sub/child.yaml\nblocks: [1, 1, 1]\n"
    )
    spec = load_spec(grand)
    assert (spec.name, spec.growth_rate, len(spec.blocks), spec.input_channels) == ("grand", 24, 3, 1)


def test_extends_cycle_is_refused_at_the_extends_line(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.yaml", "extends: b.yaml\ngrowth_rate: 12\n")
    _write(tmp_path / "b.yaml", "# b\nextends: ./a.yaml\n")
    with pytest.raises(SpecError, match=r"'extends' cycle: a\.yaml -> b\.yaml -> a\.yaml") as info:
        load_spec(a)
    assert info.value.loc is not None
    assert (Path(info.value.loc.file).name, info.value.loc.line, info.value.loc.col) == ("b.yaml", 2, 10)


def test_extends_missing_file(tmp_path: Path) -> None:
    child = _write(tmp_path / "child.yaml", "growth_rate: 12\nextends: nowhere/base.yaml\n")
    with pytest.raises(SpecError, match="does not exist: nowhere/base.yaml") as info:
        load_spec(child)
    assert info.value.loc == Loc(str(child), 2, 10)
    assert info.value.hint is not None and str(tmp_path / "nowhere" / "base.yaml") in info.value.hint


def test_extends_needs_a_file_when_reading_a_string() -> None:
    with pytest.raises(SpecError, match="needs a spec file"):
        spec_from_string("extends: base.yaml\ngrowth_rate: 12\nblocks: [3]\n")


def test_the_shipped_derived_spec_points_into_its_base(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    spec = load_spec("specs/examples/densenet121-window4.yaml")
    base = load_spec("specs/densenet121.yaml")
    assert spec.name == "densenet121-window4"
    assert spec.blocks == tuple(
        dataclasses.replace(b, connectivity=Connectivity("window", 4)) for b in base.blocks
    )
    assert spec.locs["growth_rate"].file == "specs/densenet121.yaml"
    assert spec.locs["connectivity"] == Loc("specs/examples/densenet121-window4.yaml", 4, 1)


# ---------------------------------------------------------------------------------------------------------
# every shipped spec


@pytest.mark.parametrize("path", SHIPPED, ids=[p.relative_to(REPO).as_posix() for p in SHIPPED])
def test_every_shipped_spec_loads_and_builds(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem
    graph = build_graph(spec)
    assert graph.graph["name"] == spec.name
    assert sum(b["layers"] for b in graph.graph["blocks"]) == sum(b.layers for b in spec.blocks)


def test_there_are_shipped_specs() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"densenet121", "densenet161", "densenet169", "densenet201", "densenet264", "digits"} <= names
    assert len([p for p in SHIPPED if p.parent.name == "cifar"]) == 6


def _paper_depth(spec_path: Path) -> int:
    spec = load_spec(spec_path)
    convs_per_layer = 2 if spec.bottleneck else 1
    # dense layers, the stem conv, one conv per transition, the classifier: the paper's "L"
    return convs_per_layer * sum(b.layers for b in spec.blocks) + 1 + (len(spec.blocks) - 1) + 1


@pytest.mark.parametrize(
    ("relative", "depth"),
    [
        ("specs/densenet121.yaml", 121),
        ("specs/densenet161.yaml", 161),
        ("specs/densenet169.yaml", 169),
        ("specs/densenet201.yaml", 201),
        ("specs/cifar/densenet-l40-k12.yaml", 40),
        ("specs/cifar/densenet-l100-k12.yaml", 100),
        ("specs/cifar/densenet-l100-k24.yaml", 100),
        ("specs/cifar/densenet-bc-l100-k12.yaml", 100),
        ("specs/cifar/densenet-bc-l190-k40.yaml", 190),
        ("specs/cifar/densenet-bc-l250-k24.yaml", 250),
    ],
)
def test_shipped_specs_have_the_depth_in_their_name(relative: str, depth: int) -> None:
    assert _paper_depth(REPO / relative) == depth
    match = re.search(r"k(\d+)$", relative.removesuffix(".yaml"))
    if match:
        assert load_spec(REPO / relative).growth_rate == int(match[1])


# ---------------------------------------------------------------------------------------------------------
# locations


LOCATED = """\
name: locs
input: {channels: 3, size: [32, 48]}
growth_rate: 12
stem: {kind: cifar, channels: 24}
blocks:
  - 4
  - {layers: 2, growth_rate: 24}
head:
  classes: 10
"""


def test_locations_of_keys_values_blocks_and_nodes(tmp_path: Path) -> None:
    path = str(_write(tmp_path / "locs.yaml", LOCATED))
    spec = load_spec(path)
    assert spec.loc == Loc(path, 1, 1)
    assert spec.locs["growth_rate"] == Loc(path, 3, 1)
    assert spec.loc_of("growth_rate") == Loc(path, 3, 1)
    assert spec.loc_of("dropout") == spec.loc  # defaulted: the spec itself
    assert spec.stem.loc == _where(path, LOCATED, 4, "{")
    assert spec.stem.locs["channels"] == _where(path, LOCATED, 4, "24")
    assert spec.blocks[0].loc == _where(path, LOCATED, 6, "4")
    assert spec.blocks[1].loc == _where(path, LOCATED, 7, "{")
    assert spec.blocks[1].locs["growth_rate"] == _where(path, LOCATED, 7, "24")
    assert spec.head.locs["classes"] == _where(path, LOCATED, 9, "10")

    graph = build_graph(spec)
    assert graph.nodes["block2.layer1"]["loc"] == str(_where(path, LOCATED, 7, "{"))
    assert graph.nodes["block1.layer4"]["loc"] == str(_where(path, LOCATED, 6, "4"))
    assert graph.nodes["stem"]["loc"] == str(_where(path, LOCATED, 4, "{"))
    assert graph.nodes["head"]["loc"] == f"{path}:9:3"


@pytest.mark.parametrize(
    ("text", "line", "token", "message"),
    [
        (
            "growth_rate: 12\nblocks: [4, {layers: 2, growth_rate: -8}]\n",
            2,
            "-8",
            "blocks[1].growth_rate must be",
        ),
        ("growth_rate: 12\nblocks:\n  - 4\n  - layers: 0\n", 4, "0", "blocks[1].layers must be a positive"),
        (
            "growth_rate: 12\nhead:\n  classes: ten\nblocks: [1]\n",
            3,
            "ten",
            "head.classes must be an integer",
        ),
        ("name: x\ngrowth_rate: 12\nblocks: [1]\nbotleneck: 2\n", 4, "botleneck", "unknown key 'botleneck'"),
        ("# header\n\n\nname: x\nblocks: [2]\n", 4, "name", "missing 'growth_rate'"),
        ("growth_rate: 12\ninput: {size: [8, 0]}\nblocks: [2]\n", 2, "0", "input width must be a positive"),
    ],
)
def test_errors_point_at_the_offending_value(text: str, line: int, token: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        spec_from_string(text, "t.yaml")
    assert info.value.loc == _where("t.yaml", text, line, token)
    assert message in info.value.message


def test_loc_text_forms() -> None:
    assert str(Loc("a.yaml")) == "a.yaml"
    assert str(Loc("a.yaml", 3, 7)) == "a.yaml:3:7"
    err = SpecError("bad", loc=Loc("a.yaml", 3, 7), hint="fix it")
    assert err.format() == "a.yaml:3:7: error: bad (hint: fix it)"
    assert SpecError("bad", path="b.yaml").format() == "b.yaml: error: bad"
    assert SpecError("bad").format() == "error: bad"


# ---------------------------------------------------------------------------------------------------------
# files that are not specs


def test_a_zero_byte_file_is_an_empty_spec(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.yaml", "")
    with pytest.raises(SpecError, match="the spec is empty") as info:
        load_spec(path)
    assert info.value.loc == Loc(str(path), 1, 1)


def test_a_folder_and_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="is a folder"):
        load_spec(tmp_path)
    with pytest.raises(SpecError, match="no such file") as info:
        load_spec(tmp_path / "absent.yaml")
    assert info.value.loc == Loc(str(tmp_path / "absent.yaml"))


def test_an_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = _write(tmp_path / "big.yaml", "growth_rate: 12\nblocks: [2]\n" + "# padding\n" * 120_000)
    with pytest.raises(SpecError, match="larger than 1 MB"):
        load_spec(path)


def test_a_utf8_bom_and_unicode_names_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeffname: réseau-dense\ngrowth_rate: 12\nblocks: [2]\n".encode())
    assert load_spec(path).name == "réseau-dense"


# ---------------------------------------------------------------------------------------------------------
# preprocess:


def test_imagenet_specs_default_to_torchvisions_evaluation_transform() -> None:
    # torchvision's ImageNet weights: Resize(256) -> CenterCrop(224) -> ToTensor -> Normalize(mean, std)
    pre = load_spec(REPO / "specs" / "densenet121.yaml").preprocess
    assert pre is not None
    assert pre.resize == 256 and pre.crop == (224, 224)
    assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)
    assert (pre.channel_order, pre.scale, pre.interpolation) == ("rgb", 255.0, "bilinear")


def test_small_input_specs_default_to_a_plain_resize() -> None:
    digits = load_spec(REPO / "specs" / "digits.yaml").preprocess
    assert digits is not None and digits.resize is None and digits.crop == (8, 8)
    assert digits.mean == (0.0,) and digits.std == (1.0,) and digits.scale == 255.0
    cifar = load_spec(REPO / "specs" / "cifar" / "densenet-l40-k12.yaml").preprocess
    assert cifar is not None and cifar.resize is None and cifar.crop == (32, 32)
    assert cifar.mean == (0.485, 0.456, 0.406)


def test_preprocess_overrides_are_read_with_their_locations() -> None:
    spec = spec_from_string(
        "growth_rate: 12\nblocks: [4]\ninput: {size: [240, 200]}\n"
        "preprocess:\n  resize: 288\n  crop: [240, 200]\n  mean: [0.5, 0.5, 0.5]\n  std: [0.25, 0.25, 0.5]\n"
        "  channel_order: bgr\n  scale: 1\n  interpolation: bicubic\n",
        "x.yaml",
    )
    pre = spec.preprocess
    assert pre is not None
    assert pre.as_dict() == {
        "resize": 288,
        "crop": [240, 200],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.5],
        "channel_order": "bgr",
        "scale": 1.0,
        "interpolation": "bicubic",
    }
    assert str(pre.locs["resize"]) == "x.yaml:5:11" and str(pre.locs["interpolation"]) == "x.yaml:11:18"


def test_resize_null_and_extends_merge_the_preprocess_mapping(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("growth_rate: 12\nblocks: [4]\npreprocess: {std: [0.5, 0.5, 0.5]}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\npreprocess: {resize: null}\n")
    pre = load_spec(tmp_path / "child.yaml").preprocess
    assert pre is not None and pre.resize is None and pre.std == (0.5, 0.5, 0.5)
    assert pre.mean == (0.485, 0.456, 0.406)


def test_the_graph_carries_the_preprocess_as_a_plain_dict() -> None:
    import json

    graph = build_graph(load_spec(REPO / "specs" / "densenet121.yaml"))
    pre = graph.graph["preprocess"]
    assert json.loads(json.dumps(pre)) == pre
    assert pre["resize"] == 256 and pre["crop"] == [224, 224]
