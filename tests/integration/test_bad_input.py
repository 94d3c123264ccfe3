"""Every bad input is one line with its documented exit code, and nothing stored is lost;
nothing an LLM, a brief or a database file holds is ever obeyed by the terminal."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest

from bridgic_coldmail import Brief, ColdMailAgent, InvalidInput, StoreError, SyncColdMailAgent
from bridgic_coldmail.cli import main
from bridgic_coldmail.cli.render import json_for_terminal
from bridgic_coldmail.models import validate_feedback
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer
from bridgic_coldmail.text import terminal_safe

from ..conftest import run_cli
from ..rows import SqliteRows, as_legacy, signer_for

ESC = "\x1b"
HOSTILE = (
    "Hi\x1b[2J\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\x07 there\x00\x9b31m"
    "\u202eevil\u202c\rOVERWRITE"
)
"""Clear screen, an OSC 52 clipboard write, NUL, a C1 CSI, a bidi override, a bare CR."""


def _raw_controls(text: str) -> list[str]:
    bad = {chr(c) for c in range(0x20) if chr(c) not in "\n\t"} | {
        chr(c) for c in range(0x7F, 0xA0)
    }
    bad |= {"\u202e", "\u202c"}
    return sorted({c for c in text if c in bad})


def test_terminal_safe_makes_every_escape_visible() -> None:
    shown = terminal_safe(HOSTILE)
    assert _raw_controls(shown) == []
    assert "\\x1b]52;c;" in shown and "\\x00" in shown and "\\u202e" in shown
    assert terminal_safe("a\r\nb\tc") == "a\nb\tc"  # a Windows newline is just a newline
    decoded = json.loads(json_for_terminal({"s": HOSTILE}))
    assert decoded == {"s": HOSTILE}  # the JSON still means the same text
    assert _raw_controls(json_for_terminal({"s": HOSTILE})) == []


def test_llm_text_never_reaches_the_terminal_raw(
    server: ScriptedOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = {
        "opener": {"subject": HOSTILE, "body": HOSTILE},
        "follow_up": {"subject": "s", "body": HOSTILE, "wait_days": 3},
    }
    server.enqueue(Reply(kind="draft", content=json.dumps(answer)))
    assert main(["start", "--product", "A", "--offer", "B", "--sender", "C"]) == 0
    started = capsys.readouterr()
    interaction_id = started.out.split("saved as ")[1].split(" ")[0]
    for argv in (["show", interaction_id], ["list"], ["show", interaction_id, "--json"]):
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert _raw_controls(started.out + out) == []
    # The hostile answer is invalid output, refused and asked again: it is never stored.
    assert server.count("draft") == 2 and "52;c;" not in out


@pytest.mark.parametrize(
    "feedback", ["\u200b\u200b", "\u202e\u2066", " \u200e\ufeff ", "\u2028"], ids=repr
)
def test_feedback_of_only_invisible_characters_counts_as_empty(feedback: str) -> None:
    with pytest.raises(InvalidInput, match="feedback must not be empty"):
        validate_feedback(feedback)


def test_carriage_returns_are_stored_as_newlines() -> None:
    assert validate_feedback("CTOs\r\nat hospitals\rin Ohio") == "CTOs\nat hospitals\nin Ohio"


@pytest.mark.parametrize(
    "argv",
    [
        ["purge", "--older-than", "99999999999d"],
        ["purge", "--older-than", "9" * 400 + "s"],
        ["list", "--limit", "9" * 30],
        ["list", "--limit", "0"],
        ["approve", "0" * 32, "--round", "99999999999999"],
        ["resume", "not-an-id", "--feedback", "x"],
        ["list", "--bogus"],
    ],
    ids=["huge-age", "overflowing-age", "huge-limit", "zero-limit", "huge-round", "bad-id", "flag"],
)
def test_overflowing_and_malformed_numbers_are_one_line_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        code = main(argv)
        raise SystemExit(code)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


async def test_python_api_refuses_overflowing_numbers(agent: ColdMailAgent) -> None:
    with pytest.raises(InvalidInput, match="offset must be between 0 and"):
        await agent.list(offset=2**63)
    with pytest.raises(InvalidInput, match="limit must be between 1 and 1000"):
        await agent.list(limit=2**63)
    with pytest.raises(InvalidInput, match="before the year 1"):
        await agent.purge(timedelta(days=999_999_999))
    with pytest.raises(InvalidInput, match="limit must be a whole number"):
        await agent.list(limit="10")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["fifo", "dev-null", "dangling-symlink", "directory"])
def test_a_path_that_cannot_hold_a_database_is_one_line_exit_8(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        db = tmp_path / "pipe.db"
        os.mkfifo(db)
        expected = "is not a regular file (it is a named pipe)"
    elif kind == "dev-null":
        db = Path("/dev/null")
        expected = "is not a regular file (it is a character device)"
    elif kind == "dangling-symlink":
        db = tmp_path / "link.db"
        db.symlink_to(tmp_path / "nowhere" / "real.db")
        expected = "is a symbolic link to"
    else:
        db = tmp_path
        expected = "is a directory"
    before = set(os.listdir(db.parent))
    result = run_cli("--db", str(db), "list")  # a child process: the exit code is the point
    assert result.returncode == StoreError.exit_code
    assert result.stderr.count("\n") == 1 and expected in result.stderr
    assert "Traceback" not in result.stderr and "Exception in thread" not in result.stderr
    assert "choose another --db path" in result.stderr
    assert set(os.listdir(db.parent)) == before  # no -wal or -shm beside a device


def test_one_unreadable_row_does_not_take_down_the_listing(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief, capsys: pytest.CaptureFixture[str]
) -> None:
    with SyncColdMailAgent.open(db_path) as agent:
        good = agent.start(brief).interaction_id
        bad = agent.start(brief).interaction_id
    # A row stored by an earlier release (no MAC) whose JSON a disk error mangled.
    rows = SqliteRows(db_path)
    as_legacy(rows, signer_for(db_path), bad, signature=None)
    rows.set(bad, draft_json='{"opener": ')
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert f"{bad}  DAMAGED" in out and "cannot be read" in out and good in out
    assert main(["list", "--json"]) == 0
    listed = {r["interaction_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert "damaged" in listed[bad] and listed[good]["status"] == "awaiting_feedback"
    assert main(["show", bad]) == StoreError.exit_code
    assert "cannot be read" in capsys.readouterr().err
