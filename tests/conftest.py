"""Shared fixtures: a real loopback OpenAI server, a temporary database, and a CLI runner.

Only the LLM is faked, and only at the HTTP boundary; storage is always a real SQLite file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest

from bridgic_coldmail import Brief, ColdMailAgent
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.signing import KeySource, SnapshotSigner, key_file_for, load_signer
from bridgic_coldmail.testing import ScriptedOpenAIServer

from .rows import Rows, SqliteRows

REPO = Path(__file__).resolve().parent.parent
TEST_KEY = "sk-test-key-for-the-scripted-server"
# Generous: a hang guard for child processes, not a timing assertion.
PROCESS_TIMEOUT = 60


@pytest.fixture(scope="session")
def openai_server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as server:
        yield server


@pytest.fixture
def server(openai_server: ScriptedOpenAIServer) -> Iterator[ScriptedOpenAIServer]:
    """The session's server with no recorded requests and no scripted replies."""
    openai_server.reset()
    yield openai_server
    openai_server.reset()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "coldmail.db"


@pytest.fixture(autouse=True)
def _environment(
    monkeypatch: pytest.MonkeyPatch, openai_server: ScriptedOpenAIServer, db_path: Path
) -> None:
    """Every test (and every child process) talks to the scripted server and a temp database."""
    for name in list(os.environ):
        # COLDMAIL_TEST_* configure the test run itself (e.g. COLDMAIL_TEST_PG_URL), not the code.
        if name.startswith(("OPENAI_", "COLDMAIL_")) and not name.startswith("COLDMAIL_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OPENAI_API_BASE", openai_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    monkeypatch.setenv("COLDMAIL_DB", str(db_path))
    # The proxies of a developer's shell must not swallow loopback traffic.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def brief() -> Brief:
    return Brief(
        product="Acme Scheduler",
        offer="cuts patient no-shows by 30% with two-way SMS reminders",
        sender="Dana Lee, founder of Acme",
        audience="clinic managers",
    )


@pytest.fixture
async def agent(server: ScriptedOpenAIServer, db_path: Path) -> AsyncIterator[ColdMailAgent]:
    async with ColdMailAgent.open(db_path) as opened:
        yield opened


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    module: bool = False,
    timeout: float = PROCESS_TIMEOUT,
    cwd: Path = REPO,
) -> Completed:
    """Run ``coldmail`` (or ``python -m bridgic_coldmail``) in a child process, in ``cwd``."""
    command = [sys.executable, "-m", "bridgic_coldmail"] if module else [_coldmail()]
    return run_process([*command, *args], env=env, timeout=timeout, cwd=cwd)


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Completed]:
    """Run ``coldmail`` in this process (``cli("list", "--json")``): the same ``main`` as the
    console script, without a child process. For tests where the process boundary, a signal
    or a terminal is the point, use :func:`run_cli` instead."""
    from bridgic_coldmail.cli import main

    def run(*args: str, env: dict[str, str] | None = None) -> Completed:
        capsys.readouterr()  # drop what earlier steps printed
        with monkeypatch.context() as patched:
            for name, value in (env or {}).items():
                patched.setenv(name, value)
            try:
                code = main(list(args))
            except SystemExit as exited:  # argparse's --help, --version and usage errors
                code = exited.code if isinstance(exited.code, int) else 1
        printed = capsys.readouterr()
        return Completed(code, printed.out, printed.err)

    return run


def run_process(
    command: list[str],
    env: dict[str, str] | None = None,
    timeout: float = PROCESS_TIMEOUT,
    cwd: Path = REPO,
) -> Completed:
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )
    return Completed(result.returncode, result.stdout, result.stderr)


def start_run_with_cli() -> str:
    """Start a run with ``coldmail start`` in a child process; returns its interaction id."""
    started = run_cli(
        "start", "--product", "Acme", "--offer", "saves time", "--sender", "Dana", "--json"
    )
    assert started.returncode == 0, started.stderr
    return str(json.loads(started.stdout)["interaction_id"])


def wait_for_request(server: ScriptedOpenAIServer, kind: str) -> None:
    """Block until the scripted server has received a request of this kind."""
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while server.count(kind) == 0:
        assert time.monotonic() < deadline, f"no {kind} request arrived"
        time.sleep(0.05)


def spawn_coldmail(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = PROCESS_TIMEOUT,
    columns: int = 120,
) -> pexpect.spawn:
    """``coldmail`` on a pseudo-terminal ``columns`` wide, as a person at a keyboard would run
    it (``COLUMNS`` is not passed on: the width is the terminal's)."""
    environment = {**os.environ, **(env or {})}
    environment.pop("COLUMNS", None)
    return pexpect.spawn(
        _coldmail(),
        list(args),
        cwd=str(REPO),
        env=environment,
        encoding="utf-8",
        timeout=timeout,
        dimensions=(50, columns),
    )


def _coldmail() -> str:
    script = Path(sys.executable).parent / "coldmail"
    assert script.exists(), "install the package (pip install -e '.[dev]') to get `coldmail`"
    return str(script)


# --------------------------------------------------------------------------- store backends

BACKENDS = ("sqlite", "postgres")


@dataclass
class Backend:
    """One store backend for a test: where its database is, and raw access to its rows."""

    name: str
    db: str
    rows: Rows
    env: dict[str, str]
    """Environment a child process needs to reach the same store (key, URL)."""

    def settings(self, **overrides: object) -> Settings:
        return Settings.resolve(env={**os.environ, **self.env}, db=self.db, **overrides)

    def signer(self) -> SnapshotSigner:
        """The store's signer, to write rows as a release holding the key would."""
        settings = self.settings()
        key_file = settings.key_file
        if key_file is None and not settings.is_postgres:
            key_file = key_file_for(Path(self.db))
        return load_signer(
            KeySource(settings.secret_key, key_file), may_create=False, holds_runs=True
        )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, db_path: Path) -> Iterator[Backend]:
    """Each store backend in turn: an SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield Backend("sqlite", str(db_path), SqliteRows(db_path), {})
        return
    try:
        from .pg import postgres_backend
    except ImportError:
        postgres_backend = None
    if postgres_backend is None:
        pytest.skip("the PostgreSQL test backend is not available yet")
    with postgres_backend(request) as found:
        yield found
