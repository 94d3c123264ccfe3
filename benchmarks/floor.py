"""The floors: raw Bridgic plus a bare database driver doing the bare minimum.

One row per snapshot (id, bytes, version, result); no signature, no claim, no history, no
JSON columns, no validation. Same automa, same LLM, and the same durability for what must
survive a power cut — the pause and the result — as the real stores: SQLite commits with
``synchronous = FULL``; PostgreSQL with the server's ``synchronous_commit`` (on). So the ratio
between a store and its floor is what this package adds.
"""

from __future__ import annotations

import os
from typing import Any

import aiosqlite
from bridgic.core.automa import Snapshot
from bridgic.core.automa.interaction import InteractionException, InteractionFeedback

from bridgic_coldmail import Brief, ColdMailAutoma


class _Automa:
    def __init__(self, llm: Any) -> None:
        self._llm = llm

    def automa(self, automa: ColdMailAutoma | None = None) -> ColdMailAutoma:
        automa = automa or ColdMailAutoma()
        automa.attach_llm(self._llm, "instant", None)
        return automa

    async def pause(self, brief: Brief) -> InteractionException:
        try:
            await self.automa().arun(brief=brief.model_dump(mode="json"))
        except InteractionException as pause:
            return pause
        raise AssertionError("did not pause")

    async def finish(self, interaction_id: str, data: bytes, version: str, feedback: str) -> Any:
        snapshot = Snapshot(serialized_bytes=data, serialization_version=version)
        automa = self.automa(ColdMailAutoma.load_from_snapshot(snapshot))
        return await automa.arun(
            feedback_data=InteractionFeedback(interaction_id=interaction_id, data=feedback)
        )


class RawFloor(_Automa):
    """Raw Bridgic + aiosqlite."""

    name = "raw Bridgic + aiosqlite"

    def __init__(self, conn: aiosqlite.Connection, llm: Any) -> None:
        super().__init__(llm)
        self._conn = conn

    @classmethod
    async def open(cls, path: str | os.PathLike[str], llm: Any) -> RawFloor:
        conn = await aiosqlite.connect(path, isolation_level=None, timeout=10)
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = FULL")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS snapshots "
            "(id TEXT PRIMARY KEY, bytes BLOB, version TEXT, result TEXT)"
        )
        return cls(conn, llm)

    async def close(self) -> None:
        await self._conn.close()

    async def start(self, brief: Brief) -> str:
        pause = await self.pause(brief)
        interaction_id: str = pause.interactions[0].interaction_id
        await self._conn.execute(
            "INSERT INTO snapshots (id, bytes, version) VALUES (?, ?, ?)",
            (interaction_id, pause.snapshot.serialized_bytes, pause.snapshot.serialization_version),
        )
        return interaction_id

    async def resume(self, interaction_id: str, feedback: str) -> Any:
        rows = await self._conn.execute_fetchall(
            "SELECT bytes, version FROM snapshots WHERE id = ?", (interaction_id,)
        )
        data, version = next(iter(rows))
        result = await self.finish(interaction_id, data, version, feedback)
        await self._conn.execute(
            "UPDATE snapshots SET result = ? WHERE id = ?",
            (result.model_dump_json(), interaction_id),
        )
        return result


class PostgresFloor(_Automa):
    """Raw Bridgic + psycopg: a pool as an app would open it (psycopg's defaults), one
    autocommit statement per write."""

    name = "raw Bridgic + psycopg"

    def __init__(self, pool: Any, llm: Any) -> None:
        super().__init__(llm)
        self._pool = pool

    @classmethod
    async def open(cls, url: str, llm: Any, pool_size: int = 10) -> PostgresFloor:
        from psycopg_pool import AsyncConnectionPool

        pool: Any = AsyncConnectionPool(
            url, kwargs={"autocommit": True}, min_size=1, max_size=pool_size, open=False
        )
        await pool.open(wait=True)
        async with pool.connection() as conn, conn.transaction():
            # Processes opening at once: CREATE TABLE IF NOT EXISTS alone can still collide.
            await conn.execute("SELECT pg_advisory_xact_lock(42)")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS snapshots "
                "(id text PRIMARY KEY, bytes bytea, version text, result text)"
            )
        return cls(pool, llm)

    async def close(self) -> None:
        await self._pool.close()

    async def start(self, brief: Brief) -> str:
        pause = await self.pause(brief)
        interaction_id: str = pause.interactions[0].interaction_id
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO snapshots (id, bytes, version) VALUES (%s, %s, %s)",
                (
                    interaction_id,
                    pause.snapshot.serialized_bytes,
                    pause.snapshot.serialization_version,
                ),
            )
        return interaction_id

    async def resume(self, interaction_id: str, feedback: str) -> Any:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT bytes, version FROM snapshots WHERE id = %s", (interaction_id,)
            )
            data, version = await cursor.fetchone()
        result = await self.finish(interaction_id, data, version, feedback)
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE snapshots SET result = %s WHERE id = %s",
                (result.model_dump_json(), interaction_id),
            )
        return result
