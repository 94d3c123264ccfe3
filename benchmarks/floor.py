"""The floor: raw Bridgic plus aiosqlite doing the bare minimum.

One row per snapshot (id, bytes, version, result); no signature, no claim, no history, no
JSON columns, no validation. Same automa, same LLM, same SQLite durability settings as the
real store, so the ratio between the two is what this package adds.
"""

from __future__ import annotations

import os
from typing import Any

import aiosqlite
from bridgic.core.automa import Snapshot
from bridgic.core.automa.interaction import InteractionException, InteractionFeedback

from bridgic_coldmail import Brief, ColdMailAutoma


class RawFloor:
    def __init__(self, conn: aiosqlite.Connection, llm: Any) -> None:
        self._conn = conn
        self._llm = llm

    @classmethod
    async def open(cls, path: str | os.PathLike[str], llm: Any) -> RawFloor:
        conn = await aiosqlite.connect(path, isolation_level=None)
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = FULL")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS snapshots "
            "(id TEXT PRIMARY KEY, bytes BLOB, version TEXT, result TEXT)"
        )
        return cls(conn, llm)

    async def close(self) -> None:
        await self._conn.close()

    def _automa(self, automa: ColdMailAutoma | None = None) -> ColdMailAutoma:
        automa = automa or ColdMailAutoma()
        automa.attach_llm(self._llm, "instant", None)
        return automa

    async def start(self, brief: Brief) -> str:
        try:
            await self._automa().arun(brief=brief.model_dump(mode="json"))
        except InteractionException as pause:
            interaction_id: str = pause.interactions[0].interaction_id
            await self._conn.execute(
                "INSERT INTO snapshots (id, bytes, version) VALUES (?, ?, ?)",
                (
                    interaction_id,
                    pause.snapshot.serialized_bytes,
                    pause.snapshot.serialization_version,
                ),
            )
            return interaction_id
        raise AssertionError("did not pause")

    async def resume(self, interaction_id: str, feedback: str) -> Any:
        rows = await self._conn.execute_fetchall(
            "SELECT bytes, version FROM snapshots WHERE id = ?", (interaction_id,)
        )
        data, version = next(iter(rows))
        snapshot = Snapshot(serialized_bytes=data, serialization_version=version)
        automa = self._automa(ColdMailAutoma.load_from_snapshot(snapshot))
        result = await automa.arun(
            feedback_data=InteractionFeedback(interaction_id=interaction_id, data=feedback)
        )
        await self._conn.execute(
            "UPDATE snapshots SET result = ? WHERE id = ?",
            (result.model_dump_json(), interaction_id),
        )
        return result
