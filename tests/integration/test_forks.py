"""Forking a pause into a variant, end to end: the real automa resumed from a kept snapshot
under a new run's id, against the scripted OpenAI server; the CLI, the family in ``show``
and the A/B export of a family."""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from bridgic_coldmail import (
    Brief,
    ColdMailAgent,
    InvalidInput,
    LlmError,
    RunConflict,
    RunNotFound,
    RunStatus,
    SyncColdMailAgent,
)
from bridgic_coldmail.errors import SnapshotIntegrityError
from bridgic_coldmail.models import MAX_FEEDBACK_CHARS, Run
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

from ..conftest import Backend, Completed
from ..rows import SqliteRows

FEEDBACK = "CTOs at mid-size hospitals"


async def _reviewed_twice(agent: ColdMailAgent, brief: Brief) -> Run:
    """A review run at round 2 (revised once with 'shorter please')."""
    started = await agent.start(brief, review=True)
    await agent.resume(started.interaction_id, FEEDBACK)
    return await agent.revise(started.interaction_id, "shorter please")


def _rows(agent: ColdMailAgent) -> SqliteRows:
    return SqliteRows(Path(agent.db_path))


async def test_a_fork_of_the_audience_question_refines_with_its_own_feedback(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    parent = await agent.start(brief)
    done = await agent.resume(parent.interaction_id, FEEDBACK)
    fork = await agent.fork(parent.interaction_id, feedback="CFOs at regional banks")
    assert fork.interaction_id != parent.interaction_id
    assert (fork.status, fork.feedback) == (RunStatus.COMPLETED, "CFOs at regional banks")
    assert fork.final is not None and "CFOs at regional banks" in fork.final.opener.subject
    assert fork.draft == parent.draft  # the same draft, only the answer differs
    assert await agent.get(parent.interaction_id) == done  # the parent is untouched
    assert server.count("draft") == 1 and server.count("refine") == 2
    family = await agent.family(fork.interaction_id)
    assert [m.interaction_id for m in family.members] == [
        parent.interaction_id,
        fork.interaction_id,
    ]
    assert family.parent_id == parent.interaction_id
    link = family.members[1].link
    assert link is not None and (link.round, link.kind, link.text) == (
        0,
        "feedback",
        "CFOs at regional banks",
    )


async def test_a_fork_of_review_round_1_revises_that_rounds_sequence_not_the_later_one(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    parent = await _reviewed_twice(agent, brief)
    server.reset()
    fork = await agent.fork(parent.interaction_id, round=1, guidance="more formal")
    assert (fork.status, fork.round) == (RunStatus.AWAITING_REVIEW, 2)
    assert fork.sequence is not None and "more formal" in fork.sequence.opener.subject
    (request,) = server.requests
    assert request.kind == "revise"
    prompt = json.dumps(request.body)
    assert "more formal" in prompt and "shorter please" not in prompt
    # The fork goes on as any run does: approved, it completes.
    approved = await agent.approve(fork.interaction_id)
    assert approved.status is RunStatus.COMPLETED
    history = await agent.history(fork.interaction_id)
    assert [(e.kind, e.round) for e in history] == [
        ("review", 1),
        ("revised", 1),
        ("review", 2),
        ("approved", 2),
        ("completed", 2),
    ]
    assert history[0].detail == f"forked from run {parent.interaction_id} at review round 1"


async def test_forks_of_forks_and_concurrent_forks_form_one_family(
    agent: ColdMailAgent, brief: Brief
) -> None:
    parent = await _reviewed_twice(agent, brief)
    forks = await asyncio.gather(
        *(agent.fork(parent.interaction_id, round=1, guidance=f"angle {i}") for i in range(3))
    )
    assert len({f.interaction_id for f in forks}) == 3
    grandchild = await agent.fork(forks[0].interaction_id, round=2, guidance="funnier")
    with pytest.raises(RunConflict, match=f"fork run {parent.interaction_id} at round 0"):
        await agent.fork(forks[0].interaction_id, feedback="CFOs")  # it started at round 1
    again = await agent.fork(forks[0].interaction_id, round=1, guidance="from its start")
    assert again.round == 2
    family = await agent.family(parent.interaction_id)
    assert [m.interaction_id for m in family.members][0] == parent.interaction_id
    assert {m.interaction_id for m in family.members} == {
        parent.interaction_id,
        grandchild.interaction_id,
        again.interaction_id,
        *(f.interaction_id for f in forks),
    }
    assert [m.interaction_id for m in family.forks_of(forks[0].interaction_id)] == [
        grandchild.interaction_id,
        again.interaction_id,
    ]


async def test_a_fork_while_the_parent_is_being_resumed_works_and_both_finish(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    parent = await agent.start(brief)
    server.enqueue(Reply(delay=1.0, kind="refine"))
    resuming = asyncio.ensure_future(agent.resume(parent.interaction_id, FEEDBACK))
    while (await agent.get(parent.interaction_id)).status is not RunStatus.RESUMING:
        await asyncio.sleep(0.02)
    fork = await agent.fork(parent.interaction_id, feedback="CFOs at banks")
    done = await resuming
    assert (done.status, done.feedback) == (RunStatus.COMPLETED, FEEDBACK)
    assert (fork.status, fork.feedback) == (RunStatus.COMPLETED, "CFOs at banks")


@pytest.mark.parametrize(
    "arguments",
    [
        {"feedback": ""},
        {"feedback": "   "},
        {"feedback": "x" * (MAX_FEEDBACK_CHARS + 1)},
        {"feedback": "CTOs\x1b[31m"},
        {"feedback": "CTOs\x00"},
        {"guidance": "more formal"},  # guidance at the audience question
        {"round": 1, "feedback": "CTOs"},  # feedback at a review round
        {"round": 1},
        {},
        {"round": -1, "feedback": "CTOs"},
        {"round": True, "feedback": "CTOs"},
        {"round": "1", "guidance": "x"},
        {"round": 1, "guidance": ""},
        {"feedback": "CTOs", "reviewer": "x" * 1000},
    ],
)
async def test_bad_input_is_refused_before_anything_is_stored(
    agent: ColdMailAgent, brief: Brief, arguments: dict[str, object]
) -> None:
    parent = await _reviewed_twice(agent, brief)
    before = _rows(agent).count()
    with pytest.raises(InvalidInput):
        await agent.fork(parent.interaction_id, **arguments)  # type: ignore[arg-type]
    assert _rows(agent).count() == before
    with pytest.raises(InvalidInput):
        await agent.fork("not-an-id", feedback="CTOs")


async def test_unknown_rounds_runs_and_the_last_round_are_refused_with_what_to_do(
    agent: ColdMailAgent, brief: Brief
) -> None:
    parent = await _reviewed_twice(agent, brief)
    with pytest.raises(RunConflict, match="never paused at review round 3.*reached review round 2"):
        await agent.fork(parent.interaction_id, round=3, guidance="x")
    plain = await agent.start(brief)
    with pytest.raises(RunConflict, match="no review rounds"):
        await agent.fork(plain.interaction_id, round=1, guidance="x")
    with pytest.raises(RunNotFound):
        await agent.fork("0" * 32, feedback="CTOs")
    limited = await ColdMailAgent.connect(agent.db_path, max_rounds=1)
    try:
        one = await limited.start(brief, review=True)
        await limited.resume(one.interaction_id, FEEDBACK)
        with pytest.raises(RunConflict, match="round 1 is the last"):
            await limited.fork(one.interaction_id, round=1, guidance="x")
    finally:
        await limited.aclose()


async def test_a_fork_of_a_tampered_pause_is_refused_as_a_resume_of_one_is(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    parent = await _reviewed_twice(agent, brief)
    rows = _rows(agent)
    rows.set_pause(parent.interaction_id, 1, snapshot=b"\x80\x04 pickled code")
    with pytest.raises(SnapshotIntegrityError) as forked:
        await agent.fork(parent.interaction_id, round=1, guidance="x")
    rows.set(parent.interaction_id, snapshot=b"\x80\x04 pickled code")
    with pytest.raises(SnapshotIntegrityError) as resumed:
        await agent.revise(parent.interaction_id, "x")
    assert (forked.value.topic, forked.value.exit_code) == (
        resumed.value.topic,
        resumed.value.exit_code,
    )
    assert server.count("revise") == 1  # only the parent's own revision ever ran


@pytest.mark.slow  # waits out the LLM's retries
async def test_a_failed_fork_step_keeps_the_fork_and_says_how_to_finish_it(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    parent = await agent.start(brief)
    server.enqueue(*[Reply(status=500, kind="refine")] * 10)
    before = _rows(agent).count()
    with pytest.raises(LlmError, match="the fork [0-9a-f]{32} of run .* is stored") as failed:
        await agent.fork(parent.interaction_id, feedback="CFOs at banks")
    assert _rows(agent).count() == before + 1
    fork_id = str(failed.value).split("the fork ")[1].split(" ")[0]
    waiting = await agent.get(fork_id)
    assert waiting.status is RunStatus.AWAITING_FEEDBACK and waiting.last_error
    server.reset()
    done = await agent.resume(fork_id, "CFOs at banks")
    assert done.status is RunStatus.COMPLETED


async def test_forks_of_a_purged_parent_stay_and_say_their_parent_is_gone(
    agent: ColdMailAgent, brief: Brief
) -> None:
    from datetime import timedelta

    from ..rows import age

    parent = await agent.start(brief)
    await agent.resume(parent.interaction_id, FEEDBACK)
    fork = await agent.fork(parent.interaction_id, feedback="CFOs at banks")
    age(_rows(agent), parent.interaction_id, timedelta(days=40))
    assert await agent.purge(timedelta(days=30)) == 1
    with pytest.raises(RunNotFound):
        await agent.fork(parent.interaction_id, feedback="CFOs")
    family = await agent.family(fork.interaction_id)
    assert family.parent_gone == parent.interaction_id
    assert (await agent.get(fork.interaction_id)).status is RunStatus.COMPLETED


def test_the_sync_agent_forks_too(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    with SyncColdMailAgent.open(db_path) as agent:
        parent = agent.start(brief)
        fork = agent.fork(parent.interaction_id, feedback="CFOs at banks")
        assert fork.status is RunStatus.COMPLETED
        assert agent.family(parent.interaction_id).forks_of(parent.interaction_id)[0].link


# --------------------------------------------------------------------------- CLI and export


def test_the_cli_forks_and_show_lists_the_family(
    cli: Callable[..., Completed], server: ScriptedOpenAIServer
) -> None:
    started = cli(
        "start",
        "--product",
        "Acme",
        "--offer",
        "saves time",
        "--sender",
        "Dana",
        "--review",
        "--json",
    )
    assert started.returncode == 0, started.stderr
    parent = json.loads(started.stdout)["interaction_id"]
    assert cli("resume", parent, "--feedback", FEEDBACK).returncode == 0
    forked = cli("fork", parent, "--round", "1", "--guidance", "more formal", "--json")
    assert forked.returncode == 0, forked.stderr
    data = json.loads(forked.stdout)
    fork_id = data["interaction_id"]
    assert data["fork"] == {
        "parent_id": parent,
        "round": 1,
        "kind": "revise",
        "text": "more formal",
        "reviewer": None,
    }
    shown = cli("show", parent)
    assert shown.returncode == 0, shown.stderr
    assert "FAMILY" in shown.stdout and fork_id in shown.stdout
    assert "guidance: more formal" in shown.stdout
    as_json = json.loads(cli("show", fork_id, "--json").stdout)
    assert as_json["family"]["parent_id"] == parent
    assert [m["interaction_id"] for m in as_json["family"]["members"]] == [parent, fork_id]
    alone = cli("start", "--product", "Acme", "--offer", "x", "--sender", "Dana", "--json")
    lone_id = json.loads(alone.stdout)["interaction_id"]
    assert "family" not in json.loads(cli("show", lone_id, "--json").stdout)
    assert "FAMILY" not in cli("show", lone_id).stdout


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--feedback", ""], "feedback"),
        (["--guidance", "x"], "--guidance forks a review round"),
        (["--round", "2", "--feedback", "x"], "round 2 is a review round"),
        (["--round", "-1", "--feedback", "x"], "not a round"),
        (["--round", "abc", "--guidance", "x"], "not a round"),
        (["--feedback", "a", "--guidance", "b"], "not allowed with"),
        ([], "one of the arguments --feedback --guidance is required"),
    ],
)
def test_the_cli_refuses_bad_fork_input_in_one_line(
    cli: Callable[..., Completed], arguments: list[str], message: str
) -> None:
    refused = cli("fork", "0" * 32, *arguments)
    assert refused.returncode != 0
    assert message in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_the_cli_says_what_to_do_for_a_round_never_reached(
    cli: Callable[..., Completed], server: ScriptedOpenAIServer
) -> None:
    started = cli("start", "--product", "Acme", "--offer", "x", "--sender", "Dana", "--json")
    parent = json.loads(started.stdout)["interaction_id"]
    refused = cli("fork", parent, "--round", "2", "--guidance", "x")
    assert refused.returncode != 0
    assert "never paused at review round 2" in refused.stderr


def test_a_family_exports_as_an_ab_test_of_its_approved_runs(
    server: ScriptedOpenAIServer,
    db_path: Path,
    brief: Brief,
    tmp_path: Path,
    cli: Callable[..., Completed],
) -> None:
    with SyncColdMailAgent.open(db_path) as agent:
        parent = agent.start(brief)
        agent.resume(parent.interaction_id, FEEDBACK)
        fork = agent.fork(parent.interaction_id, feedback="CFOs at banks")
        waiting = agent.start(brief, review=True)  # not in the family
        unfinished = agent.fork(waiting.interaction_id, feedback="CFOs")  # awaiting review
        assert agent.family_variants(parent.interaction_id) == [fork.interaction_id]
        assert agent.family_variants(fork.interaction_id) == [parent.interaction_id]
        assert agent.family_variants(unfinished.interaction_id) == []
    leads = tmp_path / "leads.csv"
    leads.write_text(
        "email,first_name\n" + "".join(f"lead{i}@example.com,Lee\n" for i in range(40))
    )
    out = tmp_path / "out.csv"
    exported = cli(
        "export",
        parent.interaction_id,
        "--leads",
        str(leads),
        "--out",
        str(out),
        "--family",
        "--variant",
        fork.interaction_id,  # named as well: exported once
    )
    assert exported.returncode == 0, exported.stderr
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["variant"] for row in rows} == {"A", "B"}
    subjects = {row["variant"]: row["step1_subject"] for row in rows}
    assert "CFOs at banks" in subjects["B"] and "CFOs at banks" not in subjects["A"]


async def test_the_same_fork_key_at_the_same_moment_makes_one_fork(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    """Two agents (two processes' worth of connections) fork with one key at once: one fork,
    one LLM step; both get that fork. The same key with other input is refused."""
    settings = backend.settings()
    async with (
        ColdMailAgent.open(settings=settings) as one,
        ColdMailAgent.open(settings=settings) as two,
    ):
        parent = await one.start(brief)
        refined = server.count("refine")
        made = await asyncio.gather(
            *(a.fork(parent.interaction_id, feedback="CFOs", key="k-1") for a in (one, two) * 2),
            return_exceptions=True,
        )
        runs = [m for m in made if isinstance(m, Run)]
        assert len(runs) == len(made), made
        assert len({r.interaction_id for r in runs}) == 1
        done = await one.get(runs[0].interaction_id)
        assert done.status is RunStatus.COMPLETED and server.count("refine") == refined + 1
        assert len((await one.family(parent.interaction_id)).members) == 2
        with pytest.raises(InvalidInput, match="key was used for another fork"):
            await two.fork(parent.interaction_id, feedback="CMOs", key="k-1")
        with pytest.raises(InvalidInput, match="key"):
            await two.fork(parent.interaction_id, feedback="CFOs", key="k 1")
        assert len((await one.family(parent.interaction_id)).members) == 2
