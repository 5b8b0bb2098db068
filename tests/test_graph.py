"""The connection graph: hand-computed small graphs, edge counts per rule, check_graph, property tests."""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from densegraph import build_graph, check_graph, load_spec, spec_from_string
from densegraph.cost import totals
from densegraph.errors import DensegraphError, SpecError
from densegraph.graph import GraphError, block_outputs, layer_sources, layer_width, node_inputs
from densegraph.spec import Connectivity
from densegraph.summary import summary_dict

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted([*REPO.glob("specs/**/*.yaml"), *REPO.glob("tests/data/*.yaml")])
SHIPPED_IDS = [p.relative_to(REPO).as_posix() for p in SHIPPED]

# ---------------------------------------------------------------------------------------------------------
# hand-computed graphs

# One block of 3 bottleneck layers on an 8x8 image: every number below is worked out by hand.
TINY = """\
name: tiny
input: {channels: 3, size: 8}
growth_rate: 4
bottleneck: 2
stem: {kind: cifar, channels: 6}
blocks: [3]
head: {classes: 5}
"""


def test_tiny_graph_nodes_in_execution_order() -> None:
    graph = build_graph(spec_from_string(TINY))
    assert list(graph.nodes) == [
        "input",
        "stem",
        "block1.input",
        "block1.layer1",
        "block1.layer2",
        "block1.layer3",
        "head",
    ]
    kinds = [graph.nodes[n]["kind"] for n in graph.nodes]
    assert kinds == ["input", "stem", "block_input", "dense_layer", "dense_layer", "dense_layer", "head"]
    assert graph.nodes["block1.layer2"]["module"] == "features.denseblock1.denselayer2"
    assert (graph.nodes["block1.layer2"]["block"], graph.nodes["block1.layer2"]["layer"]) == (1, 2)


def test_tiny_graph_edges_positions_offsets_and_channels() -> None:
    graph = build_graph(spec_from_string(TINY))
    edges = {(u, v): (d["position"], d["offset"], d["channels"]) for u, v, d in graph.edges(data=True)}
    b, l1, l2, l3 = "block1.input", "block1.layer1", "block1.layer2", "block1.layer3"
    assert edges == {
        ("input", "stem"): (0, 0, 3),
        ("stem", b): (0, 0, 6),
        (b, l1): (0, 0, 6),
        (b, l2): (0, 0, 6),
        (l1, l2): (1, 6, 4),
        (b, l3): (0, 0, 6),
        (l1, l3): (1, 6, 4),
        (l2, l3): (2, 10, 4),
        (b, "head"): (0, 0, 6),
        (l1, "head"): (1, 6, 4),
        (l2, "head"): (2, 10, 4),
        (l3, "head"): (3, 14, 4),
    }
    assert node_inputs(graph, "head") == [b, l1, l2, l3]
    channels = {n: (graph.nodes[n]["in_channels"], graph.nodes[n]["out_channels"]) for n in graph.nodes}
    assert channels == {
        "input": (3, 3),
        "stem": (3, 6),
        b: (6, 6),
        l1: (6, 4),
        l2: (10, 4),
        l3: (14, 4),
        "head": (18, 5),
    }
    assert graph.graph["blocks"][0]["in_channels"] == 6
    assert graph.graph["blocks"][0]["out_channels"] == 18
    assert graph.graph["blocks"][0]["edges"] == 6  # L(L+1)/2 for L = 3


def test_tiny_graph_params_and_macs_by_hand() -> None:
    graph = build_graph(spec_from_string(TINY))
    pixels = 8 * 8
    bw = 2 * 4  # bottleneck width x growth rate = 8 channels in the 1x1 conv

    def layer_params(cin: int) -> int:  # BN(cin) + conv1x1(cin -> 8) + BN(8) + conv3x3(8 -> 4)
        return 2 * cin + cin * bw + 2 * bw + bw * 4 * 9

    def layer_macs(cin: int) -> int:
        return pixels * (cin * bw + bw * 4 * 9)

    expected_params = {
        "input": 0,
        "stem": 6 * 3 * 9,  # conv3x3, no bias
        "block1.input": 0,
        "block1.layer1": layer_params(6),
        "block1.layer2": layer_params(10),
        "block1.layer3": layer_params(14),
        "head": 2 * 18 + 18 * 5 + 5,  # BN(18) + linear with bias
    }
    expected_macs = {
        "input": 0,
        "stem": pixels * 6 * 3 * 9,
        "block1.input": 0,
        "block1.layer1": layer_macs(6),
        "block1.layer2": layer_macs(10),
        "block1.layer3": layer_macs(14),
        "head": 18 * 5,
    }
    assert {n: graph.nodes[n]["params"] for n in graph.nodes} == expected_params
    assert {n: graph.nodes[n]["macs"] for n in graph.nodes} == expected_macs
    assert expected_params["block1.layer1"] == 364 and sum(expected_params.values()) == 1505
    assert sum(expected_macs.values()) == 81114
    assert totals(graph)["params"] == 1505 and totals(graph)["macs"] == 81114
    # activations: BN, ReLU, conv1, BN, ReLU, conv2 outputs of layer 1; concatenation copies
    assert graph.nodes["block1.layer1"]["activations"] == (6 + 6 + 8 + 8 + 8 + 4) * pixels
    assert graph.nodes["block1.layer1"]["concat_elements"] == 0  # one input: nothing to concatenate
    assert graph.nodes["block1.layer2"]["concat_elements"] == 10 * pixels
    assert graph.nodes["head"]["concat_elements"] == 18 * pixels


