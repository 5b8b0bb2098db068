"""Fuzz the spec reader for a wall-clock budget: mutated bytes of every shipped spec through ``load_spec`` and
``build_graph``, where only a one-line DensegraphError may escape.

The same mutations and property as tests/test_spec_fuzz.py (:func:`densegraph.testing.spec_mutations`,
:func:`densegraph.testing.check_spec_bytes`), run by hypothesis in batches with fresh random seeds until the
budget is spent. Prints the cases tried, how they ended, and each failure found (hypothesis's shrunk example
and the exception); exits 1 when there was one.

    nice -n 10 python tools/fuzz_spec.py --seconds 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from densegraph.testing import check_spec_bytes, spec_fuzz_workspace, spec_mutations  # noqa: E402


def fuzz(
    seconds: float, *, batch: int = 1000, specs: Path = REPO / "specs"
) -> tuple[Counter[str], list[str]]:
    """Run the property for ``seconds`` of wall-clock time; return the outcome counts and failure reports."""
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    end = time.monotonic() + seconds
    with tempfile.TemporaryDirectory(prefix="fuzz-spec-") as scratch:
        seeds, mutant = spec_fuzz_workspace(specs, scratch)

        @settings(
            max_examples=batch,
            deadline=None,
            database=None,
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
        )
        @given(data=spec_mutations(seeds))
        def property_(data: bytes) -> None:
            if time.monotonic() < end:  # past the budget the rest of a batch passes untried
                outcomes[check_spec_bytes(data, mutant)] += 1

        while time.monotonic() < end:
            try:
                property_()
            except Exception as exc:  # a failure hypothesis has shrunk: record it, keep fuzzing
                outcomes["failed"] += 1
                notes = "\n".join(getattr(exc, "__notes__", []))
                where = traceback.extract_tb(exc.__traceback__)[-1]
                failures.append(
                    f"{type(exc).__name__}: {exc} (at {where.filename}:{where.lineno})\n{notes}".rstrip()
                )
                print(f"failure {len(failures)}: {failures[-1]}", flush=True)
    return outcomes, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300, help="wall-clock budget (default 300)")
    parser.add_argument(
        "--examples", dest="batch", type=int, default=1000, help="examples per hypothesis run (default 1000)"
    )
    args = parser.parse_args(argv)
    start, cpu = time.monotonic(), time.process_time()
    outcomes, failures = fuzz(args.seconds, batch=args.batch)
    wall, cpu = time.monotonic() - start, time.process_time() - cpu
    tried = sum(outcomes.values())
    print(
        f"cases tried: {tried} in {wall:.0f} s wall, {cpu:.0f} s CPU ({tried / max(wall, 1e-9):.0f}/s); "
        f"built {outcomes['built']}, valid but too large to build {outcomes['valid']}, "
        f"refused with one line {outcomes['refused']}; failures found: {len(failures)}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
