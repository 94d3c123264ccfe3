"""Two resumes of one run racing: exactly one calls the LLM, in tasks and in processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bridgic_coldmail import (
    Brief,
    ColdMailAgent,
    RunBeingResumed,
    RunStatus,
    make_decision,
)
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.store import Claim, connect_store
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

from ..conftest import PROCESS_TIMEOUT, REPO
from ..rows import SqliteRows, expire_lease

FEEDBACK = "CTOs at mid-size hospitals"


async def _race(first: ColdMailAgent, second: ColdMailAgent, interaction_id: str) -> list[object]:
    return await asyncio.gather(
        first.resume(interaction_id, FEEDBACK),
        second.resume(interaction_id, FEEDBACK),
        return_exceptions=True,
    )


@pytest.mark.parametrize("shared_connection", [True, False], ids=["one-agent", "two-agents"])
async def test_racing_tasks_call_the_llm_once(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief, shared_connection: bool
) -> None:
    async with ColdMailAgent.open(db_path) as first, ColdMailAgent.open(db_path) as other:
        second = first if shared_connection else other
        pending = await first.start(brief)
        server.enqueue(Reply(kind="refine", delay=0.5, content=None))  # slow, then default
        results = await _race(first, second, pending.interaction_id)

        winners = [r for r in results if not isinstance(r, BaseException)]
        losers = [r for r in results if isinstance(r, BaseException)]
        assert len(winners) == 1 and len(losers) == 1, results
        assert isinstance(losers[0], RunBeingResumed)
        assert "is being resumed by another process" in str(losers[0])
        assert server.count("refine") == 1
        # Once the winner is done, the loser's retry gets the stored result, no LLM call.
        assert await second.resume(pending.interaction_id, FEEDBACK) == winners[0]
        assert server.count("refine") == 1


async def test_many_racers_one_winner(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        pending = await agent.start(brief)
        server.enqueue(Reply(kind="refine", delay=0.3, content=None))
        results = await asyncio.gather(
            *(agent.resume(pending.interaction_id, FEEDBACK) for _ in range(8)),
            return_exceptions=True,
        )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, RunBeingResumed) for r in results if isinstance(r, BaseException))
    assert server.count("refine") == 1


@pytest.mark.slow
def test_racing_processes_call_the_llm_once(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    async def start() -> str:
        async with ColdMailAgent.open(db_path) as agent:
            return (await agent.start(brief)).interaction_id

    interaction_id = asyncio.run(start())
    # Slow enough that both processes reach their claim while the first refine is running.
    server.enqueue(Reply(kind="refine", delay=4.0, content=None))
    command = [
        sys.executable, "-m", "bridgic_coldmail", "resume", interaction_id,
        "--feedback", FEEDBACK, "--json",
    ]  # fmt: skip
    procs = [
        subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=PROCESS_TIMEOUT) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, RunBeingResumed.exit_code], outputs
    by_code = {p.returncode: out for p, out in zip(procs, outputs, strict=True)}
    winner, _ = by_code[0]
    assert json.loads(winner)["status"] == RunStatus.COMPLETED.value
    _, loser_err = by_code[RunBeingResumed.exit_code]
    assert loser_err.startswith("coldmail: error: run ") and "being resumed" in loser_err
    assert server.count("refine") == 1


async def test_a_claim_whose_lease_ran_out_can_be_taken_over(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        pending = await agent.start(brief)
    # A resumer that dies mid-refine leaves the run claimed, its lease running.
    store = await connect_store(Settings.resolve(db=str(db_path)))
    claim = await store.claim(
        pending.interaction_id, make_decision("feedback", text=FEEDBACK), {"1.0"}
    )
    await store.close()
    assert isinstance(claim, Claim)
    until = f"{claim.expires_at:%Y-%m-%d %H:%M}"
    async with ColdMailAgent.open(db_path) as agent:
        with pytest.raises(RunBeingResumed, match=f"can be taken again after {until}"):
            await agent.resume(pending.interaction_id, FEEDBACK)
    expire_lease(SqliteRows(db_path), pending.interaction_id)
    async with ColdMailAgent.open(db_path) as agent:
        done = await agent.resume(pending.interaction_id, FEEDBACK)
    assert done.status is RunStatus.COMPLETED
    assert server.count("draft") == 1 and server.count("refine") == 1