def test_tiny_graph_ops_name_torchvision_modules() -> None:
    graph = build_graph(spec_from_string(TINY))
    ops = graph.nodes["block1.layer3"]["ops"]
    assert [(op["op"], op["name"]) for op in ops] == [
        ("bn", "features.denseblock1.denselayer3.norm1"),
        ("relu", "features.denseblock1.denselayer3.relu1"),
        ("conv", "features.denseblock1.denselayer3.conv1"),
        ("bn", "features.denseblock1.denselayer3.norm2"),
        ("relu", "features.denseblock1.denselayer3.relu2"),
        ("conv", "features.denseblock1.denselayer3.conv2"),
    ]
    assert (ops[2]["in_channels"], ops[2]["out_channels"], ops[2]["kernel"]) == (14, 8, 1)
    assert (ops[5]["in_channels"], ops[5]["out_channels"], ops[5]["kernel"], ops[5]["padding"]) == (
        8,
        4,
        3,
        1,
    )


# Two blocks without bottleneck behind an ImageNet stem, with a transition and dropout.
TWO_BLOCKS = """\
input: {channels: 3, size: 32}
growth_rate: 4
bottleneck: 0
compression: 0.5
dropout: 0.2
stem: {kind: imagenet, channels: 8}
blocks: [2, 1]
head: {classes: 10}
"""


def test_two_block_graph_by_hand() -> None:
    graph = build_graph(spec_from_string(TWO_BLOCKS))
    n = graph.nodes
    # conv7x7/2 (pad 3): 32 -> 16; maxpool3x3/2 (pad 1): 16 -> 8; the transition's avgpool2x2: 8 -> 4
    assert (n["stem"]["out_size"], n["block1.layer2"]["out_size"]) == ((8, 8), (8, 8))
    assert (n["transition1"]["in_size"], n["transition1"]["out_size"]) == ((8, 8), (4, 4))
    assert (n["block2.layer1"]["in_size"], n["head"]["out_size"]) == ((4, 4), (1, 1))
    assert (n["transition1"]["in_channels"], n["transition1"]["out_channels"]) == (16, 8)  # floor(0.5 * 16)
    expected_params = {
        "stem": 8 * 3 * 49 + 2 * 8,
        "block1.layer1": 2 * 8 + 8 * 4 * 9,
        "block1.layer2": 2 * 12 + 12 * 4 * 9,
        "transition1": 2 * 16 + 16 * 8,
        "block2.layer1": 2 * 8 + 8 * 4 * 9,
        "head": 2 * 12 + 12 * 10 + 10,
    }
    expected_macs = {
        "stem": 16 * 16 * 8 * 3 * 49,
        "block1.layer1": 64 * 8 * 4 * 9,
        "block1.layer2": 64 * 12 * 4 * 9,
        "transition1": 64 * 16 * 8,  # the 1x1 conv runs before the pooling
        "block2.layer1": 16 * 8 * 4 * 9,
        "head": 12 * 10,
    }
    for node, params in expected_params.items():
        assert (node, n[node]["params"], n[node]["macs"]) == (node, params, expected_macs[node])
    assert totals(graph)["params"] == sum(expected_params.values()) == 2570
    assert totals(graph)["macs"] == sum(expected_macs.values()) == 360056
    assert [op["op"] for op in n["block1.layer1"]["ops"]] == ["bn", "relu", "conv", "dropout"]
    assert n["block1.layer1"]["ops"][-1]["p"] == 0.2
    assert node_inputs(graph, "transition1") == ["block1.input", "block1.layer1", "block1.layer2"]
    assert node_inputs(graph, "block2.input") == ["transition1"]
    assert graph.graph["output_shape"] == (10,)


# ---------------------------------------------------------------------------------------------------------
# connectivity rules


def _window_edges(layers: int, size: int) -> int:
    """Edges of a window-n block: layer i reads the block input and min(i - 1, n) earlier layers."""
    full = min(layers, size + 1)  # layers that still see everything
    return full * (full + 1) // 2 + (layers - full) * (size + 1)


def _log_edges(layers: int) -> int:
    """Edges of a log-dense block: layer i reads the powers of two up to i, i.e. bit_length(i) sources."""
    return sum(i.bit_length() for i in range(1, layers + 1))


