"""Bringing a database's schema up to date: one migration runner for both backends.

Each backend keeps its numbered migrations and the SQL of each step as named constants
(``sqlite_sql.py``, ``postgres_sql.py``) and records the migrations applied in its
``coldmail_schema`` table. Opening a store runs :func:`migrate`, whose steps are the same
everywhere and written only here (as DBOS's system database does, a base with the steps and
a few hooks per dialect): refuse a database of another application or of a newer release,
load the signing key and check it is the one that signed the stored runs, apply every
migration not recorded yet, in order, and record each; then what the backend does after an
upgrade, the refusal of objects no migration created, and the key's fingerprint remembered.

The backend opens the one transaction the runner works in and holds its migration lock
(SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's advisory lock), so that processes or hosts
opening one database at the same moment apply each migration once. Shipped migrations are
never edited, only appended to (``tests/unit/test_store_migrations.py`` compares them with what
each release shipped).
"""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ..errors import ConfigurationError, DatabaseNotFound, StoreError
from ..signing import KeySource, SnapshotSigner, load_signer

T = TypeVar("T")

VERSION_TABLE = "coldmail_schema"
"""The table that records the migrations applied (every backend has one of this name)."""


@dataclass(frozen=True)
class Migration:
    """One numbered step of a backend's schema: its statements, run in order."""

    version: int
    name: str
    statements: tuple[str, ...]


class Dialect(Protocol):
    """What :func:`migrate` asks of a backend: how to do each step, in its SQL.

    Every method runs inside the transaction that holds the backend's migration lock.
    """

    location: str
    """The file or server, for messages."""
    migrations: tuple[Migration, ...]
    key_hint: str
    """What to do when the signing key is not the one that signed the stored runs."""

    async def tables(self) -> set[str]:
        """The names of the tables the database (or its schema) holds."""

    def foreign(self) -> StoreError:
        """The refusal of a database that holds tables but no :data:`VERSION_TABLE`."""

    async def create_version_table(self) -> None:
        """Create :data:`VERSION_TABLE` (and what holds it) in a database that holds none."""

    async def applied(self) -> set[int]:
        """The versions :data:`VERSION_TABLE` records as applied."""

    async def fingerprint(self) -> str | None:
        """The fingerprint of the key that signed the stored runs, if one was recorded."""

    async def holds_runs(self) -> bool:
        """Whether any run is stored."""

    async def apply(self, migration: Migration) -> None:
        """Run the migration's statements and record it as applied."""

    async def upgraded(self, before: int, signer: SnapshotSigner) -> None:
        """After the migrations were applied to a database holding runs, from version
        ``before``: what needs the key (SQLite marks the runs of earlier releases)."""

    async def refuse_planted(self) -> None:
        """Raise :class:`StoreError` if the schema holds an object no migration created."""

    async def remember_fingerprint(self, fingerprint: str) -> None:
        """Record the fingerprint of the key that signs this database's runs."""


async def migrate(dialect: Dialect, keys: KeySource, *, create: bool) -> SnapshotSigner:
    """Check the database and the key, apply the missing migrations; return the signer.

    ``create``: make the schema in a database that holds none; otherwise such a database is
    :class:`DatabaseNotFound` and nothing is written to it.

    Raises:
        DatabaseNotFound: ``create`` is False and the database holds no tables.
        StoreError: the database belongs to another application, was made by a newer
            release, or holds objects no migration created.
        ConfigurationError: no usable key, or not the key that signed the stored runs.
    """
    latest = dialect.migrations[-1].version
    tables = await dialect.tables()
    if not tables and not create:
        raise DatabaseNotFound(dialect.location)
    if tables and VERSION_TABLE not in tables:
        raise dialect.foreign()
    if not tables:
        await dialect.create_version_table()
    applied = await dialect.applied()
    current = max(applied, default=0)
    if current > latest:
        raise StoreError(
            f"{dialect.location} has schema version {current}, newer than this bridgic-coldmail "
            f"understands ({latest}); upgrade bridgic-coldmail"
        )
    fingerprint = await dialect.fingerprint() if "coldmail_meta" in tables else None
    holds_runs = "runs" in tables and await dialect.holds_runs()
    signer = load_signer(keys, may_create=fingerprint is None, holds_runs=holds_runs)
    if fingerprint is not None and fingerprint != signer.fingerprint:
        raise ConfigurationError(
            f"the signing key from {signer.source} is not the key that signed the runs in "
            f"{dialect.location}; {dialect.key_hint}"
        )
    for migration in dialect.migrations:
        # Any migration not recorded yet, not only those above the highest: numbers are
        # given to features before they merge, so one may land after a higher one.
        if migration.version not in applied:
            await dialect.apply(migration)
    if holds_runs:
        await dialect.upgraded(current, signer)
    await dialect.refuse_planted()
    if fingerprint is None:
        await dialect.remember_fingerprint(signer.fingerprint)
    return signer


def run_blocking(steps: Coroutine[Any, Any, T]) -> T:
    """Run, here and to its end, a coroutine whose every await is a blocking call.

    SQLite's steps are plain calls on the connection's own thread, inside one ``BEGIN
    IMMEDIATE`` transaction: the runner's coroutine never suspends there, so it is driven in
    one step instead of hopping between the event loop and that thread at every statement.
    """
    try:
        steps.send(None)
    except StopIteration as finished:
        return finished.value  # type: ignore[no-any-return]
    steps.close()
    raise RuntimeError("a blocking migration step suspended")
