"""PyTorch's intra-op thread count for one block of code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["torch_threads"]


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block (or, as a decorator, the function) with PyTorch on ``count`` intra-op threads, restored
    after. Small-tensor arithmetic gains nothing from a second thread, and on a busy machine OpenMP's threads
    spin-wait for each other: the graph passes' float64 copies and folds of densenet169 took 1.9-2.7 s at
    2 threads against 0.1-0.15 s at 1 on the 2-vCPU host at load 3 (docs/performance.md)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
