"""Hostile values: checkpoints whose tensors cannot be weights, code-carrying pickles, damaged training
checkpoints, numbers no flag should take, calibration data that is not images, and inputs too big to allocate.

Each case runs the CLI as a user would and asserts the one-line refusal (exit 2, the file or flag named) and that
every file that existed before is byte-identical afterwards. The fixtures are made here, from the tiny spec.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile import REPO, assert_refused, run_cli, snapshot
from inprocess import run_main

from densegraph.data import Dataset
from densegraph.lower.torch import to_torch

TINY = str(REPO / "tests" / "data" / "tiny-digits.yaml")
FIRST_CONV = "features.conv0.weight"  # the first tensor of the tiny spec's state_dict


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return to_torch(TINY, seed=0).state_dict()


def _save_with(
    state: dict[str, torch.Tensor], path: Path, change: Callable[[torch.Tensor], torch.Tensor]
) -> Path:
    crafted = dict(state)
    crafted[FIRST_CONV] = change(crafted[FIRST_CONV])
    torch.save(crafted, path)
    return path


def _quantized(t: torch.Tensor) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():  # quantized tensors are deprecated, and still what such a file holds
        warnings.simplefilter("ignore")
        return torch.quantize_per_tensor(t, 0.1, 0, torch.qint8)


def _with_nan(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[5] = float("nan")
    return t


def _with_inf(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[[1, 2]] = float("-inf")
    return t


# same name and shape as the model's tensor, and still not weights
BAD_TENSORS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    "sparse": (lambda t: t.to_sparse(), f"{FIRST_CONV} is a sparse tensor (sparse_coo)"),
    "meta": (lambda t: torch.empty_like(t, device="meta"), f"{FIRST_CONV} is a meta tensor"),
    "quantized": (_quantized, f"{FIRST_CONV} is quantized (qint8)"),
    "complex": (lambda t: t.to(torch.complex64), f"{FIRST_CONV} is complex (complex64)"),
    "integer": (lambda t: (t * 100).to(torch.int64), f"{FIRST_CONV} holds int64 values, the model float32"),
    "nan": (_with_nan, f"{FIRST_CONV} holds non-finite values (1 NaN of 72)"),
    "inf": (_with_inf, f"{FIRST_CONV} holds non-finite values (2 infinite of 72)"),
}


@pytest.mark.parametrize("case", sorted(BAD_TENSORS))
def test_eval_refuses_tensors_that_are_not_weights(
    case: str, state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    change, says = BAD_TENSORS[case]
    weights = _save_with(state, tmp_path / f"{case}.pt", change)
    before = snapshot(tmp_path)
    run = run_cli if case == "nan" else run_main  # one through a real interpreter; the rest save its start-up
    result = run("eval", TINY, "--weights", weights, "--data", "digits")
    assert_refused(result, names=weights, says=says)
    assert result.stdout == ""
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["nan", "inf"])
def test_import_weights_does_not_write_non_finite_weights(
    case: str, state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    change, says = BAD_TENSORS[case]
    weights = _save_with(state, tmp_path / f"{case}.pt", change)
    out = tmp_path / "out.pt"
    torch.save(state, out)  # an earlier good import stays as it was
    before = snapshot(tmp_path)
    assert_refused(run_main("import-weights", weights, "--spec", TINY, "-o", out), names=weights, says=says)
    assert snapshot(tmp_path) == before


def test_bench_and_build_refuse_nan_weights_by_name(state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    weights = _save_with(state, tmp_path / "nan.pt", _with_nan)
    says = BAD_TENSORS["nan"][1]
    before = snapshot(tmp_path)
    bench = run_main(
        "bench", TINY, "--weights", weights, "--batch-sizes", "1", "--iters", "1", "--warmup", "0"
    )
    assert_refused(bench, names=weights, says=says)
    build = run_main("build", TINY, "--weights", weights, "-o", tmp_path / "out")
    assert_refused(build, names=weights, says=says)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------------------
# pickles that would run code: refused by name, never run


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _plain_pickle(protocol: int) -> Callable[[object, Path], None]:
    def write(obj: object, path: Path) -> None:
        path.write_bytes(pickle.dumps(obj, protocol=protocol))

    return write


PICKLES: dict[str, Callable[[object, Path], None]] = {
    # protocol 2 names the callable with a GLOBAL opcode: torch 2.13 calls the module "blocked"
    "global-opcode": _plain_pickle(2),
    # protocol 5 (the default) uses FRAME and STACK_GLOBAL, which torch's safe unpickler stops at earlier
    "stack-global": _plain_pickle(pickle.HIGHEST_PROTOCOL),
    "torch-zip": lambda obj, path: torch.save(obj, path),
}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", sorted(PICKLES))
def test_a_pickle_that_would_run_code_is_called_so_and_never_runs(case: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    weights = tmp_path / "evil.pt"
    PICKLES[case]({"state_dict": {FIRST_CONV: torch.zeros(1)}, "payload": _RunsShell(marker)}, weights)
    assert b"system" in weights.read_bytes() or case == "torch-zip"
    before = snapshot(tmp_path)
    line = assert_refused(
        run_cli("eval", TINY, "--weights", weights, "--data", "digits"), names=weights, says="would run code"
    )
    assert "system" in line and "corrupt" not in line
    assert not marker.exists()
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------------------
# train --resume with a damaged checkpoint


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of the tiny spec on 64 digits: a real RUN/last.pt to damage."""
    from densegraph.data import load_data
    from densegraph.training import train

    digits = load_data("digits", (1, 8, 8), split="all")
    parts = (digits.subset(np.arange(0, 64)), digits.subset(np.arange(64, 96)))
    run = tmp_path_factory.mktemp("run") / "run"
    train(TINY, parts, run, epochs=1, batch_size=32, threads=1, log=lambda text: None)
    return run


