"""Throwaway PostgreSQL for the tests and the benchmarks: a cluster of one's own made with
``initdb`` and started with ``pg_ctl`` on a private Unix socket, and a :class:`Server` on
which databases are created and dropped.

The server programs are Debian's (``/usr/lib/postgresql/*/bin``), or ``COLDMAIL_TEST_PG_BIN``;
run as a non-root user when the caller is root, in a private folder under the system temp
folder. The tests turn ``fsync`` off for speed; the benchmarks keep the server's defaults
(``durable=True``), so commits cost what they cost in production. Only psycopg (the postgres
extra) is needed, imported when a server is used.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

PG_URL_ENV = "COLDMAIL_TEST_PG_URL"
PG_BIN_ENV = "COLDMAIL_TEST_PG_BIN"
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
        self.admin_url = admin_url
        self.cluster = cluster
        self._admin: Any = None
        self.admin("SELECT 1")

    def admin(self, statement: str) -> None:
        """Run ``statement`` as the administrator (connecting again after a server restart)."""
        import psycopg

        for attempt in (1, 2):
            if self._admin is None or self._admin.closed:
                self._admin = psycopg.connect(self.admin_url, autocommit=True)
            try:
                self._admin.execute(statement)
                return
            except psycopg.OperationalError:
                if attempt == 2 or not self._admin.closed:
                    raise  # an answer from the server, not a connection it closed

    @contextmanager
    def database(self, options: str = "") -> Iterator[str]:
        """A fresh, empty database for one test (``CREATE DATABASE … options``); its URL.
        Dropped afterwards."""
        name = f"coldmail_test_{uuid.uuid4().hex[:16]}"
        self.admin(f'CREATE DATABASE "{name}" {options}')
        try:
            yield with_database(self.admin_url, name)
        finally:
            self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        if self._admin is not None:
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
        self.start_again()

    def start_again(self) -> None:
        """Start the server (after :meth:`start` made the cluster and ``pg_ctl stop``)."""
        settings = [
            "listen_addresses=''",
            f"unix_socket_directories='{self.folder}'",
            "port=5432",
            "max_connections=300",
        ]
        if not self.durable:
            settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        self.pg_ctl("start", "-t", "60", "-o", " ".join(f"-c {s}" for s in settings))

    def pg_ctl(self, action: str, *options: str) -> None:
        """``pg_ctl ACTION`` (``start``, ``stop``, ``restart``: the server keeps the options it
        was started with), waiting for it to finish."""
        data, log = str(self.folder / "data"), str(self.folder / "server.log")
        self._run(str(self.bindir / "pg_ctl"), "-D", data, "-l", log, "-w", *options, action)

    def restart(self) -> None:
        """Restart the server (``-m fast``): every open connection is closed by the server."""
        self.pg_ctl("restart", "-m", "fast")

    @property
    def socket(self) -> Path:
        """The server's Unix socket."""
        return self.folder / ".s.PGSQL.5432"

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
