"""Deadlines and reminders, on both backends, with the real worker, the scripted LLM server
and a real webhook receiver that verifies every Standard Webhooks signature.

Each pause gets its own deadline, counted from when it paused; the worker applies the
declared outcome through the same claim as a person's answer, exactly once however many
workers fire it, and a person who answers first wins. Durations are real (one to a few
seconds): nothing here fakes the clock.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from bridgic_coldmail import Brief, ColdMailAgent
from bridgic_coldmail.delivery import Worker, timed_worker
from bridgic_coldmail.errors import InvalidInput, RunConflict
from bridgic_coldmail.models import DEADLINE_ACTOR, RunStatus
from bridgic_coldmail.notify.policy import parse_duration
from bridgic_coldmail.notify.schedule import RetrySchedule
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.store import RunStore, connect_store
from bridgic_coldmail.store.outbox import TIMER_DESTINATION
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import Backend, run_cli
from ..notify_servers import WEBHOOK_SECRET, Receiver

BRIEF = Brief(
    product="Acme Scheduler",
    offer="cuts patient no-shows by 30% with two-way SMS reminders",
    sender="Dana Lee",
    audience="practice managers at dental clinics",
)
FAST = RetrySchedule(delays=(0.2, 0.2, 0.2), jitter=0)


@pytest.fixture
def settings(backend: Backend, server: ScriptedOpenAIServer) -> Settings:
    return backend.settings(webhook_secret=WEBHOOK_SECRET, notify_timeout=2)


@pytest.fixture
async def agent(settings: Settings) -> AsyncIterator[ColdMailAgent]:
    async with ColdMailAgent.open(settings=settings) as opened:
        yield opened


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


async def _work(store: RunStore, settings: Settings) -> Worker:
    """One pass of a worker that applies deadlines (``coldmail worker --once``)."""
    worker, runner = timed_worker(store, settings, report=None)
    worker.schedule = FAST
    try:
        await worker.run_once()
    finally:
        await runner.aclose()
    return worker


async def _past(moment: datetime) -> None:
    left = (moment - datetime.now(timezone.utc)).total_seconds()
    await asyncio.sleep(max(0.0, left) + 0.05)


def _timers(backend: Backend, run_id: str) -> list[dict[str, Any]]:
    return [r for r in backend.rows.notifications(run_id) if r["destination"] == TIMER_DESTINATION]


def _due(row: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(json.loads(row["record_json"])["due_at"])


def _events(receiver: Receiver) -> list[str]:
    return [r.payload["type"] for r in receiver.received]


async def _until(check: Callable[[], bool], seconds: float = 20) -> None:
    limit = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < limit, "timed out"
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- the outcomes


async def test_proceed_at_the_audience_question_refines_with_the_briefs_own_guess(
    agent: ColdMailAgent,
    store: RunStore,
    settings: Settings,
    backend: Backend,
    server: ScriptedOpenAIServer,
    receiver: Receiver,
) -> None:
    run = await agent.start(
        BRIEF, review=True, notify=[receiver.url()], respond_within="1s", on_timeout="proceed"
    )
    (deadline,) = _timers(backend, run.interaction_id)
    assert deadline["event"] == "run.deadline"
    await _work(store, settings)  # not due yet: nothing happens
    assert (await agent.get(run.interaction_id)).status is RunStatus.AWAITING_FEEDBACK
    await _past(_due(deadline))
    calls = server.count()
    await _work(store, settings)

    after = await agent.get(run.interaction_id)
    assert after.status is RunStatus.AWAITING_REVIEW and after.round == 1
    assert after.feedback == BRIEF.audience  # the refinement used the brief's guess
    assert server.count() == calls + 1  # one refinement call
    refine = server.requests[-1].user_text
    assert "practice managers at dental clinics" in refine
    history = await agent.history(run.interaction_id)
    answered = [e for e in history if e.kind == "feedback"]
    assert [e.actor for e in answered] == [DEADLINE_ACTOR]
    # The review round that followed has a fresh deadline of its own.
    review_deadline = [
        t
        for t in _timers(backend, run.interaction_id)
        if t["status"] == "pending" and t["event"] == "run.deadline"
    ]
    assert len(review_deadline) == 1
    assert _due(review_deadline[0]) > _due(deadline)
    await Worker(store, settings).run_once()
    await _until(lambda: "run.deadline" in _events(receiver))
    told = next(r.payload for r in receiver.received if r.payload["type"] == "run.deadline")
    assert told["data"]["on_timeout"] == "proceed"
    assert "run.review" in _events(receiver)


async def test_proceed_at_a_review_round_approves_what_is_under_review(
    agent: ColdMailAgent, store: RunStore, settings: Settings, backend: Backend
) -> None:
    run = await agent.start(BRIEF, review=True, respond_within="1s", on_timeout="proceed")
    run = await agent.resume(run.interaction_id, "CFOs of mid-size clinics")  # a person answers
    assert run.status is RunStatus.AWAITING_REVIEW
    pending = [t for t in _timers(backend, run.interaction_id) if t["status"] == "pending"]
    await _past(max(_due(t) for t in pending))
    await _work(store, settings)
    done = await agent.get(run.interaction_id)
    assert done.status is RunStatus.COMPLETED
    assert done.final == run.sequence
    assert done.feedback == "CFOs of mid-size clinics"  # the person's answer stands
    approved = [e for e in await agent.history(run.interaction_id) if e.kind == "approved"]
    assert [(e.actor, e.round) for e in approved] == [(DEADLINE_ACTOR, 1)]
    # The audience question's deadline, answered by the person first, did nothing.
    first = [t for t in _timers(backend, run.interaction_id) if t["event"] == "run.deadline"]
    notes = {t["last_error"] for t in first}
    assert any(n and "answered before it fell due" in n for n in notes)


@pytest.mark.parametrize("at_review", [False, True])
async def test_reject_ends_the_run_saying_the_deadline_did(
    agent: ColdMailAgent, store: RunStore, settings: Settings, backend: Backend, at_review: bool
) -> None:
    run = await agent.start(BRIEF, review=True, respond_within="1s", on_timeout="reject")
    if at_review:
        run = await agent.resume(run.interaction_id, "CFOs of mid-size clinics")
    pending = [t for t in _timers(backend, run.interaction_id) if t["status"] == "pending"]
    await _past(max(_due(t) for t in pending))
    await _work(store, settings)
    done = await agent.get(run.interaction_id)
    assert done.status is RunStatus.REJECTED
    assert done.rejection and "deadline" in done.rejection
    rejected = [e for e in await agent.history(run.interaction_id) if e.kind == "rejected"]
    assert [e.actor for e in rejected] == [DEADLINE_ACTOR]
    # A person answering afterwards is told what the deadline did.
    with pytest.raises(RunConflict) as refused:
        if at_review:
            await agent.approve(run.interaction_id, reviewer="Ana")
        else:
            await agent.resume(run.interaction_id, "CTOs")
    assert "deadline" in str(refused.value)


async def test_wait_keeps_waiting_and_escalates(
    agent: ColdMailAgent, store: RunStore, settings: Settings, backend: Backend
) -> None:
    with (
        Receiver("webhook", WEBHOOK_SECRET) as reviewer,
        Receiver("webhook", WEBHOOK_SECRET) as manager,
    ):
        run = await agent.start(
            BRIEF,
            notify=[reviewer.url()],
            respond_within="1s",
            escalate_to=[manager.url()],
        )
        (deadline,) = _timers(backend, run.interaction_id)
        await _past(_due(deadline))
        await _work(store, settings)
        await _work(store, settings)  # a second pass sends nothing twice
        await _until(lambda: "run.escalated" in _events(manager))
        assert (await agent.get(run.interaction_id)).status is RunStatus.AWAITING_FEEDBACK
        assert sorted(_events(reviewer)) == ["run.deadline", "run.paused"]
        assert _events(manager) == ["run.escalated"]
        escalated = manager.received[0].payload["data"]
        assert escalated["run"]["interaction_id"] == run.interaction_id
        # The run still waits, and a person can still answer it.
        answered = await agent.resume(run.interaction_id, "CTOs at clinics")
        assert answered.status is RunStatus.COMPLETED


async def test_escalating_to_a_destination_the_run_notifies_sends_it_one_message(
    agent: ColdMailAgent, store: RunStore, settings: Settings, backend: Backend
) -> None:
    """The run's own destinations hear of the deadline (``run.deadline``, which names who
    it was escalated to); a destination that is also in ``escalate_to`` is not told twice."""
    with (
        Receiver("webhook", WEBHOOK_SECRET) as reviewer,
        Receiver("webhook", WEBHOOK_SECRET) as manager,
    ):
        run = await agent.start(
            BRIEF,
            notify=[reviewer.url()],
            respond_within="1s",
            escalate_to=[manager.url(), reviewer.url()],
        )
        (deadline,) = _timers(backend, run.interaction_id)
        await _past(_due(deadline))
        await _work(store, settings)
        await _until(lambda: "run.escalated" in _events(manager))
        await _until(lambda: "run.deadline" in _events(reviewer))
        await _work(store, settings)
        assert sorted(_events(reviewer)) == ["run.deadline", "run.paused"]
        assert _events(manager) == ["run.escalated"]


@pytest.mark.slow  # reminders seconds apart
async def test_reminders_come_before_the_deadline_and_stop_when_answered(
    agent: ColdMailAgent, store: RunStore, settings: Settings, backend: Backend
) -> None:
    with Receiver("webhook", WEBHOOK_SECRET) as reviewer:
        run = await agent.start(
            BRIEF, notify=[reviewer.url()], respond_within="1h", remind_every="1s"
        )
        for n in (1, 2):
            due = [
                t
                for t in _timers(backend, run.interaction_id)
                if t["event"] == "run.reminder" and t["status"] == "pending"
            ]
            assert len(due) == 1, due  # one reminder planned at a time
            await _past(_due(due[0]))
            await _work(store, settings)
            await _until(lambda n=n: _events(reviewer).count("run.reminder") == n)
        reminders = [r.payload for r in reviewer.received if r.payload["type"] == "run.reminder"]
        assert [r["data"]["reminder"] for r in reminders] == [1, 2]
        assert all(r["data"]["deadline"] for r in reminders)
        await agent.resume(run.interaction_id, "CTOs at clinics")  # completes the run
        await asyncio.sleep(1.2)
        await _work(store, settings)
        assert _events(reviewer).count("run.reminder") == 2  # none after the answer
        (third,) = [
            t
            for t in _timers(backend, run.interaction_id)
            if t["event"] == "run.reminder" and _due(t) > _due(due[0])
        ]
        assert third["status"] == "delivered" and "answered" in third["last_error"]


# --------------------------------------------------------------------------- races


async def test_two_workers_racing_on_one_deadline_apply_it_once(
    agent: ColdMailAgent, settings: Settings, backend: Backend, server: ScriptedOpenAIServer
) -> None:
    runs = [
        await agent.start(BRIEF, review=True, respond_within="1s", on_timeout="proceed")
        for _ in range(4)
    ]
    await asyncio.sleep(1.2)
    calls = server.count()
    stores = [await connect_store(settings) for _ in range(2)]
    try:
        workers = [timed_worker(s, settings) for s in stores]
        await asyncio.gather(*(w.run_once() for w, _ in workers))
        for _, runner in workers:
            await runner.aclose()
    finally:
        for s in stores:
            await s.close()
    assert server.count() == calls + len(runs)  # one refinement per run, never two
    for run in runs:
        after = await agent.get(run.interaction_id)
        assert after.status is RunStatus.AWAITING_REVIEW
        answered = [e for e in await agent.history(run.interaction_id) if e.kind == "feedback"]
        assert len(answered) == 1


async def test_a_person_who_answers_first_wins_and_the_deadline_does_nothing(
    agent: ColdMailAgent, store: RunStore, settings: Settings, backend: Backend
) -> None:
    run = await agent.start(BRIEF, review=True, respond_within="1s", on_timeout="reject")
    (deadline,) = _timers(backend, run.interaction_id)
    await _past(_due(deadline))
    # The person's answer lands after the deadline fell due but before a worker fired it.
    answered = await agent.resume(run.interaction_id, "CTOs at clinics")
    await _work(store, settings)
    after = await agent.get(run.interaction_id)
    assert after.status is RunStatus.AWAITING_REVIEW
    assert after.round == answered.round == 1
    history = await agent.history(run.interaction_id)
    assert not [e for e in history if e.actor == DEADLINE_ACTOR]


@pytest.mark.parametrize("attempt", range(4))
async def test_a_person_racing_the_deadline_either_wins_or_is_told_what_the_deadline_did(
    agent: ColdMailAgent, store: RunStore, settings: Settings, backend: Backend, attempt: int
) -> None:
    """The person's answer and the worker start together; exactly one of them takes the
    pause, and the other does nothing (the deadline) or is told (the person)."""
    run = await agent.start(BRIEF, respond_within="1s", on_timeout="reject")
    (deadline,) = _timers(backend, run.interaction_id)
    await _past(_due(deadline))
    answering = agent.resume(run.interaction_id, "CTOs at clinics")
    firing = _work(store, settings)
    if attempt % 2:  # the worker's task starts first
        _, person = await asyncio.gather(firing, answering, return_exceptions=True)
    else:
        person, _ = await asyncio.gather(answering, firing, return_exceptions=True)
    after = await agent.get(run.interaction_id)
    by_deadline = [e for e in await agent.history(run.interaction_id) if e.actor == DEADLINE_ACTOR]
    if isinstance(person, BaseException):
        assert isinstance(person, RunConflict) and "deadline" in str(person), person
        assert after.status is RunStatus.REJECTED and len(by_deadline) == 1
    else:
        assert after.status is RunStatus.COMPLETED and not by_deadline
        assert after.feedback == "CTOs at clinics"
    (fired,) = _timers(backend, run.interaction_id)
    if fired["status"] == "pending":  # it found the person answering: it looks again later
        assert fired["last_error"] == "someone is answering right now"
        backend.rows.set_notification(fired["id"], next_attempt_at=datetime.now(timezone.utc))
        await _work(store, settings)
        (fired,) = _timers(backend, run.interaction_id)
        assert "answered before it fell due" in fired["last_error"]
    assert fired["status"] == "delivered"


async def test_a_deadline_waits_for_a_live_resumer_and_not_for_a_dead_one(
    agent: ColdMailAgent, store: RunStore, settings: Settings, backend: Backend
) -> None:
    """A resumer holds the run (its process then dies): while its lease lives the deadline
    looks again later; once the lease has lapsed, the deadline is applied."""
    from bridgic_coldmail.models import make_decision
    from bridgic_coldmail.store import Claim

    from ..rows import expire_lease

    run = await agent.start(BRIEF, respond_within="1s", on_timeout="reject")
    held = await store.claim(run.interaction_id, make_decision("feedback", text="CTOs"), ("1.0",))
    assert isinstance(held, Claim), held
    (deadline,) = _timers(backend, run.interaction_id)
    await _past(_due(deadline))
    await _work(store, settings)
    (waiting,) = _timers(backend, run.interaction_id)
    assert waiting["status"] == "pending"
    assert waiting["last_error"] == "someone is answering right now"
    assert (await agent.get(run.interaction_id)).status is RunStatus.RESUMING

    expire_lease(backend.rows, run.interaction_id)  # the resumer died
    backend.rows.set_notification(deadline["id"], next_attempt_at=datetime.now(timezone.utc))
    await _work(store, settings)
    after = await agent.get(run.interaction_id)
    assert after.status is RunStatus.REJECTED
    (fired,) = _timers(backend, run.interaction_id)
    assert fired["status"] == "delivered"


async def test_a_worker_killed_between_the_outcome_and_its_messages_leaves_nothing_undone(
    agent: ColdMailAgent, store: RunStore, settings: Settings, backend: Backend
) -> None:
    """The first worker leased the deadline and applied it, then died before queueing
    ``run.deadline`` and recording the timer; the next worker, once the lease lapsed, sees
    the run already answered by its deadline and queues the message — once."""
    from bridgic_coldmail._runner import Runner
    from bridgic_coldmail.deadlines import deadline_action

    with Receiver("webhook", WEBHOOK_SECRET) as reviewer:
        run = await agent.start(
            BRIEF, notify=[reviewer.url()], respond_within="1s", on_timeout="reject"
        )
        (row,) = _timers(backend, run.interaction_id)
        await _past(_due(row))
        leased = [c for c in await store.claim_notifications(10, 60) if c.timer is not None]
        (claim,) = leased
        assert claim.timer is not None
        runner = Runner(store, settings)
        await runner.apply(run.interaction_id, deadline_action(run, claim.timer))
        await runner.aclose()
        assert (await agent.get(run.interaction_id)).status is RunStatus.REJECTED
        # ... and the worker dies here. Its lease lapses:
        backend.rows.set_notification(
            claim.id, lease_until=datetime.now(timezone.utc) - timedelta(seconds=1)
        )
        await _work(store, settings)
        await _work(store, settings)
        await _until(lambda: "run.deadline" in _events(reviewer))
        assert _events(reviewer).count("run.deadline") == 1
        (fired,) = _timers(backend, run.interaction_id)
        assert fired["status"] == "delivered" and not fired["last_error"]


# --------------------------------------------------------------------------- attacks


async def test_a_deadline_row_brought_forward_in_the_database_waits_for_its_signed_time(
    agent: ColdMailAgent, store: RunStore, settings: Settings, backend: Backend
) -> None:
    run = await agent.start(BRIEF, review=True, respond_within="1h", on_timeout="reject")
    (deadline,) = _timers(backend, run.interaction_id)
    past = datetime.now(timezone.utc) - timedelta(hours=1)
    backend.rows.set_notification(deadline["id"], next_attempt_at=past)
    await _work(store, settings)
    assert (await agent.get(run.interaction_id)).status is RunStatus.AWAITING_FEEDBACK
    (still,) = _timers(backend, run.interaction_id)
    assert still["status"] == "pending"


async def test_a_timer_whose_record_was_edited_is_never_fired(
    agent: ColdMailAgent, store: RunStore, settings: Settings, backend: Backend
) -> None:
    run = await agent.start(BRIEF, review=True, respond_within="1h", on_timeout="reject")
    (deadline,) = _timers(backend, run.interaction_id)
    record = json.loads(deadline["record_json"])
    record["due_at"] = (datetime.now(timezone.utc) - timedelta(hours=2)).isoformat()
    backend.rows.set_notification(
        deadline["id"],
        record_json=json.dumps(record),
        next_attempt_at=datetime.now(timezone.utc) - timedelta(hours=1),
    )
    await _work(store, settings)
    assert (await agent.get(run.interaction_id)).status is RunStatus.AWAITING_FEEDBACK
    (refused,) = _timers(backend, run.interaction_id)
    assert refused["status"] == "failed"
    assert "outside bridgic-coldmail" in refused["last_error"]


async def test_a_policy_edited_in_the_database_fires_nothing(
    agent: ColdMailAgent, store: RunStore, settings: Settings, backend: Backend
) -> None:
    """A database writer who turns a run's ``wait`` into ``proceed`` approves nothing: the
    policy's MAC no longer verifies, so the run notifies and times out nobody."""
    run = await agent.start(BRIEF, review=True, respond_within="1s", on_timeout="wait")
    policy = json.loads(backend.rows.row(run.interaction_id)["policy_json"])
    policy["wait"]["on_timeout"] = "proceed"
    backend.rows.set(run.interaction_id, policy_json=json.dumps(policy))
    run = await agent.resume(run.interaction_id, "CTOs at clinics")
    assert run.status is RunStatus.AWAITING_REVIEW
    # The review round that followed planned no timer from the altered policy: the only
    # timer is the audience question's, planned before the edit.
    paused_at = [
        json.loads(t["record_json"])["pause_id"] for t in _timers(backend, run.interaction_id)
    ]
    assert paused_at == [run.interaction_id]
    await asyncio.sleep(1.2)
    await _work(store, settings)
    assert (await agent.get(run.interaction_id)).status is RunStatus.AWAITING_REVIEW


