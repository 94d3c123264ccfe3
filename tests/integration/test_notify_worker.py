"""The outbox's worker, delivering to real receivers on loopback: an HTTP receiver that
verifies every Standard Webhooks signature with the reference library, and an SMTP server
(aiosmtpd). Receivers that fail then succeed, hang, answer 410; workers killed mid-delivery
and restarted, stopped with SIGTERM, racing each other; ``coldmail serve`` with its worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bridgic_coldmail import Brief, ColdMailAgent, EmailSequence
from bridgic_coldmail.delivery import Worker
from bridgic_coldmail.notify.policy import NotifyPolicy
from bridgic_coldmail.notify.schedule import RetrySchedule
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.store import NewRun, RunStore, connect_store
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import Backend, Completed, run_cli
from ..notify_servers import (
    LOOPBACK,
    WEBHOOK_SECRET,
    MailHandler,
    Receiver,
    Reply,
    free_port,
    smtp_server,
)
from ..rows import SqliteRows

FAST = RetrySchedule(delays=(0.2, 0.2, 0.2), jitter=0)
"""Retries a test can wait for."""
BRIEF = Brief(product="Acme Scheduler", offer="cuts no-shows by 30%", sender="Dana Lee")


def _sequence(tag: str) -> EmailSequence:
    return EmailSequence.model_validate(
        {
            "opener": {"subject": f"Opener {tag}", "body": f"Hi,\n\n{tag}\n\nDana", "wait_days": 0},
            "follow_up": {"subject": f"Again {tag}", "body": "Hi again", "wait_days": 3},
        }
    )


def _new(*destinations: str) -> NewRun:
    return NewRun(
        interaction_id=uuid.uuid4().hex,
        brief=BRIEF,
        draft=_sequence("draft"),
        question="Who is this for?",
        snapshot=b"snapshot bytes " + uuid.uuid4().bytes,
        serialization_version="1.0",
        notify=NotifyPolicy(destinations),
    )


@pytest.fixture
def settings(backend: Backend) -> Settings:
    return backend.settings(
        webhook_secret=WEBHOOK_SECRET,
        notify_timeout=1,
        public_origin="https://review.example.com",
    )


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[RunStore]:
    opened = await connect_store(settings)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver("webhook", WEBHOOK_SECRET) as started:
        yield started


def _worker(store: RunStore, settings: Settings, **options: object) -> Worker:
    return Worker(store, settings, schedule=FAST, **options)  # type: ignore[arg-type]


async def _until(check: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- in process


async def test_a_receiver_that_fails_then_succeeds_gets_it_with_the_same_id(
    store: RunStore, settings: Settings, receiver: Receiver
) -> None:
    receiver.script(Reply(503, body=b"down for maintenance"), Reply(500))
    run = await store.insert_paused(_new(receiver.url()))
    worker = _worker(store, settings)
    for _ in range(3):
        await worker.run_once()
        await asyncio.sleep(0.25)
    assert [r.answered for r in receiver.received] == [503, 500, 200]
    assert all(r.problem is None for r in receiver.received)  # every attempt verified
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
    event = receiver.received[-1].payload
    assert event["type"] == "run.paused"
    assert event["data"]["run"]["interaction_id"] == run.interaction_id
    assert event["data"]["links"]["open"].startswith("https://review.example.com/l/")
    (delivery,) = await store.notifications(run.interaction_id)
    assert (delivery.status, delivery.attempts) == ("delivered", 3)
    assert "HTTP 500" in (delivery.last_error or "")
    await worker.run_once()
    assert len(receiver.received) == 3  # delivered: never again


async def test_a_hanging_receiver_is_cut_off_and_tried_again(
    store: RunStore, settings: Settings, receiver: Receiver
) -> None:
    receiver.script(Reply(200, delay=4))
    run = await store.insert_paused(_new(receiver.url()))
    started = time.monotonic()
    await _worker(store, settings).run_once()
    assert time.monotonic() - started < 3.5  # COLDMAIL_NOTIFY_TIMEOUT=1, as a whole
    (delivery,) = await store.notifications(run.interaction_id)
    assert delivery.status == "pending" and delivery.attempts == 1
    assert "did not answer within 1 s" in (delivery.last_error or "")
    await asyncio.sleep(0.3)
    await _worker(store, settings).run_once()
    (delivery,) = await store.notifications(run.interaction_id)
    assert delivery.status == "delivered" and delivery.attempts == 2


async def test_410_stops_at_once_and_a_person_can_retry_it(
    store: RunStore, settings: Settings, receiver: Receiver
) -> None:
    receiver.script(Reply(410))
    run = await store.insert_paused(_new(receiver.url()))
    worker = _worker(store, settings)
    await worker.run_once()
    await asyncio.sleep(0.3)
    await worker.run_once()
    assert len(receiver.received) == 1
    (failed,) = await store.notifications(run.interaction_id)
    assert failed.status == "failed" and "410" in (failed.last_error or "")
    assert worker.stats.failed == 1

    await store.retry_notification(failed.id)
    await worker.run_once()
    (delivered,) = await store.notifications(run.interaction_id)
    assert delivered.status == "delivered"
    assert [r.headers["webhook-id"] for r in receiver.received] == [failed.id, failed.id]


async def test_after_the_last_attempt_it_is_kept_as_failed(
    store: RunStore, settings: Settings, receiver: Receiver
) -> None:
    receiver.script(*[Reply(503)] * 10)
    run = await store.insert_paused(_new(receiver.url()))
    worker = Worker(store, settings, schedule=RetrySchedule(delays=(0.1,), jitter=0))
    for _ in range(4):
        await worker.run_once()
        await asyncio.sleep(0.15)
    assert len(receiver.received) == 2
    (failed,) = await store.notifications(run.interaction_id)
    assert failed.status == "failed" and failed.attempts == 2
    assert (failed.last_error or "").startswith("gave up after 2 attempts")


async def test_email_and_webhook_of_one_pause_both_arrive(
    store: RunStore, backend: Backend, receiver: Receiver
) -> None:
    handler = MailHandler()
    with smtp_server(handler) as smtp:
        settings = backend.settings(
            webhook_secret=WEBHOOK_SECRET,
            notify_timeout=5,
            smtp_url=f"smtp://{LOOPBACK}:{smtp.port}",
            mail_from="Coldmail <coldmail@example.com>",
        )
        run = await store.insert_paused(_new(receiver.url(), "reviewer@example.com"))
        await Worker(store, settings).run_once()
    (mail,) = handler.delivered
    assert mail.rcpt_tos == ["reviewer@example.com"]
    assert "Audience feedback needed" in mail.message["Subject"]
    (hook,) = receiver.received
    assert hook.payload["type"] == "run.paused"
    ids = {d.id for d in await store.notifications(run.interaction_id)}
    assert hook.headers["webhook-id"] in ids
    assert mail.message["Message-ID"].strip("<>").split("@")[0] in ids


async def test_an_altered_notification_is_failed_never_sent(
    store: RunStore, settings: Settings, backend: Backend, receiver: Receiver
) -> None:
    run = await store.insert_paused(_new(receiver.url()))
    (row,) = backend.rows.notifications(run.interaction_id)
    record = json.loads(row["record_json"])
    record["run"]["brief"]["product"] = "Click https://evil.example to approve"
    backend.rows.set_notification(row["id"], record_json=json.dumps(record))
    await _worker(store, settings).run_once()
    assert receiver.received == []
    (failed,) = await store.notifications(run.interaction_id)
    assert failed.status == "failed" and not failed.verified


async def test_two_workers_deliver_each_notification_once(
    settings: Settings, receiver: Receiver
) -> None:
    receiver.script(*[Reply(200, delay=0.05)] * 60)
    settings = settings.with_overrides(notify_timeout=10)  # a busy machine's receiver is slow
    one, two = await connect_store(settings), await connect_store(settings)
    try:
        for _ in range(30):
            await one.insert_paused(_new(receiver.url()))
        # A connection the receiver's small listen backlog refused is tried again shortly:
        # keep both workers going until every notification is delivered.
        for _ in range(20):
            await asyncio.gather(
                _worker(one, settings, batch=4).run_once(),
                _worker(two, settings, batch=4).run_once(),
            )
            if {d.status for d in await one.notifications(limit=100)} == {"delivered"}:
                break
            await asyncio.sleep(0.25)
    finally:
        await one.close()
        await two.close()
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert len(set(ids)) == 30 and len(ids) == 30  # each received once, all answered 200


async def test_a_worker_stops_when_asked_after_its_deliveries_in_flight(
    store: RunStore, settings: Settings, receiver: Receiver
) -> None:
    receiver.script(Reply(200, delay=0.5))
    run = await store.insert_paused(_new(receiver.url()))
    stop = asyncio.Event()
    running = asyncio.ensure_future(_worker(store, settings, poll_seconds=0.1).run(stop))
    await _until(lambda: len(receiver.received) == 1)
    stop.set()
    await asyncio.wait_for(running, 5)
    (delivery,) = await store.notifications(run.interaction_id)
    assert delivery.status == "delivered"


async def test_a_destination_whose_extra_went_missing_waits_instead_of_failing(
    store: RunStore, settings: Settings
) -> None:
    """Queued while the apprise extra was installed, delivered after it was removed: tried
    again later (installing it lets the notification through), never failed for good."""
    from unittest import mock

    from bridgic_coldmail.errors import ConfigurationError

    pytest.importorskip("apprise")
    run = await store.insert_paused(_new("json://127.0.0.1:9/hook"))

    def missing(url: str) -> str:
        raise ConfigurationError("the destination json://… needs the apprise extra")

    with mock.patch("bridgic_coldmail.notify.destinations._apprise_url", missing):
        await _worker(store, settings).run_once()
    (waiting,) = await store.notifications(run.interaction_id)
    assert waiting.status == "pending" and "apprise extra" in (waiting.last_error or "")


# --------------------------------------------------------------------------- the whole path


async def test_a_run_announces_each_pause_and_its_end_to_its_reviewer(
    server: ScriptedOpenAIServer, db_path: Path, receiver: Receiver
) -> None:
    settings = Settings.resolve(db=str(db_path), webhook_secret=WEBHOOK_SECRET, notify_timeout=2)
    async with ColdMailAgent.open(settings=settings) as agent:
        run = await agent.start(BRIEF, review=True, notify=[receiver.url()])
        await agent.resume(run.interaction_id, "CTOs at mid-size clinics")
        await agent.approve(run.interaction_id, reviewer="Ana")
        store = await connect_store(settings)
        try:
            await Worker(store, settings).run_once()
        finally:
            await store.close()
        listed = await agent.notifications(run.interaction_id)
    events = [r.payload["type"] for r in receiver.received]
    assert sorted(events) == ["run.completed", "run.paused", "run.review"]
    review = next(r.payload for r in receiver.received if r.payload["type"] == "run.review")
    assert review["data"]["run"]["round"] == 1 and review["data"]["run"]["sequence"]
    assert {d.status for d in listed} == {"delivered"}


async def test_bad_destinations_are_refused_before_the_llm_is_called(
    server: ScriptedOpenAIServer, db_path: Path
) -> None:
    from bridgic_coldmail.errors import ConfigurationError, InvalidInput

    async with ColdMailAgent.open(db_path) as agent:
        with pytest.raises(InvalidInput, match="not an email address"):
            await agent.start(BRIEF, notify=["nobody"])
        with pytest.raises(ConfigurationError, match="COLDMAIL_WEBHOOK_SECRET"):
            await agent.start(BRIEF, notify=["https://hooks.example.com/x?token=abc"])
        with pytest.raises(InvalidInput, match="at most 20"):
            await agent.start(BRIEF, notify=[f"r{i}@example.com" for i in range(21)])
    assert server.count() == 0
    assert not db_path.exists()


# --------------------------------------------------------------------------- processes


def _cli_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        "COLDMAIL_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "COLDMAIL_NOTIFY_TIMEOUT": "2",
        **extra,
    }


def _spawn_worker(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    coldmail = str(Path(sys.executable).parent / "coldmail")
    return subprocess.Popen(
        [coldmail, "worker", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def _start(env: dict[str, str], *notify: str) -> str:
    flags = [item for dest in notify for item in ("--notify", dest)]
    started = run_cli(
        "start", "--product", "Acme", "--offer", "saves time", "--sender", "Dana",
        "--json", *flags, env=env,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    return str(json.loads(started.stdout)["interaction_id"])


@pytest.mark.slow  # waits out a lease
def test_a_worker_killed_mid_delivery_delivers_after_its_lease_ends(
    server: ScriptedOpenAIServer, db_path: Path
) -> None:
    with Receiver("webhook", WEBHOOK_SECRET) as receiver:
        receiver.script(Reply(200, delay=30))  # the first attempt hangs: the worker dies
        env = _cli_env(receiver)
        run_id = _start(env, receiver.url())
        worker = _spawn_worker(env)
        try:
            deadline = time.monotonic() + 60
            while not receiver.received:
                assert time.monotonic() < deadline and worker.poll() is None, worker.stderr
                time.sleep(0.05)
        finally:
            worker.kill()
            worker.wait(10)
        # Restarted at once: the notification is still leased to the dead worker.
        again = run_cli("worker", "--once", env=env)
        assert again.returncode == 0, again.stderr
        assert len(receiver.received) == 1
        # Its lease ends (as the clock would make it): the next worker delivers it.
        rows = SqliteRows(db_path)
        (row,) = rows.notifications(run_id)
        rows.set_notification(row["id"], lease_until=datetime.now(timezone.utc) - timedelta(1))
        later = run_cli("worker", "--once", env=env)
        assert later.returncode == 0, later.stderr
        assert "1 delivered" in later.stdout
        first, second = receiver.received
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == row["id"]
        assert second.answered == 200 and second.problem is None
        listed = run_cli("notifications", run_id, "--json", env=env)
        (delivery,) = json.loads(listed.stdout)
        assert (delivery["status"], delivery["attempts"]) == ("delivered", 2)


@pytest.mark.slow  # a child process and a slow receiver
def test_sigterm_lets_the_delivery_in_flight_finish(
    server: ScriptedOpenAIServer, db_path: Path
) -> None:
    with Receiver("webhook", WEBHOOK_SECRET) as receiver:
        receiver.script(Reply(200, delay=1.0))
        env = _cli_env(receiver)
        run_id = _start(env, receiver.url())
        worker = _spawn_worker(env)
        deadline = time.monotonic() + 60
        while not receiver.received:
            assert time.monotonic() < deadline and worker.poll() is None
            time.sleep(0.02)
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err
        assert "delivered" in out
        (row,) = SqliteRows(db_path).notifications(run_id)
        assert row["status"] == "delivered" and row["lease_token"] is None


def test_the_cli_lists_retries_and_shows_deliveries_without_secrets(
    server: ScriptedOpenAIServer, db_path: Path, cli: Callable[..., Completed]
) -> None:
    with Receiver("webhook", WEBHOOK_SECRET) as receiver:
        receiver.script(Reply(410))
        env = _cli_env(receiver)
        secret_url = receiver.url("/hook?token=very-secret-token")
        run_id = _start(env, secret_url)
        assert cli("worker", "--once", env=env).returncode == 0
        listed = cli("notifications", env=env)
        assert listed.returncode == 0, listed.stderr
        assert "failed" in listed.stdout and "run.paused" in listed.stdout
        assert "very-secret-token" not in listed.stdout
        (delivery,) = json.loads(cli("notifications", run_id, "--json", env=env).stdout)
        shown = cli("show", run_id, env=env)
        assert "NOTIFICATIONS" in shown.stdout and delivery["id"] in shown.stdout
        assert "very-secret-token" not in shown.stdout

        retried = cli("notifications", "retry", delivery["id"], env=env)
        assert retried.returncode == 0 and "Queued again" in retried.stdout
        assert cli("worker", "--once", env=env).returncode == 0
        assert [r.answered for r in receiver.received] == [410, 200]
        again = cli("notifications", "retry", delivery["id"], env=env)
        assert "Only a failed notification" in again.stdout

        missing = cli("notifications", "retry", "no-such-id", env=env)
        assert missing.returncode == 2 and "no notification no-such-id" in missing.stderr
        bad = cli("notifications", "retry", "../../etc", env=env)
        assert bad.returncode == 2


def test_start_refuses_a_bad_destination_before_anything_is_stored(
    server: ScriptedOpenAIServer, db_path: Path, cli: Callable[..., Completed]
) -> None:
    refused = cli(
        "start", "--product", "Acme", "--offer", "x", "--sender", "Dana",
        "--notify", "https://hooks.example.com/x?token=abc",
    )  # fmt: skip
    assert refused.returncode == 7 and "COLDMAIL_WEBHOOK_SECRET" in refused.stderr
    assert "token=abc" not in refused.stderr
    bad = cli("start", "--product", "A", "--offer", "x", "--sender", "D", "--notify", "nobody")
    assert bad.returncode == 2 and "not an email address" in bad.stderr
    assert not db_path.exists()
    assert server.count("draft") == 0


@pytest.mark.slow  # coldmail serve, twice
def test_serve_delivers_from_its_own_worker_unless_told_not_to(
    server: ScriptedOpenAIServer, db_path: Path
) -> None:
    pytest.importorskip("uvicorn", reason="coldmail serve needs the web extra")
    with Receiver("webhook", WEBHOOK_SECRET) as receiver:
        env = _cli_env(receiver)
        coldmail = str(Path(sys.executable).parent / "coldmail")
        for flags, expected in (([], 1), (["--no-worker"], 0)):
            before = len(receiver.received)
            serving = subprocess.Popen(
                [coldmail, "serve", "--port", str(free_port()), *flags],
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                _start(env, receiver.url())
                deadline = time.monotonic() + (20 if expected else 5)
                while len(receiver.received) - before < expected or not expected:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
            finally:
                serving.send_signal(signal.SIGINT)
                serving.communicate(timeout=30)
            assert len(receiver.received) - before == expected, (flags, serving.returncode)
        # What the --no-worker server left is delivered by a worker.
        assert run_cli("worker", "--once", env=env).returncode == 0
        assert len(receiver.received) == 2


def test_coldmail_notify_events_narrows_what_a_run_announces() -> None:
    from bridgic_coldmail.errors import ConfigurationError
    from bridgic_coldmail.notify.policy import notify_policy

    with pytest.raises(ConfigurationError, match="unknown event 'run.pause'"):
        Settings.resolve(env={"COLDMAIL_NOTIFY_EVENTS": "run.pause"})
    env = {"COLDMAIL_WEBHOOK_SECRET": WEBHOOK_SECRET}
    narrowed = Settings.resolve(env={**env, "COLDMAIL_NOTIFY_EVENTS": "run.review, run.failed"})
    policy = notify_policy(narrowed, ["https://hooks.example.com/x"])
    assert policy is not None and policy.events == ("run.review", "run.failed")
    every = notify_policy(Settings.resolve(env=env), "https://hooks.example.com/x")
    assert every is not None and len(every.events) == 6
    assert notify_policy(Settings.resolve(env=env), []) is None


async def test_the_json_api_starts_lists_and_retries_notifications(
    server: ScriptedOpenAIServer, db_path: Path, receiver: Receiver
) -> None:
    from .test_web import settings_for, web_client

    settings = settings_for(db_path, webhook_secret=WEBHOOK_SECRET, notify_timeout=2)
    receiver.script(Reply(410))
    hook = receiver.url("/hook?token=api-secret")
    async with web_client(settings) as client:
        bad = await client.post(
            "/api/runs", json={"product": "A", "offer": "x", "sender": "D", "notify": ["nobody"]}
        )
        assert bad.status_code == 422 and "not an email address" in bad.text
        assert server.count() == 0
        made = await client.post(
            "/api/runs", json={"product": "A", "offer": "x", "sender": "D", "notify": [hook]}
        )
        assert made.status_code == 201, made.text
        run_id = made.json()["interaction_id"]
        store = await connect_store(settings)
        try:
            await Worker(store, settings).run_once()
        finally:
            await store.close()
        listed = await client.get(f"/api/runs/{run_id}/notifications")
        assert listed.status_code == 200
        (delivery,) = listed.json()
        assert delivery["status"] == "failed" and delivery["event"] == "run.paused"
        assert "api-secret" not in listed.text
        retried = await client.post(f"/api/notifications/{delivery['id']}/retry")
        assert retried.status_code == 200 and retried.json()["status"] == "pending"
        missing = await client.post("/api/notifications/nope/retry")
        assert missing.status_code == 422
        unknown = await client.get("/api/runs/" + "f" * 32 + "/notifications")
        assert unknown.status_code == 404


async def test_a_worker_waits_out_a_locked_store_and_then_delivers(
    db_path: Path, receiver: Receiver
) -> None:
    """SQLite held by another process longer than the busy timeout: the long-running worker
    says so, keeps going, and delivers once the lock is released."""
    settings = Settings.resolve(
        db=str(db_path), webhook_secret=WEBHOOK_SECRET, notify_timeout=2, busy_timeout=0.2
    )
    store = await connect_store(settings)
    lines: list[str] = []
    try:
        await store.insert_paused(_new(receiver.url()))
        stop = asyncio.Event()
        worker = _worker(store, settings, poll_seconds=0.1, report=lines.append)
        with SqliteRows(db_path).lock():
            running = asyncio.ensure_future(worker.run(stop))
            await _until(lambda: any("out of reach" in line for line in lines))
            assert receiver.received == []
        await _until(lambda: len(receiver.received) == 1)
        await _until(lambda: worker.stats.delivered == 1)
        stop.set()
        await asyncio.wait_for(running, 10)
    finally:
        await store.close()


def test_a_worker_on_a_database_not_created_yet_creates_nothing(db_path: Path) -> None:
    done = run_cli("worker", "--once")
    assert done.returncode == 0, done.stderr
    assert "0 delivered" in done.stdout
    assert not db_path.exists()
