"""Delivering one notification: email over SMTP, a Standard Webhooks POST, Slack's JSON, or
any other service through Apprise. Each attempt returns a :class:`DeliveryResult` and
never raises for a failure of the world (a server down, slow, refusing): the outbox decides
what happens next with ``schedule.RetrySchedule``.

**Email** (``aiosmtplib``, the ``notify`` extra): ``COLDMAIL_SMTP_URL`` is
``smtp://[user[:password]@]host[:port]`` or ``smtps://…`` (implicit TLS). Over ``smtp://``
STARTTLS is used whenever the server offers it; it is *required* when the URL carries a
password and the host is not this machine (else whoever strips STARTTLS from the server's
answer reads the password), or with ``?starttls=require``. Certificates are verified against
the system's authorities (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` name others), except on a
loopback host, whose connection never leaves this machine. The ``Message-ID`` is made from the
notification's id, the same on every attempt; ``Auto-Submitted: auto-generated`` keeps
vacation replies away. 4xx answers and network failures are retried; a 5xx refusal of the
sender or the recipient is final; a refused login is retried (fixing the settings lets the
waiting notifications through).

**Webhooks** (``httpx``, the ``notify`` extra) follow the Standard Webhooks specification:
headers ``webhook-id`` (the notification's id), ``webhook-timestamp`` (this attempt's) and
``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` with each secret
of ``COLDMAIL_WEBHOOK_SECRET``, space-separated so that a secret can be rotated). 2xx is
delivered; 410 Gone stops for good; anything else — a redirect (never followed), 4xx, 5xx, a
timeout, a refused connection — is retried, honouring ``Retry-After``. **Slack** gets the same
treatment with Slack's message JSON and no signature.

**Apprise** (the ``apprise`` extra) reaches other chat services best effort: it reports only
success or failure, so a failure is retried on our schedule and a ``Retry-After`` is unknown.

Each attempt is bounded by ``COLDMAIL_NOTIFY_TIMEOUT`` as a whole, however slowly a server
drips its answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
import ssl
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from .._version import __version__
from ..errors import ConfigurationError
from ..retry import retry_after_seconds
from .destinations import (
    AppriseDestination,
    Destination,
    EmailDestination,
    SlackDestination,
    WebhookDestination,
    is_loopback_host,
)
from .messages import Message, Notification, compose, links_for

if TYPE_CHECKING:
    import httpx

    from ..settings import Settings
    from ..signing import SnapshotSigner

NOTIFY_EXTRA = "pip install 'bridgic-coldmail[notify]'"
APPRISE_EXTRA = "pip install 'bridgic-coldmail[apprise]'"
MAX_REASON_CHARS = 300
"""A failure's reason is one line of at most this many characters."""
_RESPONSE_PEEK_BYTES = 256
"""How much of a failed response's body is read, to quote in the reason."""
_MIN_SECRET_BYTES = 24
_MAX_SECRET_BYTES = 64

Outcome = Literal["delivered", "retry", "permanent"]
_T = TypeVar("_T")


@dataclass(frozen=True)
class DeliveryResult:
    """How one attempt went."""

    outcome: Outcome
    reason: str = ""
    """One line for people (no secret in it); empty when delivered."""
    retry_after: float | None = None
    """The receiver's ``Retry-After`` in seconds (uncapped; the schedule caps it)."""
    status: int | None = None
    """The HTTP status or the SMTP reply code, when there was one."""

    @property
    def delivered(self) -> bool:
        """The receiver took it: nothing more to do."""
        return self.outcome == "delivered"

    @classmethod
    def ok(cls, status: int | None = None) -> DeliveryResult:
        """Delivered."""
        return cls("delivered", status=status)

    @classmethod
    def retry(
        cls, reason: str, *, after: float | None = None, status: int | None = None
    ) -> DeliveryResult:
        """Not delivered; another attempt may succeed (``after``: the receiver's wish)."""
        return cls("retry", _one_line(reason), after, status)

    @classmethod
    def permanent(cls, reason: str, *, status: int | None = None) -> DeliveryResult:
        """Not delivered, and no attempt will be (410 Gone, an unknown mailbox)."""
        return cls("permanent", _one_line(reason), None, status)


