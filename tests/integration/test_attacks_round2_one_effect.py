"""Attacks on "one decision, one effect, even when the reply is lost", round two (issue 17,
item 2): the reply lost is the *claim's*, not the completion's.

A decision is two commits: the claim (the run marked ``resuming`` under a fencing token and a
lease) and, after the LLM, the result. ``tests/integration/test_one_effect.py`` loses the second
one's reply. When the first one's reply is lost, the run was claimed — with a token this process
made — but the agent raises the store's error ("the change may have been recorded; look
before you retry") and walks away: nothing gives the claim back, and the same decision sent
again, even for the same round as the README's safe retry says, is refused with
``RunBeingResumed`` ("being revised by another process") until the lease runs out (5 minutes
by default). No second effect, but no way to learn or finish the first either. A careful
user expects the agent to recognise its own claim (or give it back) so that the call, or the
same decision for the same round sent again at once, applies the decision once.

Each test failed on main when it was written; see the report of the "attack" helper.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import bridgic_coldmail.store.sqlite as sqlite_store
from bridgic_coldmail import Brief, ColdMailAgent, RunStatus, StoreError
from bridgic_coldmail.store import Claim, Finished, Refusal, RefusalReason, connect_store
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import Backend
from .test_postgres import FEEDBACK as FEEDBACK_ACTION
from .test_postgres import SEQUENCE, VERSIONS, _new, _through, pg, proxy  # noqa: F401

FEEDBACK = "CTOs at mid-size hospitals"


@contextmanager
def claim_commits_then_fails(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The next claim of the SQLite store commits and then fails, as if the reply to its
    COMMIT were lost (a claim is the store's only non-durable transaction besides lease
    renewals and releases, which come after it). Yields the count of failures forced."""
    original = sqlite_store._transaction
    forced: list[int] = []

    @contextmanager
    def committing_then_failing(
        db: sqlite3.Connection, *, durable: bool = True, immediate: bool = True
    ) -> Iterator[Any]:
        with original(db, durable=durable, immediate=immediate) as tx:
            yield tx
        if not durable and not forced and db.total_changes:
            forced.append(1)
            raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as patched:
        patched.setattr(sqlite_store, "_transaction", committing_then_failing)
        yield forced


async def _revise_after_a_lost_claim_reply(agent: ColdMailAgent, reviewing: str) -> Any:
    """Revise; if the call fails with the store's error, send the same decision for the same
    round at once (the retry the README calls safe). Returns the run the caller ends with."""
    try:
        return await agent.revise(reviewing, "shorter")
    except StoreError:
        return await agent.revise(reviewing, "shorter", round=1)


async def test_sqlite_a_decision_whose_claim_reply_is_lost_is_applied_once(
    server: ScriptedOpenAIServer, db_path: Any, brief: Brief, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        pending = await agent.start(brief, review=True)
        reviewing = (await agent.resume(pending.interaction_id, FEEDBACK)).interaction_id
        with claim_commits_then_fails(monkeypatch) as forced:
            run = await _revise_after_a_lost_claim_reply(agent, reviewing)
        assert forced == [1]  # the claim really committed, then failed
        assert (run.status, run.round) == (RunStatus.AWAITING_REVIEW, 2)
    assert server.count("revise") == 1


async def test_postgres_a_decision_whose_claim_reply_is_lost_is_applied_once(
    pg: Backend,  # noqa: F811
    proxy: Any,  # noqa: F811
    server: ScriptedOpenAIServer,
    brief: Brief,
) -> None:
    """Through a proxy that forwards the claim's COMMIT and drops the connection when the
    server answers it."""
    settings = _through(pg, proxy, busy_timeout=1, lease_seconds=30)
    async with ColdMailAgent.open(settings=settings) as agent:
        pending = await agent.start(brief, review=True)
        reviewing = (await agent.resume(pending.interaction_id, FEEDBACK)).interaction_id
        proxy.trap(b"; COMMIT", "lose_reply")  # a revise reads nothing before its claim
        run = await _revise_after_a_lost_claim_reply(agent, reviewing)
        assert proxy.sprung
        assert (run.status, run.round) == (RunStatus.AWAITING_REVIEW, 2)
    assert server.count("revise") == 1


async def test_a_claim_asked_again_with_its_own_token_is_handed_back_writing_nothing(
    backend: Backend,
) -> None:
    """The store's half of the fix, on both backends: the same token finds its own claim
    (no second event, the same pause), another token is still refused as held, and the
    claim handed back completes the run once."""
    store = await connect_store(backend.settings(lease_seconds=30))
    try:
        new = await store.insert_paused(_new())
        run_id = new.interaction_id
        first = await store.claim(run_id, FEEDBACK_ACTION, VERSIONS, token="a" * 32)
        assert isinstance(first, Claim) and first.token == "a" * 32
        events = await store.history(run_id)
        again = await store.claim(run_id, FEEDBACK_ACTION, VERSIONS, token="a" * 32)
        assert isinstance(again, Claim)
        assert (again.token, again.pause_id, again.snapshot) == (
            first.token,
            first.pause_id,
            first.snapshot,
        )
        assert again.run.status is first.run.status is RunStatus.AWAITING_FEEDBACK
        assert await store.history(run_id) == events  # nothing written
        other = await store.claim(run_id, FEEDBACK_ACTION, VERSIONS, token="b" * 32)
        assert isinstance(other, Refusal) and other.reason is RefusalReason.HELD
        done = await store.complete(again, Finished(RunStatus.COMPLETED, SEQUENCE))
        assert done is not None and done.status is RunStatus.COMPLETED
        late = await store.claim(run_id, FEEDBACK_ACTION, VERSIONS, token="a" * 32)
        assert not isinstance(late, Claim)  # once completed the token holds nothing
    finally:
        await store.close()
