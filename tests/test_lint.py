"""The tree's lint gates, as tests: ``ruff check``, ``ruff format --check`` and ``mypy densegraph``, with the
versions pinned in pyproject.toml's ``dev`` extra (so a new release of a linter cannot turn CI red overnight)."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def _pinned(package: str) -> str:
    match = re.search(rf'"{package}==([^"]+)"', PYPROJECT)
    assert match, f"pyproject.toml's dev extra pins no {package} version"
    return match.group(1)


def _run(package: str, *args: str) -> None:
    try:
        installed = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{package} is not installed (pip install -e '.[cpu,dev]')")
    assert installed == _pinned(package), (
        f"{package} {installed} installed, pyproject.toml pins {_pinned(package)}"
    )
    done = subprocess.run([sys.executable, "-m", package, *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"{package} {' '.join(args)}:\n{done.stdout[-6000:]}{done.stderr[-2000:]}"


def test_ruff_check() -> None:
    _run("ruff", "check", "densegraph", "tests", "tools")


def test_ruff_format() -> None:
    _run("ruff", "format", "--check", "densegraph", "tests", "tools")


def test_mypy() -> None:
    _run("mypy", "densegraph")