def _resume(tmp_path: Path, trained_run: Path, damage: Callable[[dict], None]) -> tuple[Path, Path]:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.pt", "metrics.csv"):
        (run / name).write_bytes((trained_run / name).read_bytes())
    ckpt = torch.load(trained_run / "last.pt", weights_only=True)
    damage(ckpt)
    torch.save(ckpt, run / "last.pt")
    return run, run / "last.pt"


def _drop_recorded_lr(ckpt: dict) -> None:
    del ckpt["args"]["lr"]


def _wrong_shape(ckpt: dict) -> None:
    ckpt["state_dict"][FIRST_CONV] = torch.zeros(3, 1, 3, 3)


def _nan_weight(ckpt: dict) -> None:
    ckpt["state_dict"][FIRST_CONV] = _with_nan(ckpt["state_dict"][FIRST_CONV])


def _momentum_of_another_shape(ckpt: dict) -> None:
    first = next(iter(ckpt["optimizer"]["state"]))
    ckpt["optimizer"]["state"][first]["momentum_buffer"] = torch.zeros(2, 2)


def _no_rng(ckpt: dict) -> None:
    ckpt["rng"] = {"torch": torch.zeros(3)}


def _recorded_lr_inf(ckpt: dict) -> None:
    ckpt["args"]["lr"] = float("inf")


DAMAGES: dict[str, tuple[Callable[[dict], None], str]] = {
    "args-incomplete": (_drop_recorded_lr, "recorded arguments lack lr"),
    "wrong-shape": (_wrong_shape, f"{FIRST_CONV} (file [3, 1, 3, 3], model [8, 1, 3, 3])"),
    "nan-weight": (_nan_weight, f"{FIRST_CONV} holds non-finite values"),
    "momentum-shape": (_momentum_of_another_shape, "optimizer state cannot be restored"),
    "rng": (_no_rng, "rng state cannot be restored"),
    "recorded-lr-inf": (_recorded_lr_inf, "recorded lr must be a positive finite number"),
}


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_resume_refuses_a_damaged_checkpoint(case: str, tmp_path: Path, trained_run: Path) -> None:
    damage, says = DAMAGES[case]
    run, last = _resume(tmp_path, trained_run, damage)
    before = snapshot(tmp_path)
    result = run_main("train", TINY, "--data", "digits", "-o", run, "--resume", "--threads", "1")
    assert_refused(result, names=last, says=says)
    assert snapshot(tmp_path) == before


