"""Attacks on PostgreSQL's promise that a password is never shown, round two (issue 17,
item 3).

README, Scaling out: "A password may be in the URL […]; either way it is never printed,
logged or stored: messages show the URL as ``postgresql://coldmail:***@…`` (``password=***``
in the keyword form), and neither the settings nor the store puts it in a ``repr``."

Passwords an operator really has break the redaction: a generated one with ``/`` or ``#``
(base64 and most password managers' symbol sets) pasted into a URL unencoded, and a libpq
keyword value with an escaped space (libpq reads ``password=abc\\ def`` as ``abc def``).
No server is needed: the messages come from a refused connection on port 1.

Each test failed on main when it was written; see the report of the "attack" helper.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest

from bridgic_coldmail.settings import Settings, redact_url

from .conftest import Completed

SECRET = "Secret99"
"""The part of each password that must never appear."""

LEAKY = {
    "keyword, escaped space": f"host=127.0.0.1 port=1 dbname=runs password=Hunter2\\ {SECRET}",
    "keyword, escaped space, then more": (
        f"host=127.0.0.1 port=1 password=Hunter2\\ {SECRET} dbname=runs"
    ),
    "url, slash in password": f"postgresql://coldmail:Hunter2/{SECRET}@127.0.0.1:1/runs",
    "url, hash in password": f"postgresql://coldmail:Hunter2#{SECRET}@127.0.0.1:1/runs",
}


@pytest.mark.parametrize("db", list(LEAKY.values()), ids=list(LEAKY))
def test_redact_url_hides_the_whole_password(db: str) -> None:
    assert SECRET not in redact_url(db)


@pytest.mark.parametrize("db", list(LEAKY.values()), ids=list(LEAKY))
def test_the_settings_repr_hides_the_whole_password(db: str) -> None:
    assert SECRET not in repr(Settings(db=db))


@pytest.mark.parametrize(
    "db",
    [LEAKY["keyword, escaped space"], LEAKY["url, slash in password"]],
    ids=["keyword, escaped space", "url, slash in password"],
)
def test_the_command_line_never_prints_the_password_of_a_database_it_cannot_reach(
    cli: Callable[..., Completed], db: str
) -> None:
    env = {"COLDMAIL_SECRET_KEY": secrets.token_hex(32), "COLDMAIL_PG_POOL_TIMEOUT": "2"}
    refused = cli("--db", db, "list", env=env)
    assert refused.returncode == 8, refused.stderr
    assert SECRET not in refused.stdout + refused.stderr, refused.stderr
