"""The reviewer's inbox: server-rendered pages and a JSON API over :class:`ColdMailAgent`.

``create_app`` composes the parts, one module each: :mod:`.security` (who may talk to the
app, and the headers every answer carries), :mod:`.pages` (the HTML inbox, a new run, a run,
its feedback and export), :mod:`.review` (the review decisions' forms), :mod:`.views` (what
the run page shows), :mod:`.link_pages` (a one-click link's page), :mod:`.api` (the JSON
API), :mod:`.lines` (first lines for every lead: the run page's section, its forms, its API
and the background writers), :mod:`.uploads` (a lead list in, an export out),
:mod:`.responses` (every error, in JSON or HTML), :mod:`.logs` (no link token in a log
line). Routes receive the agent through ``Depends(get_agent)``; the app opens it once, at
start-up.

Everything a brief or the LLM wrote is escaped by Jinja2's autoescape; the change highlighting
escapes the text itself before wrapping the changed words in ``<ins>``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ..agent import ColdMailAgent
from ..llm import ColdmailLlm
from ..retry import RetryPolicy
from ..settings import Settings
from . import api, lines, link_pages, pages, review
from .logs import install_link_redaction
from .responses import install_error_handlers
from .security import TOKEN_ENV, WebPolicy, check_bind_address, install_security

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "TOKEN_ENV", "check_bind_address", "create_app"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
STATIC = Path(__file__).parent / "static"


def create_app(
    settings: Settings | None = None,
    *,
    llm: ColdmailLlm | str | None = None,
    retry: RetryPolicy | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
) -> FastAPI:
    """The ASGI app for a server bound to ``host:port``.

    Args:
        settings: default ``Settings.resolve()`` (the environment). The web ones: the token
            (``web_token``), extra Host names (``allowed_hosts``), the origin browsers use
            behind a proxy (``public_origin``) and the body limits (``max_body_bytes``, and
            ``max_upload_bytes`` for an export's lead list).
        llm: an LLM object or backend name for the agent; default ``settings.llm``.
        retry: how each LLM step is retried; default ``RetryPolicy()``.
        host, port: the address the server listens on. Host headers and origins are
            checked against it, so pass the real one.

    Raises:
        ConfigurationError: ``host`` is not loopback and no token is set, or the token is
            too weak.
        TypeError: ``settings`` is not a ``Settings`` (an old caller passing a path).
    """
    settings = settings if settings is not None else Settings.resolve()
    if not isinstance(settings, Settings):  # create_app used to take a database path
        raise TypeError(
            f"create_app takes Settings (e.g. Settings.resolve(db=...)), not {settings!r}"
        )
    policy = WebPolicy.build(settings, host=host, port=port)
    chosen_llm = llm if llm is not None else settings.llm

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with ColdMailAgent.open(
            settings.db, llm=chosen_llm, retry=retry, settings=settings
        ) as agent:
            app.state.agent = agent
            app.state.line_writers = lines.LineWriters()
            try:
                yield
            finally:
                await app.state.line_writers.close()  # batches resume where they stopped

    app = FastAPI(
        title="bridgic-coldmail",
        summary="Cold-email sequences that wait for a reviewer's audience feedback.",
        lifespan=lifespan,
        docs_url=None,  # the Swagger page loads scripts from a CDN; /openapi.json is served
        redoc_url=None,
    )
    app.state.policy = policy
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(pages.router)
    app.include_router(review.router)
    app.include_router(api.router)
    app.include_router(lines.router)
    app.include_router(lines.api_router)
    app.include_router(link_pages.router)
    install_error_handlers(app)
    install_link_redaction()
    install_security(app, policy)
    return app