def _rule_edges(kind: str, size: int | None, layers: int) -> int:
    if kind == "dense":
        return layers * (layers + 1) // 2
    if kind == "window":
        assert size is not None
        return _window_edges(layers, size)
    if kind == "chain":
        return layers
    if kind == "harmonic":  # layer k has one source per 2^n (n < 10) dividing k
        return sum(sum(1 for n in range(10) if k % 2**n == 0) for k in range(1, layers + 1))
    return _log_edges(layers)


def test_layer_sources_by_hand() -> None:
    assert layer_sources(Connectivity("dense"), 4) == [0, 1, 2, 3]
    assert layer_sources(Connectivity("window", 2), 1) == [0]
    assert layer_sources(Connectivity("window", 2), 3) == [0, 1, 2]
    assert layer_sources(Connectivity("window", 2), 5) == [0, 3, 4]
    assert layer_sources(Connectivity("log"), 1) == [0]
    assert layer_sources(Connectivity("log"), 6) == [2, 4, 5]
    assert layer_sources(Connectivity("log"), 8) == [0, 4, 6, 7]


def test_rule_formulas_agree_with_small_counts() -> None:
    assert [_window_edges(n, 2) for n in range(1, 7)] == [1, 3, 6, 9, 12, 15]
    assert [_log_edges(n) for n in range(1, 9)] == [1, 3, 5, 8, 11, 14, 17, 21]


@pytest.mark.parametrize("path", SHIPPED, ids=SHIPPED_IDS)
def test_every_shipped_block_has_the_edges_its_rule_gives(path: Path) -> None:
    spec = load_spec(path)
    graph = build_graph(spec)
    for block, info in zip(spec.blocks, graph.graph["blocks"], strict=True):
        layers = block.layers
        expected = _rule_edges(block.connectivity.kind, block.connectivity.size, layers)
        if block.connectivity.kind == "dense":
            assert expected == layers * (layers + 1) // 2
        feeding = sum(graph.in_degree(node) for node in info["nodes"][1:])
        assert info["edges"] == feeding == expected
        if block.connectivity.kind == "harmonic":  # the odd layers and the last
            exported = [w for k, w in enumerate(info["widths"], 1) if k % 2 or k == layers]
            assert info["out_channels"] == sum(exported)
        else:
            assert info["out_channels"] == info["in_channels"] + sum(
                block.widths or [block.growth_rate] * layers
            )


@pytest.mark.parametrize(("size", "layers"), [(1, 7), (2, 12), (4, 24), (4, 3), (16, 16)])
def test_window_rule_edge_counts(size: int, layers: int) -> None:
    graph = build_graph(
        spec_from_string(
            f"growth_rate: 4\nconnectivity: {{kind: window, size: {size}}}\ninput: {{size: 64}}\nblocks: [{layers}]\n"
        )
    )
    assert graph.graph["blocks"][0]["edges"] == _window_edges(layers, size)
    last = f"block1.layer{layers}"
    expected_inputs = ["block1.input", *[f"block1.layer{j}" for j in range(max(1, layers - size), layers)]]
    assert node_inputs(graph, last) == expected_inputs


@pytest.mark.parametrize("layers", [1, 2, 5, 8, 16, 33])
def test_log_rule_edge_counts(layers: int) -> None:
    graph = build_graph(
        spec_from_string(f"growth_rate: 4\nconnectivity: log\ninput: {{size: 64}}\nblocks: [{layers}]\n")
    )
    assert graph.graph["blocks"][0]["edges"] == _log_edges(layers)
    block = graph.graph["blocks"][0]["nodes"]
    for i in range(1, layers + 1):
        sources = sorted(block.index(u) for u in graph.predecessors(f"block1.layer{i}"))
        assert sources == sorted({i - 2**j for j in range(i.bit_length())})


# ---------------------------------------------------------------------------------------------------------
# check_graph


@pytest.fixture
def tiny() -> nx.DiGraph:
    return build_graph(spec_from_string(TWO_BLOCKS))


def test_check_graph_accepts_a_deep_copy(tiny: nx.DiGraph) -> None:
    check_graph(copy.deepcopy(tiny))


def _remove_edge(g: nx.DiGraph) -> None:
    g.remove_edge("block1.layer1", "block1.layer2")


def _remove_first_input(g: nx.DiGraph) -> None:
    g.remove_edge("block1.input", "transition1")


def _remove_edge_and_fix_positions(g: nx.DiGraph) -> None:
    # a consistent-looking concatenation that drops a source: only the channel and block-edge checks notice
    g.remove_edge("block1.layer1", "block1.layer2")
    g.nodes["block1.layer2"]["in_channels"] = 8


def _change_out_channels(g: nx.DiGraph) -> None:
    g.nodes["block1.layer1"]["out_channels"] = 5


def _change_edge_channels(g: nx.DiGraph) -> None:
    g.edges["block1.layer1", "transition1"]["channels"] = 3


def _change_offset(g: nx.DiGraph) -> None:
    g.edges["block1.layer2", "transition1"]["offset"] = 4


