"""Exactly once under real timings: leases renewed while the LLM works, fenced completion,
settings that cannot work together refused, and a failed completion recorded once the store
accepts writes again (or reported unconfirmed when it does not within the lease).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridgic_coldmail import (
    Brief,
    ColdMailAgent,
    ConfigurationError,
    RunBeingResumed,
    RunStatus,
    StoreError,
)
from bridgic_coldmail.models import Run
from bridgic_coldmail.retry import NO_RETRY
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.store import Claim, Finished, Paused, SqliteRunStore
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

from ..conftest import wait_for_request
from ..rows import SqliteRows, expire_lease

FEEDBACK = "CTOs at mid-size hospitals"


class _ObservedStore(SqliteRunStore):
    """The real SQLite store, telling the test when recording a result has failed."""

    complete_failed: asyncio.Event

    async def complete(self, claim: Claim, result: Paused | Finished) -> Run | None:
        try:
            return await super().complete(claim, result)
        except StoreError:
            self.complete_failed.set()
            raise


async def _observed_agent(db_path: Path, **settings: Any) -> ColdMailAgent:
    resolved = Settings.resolve(db=str(db_path), **settings)
    store = await _ObservedStore.connect(
        resolved.db, busy_timeout=resolved.busy_timeout, lease_seconds=resolved.lease_seconds
    )
    store.complete_failed = asyncio.Event()
    return ColdMailAgent(store, resolved, retry=NO_RETRY)


SHORT = {"lease_seconds": 0.9, "busy_timeout": 0.3}
"""A lease a third of a slow refinement; renewed every 0.3 s."""


@pytest.mark.slow  # outlasts a lease
async def test_a_refinement_slower_than_the_lease_completes_exactly_once(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    async with (
        ColdMailAgent.open(db_path, **SHORT) as holder,
        ColdMailAgent.open(db_path, **SHORT) as rival,
    ):
        pending = await holder.start(brief)
        server.enqueue(Reply(kind="refine", delay=3.0))  # more than three leases
        resuming = asyncio.create_task(holder.resume(pending.interaction_id, FEEDBACK))
        await asyncio.to_thread(wait_for_request, server, "refine")
        refused_at: list[float] = []
        loop = asyncio.get_running_loop()
        while True:  # the rival keeps trying for the whole refinement
            try:
                seen = await rival.resume(pending.interaction_id, FEEDBACK)
            except RunBeingResumed as refused:
                assert "being resumed by another process" in str(refused)
                refused_at.append(loop.time())
                await asyncio.sleep(0.1)
                continue
            break  # the run completed: the rival gets the stored result, no second LLM call
        done = await resuming
    assert seen == done
    assert done.status is RunStatus.COMPLETED
    # Refused throughout, for longer than two leases: the lease was renewed, not outlived.
    assert refused_at[-1] - refused_at[0] > 2 * SHORT["lease_seconds"]
    assert server.count("refine") == 1


async def test_a_resumer_whose_lease_was_taken_over_stops_and_records_nothing(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = SqliteRows(db_path)
    async with (
        ColdMailAgent.open(db_path, **SHORT) as first,
        ColdMailAgent.open(db_path, **SHORT) as second,
    ):
        pending = await first.start(brief)
        server.enqueue(Reply(kind="refine", delay=10.0, content=None))
        slow = asyncio.create_task(first.resume(pending.interaction_id, FEEDBACK))
        await asyncio.to_thread(wait_for_request, server, "refine")
        # As if the first resumer had been stopped (SIGSTOP, a long GC) past its lease: its
        # lease keeper renews nothing until it is thawed, after the takeover.
        thawed = asyncio.Event()
        renew = first._store.renew

        async def stopped_renew(claim: Any) -> Any:
            await thawed.wait()
            return await renew(claim)

        monkeypatch.setattr(first._store, "renew", stopped_renew)
        await asyncio.sleep(SHORT["lease_seconds"])  # a renewal already under way ends
        expire_lease(rows, pending.interaction_id)
        taken_over = await second.resume(pending.interaction_id, "Nurses")
        thawed.set()
        with pytest.raises(RunBeingResumed, match="taken over by another resumer"):
            await slow
    assert taken_over.status is RunStatus.COMPLETED and taken_over.feedback == "Nurses"
    async with ColdMailAgent.open(db_path) as agent:
        stored = await agent.get(pending.interaction_id)
    assert stored.final == taken_over.final and stored.feedback == "Nurses"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lease_seconds": 20, "busy_timeout": 10}, "must be at least 3x the busy timeout"),
        ({"lease_seconds": 0}, "positive number of seconds"),
        ({"lease_seconds": 10**9}, "at most 604800 seconds"),
        ({"llm_timeout": float("nan")}, "positive number of seconds"),
        ({"max_rounds": 0}, "from 1 to 50"),
    ],
)
async def test_settings_that_cannot_work_are_refused_before_anything_opens(
    db_path: Path, settings: dict[str, float], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        async with ColdMailAgent.open(db_path, **settings):  # type: ignore[arg-type]
            pass
    assert not db_path.exists()


def test_the_lease_setting_from_the_environment_is_checked_too() -> None:
    env = {"COLDMAIL_LEASE_SECONDS": "5", "COLDMAIL_BUSY_TIMEOUT": "10"}
    with pytest.raises(ConfigurationError, match=r"COLDMAIL_LEASE_SECONDS=5 s\) must be"):
        Settings.resolve(env=env)


async def test_a_completion_that_fails_is_recorded_once_the_store_accepts_writes_again(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    rows = SqliteRows(db_path)
    agent = await _observed_agent(db_path, lease_seconds=30, busy_timeout=0.3)
    store = agent._store
    assert isinstance(store, _ObservedStore)
    try:
        pending = await agent.start(brief)
        locked, release_lock = threading.Event(), threading.Event()

        def hold_the_lock_while_the_result_comes_in() -> None:
            wait_for_request(server, "refine")
            with rows.lock():  # another process holds the write lock past the busy timeout
                locked.set()
                release_lock.wait(timeout=30)

        server.enqueue(Reply(kind="refine", delay=0.5))
        holder = threading.Thread(target=hold_the_lock_while_the_result_comes_in)
        holder.start()
        resuming = asyncio.create_task(agent.resume(pending.interaction_id, FEEDBACK))
        await asyncio.to_thread(locked.wait, 30)
        await asyncio.wait_for(store.complete_failed.wait(), 30)  # the result was not written
        assert not resuming.done()  # still trying to record it, not gone for good
        release_lock.set()
        done = await resuming  # recorded as soon as the lock was free: the LLM's work kept
        await asyncio.to_thread(holder.join)
        history = await agent.history(pending.interaction_id)
    finally:
        await store.close()
    assert done.status is RunStatus.COMPLETED and done.feedback == FEEDBACK
    assert [e.kind for e in history] == ["paused", "feedback", "completed"]
    assert server.count("refine") == 1


async def test_a_result_that_cannot_be_recorded_within_the_lease_is_reported_unconfirmed(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    """The lock outlasts the lease: the resumer stops trying, says the result could not be
    confirmed and how to finish; the run is claimable again, and finishing it works."""
    rows = SqliteRows(db_path)
    agent = await _observed_agent(db_path, **SHORT)
    store = agent._store
    assert isinstance(store, _ObservedStore)
    try:
        pending = await agent.start(brief)
        release_lock = threading.Event()

        def hold_the_lock() -> None:
            wait_for_request(server, "refine")
            with rows.lock():
                release_lock.wait(timeout=30)

        server.enqueue(Reply(kind="refine", delay=0.2))
        holder = threading.Thread(target=hold_the_lock)
        holder.start()
        try:
            with pytest.raises(StoreError, match="could not be confirmed") as unconfirmed:
                await agent.resume(pending.interaction_id, FEEDBACK)
        finally:
            release_lock.set()
            await asyncio.to_thread(holder.join)
        assert "resume it with the same feedback" in str(unconfirmed.value)
        assert unconfirmed.value.topic == "unconfirmed"
        done = await agent.resume(pending.interaction_id, FEEDBACK)  # the lease has run out
    finally:
        await store.close()
    assert done.status is RunStatus.COMPLETED
    assert server.count("refine") == 2  # the first result was never recorded


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, so that the disk can really fill up (needs the right to mount)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.slow  # a 1 s LLM reply, then waits for the disk
async def test_a_full_disk_at_completion_records_the_result_once_space_is_freed(
    server: ScriptedOpenAIServer, small_disk: Path, brief: Brief
) -> None:
    db_path = small_disk / "coldmail.db"
    filler = small_disk / "filler"
    agent = await _observed_agent(db_path, lease_seconds=30, busy_timeout=0.3)
    store = agent._store
    assert isinstance(store, _ObservedStore)
    try:
        pending = await agent.start(brief)
        server.enqueue(Reply(kind="refine", delay=1.0))
        resuming = asyncio.create_task(agent.resume(pending.interaction_id, FEEDBACK))
        await asyncio.to_thread(wait_for_request, server, "refine")
        with open(filler, "wb") as handle:  # fill the disk while the LLM works
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError:
                pass
        await asyncio.wait_for(store.complete_failed.wait(), 30)  # disk full: not written
        assert not resuming.done()
        filler.unlink()  # the operator frees space
        done = await resuming
        run = await agent.get(pending.interaction_id)
    finally:
        await store.close()
    assert run == done and run.status is RunStatus.COMPLETED
    assert server.count("refine") == 1
