"""The documentation stays true to the code.

The parts of the pages generated from the code (docs/generate.py: the front page, the command
line, the settings, the errors) match it; the README stays a front door whose test command is
CI's; and the names the pages mention — environment variables, commands — still exist.
(`mkdocs build --strict` in .ci/run checks every link, anchor and API name.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridgic_coldmail.cli import build_parser

from ..conftest import PROCESS_TIMEOUT, REPO

NO_DOCS_EXTRA = "the docs extra is not installed (pip install -e '.[docs]')"
for _module in ("cogapp", "griffe"):  # what docs/generate.py needs
    pytest.importorskip(_module, reason=NO_DOCS_EXTRA)

DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
README = (REPO / "README.md").read_text()
SETUP_COMMANDS = (
    'pip install -e ".[local]" && coldmail demo',
    'pip install -e ".[dev,local,web]" && python -m pytest',
)
"""The README's two set-up commands: the first run, and every test tier."""


def generate(docs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(docs / "generate.py"), *args],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )


def test_the_generated_parts_of_the_pages_match_the_code() -> None:
    checked = generate(DOCS, "--check")
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A copy of the README and docs/, to break."""
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    shutil.copytree(DOCS, tmp_path / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "docs"


@pytest.mark.slow
def test_a_page_that_no_longer_matches_the_code_fails_the_check_until_regenerated(
    copy: Path,
) -> None:
    settings = copy / "reference" / "settings.md"
    row = "| `lease_seconds` | `COLDMAIL_LEASE_SECONDS` | 300 |"
    assert row in settings.read_text()
    settings.write_text(settings.read_text().replace(row, row.replace("300", "30")))
    stale = generate(copy, "--check")
    assert stale.returncode != 0
    assert "run python docs/generate.py" in stale.stdout + stale.stderr
    assert "-| `lease_seconds` | `COLDMAIL_LEASE_SECONDS` | 30 |" in stale.stdout
    assert generate(copy).returncode == 0
    assert row in settings.read_text()
    assert generate(copy, "--check").returncode == 0


@pytest.mark.slow
def test_a_readme_link_the_site_cannot_follow_fails_the_check(copy: Path) -> None:
    readme = copy.parent / "README.md"
    readme.write_text(readme.read_text() + "\n[the figures](benchmarks/RESULTS.md)\n")
    stale = generate(copy, "--check")
    assert stale.returncode != 0
    assert "README.md links to benchmarks/RESULTS.md, outside docs/" in stale.stderr


def test_the_readme_is_a_front_door_whose_test_command_is_cis() -> None:
    assert len(README.splitlines()) <= 250
    for command in SETUP_COMMANDS:
        assert command in README
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^python -m pytest( |$)", ci, re.M), "CI no longer runs python -m pytest"


def test_the_environment_variables_the_pages_name_exist() -> None:
    """A variable renamed or removed in the code, but still named by a page, fails here."""
    code = (
        "\n".join(
            path.read_text()
            for folder in ("bridgic_coldmail", "tests", "benchmarks")
            for path in (REPO / folder).rglob("*.py")
        )
        + (REPO / ".ci" / "run").read_text()
    )
    named = {
        name
        for page in PAGES
        for name in re.findall(r"\b(?:COLDMAIL|OPENAI)_[A-Z0-9_]*[A-Z0-9]", page.read_text())
    }
    assert len(named) > 30  # the settings page alone names every one
    assert sorted(name for name in named if name not in code) == []


def test_the_commands_the_pages_show_exist() -> None:
    """Every ``coldmail COMMAND`` in a code span or a code block is a command of the parser."""
    action = next(a for a in build_parser()._actions if a.dest == "command")
    commands = set(action.choices or ())
    shown = {
        (page.relative_to(REPO).as_posix(), name)
        for page in PAGES
        for name in re.findall(r"(?:^|`|\$ |&& )coldmail ([a-z][a-z-]*)", page.read_text(), re.M)
    }
    assert {name for _, name in shown} >= {"demo", "start", "resume", "export", "serve"}
    assert sorted((page, name) for page, name in shown if name not in commands) == []
