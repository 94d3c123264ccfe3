"""What notifications say, and that hostile run text stays text: escaped in HTML and in Slack's
markup, one line in a subject, bidi overrides shown, and every message bounded in size."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from bridgic_coldmail.models import Brief, EmailSequence, EmailStep, RunStatus
from bridgic_coldmail.notify import (
    EVENTS,
    Links,
    Notification,
    SampleNote,
    compose,
    links_for,
    read_token,
)
from bridgic_coldmail.notify.channels import email_message
from bridgic_coldmail.notify.messages import (
    MAX_SUBJECT_CHARS,
    MAX_TEXT_BYTES,
    MAX_WEBHOOK_BYTES,
    SLACK_SECTION_CHARS,
)

from ..notify_servers import (
    NOW,
    ORIGIN,
    PAUSE_ID,
    RUN_ID,
    make_notification,
    make_run,
    make_sequence,
    make_signer,
    slack_problem,
)

SIGNER = make_signer()
HOSTILE = (
    "<script>alert(1)</script> <img src=x onerror=alert(2)> & <!channel> <@U123> "
    "<https://evil.example|Approve> \u202eexe.txt\u202c \u2066isolated\u2069"
)
ASTRAL = "\U0001d54f"  # 4 bytes in UTF-8, 12 as a JSON escape pair


def hostile_run(**overrides: Any) -> Any:
    body = (HOSTILE + "\n") * 40
    body = body[:5000]
    sequence = EmailSequence(
        opener=EmailStep(subject=HOSTILE[:200], body=body, wait_days=0),
        follow_up=EmailStep(subject="Re: " + HOSTILE[:190], body=body, wait_days=2),
    )
    values: dict[str, Any] = {
        "brief": Brief(
            product="Acme\r\nBcc: victim@example.com\nX-Injected: 1 " + HOSTILE[:100],
            offer=HOSTILE,
            sender="Mallory <mallory@example.com>\r\nSubject: hijacked",
        ),
        "draft": sequence,
        "question": HOSTILE,
    }
    values.update(overrides)
    return make_run(**values)


def links() -> Links:
    return Links(open=f"{ORIGIN}/l/abc.def", run=f"{ORIGIN}/runs/{RUN_ID}")


def review_run(**overrides: Any) -> Any:
    values: dict[str, Any] = {
        "status": RunStatus.AWAITING_REVIEW,
        "round": 2,
        "review": True,
        "pause_id": PAUSE_ID,
        "sequence": make_sequence("Round two subject"),
    }
    values.update(overrides)
    return make_run(**values)


@pytest.mark.parametrize("event", EVENTS)
def test_every_event_reads_and_fits_every_channel(event: str) -> None:
    run = make_run() if event != "run.review" else review_run()
    extra: dict[str, Any] = {}
    if event == "run.deadline":
        extra["on_timeout"] = "proceed"
    if event == "run.reminder":
        extra["reminder"] = 2
    if event == "run.completed":
        run = make_run(status=RunStatus.COMPLETED, final=make_sequence("Final subject"))
    if event == "run.rejected":
        run = review_run(status=RunStatus.REJECTED, rejection="Off-brand")
    if event == "run.failed":
        run = make_run(last_error="LlmError: the LLM timed out 4 times")
    if event == "batch.sample_ready":
        run = make_run(status=RunStatus.COMPLETED, final=make_sequence("Final subject"))
        extra["sample"] = SampleNote("b" * 32, 2, 5, 10_000, ("name the month-end close",))
    n = make_notification("r@example.com", event, run, **extra)  # type: ignore[arg-type]
    message = compose(n, links())
    assert message.subject.startswith("[coldmail] ") and "Acme Scheduler" in message.subject
    assert RUN_ID in message.text and RUN_ID in message.html
    assert slack_problem(message.slack) is None
    body = json.loads(message.webhook_body)
    assert body["type"] == event and body["data"]["run"]["interaction_id"] == RUN_ID
    assert body["timestamp"] == NOW.isoformat()
    expected = {
        "run.review": "Round two subject",
        "run.completed": "Final subject",
        "run.rejected": "Off-brand",
        "run.failed": "timed out 4 times",
        "batch.sample_ready": "name the month-end close",
    }.get(event, "A faster way")
    assert expected in message.text and expected in message.html


def test_a_sample_ready_says_how_many_lines_wait_and_links_to_the_inbox_section() -> None:
    run = make_run(status=RunStatus.COMPLETED, final=make_sequence("Final subject"))
    hostile = "<!channel> <https://evil.example|Approve> \u202eevil\x07"
    sample = SampleNote("c" * 32, 3, 5, 1200, ("first", hostile))
    n = make_notification("r@example.com", "batch.sample_ready", run, pause_id=None, sample=sample)
    found = links_for(n, origin=ORIGIN, signer=make_signer(), link_ttl=3600)
    assert found.as_dict() == {"run": f"{ORIGIN}/runs/{RUN_ID}#lines"}  # no one-click link
    message = compose(n, found)
    assert message.subject == "[coldmail] Sample of 5 first lines ready: Acme Scheduler"
    assert "round 3, rewritten with your guidance" in message.text
    assert "1200 leads in all" in message.text
    assert f"Approve the sample in the inbox: {ORIGIN}/runs/{RUN_ID}#lines" in message.text
    assert "Final subject" not in message.text  # the lines wait, not the sequence
    slack = json.dumps(message.slack)
    assert "<!channel>" not in slack and "<https://evil" not in slack
    assert "<U+202E>" in message.text and "\x07" not in message.text
    assert "&lt;!channel&gt;" in message.html
    body = json.loads(message.webhook_body)
    assert body["data"]["sample"]["lines"] == 5 and body["data"]["links"] == found.as_dict()
    with pytest.raises(ValueError, match="has its sample"):
        make_notification("r@example.com", "batch.sample_ready", run, pause_id=None)
    with pytest.raises(ValueError, match="has its sample"):
        make_notification("r@example.com", "run.paused", sample=sample)
    again = Notification.from_record(json.loads(json.dumps(n.to_record())))
    assert again == n


def test_the_audience_pause_asks_the_question_and_shows_the_draft() -> None:
    n = make_notification("r@example.com", "run.paused", deadline=NOW + timedelta(hours=36))
    n = Notification(**{**n.__dict__, "on_timeout": "proceed"})
    text = compose(n, links()).text
    assert "Who is this sequence really for?" in text
    assert "Answer by 2026-03-03 00:00 UTC; then the draft is refined" in text
    assert f"Answer here (no login needed): {ORIGIN}/l/abc.def" in text


@pytest.mark.parametrize(
    ("on_timeout", "round_", "said"),
    [
        ("proceed", None, "so the draft is refined for the brief's own audience guess"),
        ("proceed", 2, "so the sequence under review was approved"),
        ("reject", 2, "so the run was rejected"),
        ("wait", None, "so the run keeps waiting"),
    ],
)
def test_the_deadline_says_what_was_done(on_timeout: str, round_: int | None, said: str) -> None:
    run = review_run(round=round_) if round_ else make_run()
    n = make_notification(
        "r@example.com",
        "run.deadline",
        run,
        on_timeout=on_timeout,
        escalated_to=(make_notification("boss@example.com").destination,),
    )
    text = compose(n, Links()).text
    assert said in text and "passed on to boss@example.com" in text


def test_hostile_run_text_is_escaped_in_html() -> None:
    message = compose(make_notification("r@example.com", "run.paused", hostile_run()), links())
    for raw in ("<script>", "<img", "onerror=alert(2)>", "<!channel>", "<https://evil"):
        assert raw not in message.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in message.html
    assert "\u202e" not in message.html and "&lt;U+202E&gt;exe.txt" in message.html
    assert "\u2066" not in message.text and "<U+2066>isolated<U+2069>" in message.text
    assert f'<a href="{ORIGIN}/l/abc.def">' in message.html


def test_hostile_run_text_cannot_ping_a_channel_or_disguise_a_link_in_slack() -> None:
    message = compose(make_notification("r@example.com", "run.paused", hostile_run()), links())
    texts = [message.slack["text"]] + [
        b["text"]["text"] for b in message.slack["blocks"] if b["type"] == "section"
    ]
    joined = "\n".join(texts)
    for raw in ("<!channel>", "<@U123>", "<https://evil", "<script>"):
        assert raw not in joined
    assert "&lt;!channel&gt;" in joined and "&lt;https://evil.example|Approve&gt;" in joined
    # Only our own links are markup.
    assert joined.count("<http") == 2 and f"<{ORIGIN}/l/abc.def|Answer here>" in joined
    assert slack_problem(message.slack) is None
    assert message.slack["unfurl_links"] is False


def test_a_subject_is_one_bounded_line_and_cannot_inject_headers() -> None:
    run = hostile_run()
    message = compose(make_notification("r@example.com", "run.paused", run), links())
    assert "\n" not in message.subject and "\r" not in message.subject
    assert len(message.subject) <= MAX_SUBJECT_CHARS
    mail = email_message(message, "n1", to="r@example.com", sender="coldmail@example.com")
    raw = mail.as_bytes()
    header_block = raw.split(b"\n\n", 1)[0]
    names = [
        line.split(b":", 1)[0].lower()
        for line in header_block.split(b"\n")
        if line and not line[:1].isspace()
    ]
    assert b"bcc" not in names and b"x-injected" not in names
    assert names.count(b"subject") == 1
    assert mail["Message-ID"] == "<n1@example.com>"
    assert mail["Auto-Submitted"] == "auto-generated"


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\t", "\x0b", "\x0c"])
def test_unusual_line_breaks_in_the_product_fold_into_the_subject(separator: str) -> None:
    # Built unvalidated: the brief refuses some of these, but a message must not rely on it
    # (runs stored by earlier releases are shown too).
    brief = Brief.model_construct(product=f"Acme{separator}Bcc: x@y.z", offer="o", sender="s")
    run = make_run(brief=brief)
    subject = compose(make_notification("r@example.com", run=run), links()).subject
    assert subject.isprintable() and separator not in subject
    mail = email_message(
        compose(make_notification("r@example.com", run=run), links()),
        "n1",
        to="r@example.com",
        sender="a@b.c",
    )
    assert mail["Bcc"] is None


@pytest.mark.parametrize("char", [ASTRAL, "&", "\u202e"])
def test_every_message_has_a_size_bound_even_for_a_run_at_every_limit(char: str) -> None:
    """``char``: the longest in UTF-8, the longest escaped in HTML, the longest made visible."""
    body = char * 5000
    # Built unvalidated, like the brief: a body of bidi overrides alone is refused as blank
    # now, but runs stored by earlier releases are shown too.
    sequence = EmailSequence.model_construct(
        opener=EmailStep.model_construct(subject=char * 200, body=body, wait_days=0),
        follow_up=EmailStep.model_construct(subject=char * 200, body=body, wait_days=1),
    )
    run = make_run(
        status=RunStatus.AWAITING_REVIEW,
        review=True,
        round=5,
        pause_id=PAUSE_ID,
        brief=Brief.model_construct(
            product=char * 200,
            offer=char * 1000,
            sender=char * 200,
            audience=char * 500,
            cta=char * 300,
        ),
        draft=sequence,
        sequence=sequence,
        final=sequence,
        feedback=char * 2000,
        rejection=char * 2000,
        question=char * 100_000,
        last_error="x" * 1_000_000,
        fields=tuple(f"field_{i}" for i in range(1000)),
    )
    for event in EVENTS:
        extra: dict[str, Any] = {"on_timeout": "wait"} if event == "run.deadline" else {}
        if event == "run.reminder":
            extra["reminder"] = 1
        if event == "batch.sample_ready":
            extra["sample"] = SampleNote.of("b" * 32, 99, 1000, 10**6, (char * 5000,) * 98)
        message = compose(make_notification("r@example.com", event, run, **extra), links())  # type: ignore[arg-type]
        assert len(message.text.encode()) <= MAX_TEXT_BYTES, event
        assert len(message.html.encode()) <= 2 * MAX_TEXT_BYTES, event
        assert len(message.webhook_body.encode()) <= MAX_WEBHOOK_BYTES, event
        slack = json.dumps(message.slack, ensure_ascii=False).encode()
        assert len(slack) <= len(message.slack["blocks"]) * SLACK_SECTION_CHARS * 4, event
        assert slack_problem(message.slack) is None, event
        data = json.loads(message.webhook_body)["data"]["run"]
        assert len(data["last_error"]) == 5000 and data["last_error"].endswith("…")
        assert len(data["fields"]) == 100


def test_a_lone_surrogate_cannot_break_the_webhook_body() -> None:
    run = make_run(last_error="bad \ud800 surrogate")
    body = compose(make_notification("r@example.com", "run.failed", run), links()).webhook_body
    body.encode("utf-8")  # would raise on a lone surrogate
    assert json.loads(body)["data"]["run"]["last_error"] == "bad ? surrogate"


def test_the_notification_record_round_trips() -> None:
    n = make_notification(
        "https://hooks.example.com/a?token=secret",
        "run.reminder",
        review_run(),
        reminder=3,
        deadline=NOW + timedelta(days=1),
        on_timeout="reject",
        link_expires_at=NOW + timedelta(hours=5),
    )
    record = json.loads(json.dumps(n.to_record()))
    again = Notification.from_record(record)
    assert again.to_record() == n.to_record()
    assert again.run.to_public_dict() == n.run.to_public_dict()
    assert compose(again, links()) == compose(n, links())


def test_the_id_is_deterministic_and_distinct_per_event_destination_and_count() -> None:
    base = Notification.make_id(RUN_ID, PAUSE_ID, "run.review", 1, "a@b.c")
    assert base == Notification.make_id(RUN_ID, PAUSE_ID, "run.review", 1, "a@b.c")
    others = {
        Notification.make_id(RUN_ID, PAUSE_ID, "run.reminder", 1, "a@b.c"),
        Notification.make_id(RUN_ID, PAUSE_ID, "run.review", 2, "a@b.c"),
        Notification.make_id(RUN_ID, PAUSE_ID, "run.review", 1, "d@b.c"),
        Notification.make_id(RUN_ID, "other", "run.review", 1, "a@b.c"),
        Notification.make_id(RUN_ID, None, "run.review", 1, "a@b.c"),
    }
    assert base not in others and len(others) == 5
    assert "." not in base  # the Standard Webhooks id may not hold a "."


@pytest.mark.parametrize(
    "fields",
    [
        {"id": "has.a.dot"},
        {"id": ""},
        {"id": "x" * 65},
        {"event": "run.exploded"},
        {"created_at": NOW.replace(tzinfo=None)},
        {"event": "run.deadline"},
        {"event": "run.reminder"},
        {"on_timeout": "explode"},
    ],
)
def test_a_malformed_notification_is_refused(fields: dict[str, Any]) -> None:
    n = make_notification("r@example.com")
    with pytest.raises(ValueError):
        Notification(**{**n.__dict__, **fields})


def test_links_open_the_pause_until_the_deadline_else_the_ttl() -> None:
    n = make_notification("r@example.com", pause_id=PAUSE_ID)
    made = links_for(n, origin=ORIGIN, signer=SIGNER, link_ttl=3600)
    assert made.run == f"{ORIGIN}/runs/{RUN_ID}"
    assert made.open is not None and made.expires_at == NOW + timedelta(hours=1)
    claim = read_token(SIGNER, made.open.removeprefix(f"{ORIGIN}/l/"), now=NOW)
    assert (claim.run_id, claim.pause_id) == (RUN_ID, PAUSE_ID)

    due = make_notification("r@example.com", pause_id=PAUSE_ID, deadline=NOW + timedelta(days=2))
    assert links_for(due, origin=ORIGIN, signer=SIGNER, link_ttl=3600).expires_at == (
        NOW + timedelta(days=2)
    )
    assert links_for(n, origin=None, signer=SIGNER, link_ttl=3600) == Links()
    assert links_for(n, origin=ORIGIN, signer=None, link_ttl=3600).open is None
    over = make_notification(
        "r@example.com",
        "run.completed",
        make_run(status=RunStatus.COMPLETED, final=make_sequence()),
        pause_id=PAUSE_ID,
    )
    assert links_for(over, origin=ORIGIN, signer=SIGNER, link_ttl=3600).open is None
