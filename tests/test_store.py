"""The SQLite store on its own: schema versioning, bad paths, locks and injection-shaped input."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridgic_coldmail import Brief, ColdMailAgent, RunNotFound, StoreError
from bridgic_coldmail.store import SCHEMA_VERSION, RunStore


async def test_new_database_records_schema_version_and_uses_wal(db_path: Path) -> None:
    async with RunStore.open(db_path):
        pass
    with sqlite3.connect(db_path) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM coldmail_schema")]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_reopening_applies_nothing_twice(db_path: Path) -> None:
    for _ in range(3):
        async with RunStore.open(db_path):
            pass
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM coldmail_schema").fetchone()[0] == SCHEMA_VERSION


async def test_missing_folder_is_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "runs.db"
    async with RunStore.open(path) as store:
        assert await store.list() == []
    assert path.exists()


async def test_newer_schema_is_refused(db_path: Path) -> None:
    async with RunStore.open(db_path):
        pass
    with sqlite3.connect(db_path) as conn:
        conn.execute("INSERT INTO coldmail_schema VALUES (99, 'from the future', 'now')")
    with pytest.raises(
        StoreError, match="schema version 99, newer than .* upgrade bridgic-coldmail"
    ):
        async with RunStore.open(db_path):
            pass


async def test_another_applications_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.execute("INSERT INTO users VALUES ('ada')")
    with pytest.raises(StoreError, match="another application"):
        async with RunStore.open(path):
            pass
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
        async with RunStore.open(path):
            pass


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
        async with RunStore.open(path):
            pass
    assert not path.exists()


async def test_database_locked_past_the_busy_timeout(db_path: Path, brief: Brief) -> None:
    async with ColdMailAgent.open(db_path):
        pass
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match=r"locked by another process for more than 0\.2 s"):
            async with ColdMailAgent.open(db_path, busy_timeout=0.2):
                pass
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    async with ColdMailAgent.open(db_path) as agent:  # usable again once released
        assert await agent.list() == []


@pytest.mark.parametrize(
    "hostile",
    [
        "' OR '1'='1",
        "x'; DROP TABLE runs; --",
        "0123456789abcdef0123456789abcdef' --",
        "%",
    ],
)
async def test_injection_shaped_ids_reach_sql_only_as_parameters(
    agent: ColdMailAgent, db_path: Path, brief: Brief, hostile: str
) -> None:
    await agent.start(brief)
    async with RunStore.open(db_path) as store:  # the store itself, below the id validation
        with pytest.raises(RunNotFound):
            await store.get(hostile)
        with pytest.raises(RunNotFound):
            await store.claim(hostile, "feedback", {"1.0"})
    assert len(await agent.list()) == 1
