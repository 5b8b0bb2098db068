"""densegraph.training: it learns, checkpoints are safe and atomic, resume is exact, bad input is one line."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from densegraph.cli import main
from densegraph.data import Dataset, load_data
from densegraph.errors import CheckpointError, DensegraphError
from densegraph.lower.torch import to_torch
from densegraph.training import CHECKPOINT_FORMAT, METRICS_COLUMNS, train

ROOT = Path(__file__).resolve().parents[1]
DIGITS_SPEC = str(ROOT / "specs" / "digits.yaml")
TINY_SPEC = str(ROOT / "tests" / "data" / "tiny-digits.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, Dataset]:
    return load_data("digits", (1, 8, 8), split="train"), load_data("digits", (1, 8, 8), split="val")


@pytest.fixture(scope="module")
def small_digits(digits: tuple[Dataset, Dataset]) -> tuple[Dataset, Dataset]:
    train_set, val_set = digits
    return train_set.subset(slice(0, 320)), val_set.subset(slice(0, 100))


def _quiet(_: str) -> None:
    pass


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_digits_learns_in_two_epochs(tmp_path: Path, digits: tuple[Dataset, Dataset]) -> None:
    run = tmp_path / "run"
    summary = train(DIGITS_SPEC, digits, run, epochs=2, log=_quiet)
    assert summary["best_top1"] > 50.0  # chance is 10%
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "last.pt", "metrics.csv"]
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == METRICS_COLUMNS and [r["epoch"] for r in rows] == ["1", "2"]
    assert [float(r["lr"]) for r in rows] == [0.1, 0.01]  # divided by 10 at 50% of the epochs
    ckpt = _load(run / "last.pt")  # weights_only: tensors, dicts, lists, numbers and strings only
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["epoch"] == 2
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor) and len(ckpt["spec_sha256"]) == 64
    assert ckpt["args"]["epochs"] == 2 and ckpt["optimizer"]["param_groups"][0]["nesterov"] is True
    # the saved weights reproduce the logged val top-1
    module = to_torch(DIGITS_SPEC)
    module.load_state_dict(_load(run / "best.pt")["state_dict"])
    module.eval()
    with torch.no_grad():
        top1 = 100.0 * float((module(torch.from_numpy(digits[1].x)).argmax(1).numpy() == digits[1].y).mean())
    assert top1 == pytest.approx(summary["best_top1"], abs=1e-3)


def _interrupt_after(epoch: int) -> Any:
    def log(text: str) -> None:
        if text.startswith(f"epoch {epoch:>3}/"):
            raise KeyboardInterrupt  # as if killed right after the epoch's checkpoint

    return log


def test_resume_continues_exactly(tmp_path: Path, small_digits: tuple[Dataset, Dataset]) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(TINY_SPEC, small_digits, straight, epochs=3, batch_size=32, log=_quiet)
    with pytest.raises(KeyboardInterrupt):
        train(TINY_SPEC, small_digits, resumed, epochs=3, batch_size=32, log=_interrupt_after(1))
    assert _load(resumed / "last.pt")["epoch"] == 1
    train(TINY_SPEC, small_digits, resumed, resume=True, log=_quiet)  # epochs and batch size as recorded
    a, b = _load(straight / "last.pt"), _load(resumed / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in a["metrics"]]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in b["metrics"]]
    assert (resumed / "metrics.csv").read_text().count("\n") == 4


def test_killed_save_keeps_last_good_checkpoint(
    tmp_path: Path, small_digits: tuple[Dataset, Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def dying_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1 wrote last.pt and best.pt; die half-way through epoch 2's
            f.write(b"partial")
            raise KeyboardInterrupt
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train(TINY_SPEC, small_digits, run, epochs=2, batch_size=32, log=_quiet)
    monkeypatch.undo()
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "last.pt", "metrics.csv"]
    assert _load(run / "last.pt")["epoch"] == 1


def test_interrupted_first_epoch_leaves_nothing(
    tmp_path: Path, small_digits: tuple[Dataset, Dataset]
) -> None:
    run = tmp_path / "new" / "run"

    def die(text: str) -> None:
        if text.startswith("training"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TINY_SPEC, small_digits, run, epochs=1, log=die)
    assert not run.exists()


def test_trains_on_an_image_folder(tmp_path: Path, digits: tuple[Dataset, Dataset]) -> None:
    images = tmp_path / "images"
    for x, y in zip(digits[0].x[:60], digits[0].y[:60], strict=True):
        folder = images / f"digit{y}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((x[0] * 255).astype(np.uint8)).save(folder / f"{len(list(folder.iterdir()))}.png")
    lines: list[str] = []
    summary = train(
        TINY_SPEC, str(images), tmp_path / "run", epochs=2, batch_size=16, workers=1, log=lines.append
    )
    assert 0.0 <= summary["best_top1"] <= 100.0
    best = _load(tmp_path / "run" / "best.pt")
    assert _load(tmp_path / "run" / "last.pt")["args"]["data"] == str(images)
    assert best["classes"] == sorted({f"digit{y}" for y in digits[0].y[:60]})
    # the last line is the test figure of best.pt, which an independent scoring of the test split reproduces
    test = load_data(str(images), (1, 8, 8), split="test")
    module = to_torch(TINY_SPEC)
    module.load_state_dict(best["state_dict"])
    with torch.no_grad():
        expected = 100.0 * float((module.eval()(torch.from_numpy(test.x)).argmax(1).numpy() == test.y).mean())
    assert summary["test_samples"] == len(test) and summary["test_top1"] == pytest.approx(expected, abs=1e-3)
    assert lines[-1].startswith(f"test top-1 {expected:.2f}% on {len(test)} held-out images")


# ---------------------------------------------------------------------------------------------------------
# the CLI: one line, exit 2, nothing half-written


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_data_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    base = ["train", TINY_SPEC, "-o", str(run), "--epochs", "1"]
    _fails([*base, "--data", str(tmp_path / "missing")], capsys, "no such directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails([*base, "--data", str(empty)], capsys, "no class subfolders")
    bad = tmp_path / "bad"
    (bad / "a").mkdir(parents=True)
    for i in range(5):
        Image.new("L", (8, 8), i).save(bad / "a" / f"{i}.png")
    (bad / "a" / "zz-broken.png").write_bytes(b"\x89PNG but not really")
    _fails([*base, "--data", str(bad)], capsys, "zz-broken.png", "cannot decode")
    assert not run.exists()


def test_bad_run_folder_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    base = ["train", TINY_SPEC, "--data", "digits", "--epochs", "1"]
    _fails([*base, "-o", str(blocker / "run")], capsys, "cannot create the run folder")
    run = tmp_path / "run"
    _fails([*base, "-o", str(run), "--resume"], capsys, "no checkpoint to continue from")
    assert not run.exists()


def test_resume_refuses_another_spec(
    tmp_path: Path, small_digits: tuple[Dataset, Dataset], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    train(TINY_SPEC, small_digits, run, epochs=1, log=_quiet)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(CheckpointError, match="trained for another network"):
        train(DIGITS_SPEC, small_digits, run, epochs=2, resume=True, log=_quiet)
    _fails(["train", DIGITS_SPEC, "--data", "digits", "-o", str(run), "--resume"], capsys, "another network")
    _fails(
        ["train", TINY_SPEC, "--data", "digits", "-o", str(run)], capsys, "already holds a run", "--resume"
    )
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    # a spec with other comments and another path is still the same network
    copy = tmp_path / "copy.yaml"
    copy.write_text("# a comment\n" + Path(TINY_SPEC).read_text())
    summary = train(str(copy), small_digits, run, epochs=2, resume=True, log=_quiet)
    assert summary["epochs"] == 2 and _load(run / "last.pt")["epoch"] == 2


# ---------------------------------------------------------------------------------------------------------
# precision and layout


def test_amp_and_channels_last(tmp_path: Path, small_digits: tuple[Dataset, Dataset]) -> None:
    # no dropout: its masks are drawn in memory order, which channels_last changes
    spec = tmp_path / "no-dropout.yaml"
    spec.write_text(Path(TINY_SPEC).read_text().replace("dropout: 0.1", "dropout: 0.0"))
    plain = train(str(spec), small_digits, tmp_path / "plain", epochs=1, batch_size=32, log=_quiet)
    nhwc = train(
        str(spec), small_digits, tmp_path / "nhwc", epochs=1, batch_size=32, channels_last=True, log=_quiet
    )
    efficient = train(
        str(spec), small_digits, tmp_path / "eff", epochs=1, batch_size=32, memory_efficient=True, log=_quiet
    )
    a, b, c = (_load(tmp_path / name / "last.pt")["state_dict"] for name in ("plain", "nhwc", "eff"))
    for key in a:  # the same arithmetic in another memory layout / on block buffers: fp32 rounding apart
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(c[key], a[key], rtol=1e-4, atol=1e-5)
    assert nhwc["val_top1"] == pytest.approx(plain["val_top1"], abs=0.5)
    assert efficient["val_top1"] == pytest.approx(plain["val_top1"], abs=0.5)
    bf16 = train(TINY_SPEC, small_digits, tmp_path / "bf16", epochs=1, batch_size=32, amp="bf16", log=_quiet)
    record = _load(tmp_path / "bf16" / "last.pt")
    assert record["args"]["amp"] == "bf16" and 0.0 <= bf16["val_top1"] <= 100.0
    assert all(v.dtype != torch.bfloat16 for v in record["state_dict"].values())  # fp32 master weights
    with pytest.raises(DensegraphError, match="--amp fp16 needs a CUDA GPU"):
        train(TINY_SPEC, small_digits, tmp_path / "fp16", epochs=1, amp="fp16", log=_quiet)
    assert not (tmp_path / "fp16").exists()


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_it_says_so(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from densegraph.training.loop import precision_note

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    note = precision_note("bf16", torch.device("cpu"))
    assert (note is None) == native
    if note is not None:
        assert note.startswith("note: this CPU has no native bf16") and "\n" not in note
    assert precision_note(None, torch.device("cpu")) is None
    assert precision_note("bf16", torch.device("cuda")) is None
