"""Review rounds: approve, revise, edit or reject, each a real pause, each applied once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bridgic_coldmail import (
    Brief,
    ColdMailAgent,
    EmailSequence,
    InvalidInput,
    RunBeingResumed,
    RunConflict,
    RunStatus,
    SyncColdMailAgent,
)
from bridgic_coldmail.models import Run
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

from ..conftest import PROCESS_TIMEOUT, REPO, Completed, wait_for_request
from ..rows import SqliteRows, expire_lease

FEEDBACK = "CTOs at mid-size hospitals"
MINE = EmailSequence.model_validate(
    {
        "opener": {"subject": "My own opener", "body": "Hi,\n\nMine.\n\nDana", "wait_days": 0},
        "follow_up": {"subject": "My follow-up", "body": "Hi again", "wait_days": 4},
    }
)


async def _at_review(agent: ColdMailAgent, brief: Brief) -> Run:
    pending = await agent.start(brief, review=True)
    return await agent.resume(pending.interaction_id, FEEDBACK)


async def test_without_review_mode_a_run_completes_as_before(
    agent: ColdMailAgent, brief: Brief
) -> None:
    pending = await agent.start(brief)
    assert not pending.review and pending.max_rounds is None
    done = await agent.resume(pending.interaction_id, FEEDBACK)
    assert (done.status, done.round, done.final == done.sequence) == (
        RunStatus.COMPLETED,
        None,
        True,
    )


async def test_the_refinement_pauses_for_review_at_round_1(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    run = await _at_review(agent, brief)
    assert (run.status, run.round, run.max_rounds, run.final) == (
        RunStatus.AWAITING_REVIEW,
        1,
        5,
        None,
    )
    assert run.sequence is not None and FEEDBACK in run.sequence.opener.subject
    # Each pause is a real Bridgic pause with its own interaction id; the run keeps its id.
    assert run.pause_id is not None and run.pause_id != run.interaction_id
    row = SqliteRows(Path(agent.db_path)).row(run.interaction_id)
    assert row is not None and row["pause_id"] == run.pause_id and len(row["snapshot"]) > 500
    assert server.count("refine") == 1


async def test_approve_completes_with_the_sequence_under_review(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    run = await _at_review(agent, brief)
    done = await agent.approve(run.interaction_id, reviewer="Ann")
    assert (done.status, done.final, done.round) == (RunStatus.COMPLETED, run.sequence, 1)
    row = SqliteRows(Path(agent.db_path)).row(run.interaction_id)
    assert row is not None and row["snapshot"] is None  # nothing left to resume
    assert server.count("refine") == 1 and server.count("revise") == 0


async def test_revise_sends_every_earlier_feedback_and_pauses_for_the_next_round(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    run = await _at_review(agent, brief)
    second = await agent.revise(run.interaction_id, "shorter subject lines")
    third = await agent.revise(run.interaction_id, "mention the free trial")
    assert (second.round, third.round, third.status) == (2, 3, RunStatus.AWAITING_REVIEW)
    assert third.sequence is not None and "mention the free trial" in third.sequence.opener.subject
    prompt = server.requests[-1].user_text
    assert "- shorter subject lines" in prompt  # the earlier guidance, oldest first
    assert "<<<\nmention the free trial\n>>>" in prompt
    assert FEEDBACK in prompt and brief.offer in prompt
    assert second.sequence is not None and second.sequence.opener.subject in prompt
    assert server.count("revise") == 2 and server.count("draft") == 1


async def test_edit_puts_the_reviewers_emails_under_review_without_the_llm(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    run = await _at_review(agent, brief)
    edited = await agent.edit(run.interaction_id, MINE.model_dump(), reviewer="Ann")
    assert (edited.status, edited.round, edited.sequence) == (RunStatus.AWAITING_REVIEW, 2, MINE)
    revised = await agent.revise(run.interaction_id, "warmer")
    assert MINE.opener.subject in server.requests[-1].user_text  # revising from the edit
    done = await agent.approve(run.interaction_id)
    assert done.final == revised.sequence
    assert server.count() == 3  # draft, refine, one revise: the edit called no LLM


async def test_reject_ends_the_run_and_keeps_it_with_its_history(
    agent: ColdMailAgent, brief: Brief
) -> None:
    run = await _at_review(agent, brief)
    rejected = await agent.reject(run.interaction_id, "wrong market", reviewer="Bo")
    assert (rejected.status, rejected.rejection, rejected.final) == (
        RunStatus.REJECTED,
        "wrong market",
        None,
    )
    assert rejected.sequence == run.sequence
    history = await agent.history(run.interaction_id)
    assert [(e.kind, e.round, e.actor, e.detail) for e in history][-1] == (
        "rejected",
        1,
        "Bo",
        "wrong market",
    )
    assert [r.interaction_id for r in await agent.list(RunStatus.REJECTED)] == [run.interaction_id]


async def test_history_records_each_rounds_sequence_decision_reviewer_and_time(
    agent: ColdMailAgent, brief: Brief
) -> None:
    run = await _at_review(agent, brief)
    second = await agent.revise(run.interaction_id, "shorter", reviewer="Ann")
    await agent.edit(run.interaction_id, MINE, reviewer="Bo")
    await agent.approve(run.interaction_id, reviewer="Cy")
    history = await agent.history(run.interaction_id)
    assert [(e.kind, e.round, e.actor) for e in history] == [
        ("paused", None, None),
        ("feedback", None, None),
        ("review", 1, None),
        ("revised", 1, "Ann"),
        ("review", 2, None),
        ("edited", 2, "Bo"),
        ("review", 3, None),
        ("approved", 3, "Cy"),
        ("completed", 3, None),
    ]
    reviews = [e.sequence for e in history if e.kind == "review"]
    assert reviews == [run.sequence, second.sequence, MINE]
    assert [e.sequence for e in history if e.kind == "edited"] == [MINE]
    times = [e.at for e in history]
    assert times == sorted(times)


async def test_the_round_limit_leaves_only_approve_edit_and_reject(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path, max_rounds=2) as agent:
        run = await _at_review(agent, brief)
        await agent.revise(run.interaction_id, "one")
        with pytest.raises(RunConflict, match="round 2 of 2 and cannot be revised again"):
            await agent.revise(run.interaction_id, "two")
        edited = await agent.edit(run.interaction_id, MINE)  # editing remains, past the limit
        assert edited.round == 3
        with pytest.raises(RunConflict, match="round 3 of 2"):
            await agent.revise(run.interaction_id, "three")
        assert (await agent.approve(run.interaction_id)).final == MINE
    assert server.count("revise") == 1


async def test_the_same_decision_repeated_returns_the_stored_result(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    run = await _at_review(agent, brief)
    second = await agent.revise(run.interaction_id, "shorter", round=1)
    assert await agent.revise(run.interaction_id, "shorter", round=1) == second  # double submit
    assert server.count("revise") == 1
    with pytest.raises(RunConflict, match=r"round 1 of run .* was already decided \(revise"):
        await agent.reject(run.interaction_id, "no", round=1)
    done = await agent.approve(run.interaction_id, round=2)
    assert await agent.approve(run.interaction_id) == done
    assert await agent.approve(run.interaction_id, round=2) == done
    with pytest.raises(RunConflict, match="already completed"):
        await agent.reject(run.interaction_id, "too late")
    assert await agent.resume(run.interaction_id, FEEDBACK) == done  # the feedback, too


async def test_decisions_that_do_not_fit_the_state_change_nothing(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief, db_path: Path
) -> None:
    pending = await agent.start(brief, review=True)
    rows = SqliteRows(db_path)
    before = rows.row(pending.interaction_id)
    for decide in (
        agent.approve(pending.interaction_id),
        agent.revise(pending.interaction_id, "x"),
        agent.edit(pending.interaction_id, MINE),
        agent.reject(pending.interaction_id, "x"),
    ):
        with pytest.raises(RunConflict, match="still waiting for audience feedback"):
            await decide
    assert rows.row(pending.interaction_id) == before

    plain = await agent.start(brief)
    await agent.resume(plain.interaction_id, FEEDBACK)
    with pytest.raises(RunConflict, match="not started in review mode"):
        await agent.approve(plain.interaction_id)
    run = await agent.resume(pending.interaction_id, FEEDBACK)
    with pytest.raises(RunConflict, match="round 1; round 4 has not happened"):
        await agent.approve(run.interaction_id, round=4)
    with pytest.raises(RunConflict, match="already took different feedback"):
        await agent.resume(run.interaction_id, "someone else")
    assert server.count("revise") == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda a, i: a.revise(i, "   "), "guidance must not be empty"),
        (lambda a, i: a.reject(i, ""), "reason must not be empty"),
        (lambda a, i: a.edit(i, {"opener": {"subject": "x"}}), "invalid emails"),
        (lambda a, i: a.edit(i, MINE, round=0), "round must be between 1"),
        (lambda a, i: a.approve(i, reviewer="\x1b[31m"), "control characters"),
        (
            lambda a, i: a.edit(
                i,
                MINE.model_copy(
                    update={"opener": MINE.opener.model_copy(update={"subject": "Hi\x1b]52;c;x"})}
                ),
            ),
            "opener.subject: contains control characters",
        ),
        (
            lambda a, i: a.edit(
                i,
                MINE.model_copy(
                    update={"opener": MINE.opener.model_copy(update={"body": "Hi {{ceo}}"})}
                ),
            ),
            "merge fields the run does not have: ceo",
        ),
    ],
    ids=[
        "empty-guidance",
        "empty-reason",
        "bad-emails",
        "round-0",
        "bad-reviewer",
        "control-chars-in-edit",
        "bad-field",
    ],
)
async def test_bad_decisions_are_refused_before_anything_changes(
    agent: ColdMailAgent, brief: Brief, db_path: Path, call: object, message: str
) -> None:
    run = await _at_review(agent, brief)
    before = SqliteRows(db_path).row(run.interaction_id)
    with pytest.raises(InvalidInput, match=message):
        await call(agent, run.interaction_id)  # type: ignore[operator]
    assert SqliteRows(db_path).row(run.interaction_id) == before


async def test_racing_decisions_apply_once(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path) as first, ColdMailAgent.open(db_path) as second:
        run = await _at_review(first, brief)
        server.enqueue(Reply(kind="revise", delay=0.5))
        results = await asyncio.gather(
            first.revise(run.interaction_id, "shorter", round=1),
            second.revise(run.interaction_id, "shorter", round=1),
            first.reject(run.interaction_id, "no", round=1),
            second.approve(run.interaction_id, round=1),
            return_exceptions=True,
        )
    winners = [r for r in results if isinstance(r, Run)]
    assert len(winners) == 1 and winners[0].round == 2
    assert all(isinstance(r, RunBeingResumed) for r in results if not isinstance(r, Run))
    assert server.count("revise") == 1


@pytest.mark.slow
def test_a_resumer_killed_mid_revise_is_recovered_after_its_lease(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    with SyncColdMailAgent.open(db_path) as agent:
        run = agent.resume(agent.start(brief, review=True).interaction_id, FEEDBACK)
    server.enqueue(Reply(kind="revise", delay=60))  # the revise hangs until the kill
    child = subprocess.Popen(
        [sys.executable, "-m", "bridgic_coldmail", "revise", run.interaction_id, "--feedback",
         "shorter"],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_request(server, "revise")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=PROCESS_TIMEOUT)
    with SyncColdMailAgent.open(db_path) as agent:
        assert agent.get(run.interaction_id).status is RunStatus.RESUMING
        with pytest.raises(RunBeingResumed):
            agent.revise(run.interaction_id, "shorter")
        expire_lease(SqliteRows(db_path), run.interaction_id)
        server.reset()
        revised = agent.revise(run.interaction_id, "shorter")
    assert (revised.status, revised.round) == (RunStatus.AWAITING_REVIEW, 2)
    assert server.count("revise") == 1


def test_the_review_loop_on_the_command_line(
    server: ScriptedOpenAIServer, tmp_path: Path, cli: Callable[..., Completed]
) -> None:
    started = cli(
        "start", "--product", "Acme", "--offer", "saves time", "--sender", "Dana", "--review",
        "--json",
    )  # fmt: skip
    rid = json.loads(started.stdout)["interaction_id"]
    resumed = json.loads(cli("resume", rid, "--feedback", FEEDBACK, "--json").stdout)
    assert (resumed["status"], resumed["round"], resumed["final"]) == ("awaiting_review", 1, None)

    shown = cli("show", rid)
    assert "UNDER REVIEW (round 1)" in shown.stdout and f"coldmail approve {rid}" in shown.stdout
    revised = json.loads(
        cli("revise", rid, "--feedback", "shorter", "--reviewer", "Ann", "--json").stdout
    )
    assert revised["round"] == 2

    sequence_file = tmp_path / "seq.json"
    sequence_file.write_text(cli("show", rid, "--sequence").stdout)
    edited = json.loads(sequence_file.read_text())
    edited["opener"]["subject"] = "My subject"
    sequence_file.write_text(json.dumps(edited))
    after_edit = json.loads(cli("edit", rid, "--file", str(sequence_file), "--json").stdout)
    assert after_edit["round"] == 3

    bad = cli("edit", rid, "--file", str(tmp_path / "missing.json"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    approved = json.loads(cli("approve", rid, "--round", "3", "--json").stdout)
    assert approved["status"] == "completed"
    assert approved["final"]["opener"]["subject"] == "My subject"
    assert set(approved) == {
        "interaction_id", "status", "draft", "final", "feedback", "round", "verified"
    }  # fmt: skip
    again = cli("reject", rid, "--reason", "late")
    assert again.returncode == RunConflict.exit_code and "already completed" in again.stderr
    history = cli("show", rid).stdout
    assert "revision asked (round 1) by Ann: shorter" in history
    assert "edited by the reviewer (round 2)" in history
    early = cli("start", "--product", "A", "--offer", "B", "--sender", "C", "--review", "--json")
    early_id = json.loads(early.stdout)["interaction_id"]
    refused = cli("approve", early_id)
    assert refused.returncode == RunConflict.exit_code
    assert f"coldmail resume {early_id} --feedback" in refused.stderr
