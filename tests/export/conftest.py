"""Fixtures of the TensorRT backend's tests: a fake TensorRT of each flavour with a fake cuda-python, or
neither (this machine as CI sees it). Helpers live in trt_support.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from trt_support import install_fake  # noqa: E402


@pytest.fixture(params=["10", "11"], ids=["trt10", "trt11"])
def trt(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    return install_fake(monkeypatch, request.param)


@pytest.fixture(params=["8", "10", "11"], ids=["trt8.6", "trt10", "trt11"])
def any_trt(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    return install_fake(monkeypatch, request.param)


@pytest.fixture
def trt8(monkeypatch: pytest.MonkeyPatch) -> Any:
    return install_fake(monkeypatch, "8")


@pytest.fixture
def trt10(monkeypatch: pytest.MonkeyPatch) -> Any:
    return install_fake(monkeypatch, "10")


@pytest.fixture
def trt11(monkeypatch: pytest.MonkeyPatch) -> Any:
    return install_fake(monkeypatch, "11")


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine as CI sees it: no tensorrt module, no GPU (whatever is really installed)."""
    from densegraph.export.tensorrt import cuda, trt_api

    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setattr(cuda, "cuda_available", lambda: False)
    monkeypatch.setattr(trt_api, "tensorrt_installed", lambda: False)