def test_a_diverging_run_stops_before_writing_a_checkpoint(tmp_path: Path) -> None:
    from densegraph.errors import DensegraphError
    from densegraph.training import train

    rng = np.random.default_rng(0)
    data = Dataset(rng.random((32, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, 32), source="arrays")
    run = tmp_path / "run"
    with pytest.raises(DensegraphError, match=r"training diverged in epoch 1: the loss is nan") as info:
        train(TINY, (data, data), run, epochs=2, batch_size=16, lr=1e30, threads=1, log=lambda text: None)
    assert "--lr" in info.value.format() and not run.exists()


# ---------------------------------------------------------------------------------------------------------
# numbers: every numeric flag refuses what it cannot take, naming the flag


def _flag_cases(tmp: Path) -> list[tuple[list[object], str]]:
    run = tmp / "run"
    train = ["train", TINY, "--data", "digits", "-o", run]
    onnx = tmp / "model.onnx"  # never read: the flag is refused first
    return [
        ([*train, "--lr", "inf"], "argument --lr: expected a positive finite number, got 'inf'"),
        ([*train, "--lr", "nan"], "argument --lr: expected a positive finite number, got 'nan'"),
        ([*train, "--lr", "1e400"], "argument --lr: expected a positive finite number"),
        ([*train, "--lr", "0"], "argument --lr: expected a positive finite number, got '0'"),
        ([*train, "--lr", "-0.1"], "argument --lr: expected a positive finite number"),
        ([*train, "--seed", "-1"], "argument --seed: expected an integer in [0, 2**32), got '-1'"),
        ([*train, "--seed", str(2**32)], "argument --seed: expected an integer in [0, 2**32)"),
        ([*train, "--epochs", "0"], "--epochs must be a positive integer, got 0"),
        ([*train, "--batch-size", "-3"], "--batch-size must be a positive integer, got -3"),
        ([*train, "--threads", "-1"], "argument --threads: expected an integer >= 0, got '-1'"),
        ([*train, "--threads", "1000000000"], "--threads 1000000000 is more than 16 per core"),
        (["build", TINY, "-o", tmp / "out", "--seed", str(2**64)], "argument --seed: expected an integer"),
        (
            ["build", TINY, "-o", tmp / "out", "--target", "tensorrt", "--workspace", "inf"],
            "argument --workspace",
        ),
        (["build", TINY, "-o", tmp / "out", "--calib-samples", "0"], "--calib-samples must be positive"),
        (["engine", onnx, "-o", tmp / "m.engine", "--workspace", "nan"], "argument --workspace"),
        (["engine", onnx, "-o", tmp / "m.engine", "--dla", "-1"], "argument --dla: expected an integer >= 0"),
        (
            ["build", TINY, "-o", tmp / "out", "--batch-range", f"1:8:{2**40}"],
            "argument --batch-range: expected MIN:OPT:MAX",
        ),
        (["eval", TINY, "--weights", onnx, "--data", "digits", "--batch-size", "0"], "--batch-size must be"),
        (["bench", TINY, "--iters", "0"], "--iters must be >= 1"),
        (["bench", TINY, "--warmup", "-1"], "--warmup >= 0"),
        (["bench", TINY, "--batch-sizes", "0"], "argument --batch-sizes: expected positive integers"),
    ]


@pytest.mark.parametrize("index", range(21))
def test_a_number_no_flag_should_take_is_one_line(index: int, tmp_path: Path) -> None:
    cases = _flag_cases(tmp_path)
    assert len(cases) == 21
    argv, says = cases[index]
    (tmp_path / "keep.txt").write_text("the user's file\n")
    before = snapshot(tmp_path)
    flag = says.split("argument ", 1)[-1].split(":")[0].split(" ")[0]
    assert_refused(run_main(*argv), names=flag, says=says)
    assert snapshot(tmp_path) == before


def test_the_library_refuses_the_same_numbers(tmp_path: Path) -> None:
    from densegraph.errors import DensegraphError
    from densegraph.training import train

    for kwargs, says in (
        ({"lr": float("inf")}, "--lr must be a positive finite number"),
        ({"lr": float("nan")}, "--lr must be a positive finite number"),
        ({"seed": 2**32}, "--seed must be an integer in [0, 2**32)"),
        ({"seed": -1}, "--seed must be an integer in [0, 2**32)"),
        ({"epochs": 1.5}, "--epochs must be a positive integer"),
    ):
        with pytest.raises(DensegraphError, match=re.escape(says)):
            train(TINY, "digits", tmp_path / "run", **kwargs)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# calibration data that is not images, and inputs too big to allocate


def _npy(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(exist_ok=True)
    np.save(path, array)
    return path


def _header_only(path: Path, shape: tuple[int, ...], *, data_bytes: int) -> Path:
    path.parent.mkdir(exist_ok=True)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        f.truncate(f.tell() + data_bytes)  # a sparse file: no disk is used for its zeros
    return path


CALIBRATIONS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "all-zero": (
        lambda p: _npy(p, np.zeros((4, 1, 8, 8), np.float32)),
        "the calibration data is all zeros (4 samples)",
    ),
    "complex": (
        lambda p: _npy(p, np.full((4, 1, 8, 8), 1 + 2j, np.complex64)),
        "the array holds complex numbers (complex64)",
    ),
    "nan": (
        lambda p: _npy(p, np.where(np.arange(256).reshape(4, 1, 8, 8) == 70, np.nan, 0.5).astype(np.float32)),
        "the array holds NaN or infinite values (first in sample 1)",
    ),
    "inf": (
        lambda p: _npy(p, np.full((4, 1, 8, 8), np.inf, np.float64)),
        "the array holds NaN or infinite values (first in sample 0)",
    ),
    "header-claims-1e11-samples": (
        lambda p: _header_only(p, (10**11, 1, 8, 8), data_bytes=256),
        "the header declares a float32 array [100000000000, 1, 8, 8] (23.3 TiB), the file holds 256 B",
    ),
    "larger-than-memory": (
        lambda p: _header_only(p, (4 * 10**9, 1, 8, 8), data_bytes=4 * 10**9 * 256),
        "reading the array [4000000000, 1, 8, 8] float32 needs at least 953.7 GiB of memory",
    ),
}


@pytest.mark.parametrize("case", sorted(CALIBRATIONS))
def test_calibration_data_that_is_not_images_is_refused_by_name(case: str, tmp_path: Path) -> None:
    make, says = CALIBRATIONS[case]
    calib = make(tmp_path / "data" / f"{case}.npy")
    (tmp_path / "keep.txt").write_text("the user's file\n")

    def state() -> tuple[dict[str, str], int, int]:  # the sparse file is not read back: its size and mtime
        return (
            snapshot(tmp_path / "keep.txt", tmp_path / "out"),
            calib.stat().st_size,
            calib.stat().st_mtime_ns,
        )

    before = state()
    result = run_main("build", TINY, "--precision", "int8", "--calib", calib, "-o", tmp_path / "out")
    assert_refused(result, names=calib, says=says)
    assert state() == before


def test_bench_refuses_a_batch_the_machine_cannot_hold(tmp_path: Path) -> None:
    from densegraph._memory import human_bytes
    from densegraph.cost import peak_activation_bytes
    from densegraph.lower.torch import graph_of

    needed = human_bytes(peak_activation_bytes(graph_of(TINY), 10**9))
    before = snapshot(tmp_path)
    result = run_main("bench", TINY, "--batch-sizes", "1,1000000000", "--iters", "1", "--warmup", "0")
    assert_refused(result, names=TINY, says="--batch-sizes 1000000000 (the busiest node's feature maps")
    assert f"needs at least {needed} of memory" in result.stderr
    assert snapshot(tmp_path) == before


def test_peak_activation_bytes_counts_the_busiest_node() -> None:
    from densegraph.cost import peak_activation_bytes
    from densegraph.lower.torch import graph_of

    graph = graph_of(TINY)
    # a node holds its input (the concatenation) and what its ops produce
    per_node = []
    for _, data in graph.nodes(data=True):
        h, w = data.get("in_size") or (0, 0)
        per_node.append((data.get("in_channels") or 0) * h * w + data["activations"])
    assert peak_activation_bytes(graph, 1) == 4 * max(per_node)
    assert peak_activation_bytes(graph, 7, element_bytes=2) == 7 * 2 * max(per_node)
    total = sum(data["activations"] for _, data in graph.nodes(data=True))
    assert 64 * 4 < peak_activation_bytes(graph, 1) < (total + 64 * 8) * 4


def test_check_fits_names_what_needs_the_memory() -> None:
    from densegraph._memory import available_bytes, check_fits
    from densegraph.errors import DensegraphError, Loc

    have = available_bytes()
    assert have is not None and have > 0
    check_fits(1, "one byte")
    with pytest.raises(
        DensegraphError, match=r"--batch-sizes 9 needs at least 2\.0 GiB of memory, .* 1\.0 GiB"
    ):
        check_fits(2 << 30, "--batch-sizes 9", loc=Loc("m.onnx"), available=1 << 30)
