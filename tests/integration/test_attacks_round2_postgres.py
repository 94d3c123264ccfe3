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

import re
import secrets
from collections.abc import Callable
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridgic_coldmail.settings import Settings, redact_url

from ..conftest import Completed

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


@pytest.mark.postgres  # the postgres extra turns such a setting into a connection attempt
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


# --- hostile passwords in every form an operator may write them ------------------------------

HOSTILE = "/#@?:&= \\'%\"\tab"
"""Characters that end a URL part, a query parameter or a keyword value, or escape one."""


def _forms(password: str) -> dict[str, tuple[str, bool]]:
    """Each spelling of ``password`` in a database setting, and whether it is well formed
    (libpq itself reads exactly ``password`` from it)."""
    escaped = re.sub(r"([\\\s'])", r"\\\1", password)
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    encoded = quote(password, safe="")
    return {
        "url, raw": (f"postgresql://coldmail:{password}@127.0.0.1:1/runs", False),
        "url, encoded": (f"postgresql://coldmail:{encoded}@127.0.0.1:1/runs", True),
        "query, encoded": (f"postgresql://127.0.0.1:1/runs?password={encoded}", True),
        "query, raw": (f"postgresql://127.0.0.1:1/runs?sslmode=disable&password={password}", False),
        "keywords, escaped": (f"host=127.0.0.1 password={escaped} dbname=runs", True),
        "keywords, quoted": (f"host=127.0.0.1 password='{quoted}' dbname=runs", True),
        "keywords, quoted, unclosed": (f"host=127.0.0.1 password='{quoted}", False),
    }  # fmt: skip


@given(
    before=st.text(alphabet=HOSTILE, max_size=6),
    after=st.text(alphabet=HOSTILE, max_size=6),
)
@settings(max_examples=300, deadline=None)
def test_no_spelling_of_a_hostile_password_survives_redaction(before: str, after: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    password = f"{before}{SECRET}{after}"
    for form, (db, well_formed) in _forms(password).items():
        if form == "query, raw" and "&" in password:
            continue  # a raw & starts the next parameter: not a password anyone can write
        if well_formed:  # the test is about passwords libpq really reads
            assert psycopg.conninfo.conninfo_to_dict(db)["password"] == password, form
        assert SECRET not in redact_url(db), (form, db)
        assert SECRET not in repr(Settings(db=db)), (form, db)