async def deliver(
    notification: Notification,
    settings: Settings,
    *,
    http_client: httpx.AsyncClient | None = None,
    signer: SnapshotSigner | None = None,
    smtp_tls: ssl.SSLContext | None = None,
    now: datetime | None = None,
) -> DeliveryResult:
    """Make one attempt to deliver ``notification``.

    Args:
        http_client: the client webhooks and Slack go through (see
            :func:`make_http_client`); one is made for this attempt when None.
        signer: the installation's signer, for the signed link; no ``open`` link without it.
        smtp_tls: the TLS context for SMTP instead of the rule in the module docstring.
        now: this attempt's time (the webhook's timestamp); the clock when None.

    Returns a result for every failure of the receiver or the network, and for settings
    that no longer allow the destination (retried: fixing them lets it through).
    """
    links = links_for(
        notification,
        origin=settings.public_origin,
        signer=signer,
        link_ttl=settings.link_ttl,
    )
    message = compose(notification, links)
    dest = notification.destination
    try:
        if isinstance(dest, EmailDestination):
            return await send_email(dest, message, notification.id, settings, tls=smtp_tls)
        if isinstance(dest, AppriseDestination):
            return await send_apprise(dest, message, settings)
        if http_client is None:
            async with make_http_client(settings) as client:
                return await _post(dest, message, notification, settings, client, now)
        return await _post(dest, message, notification, settings, http_client, now)
    except ConfigurationError as exc:
        return DeliveryResult.retry(str(exc))


def make_http_client(settings: Settings) -> httpx.AsyncClient:
    """The HTTP client for webhooks and Slack: redirects not followed, the attempt's timeout,
    proxies from the environment (``HTTPS_PROXY``, ``NO_PROXY``), as a library would."""
    module = _httpx()
    client: httpx.AsyncClient = module.AsyncClient(
        follow_redirects=False,
        timeout=module.Timeout(settings.notify_timeout),
        headers={"user-agent": f"bridgic-coldmail/{__version__}"},
    )
    return client


async def _post(
    dest: Destination,
    message: Message,
    notification: Notification,
    settings: Settings,
    client: httpx.AsyncClient,
    now: datetime | None,
) -> DeliveryResult:
    if isinstance(dest, WebhookDestination):
        return await post_webhook(dest, message, notification.id, settings, client, now=now)
    assert isinstance(dest, SlackDestination)
    return await post_slack(dest, message, settings, client)


# -- webhooks and Slack ------------------------------------------------------------------


def webhook_keys(secrets: str) -> list[bytes]:
    """The keys of ``COLDMAIL_WEBHOOK_SECRET``: one or more space-separated ``whsec_<base64>``
    secrets (the first is the current one; the others are still accepted during a rotation).

    Raises:
        ValueError: a secret is not ``whsec_`` and base64 of 24 to 64 random bytes.
    """
    keys = []
    for secret in secrets.split():
        if not secret.startswith("whsec_"):
            raise ValueError(
                "a webhook secret starts with whsec_, e.g. whsec_ followed by "
                'python -c "import base64,os; print(base64.b64encode(os.urandom(32)).decode())"'
            )
        encoded = secret.removeprefix("whsec_")
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a webhook secret's part after whsec_ must be base64") from None
        if not _MIN_SECRET_BYTES <= len(key) <= _MAX_SECRET_BYTES:
            raise ValueError(
                f"a webhook secret holds {len(key)} bytes; use {_MIN_SECRET_BYTES} to "
                f"{_MAX_SECRET_BYTES} random ones (the Standard Webhooks rule)"
            )
        keys.append(key)
    if not keys:
        raise ValueError("no webhook secret given")
    return keys


