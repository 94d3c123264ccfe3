"""Where notifications go: each DEST parsed into its kind or refused with a clear message that
never shows a token or a password; the notification settings checked once, at start-up."""

from __future__ import annotations

import sys

import pytest

from bridgic_coldmail.errors import ConfigurationError, InvalidInput
from bridgic_coldmail.notify import (
    AppriseDestination,
    EmailDestination,
    SlackDestination,
    WebhookDestination,
    parse_destination,
    parse_destinations,
    require_channels,
)
from bridgic_coldmail.notify.channels import SmtpServer
from bridgic_coldmail.notify.destinations import MAX_DESTINATIONS, is_loopback_host
from bridgic_coldmail.settings import Settings

from ..notify_servers import WEBHOOK_SECRET

SECRET = "XyZSecretToken123"
SLACK = f"https://hooks.slack.com/services/T000/B000/{SECRET}"


@pytest.mark.parametrize(
    ("dest", "kind", "value"),
    [
        ("reviewer@example.com", EmailDestination, "reviewer@example.com"),
        ("  Reviewer+tag@Example.COM ", EmailDestination, "Reviewer+tag@example.com"),
        ("mailto:r.x@example.com", EmailDestination, "r.x@example.com"),
        ("MAILTO:r@example.com", EmailDestination, "r@example.com"),
        (SLACK, SlackDestination, SLACK),
        (
            "HTTPS://HOOKS.SLACK.COM/services/T/B/X",
            SlackDestination,
            "https://hooks.slack.com/services/T/B/X",
        ),
        ("slack+http://127.0.0.1:8080/hook", SlackDestination, "slack+http://127.0.0.1:8080/hook"),
        ("https://hooks.slack.com/other", WebhookDestination, "https://hooks.slack.com/other"),
        (
            "https://crm.example.com/hooks/Coldmail?Key=AbC",
            WebhookDestination,
            "https://crm.example.com/hooks/Coldmail?Key=AbC",
        ),
        ("http://app:8000/hook", WebhookDestination, "http://app:8000/hook"),
        ("https://[::1]:9000/h", WebhookDestination, "https://[::1]:9000/h"),
        ("json://127.0.0.1:9999/hook", AppriseDestination, "json://127.0.0.1:9999/hook"),
    ],
)
def test_each_kind_of_destination(dest: str, kind: type, value: str) -> None:
    parsed = parse_destination(dest)
    assert type(parsed) is kind and parsed.value == value
    assert parse_destination(parsed.value) == parsed  # the stored form parses to itself


