"""PostgreSQL for the tests: one server per session, a fresh database per test, raw row access.

(The benchmarks start their durable cluster with :func:`start_cluster` from here too; this
module imports pytest only when a test needs it.)

The server is, in order of preference:

1. ``COLDMAIL_TEST_PG_URL``: a URL of a database on a server where the user may ``CREATE
   DATABASE`` (e.g. ``postgresql://me:pw@localhost/postgres``);
2. a throwaway cluster: Debian's ``initdb`` and ``pg_ctl`` (``/usr/lib/postgresql/*/bin``,
   or ``COLDMAIL_TEST_PG_BIN``), run as a non-root user when the tests run as root, in a
   private directory under the system temp folder, listening only on a Unix socket there
   (no TCP port to collide with), password authentication, ``fsync`` off for speed; it is
   stopped and deleted when the test process exits;
3. otherwise the PostgreSQL tests skip — unless ``CI`` is set, where they fail.

Each test gets a database of its own (``CREATE DATABASE``), dropped after it.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import pytest

    from .conftest import Backend

PG_URL_ENV = "COLDMAIL_TEST_PG_URL"
PG_BIN_ENV = "COLDMAIL_TEST_PG_BIN"
SECRET_KEY = "postgres-test-signing-key-" + "5" * 24
"""The signing key every PostgreSQL test database uses (a URL has no key file beside it)."""
OS_USERS = ("coldmail-pg", "postgres", "nobody")
"""Who runs the throwaway cluster when the tests run as root (PostgreSQL refuses root)."""


def with_database(url: str, name: str) -> str:
    """The same server URL, naming another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


# --------------------------------------------------------------------------- the server


class Server:
    """A PostgreSQL server on which tests may create and drop databases."""

    def __init__(self, admin_url: str, cluster: Cluster | None = None) -> None:
        import psycopg

        self.admin_url = admin_url
        self.cluster = cluster
        self._admin = psycopg.connect(admin_url, autocommit=True)

    @contextmanager
    def database(self) -> Iterator[str]:
        """A fresh, empty database for one test; its URL. Dropped afterwards."""
        name = f"coldmail_test_{uuid.uuid4().hex[:16]}"
        self._admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield with_database(self.admin_url, name)
        finally:
            self._admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        self._admin.close()
        if self.cluster is not None:
            self.cluster.stop()


@dataclass
class Cluster:
    """A throwaway cluster made with initdb, started with pg_ctl."""

    bindir: Path
    folder: Path
    user: str | None
    """The OS user it runs as (None: this process's user)."""
    password: str
    durable: bool

    @property
    def url(self) -> str:
        return f"postgresql://coldmail:{self.password}@/postgres?host={self.folder}&port=5432"

    def _run(self, *command: str) -> None:
        user = pwd.getpwnam(self.user) if self.user else None
        result = subprocess.run(
            list(command),
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=120,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
        )
        if result.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{Path(command[0]).name} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\n{tail}"
            )

    def start(self) -> None:
        pwfile = self.folder / "password"
        pwfile.write_text(self.password + "\n")
        if self.user:
            user = pwd.getpwnam(self.user)
            for path in (self.folder, pwfile):
                os.chown(path, user.pw_uid, user.pw_gid)
        self.folder.chmod(0o700)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.folder / "data"),
            "-U",
            "coldmail",
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--no-locale",
            "--encoding=UTF8",
            "--no-sync",
        )
        pwfile.unlink()
        settings = [
            "listen_addresses=''",
            f"unix_socket_directories='{self.folder}'",
            "port=5432",
            "max_connections=300",
        ]
        if not self.durable:
            settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.folder / "data"),
            "-l",
            str(self.folder / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            " ".join(f"-c {s}" for s in settings),
            "start",
        )

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.folder / "data"), "-m",
                      "immediate", "stop")  # fmt: skip
        except (RuntimeError, OSError, subprocess.SubprocessError):
            pass
        shutil.rmtree(self.folder, ignore_errors=True)


def find_bindir() -> Path | None:
    """Where PostgreSQL's server programs are: $COLDMAIL_TEST_PG_BIN (when set, only there:
    pointing it nowhere hides them), else Debian's newest, else PATH."""
    given = os.environ.get(PG_BIN_ENV)
    if given is not None:
        folder = Path(given)
        return folder if (folder / "initdb").exists() and (folder / "pg_ctl").exists() else None
    candidates: list[Path] = []
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    candidates += [Path(p) for p in debian]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    return None


