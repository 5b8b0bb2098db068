"""The spec reader on mutated bytes of every shipped spec: only a one-line DensegraphError may come out.

The mutations (bit flips, insertions, deletions, splices, truncations) are :func:`densegraph.testing
.spec_mutations`, the property :func:`densegraph.testing.check_spec_bytes`; ``tools/fuzz_spec.py`` runs the
same pair for a wall-clock budget (docs/spec-fuzzing.md records a 5-minute run).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from densegraph.testing import check_spec_bytes, spec_fuzz_workspace, spec_mutations

SPECS = Path(__file__).resolve().parents[1] / "specs"
SEEDS = [path.read_bytes() for path in sorted(SPECS.rglob("*.yaml"))]
OUTCOMES: Counter[str] = Counter()


@pytest.fixture(scope="module")
def mutant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    seeds, path = spec_fuzz_workspace(SPECS, tmp_path_factory.mktemp("fuzz"))
    assert seeds == SEEDS
    return path


def test_every_seed_reads_and_builds(mutant: Path) -> None:
    assert len(SEEDS) >= 10
    assert all(check_spec_bytes(seed, mutant) == "built" for seed in SEEDS)


@settings(
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(data=spec_mutations(SEEDS))
def test_mutated_spec_bytes_raise_only_densegraph_errors(mutant: Path, data: bytes) -> None:
    OUTCOMES[check_spec_bytes(data, mutant)] += 1


def test_the_mutations_reach_past_the_parser() -> None:
    # a fuzz run in which every mutant fails to parse would test only PyYAML; some must validate and build
    if sum(OUTCOMES.values()) < 500:
        pytest.skip("needs the fuzz test above to have run in this session")
    assert OUTCOMES["built"] >= 0.05 * sum(OUTCOMES.values()), OUTCOMES
    assert OUTCOMES["refused"] >= 0.2 * sum(OUTCOMES.values()), OUTCOMES