def sign_webhook(keys: list[bytes], msg_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header: ``v1,<base64 HMAC-SHA256>`` of ``id.timestamp.body``
    for each key, space-separated."""
    content = f"{msg_id}.{timestamp}.{body}".encode()
    return " ".join(
        "v1," + base64.b64encode(hmac.digest(key, content, hashlib.sha256)).decode() for key in keys
    )


async def post_webhook(
    dest: WebhookDestination,
    message: Message,
    msg_id: str,
    settings: Settings,
    client: httpx.AsyncClient,
    *,
    now: datetime | None = None,
) -> DeliveryResult:
    """POST the message's webhook body, signed (see the module docstring)."""
    if not settings.webhook_secret:
        raise ConfigurationError(
            f"the webhook {dest.display} needs COLDMAIL_WEBHOOK_SECRET (whsec_…) to sign "
            "its messages"
        )
    timestamp = int((now or datetime.now(timezone.utc)).timestamp())
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_webhook(
            webhook_keys(settings.webhook_secret), msg_id, timestamp, message.webhook_body
        ),
    }
    return await _http_post(
        client, dest.value, dest.display, message.webhook_body.encode(), headers, settings
    )


async def post_slack(
    dest: SlackDestination, message: Message, settings: Settings, client: httpx.AsyncClient
) -> DeliveryResult:
    """POST Slack's message JSON to an incoming webhook."""
    body = json.dumps(message.slack, separators=(",", ":"), ensure_ascii=False).encode()
    headers = {"content-type": "application/json"}
    return await _http_post(client, dest.url, dest.display, body, headers, settings)


async def _http_post(
    client: httpx.AsyncClient,
    url: str,
    shown: str,
    body: bytes,
    headers: Mapping[str, str],
    settings: Settings,
) -> DeliveryResult:
    module = _httpx()

    async def attempt() -> DeliveryResult:
        async with client.stream("POST", url, content=body, headers=headers) as response:
            status = response.status_code
            if 200 <= status < 300:
                return DeliveryResult.ok(status)
            said = await _peek(response)
            reason = f"{shown} answered HTTP {status}{said}"
            if status == 410:
                return DeliveryResult.permanent(
                    f"{reason}: the receiver is gone, so nothing more is sent to it",
                    status=status,
                )
            if 300 <= status < 400:
                reason += " (redirects are not followed: give the final URL)"
            return DeliveryResult.retry(
                reason, after=retry_after_seconds(response.headers), status=status
            )

    try:
        return await _within(settings.notify_timeout, attempt())
    except (module.HTTPError, module.InvalidURL, OSError) as exc:
        return DeliveryResult.retry(f"{shown}: {_describe(exc, url, shown)}")


async def _peek(response: httpx.Response) -> str:
    """A few bytes of a failed response's body, on one line, to quote."""
    data = b""
    async for chunk in response.aiter_raw():
        data += chunk
        if len(data) >= _RESPONSE_PEEK_BYTES:
            break
    text = " ".join(data[:_RESPONSE_PEEK_BYTES].decode("utf-8", "replace").split())
    return f": {_printable(text)[:100]}" if text else ""


