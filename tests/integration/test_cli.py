"""The ``coldmail`` command and the resume script.

Most tests run the command in this process (the ``cli`` fixture). A child process is used
where the process is the point: pausing in one process and resuming in another, ``python -m``,
the resume script, a terminal. Every child runs under a hang guard (``PROCESS_TIMEOUT``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest

from bridgic_coldmail.errors import EXIT_CODES
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

from ..conftest import PROCESS_TIMEOUT, REPO, Completed, run_cli, run_process
from ..rows import SqliteRows

Cli = Callable[..., Completed]

START = ["--product", "Acme Scheduler", "--offer", "cuts no-shows by 30%", "--sender", "Dana Lee"]
FEEDBACK = "CTOs at mid-size hospitals"
PUBLIC_KEYS = {"interaction_id", "status", "draft", "final", "feedback", "round", "verified"}


def _start_json(*extra: str, cli: Cli = run_cli) -> dict[str, object]:
    result = cli("start", *START, *extra, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def _assert_one_line_error(result: Completed, code: int, *fragments: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("coldmail: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.slow
def test_pause_in_one_process_resume_in_another(server: ScriptedOpenAIServer) -> None:
    started = _start_json("--audience", "clinic managers", "--cta", "Book a demo")
    assert set(started) == PUBLIC_KEYS
    assert started["status"] == "awaiting_feedback"
    assert started["final"] is None and started["feedback"] is None

    resumed = run_cli("resume", str(started["interaction_id"]), "--feedback", FEEDBACK, "--json")
    assert resumed.returncode == 0, resumed.stderr
    done = json.loads(resumed.stdout)
    assert set(done) == PUBLIC_KEYS
    assert done["status"] == "completed"
    assert done["feedback"] == FEEDBACK
    assert done["draft"] == started["draft"]
    assert FEEDBACK in done["final"]["opener"]["subject"]
    assert [r.kind for r in server.requests] == ["draft", "refine"]
    assert "Book a demo" in server.requests[0].user_text


def test_human_output_shows_the_sequence_and_how_to_resume(db_path: Path, cli: Cli) -> None:
    result = cli("start", *START)
    assert result.returncode == 0, result.stderr
    interaction_id = _only_id(db_path)
    assert "Email 1 · day 0" in result.stdout and "Email 2 · day 3" in result.stdout
    assert "Subject: A faster way with Acme Scheduler" in result.stdout
    assert f"Paused and saved as {interaction_id} in {db_path}" in result.stdout
    # The hint names the database it was stored in, and a placeholder, not an example audience.
    hint = result.stdout.splitlines()[-1].strip()
    assert hint == (
        f"coldmail --db {db_path} resume {interaction_id} "
        "--feedback '<who the emails are really for>'"
    )
    assert "CTOs" not in result.stdout

    resumed = cli("resume", interaction_id, "--feedback", FEEDBACK)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Run {interaction_id} · completed" in resumed.stdout
    assert f"FEEDBACK: {FEEDBACK}" in resumed.stdout
    assert "REFINED" in resumed.stdout


def test_show_and_list(db_path: Path, cli: Cli) -> None:
    first = _start_json(cli=cli)
    second = _start_json(cli=cli)
    assert cli("resume", str(first["interaction_id"]), "--feedback", FEEDBACK).returncode == 0

    shown = json.loads(cli("show", str(first["interaction_id"]), "--json").stdout)
    assert shown["status"] == "completed" and set(shown) == PUBLIC_KEYS
    text = cli("show", str(second["interaction_id"])).stdout
    assert "awaiting_feedback" in text and "Who is this sequence really for?" in text

    listed = json.loads(cli("list", "--json").stdout)
    assert [r["interaction_id"] for r in listed] == [
        second["interaction_id"],
        first["interaction_id"],
    ]
    assert all(set(r) == PUBLIC_KEYS for r in listed)
    awaiting = json.loads(cli("list", "--status", "awaiting_feedback", "--json").stdout)
    assert [r["interaction_id"] for r in awaiting] == [second["interaction_id"]]
    lines = cli("list").stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(second["interaction_id"]))
    # The audience a person gave, else the brief's guess, as the inbox's list shows it.
    assert FEEDBACK in lines[1] and FEEDBACK not in lines[0]


@pytest.mark.slow
def test_db_option_before_or_after_the_command_and_python_dash_m(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "other.db"
    started = run_cli("--db", str(other), "start", *START, "--json", module=True)
    assert started.returncode == 0, started.stderr
    interaction_id = json.loads(started.stdout)["interaction_id"]
    shown = run_cli("show", interaction_id, "--db", str(other), "--json")
    assert json.loads(shown.stdout)["interaction_id"] == interaction_id
    _start_json()  # $COLDMAIL_DB holds runs too, but not that one
    assert run_cli("show", interaction_id).returncode == EXIT_CODES["not found"]


def test_empty_list_says_so(db_path: Path, cli: Cli) -> None:
    _start_json(cli=cli)
    result = cli("list", "--status", "completed")
    assert result.returncode == 0
    assert result.stdout.strip() == f"No runs with status completed in {db_path}."
    assert cli("list", "--status", "completed", "--json").stdout.strip() == "[]"


def test_error_exit_codes_are_distinct_and_one_line(
    server: ScriptedOpenAIServer, db_path: Path, tmp_path: Path, cli: Cli
) -> None:
    unknown = "0123456789abcdef0123456789abcdef"
    _assert_one_line_error(cli("show", "'; DROP TABLE runs; --"), 2, "not an interaction id")
    _assert_one_line_error(cli("start", *START[:4], "--sender", "  "), 2, "sender")
    _assert_one_line_error(cli("show", unknown), 8, "there is no database at")

    interaction_id = str(_start_json(cli=cli)["interaction_id"])
    _assert_one_line_error(cli("resume", unknown, "--feedback", FEEDBACK), 3, "no run with")
    _assert_one_line_error(cli("resume", interaction_id, "--feedback", " "), 2, "empty")
    server.enqueue(Reply(kind="refine", status=400, content="invalid request"))
    _assert_one_line_error(
        cli("resume", interaction_id, "--feedback", FEEDBACK), 6, "refinement LLM call failed"
    )
    assert cli("resume", interaction_id, "--feedback", FEEDBACK).returncode == 0
    _assert_one_line_error(
        cli("resume", interaction_id, "--feedback", "Nurses"), 4, "different feedback"
    )

    no_llm = {"OPENAI_API_KEY": "", "OPENAI_API_BASE": "", "COLDMAIL_LLM": "openai"}
    _assert_one_line_error(cli("start", *START, env=no_llm), 7, "OPENAI_API_KEY")

    _assert_one_line_error(cli("--db", str(tmp_path), "list"), 8, "is a directory")
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("hello, this is not a database\n" * 100)
    _assert_one_line_error(cli("--db", str(not_sqlite), "list"), 8, "not a usable SQLite")
    assert not_sqlite.read_text().startswith("hello")  # left untouched

    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)


def test_argument_errors_use_the_bad_input_code(cli: Cli) -> None:
    result = cli("start", "--product", "Acme")
    assert result.returncode == EXIT_CODES["bad input"]
    assert "the following arguments are required: --offer, --sender" in result.stderr


@pytest.mark.slow
def test_resume_script_with_feedback(server: ScriptedOpenAIServer) -> None:
    interaction_id = str(_start_json()["interaction_id"])
    result = run_process(
        [sys.executable, "examples/resume.py", interaction_id, "--feedback", FEEDBACK]
    )
    assert result.returncode == 0, result.stderr
    assert f"Run {interaction_id} · completed" in result.stdout
    assert server.count("refine") == 1


@pytest.mark.slow
def test_resume_script_asks_on_the_terminal(server: ScriptedOpenAIServer) -> None:
    interaction_id = str(_start_json()["interaction_id"])
    child = pexpect.spawn(
        sys.executable,
        ["examples/resume.py", interaction_id],
        cwd=str(REPO),
        env=dict(os.environ),
        encoding="utf-8",
        timeout=PROCESS_TIMEOUT,
    )
    child.expect("Subject: A faster way with Acme Scheduler")
    child.expect("Who is this sequence really for?")
    child.expect("Your feedback: ")
    child.sendline(FEEDBACK)
    child.expect(f"FEEDBACK: {FEEDBACK}")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert server.count("refine") == 1


@pytest.mark.slow
def test_resume_script_without_feedback_or_terminal_fails_clearly() -> None:
    interaction_id = str(_start_json()["interaction_id"])
    result = run_process([sys.executable, "examples/resume.py", interaction_id])
    assert result.returncode != 0
    assert "stdin is not a terminal; pass --feedback" in result.stderr


def _only_id(db_path: Path) -> str:
    (only,) = SqliteRows(db_path).ids()
    return only


@pytest.mark.parametrize("command", [["--help"], ["--version"]])
def test_help_and_version(command: list[str], cli: Cli) -> None:
    result = cli(*command)
    assert result.returncode == 0
    assert "coldmail" in result.stdout


def test_the_scripted_server_answers_help_instead_of_serving() -> None:
    import subprocess
    import sys

    shown = subprocess.run(
        [sys.executable, "-m", "bridgic_coldmail.testing", "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert shown.returncode == 0 and "--port" in shown.stdout and "OPENAI_API_BASE" in shown.stdout


def test_every_subcommand_of_the_parser_has_a_function_to_run() -> None:
    # A command added to the parser but not to main's dispatch table would parse, then end
    # as an "unexpected error" (a KeyError): the two lists must name the same commands.
    import argparse

    from bridgic_coldmail.cli import COMMANDS, STANDALONE, build_parser

    (subparsers,) = [
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ]
    parsed = set(subparsers.choices)
    assert len(parsed) > 15, parsed
    assert not COMMANDS.keys() & STANDALONE.keys()
    assert parsed == COMMANDS.keys() | STANDALONE.keys()
