"""Signed one-click links: a URL that opens one run's current pause, with no login.

A link is ``<origin>/l/<token>``; the token is ``base64url(payload) "." base64url(mac)``
where the payload is the JSON ``[run id, pause id, expires (unix seconds), round]`` (the
review round the pause is, null at the audience question: once the pause is answered, the
page finds that round's decision by it) and the MAC is
an HMAC-SHA256 of the payload's exact bytes with this installation's signing key (the one
that signs the runs, ``signing.SnapshotSigner``) under a domain of its own, so no other
signature of this package can pass for a link and a link for nothing else.

What a token proves, checked in this order by :func:`read_token` and :func:`check_run`:

1. it was made here, unaltered: any other token — forged, edited in any byte, truncated,
   signed with another key, non-ASCII, oversized — is :class:`~..errors.LinkRefused` (403);
2. its time is not over: :class:`~..errors.LinkExpired` (410);
3. its run is still stored: :class:`~..errors.LinkRunGone` (404);
4. the run still waits at the pause the link was made for: once that pause is answered (or
   the run moved on to another round), the link no longer acts,
   :class:`~..errors.LinkAnswered` (410), though a page may still show what was decided.

The token is compared whole and in constant time with the one this key would make for its
payload, so the base64 of a genuine token cannot be re-spelled either. Tokens are bearer
credentials: never log them (the web app must keep them out of its access log).

The link's page carries a *form token* (:func:`make_form_token`) bound to the link: a fresh
random nonce and its MAC with the link's token, under another domain. The page sets no cookie
(a person arrives from a mail client, a cross-site navigation on which ``SameSite=Strict``
cookies are not sent); any process holding the key checks a form token
(:func:`form_token_matches`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from ..errors import LinkAnswered, LinkExpired, LinkRefused, LinkRunGone
from ..models import Run
from ..signing import SnapshotSigner

LINK_PATH = "/l/"
"""Where the web app serves link pages: ``<origin>/l/<token>``."""
LINK_DOMAIN = b"bridgic-coldmail link v1"
FORM_DOMAIN = b"bridgic-coldmail link form v1"
MAX_TOKEN_CHARS = 512
"""No token this package makes is longer; a longer one is refused before any decoding."""
MAX_FORM_TOKEN_CHARS = 100
_TOKEN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
REFUSED = (
    "this link is not valid: it was changed or cut short; open the newest message about the run"
)
RUN_GONE = (
    "this link's run is no longer stored (it was deleted), so there is nothing left to answer; "
    "ask whoever sent the link whether a new run replaced it"
)


@dataclass(frozen=True)
class LinkClaim:
    """What a genuine token says."""

    run_id: str
    pause_id: str
    expires_at: datetime
    round: int | None = None
    """The review round the pause is; None at the audience question."""


@dataclass(frozen=True)
class OpenedLink:
    """What a genuine, unexpired link opens (``ColdMailAgent.open_link``)."""

    claim: LinkClaim
    run: Run
    """The run as stored now."""
    is_open: bool
    """Whether the run still waits at the link's pause (see :func:`check_run`)."""
    form_token: str
    """A fresh form token for the link's page (see :func:`make_form_token`)."""


def link_expiry(made_at: datetime, link_ttl: float, deadline: datetime | None = None) -> datetime:
    """When a link made at ``made_at`` stops working: the pause's deadline when it has one
    still ahead, else ``link_ttl`` seconds (``COLDMAIL_LINK_TTL``) later."""
    if deadline is not None and deadline > made_at:
        return deadline
    return made_at + timedelta(seconds=link_ttl)


