"""Shipped migrations are frozen: their text is the text a release shipped, byte for byte.

A database upgraded by one release and one upgraded by the next must end in the same schema,
so a migration that has shipped is never edited — only new ones are appended. Moving the
migrations between modules (or reformatting them) must not change one character of them.

The fingerprints below were taken from bridgic-coldmail 0.5.0 (commit 45c78f9, files
``bridgic_coldmail/store/sqlite_migrations.py`` and ``postgres_migrations.py``, since moved
to ``sqlite_sql.py`` and ``postgres_sql.py``) with :func:`_fingerprint`; a migration added
by a later release adds its own line here when it ships.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from bridgic_coldmail.store import postgres_sql, sqlite_sql

SHIPPED = {
    "sqlite": {
        1: "5ff03eaf340c9d57c6a5cffe41562006df90138ac3ea93b936581962f26d0d10",
        2: "f48a860680774f6d2cf58d5dc77e2dc726dfb4292660b621c11d5723d7ab4cb6",
        3: "68af1ea12e1e056f6b2a6d04f231b982363c03bcf9e4886f72151ba607258bc7",
        4: "d73a0af2edd618de6957212a4be3b8fbf53fb5bed9947dccee82012761e3def5",
        5: "ab7b71803b0dac53e9414df805688f5fbb685e1b9949fed77c342b6b024c9383",
    },
    "postgres": {
        1: "decf37883734804db31e5120786fe637f0499230c4d3d2a91beaf374fa6e4dce",
    },
}
"""sha256 of each migration as 0.5.0 shipped it, by backend and version."""

MIGRATIONS = {
    "sqlite": sqlite_sql.MIGRATIONS,
    "postgres": postgres_sql.MIGRATIONS,
}


def _fingerprint(version: int, name: str, statements: tuple[str, ...]) -> str:
    """The migration's number, name and every statement, unambiguously (JSON), hashed."""
    text = json.dumps([version, name, list(statements)])
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("backend", sorted(SHIPPED))
def test_every_shipped_migration_is_unchanged(backend: str) -> None:
    found = {m.version: _fingerprint(m.version, m.name, m.statements) for m in MIGRATIONS[backend]}
    changed = [v for v, digest in SHIPPED[backend].items() if found.get(v) != digest]
    assert changed == [], f"{backend} migrations edited or removed after shipping: {changed}"


@pytest.mark.parametrize("backend", sorted(SHIPPED))
def test_migrations_are_numbered_in_order_without_gaps(backend: str) -> None:
    versions = [m.version for m in MIGRATIONS[backend]]
    assert versions == list(range(1, len(versions) + 1))


def test_a_changed_statement_changes_the_fingerprint() -> None:
    """The check above can fail: one character more in one statement is seen."""
    first = sqlite_sql.MIGRATIONS[0]
    edited = (first.statements[0] + " ", *first.statements[1:])
    assert _fingerprint(first.version, first.name, first.statements) == SHIPPED["sqlite"][1]
    assert _fingerprint(first.version, first.name, edited) != SHIPPED["sqlite"][1]