def _swap_positions(g: nx.DiGraph) -> None:
    g.edges["block1.layer1", "transition1"]["position"] = 2
    g.edges["block1.layer2", "transition1"]["position"] = 1


def _change_params(g: nx.DiGraph) -> None:
    g.nodes["transition1"]["params"] += 1


def _change_size(g: nx.DiGraph) -> None:
    g.nodes["block1.layer1"]["out_size"] = (4, 4)


def _add_cycle(g: nx.DiGraph) -> None:
    g.add_edge("head", "stem", channels=10, position=1, offset=3)


def _add_isolated_node(g: nx.DiGraph) -> None:
    g.add_node("orphan", kind="dense_layer")


def _add_second_source(g: nx.DiGraph) -> None:
    g.add_node("orphan", kind="input", out_channels=4, out_size=(8, 8))
    g.add_edge("orphan", "block1.layer1", channels=4, position=1, offset=8)
    g.nodes["block1.layer1"]["in_channels"] = 12


def _record_wrong_block_edges(g: nx.DiGraph) -> None:
    g.graph["blocks"][0]["edges"] += 1


def _wrong_growth_rate(g: nx.DiGraph) -> None:
    g.graph["blocks"][1]["growth_rate"] = 5


@pytest.mark.parametrize(
    "corrupt",
    [
        _remove_edge,
        _remove_first_input,
        _remove_edge_and_fix_positions,
        _change_out_channels,
        _change_edge_channels,
        _change_offset,
        _swap_positions,
        _change_params,
        _change_size,
        _add_cycle,
        _add_isolated_node,
        _add_second_source,
        _record_wrong_block_edges,
        _wrong_growth_rate,
    ],
)
def test_check_graph_catches_corruption(tiny: nx.DiGraph, corrupt) -> None:  # type: ignore[no-untyped-def]
    graph = copy.deepcopy(tiny)
    corrupt(graph)
    with pytest.raises(GraphError):
        check_graph(graph)
    check_graph(tiny)  # the original is untouched


def test_graph_error_is_not_a_user_error() -> None:
    assert not issubclass(GraphError, DensegraphError)


# ---------------------------------------------------------------------------------------------------------
# property tests: generated valid specs


@dataclass(frozen=True)
class GenBlock:
    layers: int
    growth_rate: int | None
    bottleneck: int | None
    compression: int | None  # percent
    connectivity: tuple[str, int | None] | None


@dataclass(frozen=True)
class GenSpec:
    input_channels: int
    size: tuple[int, int]
    size_as_int: bool
    growth_rate: int
    bottleneck: int
    compression: int  # percent, so that the text and the reference agree exactly
    dropout: bool
    connectivity: tuple[str, int | None]
    stem: str
    stem_channels: int | None
    classes: int
    blocks: tuple[GenBlock, ...]


def _connectivity_text(conn: tuple[str, int | None]) -> str:
    kind, size = conn
    return f"{{kind: window, size: {size}}}" if kind == "window" else kind


def _spec_text(g: GenSpec) -> str:
    size = str(g.size[0]) if g.size_as_int else f"[{g.size[0]}, {g.size[1]}]"
    stem = f"{{kind: {g.stem}" + (f", channels: {g.stem_channels}}}" if g.stem_channels else "}")
    lines = [
        "name: generated",
        f"input: {{channels: {g.input_channels}, size: {size}}}",
        f"growth_rate: {g.growth_rate}",
        f"bottleneck: {g.bottleneck}",
        f"compression: {g.compression / 100}",
        f"dropout: {0.2 if g.dropout else 0.0}",
        f"connectivity: {_connectivity_text(g.connectivity)}",
        f"stem: {stem}",
        "blocks:",
    ]
    for b in g.blocks:
        fields = [f"layers: {b.layers}"]
        if b.growth_rate is not None:
            fields.append(f"growth_rate: {b.growth_rate}")
        if b.bottleneck is not None:
            fields.append(f"bottleneck: {b.bottleneck}")
        if b.compression is not None:
            fields.append(f"compression: {b.compression / 100}")
        if b.connectivity is not None:
            fields.append(f"connectivity: {_connectivity_text(b.connectivity)}")
        lines.append(f"  - {{{', '.join(fields)}}}" if len(fields) > 1 else f"  - {b.layers}")
    lines.append(f"head: {{classes: {g.classes}}}")
    return "\n".join(lines) + "\n"


connectivities = st.one_of(
    st.just(("dense", None)),
    st.just(("log", None)),
    st.tuples(st.just("window"), st.integers(1, 6)),
)
gen_blocks = st.builds(
    GenBlock,
    layers=st.integers(1, 9),
    growth_rate=st.none() | st.integers(1, 16),
    bottleneck=st.none() | st.integers(0, 4),
    compression=st.none() | st.integers(5, 100),
    connectivity=st.none() | connectivities,
)


