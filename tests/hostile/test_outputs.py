"""Hostile outputs: ``-o`` never deletes or replaces what densegraph did not write.

Every refusal is exit 2, one line naming the offending path, and every file that was there before is
byte-identical afterwards (devices and FIFOs stay what they were). The positive cases show what ``-o`` may
still replace: a folder whose every entry the build wrote, and staging folders of killed builds.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hostile import REPO, Refusal, assert_refused, run_cli, snapshot

from densegraph._output import STAGING_MARKER, BuildOutput, foreign_entries, sweep_stale_staging
from densegraph.cli import main

TINY = str(REPO / "tests" / "data" / "torchvision-tiny.yaml")
DIGITS = str(REPO / "tests" / "data" / "tiny-digits.yaml")
WEIGHTS = REPO / "tests" / "fixtures" / "torchvision-tiny-densenet.pth"

pytestmark = pytest.mark.usefixtures("one_thread")


def cli(*args: str | os.PathLike[str], cwd: Path | None = None) -> Refusal:
    """:func:`run_cli` in this process (no interpreter start-up per case); ``run_cli`` stays for the cases where
    the process itself matters (killed, limited, the issue's own command line)."""
    out, err, previous = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err):
            code = main([os.fspath(a) for a in args])
    finally:
        os.chdir(previous)
    return Refusal(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A good build of the tiny spec (made once; tests copy it)."""
    out = tmp_path_factory.mktemp("build") / "out"
    done = cli("build", TINY, "-o", out)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture
def build_copy(tiny_build: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(tiny_build, out)
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch training run of the tiny digits spec (made once; tests copy it)."""
    run = tmp_path_factory.mktemp("train") / "run"
    done = cli("train", DIGITS, "--data", "digits", "--epochs", "1", "-o", run)
    assert done.returncode == 0, done.stderr
    return run


def refused(before: dict[str, str], roots: tuple[Path, ...], result: Refusal, *, names: Path | str) -> str:
    """The common contract: a clean one-line refusal naming ``names``, nothing changed under ``roots``."""
    line = assert_refused(result, names=str(names))
    assert snapshot(*roots) == before, "a file changed"
    return line


def no_staging_left(folder: Path) -> None:
    left = [p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".old"))]
    assert left == [], left


# ---------------------------------------------------------------------------------------------------------
# build -o: a folder holding anything densegraph did not write


def test_rebuild_reading_weights_from_the_output_keeps_them(build_copy: Path, tmp_path: Path) -> None:
    """The issue's case: `build s.yaml --weights out/w.pt -o out` must not delete out/w.pt and out/NOTES.txt."""
    shutil.copyfile(WEIGHTS, build_copy / "w.pt")
    (build_copy / "NOTES.txt").write_text("my notes\n")
    before = snapshot(tmp_path)
    line = refused(
        before, (tmp_path,), run_cli("build", TINY, "--weights", build_copy / "w.pt", "-o", build_copy),
        names=build_copy,
    )  # fmt: skip
    assert "NOTES.txt" in line and "w.pt" in line and "did not write" in line
    no_staging_left(tmp_path)


def test_a_file_added_to_a_build_is_named(build_copy: Path, tmp_path: Path) -> None:
    (build_copy / "results.csv").write_text("a,b\n1,2\n")
    before = snapshot(tmp_path)
    line = refused(before, (tmp_path,), cli("build", TINY, "-o", build_copy), names=build_copy)
    assert "results.csv" in line


def test_a_hidden_file_added_to_a_build_is_named(build_copy: Path, tmp_path: Path) -> None:
    (build_copy / ".keep").write_text("")
    before = snapshot(tmp_path)
    assert ".keep" in refused(before, (tmp_path,), cli("build", TINY, "-o", build_copy), names=build_copy)


def test_a_folder_added_to_a_build_is_named(build_copy: Path, tmp_path: Path) -> None:
    (build_copy / "plots").mkdir()
    (build_copy / "plots" / "a.png").write_bytes(b"\x89PNG")
    before = snapshot(tmp_path)
    assert "plots" in refused(before, (tmp_path,), cli("build", TINY, "-o", build_copy), names=build_copy)


def test_a_changed_build_file_is_named(build_copy: Path, tmp_path: Path) -> None:
    with open(build_copy / "graph.svg", "a") as f:
        f.write("<!-- annotated by hand -->\n")
    before = snapshot(tmp_path)
    line = refused(before, (tmp_path,), cli("build", TINY, "-o", build_copy), names=build_copy)
    assert "changed since the build: graph.svg" in line


