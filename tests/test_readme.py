"""README's promises that code can check: its two commands, and the links between the docs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second() -> None:
    main_job, tests = _bash_blocks(README)[:2]
    assert main_job.startswith("python3 -m venv .venv") and main_job.endswith(
        "densegraph build specs/densenet169.yaml"
    )
    assert tests.endswith("python -m pytest -q")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci, ".ci/run must run README's test command exactly"
    assert "torch==2.13.0" in main_job and "torch==2.13.0" in tests  # the CPU build, installed first


def test_every_local_link_in_the_docs_resolves() -> None:
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to a missing {target}"
