"""Latency and throughput of a callable per batch size: the one timing loop every backend's bench uses.

Each batch size runs ``warmup`` untimed then ``iters`` timed calls. A row holds the median
(``latency_ms_p50``), p90 and mean latency and the throughput ``batch / mean`` in images per second.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["time_batches"]


def time_batches(
    run_for: Callable[[int], Callable[[], Any]], batches: Sequence[int], *, iters: int, warmup: int
) -> list[dict[str, float]]:
    """Time ``run_for(batch)()`` ``iters`` times after ``warmup`` calls, for each batch size; one row each."""
    rows = []
    for batch in batches:
        run = run_for(batch)
        for _ in range(warmup):
            run()
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        ms = np.array(times) * 1e3
        rows.append(
            {
                "batch": batch,
                "latency_ms_mean": float(ms.mean()),
                "latency_ms_p50": float(np.percentile(ms, 50)),
                "latency_ms_p90": float(np.percentile(ms, 90)),
                "throughput_per_s": float(batch * 1e3 / ms.mean()),
            }
        )
    return rows