def test_a_build_file_replaced_by_a_link_is_named(build_copy: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "mine.onnx"
    shutil.move(build_copy / "model.onnx", elsewhere)
    (build_copy / "model.onnx").symlink_to(elsewhere)
    before = snapshot(tmp_path)
    assert "model.onnx" in refused(
        before, (tmp_path,), cli("build", TINY, "-o", build_copy), names=build_copy
    )


def test_a_folder_without_a_manifest_is_no_build(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("\\begin{document}")
    before = snapshot(tmp_path)
    line = refused(before, (tmp_path,), cli("build", TINY, "-o", mine), names=mine)
    assert "holds no densegraph build" in line and "thesis.tex" in line


def test_a_foreign_manifest_is_no_build(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "manifest.json").write_text(json.dumps({"format": "someone-else/1", "files": {}}))
    (mine / "data.bin").write_bytes(b"\0" * 10)
    before = snapshot(tmp_path)
    line = refused(before, (tmp_path,), cli("build", TINY, "-o", mine), names=mine)
    assert "holds no densegraph build" in line and "data.bin" in line


def test_an_old_manifest_claims_only_the_files_it_names(build_copy: Path, tmp_path: Path) -> None:
    """A manifest from before `files` was recorded: its model and picture are densegraph's, nothing else."""
    manifest = json.loads((build_copy / "manifest.json").read_text())
    del manifest["files"]
    (build_copy / "manifest.json").write_text(json.dumps(manifest))
    (build_copy / "weights.pt").write_bytes(WEIGHTS.read_bytes())
    before = snapshot(tmp_path)
    assert "weights.pt" in refused(
        before, (tmp_path,), cli("build", TINY, "-o", build_copy), names=build_copy
    )


def test_a_file_added_during_the_build_is_kept(
    build_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked again just before the swap: a file that appears while the model is exported is not lost."""
    import densegraph.viz as viz

    real = viz.write_graph

    def write_graph(graph: object, path: Path) -> None:
        (build_copy / "late.txt").write_text("written meanwhile")
        real(graph, path)  # type: ignore[arg-type]

    monkeypatch.setattr(viz, "write_graph", write_graph)
    line = assert_refused(cli("build", TINY, "-o", build_copy), names=str(build_copy))
    assert "late.txt" in line
    assert (build_copy / "late.txt").read_text() == "written meanwhile"
    assert "model.onnx" in os.listdir(build_copy)
    assert sorted(os.listdir(tmp_path)) == ["out"]


# ---------------------------------------------------------------------------------------------------------
# build -o: something that is not a folder, or cannot be replaced


def test_output_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_text("a file of mine")
    before = snapshot(tmp_path)
    line = refused(before, (tmp_path,), cli("build", TINY, "-o", target), names=target)
    assert "is a regular file, not a folder" in line


def test_output_that_is_a_fifo(tmp_path: Path) -> None:
    target = tmp_path / "out"
    os.mkfifo(target)
    before = snapshot(tmp_path)
    line = refused(before, (tmp_path,), cli("build", TINY, "-o", target), names=target)
    assert "FIFO" in line and stat.S_ISFIFO(os.lstat(target).st_mode)


def test_output_that_is_dev_null() -> None:
    before = os.stat("/dev/null")
    line = assert_refused(cli("build", TINY, "-o", "/dev/null"), names="/dev/null")
    assert "character device" in line
    after = os.stat("/dev/null")
    assert (after.st_mode, after.st_rdev, after.st_ino) == (before.st_mode, before.st_rdev, before.st_ino)


def test_output_that_is_the_working_folder(build_copy: Path, tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    line = refused(before, (tmp_path,), run_cli("build", TINY, "-o", ".", cwd=build_copy), names=".")
    assert "current folder" in line


def test_output_that_holds_the_working_folder(build_copy: Path, tmp_path: Path) -> None:
    inside = tmp_path / "work"
    inside.mkdir()
    before = snapshot(tmp_path)
    line = refused(before, (tmp_path,), cli("build", TINY, "-o", tmp_path, cwd=inside), names=tmp_path)
    assert "holds it" in line


def test_output_link_to_a_folder_of_user_files(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("keep")
    link = tmp_path / "out"
    link.symlink_to(mine)
    before = snapshot(tmp_path, mine)
    line = refused(before, (tmp_path, mine), cli("build", TINY, "-o", link), names=link)
    assert "keep.txt" in line and link.is_symlink()


def test_output_link_to_dev_null(tmp_path: Path) -> None:
    link = tmp_path / "out"
    link.symlink_to("/dev/null")
    before = snapshot(tmp_path)
    assert "character device" in refused(before, (tmp_path,), cli("build", TINY, "-o", link), names=link)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_output_in_a_read_only_folder(build_copy: Path, tmp_path: Path) -> None:
    tmp_path.chmod(0o555)
    try:
        before = snapshot(tmp_path)
        refused(before, (tmp_path,), cli("build", TINY, "-o", build_copy), names=build_copy)
    finally:
        tmp_path.chmod(0o755)


# ---------------------------------------------------------------------------------------------------------
# a full disk: the message names the output, the previous build survives


def _limited_file_size(limit: int):  # type: ignore[no-untyped-def]
    def set_limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return set_limit


def test_a_full_disk_names_the_output_and_keeps_the_previous_build(build_copy: Path, tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes every write past 4 KiB fail as a full disk would: no root, nothing mounted."""
    before = snapshot(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "densegraph", "build", TINY, "--seed", "3", "-o", str(build_copy)],
        capture_output=True, text=True, cwd=tmp_path, preexec_fn=_limited_file_size(4096),
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    line = refused(before, (tmp_path,), Refusal(done.returncode, done.stdout, done.stderr), names=build_copy)
    assert line.startswith(f"{build_copy}: error: ") and ".tmp" not in line, line
    no_staging_left(tmp_path)


def test_a_full_disk_during_a_single_file_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import densegraph._io

    target = tmp_path / "g.json"
    target.write_text("the previous graph")
    before = snapshot(tmp_path)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(densegraph._io.os, "fsync", full)
    line = refused(before, (tmp_path,), cli("graph", TINY, "-o", target), names=target)
    assert "No space left on device" in line and ".tmp" not in line


# ---------------------------------------------------------------------------------------------------------
# single files: never renamed over a device, a FIFO or a folder


def test_graph_onto_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "g.json"
    os.mkfifo(fifo)
    before = snapshot(tmp_path)
    line = refused(before, (tmp_path,), cli("graph", TINY, "-o", fifo), names=fifo)
    assert "named pipe" in line and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_graph_onto_a_link_to_dev_null(tmp_path: Path) -> None:
    link = tmp_path / "g.svg"
    link.symlink_to("/dev/null")
    before = snapshot(tmp_path)
    line = refused(before, (tmp_path,), cli("graph", TINY, "-o", link), names=link)
    assert "/dev/null" in line and "character device" in line
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_graph_onto_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "g.dot"
    folder.mkdir()
    (folder / "inside").write_text("x")
    before = snapshot(tmp_path)
    assert "is a folder" in refused(before, (tmp_path,), cli("graph", TINY, "-o", folder), names=folder)


def test_import_weights_onto_dev_null() -> None:
    before = os.stat("/dev/null")
    result = run_cli("import-weights", WEIGHTS, "--spec", TINY, "-o", "/dev/null")
    assert "character device" in assert_refused(result, names="/dev/null")
    after = os.stat("/dev/null")
    assert (after.st_mode, after.st_rdev, after.st_ino) == (before.st_mode, before.st_rdev, before.st_ino)


def test_import_weights_onto_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "w.pt"
    os.mkfifo(fifo)
    before = snapshot(tmp_path)
    refused(before, (tmp_path,), cli("import-weights", WEIGHTS, "--spec", TINY, "-o", fifo), names=fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_import_weights_onto_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "w.pt"
    folder.mkdir()
    before = snapshot(tmp_path)
    result = cli("import-weights", WEIGHTS, "--spec", TINY, "-o", folder)
    assert "is a folder" in refused(before, (tmp_path,), result, names=folder)


def test_heatmap_json_onto_a_fifo_keeps_the_figure(tmp_path: Path) -> None:
    """Both outputs are checked before either is written: the old figure stays."""
    figure = tmp_path / "fig.png"
    figure.write_bytes(b"\x89PNG an earlier figure")
    os.mkfifo(tmp_path / "fig.json")
    before = snapshot(tmp_path)
    result = cli("heatmap", TINY, "--weights", WEIGHTS, "-o", figure, "--json")
    assert "named pipe" in refused(before, (tmp_path,), result, names=tmp_path / "fig.json")


# ---------------------------------------------------------------------------------------------------------
# train -o: the run folder's files are the run's


def test_new_run_into_a_folder_with_a_user_best_pt(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(WEIGHTS, run / "best.pt")
    before = snapshot(tmp_path)
    result = cli("train", DIGITS, "--data", "digits", "--epochs", "1", "-o", run)
    assert "best.pt" in refused(before, (tmp_path,), result, names=run)


def test_new_run_into_a_folder_with_a_user_metrics_csv(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("my,own,table\n")
    before = snapshot(tmp_path)
    result = cli("train", DIGITS, "--data", "digits", "--epochs", "1", "-o", run)
    assert "metrics.csv" in refused(before, (tmp_path,), result, names=run)


def test_new_run_where_last_pt_is_a_fifo(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "last.pt")
    before = snapshot(tmp_path)
    result = cli("train", DIGITS, "--data", "digits", "--epochs", "1", "-o", run)
    refused(before, (tmp_path,), result, names=run)


def test_resume_where_best_pt_is_a_fifo(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "best.pt").unlink()
    os.mkfifo(run / "best.pt")
    before = snapshot(tmp_path)
    result = cli("train", DIGITS, "--data", "digits", "--epochs", "2", "--resume", "-o", run)
    assert "named pipe" in refused(before, (tmp_path,), result, names=run / "best.pt")


def test_resume_where_best_pt_is_the_users(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.copyfile(WEIGHTS, run / "best.pt")
    before = snapshot(tmp_path)
    result = cli("train", DIGITS, "--data", "digits", "--epochs", "2", "--resume", "-o", run)
    assert "no checkpoint of this run" in refused(before, (tmp_path,), result, names=run / "best.pt")


def test_resume_where_metrics_csv_is_the_users(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "metrics.csv").write_text("notes about this run\n")
    before = snapshot(tmp_path)
    result = cli("train", DIGITS, "--data", "digits", "--epochs", "2", "--resume", "-o", run)
    assert "metrics" in refused(before, (tmp_path,), result, names=run / "metrics.csv")


# ---------------------------------------------------------------------------------------------------------
# what -o may still replace


def test_rebuild_of_a_pure_build_replaces_it(build_copy: Path, tmp_path: Path) -> None:
    old = (build_copy / "model.onnx").read_bytes()
    done = cli("build", TINY, "--seed", "5", "-o", build_copy)
    assert done.returncode == 0, done.stderr
    assert (build_copy / "model.onnx").read_bytes() != old
    manifest = json.loads((build_copy / "manifest.json").read_text())
    assert {"graph.svg", "model.onnx"} <= set(manifest["files"])  # every file the build wrote is listed
    assert sorted(os.listdir(build_copy)) == sorted([*manifest["files"], "manifest.json"])
    assert foreign_entries(build_copy) == ([], [])
    no_staging_left(tmp_path)


def test_build_through_a_link_keeps_the_link(tmp_path: Path) -> None:
    real = tmp_path / "real"
    link = tmp_path / "out"
    link.symlink_to(real)
    for _ in range(2):  # a new build, then a rebuild, both where the link points
        done = cli("build", TINY, "-o", link)
        assert done.returncode == 0, done.stderr
    assert link.is_symlink() and os.readlink(link) == str(real)
    listed = json.loads((real / "manifest.json").read_text())["files"]
    assert sorted(os.listdir(real)) == sorted([*listed, "manifest.json"]) and "model.onnx" in listed
    assert sorted(os.listdir(tmp_path)) == ["out", "real"]


def test_build_into_an_empty_working_folder_is_refused_with_a_hint(tmp_path: Path) -> None:
    line = assert_refused(cli("build", TINY, "-o", ".", cwd=tmp_path), names=".")
    assert "hint: run densegraph from the folder above it" in line
    assert os.listdir(tmp_path) == []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _staging(parent: Path, name: str, marker: dict | None) -> Path:  # type: ignore[type-arg]
    folder = parent / name
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"half a model")
    if marker is not None:
        (folder / STAGING_MARKER).write_text(json.dumps(marker))
    return folder


def test_only_stale_staging_folders_of_ours_are_swept(tmp_path: Path) -> None:
    host = socket.gethostname()
    out = tmp_path / "out"
    dead = _staging(tmp_path, ".out.dead0001.tmp", {"host": host, "pid": _dead_pid(), "start": None})
    aside = _staging(tmp_path, ".out.dead0002.old", {"host": host, "pid": _dead_pid(), "start": None})
    live = _staging(tmp_path, ".out.live0001.tmp", {"host": host, "pid": os.getpid(), "start": None})
    other_host = _staging(tmp_path, ".out.host0001.tmp", {"host": host + "-x", "pid": _dead_pid()})
    unmarked = _staging(tmp_path, ".out.mine0001.tmp", None)
    other_name = _staging(tmp_path, ".outer.dead0003.tmp", {"host": host, "pid": _dead_pid()})
    assert sorted(sweep_stale_staging(out)) == sorted([dead, aside])
    assert all(p.is_dir() for p in (live, other_host, unmarked, other_name))
    assert not dead.exists() and not aside.exists()


def test_a_reused_pid_does_not_keep_a_staging_folder(tmp_path: Path) -> None:
    """The marker records the process's start time: the same pid, started later, is another process."""
    marker = {"host": socket.gethostname(), "pid": os.getpid(), "start": "1"}
    stale = _staging(tmp_path, ".out.reused01.tmp", marker)
    assert sweep_stale_staging(tmp_path / "out") == [stale]


def test_a_killed_build_is_swept_by_the_next(build_copy: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-m", "densegraph", "build", TINY, "-o", str(build_copy)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    staged: list[Path] = []
    while time.monotonic() < deadline and not staged and child.poll() is None:
        staged = [p for p in tmp_path.glob(".out.*.tmp") if (p / STAGING_MARKER).exists()]
        time.sleep(0.02)
    child.kill()
    child.wait()
    assert staged, "the build ended before its staging folder was seen"
    assert staged[0].is_dir() and foreign_entries(build_copy) == ([], [])  # the previous build is whole
    done = run_cli("build", TINY, "-o", build_copy)
    assert done.returncode == 0, done.stderr
    no_staging_left(tmp_path)


def test_the_manifest_claims_what_build_engine_sh_writes_later(tmp_path: Path) -> None:
    """A TensorRT build made without a GPU: the engine that build_engine.sh writes on the device is ours."""
    out = tmp_path / "out"
    with BuildOutput(out) as output:
        (output.path / "model.onnx").write_bytes(b"onnx")
        (output.path / "build_engine.sh").write_text("#!/bin/sh\n")
        output.write_manifest({"format": "densegraph.build/1"}, later=["model.engine", "model.engine.json"])
        output.commit()
    assert sorted(os.listdir(out)) == ["build_engine.sh", "manifest.json", "model.onnx"]
    (out / "model.engine").write_bytes(b"plan")
    (out / "model.engine.json").write_text("{}")
    assert foreign_entries(out) == ([], [])
    (out / "model.engine.bak").write_bytes(b"plan")
    assert foreign_entries(out) == (["model.engine.bak"], [])


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_swap_and_restore_keep_one_whole_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    import densegraph._output as output_module

    if not exchange:
        monkeypatch.setattr(output_module, "_RENAMEAT2", None)
    out = tmp_path / "out"
    for content in (b"first", b"second"):
        with BuildOutput(out) as output:
            (output.path / "model.onnx").write_bytes(content)
            output.write_manifest({"format": "densegraph.build/1"})
            output.commit()
    before = snapshot(tmp_path)
    with pytest.raises(RuntimeError, match="engine failed"), BuildOutput(out) as output:
        (output.path / "model.onnx").write_bytes(b"third")
        output.swap()
        assert (out / "model.onnx").read_bytes() == b"third"
        raise RuntimeError("engine failed")
    assert snapshot(tmp_path) == before and (out / "model.onnx").read_bytes() == b"second"


def test_a_file_output_through_a_link_writes_where_it_points(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("an earlier graph")
    link = tmp_path / "g.json"
    link.symlink_to(real)
    done = cli("graph", TINY, "-o", link)
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and json.loads(real.read_text())["graph"]["name"] == "torchvision-tiny"
    assert sorted(os.listdir(tmp_path)) == ["g.json", "real.json"]


def test_a_build_killed_after_the_swap_is_not_replaced_blindly(build_copy: Path, tmp_path: Path) -> None:
    """Killed during the engine build (after the swap): the output has no manifest, the previous build waits
    beside it under the same marker; neither is touched, and the line says where the previous build is."""
    marker = json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "start": None})
    previous = tmp_path / ".out.killed01.tmp"
    shutil.move(build_copy, previous)
    (previous / STAGING_MARKER).write_text(marker)
    build_copy.mkdir()
    (build_copy / "model.onnx").write_bytes(b"the new model")
    (build_copy / STAGING_MARKER).write_text(marker)
    before = snapshot(tmp_path)
    line = refused(before, (tmp_path,), cli("build", TINY, "-o", build_copy), names=build_copy)
    assert "interrupted" in line and previous.name in line
