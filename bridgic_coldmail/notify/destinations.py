"""Where a notification goes: a DEST string parsed into a typed destination.

A DEST is one of:

* an email address, or ``mailto:address`` → :class:`EmailDestination` (sent over SMTP);
* ``https://hooks.slack.com/services/…`` → :class:`SlackDestination` (Slack's incoming
  webhooks: we post Slack's JSON ourselves); ``slack+https://host/path`` (or ``slack+http://``)
  sends the Slack format to any host, e.g. a proxy or a test receiver;
* any other ``http(s)://`` URL → :class:`WebhookDestination` (a Standard Webhooks POST);
* any other ``scheme://`` URL → :class:`AppriseDestination` (Teams, Discord, … through the
  optional ``apprise`` extra; delivered best effort, see ``channels``).

URLs of chat services and webhooks often carry a token (Slack's whole path is one), so a
destination never shows its URL: ``str()`` and ``repr()`` give its :attr:`display` form,
``https://host/… (3f9c2a)`` with a short fingerprint that tells two URLs of one host apart.
Only :attr:`value` (what is stored, and used to deliver) holds the URL itself.
"""

from __future__ import annotations

import hashlib
import importlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal
from urllib.parse import urlsplit

from ..errors import ConfigurationError, InvalidInput

if TYPE_CHECKING:
    from ..settings import Settings

MAX_DEST_CHARS = 2048
"""The longest DEST accepted (a URL longer than this is a mistake, or an attack)."""
MAX_DESTINATIONS = 20
"""The most destinations one run, or ``COLDMAIL_NOTIFY``, may list."""
MAX_ADDRESS_CHARS = 254
"""RFC 5321's limit on a forward path, which every mail server enforces."""

DestinationKind = Literal["email", "webhook", "slack", "apprise"]

SLACK_HOSTS = ("hooks.slack.com",)
"""Hosts whose ``https://…/services/…`` URLs are Slack incoming webhooks."""

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_PART = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
_HOSTPORT = re.compile(r"(?:[a-z0-9.-]{1,253}|\[[0-9a-f:.]{2,45}\])(?::\d{1,5})?")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f\u2028\u2029]")
"""Control characters, white space, and the Unicode line separators: none belongs in a DEST."""