def test_reminders_stop_before_the_deadline_and_after_the_tenth() -> None:
    """Each reminder plans the next one: none at or past the deadline, none after the
    tenth (``MAX_REMINDERS``), whatever the interval."""
    from bridgic_coldmail.notify.policy import MAX_REMINDERS, WaitPolicy
    from bridgic_coldmail.store.outbox import pause_timers

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    wait = WaitPolicy(respond_within=3600.0, remind_every=1000.0)
    deadline, first = pause_timers("r" * 32, "p" * 32, None, wait, now=now)
    assert deadline.kind == "deadline" and deadline.due_at == now + timedelta(hours=1)
    chain = [first]
    while (following := chain[-1].next_reminder()) is not None:
        chain.append(following)
    assert [t.due_at - now for t in chain] == [timedelta(seconds=s) for s in (1000, 2000, 3000)]

    endless = WaitPolicy(remind_every=60.0)  # no deadline
    (first,) = pause_timers("r" * 32, "p" * 32, None, endless, now=now)
    chain = [first]
    while (following := chain[-1].next_reminder()) is not None:
        chain.append(following)
    assert [t.n for t in chain] == list(range(1, MAX_REMINDERS + 1))


def test_a_person_cannot_sign_as_the_deadline(agent: ColdMailAgent) -> None:
    from bridgic_coldmail.models import make_decision, validate_reviewer

    # Names that read as "deadline" in a history: zero-width and full-width spellings too.
    lookalikes = (
        "dead\u200bline",
        "\u2060deadline",
        "\uff44eadline",
        "ＤＥＡＤＬＩＮＥ",
        "dead\u00adline",
    )
    for name in ("deadline", "Deadline", " DEADLINE ", *lookalikes):
        with pytest.raises(InvalidInput, match="deadline"):
            validate_reviewer(name)
        with pytest.raises(InvalidInput, match="deadline"):
            make_decision("approve", reviewer=name)


