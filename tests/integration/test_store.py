"""The SQLite backend on its own: its file, WAL, locks, paths and the aiosqlite call it relies on.

What every backend must do is in test_store_conformance.py; these are SQLite's own concerns.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import aiosqlite
import pytest

from bridgic_coldmail import Brief, ColdMailAgent, StoreError
from bridgic_coldmail.store import SqliteRunStore
from bridgic_coldmail.store.sqlite_sql import MIGRATIONS

from ..rows import SqliteRows


async def test_aiosqlite_still_runs_a_function_on_its_thread_in_one_call(tmp_path: Path) -> None:
    # The store runs each transaction with aiosqlite's private `_execute` (see sqlite.py):
    # if a new aiosqlite changed it, this fails before anything else does.
    conn = await aiosqlite.connect(tmp_path / "probe.db")
    try:
        where = await conn._execute(lambda: threading.current_thread().name)  # type: ignore[no-untyped-call]
        same = await conn._execute(lambda db: db is conn._conn, conn._conn)  # type: ignore[no-untyped-call]
    finally:
        await conn.close()
    assert where != threading.current_thread().name and same is True


async def test_new_database_records_its_schema_and_uses_wal(db_path: Path) -> None:
    store = await SqliteRunStore.connect(db_path)
    await store.close()
    assert SqliteRows(db_path).schema_versions() == [m.version for m in MIGRATIONS]
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_missing_folder_is_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "runs.db"
    store = await SqliteRunStore.connect(path)
    try:
        assert await store.list() == []
    finally:
        await store.close()
    assert path.exists()


async def test_another_applications_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.execute("INSERT INTO users VALUES ('ada')")
    with pytest.raises(StoreError, match="another application"):
        await SqliteRunStore.connect(path)
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {"users"}


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b"\x00garbage" * 512), "not a usable SQLite database"),
    ],
    ids=["directory", "not-sqlite"],
)
async def test_unusable_paths_are_clear_errors(tmp_path: Path, make: object, expected: str) -> None:
    path = tmp_path / "thing.db"
    make(path)  # type: ignore[operator]
    with pytest.raises(StoreError, match=expected):
        await SqliteRunStore.connect(path)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody may write to. Root ignores permissions, so as root it is made immutable."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a filesystem without chattr +i")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


async def test_unwritable_folder_is_a_clear_error(read_only_folder: Path) -> None:
    path = read_only_folder / "runs.db"
    with pytest.raises(StoreError, match=f"{path}.*(permissions|not a usable)"):
        await SqliteRunStore.connect(path)
    assert not path.exists()


async def test_database_locked_past_the_busy_timeout(db_path: Path, brief: Brief) -> None:
    await (await SqliteRunStore.connect(db_path)).close()  # an empty database
    with SqliteRows(db_path).lock():
        with pytest.raises(StoreError, match=r"locked by another process for more than 0\.2 s"):
            async with ColdMailAgent.open(db_path, busy_timeout=0.2, lease_seconds=1):
                pass
    async with ColdMailAgent.open(db_path) as agent:  # usable again once released
        assert await agent.list() == []
