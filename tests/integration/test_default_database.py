"""No silent new databases: one default location wherever coldmail runs, and nothing created
by a command that only reads.

The default is ``coldmail.db`` in the per-user data folder (``platformdirs``); these tests give
each run a fresh ``HOME`` (and no ``XDG_DATA_HOME``) so that folder is theirs. Reading commands
pointed at a place with no database say where they looked and how to choose another, with exit
8, and leave no file, folder or key behind; starting a run creates the database.
"""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from bridgic_coldmail import Brief, ColdMailAgent, DatabaseNotFound, RunNotFound, RunStatus
from bridgic_coldmail.settings import Settings, default_db_path
from bridgic_coldmail.store import SqliteRunStore
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import Completed, run_cli

START = ["start", "--product", "Acme", "--offer", "saves time", "--sender", "Dana", "--json"]
AN_ID = "0123456789abcdef0123456789abcdef"
READING_COMMANDS = {
    "list": ["list"],
    "list-json": ["list", "--json"],
    "show": ["show", AN_ID],
    "show-sequence": ["show", AN_ID, "--sequence"],
    "resume": ["resume", AN_ID, "--feedback", "CTOs"],
    "approve": ["approve", AN_ID],
    "reject": ["reject", AN_ID, "--reason", "no"],
    "purge": ["purge", "--older-than", "30d"],
    "trust-unsigned": ["trust-unsigned", "--all", "--yes"],
    "export": ["export", AN_ID, "--leads", "LEADS", "--out", "OUT"],
}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh user: an empty home folder, no COLDMAIL_DB, no XDG_DATA_HOME."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv("COLDMAIL_DB", raising=False)
    return folder


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _one_line_error(result: Completed, code: int, *fragments: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_the_default_is_in_the_user_data_folder_and_help_prints_it(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = home / ".local" / "share" / "coldmail" / "coldmail.db"
    assert default_db_path() == expected
    assert Settings.resolve().db == str(expected)
    helped = run_cli("--help")
    assert helped.returncode == 0
    assert str(expected) in " ".join(helped.stdout.split())  # argparse wraps long lines
    # XDG_DATA_HOME moves it, as the XDG base directory specification says.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_db_path() == tmp_path / "data" / "coldmail" / "coldmail.db"
    assert str(tmp_path / "data" / "coldmail" / "coldmail.db") in run_cli("--help").stdout


@pytest.mark.parametrize("command", READING_COMMANDS.values(), ids=READING_COMMANDS.keys())
def test_a_reading_command_on_a_missing_database_creates_nothing_and_says_where_it_looked(
    tmp_path: Path, command: list[str], cli: object
) -> None:
    leads = tmp_path / "leads.csv"
    leads.write_text("email\nann@example.com\n")
    missing = tmp_path / "nowhere" / "runs" / "coldmail.db"
    argv = [str(leads) if a == "LEADS" else str(tmp_path / "out.csv") if a == "OUT" else a
            for a in command]  # fmt: skip
    result = cli("--db", str(missing), *argv)  # type: ignore[operator]
    _one_line_error(result, 8, f"there is no database at {missing}", "COLDMAIL_DB", "--db")
    assert not (tmp_path / "nowhere").exists()
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.slow
def test_a_fresh_home_from_any_folder_finds_one_database(
    server: ScriptedOpenAIServer, home: Path, tmp_path: Path
) -> None:
    env = {"HOME": str(home)}
    first, second = tmp_path / "project-a", tmp_path / "project-b"
    first.mkdir()
    second.mkdir()
    default = home / ".local" / "share" / "coldmail" / "coldmail.db"

    listed = run_cli("list", env=env, cwd=first)
    _one_line_error(listed, 8, f"there is no database at {default} (the default location)",
                    "`coldmail start`", "COLDMAIL_DB")  # fmt: skip
    assert _files_under(home) == [] and _files_under(first) == []

    started = run_cli(*START, env=env, cwd=first)
    assert started.returncode == 0, started.stderr
    interaction_id = json.loads(started.stdout)["interaction_id"]
    assert default.is_file() and stat.S_IMODE(Path(f"{default}.key").stat().st_mode) == 0o600
    assert _files_under(first) == []  # nothing in the folder it ran from

    elsewhere = run_cli("list", "--json", env=env, cwd=second)
    assert [r["interaction_id"] for r in json.loads(elsewhere.stdout)] == [interaction_id]
    shown = run_cli("show", interaction_id, env=env, cwd=second)
    assert shown.returncode == 0 and f"Run {interaction_id}" in shown.stdout


async def test_the_python_api_opens_the_same_default_and_creates_it_with_the_first_run(
    server: ScriptedOpenAIServer, home: Path, brief: Brief
) -> None:
    default = home / ".local" / "share" / "coldmail" / "coldmail.db"
    async with ColdMailAgent.open() as agent:
        assert agent.db_path == str(default)
        assert await agent.list() == []
        with pytest.raises(RunNotFound, match=f"no run with interaction id {AN_ID} in {default}"):
            await agent.get(AN_ID)
        assert await agent.purge(timedelta(days=1)) == 0
        assert _files_under(home) == []  # reading created nothing
        started = await agent.start(brief)
        assert default.is_file() and Path(f"{default}.key").is_file()
        assert [r.interaction_id for r in await agent.list()] == [started.interaction_id]
        done = await agent.resume(started.interaction_id, "CTOs at mid-size hospitals")
        assert done.status is RunStatus.COMPLETED
    with pytest.raises(DatabaseNotFound):
        async with ColdMailAgent.open(home / "other.db", missing="refuse"):
            pass
    assert not (home / "other.db").exists()


@pytest.mark.slow
async def test_a_database_another_process_creates_meanwhile_is_found(
    server: ScriptedOpenAIServer, db_path: Path
) -> None:
    async with ColdMailAgent.open(db_path) as reader:
        assert await reader.list() == []
        started = run_cli(*START)  # another process creates the database
        assert started.returncode == 0, started.stderr
        interaction_id = json.loads(started.stdout)["interaction_id"]
        assert [r.interaction_id for r in await reader.list()] == [interaction_id]
        done = await reader.resume(interaction_id, "CTOs at mid-size hospitals")
        assert done.status is RunStatus.COMPLETED


def test_an_empty_file_is_not_a_database_and_stays_untouched(tmp_path: Path, cli: object) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    result = cli("--db", str(empty), "list")  # type: ignore[operator]
    _one_line_error(result, 8, f"there is no database at {empty}")
    assert _files_under(tmp_path) == ["empty.db"] and empty.stat().st_size == 0


async def test_a_file_deleted_while_it_is_opened_is_not_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening to read checks the file, then SQLite opens it with ``mode=rw``: a file deleted
    in between is reported missing, never created empty (forced here by deleting it at the
    moment SQLite is called)."""
    path = tmp_path / "runs.db"
    await (await SqliteRunStore.connect(path)).close()  # exists when checked …
    real_connect = sqlite3.connect

    def vanish_then_connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        for leftover in tmp_path.iterdir():  # … and is gone when SQLite opens it
            leftover.unlink()
        return real_connect(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite3, "connect", vanish_then_connect)
    with pytest.raises(DatabaseNotFound, match=f"there is no database at {path}"):
        await SqliteRunStore.connect(path, create=False)
    assert list(tmp_path.iterdir()) == []


async def test_the_inbox_creates_nothing_until_a_run_is_started(
    server: ScriptedOpenAIServer, db_path: Path
) -> None:
    pytest.importorskip("fastapi", reason="the inbox needs the web extra")
    from .test_web import settings_for, web_client

    async with web_client(settings_for(db_path)) as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert (await client.get("/api/runs")).json() == []
        assert (await client.get(f"/api/runs/{AN_ID}")).status_code == 404
        assert not db_path.parent.exists()  # serving an empty inbox created nothing
        created = await client.post(
            "/api/runs", json={"product": "Acme", "offer": "saves time", "sender": "Dana"}
        )
        assert created.status_code == 201, created.text
        assert db_path.is_file() and Path(f"{db_path}.key").is_file()
        assert [r["interaction_id"] for r in (await client.get("/api/runs")).json()] == [
            created.json()["interaction_id"]
        ]


@pytest.mark.slow
def test_the_resume_command_start_prints_works_from_another_folder(
    server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    """``start`` names its database in the command it prints (absolute, so it works from any
    folder) with a placeholder where the answer goes; filled in, it resumes that run."""
    db = tmp_path / "mine.db"
    started = run_cli("--db", "mine.db", *START[:-1], cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    assert f" in {db}.\n" in started.stdout  # where it is stored, as an absolute path
    printed = started.stdout.splitlines()[-1].strip()
    assert printed.startswith(f"coldmail --db {db} resume ")
    assert printed.endswith("--feedback '<who the emails are really for>'")
    command = printed.replace("<who the emails are really for>", "CTOs at mid-size hospitals")
    other = tmp_path / "elsewhere"
    other.mkdir()
    resumed = run_cli(*shlex.split(command)[1:], "--json", cwd=other, env={"COLDMAIL_DB": ""})
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["feedback"] == "CTOs at mid-size hospitals"
    assert os.listdir(other) == []
