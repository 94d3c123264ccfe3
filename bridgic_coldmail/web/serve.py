"""``coldmail serve``: run the inbox under uvicorn, in one process or several.

With ``--workers N`` uvicorn starts N processes, each importing :func:`app_from_environment`;
the settings reach them through the environment (the database, the LLM choice), so every
worker opens its own connection to the same store — SQLite's file or PostgreSQL's server.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigurationError
from ..settings import ENV, Settings


def serve(
    settings: Settings, *, host: str, port: int, workers: int = 1, access_log: bool = False
) -> int:
    """Serve until interrupted; returns the exit code.

    ``access_log`` prints a line per request (uvicorn's access log, on standard output) and
    uvicorn's start-up lines; the token of every one-click link is redacted from them, as
    from every other log line (see :mod:`.logs`).
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
    return 0


def app_from_environment() -> Any:
    """The ASGI app for one server process, from the environment ``serve`` prepared."""
    from .app import create_app

    host, _, port = os.environ["COLDMAIL_BIND"].rpartition(":")
    return create_app(Settings.resolve(), host=host, port=int(port))
