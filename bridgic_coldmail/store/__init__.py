"""Where paused runs wait: the :class:`RunStore` protocol and its two backends.

``open_store(settings)`` picks the backend from ``settings.db``: a file path is SQLite (the
default, embedded), a ``postgresql://`` URL is PostgreSQL (for many hosts; needs the
``postgres`` extra).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from ..errors import DatabaseNotFound
from ..settings import Settings
from .deferred import DeferredSqliteStore
from .protocol import (
    AlreadyDone,
    Claim,
    ClaimOutcome,
    Finished,
    NewRun,
    Paused,
    Refusal,
    RefusalReason,
    RunStore,
)
from .sqlite import SqliteRunStore

IfMissing = Literal["create", "defer", "refuse"]
"""What opening does when an SQLite path holds no database yet (see :func:`connect_store`)."""


async def connect_store(settings: Settings, *, missing: IfMissing = "create") -> RunStore:
    """Open the store ``settings.db`` names; the caller closes it.

    ``missing`` says what happens when an SQLite path holds no database yet: ``"create"`` it
    now (with its folder and key); ``"defer"`` — a store that answers reads as an empty one
    and creates the database with the first run it stores (what ``ColdMailAgent.open``
    does); ``"refuse"`` — raise :class:`DatabaseNotFound` (for callers that only read).
    A PostgreSQL server's schema is always created on first open.
    """
    if settings.is_postgres:
        from .postgres import PostgresRunStore

        store: RunStore = await PostgresRunStore.connect(settings)
        return store

    async def open_sqlite(create: bool) -> RunStore:
        return await SqliteRunStore.connect(
            settings.db,
            busy_timeout=settings.busy_timeout,
            lease_seconds=settings.lease_seconds,
            secret_key=settings.secret_key,
            key_file=settings.key_file,
            create=create,
        )

    if missing == "create":
        return await open_sqlite(True)
    try:
        return await open_sqlite(False)
    except DatabaseNotFound:
        if missing == "refuse":
            raise
        return DeferredSqliteStore(settings.db, settings.lease_seconds, open_sqlite)


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[RunStore]:
    """``async with open_store(settings) as store``: always closed on exit."""
    store = await connect_store(settings)
    try:
        yield store
    finally:
        await store.close()


__all__ = [
    "AlreadyDone",
    "Claim",
    "ClaimOutcome",
    "DeferredSqliteStore",
    "IfMissing",
    "Finished",
    "NewRun",
    "Paused",
    "Refusal",
    "RefusalReason",
    "RunStore",
    "SqliteRunStore",
    "connect_store",
    "open_store",
]
