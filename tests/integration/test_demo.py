"""``coldmail demo`` driven through a pseudo-terminal, as a person would use it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pexpect
import pytest

from bridgic_coldmail.llm.prompts import AUDIENCE_QUESTION
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

from ..conftest import run_cli, spawn_coldmail
from ..rows import SqliteRows

FLAGS = ["--product", "Acme Scheduler", "--offer", "cuts no-shows by 30%", "--sender", "Dana"]
QUESTION_END = r"what they care about\)\.\s+> "
"""The end of the audience question, asked once, and the prompt after it."""


def _answer_brief(child: pexpect.spawn) -> None:
    child.expect("Product: ")
    child.sendline("Acme Scheduler")
    child.expect("What it brings the reader: ")
    child.sendline("cuts no-shows by 30%")
    child.expect(r"Sender \(signs the emails\): ")
    child.sendline("Dana Lee")
    child.expect(r"audience \(optional\): ")
    child.sendline("clinic managers")
    child.expect(r"Call to action \(optional\): ")
    child.sendline("")


def _interaction_id(child: pexpect.spawn) -> str:
    child.expect(r"Saved as ([0-9a-f]{32}) in ")
    return str(child.match.group(1))


def test_demo_end_to_end(server: ScriptedOpenAIServer, db_path: Path) -> None:
    child = spawn_coldmail("demo")
    child.logfile_read = screen = io.StringIO()
    _answer_brief(child)
    child.expect(r"Drafting… +\d+ s")  # the live progress line on a TTY
    child.expect("Subject: A faster way with Acme Scheduler")
    interaction_id = _interaction_id(child)
    # The resume hint names this database and a placeholder, not an example audience.
    child.expect_exact(
        f"coldmail --db {db_path} resume {interaction_id} "
        "--feedback '<who the emails are really for>'"
    )
    child.expect(QUESTION_END)
    child.sendline("CTOs at mid-size hospitals")
    child.expect("DRAFT +│ REFINED")
    child.expect(r"Subject: A faster way with Acme Scheduler +│ Subject: Acme Scheduler for CTOs")
    # It ends with the run's id, where it is stored, and what to do next.
    child.expect_exact(f"Run {interaction_id} is completed, stored in {db_path}.")
    child.expect_exact(f"coldmail --db {db_path} show {interaction_id}")
    child.expect_exact(f"coldmail --db {db_path} export {interaction_id} --leads leads.csv")
    child.expect_exact(f"coldmail --db {db_path} serve")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert [r.kind for r in server.requests] == ["draft", "refine"]
    shown = " ".join(screen.getvalue().split())  # the question as printed, however wrapped
    assert shown.count(AUDIENCE_QUESTION) == 1 and shown.count("really for?") == 1


@pytest.mark.slow
def test_ctrl_c_at_the_question_leaves_a_resumable_run(
    server: ScriptedOpenAIServer, db_path: Path
) -> None:
    child = spawn_coldmail("demo", *FLAGS)
    interaction_id = _interaction_id(child)
    child.expect(QUESTION_END)
    # Already safe in SQLite while the question waits.
    stored = SqliteRows(db_path).row(interaction_id)
    assert stored is not None and stored["status"] == "awaiting_feedback"
    child.sendintr()
    child.expect("The run is saved and waiting; resume it with:")
    child.expect_exact(f"resume {interaction_id} --feedback")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130

    resumed = run_cli("resume", interaction_id, "--feedback", "CTOs", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "completed"
    assert server.count("draft") == 1 and server.count("refine") == 1


def test_a_closed_terminal_at_the_question_is_treated_like_ctrl_c(
    server: ScriptedOpenAIServer,
) -> None:
    child = spawn_coldmail("demo", *FLAGS)
    interaction_id = _interaction_id(child)
    child.expect(QUESTION_END)
    child.sendeof()
    child.expect_exact(f"resume {interaction_id} --feedback")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130


def test_no_terminal_and_no_flags_fails_clearly_instead_of_hanging() -> None:
    result = run_cli("demo")
    assert result.returncode == 2
    assert "has no terminal to ask on; pass --product, --offer and --sender" in result.stderr


@pytest.mark.slow
def test_flags_and_feedback_without_a_terminal_print_plain_progress(
    server: ScriptedOpenAIServer,
) -> None:
    result = run_cli("demo", *FLAGS, "--feedback", "CTOs at mid-size hospitals")
    assert result.returncode == 0, result.stderr
    assert "Drafting…\nDrafting done in " in result.stdout
    assert "\r" not in result.stdout
    assert "DRAFT" in result.stdout and "REFINED" in result.stdout


@pytest.mark.slow
def test_flags_without_feedback_and_no_terminal_leave_the_run_waiting(
    server: ScriptedOpenAIServer,
) -> None:
    result = run_cli("demo", *FLAGS)
    assert result.returncode == 0, result.stderr
    assert "No terminal to ask on: the run waits for feedback" in result.stdout
    listed = json.loads(run_cli("list", "--json").stdout)
    assert [r["status"] for r in listed] == ["awaiting_feedback"]


def test_demo_with_review_rounds_until_approval(
    server: ScriptedOpenAIServer, db_path: Path
) -> None:
    child = spawn_coldmail("demo", *FLAGS, "--review", "--feedback", "CTOs")
    interaction_id = _interaction_id(child)
    child.expect(r"Review round 1 of 5\. Decide with one of:")
    child.expect(r"Approve \(a\), revise \(r\) or reject \(x\)\? ")
    child.sendline("r")
    child.expect(r"What should the next version change\? ")
    child.sendline("shorter")
    child.expect(r"Revising… +\d+ s")
    child.expect(r"Subject: Acme Scheduler, revised: shorter")
    child.expect(r"Review round 2 of 5")
    child.expect(r"Approve \(a\), revise \(r\) or reject \(x\)\? ")
    child.sendline("a")
    child.expect_exact(f"Run {interaction_id} is completed, stored in {db_path}.")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    stored = SqliteRows(db_path).row(interaction_id)
    assert stored is not None and (stored["status"], stored["round"]) == ("completed", 2)
    assert [r.kind for r in server.requests] == ["draft", "refine", "revise"]


LONG_PARAGRAPH = (
    "Most clinic managers we talk to spend their Monday mornings calling patients who missed "
    "appointments the week before, then rebooking them by hand between phone calls, which is "
    "slow for everyone. Acme Scheduler sends two-way reminders instead."
)
LINK = "https://acme.example/a-very-long-link/that-must-never-be-split/across/two/lines?x=1"


def test_drafts_wrap_to_the_terminal_width_like_the_side_by_side_view(
    server: ScriptedOpenAIServer,
) -> None:
    draft = {
        "opener": {
            "subject": "A subject that is long enough to need wrapping on a narrow terminal",
            "body": f"Hi there,\n\n{LONG_PARAGRAPH}\n\n{LINK}\n\nDana",
        },
        "follow_up": {"subject": "Again", "body": "Hi again,\n\nDana", "wait_days": 3},
    }
    server.enqueue(Reply(kind="draft", content=json.dumps(draft)))
    child = spawn_coldmail("demo", *FLAGS, "--feedback", "CTOs", columns=60)
    child.logfile_read = screen = io.StringIO()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    lines = screen.getvalue().replace("\r\n", "\n").split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("── Email 1"))
    end = next(i for i, line in enumerate(lines) if line.startswith("Saved as"))
    draft_lines = lines[start:end]
    side_by_side = lines[next(i for i, line in enumerate(lines) if "DRAFT" in line) :]
    side_by_side = side_by_side[: next(i for i, line in enumerate(side_by_side) if not line)]
    for line in draft_lines + side_by_side:
        assert len(line) <= 60 or line == LINK, line
    assert LINK in draft_lines  # a word is never split, even one wider than the terminal
    text = " ".join(" ".join(draft_lines).split())
    assert LONG_PARAGRAPH in text  # wrapped, nothing lost
    assert max(len(line) for line in draft_lines if line != LINK) > 50  # uses the width