# -- email -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpServer:
    """``COLDMAIL_SMTP_URL`` parsed. Its password never shows in ``repr``."""

    host: str
    port: int
    implicit_tls: bool
    username: str | None = None
    password: str | None = None
    require_starttls: bool = False

    def __repr__(self) -> str:
        return f"SmtpServer({self.display!r})"

    @property
    def display(self) -> str:
        scheme = "smtps" if self.implicit_tls else "smtp"
        user = (
            f"{self.username}:***@" if self.password else f"{self.username}@" * bool(self.username)
        )
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{user}{host}:{self.port}"

    @property
    def starttls(self) -> bool | None:
        """aiosmtplib's ``start_tls``: True required, None when offered, False for smtps."""
        if self.implicit_tls:
            return False
        return True if self.require_starttls else None

    @classmethod
    def parse(cls, url: str) -> SmtpServer:
        """Parse ``smtp://[user[:password]@]host[:port][?starttls=require]`` or ``smtps://…``.

        Raises:
            ValueError: what is wrong (never quoting the password).
        """
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in ("smtp", "smtps"):
            raise ValueError("expected smtp://user:password@host:port or smtps://…")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("the port is not a number from 1 to 65535") from None
        if not parts.hostname:
            raise ValueError("no host, e.g. smtp://user:password@mail.example.com:587")
        if parts.path not in ("", "/") or parts.fragment:
            raise ValueError("an SMTP URL has no path; give smtp://user:password@host:port")
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = set(options) - {"starttls"}
        if unknown or options.get("starttls", "require") != "require":
            raise ValueError("the only option is ?starttls=require")
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if password is not None and not username:
            raise ValueError("a password without a user name")
        if password is not None and not password:
            password = None
        if any(c in (username or "") + (password or "") for c in "\r\n\0"):
            raise ValueError("the user name or password contains a line break or NUL")
        host = parts.hostname
        implicit = scheme == "smtps"
        require = "starttls" in options or (password is not None and not is_loopback_host(host))
        if implicit and "starttls" in options:
            raise ValueError("smtps:// is TLS from the start; ?starttls=require is for smtp://")
        default_port = 465 if implicit else 587 if username else 25
        return cls(
            host=host,
            port=port or default_port,
            implicit_tls=implicit,
            username=username,
            password=password,
            require_starttls=require and not implicit,
        )

    def tls_context(self) -> ssl.SSLContext:
        """Verified against the system's authorities; not verified on a loopback host unless
        STARTTLS is required."""
        context = ssl.create_default_context()
        if is_loopback_host(self.host) and not self.require_starttls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def email_message(
    message: Message, msg_id: str, *, to: str, sender: str, now: datetime | None = None
) -> EmailMessage:
    """The email: the plain text with the HTML alternative, a ``Message-ID`` made from the
    notification id (the same on every attempt)."""
    mail = EmailMessage()
    mail["Subject"] = message.subject
    mail["From"] = sender
    mail["To"] = to
    mail["Date"] = format_datetime(now or datetime.now(timezone.utc))
    domain = sender.rpartition("@")[2].rstrip(">").strip() or "bridgic-coldmail.invalid"
    mail["Message-ID"] = f"<{msg_id}@{domain}>"
    mail["Auto-Submitted"] = "auto-generated"
    mail.set_content(message.text)
    mail.add_alternative(message.html, subtype="html")
    return mail


async def send_email(
    dest: EmailDestination,
    message: Message,
    msg_id: str,
    settings: Settings,
    *,
    tls: ssl.SSLContext | None = None,
) -> DeliveryResult:
    """Send the message over ``COLDMAIL_SMTP_URL`` (see the module docstring)."""
    if not settings.smtp_url or not settings.mail_from:
        raise ConfigurationError(
            f"email to {dest.display} needs COLDMAIL_SMTP_URL (smtp://user:password@host:port) "
            "and COLDMAIL_MAIL_FROM"
        )
    aiosmtplib = _aiosmtplib()
    server = SmtpServer.parse(settings.smtp_url)
    mail = email_message(message, msg_id, to=dest.value, sender=settings.mail_from)
    timeout = settings.notify_timeout
    sending = aiosmtplib.send(
        mail,
        hostname=server.host,
        port=server.port,
        username=server.username,
        password=server.password,
        use_tls=server.implicit_tls,
        start_tls=server.starttls,
        tls_context=tls or server.tls_context(),
        timeout=timeout,
    )
    try:
        await _within(timeout, sending)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        return _smtp_refusal(exc.recipients[0] if exc.recipients else None, server)
    except aiosmtplib.SMTPAuthenticationError as exc:
        return DeliveryResult.retry(
            f"{server.display} refused the login ({exc.code} {_printable(exc.message)}); "
            "check the user and password in COLDMAIL_SMTP_URL",
            status=exc.code,
        )
    except aiosmtplib.SMTPResponseException as exc:
        return _smtp_refusal(exc, server)
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
        return DeliveryResult.retry(
            f"{server.display}: {_smtp_problem(exc, server)}",
            status=getattr(exc, "code", None),
        )
    return DeliveryResult.ok(250)


