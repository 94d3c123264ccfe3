"""Every setting in one place: an argument, else the environment, else the default.

:class:`Settings` is resolved once (``Settings.resolve(**overrides)``) and validated as a
whole, so a malformed value or two settings that cannot work together fail at start-up with
one :class:`ConfigurationError` naming the variable, never half way through a run. The
agent, the command line, the web server and the local model read their settings from here
and nowhere else; no other module reads ``os.environ`` (``web/serve.py`` only hands the
resolved settings to uvicorn's worker processes through it).

Secrets (the signing key, the OpenAI key, the web token) are kept out of ``repr``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs
from typing_extensions import TypedDict

from .compliance import footer_text_problem
from .errors import ColdmailError, ConfigurationError, InvalidInput

if TYPE_CHECKING:
    from .notify.destinations import Destination

APP_NAME = "coldmail"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_LLM_TIMEOUT = 120.0
DEFAULT_BUSY_TIMEOUT = 10.0
DEFAULT_LEASE_SECONDS = 300.0
DEFAULT_MAX_ROUNDS = 5
DEFAULT_POOL_SIZE = 10
DEFAULT_POOL_TIMEOUT = 30.0
DEFAULT_STATEMENT_TIMEOUT = 30.0
DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 8 * 1024 * 1024
"""A lead list uploaded to the web inbox for export: about 80,000 leads of a few columns."""
MAX_PERSONALIZE_WORKERS = 16
"""Processes one ``coldmail personalize`` may write a batch's lines with."""
EXPORT_PER_UPLOAD = 16
"""The web export's default size limit, in multiples of the upload limit: a lead of a few
columns becomes a row about ten times larger once both emails are filled in."""
MIN_KEY_CHARS = 32
MIN_WEB_TOKEN_CHARS = 32
MAX_SECONDS = 7 * 24 * 3600.0
"""No duration setting may exceed a week: larger values are typos, and overflow timers."""
LEASE_PER_BUSY_TIMEOUT = 3
"""A lease is renewed every third of its length, and a renewal may wait ``busy_timeout`` for
the database lock: below this ratio a healthy resumer could lose its lease while waiting."""

BACKENDS = ("openai", "local")
STRUCTURED_OUTPUT_FORMS = ("auto", "json_schema", "json_object", "tools", "prompt")
"""How an OpenAI-compatible server is asked for the JSON answer (see ``llm.openai_backend``)."""

ENV = {
    "db": "COLDMAIL_DB",
    "llm": "COLDMAIL_LLM",
    "model": "OPENAI_MODEL_NAME",
    "llm_timeout": "COLDMAIL_LLM_TIMEOUT",
    "busy_timeout": "COLDMAIL_BUSY_TIMEOUT",
    "lease_seconds": "COLDMAIL_LEASE_SECONDS",
    "max_rounds": "COLDMAIL_MAX_ROUNDS",
    "key_file": "COLDMAIL_KEY_FILE",
    "secret_key": "COLDMAIL_SECRET_KEY",
    "local_model": "COLDMAIL_LOCAL_MODEL",
    "openai_api_key": "OPENAI_API_KEY",
    "openai_api_base": "OPENAI_API_BASE",
    "structured_output": "COLDMAIL_STRUCTURED_OUTPUT",
    "pool_size": "COLDMAIL_PG_POOL_SIZE",
    "pool_timeout": "COLDMAIL_PG_POOL_TIMEOUT",
    "prepare_statements": "COLDMAIL_PG_PREPARE",
    "statement_timeout": "COLDMAIL_PG_STATEMENT_TIMEOUT",
    "web_token": "COLDMAIL_WEB_TOKEN",
    "allowed_hosts": "COLDMAIL_ALLOWED_HOSTS",
    "public_origin": "COLDMAIL_PUBLIC_ORIGIN",
    "postal_address": "COLDMAIL_POSTAL_ADDRESS",
    "opt_out": "COLDMAIL_OPT_OUT",
    "disabled_rules": "COLDMAIL_DISABLED_RULES",
    "max_body_bytes": "COLDMAIL_MAX_BODY_BYTES",
    "max_upload_bytes": "COLDMAIL_MAX_UPLOAD_BYTES",
    "max_export_bytes": "COLDMAIL_MAX_EXPORT_BYTES",
    "debug": "COLDMAIL_DEBUG",
}
"""The environment variable behind each setting."""

