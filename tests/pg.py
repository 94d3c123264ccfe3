"""PostgreSQL for the tests: one server per session, a fresh database per test, raw row access.

(The throwaway cluster itself is :mod:`testbed.pg`, which the benchmarks use too; this
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
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from testbed.pg import PG_URL_ENV, Server, find_bindir, start_cluster

if TYPE_CHECKING:
    import pytest

    from .conftest import Backend

SECRET_KEY = "postgres-test-signing-key-" + "5" * 24
"""The signing key every PostgreSQL test database uses (a URL has no key file beside it)."""


# --------------------------------------------------------------------------- the server


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


@contextmanager
def private_server() -> Iterator[Server]:
    """A throwaway cluster of its own, for tests that restart or stop the server (the
    session's serves every other test); skips (fails under CI) without the server programs."""
    if find_bindir() is None:
        _unavailable("no PostgreSQL server programs for a cluster the test may restart")
    cluster = start_cluster()
    try:
        server = Server(cluster.url, cluster)
    except BaseException:
        cluster.stop()
        raise
    try:
        yield server
    finally:
        server.close()


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

    def notifications(self, interaction_id: str | None = None) -> list[dict[str, Any]]:
        where, params = (
            ("WHERE interaction_id = %s", (interaction_id,)) if interaction_id else ("", ())
        )
        found = self._execute(
            f"SELECT * FROM coldmail.notifications {where} ORDER BY created_at, id", params
        )
        return [dict(r) for r in found.fetchall()]

    def set_notification(self, notification_id: str, **columns: Any) -> None:
        assignments = ", ".join(f"{name} = %s" for name in columns)
        self._execute(
            f"UPDATE coldmail.notifications SET {assignments} WHERE id = %s",
            (*columns.values(), notification_id),
        )

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        found = self._execute("SELECT * FROM coldmail.batches WHERE batch_id = %s", (batch_id,))
        row = found.fetchone()
        return None if row is None else dict(row)

    def set_batch(self, batch_id: str, **columns: Any) -> None:
        assignments = ", ".join(f"{name} = %s" for name in columns)
        self._execute(
            f"UPDATE coldmail.batches SET {assignments} WHERE batch_id = %s",
            (*columns.values(), batch_id),
        )

    def batch_leads(self, batch_id: str) -> list[dict[str, Any]]:
        found = self._execute(
            "SELECT * FROM coldmail.batch_leads WHERE batch_id = %s ORDER BY position",
            (batch_id,),
        )
        return [dict(r) for r in found.fetchall()]

    def set_batch_lead(self, batch_id: str, position: int, **columns: Any) -> None:
        assignments = ", ".join(f"{name} = %s" for name in columns)
        self._execute(
            f"UPDATE coldmail.batch_leads SET {assignments} WHERE batch_id = %s AND position = %s",
            (*columns.values(), batch_id, position),
        )

    def delete_event(self, interaction_id: str, seq: int) -> None:
        self._execute(
            "DELETE FROM coldmail.run_events WHERE interaction_id = %s AND seq = %s",
            (interaction_id, seq),
        )

    def pauses(self, interaction_id: str) -> list[dict[str, Any]]:
        found = self._execute(
            "SELECT * FROM coldmail.pauses WHERE interaction_id = %s ORDER BY round",
            (interaction_id,),
        )
        return [dict(r) for r in found.fetchall()]

    def set_pause(self, interaction_id: str, round: int, **columns: Any) -> None:
        assignments = ", ".join(f"{name} = %s" for name in columns)
        self._execute(
            f"UPDATE coldmail.pauses SET {assignments} WHERE interaction_id = %s AND round = %s",
            (*columns.values(), interaction_id, round),
        )

    def delete_pauses(self, interaction_id: str) -> None:
        self._execute("DELETE FROM coldmail.pauses WHERE interaction_id = %s", (interaction_id,))

    def execute(self, statement: str, *params: Any) -> None:
        tables = ("runs", "pauses", "coldmail_schema", "run_events")
        for table in tables:
            statement = statement.replace(f" {table} ", f" coldmail.{table} ")
        self._execute(statement.replace("?", "%s"), params)

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


# --------------------------------------------------------------------------- a faulty network


class FaultyProxy:
    """A loopback TCP proxy in front of a PostgreSQL server, on a thread of its own (so that
    child processes can use it too), that misbehaves on request as a network or a proxy does:

    * :meth:`stall`: stop forwarding in both directions, new connections included, while
      every connection stays open (a proxy or a firewall that stopped answering);
      :meth:`flow` forwards again;
    * :meth:`trap`: act once on the next client message that contains ``marker``:
      ``"cut"`` closes that connection without forwarding the message (so the statement never
      ran), ``"lose_reply"`` forwards it and closes the connection once the server's answer
      arrives, without passing it on (a commit whose acknowledgement was lost),
      ``"close_after_reply"`` passes the answer on and then closes the connection (the
      server went away between two round trips), ``"stall"`` holds the message and stalls
      everything from then on.
    """

    ACTIONS = ("cut", "lose_reply", "close_after_reply", "stall")

    def __init__(self, upstream: Path | tuple[str, int]) -> None:
        import asyncio
        import threading

        self._upstream = upstream
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._trap: tuple[bytes, str] | None = None
        self._sprung = threading.Event()
        self._links: set[_Link] = set()
        self._tasks: set[Any] = set()
        self.port = 0

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    def url(self, database_url: str) -> str:
        """The same database, user and password, reached over TCP through this proxy."""
        parts = urlsplit(database_url)
        credentials = parts.netloc.rsplit("@", 1)[0]
        return urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{self.port}", query=""))

    def stall(self) -> None:
        self._call(self._set_flowing(False))

    def flow(self) -> None:
        self._call(self._set_flowing(True))

    def trap(self, marker: bytes, action: str) -> None:
        assert action in self.ACTIONS, action
        self._sprung.clear()
        self._call(self._set_trap((marker, action)))

    @property
    def sprung(self) -> bool:
        """Whether the trap set last has acted."""
        return self._sprung.is_set()

    # ---- on the proxy's own thread

    def _call(self, coroutine: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    async def _start(self) -> None:
        import asyncio

        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        import asyncio

        self._server.close()
        for link in list(self._links):
            link.abort()
        self._flowing.set()
        if self._tasks:  # each ends once its sockets are closed
            await asyncio.wait(self._tasks, timeout=10)
        await self._server.wait_closed()

    async def _set_flowing(self, flowing: bool) -> None:
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _set_trap(self, trap: tuple[bytes, str]) -> None:
        self._trap = trap

    async def _serve(self, client_reader: Any, client_writer: Any) -> None:
        import asyncio

        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            await self._flowing.wait()
            if isinstance(self._upstream, Path):
                opened = await asyncio.open_unix_connection(self._upstream)
            else:
                opened = await asyncio.open_connection(*self._upstream)
        except OSError:
            client_writer.transport.abort()
            return
        server_reader, server_writer = opened
        link = _Link(client_writer, server_writer)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pump(client_reader, server_writer, link, to_server=True),
                self._pump(server_reader, client_writer, link, to_server=False),
            )
        finally:
            self._links.discard(link)

    async def _pump(self, reader: Any, writer: Any, link: _Link, *, to_server: bool) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                if to_server and self._trap is not None and self._trap[0] in data:
                    action = self._trap[1]
                    self._trap = None
                    self._sprung.set()
                    if action == "cut":
                        link.abort()
                        return
                    if action == "stall":
                        self._flowing.clear()
                        await self._flowing.wait()
                    if action in ("lose_reply", "close_after_reply"):
                        link.after_reply = action
                elif not to_server and link.after_reply == "lose_reply":
                    link.abort()
                    return
                elif (
                    not to_server
                    and link.after_reply == "close_after_reply"
                    and _ends_an_answer(data)
                ):
                    # The server's side goes first, before the client holds the whole
                    # answer: a client that replied at once (its COMMIT) could otherwise
                    # reach the server through this proxy before the link was closed.
                    link.server.transport.abort()
                    # The answer's last bytes and the end of the stream arrive in one TCP
                    # segment (corked, the FIN rides on the held data), so the client can
                    # never read the answer and send again before it can see the close.
                    _cork(writer)
                    writer.write(data)
                    await writer.drain()
                    writer.write_eof()
                    link.close()
                    return
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            link.close()


_READY_FOR_QUERY_TAG = b"Z\x00\x00\x00\x05"


def _cork(writer: Any) -> None:
    """Hold what is written next in the kernel until the stream ends (Linux ``TCP_CORK``)."""
    import socket

    sock = writer.get_extra_info("socket")
    if sock is not None and hasattr(socket, "TCP_CORK"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)


def _ends_an_answer(data: bytes) -> bool:
    """Whether ``data`` ends a server's answer: ReadyForQuery ('Z', length 5, a status)."""
    return len(data) >= 6 and data[-6:-1] == _READY_FOR_QUERY_TAG


class _Link:
    """Both sides of one proxied connection."""

    def __init__(self, client: Any, server: Any) -> None:
        self.client = client
        self.server = server
        self.after_reply: str | None = None
        """What to do once the server answers the trapped message."""

    def abort(self) -> None:
        self.client.transport.abort()
        self.server.transport.abort()

    def close(self) -> None:
        self.client.close()
        self.server.close()


def upstream_of(server: Server) -> Path | tuple[str, int]:
    """Where the server listens: its Unix socket, or its TCP host and port."""
    if server.cluster is not None:
        return server.cluster.socket
    import psycopg

    given = psycopg.conninfo.conninfo_to_dict(server.admin_url)
    host, port = str(given.get("host") or "/var/run/postgresql"), int(given.get("port") or 5432)
    return Path(host) / f".s.PGSQL.{port}" if host.startswith("/") else (host, port)