@dataclass(frozen=True)
class _Destination:
    kind: ClassVar[DestinationKind]
    value: str = field(repr=False)
    """The DEST in its canonical form: what is stored, and what delivery uses."""

    @property
    def display(self) -> str:
        """The destination for messages and logs, with no token or password in it."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.display

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.display!r})"


@dataclass(frozen=True, repr=False)
class EmailDestination(_Destination):
    """An email address (``value`` is the bare address, its domain in lower case)."""

    kind: ClassVar[DestinationKind] = "email"

    @property
    def display(self) -> str:
        return self.value


@dataclass(frozen=True, repr=False)
class WebhookDestination(_Destination):
    """A URL that receives a Standard Webhooks POST."""

    kind: ClassVar[DestinationKind] = "webhook"

    @property
    def display(self) -> str:
        return _url_display(self.value)


@dataclass(frozen=True, repr=False)
class SlackDestination(_Destination):
    """A Slack incoming webhook (or any URL that takes Slack's message JSON)."""

    kind: ClassVar[DestinationKind] = "slack"

    @property
    def url(self) -> str:
        """The URL to POST to (without a ``slack+`` prefix)."""
        return self.value.removeprefix("slack+")

    @property
    def display(self) -> str:
        return "slack:" + _url_display(self.url)


@dataclass(frozen=True, repr=False)
class AppriseDestination(_Destination):
    """Any other chat service's URL, delivered through Apprise."""

    kind: ClassVar[DestinationKind] = "apprise"

    @property
    def display(self) -> str:
        scheme = self.value.split("://", 1)[0]
        return f"{scheme}://… ({_fingerprint(self.value)})"


Destination = EmailDestination | WebhookDestination | SlackDestination | AppriseDestination


def parse_destination(text: str) -> Destination:
    """The destination a DEST string names.

    Raises:
        InvalidInput: not an email address nor a URL this package can deliver to; the
            message names the destination without its secrets.
        ConfigurationError: a chat service's URL, and the ``apprise`` extra is not installed.
    """
    if not isinstance(text, str):
        raise InvalidInput(f"a destination must be text, not {type(text).__name__}")
    dest = text.strip()
    if not dest:
        raise InvalidInput(
            "a destination is empty; give an email address, an https:// webhook URL or a "
            "chat service's URL"
        )
    if len(dest) > MAX_DEST_CHARS:
        raise InvalidInput(
            f"a destination is {len(dest)} characters long; the limit is {MAX_DEST_CHARS}"
        )
    if "://" in dest:
        return _parse_url(dest)
    if _UNSAFE.search(dest):
        raise InvalidInput(
            f"the destination {_shown(dest)} contains spaces or control characters; give one "
            "email address or URL per destination"
        )
    if dest[:7].lower() == "mailto:":
        dest = dest[7:]
    if "@" in dest:
        return EmailDestination(parse_email_address(dest))
    raise InvalidInput(
        f"the destination {_shown(dest)} is not an email address, an http(s):// webhook URL "
        "or a chat service's URL"
    )


def parse_destinations(value: str | Iterable[str]) -> tuple[Destination, ...]:
    """Several destinations: a comma-separated string (``COLDMAIL_NOTIFY``) or a list, each
    parsed with :func:`parse_destination`, duplicates dropped (first one kept).

    A comma inside a URL must be percent-encoded (``%2C``).
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    if isinstance(value, str):
        items = [item for item in items if item.strip()]
    found: dict[str, Destination] = {}
    for item in items:
        dest = parse_destination(item)
        found.setdefault(dest.value, dest)
    if len(found) > MAX_DESTINATIONS:
        raise InvalidInput(
            f"{len(found)} destinations; at most {MAX_DESTINATIONS} can be notified (use a "
            "mailing list or a chat channel for more people)"
        )
    return tuple(found.values())


def require_channels(destinations: Iterable[Destination], settings: Settings) -> None:
    """Refuse destinations that this installation cannot reach: email without
    ``COLDMAIL_SMTP_URL`` and ``COLDMAIL_MAIL_FROM``, a webhook without
    ``COLDMAIL_WEBHOOK_SECRET``, any of them without its extra installed.

    Raises:
        ConfigurationError: what is missing, naming the first destination that needs it.
    """
    first: dict[str, Destination] = {}
    for dest in destinations:
        first.setdefault(dest.kind, dest)
    if "email" in first:
        if not settings.smtp_url or not settings.mail_from:
            raise ConfigurationError(
                f"the destination {first['email'].display} is an email address: set "
                "COLDMAIL_SMTP_URL (smtp://user:password@host:port) and COLDMAIL_MAIL_FROM"
            )
        _require_module("aiosmtplib", first["email"], "notify")
    if "webhook" in first:
        if not settings.webhook_secret:
            raise ConfigurationError(
                f"the destination {first['webhook'].display} is a webhook: set "
                "COLDMAIL_WEBHOOK_SECRET to whsec_ and base64 of 32 random bytes, e.g. "
                "python -c \"import base64,os; print('whsec_' + "
                'base64.b64encode(os.urandom(32)).decode())"'
            )
    for kind in ("webhook", "slack"):
        if kind in first:
            _require_module("httpx", first[kind], "notify")
    if "apprise" in first:
        _require_module("apprise", first["apprise"], "apprise")


def _require_module(module: str, dest: Destination, extra: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigurationError(
            f"the destination {dest.display} needs the {extra} extra: "
            f"pip install 'bridgic-coldmail[{extra}]'"
        ) from None


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address (the traffic never leaves this machine)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_email_address(text: str) -> str:
    """A plain address (``local@domain``, ASCII), its domain in lower case.

    Raises:
        InvalidInput: anything else (a name, a second address, a line break, …).
    """
    local, at, domain = text.rpartition("@")
    if (
        not at
        or len(text) > MAX_ADDRESS_CHARS
        or not _LOCAL_PART.fullmatch(local)
        or not _DOMAIN.fullmatch(domain)
        or len(local) > 64
    ):
        hint = (
            " (write an international domain in its ASCII xn-- form)" if not text.isascii() else ""
        )
        raise InvalidInput(
            f"the destination {_shown(text)} is not a plain email address like "
            f"reviewer@example.com{hint}"
        )
    return f"{local}@{domain.lower()}"


def _parse_url(dest: str) -> Destination:
    scheme, _, rest = dest.partition("://")
    if not _SCHEME.fullmatch(scheme):
        raise InvalidInput(f"the destination {_shown(dest)} does not start with a URL scheme")
    scheme = scheme.lower()
    if _UNSAFE.search(dest):
        raise InvalidInput(
            f"the destination {_url_display(dest)} contains spaces or control characters; "
            "percent-encode them"
        )
    if scheme in ("slack+https", "slack+http"):
        url = _http_url(scheme.removeprefix("slack+"), rest, dest)
        return SlackDestination("slack+" + url)
    if scheme in ("https", "http"):
        url = _http_url(scheme, rest, dest)
        parts = urlsplit(url)
        if (
            scheme == "https"
            and (parts.hostname or "") in SLACK_HOSTS
            and parts.path.startswith("/services/")
        ):
            return SlackDestination(url)
        return WebhookDestination(url)
    return AppriseDestination(_apprise_url(f"{scheme}://{rest}"))


def _http_url(scheme: str, rest: str, original: str) -> str:
    url = f"{scheme}://{rest}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidInput(
            f"the destination {_url_display(original)} is not a URL: its port is not a number "
            "from 1 to 65535, or its IPv6 address is malformed"
        ) from None
    if not parts.hostname:
        raise InvalidInput(f"the destination {_url_display(original)} names no host")
    if not url.isascii():
        raise InvalidInput(
            f"the destination {_url_display(original)} contains non-ASCII characters; "
            "percent-encode them (and write an international domain in its xn-- form)"
        )
    if parts.fragment:
        raise InvalidInput(
            f"the destination {_url_display(original)} has a #fragment, which is never sent; "
            "remove it"
        )
    if port == 0:
        raise InvalidInput(f"the destination {_url_display(original)} names port 0")
    # The scheme and host in lower case; the path and query exactly as given (they may be
    # case-sensitive tokens).
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    return f"{scheme}://{userinfo}{at}{hostport.lower()}{url[len(scheme) + 3 + len(netloc) :]}"


def _apprise_url(url: str) -> str:
    try:
        import apprise
    except ImportError:
        raise ConfigurationError(
            f"the destination {_url_display(url)} is a chat service's URL, which needs the "
            "apprise extra: pip install 'bridgic-coldmail[apprise]' (or give an email "
            "address, an https:// webhook URL or a Slack webhook URL)"
        ) from None
    if apprise.Apprise.instantiate(url, suppress_exceptions=True) is None:
        raise InvalidInput(
            f"the destination {_url_display(url)} is not a URL Apprise can deliver to; see "
            "https://github.com/caronc/apprise/wiki for the URL of each service"
        )
    return url


def _url_display(url: str) -> str:
    """``scheme://host[:port]/… (fingerprint)``: no user, password, path or query shown."""
    scheme, _, rest = url.partition("://")
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    hostport = netloc.rpartition("@")[2].lower()
    if not _HOSTPORT.fullmatch(hostport):
        hostport = "…"  # not a host name: it may be anything, a token too
    shown = f"{scheme.lower()}://{hostport}"
    if rest[len(netloc) :].strip("/") or "@" in netloc or hostport == "…":
        shown += f"/… ({_fingerprint(url)})"
    return shown


def _fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:6]


def _shown(text: str) -> str:
    """A refused DEST that is no URL, quoted and cut short for a message: cut before its
    first ``/`` or ``:`` too, as it may be a URL without its scheme (and a token after)."""
    head = _printable(re.split(r"[/:]", text, maxsplit=1)[0])
    cut = len(head) < len(text)
    if len(head) > 80:
        head, cut = head[:79], True
    return repr(head + "…") + f" ({_fingerprint(text)})" if cut else repr(head)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)
