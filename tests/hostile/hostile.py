"""Helpers for the hostile-input suite (`from hostile import run_cli, assert_refused, snapshot`): run the CLI as a
user would and check the one-line refusal.

Every hostile case asserts the same contract: exit status 2, nothing on stdout that claims success, exactly one
line on stderr of the form ``WHERE: error: MESSAGE (hint: …)`` naming the offending file, no traceback, and every
file that existed before byte-identical afterwards (see :func:`snapshot`).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Refusal:
    returncode: int
    stdout: str
    stderr: str

    @property
    def line(self) -> str:
        return self.stderr.strip()


def run_cli(*args: str, cwd: Path | str = REPO, timeout: float = 300, stdin: str | None = None) -> Refusal:
    """``python -m densegraph ARGS`` in ``cwd`` with this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "densegraph", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        input=stdin,
    )
    return Refusal(done.returncode, done.stdout, done.stderr)


def assert_refused(result: Refusal, *, names: str | os.PathLike[str] | None = None, says: str = "") -> str:
    """Exit 2, one ``error:`` line (naming ``names`` when given, containing ``says``), no traceback."""
    assert result.returncode == 2, (
        f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{result.stderr}"
    line = lines[0]
    assert "error: " in line, line
    if names is not None:
        assert str(names) in line.split("error: ", 1)[0] or str(names) in line, (
            f"{names} not named in {line!r}"
        )
    assert says in line, f"{says!r} not in {line!r}"
    return line


def snapshot(*roots: str | os.PathLike[str]) -> dict[str, str]:
    """Path -> sha256 (or the link target / ``dir``) of everything under ``roots``, to compare before/after."""
    seen: dict[str, str] = {}
    for root in map(Path, roots):
        if not root.exists() and not root.is_symlink():
            continue
        entries = [root, *sorted(root.rglob("*"))] if root.is_dir() and not root.is_symlink() else [root]
        for path in entries:
            if path.is_symlink():
                seen[str(path)] = "link:" + os.readlink(path)
            elif path.is_dir():
                seen[str(path)] = "dir"
            elif path.is_file():
                seen[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                seen[str(path)] = "special"
    return seen
