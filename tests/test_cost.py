"""The cost model (densegraph.cost): parameter and MAC counts against published references, CIO, tiles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from densegraph import build_graph, load_spec
from densegraph.cli import main

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "specs"

# (spec, params, MACs at the spec's input size or None): torchvision's counts for the ImageNet models (MACs at
# 224x224 counting convolutions and the classifier), the paper's Table 2 models on CIFAR-10 (10 classes).
PUBLISHED = [
    ("densenet121.yaml", 7_978_856, 2_834_161_664),
    ("densenet161.yaml", 28_681_000, 7_727_907_072),
    ("densenet169.yaml", 14_149_480, 3_359_843_328),
    ("densenet201.yaml", 20_013_928, 4_291_365_888),
    ("densenet264.yaml", 33_337_704, 5_751_653_376),
    ("cifar/densenet-l40-k12.yaml", 1_019_722, None),
    ("cifar/densenet-l100-k12.yaml", 6_979_642, None),
    ("cifar/densenet-l100-k24.yaml", 27_249_082, None),
    ("cifar/densenet-bc-l100-k12.yaml", 769_162, None),
    ("cifar/densenet-bc-l250-k24.yaml", 15_324_406, None),
    ("cifar/densenet-bc-l190-k40.yaml", 25_624_430, None),
]


# The densely connected family at 224x224 and 1000 classes: timm 1.0.31's parameter counts for its models, and
# for HarDNet those of the authors' hardnet.py (github.com/PingoLH/Pytorch-HarDNet; the paper rounds them to
# 17.6 / 36.7 / 4.2 / 3.5 M). MACs are densegraph's count (convolutions, blur filters and the classifier).
FAMILY = [
    ("densenet264d.yaml", 72_736_216, 13_470_266_880),
    ("densenetblur121d.yaml", 7_998_088, 3_075_608_576),
    ("vovnet/vovnet39a.yaml", 22_600_296, 7_072_227_328),
    ("vovnet/vovnet57a.yaml", 36_640_296, 8_930_144_256),
    ("hardnet/hardnet68.yaml", 17_565_348, 4_246_114_304),
    ("hardnet/hardnet85.yaml", 36_670_212, 9_074_081_584),
    ("hardnet/hardnet68ds.yaml", 4_180_602, 775_281_526),
    ("hardnet/hardnet39ds.yaml", 3_488_228, 429_471_474),
]


@pytest.mark.parametrize(("spec", "params", "macs"), FAMILY, ids=[p[0] for p in FAMILY])
def test_family_published_counts(
    spec: str, params: int, macs: int, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _summary(SPECS / spec, capsys)
    assert data["params"] == params
    assert data["macs"] == macs
    assert data["input_shape"] == [1, 3, 224, 224]
    assert data["output_shape"] == [1, 1000]


def test_densenet121_macs_by_block_hand_checked_cio(capsys: pytest.CaptureFixture[str]) -> None:
    # CIO (HarDNet's memory traffic): every conv reads its input and writes its output. Block 1 of densenet121
    # at 56x56: layer i reads 64 + 32 (i - 1) channels into conv1 (128 out), conv2 reads 128 and writes 32.
    data = _summary(SPECS / "densenet121.yaml", capsys)
    block1 = next(row for row in data["stages"] if row["stage"] == "denseblock1")
    pixels = 56 * 56
    expected = sum((64 + 32 * (i - 1) + 128) * pixels + (128 + 32) * pixels for i in range(1, 7))
    assert block1["cio_bytes"] == 4 * expected
    assert data["cio_bytes"] == 4 * sum(row["cio_bytes"] // 4 for row in data["stages"])


def _summary(spec: str | Path, capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    assert main(["summary", str(spec), "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)


@pytest.mark.parametrize(("spec", "params", "macs"), PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_published_counts(
    spec: str, params: int, macs: int | None, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _summary(SPECS / spec, capsys)
    assert data["params"] == params
    if macs is not None:
        assert data["macs"] == macs
        assert data["input_shape"] == [1, 3, 224, 224]
        assert data["output_shape"] == [1, 1000]
    else:
        assert data["input_shape"] == [1, 3, 32, 32]
        assert data["output_shape"] == [1, 10]
    assert data["flops"] == 2 * data["macs"]


@pytest.mark.parametrize(
    ("spec", "fp32", "int8"),
    [("densenet121.yaml", 1, 5), ("cifar/densenet-bc-l100-k12.yaml", 4, 18), ("digits.yaml", 227, 910)],
)
def test_batch_tile_fits_the_largest_concatenation_in_the_budget(spec: str, fp32: int, int8: int) -> None:
    from densegraph.cost import TILE_BYTES, batch_tile

    graph = build_graph(load_spec(SPECS / spec))
    largest = max(data["concat_elements"] for _, data in graph.nodes(data=True))
    assert (batch_tile(graph), batch_tile(graph, element_bytes=1)) == (fp32, int8)
    for element_bytes, tile in ((4, fp32), (1, int8)):
        # the most samples whose largest concatenation fits (one at least)
        assert tile == 1 or tile * largest * element_bytes <= TILE_BYTES
        assert (tile + 1) * largest * element_bytes > TILE_BYTES
    assert batch_tile(graph, budget=1) == 1
