"""densegraph.lower.weights: torchvision files in both key styles, checkpoints, safety, import-weights."""

from __future__ import annotations

import collections
import pickle
from pathlib import Path

import pytest
import torch

from densegraph.cli import main
from densegraph.errors import CheckpointError
from densegraph.lower.torch import to_torch
from densegraph.lower.weights import load_weights, save_atomic, state_dict_from_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY_SPEC = str(Path(__file__).resolve().parents[1] / "data" / "torchvision-tiny.yaml")
MODERN = FIXTURES / "torchvision-tiny-densenet.pth"
LEGACY = FIXTURES / "torchvision-tiny-densenet-legacy-keys.pth"
IO = FIXTURES / "torchvision-tiny-densenet-io.pt"


def _reference() -> dict[str, torch.Tensor]:
    return torch.load(IO, map_location="cpu", weights_only=True)


def _check_outputs(module: torch.nn.Module) -> None:
    io = _reference()
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(module(io["input"]), io["output"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("path", [MODERN, LEGACY], ids=["modern-keys", "legacy-keys"])
def test_torchvision_files_load_strict_and_reproduce_outputs(path: Path) -> None:
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if path == LEGACY:
        assert any(".norm.1." in k for k in raw)
    module = load_weights(to_torch(TINY_SPEC), path)
    _check_outputs(module)
    assert set(state_dict_from_file(path)) == set(module.state_dict())


def test_checkpoint_wrappers_and_ddp_prefix(tmp_path: Path) -> None:
    state = torch.load(MODERN, map_location="cpu", weights_only=True)
    layouts = {
        "state_dict": {"state_dict": state, "epoch": 3, "best_top1": 91.0},
        "model": {"model": {f"module.{k}": v for k, v in state.items()}, "optimizer": {}},
        "plain-ddp": collections.OrderedDict((f"module.{k}", v) for k, v in state.items()),
    }
    for name, obj in layouts.items():
        path = tmp_path / f"{name}.pt"
        torch.save(obj, path)
        _check_outputs(load_weights(to_torch(TINY_SPEC), path))


def test_legacy_file_without_num_batches_tracked(tmp_path: Path) -> None:
    # torchvision's published ImageNet files predate BatchNorm's num_batches_tracked
    legacy = torch.load(LEGACY, map_location="cpu", weights_only=True)
    path = tmp_path / "old.pth"
    torch.save({k: v for k, v in legacy.items() if not k.endswith("num_batches_tracked")}, path)
    _check_outputs(load_weights(to_torch(TINY_SPEC), path))


def test_mismatch_is_one_error_naming_keys(tmp_path: Path) -> None:
    state = torch.load(MODERN, map_location="cpu", weights_only=True)
    del state["features.norm5.weight"]
    state["features.extra.weight"] = torch.zeros(3)
    features = state["classifier.weight"].shape[1]
    state["classifier.weight"] = torch.zeros(5, features)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_weights(to_torch(TINY_SPEC), path, model_name="tiny.yaml")
    text = info.value.format()
    assert "\n" not in text and str(path) in text
    assert "1 missing: features.norm5.weight" in text
    assert "1 unexpected: features.extra.weight" in text
    assert f"classifier.weight (file [5, {features}], model [10, {features}])" in text
    assert "hint:" in text


def test_weights_of_another_spec_are_refused() -> None:
    with pytest.raises(CheckpointError, match=r"\d+ missing: .*\d+ unexpected: .*with another shape"):
        load_weights(to_torch("specs/digits.yaml"), MODERN)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_with_code_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _RunsCode(marker)}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refusing to load.*would run code") as info:
        state_dict_from_file(path)
    assert not marker.exists()
    assert "open" in info.value.format() and "\n" not in info.value.format()
    # a classic (non-zip) pickle carrying code is refused too
    classic = tmp_path / "evil.pkl"
    classic.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(CheckpointError, match="'io.open', and loading it would run code"):
        state_dict_from_file(classic)
    assert not marker.exists()


def test_unreadable_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 definitely not a checkpoint " * 10)
    with pytest.raises(CheckpointError, match="not a PyTorch weights file"):
        state_dict_from_file(garbage)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(MODERN.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a PyTorch weights file"):
        state_dict_from_file(truncated)
    with pytest.raises(CheckpointError, match="no such file"):
        state_dict_from_file(tmp_path / "missing.pt")
    no_tensors = tmp_path / "meta.pt"
    torch.save({"epoch": 1, "note": "hi"}, no_tensors)
    with pytest.raises(CheckpointError, match="holds no tensors"):
        state_dict_from_file(no_tensors)


def test_save_atomic_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    save_atomic({"a": torch.ones(2)}, path)

    class Boom:
        def __reduce__(self) -> tuple[object, tuple[()]]:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"a": Boom()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]


@pytest.mark.parametrize("source", [MODERN, LEGACY], ids=["modern-keys", "legacy-keys"])
def test_import_weights_cli(tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny.pt"
    assert main(["import-weights", str(source), "--spec", TINY_SPEC, "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    state = torch.load(out, map_location="cpu", weights_only=True)
    assert all(".norm.1." not in k for k in state)
    module = to_torch(TINY_SPEC)
    module.load_state_dict(state, strict=True)
    _check_outputs(module)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]


def test_import_weights_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.pt"
    assert main(["import-weights", str(MODERN), "--spec", "specs/digits.yaml", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "do not fit" in err
    assert (
        main(["import-weights", str(MODERN), "--spec", TINY_SPEC, "-o", str(tmp_path / "no" / "x.pt")]) == 2
    )
    assert "output folder does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"junk\n", b"\x80\x02}q\x00.", b"PK\x03\x04broken", b""])
def test_arbitrary_bytes_give_one_checkpoint_error(tmp_path: Path, content: bytes) -> None:
    from densegraph.errors import CheckpointError
    from densegraph.lower.weights import load_file

    path = tmp_path / "w.pth"
    path.write_bytes(content)
    try:
        result = load_file(path)
    except CheckpointError as exc:
        assert str(path) in exc.format() and "\n" not in exc.format()
    else:  # a tiny valid pickle of an empty dict is a (useless) valid file
        assert result == {}


# timm's own saves (tools/make_fixtures.py): deep stem, blur-pooled stem, a VoVNet, each with its spec in
# tests/data; random weights and BatchNorm statistics, timm's eval-mode outputs on a [2, 3, 64, 64] input.
TIMM = ["densenet-deep", "densenet-blur", "vovnet"]


def _timm(name: str) -> tuple[str, Path, dict[str, torch.Tensor], dict]:  # type: ignore[type-arg]
    import json

    spec = str(Path(__file__).resolve().parents[1] / "data" / f"timm-tiny-{name}.yaml")
    io = torch.load(FIXTURES / f"timm-tiny-{name}-io.pt", map_location="cpu", weights_only=True)
    meta = json.loads((FIXTURES / f"timm-tiny-{name}.json").read_text())
    return spec, FIXTURES / f"timm-tiny-{name}.pth", io, meta


@pytest.mark.parametrize("name", TIMM)
def test_timm_files_load_strict_and_reproduce_timm_outputs(name: str) -> None:
    from densegraph.lower.torch import freeze

    spec, weights, io, meta = _timm(name)
    module = to_torch(spec)
    assert sum(p.numel() for p in module.parameters()) == meta["params"]
    raw = torch.load(weights, map_location="cpu", weights_only=True)
    assert set(raw) == set(module.state_dict())  # timm's key names, one for one
    load_weights(module, weights)
    module.eval()
    scale = io["output"].abs().max().item()
    with torch.no_grad():
        for run in (module, freeze(module), freeze(module, for_export=True)):
            torch.testing.assert_close(run(io["input"]), io["output"], rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("name", TIMM)
def test_import_weights_accepts_timm_files(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, weights, io, _ = _timm(name)
    out = tmp_path / "imported.pt"
    assert main(["import-weights", str(weights), "--spec", spec, "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    module = load_weights(to_torch(spec), out).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            module(io["input"]), io["output"], rtol=1e-5, atol=1e-6 * io["output"].abs().max().item()
        )


def test_timm_vovnet_file_does_not_fit_a_torchvision_named_spec(tmp_path: Path) -> None:
    # the same architecture without the spec's names: table is refused with the keys that differ
    text = Path(_timm("vovnet")[0]).read_text().split("names:")[0]
    spec = tmp_path / "unnamed.yaml"
    spec.write_text(text)
    with pytest.raises(
        CheckpointError, match=r"missing: features\.conv0\.weight.*unexpected: stem\.0\.conv\.weight"
    ):
        load_weights(to_torch(spec), _timm("vovnet")[1])