# --------------------------------------------------------------------------- the edges


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("36h", 129600),
        ("3d", 259200),
        ("1h30m", 5400),
        ("2w", 1209600),
        ("45", 45),
        (2.5, 2.5),
    ],
)
def test_durations_people_write(given: str | float, seconds: float) -> None:
    assert parse_duration(given) == seconds


@pytest.mark.parametrize(
    "given",
    [
        *("", "soon", "0s", "-5m", "3 days", "1y", "400d", "nan", "1e9", "5s5", True, "9" * 50),
        # Past float's range, and past the digits Python will print.
        *(pytest.param(n, id=f"int-{i}") for i, n in enumerate((10**400, -(10**400), 10**5000))),
    ],
)
def test_durations_that_are_refused_say_what_is_accepted(given: Any) -> None:
    with pytest.raises(InvalidInput, match="90s|1 second"):
        parse_duration(given)


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"on_timeout": "proceed"}, "needs a deadline"),
        ({"escalate_to": ["https://example.com/hook"]}, "needs a deadline"),
        ({"respond_within": "1h", "remind_every": "2h"}, "shorter than"),
        ({"respond_within": "1h", "on_timeout": "approve"}, "wait, proceed, reject"),
        ({"respond_within": "soon"}, "90s"),
    ],
)
async def test_a_wait_policy_that_does_not_hold_is_refused_before_the_llm_is_called(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, options: dict[str, Any], said: str
) -> None:
    with pytest.raises(InvalidInput, match=said):
        await agent.start(BRIEF, **options)
    assert server.count() == 0


