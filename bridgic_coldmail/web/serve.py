"""``coldmail serve``: run the inbox under uvicorn, in one process or several.

With ``--workers N`` uvicorn starts N processes, each importing :func:`app_from_environment`;
the settings reach them through the environment (the database, the LLM choice), so every
worker opens its own connection to the same store — SQLite's file or PostgreSQL's server.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Any

from ..errors import ConfigurationError
from ..settings import ENV, Settings


def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int = 1,
    access_log: bool = False,
    worker: bool = True,
) -> int:
    """Serve until interrupted; returns the exit code.

    ``access_log`` prints a line per request (uvicorn's access log, on standard output) and
    uvicorn's start-up lines; the token of every one-click link is redacted from them, as
    from every other log line (see :mod:`.logs`). ``worker``: deliver notifications from
    this process too (one notification worker, in a thread of its own, whatever the number
    of server processes).
    """
    try:
        import uvicorn

        from .app import check_bind_address
        from .logs import uvicorn_log_config
    except ImportError:
        raise ConfigurationError(
            "coldmail serve needs the web extra: pip install 'bridgic-coldmail[web]'"
        ) from None
    if not 1 <= workers <= 64:
        raise ConfigurationError(f"--workers must be between 1 and 64, not {workers}")
    if not 1 <= port <= 65535:
        raise ConfigurationError(f"--port must be between 1 and 65535, not {port}")
    check_bind_address(host, settings.web_token)
    # The worker processes resolve their settings from the environment: pass ours on.
    os.environ[ENV["db"]] = settings.db
    if settings.llm:
        os.environ[ENV["llm"]] = settings.llm
    os.environ["COLDMAIL_BIND"] = f"{host}:{port}"
    print(f"Serving the inbox on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    delivering = NotificationThread(settings) if worker else None
    if delivering is not None:
        delivering.start()
    try:
        uvicorn.run(
            "bridgic_coldmail.web.serve:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=uvicorn_log_config(),
            log_level="info" if access_log else "warning",
            access_log=access_log,
        )
    finally:
        if delivering is not None:
            delivering.stop()
    return 0


class NotificationThread(threading.Thread):
    """The notification worker of ``coldmail serve``: its own event loop and store
    connection, in a daemon thread; :meth:`stop` lets the deliveries in flight finish."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="coldmail-notifications", daemon=True)
        self._settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    def run(self) -> None:
        try:
            asyncio.run(self._deliver())
        except Exception as exc:  # the inbox keeps serving; say why nothing is delivered
            print(
                f"coldmail: notifications are not delivered from this process: {exc}",
                file=sys.stderr,
                flush=True,
            )
        finally:
            self._ready.set()

    async def _deliver(self) -> None:
        from ..delivery import timed_worker
        from ..store import connect_store

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        store = await connect_store(self._settings, missing="defer")
        try:
            worker, runner = timed_worker(store, self._settings)
            try:
                await worker.run(self._stop)
            finally:
                await runner.aclose()
        finally:
            await store.close()

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming, let the deliveries in flight finish, and wait for that."""
        self._ready.wait(5)
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # the loop already ended
        self.join(timeout if timeout is not None else 2 * self._settings.notify_timeout + 15)


def app_from_environment() -> Any:
    """The ASGI app for one server process, from the environment ``serve`` prepared."""
    from .app import create_app

    host, _, port = os.environ["COLDMAIL_BIND"].rpartition(":")
    return create_app(Settings.resolve(), host=host, port=int(port))