def _os_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in OS_USERS:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError(f"running as root and none of the users {OS_USERS} exists")


def start_cluster(*, durable: bool = False) -> Cluster:
    """A new throwaway cluster (the caller stops it).

    ``durable=False`` (tests) turns fsync off; benchmarks use ``durable=True``, the server's
    defaults, so PostgreSQL commits cost what they cost in production.
    """
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError(
            "no PostgreSQL server programs found (apt-get install postgresql, or set "
            f"{PG_BIN_ENV} or {PG_URL_ENV})"
        )
    # Not pytest's tmp_path: as root that is private to root, and the server runs as another
    # user. A fresh private (0700) folder in the system temp folder instead.
    folder = Path(tempfile.mkdtemp(prefix="coldmail-pg-", dir="/tmp"))
    cluster = Cluster(bindir, folder, _os_user(), secrets.token_hex(16), durable)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


_server: Server | None = None
_server_problem: str | None = None


def session_server() -> Server:
    """The session's server, started on first use; skips (fails under CI) if there is none."""
    global _server, _server_problem
    if _server is None and _server_problem is None:
        try:
            given = os.environ.get(PG_URL_ENV)
            if given:
                _server = Server(given)
            else:
                cluster = start_cluster()
                try:
                    _server = Server(cluster.url, cluster)
                except BaseException:
                    cluster.stop()  # started, but unusable from here: do not leave it running
                    raise
            atexit.register(_server.close)
        except Exception as exc:  # noqa: BLE001 - any failure means "no PostgreSQL here"
            _server_problem = f"{type(exc).__name__}: {exc}"
    if _server is None:
        _unavailable(f"PostgreSQL is not available for the tests: {_server_problem}")
    assert _server is not None
    return _server


