"""Real receivers on loopback for the notification tests: an HTTP receiver that verifies
Standard Webhooks signatures with the reference library (or checks Slack's message shape),
SMTP servers (aiosmtpd: plain, STARTTLS with AUTH, implicit TLS, one that refuses every
login), a server that accepts connections and never speaks, and a self-signed certificate
for 127.0.0.1.

Each server runs in its own thread, so a test's event loop talks to it over real sockets.
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import ssl
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from standardwebhooks import Webhook

from bridgic_coldmail.models import Brief, EmailSequence, EmailStep, Run, RunStatus
from bridgic_coldmail.notify import Event, Notification, current_pause, parse_destination
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.signing import SnapshotSigner

LOOPBACK = "127.0.0.1"
SMTP_USER = "mailer"
SMTP_PASSWORD = "p@ss:w/rd with spaces"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate (and its key) for 127.0.0.1, made with openssl."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],  # fmt: skip
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


# -- HTTP ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One scripted answer; sent after ``delay`` seconds (``drip``: the body one byte at a
    time, ``drip`` seconds apart)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    drip: float = 0.0


@dataclass(frozen=True)
class Received:
    """A request as the receiver got it, and what it made of it."""

    path: str
    headers: dict[str, str]
    body: bytes
    answered: int
    payload: Any = None
    """The verified (webhook) or parsed (Slack, plain JSON) body; None when refused."""
    problem: str | None = None


class Receiver:
    """An HTTP receiver on 127.0.0.1.

    ``kind``: ``"webhook"`` verifies the Standard Webhooks signature with the reference
    library and answers 400 when :meth:`Webhook.verify` raises anything at all (it raises
    more than ``WebhookVerificationError`` on hostile input); ``"slack"`` checks the limits
    Slack enforces on a message and answers 400 ``invalid_payload`` like Slack; ``"json"``
    takes any JSON. A request that passes gets the next scripted :class:`Reply` (200 when
    none is left).
    """

    def __init__(self, kind: str = "webhook", secret: str | None = None) -> None:
        self.kind = kind
        self.verifier = Webhook(secret) if secret else None
        self.replies: deque[Reply] = deque()
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        # shutdown() waits for serve_forever to look at its flag, once per poll_interval (the
        # stdlib's 0.5 s): half a second after every test that had a receiver.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "/hook") -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("content-length") or 0)
        body = request.rfile.read(length)
        headers = {k.lower(): v for k, v in request.headers.items()}
        payload, problem = self._check(body, headers)
        if problem is not None:
            reply = Reply(400, body=b"invalid_payload")
        else:
            with self._lock:
                reply = self.replies.popleft() if self.replies else Reply()
        with self._lock:
            self.received.append(
                Received(request.path, headers, body, reply.status, payload, problem)
            )
        if reply.delay:
            time.sleep(reply.delay)
        try:
            request.send_response(reply.status)
            for name, value in reply.headers.items():
                request.send_header(name, value)
            request.send_header("content-length", str(len(reply.body)))
            request.end_headers()
            if reply.drip:
                for byte in reply.body:
                    request.wfile.write(bytes([byte]))
                    request.wfile.flush()
                    time.sleep(reply.drip)
            else:
                request.wfile.write(reply.body)
        except OSError:
            pass  # the client gave up (a timeout test)

    def _check(self, body: bytes, headers: dict[str, str]) -> tuple[Any, str | None]:
        if self.kind == "webhook":
            assert self.verifier is not None
            try:
                return self.verifier.verify(body, headers), None
            except Exception as exc:  # the reference verifier raises more than its own error
                return None, f"{type(exc).__name__}: {exc}"
        try:
            payload = json.loads(body)
        except ValueError as exc:
            return None, f"not JSON: {exc}"
        if self.kind == "slack":
            return payload, slack_problem(payload)
        return payload, None


def slack_problem(payload: Any) -> str | None:
    """What Slack would refuse in an incoming webhook's message, or None."""
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        return "no text"
    blocks = payload.get("blocks", [])
    if not isinstance(blocks, list) or len(blocks) > 50:
        return "blocks: at most 50"
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            text = block["text"]
            if text["type"] != "plain_text" or not 0 < len(text["text"]) <= 150:
                return "header: plain_text of 1 to 150 characters"
        elif kind == "section":
            text = block["text"]
            if text["type"] != "mrkdwn" or not 0 < len(text["text"]) <= 3000:
                return "section: mrkdwn of 1 to 3000 characters"
        elif kind == "context":
            if not block["elements"] or len(block["elements"]) > 10:
                return "context: 1 to 10 elements"
        else:
            return f"unexpected block {kind!r}"
    return None


