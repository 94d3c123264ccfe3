"""SQLite writers queue on a lock file beside the database (``sqlite._WriterLock``): a writer
killed while holding it never blocks the others, a waiter gives up after the busy timeout as
SQLite would, and a writer that does not take it is still kept out by SQLite's own lock."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from bridgic_coldmail import Brief, EmailSequence, RunStatus, make_decision
from bridgic_coldmail.errors import StoreError
from bridgic_coldmail.store import Claim, Finished, NewRun
from bridgic_coldmail.store.sqlite import WRITER_LOCK_SUFFIX, SqliteRunStore

from ..conftest import PROCESS_TIMEOUT, REPO

SEQUENCE = EmailSequence.model_validate(
    {
        "opener": {"subject": "Hello", "body": "Hi,\n\nbody\n\nDana", "wait_days": 0},
        "follow_up": {"subject": "Again", "body": "Hi again", "wait_days": 3},
    }
)


def _new() -> NewRun:
    return NewRun(
        interaction_id=uuid.uuid4().hex,
        brief=Brief(product="Acme Scheduler", offer="cuts no-shows by 30%", sender="Dana Lee"),
        draft=SEQUENCE,
        question="Who is this for?",
        snapshot=b"snapshot " + uuid.uuid4().bytes,
        serialization_version="1.0",
    )


# A writer that stops for good in the middle of its write transaction: it holds the writer
# lock and SQLite's write lock (forced by making its history insert wait forever).
_STUCK_WRITER = textwrap.dedent(
    """
    import asyncio, sys, threading, uuid
    from bridgic_coldmail.store import sqlite as store_module
    from bridgic_coldmail.store.sqlite import SqliteRunStore
    sys.path.insert(0, {tests!r})
    from tests.integration.test_writer_lock import _new

    def stuck(db, change):
        print("holding", flush=True)
        threading.Event().wait()

    async def main():
        store = await SqliteRunStore.connect({db!r}, busy_timeout=30)
        store_module._insert_events = stuck
        await store.insert_paused(_new())

    asyncio.run(main())
    """
)


def _stuck_writer(db_path: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", _STUCK_WRITER.format(db=str(db_path), tests=str(REPO))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert child.stdout is not None
    line = child.stdout.readline()  # blocks until the child holds both locks
    assert line.strip() == "holding", child.stderr.read() if child.stderr else ""
    return child


async def test_a_writer_killed_holding_the_lock_blocks_no_one(db_path: Path) -> None:
    store = await SqliteRunStore.connect(db_path, busy_timeout=30)
    try:
        paused = await store.insert_paused(_new())
        child = _stuck_writer(db_path)
        try:
            feedback = make_decision("feedback", text="CTOs")
            waiting = asyncio.ensure_future(store.claim(paused.interaction_id, feedback, {"1.0"}))
            await asyncio.sleep(0.5)
            assert not waiting.done()  # queued behind the stuck writer
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=PROCESS_TIMEOUT)
            killed_at = time.monotonic()
            claim = await asyncio.wait_for(waiting, PROCESS_TIMEOUT)
            took = time.monotonic() - killed_at
        finally:
            child.kill()
            child.wait(timeout=PROCESS_TIMEOUT)
        assert isinstance(claim, Claim)
        assert took < 2  # the kernel let go at once (a stale lock would wait out 30 s)
        done = await store.complete(claim, Finished(RunStatus.COMPLETED, SEQUENCE))
        assert done is not None and done.status is RunStatus.COMPLETED
    finally:
        await store.close()
    assert Path(f"{db_path}{WRITER_LOCK_SUFFIX}").exists()


async def test_a_waiting_writer_gives_up_after_the_busy_timeout(db_path: Path) -> None:
    store = await SqliteRunStore.connect(db_path, busy_timeout=1)
    try:
        child = _stuck_writer(db_path)
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match="locked by another process for more than 1 s"):
                await store.insert_paused(_new())
            took = time.monotonic() - started
        finally:
            child.kill()
            child.wait(timeout=PROCESS_TIMEOUT)
        assert 1 <= took < 1 + 3  # the timeout, plus this machine's scheduling
        assert (await store.insert_paused(_new())) is not None  # the kernel let go
    finally:
        await store.close()


async def test_a_writer_without_the_lock_file_is_still_kept_out(db_path: Path) -> None:
    """The lock file is a queue, not the lock: a writer that never takes it (the sqlite3
    shell, an older release) holds SQLite's write lock, and ours waits for it."""
    store = await SqliteRunStore.connect(db_path, busy_timeout=10)
    try:
        import sqlite3

        other = sqlite3.connect(db_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        writing = asyncio.ensure_future(store.insert_paused(_new()))
        await asyncio.sleep(0.5)
        assert not writing.done()
        other.execute("ROLLBACK")
        other.close()
        assert (await asyncio.wait_for(writing, PROCESS_TIMEOUT)) is not None
    finally:
        await store.close()


async def test_stores_in_one_process_queue_on_the_lock_too(db_path: Path) -> None:
    """Two stores on one file (two connections) in one process: each write is one
    transaction at a time, all of them recorded."""
    first = await connect_store_for(db_path)
    second = await connect_store_for(db_path)
    try:
        written = await asyncio.gather(
            *(store.insert_paused(_new()) for store in (first, second) for _ in range(20))
        )
        assert len({run.interaction_id for run in written}) == 40
        assert sum((await first.counts()).values()) == 40
    finally:
        await first.close()
        await second.close()


async def connect_store_for(db_path: Path) -> SqliteRunStore:
    return await SqliteRunStore.connect(db_path, busy_timeout=10)


async def test_a_failed_open_leaves_no_lock_file_behind(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(Exception, match="no database"):
        await SqliteRunStore.connect(empty, create=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]
