"""Webhook, Slack and Apprise notifications, delivered to real HTTP receivers on loopback.

The webhook receiver verifies every request with ``standardwebhooks``, the specification's
reference library, so a signature that library does not accept fails these tests.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

from bridgic_coldmail.notify import DeliveryResult, deliver, make_http_client
from bridgic_coldmail.notify.channels import sign_webhook, webhook_keys
from bridgic_coldmail.settings import Settings

from ..notify_servers import (
    LOOPBACK,
    ORIGIN,
    PAUSE_ID,
    RUN_ID,
    WEBHOOK_SECRET,
    Receiver,
    Reply,
    free_port,
    make_notification,
    make_settings,
    make_signer,
    silent_server,
)
from ..unit.test_notify_messages import hostile_run

SETTINGS = make_settings(notify_timeout=2)


async def test_a_signed_webhook_is_verified_by_the_reference_library() -> None:
    with Receiver("webhook", WEBHOOK_SECRET) as receiver:
        n = make_notification(receiver.url(), pause_id=PAUSE_ID)
        result = await deliver(n, SETTINGS, signer=make_signer())
    assert result == DeliveryResult.ok(200)
    [got] = receiver.received
    assert got.problem is None and got.answered == 200
    assert got.headers["webhook-id"] == n.id
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"].startswith("bridgic-coldmail/")
    event = got.payload
    assert event["type"] == "run.paused" and event["timestamp"] == n.created_at.isoformat()
    assert event["data"]["run"]["interaction_id"] == RUN_ID
    assert event["data"]["run"]["status"] == "awaiting_feedback"
    assert event["data"]["pause_id"] == PAUSE_ID
    assert event["data"]["links"]["open"].startswith(f"{ORIGIN}/l/")
    assert event["data"]["links"]["run"] == f"{ORIGIN}/runs/{RUN_ID}"


async def test_a_webhook_with_hostile_non_ascii_text_still_verifies() -> None:
    with Receiver("webhook", WEBHOOK_SECRET) as receiver:
        n = make_notification(receiver.url(), run=hostile_run())
        assert (await deliver(n, SETTINGS)).delivered
    [got] = receiver.received
    assert got.problem is None
    assert got.payload["data"]["run"]["brief"]["offer"].startswith("<script>")  # data, not markup


async def test_every_attempt_carries_the_same_id_and_body_and_a_fresh_signature() -> None:
    with Receiver("webhook", WEBHOOK_SECRET) as receiver:
        receiver.script(Reply(500), Reply(503))
        n = make_notification(receiver.url())
        async with make_http_client(SETTINGS) as client:
            results = [
                await deliver(
                    n,
                    SETTINGS,
                    http_client=client,
                    now=datetime.now(timezone.utc) + timedelta(seconds=s),
                )
                for s in (0, 61, 122)
            ]
    assert [r.outcome for r in results] == ["retry", "retry", "delivered"]
    assert [r.status for r in results] == [500, 503, 200]
    ids = {got.headers["webhook-id"] for got in receiver.received}
    bodies = {got.body for got in receiver.received}
    stamps = [got.headers["webhook-timestamp"] for got in receiver.received]
    signatures = {got.headers["webhook-signature"] for got in receiver.received}
    assert ids == {n.id} and len(bodies) == 1
    assert len(set(stamps)) == 3 and len(signatures) == 3
    assert all(got.problem is None for got in receiver.received)


async def test_a_rotated_secret_signs_with_both_keys() -> None:
    old = "whsec_" + "QUFB" * 8
    with Receiver("webhook", old) as receiver:  # the host still has the old secret
        settings = make_settings(webhook_secret=f"{WEBHOOK_SECRET} {old}")
        assert (await deliver(make_notification(receiver.url()), settings)).delivered
    assert receiver.received[0].headers["webhook-signature"].count("v1,") == 2


async def test_a_receiver_with_another_secret_refuses_and_the_attempt_is_retried() -> None:
    with Receiver("webhook", "whsec_" + "QUFB" * 8) as receiver:
        result = await deliver(make_notification(receiver.url()), SETTINGS)
    assert result.outcome == "retry" and result.status == 400
    assert "invalid_payload" in result.reason
    assert receiver.received[0].problem is not None


async def test_a_stale_timestamp_is_refused_by_the_receiver() -> None:
    with Receiver("webhook", WEBHOOK_SECRET) as receiver:
        stale = datetime.now(timezone.utc) - timedelta(minutes=10)
        result = await deliver(make_notification(receiver.url()), SETTINGS, now=stale)
    assert result.outcome == "retry"
    assert "too old" in str(receiver.received[0].problem)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"webhook-signature": "garbage"}, b"{}"),  # ValueError in the reference verifier
        ({"webhook-signature": "v1,abc"}, b"{}"),  # binascii.Error
        ({}, b"\xff\xfe"),  # UnicodeDecodeError, with a valid signature of other bytes
        ({"webhook-id": "other"}, b"{}"),
    ],
)
def test_the_test_receiver_answers_400_to_anything_the_verifier_raises(
    headers: dict[str, str], body: bytes
) -> None:
    """The receiver the tests (and the README's host code) rely on: hostile requests get a
    400, never a 500, whatever the reference verifier raises."""
    with Receiver("webhook", WEBHOOK_SECRET) as receiver:
        timestamp = int(time.time())
        good = {
            "webhook-id": "n1",
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_webhook(webhook_keys(WEBHOOK_SECRET), "n1", timestamp, "{}"),
        }
        response = httpx.post(receiver.url(), content=body, headers={**good, **headers})
        assert response.status_code == 400
        ok = httpx.post(receiver.url(), content=b"{}", headers=good)
        assert ok.status_code == 200


async def test_410_gone_stops_for_good() -> None:
    with Receiver("webhook", WEBHOOK_SECRET) as receiver:
        receiver.script(Reply(410, body=b"endpoint disabled"))
        result = await deliver(make_notification(receiver.url()), SETTINGS)
    assert result.outcome == "permanent" and result.status == 410
    assert "gone" in result.reason and "endpoint disabled" in result.reason


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("30", 30.0),
        ("0", 0.0),
        ("-5", 0.0),
        ("nan", 0.0),
        ("inf", float("inf")),  # kept as said; the schedule ignores it
        ("soon", None),
    ],
)
async def test_429_is_retried_with_its_retry_after(header: str, expected: float | None) -> None:
    with Receiver("webhook", WEBHOOK_SECRET) as receiver:
        receiver.script(Reply(429, headers={"Retry-After": header}))
        result = await deliver(make_notification(receiver.url()), SETTINGS)
    assert result.outcome == "retry" and result.status == 429
    assert result.retry_after == expected


async def test_429_with_an_http_date() -> None:
    when = format_datetime(datetime.now(timezone.utc) + timedelta(minutes=5), usegmt=True)
    with Receiver("webhook", WEBHOOK_SECRET) as receiver:
        receiver.script(Reply(429, headers={"Retry-After": when}))
        result = await deliver(make_notification(receiver.url()), SETTINGS)
    assert result.retry_after is not None and 280 <= result.retry_after <= 301


@pytest.mark.parametrize("status", [500, 502, 503, 504, 400, 401, 404, 413])
async def test_errors_are_retried(status: int) -> None:
    with Receiver("webhook", WEBHOOK_SECRET) as receiver:
        receiver.script(Reply(status, body=b"\x1b[31mnope\r\n\x00" + b"x" * 5000))
        result = await deliver(make_notification(receiver.url()), SETTINGS)
    assert result.outcome == "retry" and result.status == status
    assert result.reason.isprintable() and len(result.reason) <= 300
    assert "\x1b" not in result.reason


async def test_a_redirect_is_not_followed() -> None:
    with Receiver("webhook", WEBHOOK_SECRET) as receiver, Receiver("json") as elsewhere:
        receiver.script(Reply(301, headers={"Location": elsewhere.url()}))
        result = await deliver(make_notification(receiver.url()), SETTINGS)
    assert result.outcome == "retry" and result.status == 301
    assert "redirects are not followed" in result.reason
    assert elsewhere.received == []


async def test_a_slow_receiver_times_out() -> None:
    with Receiver("webhook", WEBHOOK_SECRET) as receiver:
        receiver.script(Reply(200, delay=5))
        started = time.monotonic()
        result = await deliver(make_notification(receiver.url()), make_settings(notify_timeout=0.5))
    assert time.monotonic() - started < 3
    assert result.outcome == "retry" and "did not answer within 0.5 s" in result.reason


async def test_a_receiver_that_drips_its_answer_is_cut_off_at_the_timeout() -> None:
    with Receiver("webhook", WEBHOOK_SECRET) as receiver:
        receiver.script(Reply(500, body=b"x" * 400, drip=0.05))
        started = time.monotonic()
        result = await deliver(make_notification(receiver.url()), make_settings(notify_timeout=1))
    assert time.monotonic() - started < 4
    assert result.outcome == "retry" and "did not answer within 1 s" in result.reason


async def test_a_silent_server_and_a_down_one_are_retried() -> None:
    with silent_server() as port:
        url = f"http://{LOOPBACK}:{port}/hook"
        result = await deliver(make_notification(url), make_settings(notify_timeout=0.5))
    assert result.outcome == "retry" and "0.5 s" in result.reason
    down = f"http://{LOOPBACK}:{free_port()}/hook"
    result = await deliver(make_notification(down), SETTINGS)
    assert result.outcome == "retry" and "ConnectError" in result.reason


async def test_a_failure_never_shows_the_url_token() -> None:
    token = "sEcReTtOkEn42"
    url = f"http://{LOOPBACK}:{free_port()}/hook/{token}?key={token}"
    result = await deliver(make_notification(url), SETTINGS)
    assert result.outcome == "retry" and token not in result.reason
    with Receiver("webhook", WEBHOOK_SECRET) as receiver:
        receiver.script(Reply(500))
        result = await deliver(make_notification(receiver.url(f"/h/{token}")), SETTINGS)
    assert result.outcome == "retry" and token not in result.reason


async def test_without_a_secret_a_webhook_waits_for_one() -> None:
    with Receiver("webhook", WEBHOOK_SECRET) as receiver:
        settings = Settings.resolve(env={}, public_origin=ORIGIN)
        result = await deliver(make_notification(receiver.url()), settings)
    assert result.outcome == "retry" and "COLDMAIL_WEBHOOK_SECRET" in result.reason
    assert receiver.received == []


# -- Slack --------------------------------------------------------------------------------


async def test_slack_gets_its_own_message_shape() -> None:
    with Receiver("slack") as receiver:
        n = make_notification("slack+" + receiver.url("/services/T/B/X"), pause_id=PAUSE_ID)
        result = await deliver(n, SETTINGS, signer=make_signer())
    assert result.delivered
    [got] = receiver.received
    assert got.problem is None and "webhook-signature" not in got.headers
    assert got.payload["text"].startswith("Audience feedback needed")
    assert f"<{ORIGIN}/l/" in json.dumps(got.payload)


async def test_slack_with_hostile_text_and_limits() -> None:
    with Receiver("slack") as receiver:
        n = make_notification("slack+" + receiver.url(), run=hostile_run())
        result = await deliver(n, SETTINGS)
    assert result.delivered, receiver.received[0].problem
    assert "<!channel>" not in receiver.received[0].body.decode()


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (Reply(429, headers={"Retry-After": "12"}, body=b"rate_limited"), "retry"),
        (Reply(404, body=b"no_service"), "retry"),
        (Reply(410, body=b"channel_is_archived"), "permanent"),
    ],
)
async def test_slack_errors(reply: Reply, outcome: str) -> None:
    with Receiver("slack") as receiver:
        receiver.script(reply)
        result = await deliver(make_notification("slack+" + receiver.url()), SETTINGS)
    assert result.outcome == outcome and reply.body.decode() in result.reason
    if reply.status == 429:
        assert result.retry_after == 12


# -- Apprise ------------------------------------------------------------------------------


async def test_apprise_delivers_best_effort() -> None:
    with Receiver("json") as receiver:
        dest = f"json://{LOOPBACK}:{receiver.port}/apprise"
        result = await deliver(make_notification(dest), SETTINGS)
        assert result.delivered
        [got] = receiver.received
        assert got.payload["title"].startswith("[coldmail] Audience feedback needed")
        assert RUN_ID in got.payload["message"]
        # Apprise says only that it failed: no status, no Retry-After.
        receiver.script(Reply(429, headers={"Retry-After": "30"}))
        result = await deliver(make_notification(dest), SETTINGS)
    assert result.outcome == "retry" and result.retry_after is None
    assert "Apprise does not say why" in result.reason


async def test_apprise_to_a_server_that_is_down() -> None:
    dest = f"json://{LOOPBACK}:{free_port()}/apprise"
    result = await deliver(make_notification(dest), SETTINGS)
    assert result.outcome == "retry"


async def test_apprise_slow_server_is_cut_off() -> None:
    with Receiver("json") as receiver:
        receiver.script(Reply(200, delay=5))
        started = time.monotonic()
        dest = f"json://{LOOPBACK}:{receiver.port}/apprise"
        result = await deliver(make_notification(dest), make_settings(notify_timeout=0.5))
    assert time.monotonic() - started < 3
    assert result.outcome == "retry" and "0.5 s" in result.reason
