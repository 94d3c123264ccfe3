"""The README's example runs, and the reference pages' tables match the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bridgic_coldmail.cli import build_parser
from bridgic_coldmail.errors import EXIT_CODES
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import PROCESS_TIMEOUT, REPO

README = (REPO / "README.md").read_text()
ERRORS_PAGE = (REPO / "docs" / "reference" / "errors.md").read_text()
CLI_PAGE = (REPO / "docs" / "reference" / "cli.md").read_text()


@pytest.mark.slow
def test_the_ten_line_example_runs(
    server: ScriptedOpenAIServer, tmp_path: Path, db_path: Path
) -> None:
    example = re.search(r"```python\n(.*?)```", README, re.S)
    assert example is not None
    code = example.group(1)
    assert len(code.strip().splitlines()) <= 12
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=elsewhere,  # the example uses coldmail's database ($COLDMAIL_DB here), not the cwd
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert re.fullmatch(r"[0-9a-f]{32} A faster way with Acme Scheduler", first)
    assert second == "Acme Scheduler for CTOs at mid-size hospitals"
    assert db_path.exists() and list(elsewhere.iterdir()) == []
    assert server.count("draft") == 1 and server.count("refine") == 1


def test_exit_code_table_matches_the_code() -> None:
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", ERRORS_PAGE, re.M)}
    assert documented == set(EXIT_CODES.values())


def test_every_cli_option_is_documented() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subparsers.items():
        assert f"## coldmail {name}" in CLI_PAGE
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option in CLI_PAGE, f"{name} {option} is not in docs/reference/cli.md"