@st.composite
def gen_specs(draw: st.DrawFn) -> GenSpec:
    blocks = tuple(draw(st.lists(gen_blocks, min_size=1, max_size=4)))
    stem = draw(st.sampled_from(["imagenet", "cifar"]))
    # big enough for the stem's /4 and a /2 per transition
    smallest = (4 if stem == "imagenet" else 1) * 2 ** (len(blocks) - 1)
    sides = st.integers(smallest, smallest + 24)
    size_as_int = draw(st.booleans())
    height = draw(sides)
    return GenSpec(
        input_channels=draw(st.integers(1, 4)),
        size=(height, height if size_as_int else draw(sides)),
        size_as_int=size_as_int,
        growth_rate=draw(st.integers(1, 16)),
        bottleneck=draw(st.integers(0, 4)),
        compression=draw(st.integers(5, 100)),
        dropout=draw(st.booleans()),
        connectivity=draw(connectivities),
        stem=stem,
        stem_channels=draw(st.none() | st.integers(1, 32)),
        classes=draw(st.integers(1, 20)),
        blocks=blocks,
    )


def _stem_size(kind: str, side: int) -> int:
    if kind == "cifar":
        return side
    side = (side - 1) // 2 + 1  # conv7x7, stride 2, padding 3
    return (side - 1) // 2 + 1  # maxpool3x3, stride 2, padding 1