@pytest.mark.parametrize(
    ("dest", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("reviewer", "not an email address, an http(s):// webhook URL"),
        ("Dana <dana@example.com>", "spaces or control characters"),
        ("a@example.com, b@example.com", "spaces or control characters"),
        ("a@example.com\r\nBcc: victim@example.com", "spaces or control characters"),
        ("a@b@example.com", "not a plain email address"),
        ("a..b@example.com", "not a plain email address"),
        ("a@-example.com", "not a plain email address"),
        ("dana@exämple.com", "xn-- form"),
        ("x" * 65 + "@example.com", "not a plain email address"),
        ("a@" + "b" * 250 + ".com", "not a plain email address"),
        ("mailto:a@example.com?subject=x", "not a plain email address"),
        ("https://", "names no host"),
        ("https:///path", "names no host"),
        ("https://example.com:99999/h", "not a URL"),
        ("https://example.com:0/h", "port 0"),
        ("https://exämple.com/h", "non-ASCII"),
        ("https://example.com/a b", "spaces or control characters"),
        ("https://example.com/h#frag", "#fragment"),
        ("1http://x", "does not start with a URL scheme"),
        ("https://example.com/" + "a" * 3000, "the limit is 2048"),
        ("nosuchservice://token@host", "not a URL Apprise can deliver to"),
    ],
)
def test_bad_destinations_are_refused_saying_why(dest: str, says: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_destination(dest)
    assert says in str(refused.value)
    assert "\n" not in str(refused.value) and "\r" not in str(refused.value)


@pytest.mark.parametrize(
    "dest",
    [
        f"https://hooks.slack.com/services/T000/B000/{SECRET} extra",
        f"https://user:{SECRET}@example.com/hook\x00",
        f"https://example.com/{SECRET}#x",
        f"https://example.com:99999/{SECRET}",
        f"https://exämple.com/{SECRET}",
        f"https://example.com:{SECRET}/h",
        f"https://[{SECRET}/h",
        f"nosuchservice://{SECRET}@host",
        f"hooks.slack.com/services/T000/B000/{SECRET}",  # a URL without its scheme
        f"user:{SECRET}@example.com",
    ],
)
def test_a_refusal_never_shows_a_token_or_password(dest: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_destination(dest)
    assert SECRET.lower() not in str(refused.value).lower()


def test_destinations_show_no_secret_in_str_or_repr() -> None:
    for dest in (
        SLACK,
        f"https://user:{SECRET}@example.com/hook",
        f"https://example.com/hook?token={SECRET}",
        f"slack+https://proxy.example.com/{SECRET}",
        f"json://user:{SECRET}@127.0.0.1/hook",
    ):
        parsed = parse_destination(dest)
        for shown in (str(parsed), repr(parsed), parsed.display, repr([parsed])):
            assert SECRET.lower() not in shown.lower()
    one = parse_destination("https://example.com/a").display
    two = parse_destination("https://example.com/b").display
    assert one != two and one.startswith("https://example.com/… (")
    assert parse_destination("https://example.com").display == "https://example.com"


def test_a_list_of_destinations() -> None:
    parsed = parse_destinations(" a@example.com, ,https://x.example/h , a@example.com,")
    assert [d.value for d in parsed] == ["a@example.com", "https://x.example/h"]
    assert parse_destinations(["b@example.com"]) == (EmailDestination("b@example.com"),)
    assert parse_destinations("") == ()
    too_many = ",".join(f"r{i}@example.com" for i in range(MAX_DESTINATIONS + 1))
    with pytest.raises(InvalidInput, match="at most 20"):
        parse_destinations(too_many)
    with pytest.raises(InvalidInput):
        parse_destination(42)  # type: ignore[arg-type]


def test_an_apprise_url_without_the_extra_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "apprise", None)  # forces the ImportError
    with pytest.raises(ConfigurationError, match=r"pip install 'bridgic-coldmail\[apprise\]'"):
        parse_destination("discord://webhook_id/webhook_token")
    with pytest.raises(ConfigurationError, match="apprise extra"):
        require_channels([AppriseDestination("discord://a/b")], Settings.resolve(env={}))


def test_loopback_hosts() -> None:
    for host in ("localhost", "127.0.0.1", "127.5.6.7", "[::1]", "::1", "a.localhost"):
        assert is_loopback_host(host), host
    for host in ("example.com", "10.0.0.1", "localhost.example.com", "::2"):
        assert not is_loopback_host(host), host


# -- settings -------------------------------------------------------------------------------


def resolve(**env: str) -> Settings:
    return Settings.resolve(env=env)


def test_notification_settings_from_the_environment() -> None:
    settings = resolve(
        COLDMAIL_NOTIFY=f"r@example.com,{SLACK}",
        COLDMAIL_SMTP_URL=f"smtp://mailer:{SECRET}@mail.example.com:587",
        COLDMAIL_MAIL_FROM="Coldmail Bot <bot@example.com>",
        COLDMAIL_WEBHOOK_SECRET=WEBHOOK_SECRET,
        COLDMAIL_NOTIFY_TIMEOUT="5",
        COLDMAIL_LINK_TTL="3600",
    )
    assert [d.kind for d in settings.notify] == ["email", "slack"]
    assert settings.mail_from == "Coldmail Bot <bot@example.com>"
    assert (settings.notify_timeout, settings.link_ttl) == (5.0, 3600.0)
    shown = repr(settings)
    assert SECRET not in shown and WEBHOOK_SECRET not in shown
    assert "r@example.com" in shown and "hooks.slack.com" in shown
    defaults = resolve()
    assert defaults.notify == () and defaults.notify_timeout == 15
    assert defaults.link_ttl == 7 * 24 * 3600


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {"COLDMAIL_NOTIFY": f"nope,{SLACK}"},
            "COLDMAIL_NOTIFY=*** is not valid: the destination 'nope'",
        ),
        ({"COLDMAIL_NOTIFY": "r@example.com"}, "set COLDMAIL_SMTP_URL"),
        ({"COLDMAIL_NOTIFY": "https://x.example/h"}, "set COLDMAIL_WEBHOOK_SECRET"),
        (
            {"COLDMAIL_SMTP_URL": "smtp://h"},
            "COLDMAIL_SMTP_URL is set but COLDMAIL_MAIL_FROM is not",
        ),
        ({"COLDMAIL_MAIL_FROM": "a@b.c"}, "COLDMAIL_MAIL_FROM is set but COLDMAIL_SMTP_URL is not"),
        (
            {"COLDMAIL_SMTP_URL": f"http://u:{SECRET}@h"},
            "COLDMAIL_SMTP_URL=*** is not valid: expected smtp://",
        ),
        ({"COLDMAIL_SMTP_URL": f"smtp://:{SECRET}@h"}, "a password without a user name"),
        ({"COLDMAIL_SMTP_URL": f"smtp://u:{SECRET}@h:70000"}, "port is not a number"),
        ({"COLDMAIL_SMTP_URL": f"smtp://u:{SECRET}@h/x"}, "has no path"),
        (
            {"COLDMAIL_SMTP_URL": f"smtp://u:{SECRET}@h?starttls=never"},
            "only option is ?starttls=require",
        ),
        ({"COLDMAIL_SMTP_URL": f"smtps://u:{SECRET}@h?starttls=require"}, "TLS from the start"),
        ({"COLDMAIL_SMTP_URL": f"smtp://u:{SECRET}%0d%0aRSET@h"}, "line break or NUL"),
        ({"COLDMAIL_MAIL_FROM": "Bot <bot@example.com>\r\nBcc: x@y.z"}, "COLDMAIL_MAIL_FROM='"),
        ({"COLDMAIL_MAIL_FROM": '"Bot" Evil <bot@example.com>'}, "no quotes"),
        ({"COLDMAIL_MAIL_FROM": "not an address"}, "not a plain email address"),
        ({"COLDMAIL_MAIL_FROM": "https://x.example/h"}, "not a plain email address"),
        ({"COLDMAIL_WEBHOOK_SECRET": SECRET}, "starts with whsec_"),
        ({"COLDMAIL_WEBHOOK_SECRET": "whsec_!!!notbase64"}, "must be base64"),
        ({"COLDMAIL_WEBHOOK_SECRET": "whsec_c2hvcnQ="}, "holds 5 bytes; use 24 to 64"),
        ({"COLDMAIL_WEBHOOK_SECRET": "whsec_" + "QUFB" * 30}, "holds 90 bytes"),
        ({"COLDMAIL_NOTIFY_TIMEOUT": "0"}, "COLDMAIL_NOTIFY_TIMEOUT='0' is not valid"),
        ({"COLDMAIL_NOTIFY_TIMEOUT": "inf"}, "COLDMAIL_NOTIFY_TIMEOUT"),
        ({"COLDMAIL_LINK_TTL": "-1"}, "COLDMAIL_LINK_TTL"),
        ({"COLDMAIL_LINK_TTL": str(8 * 24 * 3600)}, "a week"),
    ],
)
def test_bad_notification_settings_fail_at_start_up(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        resolve(**env)
    message = str(refused.value)
    assert says in message
    assert SECRET.lower() not in message.lower() and "QUFB" not in message
    assert "\n" not in message


def test_webhook_secrets_may_be_rotated() -> None:
    old = "whsec_" + "QUFB" * 8
    settings = resolve(COLDMAIL_WEBHOOK_SECRET=f"  {WEBHOOK_SECRET}   {old} ")
    assert settings.webhook_secret == f"{WEBHOOK_SECRET} {old}"
    unpadded = resolve(COLDMAIL_WEBHOOK_SECRET=WEBHOOK_SECRET.rstrip("="))
    assert unpadded.webhook_secret is not None


def test_overrides_are_checked_like_the_environment() -> None:
    settings = Settings.resolve(
        env={}, notify=["a@example.com"], smtp_url="smtp://127.0.0.1:25", mail_from="x@example.com"
    )
    assert settings.notify == (EmailDestination("a@example.com"),)
    with pytest.raises(ConfigurationError, match="notify=\\*\\*\\*"):
        settings.with_overrides(notify=[SLACK + " x"])


@pytest.mark.parametrize(
    ("url", "host", "port", "implicit", "required"),
    [
        ("smtp://mail.example.com", "mail.example.com", 25, False, False),
        ("smtp://u@mail.example.com", "mail.example.com", 587, False, False),
        ("smtp://u:p@mail.example.com", "mail.example.com", 587, False, True),
        ("smtp://u:p@127.0.0.1:2525", "127.0.0.1", 2525, False, False),
        ("smtp://u:p@localhost", "localhost", 587, False, False),
        ("smtp://127.0.0.1:2525?starttls=require", "127.0.0.1", 2525, False, True),
        ("smtps://u:p@mail.example.com", "mail.example.com", 465, True, False),
        ("SMTP://u:p@[::1]:25", "::1", 25, False, False),
    ],
)
def test_smtp_urls_and_when_starttls_is_required(
    url: str, host: str, port: int, implicit: bool, required: bool
) -> None:
    server = SmtpServer.parse(url)
    assert (server.host, server.port, server.implicit_tls) == (host, port, implicit)
    assert server.require_starttls is required
    assert server.starttls is (False if implicit else True if required else None)
    assert ":p@" not in repr(server) and ":p@" not in server.display


def test_smtp_credentials_are_percent_decoded() -> None:
    server = SmtpServer.parse("smtp://me%40example.com:p%40ss%3Aw%2Frd@mail.example.com")
    assert (server.username, server.password) == ("me@example.com", "p@ss:w/rd")
    assert SmtpServer.parse("smtp://u:@h").password is None


@pytest.mark.parametrize(("module", "kind"), [("aiosmtplib", "email"), ("httpx", "webhook")])
async def test_a_missing_notify_extra_is_named(
    monkeypatch: pytest.MonkeyPatch, module: str, kind: str
) -> None:
    from bridgic_coldmail.notify import deliver

    from ..notify_servers import make_notification, make_settings

    dest = "r@example.com" if kind == "email" else "https://x.example/h"
    settings = make_settings(smtp_url="smtp://127.0.0.1:25", mail_from="a@example.com")
    monkeypatch.setitem(sys.modules, module, None)  # forces the ImportError
    with pytest.raises(ConfigurationError, match=r"pip install 'bridgic-coldmail\[notify\]'"):
        require_channels([parse_destination(dest)], settings)
    result = await deliver(make_notification(dest), settings)
    assert result.outcome == "retry" and "bridgic-coldmail[notify]" in result.reason
