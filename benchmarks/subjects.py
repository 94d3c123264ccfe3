"""What is measured (``Subject``): this package, its floor, or LangGraph in either durability
mode, on a fresh store (``Store``)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from bridgic_coldmail import Brief, ColdMailAgent

from .floor import PostgresFloor, RawFloor

if TYPE_CHECKING:
    from .langgraph_peer import LangGraphPeer

Kind = Literal["ours", "floor", "langgraph", "langgraph-exit"]
BackendName = Literal["sqlite", "postgres"]
KINDS: tuple[Kind, Kind] = ("ours", "floor")
"""The subjects of the sections that compare this package with its floor."""
PEERS: tuple[Kind, ...] = ("ours", "langgraph", "langgraph-exit", "floor")
"""The subjects of the side-by-side section (``run.peers``), in the report's column order."""
SUBJECT_LABELS: dict[Kind, str] = {
    "ours": "ours",
    "floor": "floor",
    "langgraph": "LangGraph default",
    "langgraph-exit": "LangGraph exit",
}
LABELS = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
SECRET_KEY = "benchmark-signing-key-" + "b" * 32
"""The PostgreSQL stores' signing key (a URL has no key file beside it)."""

BRIEF = Brief(
    product="Acme Scheduler",
    offer="cuts patient no-shows by 30% with two-way SMS reminders",
    sender="Dana Lee, founder of Acme",
    audience="clinic managers",
)
FEEDBACK = "CTOs at mid-size hospitals"


class Subject(Protocol):
    """Starts runs (paused and stored) and resumes them to completion."""

    name: str

    async def start(self) -> str: ...

    async def resume(self, interaction_id: str) -> object: ...


@dataclass(frozen=True)
class Store:
    """Where a subject keeps its runs: an SQLite file, or a PostgreSQL database's URL."""

    backend: BackendName
    location: str

    @property
    def label(self) -> str:
        return LABELS[self.backend]

    def agent_options(self) -> dict[str, Any]:
        """What ``ColdMailAgent.open`` needs besides the location."""
        return {"secret_key": SECRET_KEY} if self.backend == "postgres" else {}


@dataclass
class Places:
    """Fresh stores on demand: files in a folder, databases on a PostgreSQL server."""

    folder: Path
    postgres_url: str | None = None
    _created: list[str] = field(default_factory=list)

    def new(self, backend: BackendName, name: str) -> Store:
        if backend == "sqlite":
            return Store("sqlite", str(self.folder / f"{name}.db"))
        assert self.postgres_url is not None, "no PostgreSQL server"
        import psycopg

        from testbed.pg import with_database

        database = f"bench_{name.replace('-', '_')}_{uuid.uuid4().hex[:8]}"[:63]
        with psycopg.connect(self.postgres_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{database}"')
        self._created.append(database)
        return Store("postgres", with_database(self.postgres_url, database))

    def drop_all(self) -> None:
        if not self._created or self.postgres_url is None:
            return
        import psycopg

        with psycopg.connect(self.postgres_url, autocommit=True) as admin:
            for database in self._created:
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        self._created.clear()


class Ours:
    name = "bridgic-coldmail"

    def __init__(self, agent: ColdMailAgent) -> None:
        self.agent = agent

    async def start(self) -> str:
        return (await self.agent.start(BRIEF)).interaction_id

    async def resume(self, interaction_id: str) -> object:
        return await self.agent.resume(interaction_id, FEEDBACK)


class Floor:
    def __init__(self, floor: RawFloor | PostgresFloor) -> None:
        self.floor = floor
        self.name = floor.name

    async def start(self) -> str:
        return await self.floor.start(BRIEF)

    async def resume(self, interaction_id: str) -> object:
        return await self.floor.resume(interaction_id, FEEDBACK)


class Peer:
    def __init__(self, peer: LangGraphPeer) -> None:
        self.peer = peer
        self.name = peer.name

    async def start(self) -> str:
        return await self.peer.start(BRIEF)

    async def resume(self, interaction_id: str) -> object:
        return await self.peer.resume(interaction_id, FEEDBACK)


@contextlib.asynccontextmanager
async def opened(kind: Kind, store: Store, llm: Any) -> AsyncIterator[Subject]:
    """This package (``ours``), its floor or LangGraph on ``store``, with ``llm``; closed on
    exit. LangGraph is imported only here (the ``bench`` extra)."""
    if kind in ("langgraph", "langgraph-exit"):
        from . import langgraph_peer

        durability: langgraph_peer.Durability = "exit" if kind == "langgraph-exit" else "async"
        async with langgraph_peer.opened(store.backend, store.location, llm, durability) as peer:
            yield Peer(peer)
        return
    if kind == "ours":
        async with ColdMailAgent.open(store.location, llm=llm, **store.agent_options()) as agent:
            yield Ours(agent)
        return
    floor: RawFloor | PostgresFloor
    if store.backend == "sqlite":
        floor = await RawFloor.open(store.location, llm)
    else:
        floor = await PostgresFloor.open(store.location, llm)
    try:
        yield Floor(floor)
    finally:
        await floor.close()