# -- SMTP ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivered:
    """An email an SMTP server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    authenticated: bool
    tls: bool

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class MailHandler:
    def __init__(self, refuse_rcpt: str | None = None) -> None:
        self.delivered: list[Delivered] = []
        self.refuse_rcpt = refuse_rcpt

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.refuse_rcpt is not None:
            return self.refuse_rcpt
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.delivered.append(
            Delivered(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                bytes(envelope.content),
                bool(session.authenticated),
                server.transport.get_extra_info("ssl_object") is not None,
            )
        )
        return "250 OK"


def authenticator(accept: bool) -> Any:
    def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = (
            accept
            and isinstance(data, LoginPassword)
            and data.login.decode() == SMTP_USER
            and data.password.decode() == SMTP_PASSWORD
        )
        # handled=False: aiosmtpd answers 535 (with the default True it sends nothing).
        return AuthResult(success=ok, handled=False)

    return check


@contextmanager
def smtp_server(handler: MailHandler, **options: Any) -> Iterator[Controller]:
    """An aiosmtpd server on a free loopback port (``port=0`` breaks its start check)."""
    for _ in range(5):
        controller = Controller(handler, hostname=LOOPBACK, port=free_port(), **options)
        try:
            controller.start()
        except OSError:  # the port was taken between picking it and binding it
            continue
        break
    else:
        raise RuntimeError("no free port for the SMTP server")
    try:
        yield controller
    finally:
        controller.stop()


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never says a word (a hung server)."""
    listener = socket.socket()
    listener.bind((LOOPBACK, 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


# -- runs and notifications ----------------------------------------------------------------

WEBHOOK_SECRET = "whsec_" + __import__("base64").b64encode(bytes(range(32))).decode()
ORIGIN = "https://review.example.com"
RUN_ID = "0123456789abcdef0123456789abcdef"
PAUSE_ID = "fedcba9876543210fedcba9876543210"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def make_signer(key: bytes = b"k" * 32) -> SnapshotSigner:
    return SnapshotSigner(key, "test")


def make_sequence(
    subject: str = "A faster way", body: str = "Hi {{first_name}},\n\nShort."
) -> EmailSequence:
    return EmailSequence(
        opener=EmailStep(subject=subject, body=body, wait_days=0),
        follow_up=EmailStep(subject="Following up", body="Any thoughts?", wait_days=3),
    )


def make_run(**overrides: Any) -> Run:
    values: dict[str, Any] = {
        "interaction_id": RUN_ID,
        "status": RunStatus.AWAITING_FEEDBACK,
        "brief": Brief(product="Acme Scheduler", offer="Cuts no-shows by 30%", sender="Dana Lee"),
        "draft": make_sequence(),
        "question": "Who is this sequence really for?",
        "created_at": NOW,
        "updated_at": NOW,
    }
    values.update(overrides)
    return Run(**values)


def make_notification(
    destination: str, event: Event = "run.paused", run: Run | None = None, **fields: Any
) -> Notification:
    run = run or make_run()
    fields.setdefault("pause_id", current_pause(run))
    dest = parse_destination(destination)
    return Notification(
        id=Notification.make_id(run.interaction_id, fields["pause_id"], event, 1, dest.value),
        event=event,
        run=run,
        destination=dest,
        created_at=fields.pop("created_at", NOW),
        **fields,
    )


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"public_origin": ORIGIN, "webhook_secret": WEBHOOK_SECRET}
    values.update(overrides)
    return Settings.resolve(env={}, **values)
