"""Email notifications through real SMTP servers on loopback (aiosmtpd): plain, STARTTLS with
a login, implicit TLS, a server that refuses the login, one that never answers, one that is
down and then back, and one that refuses the recipient."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridgic_coldmail.notify import DeliveryResult, deliver, read_token
from bridgic_coldmail.settings import Settings

from ..notify_servers import (
    LOOPBACK,
    ORIGIN,
    PAUSE_ID,
    RUN_ID,
    SMTP_PASSWORD,
    SMTP_USER,
    MailHandler,
    authenticator,
    free_port,
    make_certificate,
    make_notification,
    make_run,
    make_settings,
    make_signer,
    server_tls,
    silent_server,
    smtp_server,
)

pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")

TO = "reviewer@example.com"
FROM = "Coldmail <coldmail@example.com>"
USER = "mailer"
PASSWORD_IN_URL = "p%40ss%3Aw%2Frd%20with%20spaces"
SIGNER = make_signer()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


def settings_for(
    port: int, *, scheme: str = "smtp", login: bool = False, query: str = ""
) -> Settings:
    user = f"{SMTP_USER}:{PASSWORD_IN_URL}@" if login else ""
    return make_settings(
        smtp_url=f"{scheme}://{user}{LOOPBACK}:{port}{query}", mail_from=FROM, notify_timeout=3
    )


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


async def test_a_plain_server_gets_the_message_with_text_html_and_a_working_link() -> None:
    handler = MailHandler()
    with smtp_server(handler) as server:
        n = make_notification(TO, pause_id=PAUSE_ID)
        result = await deliver(n, settings_for(server.port), signer=SIGNER)
    assert result == DeliveryResult.ok(250)
    [mail] = handler.delivered
    assert mail.rcpt_tos == [TO] and mail.mail_from == "coldmail@example.com"
    message = mail.message
    assert message["To"] == TO and message["From"] == FROM
    assert message["Message-ID"] == f"<{n.id}@example.com>"
    assert message["Subject"] == "[coldmail] Audience feedback needed: Acme Scheduler"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    plain = text.get_content()
    assert "Who is this sequence really for?" in plain
    link = next(w for w in plain.split() if w.startswith(f"{ORIGIN}/l/"))
    claim = read_token(SIGNER, link.removeprefix(f"{ORIGIN}/l/"), now=n.created_at)
    assert (claim.run_id, claim.pause_id) == (RUN_ID, PAUSE_ID)
    assert f'href="{link}"' in html.get_content()


async def test_starttls_and_login_on_loopback(certificate: tuple[Path, Path]) -> None:
    handler = MailHandler()
    options = {
        "tls_context": server_tls(*certificate),
        "require_starttls": True,
        "authenticator": authenticator(accept=True),
        "auth_require_tls": True,
    }
    with smtp_server(handler, **options) as server:
        settings = settings_for(server.port, login=True)
        result = await deliver(make_notification(TO), settings)
        assert result.delivered, result.reason
        # STARTTLS required (?starttls=require): the certificate is verified; trusted here.
        strict = settings_for(server.port, login=True, query="?starttls=require")
        result = await deliver(make_notification(TO), strict, smtp_tls=trusting(certificate[0]))
        assert result.delivered, result.reason
    assert [(m.tls, m.authenticated) for m in handler.delivered] == [(True, True)] * 2


async def test_required_starttls_refuses_an_untrusted_certificate(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = MailHandler()
    options = {"tls_context": server_tls(*certificate), "authenticator": authenticator(True)}
    with smtp_server(handler, **options) as server:
        settings = settings_for(server.port, login=True, query="?starttls=require")
        result = await deliver(make_notification(TO), settings)
        assert result.outcome == "retry"
        assert "certificate is not trusted" in result.reason and "SSL_CERT_FILE" in result.reason
        # The system's authorities can be extended the usual way.
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
        result = await deliver(make_notification(TO), settings)
        assert result.delivered, result.reason
    assert len(handler.delivered) == 1


async def test_a_server_without_starttls_gets_no_password_when_tls_is_required() -> None:
    handler = MailHandler()
    logins: list[str] = []

    def record(
        server: object, session: object, envelope: object, mechanism: str, data: object
    ) -> object:
        logins.append(mechanism)
        return authenticator(accept=True)(server, session, envelope, mechanism, data)

    with smtp_server(handler, authenticator=record, auth_require_tls=False) as server:
        settings = settings_for(server.port, login=True, query="?starttls=require")
        result = await deliver(make_notification(TO), settings)
    assert result.outcome == "retry"
    assert "does not offer STARTTLS" in result.reason and "nothing was sent" in result.reason
    assert logins == [] and handler.delivered == []
    assert SMTP_PASSWORD not in result.reason and "p%40ss" not in result.reason


async def test_implicit_tls(certificate: tuple[Path, Path]) -> None:
    handler = MailHandler()
    options = {
        "ssl_context": server_tls(*certificate),
        "authenticator": authenticator(True),
        # aiosmtpd counts only STARTTLS as TLS for AUTH; this connection is TLS from the start.
        "auth_require_tls": False,
    }
    with smtp_server(handler, **options) as server:
        result = await deliver(
            make_notification(TO), settings_for(server.port, scheme="smtps", login=True)
        )
        assert result.delivered, result.reason
        # Verified when asked to, with the right authority.
        result = await deliver(
            make_notification(TO),
            settings_for(server.port, scheme="smtps", login=True),
            smtp_tls=trusting(certificate[0]),
        )
        assert result.delivered, result.reason
        result = await deliver(
            make_notification(TO),
            settings_for(server.port, scheme="smtps", login=True),
            smtp_tls=ssl.create_default_context(),
        )
        assert result.outcome == "retry" and "not trusted" in result.reason
    assert [(m.tls, m.authenticated) for m in handler.delivered] == [(True, True)] * 2


async def test_a_refused_login_is_retried_with_a_reason_that_names_the_setting(
    certificate: tuple[Path, Path],
) -> None:
    handler = MailHandler()
    options = {"tls_context": server_tls(*certificate), "authenticator": authenticator(False)}
    with smtp_server(handler, **options) as server:
        started = time.monotonic()
        result = await deliver(make_notification(TO), settings_for(server.port, login=True))
    assert time.monotonic() - started < 3  # an answer, not a hang until the timeout
    assert result.outcome == "retry" and result.status == 535
    assert "refused the login" in result.reason and "COLDMAIL_SMTP_URL" in result.reason
    assert SMTP_PASSWORD not in result.reason and "p%40ss" not in result.reason
    assert handler.delivered == []


async def test_a_server_that_never_answers_times_out_and_is_retried() -> None:
    with silent_server() as port:
        started = time.monotonic()
        settings = settings_for(port).with_overrides(notify_timeout=0.5)
        result = await deliver(make_notification(TO), settings)
    elapsed = time.monotonic() - started
    assert result.outcome == "retry"
    assert "0.5" in result.reason or "imed out" in result.reason
    assert elapsed < 5


async def test_a_server_that_is_down_is_retried_and_delivered_once_it_is_back() -> None:
    port = free_port()
    settings = settings_for(port)
    n = make_notification(TO)
    down = await deliver(n, settings)
    assert down.outcome == "retry" and f"{LOOPBACK}:{port}" in down.reason
    handler = MailHandler()
    with smtp_server_on(port, handler):
        back = await deliver(n, settings)
    assert back.delivered
    assert handler.delivered[0].message["Message-ID"] == f"<{n.id}@example.com>"


async def test_a_refused_recipient_is_final_and_a_busy_mailbox_is_retried() -> None:
    for answer, outcome in (("550 5.1.1 No such user", "permanent"), ("451 4.3.0 Busy", "retry")):
        handler = MailHandler(refuse_rcpt=answer)
        with smtp_server(handler) as server:
            result = await deliver(make_notification(TO), settings_for(server.port))
        assert result.outcome == outcome, result
        assert result.status == int(answer[:3]) and answer[4:] in result.reason


async def test_without_smtp_settings_the_notification_waits_for_them() -> None:
    result = await deliver(make_notification(TO), make_settings())
    assert result.outcome == "retry" and "COLDMAIL_SMTP_URL" in result.reason


async def test_hostile_run_text_cannot_add_headers_or_recipients() -> None:
    from bridgic_coldmail.models import Brief

    handler = MailHandler()
    brief = Brief.model_construct(
        product="Acme\r\nBcc: victim@example.com\r\n\r\n<script>x</script>",
        offer="o",
        sender="s\r\nRCPT TO:<victim@example.com>",
    )
    with smtp_server(handler) as server:
        result = await deliver(
            make_notification(TO, run=make_run(brief=brief)), settings_for(server.port)
        )
    assert result.delivered
    [mail] = handler.delivered
    assert mail.rcpt_tos == [TO]
    assert mail.message["Bcc"] is None
    html = mail.message.get_body(("html",))
    assert html is not None and "<script>" not in html.get_content()


class smtp_server_on:  # noqa: N801 - reads like the function it mirrors
    """An aiosmtpd server on a given port (a server coming back where it was)."""

    def __init__(self, port: int, handler: MailHandler) -> None:
        from aiosmtpd.controller import Controller

        self.controller = Controller(handler, hostname=LOOPBACK, port=port)

    def __enter__(self) -> Iterator[None]:
        self.controller.start()
        return iter(())

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
