"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import matplotlib  # noqa: F401  # loaded, so builds draw graph.svg in-process (see builder/picture_stage.py)
import pytest


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run a module's tiny models on one thread: as fast, and immune to a busy machine's oversubscription."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
