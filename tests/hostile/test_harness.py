"""The hostile-input harness itself refuses what it should: a success, two lines, or a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile import Refusal, assert_refused, run_cli, snapshot


def test_a_bad_spec_is_one_located_line() -> None:
    line = assert_refused(run_cli("validate", "tests/bad_specs/22-growth-rate-negative.yaml"),
                          names="tests/bad_specs/22-growth-rate-negative.yaml", says="growth_rate")  # fmt: skip
    assert line.startswith("tests/bad_specs/22-growth-rate-negative.yaml:")


@pytest.mark.parametrize(
    "result",
    [
        Refusal(0, "ok", ""),
        Refusal(2, "", "a: error: x\nb: error: y"),
        Refusal(2, "", "Traceback (most recent call last):\nx: error: y"),
        Refusal(1, "", "x: error: y"),
    ],
)
def test_the_harness_rejects_what_is_not_a_clean_refusal(result: Refusal) -> None:
    with pytest.raises(AssertionError):
        assert_refused(result)


def test_snapshot_sees_a_changed_byte(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"1")
    before = snapshot(tmp_path)
    (tmp_path / "a").write_bytes(b"2")
    assert snapshot(tmp_path) != before