def make_token(
    signer: SnapshotSigner,
    run_id: str,
    pause_id: str,
    expires_at: datetime,
    *,
    round: int | None = None,
) -> str:
    """The token of a link to ``run_id``'s pause ``pause_id`` (review round ``round``, None
    at the audience question), valid until ``expires_at`` (an aware datetime; whole seconds
    count). The same arguments give the same token."""
    if expires_at.tzinfo is None:
        raise ValueError("expires_at must be an aware datetime (e.g. in UTC)")
    payload = json.dumps(
        [run_id, pause_id, int(expires_at.timestamp()), round],
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()
    token = f"{_b64(payload)}.{_b64(signer.mac_values(LINK_DOMAIN, [payload]))}"
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError("the run and pause ids are too long for a link")
    return token


def make_link(
    signer: SnapshotSigner,
    origin: str,
    run_id: str,
    pause_id: str,
    expires_at: datetime,
    *,
    round: int | None = None,
) -> str:
    """``<origin>/l/<token>`` (see :func:`make_token`); ``origin`` is a validated
    ``COLDMAIL_PUBLIC_ORIGIN``."""
    token = make_token(signer, run_id, pause_id, expires_at, round=round)
    return origin.rstrip("/") + LINK_PATH + token


def read_token(signer: SnapshotSigner, token: str, *, now: datetime | None = None) -> LinkClaim:
    """What ``token`` claims, once it is proven genuine and unexpired.

    Raises:
        LinkRefused: not a token this key made (403).
        LinkExpired: a genuine token whose time is over (410).
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not _TOKEN.fullmatch(token):
        raise LinkRefused(REFUSED, topic="forged")
    encoded_payload = token.split(".", 1)[0]
    try:
        payload = base64.urlsafe_b64decode(encoded_payload + "=" * (-len(encoded_payload) % 4))
    except (binascii.Error, ValueError):
        raise LinkRefused(REFUSED, topic="forged") from None
    expected = f"{_b64(payload)}.{_b64(signer.mac_values(LINK_DOMAIN, [payload]))}"
    if not hmac.compare_digest(expected.encode(), token.encode()):
        raise LinkRefused(REFUSED, topic="forged")
    try:
        run_id, pause_id, expires, round = json.loads(payload)
    except (ValueError, TypeError):  # only a token of another format version could get here
        raise LinkRefused(REFUSED, topic="forged") from None
    if not (
        isinstance(run_id, str)
        and isinstance(pause_id, str)
        and type(expires) is int
        and (round is None or type(round) is int)
    ):
        raise LinkRefused(REFUSED, topic="forged")
    expires_at = datetime.fromtimestamp(expires, timezone.utc)
    if (now or datetime.now(timezone.utc)) >= expires_at:
        raise LinkExpired(
            "this link has expired; open the newest message about the run, or the inbox",
            topic="expired",
        )
    return LinkClaim(run_id=run_id, pause_id=pause_id, expires_at=expires_at, round=round)


def current_pause(run: Run) -> str | None:
    """The id of the pause ``run`` waits at (its own id at the audience question, a new one
    at each review round), or None when it waits for nobody."""
    if not run.status.is_paused:
        return None
    return run.pause_id or run.interaction_id


def check_run(claim: LinkClaim, run: Run | None, *, to_act: bool) -> bool:
    """Whether ``run`` (what the store holds under ``claim.run_id``) still waits at the
    link's pause. A page that only shows may show an answered pause (False); one that acts
    (``to_act``) is refused.

    Raises:
        LinkRunGone: the run is not stored (404).
        LinkAnswered: ``to_act``, and the pause is over (410).
    """
    if run is None or run.interaction_id != claim.run_id:
        raise LinkRunGone(RUN_GONE, topic="not_found")
    pause = current_pause(run)
    is_open = pause is not None and pause == claim.pause_id
    if to_act and not is_open:
        raise LinkAnswered(
            "this link's question was already answered; open the run to see what was decided",
            topic="answered",
        )
    return is_open


def make_form_token(signer: SnapshotSigner, token: str) -> str:
    """A fresh form token for the page of the link ``token``: ``nonce "." mac``."""
    nonce = secrets.token_urlsafe(16)
    return f"{nonce}.{_form_mac(signer, token, nonce)}"


def form_token_matches(signer: SnapshotSigner, token: str, submitted: str) -> bool:
    """Whether ``submitted`` is a form token made for the page of the link ``token``."""
    if len(submitted) > MAX_FORM_TOKEN_CHARS or not _TOKEN.fullmatch(submitted):
        return False
    nonce = submitted.split(".", 1)[0]
    expected = f"{nonce}.{_form_mac(signer, token, nonce)}"
    return hmac.compare_digest(expected.encode(), submitted.encode())


def _form_mac(signer: SnapshotSigner, token: str, nonce: str) -> str:
    return _b64(signer.mac_values(FORM_DOMAIN, [token, nonce]))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
