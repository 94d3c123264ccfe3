"""Failures stay one line: a closed pipe, a database that cannot be opened, a header with
thousands of columns — each ends with at most one short line, and no stray traceback from a
background thread."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridgic_coldmail import Brief, ColdMailAgent, InvalidInput, StoreError
from bridgic_coldmail.export.leads import read_header
from bridgic_coldmail.models import EmailSequence
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.store import NewRun, SqliteRunStore, connect_store

from ..conftest import PROCESS_TIMEOUT, REPO, _coldmail

MAX_MESSAGE = 1000
"""No error message that lists columns is longer than this, however many there are."""


async def _fill(db_path: Path, brief: Brief, count: int) -> None:
    """``count`` paused runs, stored directly (no LLM needed to list them)."""
    draft = EmailSequence.model_validate(
        {
            "opener": {"subject": "Hello", "body": "Hi,\n\n" + "x" * 800, "wait_days": 0},
            "follow_up": {"subject": "Again", "body": "Hi again", "wait_days": 3},
        }
    )
    store = await connect_store(Settings.resolve(db=str(db_path)))
    try:
        for _ in range(count):
            await store.insert_paused(
                NewRun(uuid.uuid4().hex, brief, draft, "Who?", b"snapshot", "1.0")
            )
    finally:
        await store.close()


def test_a_listing_piped_into_head_ends_quietly(db_path: Path, brief: Brief) -> None:
    asyncio.run(_fill(db_path, brief, 300))  # far more than a pipe's 64 kB buffer
    piped = subprocess.run(
        f"'{_coldmail()}' list --json --limit 300 | head -c 10; echo \" ${{PIPESTATUS[0]}}\"",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        cwd=REPO,
    )
    assert piped.stderr == ""  # no BrokenPipeError, no "Exception ignored…"
    printed, status = piped.stdout.rsplit(" ", 1)
    assert printed.startswith("[") and int(status) == 141  # 128 + SIGPIPE, as `yes | head`


@pytest.fixture
def unwritable_folder() -> Iterator[Path]:
    """A folder nobody but root may write to, in a folder anyone may enter."""
    base = Path(tempfile.mkdtemp(prefix="coldmail-unwritable-"))
    base.chmod(0o755)
    folder = base / "not-yours"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        yield folder
    finally:
        folder.chmod(0o755)
        shutil.rmtree(base)


def _as_another_user(command: list[str]) -> list[str]:
    """Run ``command`` as an unprivileged user when the tests run as root (root may write
    anywhere, so the folder would not be unwritable for it)."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv to drop privileges")
    return [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]


def test_a_database_that_cannot_be_opened_prints_one_line(unwritable_folder: Path) -> None:
    db = unwritable_folder / "coldmail.db"
    # `start` creates the database (reading commands only report that there is none), and
    # does so before the LLM is called: here it cannot.
    command = [sys.executable, "-m", "bridgic_coldmail", "--db", str(db), "start"]
    command += ["--product", "Acme", "--offer", "fewer no-shows", "--sender", "Dana"]
    result = subprocess.run(
        _as_another_user(command),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(REPO), "HOME": "/nonexistent"},
    )
    assert result.returncode == StoreError.exit_code, result
    assert result.stderr.count("\n") == 1, result.stderr  # one line: no thread's traceback
    assert "Event loop is closed" not in result.stderr and "Traceback" not in result.stderr
    assert f"cannot write to {db}" in result.stderr


def test_a_failed_open_leaves_no_connection_thread_behind(
    unwritable_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same failure in this process: aiosqlite's thread is stopped before the error is
    raised, so it never reports into a closed event loop (PytestUnhandledThreadException)."""
    import sqlite3

    def cannot_open(*args: object, **kwargs: object) -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(sqlite3, "connect", cannot_open)  # forces the failure, even as root
    failures: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", failures.append)

    async def open_it() -> list[threading.Thread]:
        before = set(threading.enumerate())
        with pytest.raises(StoreError, match="cannot write to"):
            await SqliteRunStore.connect(unwritable_folder / "coldmail.db")
        started = set(threading.enumerate()) - before
        return [t for t in started if t.is_alive() and "_connection_worker" in t.name]

    left_running = asyncio.run(open_it())
    for thread in left_running:
        thread.join(timeout=5)
    assert left_running == []  # stopped before the error was raised…
    assert failures == []  # …so it never reports into a closed event loop


# --------------------------------------------------------------------------- clipped lists


def test_a_header_of_thousands_of_columns_without_email_is_described_briefly(
    tmp_path: Path,
) -> None:
    leads = tmp_path / "wide.csv"
    leads.write_text(",".join(f"column {i}" for i in range(5000)) + "\n1\n", encoding="utf-8")
    with pytest.raises(InvalidInput) as refused:
        read_header(leads)
    message = str(refused.value)
    assert len(message) < MAX_MESSAGE, len(message)
    assert "'column 0'" in message and "… and 4990 more" in message
    assert "name the column with the addresses 'email'" in message


def test_a_huge_column_name_is_clipped_in_messages(tmp_path: Path) -> None:
    leads = tmp_path / "huge.csv"
    leads.write_text("email," + "!" * 100_000 + "\nx@y.io,1\n", encoding="utf-8")
    with pytest.raises(InvalidInput) as refused:
        read_header(leads)
    assert len(str(refused.value)) < MAX_MESSAGE
    assert "has no letters or digits" in str(refused.value)


async def test_unknown_merge_fields_and_the_runs_fields_are_clipped(
    agent: ColdMailAgent, brief: Brief
) -> None:
    fields = [f"field_{i}" for i in range(300)]
    pending = await agent.start(brief, review=True, fields=fields)
    run = await agent.resume(pending.interaction_id, "CTOs")
    unknown = " ".join(f"{{{{x_{i}}}}}" for i in range(400))
    assert run.sequence is not None
    edited = run.sequence.model_dump()
    edited["opener"]["body"] = unknown
    with pytest.raises(InvalidInput) as refused:
        await agent.edit(run.interaction_id, edited)
    message = str(refused.value)
    assert len(message) < MAX_MESSAGE, len(message)
    assert "x_0" in message and "… and 390 more" in message and "… and 290 more" in message