def _reference(g: GenSpec) -> tuple[int, int] | None:
    """Parameters and MACs in closed form from the spec numbers, or None when a transition has 0 channels.

    Layer i of a block with k = growth rate and c0 input channels reads c_i = c0 * [0 is a source] + k * (its
    layer sources) channels; for dense connectivity c_i = c0 + (i - 1) k, so a block's sum of c_i is
    L c0 + k L (L - 1) / 2.
    """
    stem_channels = g.stem_channels or 2 * g.growth_rate
    kernel = 7 if g.stem == "imagenet" else 3
    params = stem_channels * g.input_channels * kernel**2 + (2 * stem_channels if g.stem == "imagenet" else 0)
    height, width = _stem_size(g.stem, g.size[0]), _stem_size(g.stem, g.size[1])
    macs = (
        (g.size[0] if g.stem == "cifar" else (g.size[0] - 1) // 2 + 1)
        * (g.size[1] if g.stem == "cifar" else (g.size[1] - 1) // 2 + 1)
        * (params - (2 * stem_channels if g.stem == "imagenet" else 0))
    )
    channels = stem_channels
    for index, b in enumerate(g.blocks):
        k = b.growth_rate if b.growth_rate is not None else g.growth_rate
        bw = b.bottleneck if b.bottleneck is not None else g.bottleneck
        kind, size = b.connectivity if b.connectivity is not None else g.connectivity
        L, c0, pixels = b.layers, channels, height * width
        if kind == "dense":
            sum_cin = L * c0 + k * L * (L - 1) // 2
        elif kind == "window":
            assert size is not None
            sum_cin = sum(c0 + k * min(i - 1, size) for i in range(1, L + 1))
        else:  # log: sources at distance 1, 2, 4, ...; the block input only when i is a power of two
            sum_cin = sum(
                (c0 if i & (i - 1) == 0 else 0) + k * (i.bit_length() - (1 if i & (i - 1) == 0 else 0))
                for i in range(1, L + 1)
            )
        if bw:
            params += 2 * sum_cin + bw * k * sum_cin + L * (2 * bw * k + 9 * bw * k * k)
            macs += pixels * (bw * k * sum_cin + L * 9 * bw * k * k)
        else:
            params += 2 * sum_cin + 9 * k * sum_cin
            macs += pixels * 9 * k * sum_cin
        channels = c0 + L * k
        if index < len(g.blocks) - 1:
            percent = b.compression if b.compression is not None else g.compression
            out = channels * percent // 100
            if out == 0:
                return None
            params += 2 * channels + channels * out
            macs += pixels * channels * out
            channels, height, width = out, height // 2, width // 2
    params += 2 * channels + channels * g.classes + g.classes
    macs += channels * g.classes
    return params, macs


@settings(max_examples=60, deadline=None)
@given(gen_specs())
def test_generated_specs_build_consistent_graphs(g: GenSpec) -> None:
    text = _spec_text(g)
    spec = spec_from_string(text)
    reference = _reference(g)
    if reference is None:
        with pytest.raises(SpecError, match="leaves 0 channels"):
            build_graph(spec)
        return
    graph = build_graph(spec)  # runs check_graph
    check_graph(graph)
    params, macs = reference
    summary = summary_dict(graph)
    node_params = sum(d["params"] for _, d in graph.nodes(data=True))
    node_macs = sum(d["macs"] for _, d in graph.nodes(data=True))
    assert summary["params"] == node_params == totals(graph)["params"] == params
    assert summary["macs"] == node_macs == totals(graph)["macs"] == macs
    assert sum(row["params"] for row in summary["stages"]) == params
    assert graph.number_of_edges() == summary["edges"]
    for block, info in zip(spec.blocks, graph.graph["blocks"], strict=True):
        assert info["edges"] == _rule_edges(block.connectivity.kind, block.connectivity.size, block.layers)
    assert graph.graph["input_shape"] == (g.input_channels, *g.size)
    assert graph.graph["output_shape"] == (g.classes,)


def test_reference_count_matches_a_published_model() -> None:
    g = GenSpec(
        input_channels=3,
        size=(224, 224),
        size_as_int=True,
        growth_rate=32,
        bottleneck=4,
        compression=50,
        dropout=False,
        connectivity=("dense", None),
        stem="imagenet",
        stem_channels=64,
        classes=1000,
        blocks=tuple(GenBlock(n, None, None, None, None) for n in (6, 12, 24, 16)),
    )
    assert _reference(g) == (7_978_856, 2_834_161_664)  # torchvision's densenet121
    published = load_spec(REPO / "specs" / "densenet121.yaml")
    generated = spec_from_string(_spec_text(g), published.path)
    assert dataclasses.replace(generated, name=published.name) == published


# ---------------------------------------------------------------------------------------------------------
# property tests: mutated and arbitrary YAML only ever raise DensegraphError

_SHIPPED_TEXTS = [p.read_text() for p in SHIPPED if "extends" not in p.read_text()]
_YAML_BITS = [
    *"0123456789-.:,[]{}#&*!|>'\"\t\n ",
    "\n  ",
    ": ",
    "- ",
    "!!",
    "<<: ",
    "~",
    "null",
    "1e9",
    ".inf",
]
_KEYS = (
    "name input growth_rate bottleneck compression dropout stem blocks connectivity head "
    "channels size kind layers classes window dense log imagenet cifar"
).split()
_MAX_BUILD = 2_500  # sum of L^2 over blocks: larger (valid, huge) specs are parsed but not expanded here


def _parse_and_build(text: str) -> None:
    try:
        spec = spec_from_string(text, "mutated.yaml")
        if sum(b.layers**2 for b in spec.blocks) <= _MAX_BUILD:
            build_graph(spec)
    except DensegraphError as exc:
        report = exc.format()
        assert "\n" not in report and report.startswith("mutated.yaml")


@st.composite
def mutated_specs(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(_SHIPPED_TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        lines = text.split("\n")
        action = draw(
            st.sampled_from(["insert", "delete", "replace", "dup-line", "drop-line", "swap-lines", "number"])
        )
        if action in ("insert", "delete", "replace") and text:
            at = draw(st.integers(0, len(text) - 1))
            bit = draw(st.sampled_from(_YAML_BITS) | st.characters(codec="utf-8", exclude_categories=("Cs",)))
            if action == "insert":
                text = text[:at] + bit + text[at:]
            elif action == "delete":
                text = text[:at] + text[at + draw(st.integers(1, 8)) :]
            else:
                text = text[:at] + bit + text[at + 1 :]
        elif action in ("dup-line", "drop-line", "swap-lines") and lines:
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if action == "dup-line":
                lines.insert(j, lines[i])
            elif action == "drop-line":
                del lines[i]
            else:
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif action == "number":
            digits = [i for i, ch in enumerate(text) if ch.isdigit()]
            if digits:
                at = draw(st.sampled_from(digits))
                number = draw(
                    st.sampled_from(["0", "-1", "0.5", "6.5", "1e3", "99999999999", "true", "''", "[]", "{}"])
                )
                text = text[:at] + number + text[at + 1 :]
    return text


@settings(max_examples=150, deadline=None)
@given(mutated_specs())
def test_mutated_shipped_specs_raise_only_densegraph_errors(text: str) -> None:
    _parse_and_build(text)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([*_YAML_BITS, *"abcdefgkrs_", *_KEYS]), max_size=40).map("".join))
def test_arbitrary_yaml_ish_text_raises_only_densegraph_errors(text: str) -> None:
    _parse_and_build(text)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70) | st.floats(allow_nan=True) | st.sampled_from(_KEYS),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(_KEYS), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(_KEYS), yaml_values, max_size=7))
def test_structured_garbage_raises_only_densegraph_errors(document: dict) -> None:  # type: ignore[type-arg]
    import yaml

    _parse_and_build(yaml.safe_dump(document))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_SHIPPED_TEXTS), st.binary(min_size=1, max_size=6), st.integers(0, 400))
def test_mutated_bytes_through_load_spec_raise_only_densegraph_errors(
    text: str, junk: bytes, at: int
) -> None:
    data = text.encode()
    assume(at <= len(data))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mutated.yaml"
        path.write_bytes(data[:at] + junk + data[at:])
        try:
            spec = load_spec(path)
            if sum(b.layers**2 for b in spec.blocks) <= _MAX_BUILD:
                build_graph(spec)
        except DensegraphError as exc:
            assert "\n" not in exc.format()