def _smtp_refusal(exc: Any, server: SmtpServer) -> DeliveryResult:
    if exc is None:
        return DeliveryResult.permanent(f"{server.display} refused the recipient")
    code, text = int(exc.code), _printable(str(exc.message))
    reason = f"{server.display} answered {code} {text}"
    if 500 <= code < 600:
        return DeliveryResult.permanent(reason, status=code)
    return DeliveryResult.retry(reason, status=code)


def _smtp_problem(exc: BaseException, server: SmtpServer) -> str:
    text = str(exc)
    if server.require_starttls and "STARTTLS" in text.upper():
        return (
            "the server does not offer STARTTLS, which is required to send the password "
            "(or asked for with ?starttls=require); nothing was sent"
        )
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            f"its TLS certificate is not trusted ({_printable(text)}); give its authority in "
            "SSL_CERT_FILE"
        )
    if "AUTH" in text.upper() and "not supported" in text:
        return (
            "the server offers no login (AUTH) on this connection; check the URL's scheme "
            "(smtps:// or STARTTLS) and port"
        )
    return _describe(exc, None, server.display)


# -- Apprise -----------------------------------------------------------------------------


async def send_apprise(
    dest: AppriseDestination, message: Message, settings: Settings
) -> DeliveryResult:
    """Notify through Apprise: the subject as the title, the plain text as the body."""
    try:
        import apprise
    except ImportError:
        raise ConfigurationError(
            f"the destination {dest.display} needs the apprise extra: {APPRISE_EXTRA}"
        ) from None
    notifier = apprise.Apprise()
    if not notifier.add(dest.value):
        return DeliveryResult.permanent(f"Apprise does not know {dest.display}")
    try:
        done = await _within(
            settings.notify_timeout,
            notifier.async_notify(title=message.subject, body=message.text),
        )
    except OSError as exc:
        return DeliveryResult.retry(f"{dest.display}: {_describe(exc, dest.value, dest.display)}")
    if done:
        return DeliveryResult.ok()
    return DeliveryResult.retry(
        f"{dest.display} did not take the message (Apprise does not say why; its log may)"
    )


# -- shared ------------------------------------------------------------------------------


async def _within(seconds: float, work: Awaitable[_T]) -> _T:
    """``work``, cut off after ``seconds`` as a whole."""
    try:
        return await asyncio.wait_for(work, seconds)
    except asyncio.TimeoutError:
        raise _TimedOut(f"did not answer within {seconds:g} s") from None


class _TimedOut(OSError):
    """An attempt ran out of time: an ``OSError`` so each channel retries it like the
    network failure it is."""


def _describe(exc: BaseException, url: str | None, shown: str) -> str:
    """``Type: message`` of a network failure, with the URL (and its secrets) replaced."""
    text = str(exc) or type(exc).__name__
    if url:
        text = text.replace(url, shown)
    if isinstance(exc, _TimedOut):
        return text
    return f"{type(exc).__name__}: {_printable(text)}"


def _one_line(text: str) -> str:
    text = " ".join(_printable(text).split())
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def _printable(text: str) -> str:
    return re.sub(r"[^\S ]|[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]", " ", text)


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:
        raise ConfigurationError(
            f"webhooks and Slack need the notify extra: {NOTIFY_EXTRA}"
        ) from None
    return httpx


def _aiosmtplib() -> Any:
    try:
        import aiosmtplib
    except ImportError:
        raise ConfigurationError(f"email needs the notify extra: {NOTIFY_EXTRA}") from None
    return aiosmtplib