_SECRET = {"secret_key", "openai_api_key", "web_token"}


class AgentOptions(TypedDict, total=False):
    """Settings that ``ColdMailAgent.open`` (and the sync twin) accept by name."""

    model: str
    llm_timeout: float
    busy_timeout: float
    lease_seconds: float
    max_rounds: int
    key_file: str | os.PathLike[str]
    secret_key: str
    local_model: str | os.PathLike[str]
    openai_api_key: str
    openai_api_base: str
    structured_output: str
    pool_size: int
    pool_timeout: float
    prepare_statements: bool
    statement_timeout: float
    postal_address: str
    opt_out: str
    disabled_rules: str | tuple[str, ...]


@dataclass(frozen=True)
class Settings:
    """The resolved settings. Build with :meth:`resolve`; every field is already valid."""

    db: str = field(default_factory=lambda: str(default_db_path()))
    """An SQLite file (created, with its folder and signing key, by the first run started:
    opening or reading never creates one), a ``postgresql://`` URL, or libpq keywords
    (``host=… dbname=…``). Default: ``coldmail.db`` in the per-user data folder
    (:func:`default_db_path`; ``coldmail --help`` prints it)."""
    llm: str | None = None
    """``openai`` or ``local``. None: OpenAI when ``OPENAI_API_KEY`` or ``OPENAI_API_BASE`` is
    set, else the local model when its extra is installed (``llm.choose_backend``)."""
    model: str = DEFAULT_MODEL
    """The model's name on the OpenAI-compatible server."""
    llm_timeout: float = DEFAULT_LLM_TIMEOUT
    """Seconds each LLM step may take (each try; see ``RetryPolicy``)."""
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT
    """Seconds to wait for another process's write lock (PostgreSQL: each transaction's
    ``lock_timeout``)."""
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    """A claim's lease, renewed every third of it while the LLM works; a run whose resumer
    died can be taken again when it runs out. At least 3x the busy timeout."""
    max_rounds: int = DEFAULT_MAX_ROUNDS
    """Review rounds a run may reach by revising (1-50), fixed per run when it starts; past it
    only approve, edit, reject remain."""
    key_file: Path | None = None
    """The signing-key file; required for PostgreSQL unless ``secret_key`` is set. Default:
    ``<db>.key`` beside an SQLite file, created (mode 0600) on first use."""
    secret_key: str | None = field(default=None, repr=False)
    """The signing key itself (at least 32 random printable ASCII characters), instead of a
    key file; the same on every host."""
    local_model: Path | None = None
    """A .gguf file for the local backend; default: the Gemma 3 270M (Q4_K_M) weights of the
    ``local`` extra."""
    openai_api_key: str | None = field(default=None, repr=False)
    """The key for the OpenAI API (a server at ``openai_api_base`` may need none)."""
    openai_api_base: str | None = None
    """Any OpenAI-compatible server (vLLM, Ollama, llama.cpp's server, LM Studio); default
    OpenAI's."""
    structured_output: str = "auto"
    """How the server is asked for the JSON answer: ``auto`` (the first form the server
    takes), or one form forced: ``json_schema``, ``json_object``, ``tools`` or ``prompt``."""
    pool_size: int = DEFAULT_POOL_SIZE
    """PostgreSQL: the most connections each process keeps (1-1000)."""
    pool_timeout: float = DEFAULT_POOL_TIMEOUT
    """PostgreSQL: seconds a call waits for a free connection (and to connect)."""
    prepare_statements: bool = False
    """Server-side prepared statements on PostgreSQL; off so PgBouncer's transaction mode works."""
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT
    """PostgreSQL: seconds a statement may run besides its wait for a lock; the server cancels
    it past the busy timeout plus this, and a server that has not answered 2 s later is given
    up on (``store/postgres.py`` has the bound every call then keeps)."""
    web_token: str | None = field(default=None, repr=False)
    """The access token ``coldmail serve`` requires on every request (at least 32 printable
    ASCII characters, not a repeated few); needed to listen beyond loopback. None: loopback
    only."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names the web server answers besides loopback and its bound address
    (comma-separated)."""
    public_origin: str | None = None
    """The origin browsers see (``https://review.example.com``) when served behind a proxy."""
    postal_address: str | None = None
    """The sender's postal address appended to every exported email of a run whose brief has
    none (plain text, at most 300 characters, no ``{`` ``}``). None: the CAN-SPAM check
    warns."""
    opt_out: str | None = None
    """The opt-out sentence appended likewise to every exported email of a run whose brief has
    none. None: the CAN-SPAM check warns."""
    disabled_rules: tuple[str, ...] = ()
    """Check rule ids that do not apply, comma-separated (e.g.
    ``can-spam-address,can-spam-opt-out`` for a list with no US recipients)."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    """The largest request body the web server reads (JSON and forms): 1,024 bytes to 16 MiB."""
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    """The largest lead list the web server accepts for an export (its only upload): 1,024
    bytes to 1 GiB."""
    max_export_bytes: int | None = None
    """The largest file one web export may write (and hold while it downloads), 1,024 bytes to
    64 GiB; past it the export is refused and nothing is kept. None: :data:`EXPORT_PER_UPLOAD`
    (16) times ``max_upload_bytes``, 128 MiB by default (see :attr:`export_limit`)."""
    debug: bool = False
    """Show the traceback of an unexpected error of the command line."""
    # Personalization batches (issue 23; see the block at the end of this module).
    personalize_concurrency: int = 8
    """Personalized lines (``bridgic_coldmail.personalize``): LLM calls in flight at once while
    writing lines, halved by HTTP 429, then regained (1-256)."""
    personalize_workers: int = 1
    """Processes ``coldmail personalize`` writes one batch's lines with, once the sample is
    approved (1-16): the concurrency and the tokens-a-minute budget are their total, split
    between them."""
    personalize_sample_size: int = 5
    """Leads whose lines a person reads and approves before the whole list is written
    (1-1000)."""
    personalize_tokens_per_minute: int | None = None
    """A budget of estimated tokens a minute for a batch's calls (1,000 to 10⁹); None for
    none."""
    price_prompt_per_1k: float | None = None
    """What 1,000 prompt tokens cost, to estimate a batch's cost (any currency; 0 to 1,000;
    both prices or neither)."""
    price_answer_per_1k: float | None = None
    """What 1,000 answer tokens cost, in the same currency."""

    # Reaching the reviewer (bridgic_coldmail.notify): parsed and checked at the module's end.
    notify: tuple[Destination, ...] = ()
    """Where every run's notifications go (``COLDMAIL_NOTIFY``, comma-separated)."""
    smtp_url: str | None = field(default=None, repr=False)
    """``smtp://user:password@host:port`` or ``smtps://…``, for email destinations."""
    mail_from: str | None = None
    """The sender of notification emails: ``coldmail@example.com`` or ``Name <address>``."""
    webhook_secret: str | None = field(default=None, repr=False)
    """``whsec_…`` (space-separated during a rotation), signing webhook destinations."""
    notify_timeout: float = 15.0
    """Seconds one delivery attempt may take, as a whole."""
    link_ttl: float = 7 * 24 * 3600.0
    """Seconds a one-click link works when its pause has no deadline (default: a week)."""
    notify_events: tuple[Any, ...] = ()
    """The events a run started now announces, comma-separated: some of ``run.paused``,
    ``run.review``, ``run.completed``, ``run.rejected``, ``run.failed``,
    ``batch.sample_ready`` (a personalization sample waits for approval). None: all six."""
    respond_within: float | None = None
    """Seconds each pause of a run started now waits before its deadline (``90s``, ``36h``,
    ``3d``…); None: no deadline unless the run is given one."""
    remind_every: float | None = None
    """Seconds between reminders while a pause waits; None: no reminders."""
    on_timeout: str = "wait"
    """What a deadline does: ``wait`` (keep waiting, escalate), ``proceed`` or ``reject``."""
    escalate_to: tuple[Destination, ...] = ()
    """Who is told when a deadline passes (comma-separated DESTs)."""

    @classmethod
    def resolve(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Each setting from ``overrides`` when given (not None), else the environment, else
        its default; then the whole is validated.

        Raises:
            ConfigurationError: a value is malformed, out of range, or conflicts with another.
        """
        env = os.environ if env is None else env
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigurationError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for item in fields(cls):
            given = overrides.get(item.name)
            if given is not None and not (isinstance(given, str) and given.strip() == ""):
                values[item.name] = _parse(item.name, given, source=f"{item.name}=")
                continue
            raw = env.get(ENV[item.name], "")
            if raw.strip():
                values[item.name] = _parse(item.name, raw, source=f"{ENV[item.name]}=")
        settings = cls(**values)
        settings.check()
        return settings

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with some settings replaced (None keeps the current value), validated."""
        values = {
            name: _parse(name, value, source=f"{name}=")
            for name, value in overrides.items()
            if value is not None
        }
        changed = replace(self, **values)
        changed.check()
        return changed

    def check(self) -> None:
        """Refuse combinations that cannot work together."""
        _check_prices(self)
        check_notify_settings(self)
        if self.lease_seconds < LEASE_PER_BUSY_TIMEOUT * self.busy_timeout:
            raise ConfigurationError(
                f"the lease ({ENV['lease_seconds']}={self.lease_seconds:g} s) must be at least "
                f"{LEASE_PER_BUSY_TIMEOUT}x the busy timeout ({self.busy_timeout:g} s): a "
                "resumer renews its lease every third of it and may wait that long for the "
                "database lock; raise the lease or lower the busy timeout"
            )

    def __repr__(self) -> str:
        """Secrets are left out, and the database URL is shown without its password."""
        values = {item.name: getattr(self, item.name) for item in fields(self) if item.repr}
        values["db"] = redact_url(self.db)
        shown = ", ".join(f"{name}={value!r}" for name, value in values.items())
        return f"Settings({shown})"

    @property
    def export_limit(self) -> int:
        """The largest file one web export may write: ``max_export_bytes``, or by default
        :data:`EXPORT_PER_UPLOAD` times the upload limit."""
        if self.max_export_bytes is not None:
            return self.max_export_bytes
        return EXPORT_PER_UPLOAD * self.max_upload_bytes

    @property
    def is_postgres(self) -> bool:
        """Whether ``db`` names a PostgreSQL server rather than an SQLite file."""
        return is_postgres_url(self.db) or is_libpq_keywords(self.db)


def default_db_path() -> Path:
    """Where runs are kept when no database is named: ``coldmail.db`` in the per-user data
    folder (``$XDG_DATA_HOME/coldmail``, else ``~/.local/share/coldmail`` on Linux;
    ``~/Library/Application Support/coldmail`` on macOS; ``%LOCALAPPDATA%\\coldmail`` on
    Windows), so every command finds the same runs whatever folder it runs from."""
    return platformdirs.user_data_path(APP_NAME, appauthor=False) / "coldmail.db"


def is_postgres_url(db: str) -> bool:
    """``postgresql://…``, ``postgres://…`` or ``postgresql+psycopg://…``."""
    return db.startswith(("postgresql://", "postgres://", "postgresql+psycopg://"))


LIBPQ_KEYWORDS = frozenset(
    """host hostaddr port dbname user password passfile require_auth channel_binding
    connect_timeout client_encoding options application_name fallback_application_name
    keepalives keepalives_idle keepalives_interval keepalives_count tcp_user_timeout
    replication gssencmode sslmode sslnegotiation requiressl sslcompression sslcert sslkey
    sslpassword sslcertmode sslrootcert sslcrl sslcrldir sslsni requirepeer
    ssl_min_protocol_version ssl_max_protocol_version min_protocol_version
    max_protocol_version krbsrvname gsslib gssdelegation service target_session_attrs
    load_balance_hosts""".split()
)
"""libpq's connection parameter key words (its documentation, "Parameter Key Words")."""


def is_libpq_keywords(db: str) -> bool:
    """Whether ``db`` is a libpq keyword/value string (``host=db.internal dbname=runs``): it
    begins with one of libpq's key words and ``=``. (A file whose name begins so is still
    reachable as ``./host=…``.)"""
    found = re.match(r"\s*([A-Za-z_]+)\s*=", db)
    return found is not None and found.group(1) in LIBPQ_KEYWORDS


def check_web_token(token: str) -> str:
    """``token`` stripped, if strong enough to guard the web inbox.

    Raises:
        ConfigurationError: too short, not printable ASCII, or too few distinct characters.
    """
    return str(_parse("web_token", token, source=f"{ENV['web_token']}="))


def redact_url(url: str) -> str:
    """A database URL or libpq keyword string with its passwords replaced by ``***`` (for
    messages and logs): the one in the user information, a ``password=`` or ``sslpassword=``
    query parameter, and a ``password=`` or ``sslpassword=`` keyword, quoted or not.

    Written for the URLs operators paste, not only well-formed ones: a password with an
    unencoded ``/``, ``#``, ``?`` or ``@`` ends a standard parser's user information early
    (``urlsplit`` reads ``user:abc/def@host`` as the host ``user`` and a path), so here the
    user information runs to the *last* ``@``; a query password runs to the next ``&`` (a
    ``#`` in it is not a fragment to libpq); a keyword value follows libpq's own rules
    (``\\`` escapes the next character, quoted or not; an unclosed quote hides the rest).
    Hiding too much is harmless; hiding too little is a leak."""
    url = re.sub(r"([?&](?:ssl)?password=)[^&]*", r"\1***", url)  # first: it may hold an @
    url = _redact_user_information(url)
    return re.sub(
        r"((?:^|\s)(?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|(?:[^\s\\]|\\.)*\\?)",
        r"\1***",
        url,
    )


def _redact_user_information(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    at = rest.rfind("@")
    if not separator or at < 0 or re.search(r"\s", scheme):
        return url  # not a URL, or no user information (a keyword string's value may hold ://)
    user, colon, _password = rest[:at].partition(":")
    return f"{scheme}://{user}:***@{rest[at + 1 :]}" if colon else url


def _parse(name: str, value: Any, *, source: str) -> Any:
    shown = (
        "***" if name in _SECRET else repr(redact_url(str(value))) if name == "db" else repr(value)
    )
    parser = _PARSERS.get(name, _text)
    try:
        return parser(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigurationError(f"{source}{shown} is not valid: {exc}") from None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, not {type(value).__name__}")
    return value.strip()


def _db(value: Any) -> str:
    text = str(os.fspath(value)).strip() if isinstance(value, (str, os.PathLike)) else None
    if not text:
        raise ValueError("give a file path, a postgresql:// URL or libpq keywords (host=…)")
    if "://" in text and not is_postgres_url(text) and not is_libpq_keywords(text):
        raise ValueError("the only database URLs are postgresql://…; give a file path for SQLite")
    return text


def _backend(value: Any) -> str:
    text = _text(value).lower()
    if text not in BACKENDS:
        raise ValueError(f"use one of {', '.join(BACKENDS)}")
    return text


def _structured_output(value: Any) -> str:
    text = _text(value).lower()
    if text not in STRUCTURED_OUTPUT_FORMS:
        raise ValueError(f"use one of {', '.join(STRUCTURED_OUTPUT_FORMS)}")
    return text


def _seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("expected a number of seconds")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError("expected a positive number of seconds")
    if number > MAX_SECONDS:
        raise ValueError(f"at most {MAX_SECONDS:g} seconds (a week)")
    return number


def _count(low: int, high: int) -> Any:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or isinstance(value, float):
            raise TypeError("expected a whole number")
        number = int(str(value).strip())
        if not low <= number <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return number

    return parse


def _path(value: Any) -> Path:
    return Path(os.fspath(value)).expanduser()


def _key(value: Any) -> str:
    text = _text(value)
    advice = 'e.g. python -c "import secrets; print(secrets.token_hex(32))"'
    if not text.isascii() or not text.isprintable():
        raise ValueError(f"use printable ASCII characters only, {advice}")
    if len(text) < MIN_KEY_CHARS:
        raise ValueError(
            f"{len(text)} characters; use at least {MIN_KEY_CHARS} random ones, {advice}"
        )
    if len(set(text)) < 8:
        raise ValueError(
            f"it repeats too few characters to be a secret; use a random one, {advice}"
        )
    return text


def _web_token(value: Any) -> str:
    text = _text(value)
    if len(text) < MIN_WEB_TOKEN_CHARS or not text.isascii() or not text.isprintable():
        raise ValueError(
            f"use at least {MIN_WEB_TOKEN_CHARS} printable ASCII characters, e.g. "
            'python -c "import secrets; print(secrets.token_urlsafe(32))"'
        )
    if len(set(text)) < 8:
        raise ValueError("it repeats too few characters to be guessed slowly; use a random one")
    return text


def _hosts(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    hosts = tuple(str(h).strip().lower() for h in items if str(h).strip())
    for host in hosts:
        if not re.fullmatch(r"[a-z0-9.\-]+|\[[0-9a-f:.]+\]", host):
            raise ValueError(f"{host!r} is not a host name (no scheme, port or path)")
    return hosts


def _origin(value: Any) -> str:
    text = _text(value).rstrip("/")
    if not re.fullmatch(
        r"https?://[A-Za-z0-9.\-]+(:\d{1,5})?|https?://\[[0-9a-fA-F:.]+\](:\d+)?", text
    ):
        raise ValueError("expected scheme://host[:port], e.g. https://review.example.com")
    return text.lower()


def _footer_text(value: Any) -> str:
    text = _text(value).replace("\r\n", "\n").replace("\r", "\n")
    problem = footer_text_problem(text)
    if problem is not None:
        raise ValueError(f"it {problem}")
    return text


def _rule_ids(value: Any) -> tuple[str, ...]:
    from .export.lint import check_rule_ids  # the lint rules sit above settings: see pyproject

    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        return tuple(sorted(check_rule_ids(str(item) for item in items)))
    except InvalidInput as exc:
        raise ValueError(str(exc)) from None


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


_PARSERS: dict[str, Any] = {
    "db": _db,
    "llm": _backend,
    "model": _text,
    "llm_timeout": _seconds,
    "busy_timeout": _seconds,
    "lease_seconds": _seconds,
    "max_rounds": _count(1, 50),
    "key_file": _path,
    "secret_key": _key,
    "local_model": _path,
    "openai_api_key": _text,
    "openai_api_base": _text,
    "structured_output": _structured_output,
    "pool_size": _count(1, 1000),
    "pool_timeout": _seconds,
    "prepare_statements": _flag,
    "statement_timeout": _seconds,
    "web_token": _web_token,
    "allowed_hosts": _hosts,
    "public_origin": _origin,
    "postal_address": _footer_text,
    "opt_out": _footer_text,
    "disabled_rules": _rule_ids,
    "max_body_bytes": _count(1024, 16 * 1024 * 1024),
    "max_upload_bytes": _count(1024, 1024 * 1024 * 1024),
    "max_export_bytes": _count(1024, 64 * 1024 * 1024 * 1024),
    "debug": _flag,
}


# --------------------------------------------------------------------------- personalization
# The settings of a personalization batch (issue 23): one line per lead, written by the LLM.

ENV.update(
    personalize_concurrency="COLDMAIL_PERSONALIZE_CONCURRENCY",
    personalize_sample_size="COLDMAIL_PERSONALIZE_SAMPLE_SIZE",
    personalize_workers="COLDMAIL_PERSONALIZE_WORKERS",
    personalize_tokens_per_minute="COLDMAIL_PERSONALIZE_TPM",
    price_prompt_per_1k="COLDMAIL_PRICE_PROMPT_PER_1K",
    price_answer_per_1k="COLDMAIL_PRICE_ANSWER_PER_1K",
)
MAX_PRICE_PER_1K = 1000.0
"""No model costs this much per 1,000 tokens: a larger price is a typo (per million?)."""


def _price(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("expected a price per 1,000 tokens")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError("expected a price of 0 or more per 1,000 tokens")
    if number > MAX_PRICE_PER_1K:
        raise ValueError(
            f"at most {MAX_PRICE_PER_1K:g} per 1,000 tokens; a price per million tokens is "
            "1,000 times the price per 1,000"
        )
    return number


def _check_prices(settings: Settings) -> None:
    given = [settings.price_prompt_per_1k is not None, settings.price_answer_per_1k is not None]
    if any(given) and not all(given):
        raise ConfigurationError(
            f"set both {ENV['price_prompt_per_1k']} and {ENV['price_answer_per_1k']} (0 is a "
            "price), or neither: a cost estimate from one of them would be too low"
        )


_PARSERS.update(
    personalize_concurrency=_count(1, 256),
    personalize_sample_size=_count(1, 1000),
    personalize_workers=_count(1, MAX_PERSONALIZE_WORKERS),
    personalize_tokens_per_minute=_count(1000, 1_000_000_000),
    price_prompt_per_1k=_price,
    price_answer_per_1k=_price,
)


# -- Reaching the reviewer (bridgic_coldmail.notify) --------------------------------------

ENV.update(
    notify="COLDMAIL_NOTIFY",
    smtp_url="COLDMAIL_SMTP_URL",
    mail_from="COLDMAIL_MAIL_FROM",
    webhook_secret="COLDMAIL_WEBHOOK_SECRET",
    notify_timeout="COLDMAIL_NOTIFY_TIMEOUT",
    link_ttl="COLDMAIL_LINK_TTL",
    notify_events="COLDMAIL_NOTIFY_EVENTS",
    respond_within="COLDMAIL_RESPOND_WITHIN",
    remind_every="COLDMAIL_REMIND_EVERY",
    on_timeout="COLDMAIL_ON_TIMEOUT",
    escalate_to="COLDMAIL_ESCALATE_TO",
)
_SECRET.update({"smtp_url", "webhook_secret", "notify", "escalate_to"})  # a DEST may hold a token


def check_notify_settings(settings: Settings) -> None:
    """The default destinations can be reached: each kind has its settings and its extra.

    Raises:
        ConfigurationError: what is missing, naming the variable or the extra.
    """
    from .notify.destinations import require_channels

    if (settings.smtp_url is None) != (settings.mail_from is None):
        given, missing = (
            ("smtp_url", "mail_from") if settings.smtp_url else ("mail_from", "smtp_url")
        )
        raise ConfigurationError(f"{ENV[given]} is set but {ENV[missing]} is not; email needs both")
    require_channels((*settings.notify, *settings.escalate_to), settings)
    from .notify.policy import WaitPolicy

    try:
        WaitPolicy(
            settings.respond_within,
            settings.remind_every,
            settings.on_timeout,  # type: ignore[arg-type]
            tuple(d.value for d in settings.escalate_to),
        )
    except ColdmailError as exc:
        names = {"--respond-within": ENV["respond_within"], "--remind-every": ENV["remind_every"]}
        names.update({"--on-timeout": ENV["on_timeout"], "--escalate-to": ENV["escalate_to"]})
        said = str(exc)
        for flag, variable in names.items():
            said = said.replace(flag, variable)
        raise ConfigurationError(said) from None


def _duration(value: Any) -> float:
    from .notify.policy import parse_duration

    try:
        return parse_duration(value)
    except ColdmailError as exc:
        raise ValueError(str(exc)) from None


def _on_timeout(value: Any) -> str:
    from .notify.policy import ON_TIMEOUT

    text = str(value).strip().lower()
    if text not in ON_TIMEOUT:
        raise ValueError(f"one of {', '.join(ON_TIMEOUT)}, not {str(value)[:40]!r}")
    return text


def _destinations(value: Any) -> tuple[Destination, ...]:
    from .notify.destinations import parse_destinations

    try:
        return parse_destinations(value)
    except ColdmailError as exc:  # InvalidInput, or ConfigurationError for a missing extra
        raise ValueError(str(exc)) from None


def _smtp_url(value: Any) -> str:
    from .notify.channels import SmtpServer

    text = _text(value)
    SmtpServer.parse(text)
    return text


def _mail_from(value: Any) -> str:
    from email.headerregistry import Address

    from .notify.destinations import parse_email_address

    text = _text(value)
    named = re.fullmatch(r"([^<>]*?)\s*<([^<>]*)>", text)
    name, address = (named.group(1).strip().strip('"'), named.group(2)) if named else ("", text)
    if not name.isprintable() or len(name) > 100 or '"' in name or "\\" in name:
        raise ValueError("the name before <address> must be one printable line, no quotes")
    address = parse_email_address(address)
    return str(Address(display_name=name, addr_spec=address)) if name else address


def _events(value: Any) -> tuple[str, ...]:
    from .notify.policy import ANNOUNCED_EVENTS

    items = value.split(",") if isinstance(value, str) else list(value)
    events = tuple(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))
    unknown = [e for e in events if e not in ANNOUNCED_EVENTS]
    if unknown:
        raise ValueError(
            f"unknown event {unknown[0]!r}; name some of {', '.join(ANNOUNCED_EVENTS)}"
        )
    if not events:
        raise ValueError(f"name at least one of {', '.join(ANNOUNCED_EVENTS)}")
    return events


def _webhook_secret(value: Any) -> str:
    from .notify.channels import webhook_keys

    text = _text(value)
    webhook_keys(text)
    return " ".join(text.split())


_PARSERS.update(
    notify=_destinations,
    smtp_url=_smtp_url,
    mail_from=_mail_from,
    webhook_secret=_webhook_secret,
    notify_timeout=_seconds,
    link_ttl=_seconds,
    notify_events=_events,
    respond_within=_duration,
    remind_every=_duration,
    on_timeout=_on_timeout,
    escalate_to=_destinations,
)