# ---------------------------------------------------------------------------------------------------------
# chain (VoVNet's one-shot aggregation) and harmonic (HarDNet) connectivity


def test_chain_and_harmonic_sources_by_hand() -> None:
    chain = Connectivity("chain")
    assert [layer_sources(chain, i) for i in (1, 2, 5)] == [[0], [1], [4]]
    assert block_outputs(chain, 3) == [0, 1, 2, 3]  # the block input and every layer, concatenated once
    harmonic = Connectivity("harmonic", multiplier=1.7)
    # layer k takes k - 2^n for each 2^n dividing k, nearest first (the reference's concatenation order)
    assert layer_sources(harmonic, 1) == [0]
    assert layer_sources(harmonic, 2) == [1, 0]
    assert layer_sources(harmonic, 6) == [5, 4]
    assert layer_sources(harmonic, 8) == [7, 6, 4, 0]
    assert layer_sources(harmonic, 12) == [11, 10, 8]
    assert block_outputs(harmonic, 8) == [1, 3, 5, 7, 8]
    assert block_outputs(harmonic, 4) == [1, 3, 4]
    # growth 14, multiplier 1.7: 14; 14*1.7 = 23.8 -> 24; 14*1.7^2 = 40.46 -> 40; 14*1.7^3 = 68.78 -> 68
    assert [layer_width(harmonic, 14, i) for i in (1, 2, 3, 4, 8)] == [14, 24, 14, 40, 68]
    # growth 16, multiplier 1.6 (HarDNet-39DS block 1): 16, 25.6 -> 26, 16, 40.96 -> 40
    assert [layer_width(Connectivity("harmonic", multiplier=1.6), 16, i) for i in range(1, 5)] == [
        16,
        26,
        16,
        40,
    ]


HARMONIC_TINY = """\
name: harmonic-tiny
input: {channels: 3, size: 8}
growth_rate: 4
bottleneck: 0
activation: relu6
layer: {order: post}
connectivity: {kind: harmonic, multiplier: 2}
stem: {convs: [{channels: 6}]}
blocks: [{layers: 4, aggregate: 10}]
head: {classes: 5, norm: false}
"""


def test_harmonic_block_by_hand() -> None:
    g = build_graph(spec_from_string(HARMONIC_TINY))
    # widths: 4, 8, 4, 16; inputs: l1 <- [in], l2 <- [l1, in], l3 <- [l2], l4 <- [l3, l2, in]
    assert node_inputs(g, "block1.layer4") == ["block1.layer3", "block1.layer2", "block1.input"]
    assert [g.nodes[f"block1.layer{i}"]["in_channels"] for i in range(1, 5)] == [6, 10, 8, 18]
    assert [g.nodes[f"block1.layer{i}"]["out_channels"] for i in range(1, 5)] == [4, 8, 4, 16]
    assert node_inputs(g, "block1.aggregate") == ["block1.layer1", "block1.layer3", "block1.layer4"]
    assert g.nodes["block1.aggregate"]["in_channels"] == 24
    assert [op["op"] for op in g.nodes["block1.layer2"]["ops"]] == ["conv", "bn", "relu6"]
    layers = sum(cin * w * 9 + 2 * w for cin, w in [(6, 4), (10, 8), (8, 4), (18, 16)])
    stem = 6 * 3 * 9 + 12
    assert totals(g)["params"] == stem + layers + (24 * 10 + 20) + (10 * 5 + 5)
    assert g.graph["blocks"][0]["edges"] == 1 + 2 + 1 + 3


def _swap_harmonic_inputs(g: nx.DiGraph) -> None:
    a, b = g.edges["block1.layer3", "block1.layer4"], g.edges["block1.layer2", "block1.layer4"]
    a["position"], b["position"] = b["position"], a["position"]


def test_check_graph_catches_a_harmonic_layer_reading_in_the_wrong_order() -> None:
    g = build_graph(spec_from_string(HARMONIC_TINY))
    _swap_harmonic_inputs(g)
    with pytest.raises(GraphError):
        check_graph(g)


def _drop_exported_layer(g: nx.DiGraph) -> None:
    g.graph["blocks"][0]["outputs"] = g.graph["blocks"][0]["outputs"][1:]


def test_check_graph_catches_a_wrong_block_output() -> None:
    g = build_graph(spec_from_string(HARMONIC_TINY))
    _drop_exported_layer(g)
    with pytest.raises(GraphError):
        check_graph(g)


@dataclass(frozen=True)
class GenFamilyBlock:
    layers: int
    growth_rate: int
    aggregate: int
    pool: bool


