"""The bad-spec corpus: every file in tests/bad_specs/ must fail with one precise, located, one-line error.

Each corpus file states what it expects in its first lines::

    # expect: [OTHER.yaml:]LINE:COL: message substring
    # hint: hint substring            (optional: the error must carry a hint containing this)

``OTHER.yaml`` (relative to tests/bad_specs/) names the file the error points into when it is not the entry
itself (an ``extends`` cycle, a broken base). Each file is checked twice: in process through ``load_spec`` +
``build_graph``, and through the CLI (``python -m densegraph validate`` run once on the whole corpus).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from densegraph import build_graph, load_spec
from densegraph.errors import DensegraphError, SpecError

REPO = Path(__file__).resolve().parents[1]
CORPUS_DIR = REPO / "tests" / "bad_specs"
CORPUS = sorted(CORPUS_DIR.glob("*.yaml"))

_EXPECT = re.compile(r"^# expect: (?:(?P<file>[\w./-]+\.yaml):)?(?P<line>\d+):(?P<col>\d+): (?P<message>.+)$")
_HINT = re.compile(r"^# hint: (?P<hint>.+)$")
_REPORT = re.compile(r"^(?P<where>.+?): error: (?P<message>.*?)(?: \(hint: (?P<hint>.*)\))?$")


@dataclass(frozen=True)
class Expectation:
    entry: str  # the corpus file, relative to the repository root (as the CLI is given it)
    prefix: str  # the exact "FILE:LINE:COL: error: " the report starts with
    message: str
    hint: str | None


def _expectation(path: Path) -> Expectation:
    lines = path.read_bytes().decode("ascii", errors="replace").splitlines()
    match = _EXPECT.match(lines[0]) if lines else None
    assert match, f"{path.name}: the first line must be '# expect: [FILE:]LINE:COL: message'"
    hint = _HINT.match(lines[1]) if len(lines) > 1 else None
    where = CORPUS_DIR / match["file"] if match["file"] else path
    shown = os.path.relpath(where, REPO)
    return Expectation(
        entry=os.path.relpath(path, REPO),
        prefix=f"{shown}:{match['line']}:{match['col']}: error: ",
        message=match["message"],
        hint=hint["hint"] if hint else None,
    )


EXPECTATIONS = [_expectation(path) for path in CORPUS]
IDS = [path.stem for path in CORPUS]


def _check_report(report: str, expected: Expectation) -> None:
    assert "\n" not in report, f"the report must be one line: {report!r}"
    assert report.startswith(expected.prefix), f"{report!r} does not start with {expected.prefix!r}"
    parsed = _REPORT.match(report)
    assert parsed, report
    assert expected.message in parsed["message"], f"{expected.message!r} not in {report!r}"
    if expected.hint is not None:
        assert parsed["hint"], f"expected a hint in {report!r}"
        assert expected.hint in parsed["hint"], f"hint {expected.hint!r} not in {report!r}"
    assert "Traceback" not in report and "_Val(" not in report


def test_corpus_is_large_and_covers_the_error_families() -> None:
    assert len(CORPUS) >= 45
    names = " ".join(IDS)
    for family in ("yaml-", "unknown-", "extends-", "duplicate-", "compression-", "window", "unsafe", "utf8"):
        assert family in names, family
    numbers = [name.split("-", 1)[0] for name in IDS]
    assert len(set(numbers)) == len(numbers), "two corpus files share a number"


@pytest.mark.parametrize("expected", EXPECTATIONS, ids=IDS)
def test_load_spec_reports_the_located_error(expected: Expectation, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # locations are shown relative to the working folder, as the CLI shows them
    start = time.process_time()  # CPU time: the test machine may be busy with other work
    with pytest.raises(DensegraphError) as info:
        build_graph(load_spec(expected.entry))
    elapsed = time.process_time() - start
    assert isinstance(info.value, SpecError)
    _check_report(info.value.format(), expected)
    assert elapsed < 2.0, f"refusing {expected.entry} took {elapsed:.2f} s of CPU time"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "densegraph", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_cli_validate_reports_every_corpus_file_on_one_line() -> None:
    result = _cli("validate", *(e.entry for e in EXPECTATIONS))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr
    assert len(lines) == len(EXPECTATIONS), result.stderr
    for line, expected in zip(lines, EXPECTATIONS, strict=True):
        _check_report(line, expected)


def test_cli_single_file_exits_2_without_traceback() -> None:
    expected = next(e for e in EXPECTATIONS if "growth-rate-negative" in e.entry)
    result = _cli("validate", expected.entry)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    _check_report(result.stderr.strip(), expected)


def test_cli_summary_on_a_bad_spec_exits_2_with_one_line() -> None:
    expected = next(e for e in EXPECTATIONS if "unknown-top-key" in e.entry)
    result = _cli("summary", expected.entry, "--json")
    assert (result.returncode, result.stdout) == (2, "")
    assert len(result.stderr.splitlines()) == 1
    _check_report(result.stderr.strip(), expected)


def test_cli_debug_shows_the_traceback() -> None:
    expected = next(e for e in EXPECTATIONS if "compression-zero" in e.entry)
    result = _cli("--debug", "validate", expected.entry)
    assert result.returncode not in (0, 2)
    assert "Traceback (most recent call last)" in result.stderr
    assert "SpecError" in result.stderr and expected.message in result.stderr


def test_cli_missing_file_and_good_files_side_by_side() -> None:
    missing = "tests/bad_specs/no-such-spec.yaml"
    result = _cli("validate", "specs/densenet121.yaml", missing, "specs/digits.yaml")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{missing}: error: no such file (hint: check the path to the spec)"
    ]
    assert result.stdout.splitlines() == [
        "specs/densenet121.yaml: ok (densenet121, 58 dense layers)",
        "specs/digits.yaml: ok (digits, 12 dense layers)",
    ]


def test_unsafe_tag_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "owned"
    spec = tmp_path / "evil.yaml"
    spec.write_text(
        f'name: !!python/object/apply:os.system ["touch {marker}"]\ngrowth_rate: 12\nblocks: [6]\n'
    )
    with pytest.raises(SpecError, match="unsupported YAML tag"):
        load_spec(spec)
    assert not marker.exists()
