"""Keep one-click link tokens out of every log line.

A link (``/l/<token>``) is a bearer credential: whoever reads it can answer the run's pause.
Servers log request paths — uvicorn's access log writes ``"GET /l/<token> HTTP/1.1" 200`` —
so every path segment after ``/l/`` is replaced by ``[redacted]`` before a line is written:

* :class:`RedactLinkTokens` is a :class:`logging.Filter` that rewrites a record's message,
  its arguments (uvicorn's access formatter builds the request line from them) and its
  traceback text;
* :func:`install_link_redaction` puts it on uvicorn's loggers, for any server that runs the
  app (``create_app`` calls it);
* :func:`uvicorn_log_config` is uvicorn's own logging configuration with the filter on its
  handlers too, which ``coldmail serve`` passes to every worker process.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

from ..notify.links import LINK_PATH

REDACTED = "[redacted]"
_LINK_TOKEN = re.compile(re.escape(LINK_PATH) + r"[^/?#\s\"'<>\\]+")
UVICORN_LOGGERS = ("uvicorn.access", "uvicorn.error", "uvicorn.asgi")
"""The loggers a uvicorn server writes requests and errors to."""


def redact_links(text: str) -> str:
    """``text`` with the token of every link path replaced by ``[redacted]``."""
    return _LINK_TOKEN.sub(LINK_PATH + REDACTED, text) if LINK_PATH in text else text


def _redacted(value: Any) -> Any:
    """A log argument without link tokens: text redacted; another object whose text holds a
    link path (a scope dict, ``raw_path`` bytes) replaced by its redacted text."""
    if isinstance(value, str):
        return redact_links(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    text = str(value)
    return redact_links(text) if _LINK_TOKEN.search(text) else value


class RedactLinkTokens(logging.Filter):
    """Rewrites each record so that no link token reaches a handler; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_links(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(value) for value in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _redacted(value) for key, value in record.args.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_links(record.exc_text)
        return True


def install_link_redaction() -> None:
    """Put one :class:`RedactLinkTokens` on each of uvicorn's loggers (once)."""
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactLinkTokens) for f in logger.filters):
            logger.addFilter(RedactLinkTokens())


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's default logging configuration, with :class:`RedactLinkTokens` on its
    handlers (so records that other loggers pass to them are redacted too)."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["link_tokens"] = {"()": f"{__name__}.RedactLinkTokens"}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "link_tokens"]
    return config