def _unavailable(message: str) -> None:
    """Skip the test — or, under CI, fail it: CI must run every PostgreSQL test."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must run the PostgreSQL tests)", pytrace=False)
    pytest.skip(message)


@contextmanager
def postgres_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """A :class:`Backend` on a fresh PostgreSQL database for the test ``request`` runs."""
    from .conftest import Backend

    server = session_server()
    with server.database() as url:
        rows = PostgresRows(url)
        try:
            yield Backend(
                "postgres",
                url,
                rows,
                {"COLDMAIL_DB": url, "COLDMAIL_SECRET_KEY": SECRET_KEY},
            )
        finally:
            rows.close()


# --------------------------------------------------------------------------- raw rows


class PostgresRows:
    """:class:`tests.rows.Rows` over a PostgreSQL database, with synchronous psycopg."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: Any = None

    def _connection(self) -> Any:
        import psycopg
        from psycopg.rows import dict_row

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, autocommit=True, row_factory=dict_row)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def _execute(self, query: str, params: Any = ()) -> Any:
        return self._connection().execute(query, params)

    def row(self, interaction_id: str) -> dict[str, Any] | None:
        found = self._execute(
            "SELECT * FROM coldmail.runs WHERE interaction_id = %s", (interaction_id,)
        ).fetchone()
        return None if found is None else dict(found)

    def set(self, interaction_id: str, **columns: Any) -> None:
        assignments = ", ".join(f"{name} = %s" for name in columns)
        self._execute(
            f"UPDATE coldmail.runs SET {assignments} WHERE interaction_id = %s",
            (*columns.values(), interaction_id),
        )

    def insert(self, row: dict[str, Any]) -> None:
        names = list(row)
        self._execute(
            f"INSERT INTO coldmail.runs ({', '.join(names)}) "
            f"VALUES ({', '.join('%s' for _ in names)})",
            [row[n] for n in names],
        )

    def delete(self, interaction_id: str) -> None:
        self._execute("DELETE FROM coldmail.runs WHERE interaction_id = %s", (interaction_id,))

    def events(self, interaction_id: str) -> list[dict[str, Any]]:
        found = self._execute(
            "SELECT * FROM coldmail.run_events WHERE interaction_id = %s ORDER BY seq",
            (interaction_id,),
        )
        return [dict(r) for r in found.fetchall()]

    def set_event(self, interaction_id: str, seq: int, **columns: Any) -> None:
        assignments = ", ".join(f"{name} = %s" for name in columns)
        self._execute(
            f"UPDATE coldmail.run_events SET {assignments} WHERE interaction_id = %s AND seq = %s",
            (*columns.values(), interaction_id, seq),
        )

    def delete_event(self, interaction_id: str, seq: int) -> None:
        self._execute(
            "DELETE FROM coldmail.run_events WHERE interaction_id = %s AND seq = %s",
            (interaction_id, seq),
        )

    def meta(self, key: str) -> str | None:
        found = self._execute(
            "SELECT value FROM coldmail.coldmail_meta WHERE key = %s", (key,)
        ).fetchone()
        return None if found is None else str(found["value"])

    def schema_versions(self) -> list[int]:
        found = self._execute("SELECT version FROM coldmail.coldmail_schema ORDER BY 1")
        return [int(r["version"]) for r in found.fetchall()]

    def count(self) -> int:
        return int(self._execute("SELECT COUNT(*) AS n FROM coldmail.runs").fetchone()["n"])

    def ids(self) -> list[str]:
        found = self._execute("SELECT interaction_id FROM coldmail.runs ORDER BY created_at")
        return [str(r["interaction_id"]) for r in found.fetchall()]

    def record_schema_version(self, version: int) -> None:
        self._execute(
            "INSERT INTO coldmail.coldmail_schema (version, name) VALUES (%s, %s)",
            (version, "from the future"),
        )

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an EXCLUSIVE lock on the runs table (reads go on, every write waits)."""
        import psycopg

        with psycopg.connect(self.url) as conn:
            conn.execute("LOCK TABLE coldmail.runs IN EXCLUSIVE MODE")
            try:
                yield
            finally:
                conn.rollback()


# --------------------------------------------------------------------------- PgBouncer


@contextmanager
def pgbouncer(server: Server, *, server_connections: int = 2) -> Iterator[Any]:
    """Debian's PgBouncer in **transaction pooling** in front of the throwaway cluster.

    Yields a function from a database URL on the cluster to the same database through
    PgBouncer. Few server connections, so that client connections really share them (a
    session setting or a prepared statement would leak to, or be missing on, another client).
    Skips (fails under CI) without the ``pgbouncer`` program or with an external server.
    """
    program = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    problem = None
    if not Path(program).exists():
        problem = "PgBouncer is not installed (apt-get install pgbouncer)"
    elif server.cluster is None:
        problem = f"PgBouncer is tested only against the throwaway cluster, not {PG_URL_ENV}"
    if problem:
        _unavailable(problem)
    cluster = server.cluster
    assert cluster is not None
    folder = Path(tempfile.mkdtemp(prefix="coldmail-pgbouncer-", dir="/tmp"))
    port = 6432
    (folder / "users.txt").write_text(f'"coldmail" "{cluster.password}"\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={cluster.folder} port=5432\n"
        "[pgbouncer]\n"
        "listen_addr =\n"
        f"listen_port = {port}\n"
        f"unix_socket_dir = {folder}\n"
        "auth_type = scram-sha-256\n"
        f"auth_file = {folder / 'users.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {server_connections}\n"
        "max_client_conn = 500\n"
        "ignore_startup_parameters = extra_float_digits\n"
        f"logfile = {folder / 'pgbouncer.log'}\n"
    )
    user = pwd.getpwnam(cluster.user) if cluster.user else None
    if user:
        for path in (folder, *folder.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
    folder.chmod(0o700)
    proc = subprocess.Popen(
        [program, str(folder / "pgbouncer.ini")],
        cwd=folder,
        user=user.pw_uid if user else None,
        group=user.pw_gid if user else None,
        extra_groups=[] if user else None,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        socket_file = folder / f".s.PGSQL.{port}"
        for _ in range(100):
            if socket_file.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        if not socket_file.exists():
            error = proc.stderr.read().decode() if proc.stderr and proc.poll() else ""
            raise RuntimeError(f"PgBouncer did not start: {error}")

        def through(url: str) -> str:
            parts = urlsplit(url)
            return urlunsplit(parts._replace(query=f"host={folder}&port={port}"))

        yield through
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
