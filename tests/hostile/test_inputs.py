"""Hostile inputs to every command that reads a file by path: named pipes, devices, folders, symlink loops,
over-long names, unreadable files. Each must be refused at once with one located line and exit 2, never hang
(every run has a timeout, so a hang fails the test) and never fill memory, and leave every file as it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hostile import REPO, Refusal, assert_refused, run_cli, snapshot

from densegraph.errors import SpecError
from densegraph.spec import load_spec

QUICK = 120  # seconds: a refusal takes a second or two (the time to import torch); a hang takes forever

SPEC = REPO / "specs" / "digits.yaml"


def _refused_quickly(tmp_path: Path, *args: str | os.PathLike[str], names: object, says: str) -> str:
    before = snapshot(tmp_path)
    result = run_cli(*map(str, args), cwd=tmp_path, timeout=QUICK)
    line = assert_refused(result, names=str(names), says=says)
    assert result.stdout == ""
    assert snapshot(tmp_path) == before
    return line


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _loop(path: Path) -> Path:
    path.symlink_to(path.name)  # a link to itself, relative, so the loop is inside tmp_path
    return path


# ---------------------------------------------------------------------------------------------------------
# the spec


def test_a_fifo_as_spec_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    _fifo(tmp_path / "spec.yaml")
    line = _refused_quickly(tmp_path, "validate", "spec.yaml", names="spec.yaml", says="named pipe (FIFO)")
    assert line.startswith("spec.yaml: error: is a named pipe (FIFO), not a spec file")


def test_a_fifo_as_spec_of_summary(tmp_path: Path) -> None:
    _fifo(tmp_path / "spec.yaml")
    _refused_quickly(tmp_path, "summary", "spec.yaml", "--json", names="spec.yaml", says="named pipe")


def test_dev_zero_as_spec_is_refused_before_reading(tmp_path: Path) -> None:
    _refused_quickly(tmp_path, "validate", "/dev/zero", names="/dev/zero", says="is a character device")


def test_a_symlink_to_dev_zero_as_spec(tmp_path: Path) -> None:
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    _refused_quickly(tmp_path, "validate", "zero.yaml", names="zero.yaml", says="is a character device")


def test_a_spec_over_one_megabyte(tmp_path: Path) -> None:
    (tmp_path / "big.yaml").write_text("growth_rate: 12\nblocks: [6]\n" + "# padding\n" * 120_000)
    _refused_quickly(tmp_path, "validate", "big.yaml", names="big.yaml", says="larger than 1 MB")


def test_a_directory_as_spec(tmp_path: Path) -> None:
    (tmp_path / "specs.yaml").mkdir()
    _refused_quickly(tmp_path, "validate", "specs.yaml", names="specs.yaml", says="is a folder")


def test_a_symlink_loop_as_spec(tmp_path: Path) -> None:
    _loop(tmp_path / "loop.yaml")
    _refused_quickly(tmp_path, "validate", "loop.yaml", names="loop.yaml", says="symbolic link loop")


def test_a_dangling_symlink_as_spec(tmp_path: Path) -> None:
    (tmp_path / "gone.yaml").symlink_to("nowhere.yaml")
    _refused_quickly(tmp_path, "validate", "gone.yaml", names="gone.yaml", says="no such file")


def test_a_spec_name_longer_than_the_system_allows(tmp_path: Path) -> None:
    name = "s" * 300 + ".yaml"
    _refused_quickly(tmp_path, "validate", name, names=name, says="longer than the system allows")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_spec(tmp_path: Path) -> None:
    spec = tmp_path / "secret.yaml"
    spec.write_text("growth_rate: 12\nblocks: [6]\n")
    spec.chmod(0)
    _refused_quickly(tmp_path, "validate", "secret.yaml", names="secret.yaml", says="permission denied")


def test_a_nul_byte_in_the_spec_path_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="NUL byte"):
        load_spec("specs/a\0b.yaml")


# ---------------------------------------------------------------------------------------------------------
# extends: the error points at the extends line of the spec that names the base


def _extending(tmp_path: Path, base: str) -> None:
    (tmp_path / "derived.yaml").write_text(f"growth_rate: 12\nextends: {base}\nblocks: [6]\n")


def test_extends_a_fifo(tmp_path: Path) -> None:
    _fifo(tmp_path / "base.yaml")
    _extending(tmp_path, "base.yaml")
    line = _refused_quickly(
        tmp_path, "validate", "derived.yaml", names="derived.yaml:2:10", says="named pipe"
    )
    assert "'extends' 'base.yaml'" in line


def test_extends_a_symlink_loop(tmp_path: Path) -> None:
    _loop(tmp_path / "base.yaml")
    _extending(tmp_path, "base.yaml")
    _refused_quickly(
        tmp_path, "validate", "derived.yaml", names="derived.yaml:2:10", says="symbolic link loop"
    )


def test_extends_a_symlink_to_dev_zero(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").symlink_to("/dev/zero")
    _extending(tmp_path, "base.yaml")
    _refused_quickly(tmp_path, "validate", "derived.yaml", names="derived.yaml:2:10", says="character device")


def test_extends_a_base_over_one_megabyte(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("growth_rate: 12\n" + "#" * 1_100_000 + "\n")
    _extending(tmp_path, "base.yaml")
    _refused_quickly(tmp_path, "validate", "derived.yaml", names="derived.yaml:2:10", says="larger than 1 MB")


# ---------------------------------------------------------------------------------------------------------
# weights, data and models


WEIGHTS_COMMANDS: dict[str, Callable[[str], list[str]]] = {
    "build": lambda w: ["build", str(SPEC), "--weights", w, "-o", "out"],
    "import-weights": lambda w: ["import-weights", w, "--spec", str(SPEC), "-o", "out.pt"],
    "eval": lambda w: ["eval", str(SPEC), "--weights", w, "--data", "digits"],
    "heatmap": lambda w: ["heatmap", str(SPEC), "--weights", w, "-o", "fig.png"],
}


@pytest.mark.parametrize("command", list(WEIGHTS_COMMANDS))
def test_a_fifo_as_weights(tmp_path: Path, command: str) -> None:
    _fifo(tmp_path / "w.pt")
    line = _refused_quickly(tmp_path, *WEIGHTS_COMMANDS[command]("w.pt"), names="w.pt", says="named pipe")
    assert "not a weights file" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.pt").exists()


def test_dev_zero_as_weights(tmp_path: Path) -> None:
    _refused_quickly(
        tmp_path, *WEIGHTS_COMMANDS["build"]("/dev/zero"), names="/dev/zero", says="character device"
    )


def test_a_symlink_loop_as_weights(tmp_path: Path) -> None:
    _loop(tmp_path / "w.pt")
    _refused_quickly(tmp_path, *WEIGHTS_COMMANDS["import-weights"]("w.pt"), names="w.pt", says="link loop")


def test_a_directory_as_weights(tmp_path: Path) -> None:
    (tmp_path / "w.pt").mkdir()
    _refused_quickly(tmp_path, *WEIGHTS_COMMANDS["import-weights"]("w.pt"), names="w.pt", says="is a folder")


def test_a_fifo_as_int8_calibration_data(tmp_path: Path) -> None:
    _fifo(tmp_path / "calib.npy")
    args = ["build", str(SPEC), "--precision", "int8", "--calib", "calib.npy", "-o", "out"]
    line = _refused_quickly(tmp_path, *args, names="calib.npy", says="named pipe")
    assert "not a .npy file" in line


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_a_fifo_as_onnx_model(tmp_path: Path, command: str) -> None:
    _fifo(tmp_path / "model.onnx")
    args = [command, "model.onnx", *(["--data", "digits"] if command == "eval" else [])]
    _refused_quickly(tmp_path, *args, names="model.onnx", says="named pipe")


def test_a_fifo_as_a_spec_to_bench(tmp_path: Path) -> None:
    _fifo(tmp_path / "spec.yaml")
    _refused_quickly(tmp_path, "bench", "spec.yaml", names="spec.yaml", says="named pipe")


def test_the_refusals_are_library_errors_too(tmp_path: Path) -> None:
    from densegraph.errors import CheckpointError, DataError
    from densegraph.lower.weights import load_file

    fifo = _fifo(tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="named pipe"):
        load_file(fifo)
    from densegraph.data import load_data

    with pytest.raises(DataError, match="named pipe"):
        load_data(str(_fifo(tmp_path / "x.npy")), (1, 8, 8))


def test_a_regular_file_still_reads(tmp_path: Path) -> None:
    # the same paths through a symlink and with the checks in place: a plain spec is accepted
    (tmp_path / "link.yaml").symlink_to(SPEC)
    result: Refusal = run_cli("validate", "link.yaml", cwd=tmp_path, timeout=QUICK)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("link.yaml: ok (digits")