@pytest.mark.slow  # child processes, a real deadline
def test_the_cli_starts_a_run_with_a_deadline_and_its_worker_applies_it(
    server: ScriptedOpenAIServer,
) -> None:
    before = datetime.now(timezone.utc)
    started = run_cli(
        "start",
        "--product", BRIEF.product,
        "--offer", BRIEF.offer,
        "--sender", BRIEF.sender,
        "--audience", BRIEF.audience or "",
        "--review",
        "--respond-within", "1s",
        "--on-timeout", "proceed",
        "--json",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["interaction_id"]
    shown = run_cli("notifications", run_id)
    assert "deadline" in shown.stdout and "timer" in shown.stdout
    time.sleep(1.2)
    worked = run_cli("worker", "--once")
    assert worked.returncode == 0, worked.stderr
    assert "deadline" in worked.stderr + worked.stdout
    after = json.loads(run_cli("show", run_id, "--json").stdout)
    assert after["status"] == "awaiting_review"
    # The review round waits with a fresh deadline, shown with what happens then.
    wait = after["wait"]
    assert wait["on_timeout"] == "proceed" and wait["reminders_sent"] == 0
    assert datetime.fromisoformat(wait["deadline"]) > before + timedelta(seconds=2)
    shown = run_cli("show", run_id).stdout
    assert "WAITING: deadline" in shown and "then go on without an answer" in shown
    assert "timer fired · deadline (then proceed)" in shown
    refused = run_cli("start", "--product", "x", "--offer", "y", "--sender", "z",
                      "--on-timeout", "reject")  # fmt: skip
    assert refused.returncode != 0 and "--respond-within" in refused.stderr


def test_settings_give_every_run_a_deadline_and_refuse_one_that_does_not_hold() -> None:
    settings = Settings.resolve(
        env={"COLDMAIL_RESPOND_WITHIN": "3d", "COLDMAIL_ON_TIMEOUT": "reject"}
    )
    assert settings.respond_within == 3 * 86400 and settings.on_timeout == "reject"
    from bridgic_coldmail.errors import ConfigurationError

    with pytest.raises((ConfigurationError, InvalidInput), match="COLDMAIL_RESPOND_WITHIN"):
        Settings.resolve(env={"COLDMAIL_ON_TIMEOUT": "proceed"})
    with pytest.raises((ConfigurationError, InvalidInput), match="COLDMAIL_REMIND_EVERY"):
        Settings.resolve(env={"COLDMAIL_REMIND_EVERY": "never"})


async def test_a_link_to_a_pause_with_a_deadline_stops_working_at_the_deadline(
    backend: Backend, server: ScriptedOpenAIServer
) -> None:
    from bridgic_coldmail.notify.links import read_token

    settings = backend.settings(public_origin="https://review.example.com")
    async with ColdMailAgent.open(settings=settings) as agent:
        run = await agent.start(BRIEF, respond_within="2h")
        (deadline,) = _timers(backend, run.interaction_id)
        token = (await agent.link(run.interaction_id)).rsplit("/l/", 1)[1]
        claim = read_token(backend.signer(), token)
        assert abs((claim.expires_at - _due(deadline)).total_seconds()) < 1
        # Without a deadline, the link lasts COLDMAIL_LINK_TTL (a week by default).
        plain = await agent.start(BRIEF)
        token = (await agent.link(plain.interaction_id)).rsplit("/l/", 1)[1]
        lasts = read_token(backend.signer(), token).expires_at - datetime.now(timezone.utc)
        assert timedelta(days=6, hours=23) < lasts <= timedelta(days=7)


# --------------------------------------------------------------------------- forks


@pytest.mark.slow  # waits out a deadline
async def test_a_fork_whose_first_step_failed_still_waits_under_its_deadline(
    agent: ColdMailAgent,
    store: RunStore,
    settings: Settings,
    backend: Backend,
    server: ScriptedOpenAIServer,
) -> None:
    """A fork is stored paused where its parent was, then resumed; when that step fails the
    fork waits there, and its wait has the deadline its policy (the parent's) promises. The
    parent's own timers never act on the fork."""
    from bridgic_coldmail import LlmError
    from bridgic_coldmail.store.outbox import wait_state
    from bridgic_coldmail.testing import Reply

    parent = await agent.start(BRIEF, review=True, respond_within="2s", on_timeout="reject")
    server.enqueue(*[Reply(status=500, kind="refine")] * 10)
    with pytest.raises(LlmError, match="the fork [0-9a-f]{32} of run") as failed:
        await agent.fork(parent.interaction_id, feedback="CFOs at regional banks")
    fork_id = str(failed.value).split("the fork ")[1].split(" ")[0]
    server.reset()
    fork = await agent.get(fork_id)
    assert fork.status is RunStatus.AWAITING_FEEDBACK
    waiting = wait_state(fork.pause_id, await agent.notifications(fork_id))
    assert waiting.deadline is not None and waiting.on_timeout == "reject"
    # Counted from when the fork paused (it was stored), as every pause's deadline is.
    assert abs((waiting.deadline - fork.created_at).total_seconds() - 2) < 0.01
    await _past(waiting.deadline)
    await _work(store, settings)
    ended = await agent.get(fork_id)
    assert ended.status is RunStatus.REJECTED and "deadline" in (ended.rejection or "")
    assert (await agent.get(parent.interaction_id)).status is RunStatus.REJECTED
    # Each run was ended once, by its own deadline.
    for run_id in (parent.interaction_id, fork_id):
        history = await agent.history(run_id)
        assert [e.kind for e in history if e.actor == DEADLINE_ACTOR] == ["rejected"]


@pytest.mark.slow  # waits out a 3 s deadline
@pytest.mark.parametrize("at", [0, 1])
async def test_a_deadline_that_proceeds_on_a_stalled_fork_gives_the_forks_own_input(
    agent: ColdMailAgent,
    store: RunStore,
    settings: Settings,
    backend: Backend,
    server: ScriptedOpenAIServer,
    at: int,
) -> None:
    """A fork's first pause already has its answer, the fork's own input; when that step
    failed and the deadline proceeds, it proceeds with that input, never with the brief's
    guess or the parent's sequence (the family would show an angle the fork never took)."""
    from bridgic_coldmail import LlmError
    from bridgic_coldmail.store.outbox import wait_state
    from bridgic_coldmail.testing import Reply

    parent = await agent.start(BRIEF, review=True, respond_within="3s", on_timeout="proceed")
    if at:
        await agent.resume(parent.interaction_id, "CTOs at clinics")
    text, kind = ("CFOs at regional banks", "refine") if at == 0 else ("more formal", "revise")
    words = {"feedback": text} if at == 0 else {"guidance": text}
    server.enqueue(*[Reply(status=500, kind=kind)] * 10)
    with pytest.raises(LlmError, match="the fork [0-9a-f]{32} of run") as failed:
        await agent.fork(parent.interaction_id, round=at, **words)
    fork_id = str(failed.value).split("the fork ")[1].split(" ")[0]
    server.reset()
    stalled = await agent.get(fork_id)
    waiting = wait_state(stalled.pause_id, await agent.notifications(fork_id))
    assert waiting.deadline is not None
    await _past(waiting.deadline)
    await _work(store, settings)
    moved = await agent.get(fork_id)
    assert moved.status is RunStatus.AWAITING_REVIEW and moved.round == at + 1
    by_deadline = [e for e in await agent.history(fork_id) if e.actor == DEADLINE_ACTOR]
    assert len(by_deadline) == 1
    if at == 0:
        assert moved.feedback == text and by_deadline[0].kind == "feedback"
    else:
        assert by_deadline[0].kind == "revised" and by_deadline[0].detail == text
    family = await agent.family(fork_id)
    own = family.member(fork_id)
    assert own is not None and own.link is not None and own.link.text == text
    # A person answering that pause now is told the deadline answered it, and how.
    with pytest.raises(RunConflict, match=f"deadline .*{text}") as late:
        if at == 0:
            await agent.resume(fork_id, "CMOs at retailers")
        else:
            await agent.revise(fork_id, "shorter", round=at)
    assert "brief's own" not in str(late.value)