def _harmonic_reference(layer: int, base: int, growth: int, multiplier: float) -> tuple[int, int, list[int]]:
    """(width, input channels, sources) of a harmonic layer, by the recursion of HarDNet's paper / reference."""
    if layer == 0:
        return base, 0, []
    width: float = growth
    links = []
    for n in range(10):
        if layer % 2**n == 0:
            links.append(layer - 2**n)
            if n > 0:
                width *= multiplier
    width = int(int(width + 1) / 2) * 2
    return int(width), sum(_harmonic_reference(i, base, growth, multiplier)[0] for i in links), links


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["chain", "harmonic"]),
    multiplier=st.sampled_from([1.0, 1.6, 1.7, 2.0]),
    separable=st.booleans(),
    stem_channels=st.integers(1, 12),
    blocks=st.lists(
        st.builds(
            GenFamilyBlock,
            layers=st.integers(1, 17),
            growth_rate=st.integers(1, 12),
            aggregate=st.integers(1, 24),
            pool=st.booleans(),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_generated_chain_and_harmonic_specs(
    kind: str, multiplier: float, separable: bool, stem_channels: int, blocks: list[GenFamilyBlock]
) -> None:
    conn = "chain" if kind == "chain" else f"{{kind: harmonic, multiplier: {multiplier}}}"
    lines = [
        "input: {channels: 3, size: 16}",
        "growth_rate: 4",
        "bottleneck: 0",
        f"layer: {{order: post, separable: {str(separable).lower()}}}",
        f"connectivity: {conn}",
        f"stem: {{convs: [{{channels: {stem_channels}}}]}}",
        "transition: {conv: none, pool: {kind: max, kernel: 2, stride: 2}}",
        "blocks:",
    ]
    for b in blocks:
        pool = "" if b.pool else ", transition: {pool: none}"
        lines.append(
            f"  - {{layers: {b.layers}, growth_rate: {b.growth_rate}, aggregate: {b.aggregate}{pool}}}"
        )
    lines.append("head: {classes: 3, norm: false}")
    graph = build_graph(spec_from_string("\n".join(lines) + "\n"))
    check_graph(graph)

    params = 3 * stem_channels * 9 + 2 * stem_channels
    channels = stem_channels
    for b in blocks:
        widths, sources = [], []
        for i in range(1, b.layers + 1):
            if kind == "chain":
                w, cin = b.growth_rate, channels if i == 1 else b.growth_rate
                sources.append([i - 1])
            else:
                w, cin, links = _harmonic_reference(i, channels, b.growth_rate, multiplier)
                sources.append(links)
            widths.append(w)
            params += (cin * w + 2 * w + 9 * w + 2 * w) if separable else (cin * w * 9 + 2 * w)
        exported = (
            channels + sum(widths)
            if kind == "chain"
            else sum(w for i, w in enumerate(widths, 1) if i % 2 == 1 or i == b.layers)
        )
        params += exported * b.aggregate + 2 * b.aggregate
        channels = b.aggregate
        index = blocks.index(b) + 1
        info = graph.graph["blocks"][index - 1]
        assert info["widths"] == widths
        assert info["edges"] == sum(len(s) for s in sources)
    params += channels * 3 + 3
    assert totals(graph)["params"] == params


# ---------------------------------------------------------------------------------------------------------
# features heads (backbones)


def test_densenet121_features_head_shapes() -> None:
    g = build_graph(load_spec(REPO / "tests" / "data" / "densenet121-features.yaml"))
    outputs = {o["name"]: (o["channels"], o["size"], o["stride"]) for o in g.graph["outputs"]}
    assert outputs == {
        "block2": (512, [28, 28], 8),
        "block3": (1024, [14, 14], 16),
        "block4": (1024, [7, 7], 32),
    }
    # block2's output is its concatenation before the transition: the transition reads the same maps
    assert node_inputs(g, "output.block2") == node_inputs(g, "transition2")
    assert "head" not in g and g.graph["output_shape"] == ()
    check_graph(g)


def test_features_head_stops_after_the_last_output_and_names_stages() -> None:
    text = (REPO / "specs" / "vovnet" / "vovnet39a.yaml").read_text()
    text = text.replace(
        "head: {classes: 1000, norm: false}", "head: {kind: features, outputs: [stage2, stage3]}"
    )
    g = build_graph(spec_from_string(text))
    # stages are cut by the downsampling transitions: stage 3 ends with block 4 (two OSA modules)
    assert [(o["name"], o["block"], o["channels"], o["stride"]) for o in g.graph["outputs"]] == [
        ("stage2", 2, 512, 8),
        ("stage3", 4, 768, 16),
    ]
    assert node_inputs(g, "output.stage3") == ["block4.aggregate"]
    assert "block5.input" not in g  # nothing after the last requested output is built
    with pytest.raises(SpecError, match="stage5, but the network has 4 stages"):
        build_graph(spec_from_string(text.replace("[stage2, stage3]", "[stage5]")))


def test_check_graph_catches_a_stray_sink_in_a_features_graph() -> None:
    g = build_graph(load_spec(REPO / "tests" / "data" / "densenet121-features.yaml"))
    g.graph["outputs"] = g.graph["outputs"][:-1]
    with pytest.raises(GraphError, match="sinks must be the feature outputs"):
        check_graph(g)
