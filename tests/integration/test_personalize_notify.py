"""A personalization sample's pause is announced like a run's pauses (issue 23): one
``batch.sample_ready`` per destination of the run, queued in the pause's own transaction,
once per sample round, delivered by the outbox's worker to a real webhook receiver and a
real SMTP server on loopback; a worker killed mid-delivery still delivers it; a run that
notifies nobody queues nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bridgic_coldmail import Brief, ColdMailAgent
from bridgic_coldmail.delivery import Worker
from bridgic_coldmail.notify import Notification
from bridgic_coldmail.notify.policy import ANNOUNCED_EVENTS, NotifyPolicy
from bridgic_coldmail.personalize.batch import batch_id_for, read_lead_list
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.store import connect_store
from bridgic_coldmail.store.outbox import sample_pause_key
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import PROCESS_TIMEOUT, Backend, run_cli
from ..notify_servers import LOOPBACK, WEBHOOK_SECRET, MailHandler, Receiver, Reply, smtp_server

FEEDBACK = "finance teams at mid-size manufacturers"
ORIGIN = "https://review.example.com"


def _leads(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "leads.csv"
    rows = ["email,first_name,company", *(f"l{i}@example.com,Ann{i},Acme{i}" for i in range(count))]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


async def _deliver(settings: Settings) -> None:
    store = await connect_store(settings)
    try:
        await Worker(store, settings).run_once()
    finally:
        await store.close()


def _samples(received: list[object]) -> list[dict[str, object]]:
    return [r.payload for r in received if r.payload["type"] == "batch.sample_ready"]  # type: ignore[attr-defined]


async def test_each_sample_round_is_announced_once_to_every_destination(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    leads = _leads(tmp_path, 6)
    handler = MailHandler()
    with Receiver("webhook", WEBHOOK_SECRET) as receiver, smtp_server(handler) as smtp:
        settings = backend.settings(
            webhook_secret=WEBHOOK_SECRET,
            notify_timeout=5,
            smtp_url=f"smtp://{LOOPBACK}:{smtp.port}",
            mail_from="Coldmail <coldmail@example.com>",
            public_origin=ORIGIN,
        )
        async with ColdMailAgent.open(backend.db, settings=settings) as agent:
            run = await agent.start(brief, notify=[receiver.url(), "reviewer@example.com"])
            run_id = run.interaction_id
            await agent.resume(run_id, FEEDBACK)
            await agent.personalize(run_id, leads, sample=3)
            await agent.personalize(run_id, leads, sample=3)  # still waiting: no new round
            await _deliver(settings)
            await _deliver(settings)  # delivered already: never again
            first = _samples(receiver.received)
            assert len(first) == 1
            data = first[0]["data"]
            assert data["sample"] == {  # type: ignore[index]
                "batch_id": batch_id_for(run_id, read_lead_list(leads).digest),
                "round": 1,
                "lines": 3,
                "leads": 6,
                "guidance": [],
            }
            assert data["links"] == {"run": f"{ORIGIN}/runs/{run_id}#lines"}  # type: ignore[index]
            assert all(r.problem is None for r in receiver.received)  # signed, verified
            mails = [m for m in handler.delivered if "Sample of" in m.message["Subject"]]
            assert len(mails) == 1 and mails[0].rcpt_tos == ["reviewer@example.com"]
            body = mails[0].message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
            assert "Sample of 3 first lines ready" in mails[0].message["Subject"]
            assert f"Approve the sample in the inbox: {ORIGIN}/runs/{run_id}#lines" in body

            await agent.guide_sample(run_id, "mention the month-end close")
            await _deliver(settings)
            rounds = [s["data"]["sample"]["round"] for s in _samples(receiver.received)]  # type: ignore[index]
            assert rounds == [1, 2]
            assert _samples(receiver.received)[1]["data"]["sample"]["guidance"] == [  # type: ignore[index]
                "mention the month-end close"
            ]
            await agent.approve_sample(run_id)  # approving announces no sample
            await _deliver(settings)
            listed = await agent.notifications(run_id)
    sample_rows = [d for d in listed if d.event == "batch.sample_ready"]
    assert len(sample_rows) == 4 and {d.status for d in sample_rows} == {"delivered"}
    assert len(_samples(receiver.received)) == 2
    assert len([m for m in handler.delivered if "Sample of" in m.message["Subject"]]) == 2
    # Each round's id is its batch, round and destination: a round is queued once, however
    # often the step that paused it ran (ON CONFLICT on this id).
    batch_id = batch_id_for(run_id, read_lead_list(leads).digest)
    expected = {
        Notification.make_id(run_id, sample_pause_key(batch_id), "batch.sample_ready", n, dest)
        for n in (1, 2)
        for dest in (receiver.url(), "reviewer@example.com")
    }
    assert {d.id for d in sample_rows} == expected


async def test_a_run_that_notifies_nobody_queues_nothing_for_its_sample(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    async with ColdMailAgent.open(backend.db, settings=backend.settings()) as agent:
        run = await agent.start(brief)
        await agent.resume(run.interaction_id, FEEDBACK)
        report = await agent.personalize(run.interaction_id, _leads(tmp_path, 4), sample=2)
        assert report.waiting_for_approval
        await agent.guide_sample(run.interaction_id, "shorter")
    assert backend.rows.notifications() == []


async def test_a_run_whose_events_leave_the_sample_out_is_not_told_of_it(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    with Receiver("webhook", WEBHOOK_SECRET) as receiver:
        settings = backend.settings(webhook_secret=WEBHOOK_SECRET, notify_events=("run.completed",))
        async with ColdMailAgent.open(backend.db, settings=settings) as agent:
            run = await agent.start(brief, notify=[receiver.url()])
            await agent.resume(run.interaction_id, FEEDBACK)
            await agent.personalize(run.interaction_id, _leads(tmp_path, 3), sample=2)
    events = [r["event"] for r in backend.rows.notifications(run.interaction_id)]
    assert events == ["run.completed"]


def test_a_policy_stored_before_sample_notifications_existed_announces_them() -> None:
    """Runs started before ``batch.sample_ready`` stored every event then known: "all"."""
    old = json.dumps({"notify": ["https://h.example/x"], "events": list(ANNOUNCED_EVENTS[:5])})
    assert "batch.sample_ready" in NotifyPolicy.from_json(old).events
    narrowed = json.dumps({"notify": ["https://h.example/x"], "events": ["run.review"]})
    assert NotifyPolicy.from_json(narrowed).events == ("run.review",)


def test_a_run_started_now_with_the_five_older_events_leaves_the_sample_out() -> None:
    """The rule above is for policies stored before the sample event existed: one stored
    now with exactly those five events chose to leave the sample out."""
    chosen = NotifyPolicy(("https://h.example/x",), ANNOUNCED_EVENTS[:5])
    assert NotifyPolicy.from_json(chosen.to_json()).events == ANNOUNCED_EVENTS[:5]
    assert NotifyPolicy.from_json(NotifyPolicy(("https://h.example/x",)).to_json()).events == (
        ANNOUNCED_EVENTS
    )


def test_a_worker_killed_mid_delivery_of_a_sample_delivers_it_after_its_lease(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    leads = _leads(tmp_path, 3)
    with Receiver("webhook", WEBHOOK_SECRET) as receiver:
        env = {
            **os.environ,
            **backend.env,
            "COLDMAIL_DB": backend.db,
            "COLDMAIL_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "COLDMAIL_NOTIFY_TIMEOUT": "2",
            "COLDMAIL_NOTIFY_EVENTS": "batch.sample_ready",
        }
        started = run_cli(
            "start", "--product", "Acme", "--offer", "saves time", "--sender", "Dana",
            "--json", "--notify", receiver.url(), env=env,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        run_id = str(json.loads(started.stdout)["interaction_id"])
        assert run_cli("resume", run_id, "--feedback", FEEDBACK, env=env).returncode == 0
        sampled = run_cli("personalize", run_id, "--leads", str(leads), "--sample", "2", env=env)
        assert sampled.returncode == 0, sampled.stderr
        (row,) = backend.rows.notifications(run_id)  # queued with the pause, nothing else
        assert row["event"] == "batch.sample_ready" and row["status"] == "pending"
        receiver.script(Reply(200, delay=30))  # the first attempt hangs: its worker dies
        worker = subprocess.Popen(
            [str(Path(sys.executable).parent / "coldmail"), "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + PROCESS_TIMEOUT
            while not receiver.received:
                assert time.monotonic() < deadline and worker.poll() is None, "no delivery"
                time.sleep(0.05)
        finally:
            worker.kill()
            worker.wait(10)
        again = run_cli("worker", "--once", env=env)  # still leased to the dead worker
        assert again.returncode == 0, again.stderr
        assert len(receiver.received) == 1
        backend.rows.set_notification(
            row["id"], lease_until=datetime.now(timezone.utc) - timedelta(days=1)
        )
        later = run_cli("worker", "--once", env=env)
        assert later.returncode == 0, later.stderr
        first, second = receiver.received
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == row["id"]
        assert second.answered == 200 and second.problem is None
        assert second.payload["type"] == "batch.sample_ready"
        (done,) = backend.rows.notifications(run_id)
        assert (done["status"], done["attempts"]) == ("delivered", 2)
        assert run_cli("worker", "--once", env=env).returncode == 0
        assert len(receiver.received) == 2  # delivered: never sent again
