"""What each notification says, in each channel's form.

A :class:`Notification` is one event of one run for one destination: the value the outbox
stores and the worker delivers. :func:`compose` turns it into a :class:`Message`: an email
subject, a plain text with an HTML alternative, Slack's message JSON, and the Standard
Webhooks body ``{"type", "timestamp", "data": {"run", "links", …}}`` with the run in its
public JSON shape (``Run.to_public_dict``, the JSON API's).

Everything a run holds came from a person or an LLM, so it is treated as hostile wherever
it lands: escaped in HTML and in Slack's markup (no ``<!channel>``, no disguised link),
folded to one line in a subject (no header injection), bidi embedding and override
characters shown as ``<U+202E>`` instead of reordering the text around them, control
characters replaced, and every text cut at a bound, so that each message has a size limit
(see ``MAX_*`` below).
"""

from __future__ import annotations

import html
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, get_args

from ..models import EmailSequence, Run
from ..signing import SnapshotSigner
from .destinations import Destination, parse_destination
from .links import link_expiry, make_link

Event = Literal[
    "run.paused",
    "run.review",
    "run.reminder",
    "run.deadline",
    "run.escalated",
    "run.completed",
    "run.rejected",
    "run.failed",
    "batch.sample_ready",
]
"""``run.paused``: waits for audience feedback. ``run.review``: waits for a decision on review
round N. ``run.reminder``: still waits (the Nth reminder). ``run.deadline``: the deadline
passed, and ``on_timeout`` says what was done. ``run.escalated``: nobody answered by the
deadline, sent to the person it escalates to. ``run.completed`` / ``run.rejected``: over.
``run.failed``: the LLM gave up while applying an answer; the run waits again and can be
resumed. ``batch.sample_ready``: a personalization batch's sample of first lines waits for
approval (round N: rewritten with guidance N - 1 times)."""
EVENTS: tuple[Event, ...] = get_args(Event)
Outcome = Literal["wait", "proceed", "reject"]
"""What a deadline does: keep waiting, go on without the person, or reject the run."""
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)

MAX_SUBJECT_CHARS = 150
MAX_TEXT_CHARS = 5000
"""The longest text a run holds (an email body); longer strings (an error) are cut."""
MAX_LIST_ITEMS = 100
"""Lists in the webhook's run (merge fields) are cut after this many items."""
MAX_TEXT_BYTES = 96 * 1024
"""No plain-text part is longer (UTF-8 bytes): three sequences and a brief at their limits."""
MAX_WEBHOOK_BYTES = 256 * 1024
"""No webhook body is longer: the run's public JSON with every text at its limit."""
SLACK_SECTION_CHARS = 3000
"""Slack refuses a section block whose text is longer."""
SLACK_HEADER_CHARS = 150
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NAMESPACE = uuid.UUID("6f1d2c1e-3b7a-5d2e-9c55-0c01d3a11e21")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029\t]+")


@dataclass(frozen=True)
class SampleNote:
    """What a ``batch.sample_ready`` notification tells of the batch: its sample round, how
    many first lines wait, how many leads the list has, and the guidance given so far."""

    batch_id: str
    round: int
    lines: int
    """Sample lines written, waiting for approval."""
    leads: int
    """Leads in the list (written once the sample is approved)."""
    guidance: tuple[str, ...] = ()
    """The latest guidance the sample was written with (see :meth:`of`)."""

    @classmethod
    def of(
        cls, batch_id: str, round: int, lines: int, leads: int, guidance: tuple[str, ...]
    ) -> SampleNote:
        """The note, keeping the last :data:`MAX_GUIDANCE_SHOWN` guidance texts, each cut at
        :data:`MAX_GUIDANCE_CHARS` (a batch may be rewritten any number of times)."""
        kept = tuple(_cut(g, MAX_GUIDANCE_CHARS) for g in guidance[-MAX_GUIDANCE_SHOWN:])
        return cls(batch_id, round, lines, leads, kept)

    def to_record(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "round": self.round,
            "lines": self.lines,
            "leads": self.leads,
            "guidance": list(self.guidance),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SampleNote:
        return cls(
            batch_id=str(record["batch_id"]),
            round=int(record["round"]),
            lines=int(record["lines"]),
            leads=int(record["leads"]),
            guidance=tuple(str(g) for g in record.get("guidance") or ()),
        )


@dataclass(frozen=True)
class Notification:
    """One event of one run, for one destination.

    ``id`` is the same on every delivery attempt (it is the webhook's ``webhook-id`` and
    the email's ``Message-ID``), so receivers can drop duplicates: make it with
    :meth:`make_id`. ``run`` is the run as it was when the event happened (for
    ``run.deadline``: when the deadline fell due, before its outcome was applied).
    """

    id: str
    event: Event
    run: Run
    destination: Destination
    created_at: datetime
    pause_id: str | None = None
    """The pause the message's link opens; None: the message carries no link to answer."""
    deadline: datetime | None = None
    """When the pause stops waiting for the person, if it has a deadline."""
    on_timeout: Outcome | None = None
    """What the deadline does (``run.deadline``: what it did)."""
    reminder: int | None = None
    """The reminder's number, for ``run.reminder``."""
    link_expires_at: datetime | None = None
    """When the link stops working; None: the deadline, else ``created_at`` plus the
    ``link_ttl`` setting."""
    escalated_to: tuple[Destination, ...] = field(default=())
    """Who a ``run.deadline`` was escalated to, to say so."""
    sample: SampleNote | None = None
    """The batch whose sample waits, for ``batch.sample_ready``."""

    def __post_init__(self) -> None:
        if not _ID.fullmatch(self.id):
            raise ValueError("a notification id is 1 to 64 letters, digits, '-' or '_'")
        if self.event not in EVENTS:
            raise ValueError(f"unknown event {self.event!r}; use one of {', '.join(EVENTS)}")
        for name in ("created_at", "deadline", "link_expires_at"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} must be an aware datetime")
        if self.on_timeout is not None and self.on_timeout not in OUTCOMES:
            raise ValueError(f"on_timeout is one of {', '.join(OUTCOMES)}")
        if self.event == "run.deadline" and self.on_timeout is None:
            raise ValueError("a run.deadline notification says what was done (on_timeout)")
        if self.event == "run.reminder" and (self.reminder is None or self.reminder < 1):
            raise ValueError("a run.reminder notification has its number (reminder >= 1)")
        if (self.event == "batch.sample_ready") != (self.sample is not None):
            raise ValueError("a batch.sample_ready notification, and only it, has its sample")

    @staticmethod
    def make_id(run_id: str, pause_id: str | None, event: Event, n: int, destination: str) -> str:
        """A deterministic id: the same event (the ``n``-th of its kind at that pause) for the
        same destination always gets the same id, so it cannot be queued twice."""
        name = json.dumps([run_id, pause_id, event, n, destination], separators=(",", ":"))
        return str(uuid.uuid5(_NAMESPACE, name))

    def to_record(self) -> dict[str, Any]:
        """JSON data to store; :meth:`from_record` gives the notification back."""
        return {
            "id": self.id,
            "event": self.event,
            "run": self.run.to_public_dict(),
            "destination": self.destination.value,
            "created_at": self.created_at.isoformat(),
            "pause_id": self.pause_id,
            "deadline": _iso(self.deadline),
            "on_timeout": self.on_timeout,
            "reminder": self.reminder,
            "link_expires_at": _iso(self.link_expires_at),
            "escalated_to": [dest.value for dest in self.escalated_to],
            "sample": self.sample.to_record() if self.sample is not None else None,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Notification:
        """The notification :meth:`to_record` stored."""
        return cls(
            id=record["id"],
            event=record["event"],
            run=Run.model_validate(record["run"]),
            destination=parse_destination(record["destination"]),
            created_at=datetime.fromisoformat(record["created_at"]),
            pause_id=record.get("pause_id"),
            deadline=_from_iso(record.get("deadline")),
            on_timeout=record.get("on_timeout"),
            reminder=record.get("reminder"),
            link_expires_at=_from_iso(record.get("link_expires_at")),
            escalated_to=tuple(parse_destination(v) for v in record.get("escalated_to") or ()),
            sample=SampleNote.from_record(record["sample"]) if record.get("sample") else None,
        )


@dataclass(frozen=True)
class Links:
    """The links a message carries: ``open`` (signed, no login: the pause's page) when the
    run waits and ``COLDMAIL_PUBLIC_ORIGIN`` is set, and ``run`` (the inbox's run page)."""

    open: str | None = None
    run: str | None = None
    expires_at: datetime | None = None
    """When ``open`` stops working."""

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("open", self.open), ("run", self.run)) if v}


def links_for(
    notification: Notification,
    *,
    origin: str | None,
    signer: SnapshotSigner | None,
    link_ttl: float,
) -> Links:
    """The links of a notification (none without an origin; no ``open`` link without a
    signer, or when the run waits for nobody)."""
    if not origin:
        return Links()
    run_id = notification.run.interaction_id
    run_page = f"{origin.rstrip('/')}/runs/{run_id}"
    if notification.event == "batch.sample_ready":
        # Approved on the run page's "First lines for every lead" section (web/lines.py),
        # behind the inbox's login: a signed link answers a run's own pauses only.
        return Links(run=f"{run_page}#{LINES_ANCHOR}")
    if signer is None or notification.pause_id is None or notification.event in _OVER:
        return Links(run=run_page)
    expires = notification.link_expires_at or link_expiry(
        notification.created_at, link_ttl, notification.deadline
    )
    at_review = notification.pause_id != run_id  # the audience question's pause is the run
    round = notification.run.round if at_review else None
    url = make_link(signer, origin, run_id, notification.pause_id, expires, round=round)
    return Links(open=url, run=run_page, expires_at=expires)


@dataclass(frozen=True)
class Message:
    """A notification in every channel's form."""

    subject: str
    """One line, at most ``MAX_SUBJECT_CHARS``."""
    text: str
    html: str
    slack: dict[str, Any]
    webhook_body: str
    """Compact JSON: sign and send exactly this string (as UTF-8)."""


def compose(notification: Notification, links: Links) -> Message:
    """The message that tells ``notification``'s event."""
    parts = _Parts.of(notification, links)
    return Message(
        subject=parts.subject,
        text=parts.as_text(),
        html=parts.as_html(),
        slack=parts.as_slack(),
        webhook_body=_webhook_body(notification, links),
    )


_OVER = ("run.completed", "run.rejected")
MAX_GUIDANCE_SHOWN = 5
"""A sample's message shows its last guidance texts, at most this many."""
MAX_GUIDANCE_CHARS = 1000
"""Each guidance text a sample's message shows is cut at this many characters."""
LINES_ANCHOR = "lines"
"""The id of the run page's "First lines for every lead" section."""


@dataclass(frozen=True)
class _Block:
    """A titled piece of a message: a heading and run text (hostile until escaped)."""

    title: str
    text: str


@dataclass(frozen=True)
class _Parts:
    """What a message says, channel-neutral: every string of it is clean (see ``_clean``),
    but not escaped for any markup yet."""

    headline: str
    subject: str
    intro: str
    blocks: tuple[_Block, ...]
    when: str | None
    links: Links
    footer: str
    run_label: str = "The run in the inbox"
    """The words of the ``run`` link."""

    @classmethod
    def of(cls, n: Notification, links: Links) -> _Parts:
        run = n.run
        product = _one_line(run.brief.product, 60)
        headline, intro = _headline(n)
        blocks = _sample_blocks(n.sample) if n.sample is not None else _run_blocks(n)
        return cls(
            headline=headline,
            subject=_one_line(f"[coldmail] {headline}: {product}", MAX_SUBJECT_CHARS),
            intro=intro,
            blocks=tuple(blocks),
            when=_deadline_line(n),
            links=links,
            footer=_footer(n),
            run_label="Approve the sample in the inbox"
            if n.sample is not None
            else "The run in the inbox",
        )

    def as_text(self) -> str:
        lines = [self.headline, "", self.intro, ""]
        if self.when:
            lines += [self.when, ""]
        lines += self._link_lines()
        for block in self.blocks:
            lines += ["", f"— {block.title} —", block.text]
        lines += ["", self.footer]
        return "\n".join(lines) + "\n"

    def _link_lines(self) -> list[str]:
        lines = []
        if self.links.open:
            lines.append(f"Answer here (no login needed{_until(self.links)}): {self.links.open}")
        if self.links.run:
            lines.append(f"{self.run_label}: {self.links.run}")
        return lines

    def as_html(self) -> str:
        e = _html
        out = [
            '<!doctype html><html><body style="font-family:sans-serif;max-width:40em">',
            f"<h2>{e(self.headline)}</h2>",
            f"<p>{e(self.intro)}</p>",
        ]
        if self.when:
            out.append(f"<p><strong>{e(self.when)}</strong></p>")
        if self.links.open:
            out.append(
                f'<p><a href="{e(self.links.open)}">Answer here</a> '
                f"(no login needed{e(_until(self.links))})</p>"
            )
        if self.links.run:
            out.append(f'<p><a href="{e(self.links.run)}">{e(self.run_label)}</a></p>')
        for block in self.blocks:
            out.append(f"<h3>{e(block.title)}</h3>")
            out.append(
                '<div dir="auto" style="white-space:pre-wrap;border-left:3px solid #ccc;'
                f'padding-left:1em">{e(block.text)}</div>'
            )
        out.append(f'<p style="color:#666">{e(self.footer)}</p></body></html>')
        return "\n".join(out) + "\n"

    def as_slack(self) -> dict[str, Any]:
        s = _slack
        top = f"*{s(self.headline)}*\n{s(self.intro)}"
        if self.when:
            top += f"\n{s(self.when)}"
        if self.links.open:
            top += f"\n<{self.links.open}|Answer here> (no login needed{s(_until(self.links))})"
        if self.links.run:
            top += f"\n<{self.links.run}|{s(self.run_label)}>"
        blocks: list[dict[str, Any]] = [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": _cut(self.headline, SLACK_HEADER_CHARS),
                },
            },
            _section(top),
        ]
        for block in self.blocks:
            blocks.append(_section(f"*{s(block.title)}*\n{s(block.text)}"))
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": s(self.footer)}]})
        return {
            "text": _cut_markup(f"{s(self.headline)}: {s(self.intro)}"),
            "blocks": blocks,
            "unfurl_links": False,
            "unfurl_media": False,
        }


def _run_blocks(n: Notification) -> list[_Block]:
    run = n.run
    blocks: list[_Block] = []
    if n.event == "run.failed" and run.last_error:
        blocks.append(_Block("What went wrong", _clean(run.last_error, 1000)))
    if n.event == "run.rejected" and run.rejection:
        blocks.append(_Block("Why it was rejected", _clean(run.rejection, 2000)))
    if n.event == "run.completed" and run.final is not None:
        blocks += _sequence_blocks("Final", run.final)
    elif run.sequence is not None and not _at_audience(n):
        blocks += _sequence_blocks(f"Round {run.round}", run.sequence)
    else:
        if n.event not in _OVER:
            blocks.append(_Block("The question", _clean(run.question, 2000)))
        blocks += _sequence_blocks("Draft", run.draft)
    return blocks


def _sample_blocks(sample: SampleNote) -> list[_Block]:
    """The guidance the sample was written with, latest last (the lines themselves wait in
    the inbox)."""
    shown = sample.guidance[-MAX_GUIDANCE_SHOWN:]
    return [_Block("Guidance", _clean(text, MAX_GUIDANCE_CHARS)) for text in shown]


def _headline(n: Notification) -> tuple[str, str]:
    run = n.run
    if n.sample is not None:
        sample = n.sample
        lines = f"{sample.lines} first line{'s' if sample.lines != 1 else ''}"
        again = f" (round {sample.round}, rewritten with your guidance)" if sample.round > 1 else ""
        return (
            f"Sample of {lines} ready",
            f"A sample of {lines}{again} waits for your approval. Approve it and the rest of "
            f"the list ({sample.leads} leads in all) is written; or give guidance and the "
            "sample is rewritten.",
        )
    waiting_for = (
        "audience feedback" if _at_audience(n) else f"a decision on review round {run.round}"
    )
    if n.event == "run.paused":
        return (
            "Audience feedback needed",
            "A first draft is ready. Say who the emails should really target, and the "
            "sequence is refined for them.",
        )
    if n.event == "run.review":
        return (
            f"Review round {run.round} ready",
            "A sequence waits for your decision: approve it, ask for a revision, edit it "
            "yourself or reject it.",
        )
    if n.event == "run.reminder":
        return (f"Reminder: {waiting_for} still needed", f"This run still waits for {waiting_for}.")
    if n.event == "run.escalated":
        return (
            f"Nobody answered: {waiting_for} needed",
            f"This run waited for {waiting_for} past its deadline, and it is passed on to you.",
        )
    if n.event == "run.deadline":
        return ("Deadline passed", _outcome(n, past=True))
    if n.event == "run.completed":
        return ("Sequence completed", "The sequence is final and ready to export.")
    if n.event == "run.rejected":
        return ("Run rejected", "The run was rejected; it is over.")
    return (
        "Run failed; it can be resumed",
        f"The LLM gave up while applying an answer. Nothing was lost: the run waits again "
        f"for {waiting_for} and can be resumed.",
    )


def _at_audience(n: Notification) -> bool:
    return n.run.round is None


def _outcome(n: Notification, *, past: bool) -> str:
    audience = _at_audience(n)
    if n.on_timeout == "proceed":
        if audience:
            what = "the draft is refined for the brief's own audience guess"
        else:
            what = (
                "the sequence under review was approved"
                if past
                else "the sequence under review is approved"
            )
    elif n.on_timeout == "reject":
        what = "the run was rejected" if past else "the run is rejected"
    else:
        what = "the run keeps waiting"
    if not past:
        return what
    text = f"Nobody answered in time, so {what}."
    if n.escalated_to:
        names = ", ".join(_clean(d.display, 100) for d in n.escalated_to[:5])
        text += f" It was passed on to {names}."
    return text


def _deadline_line(n: Notification) -> str | None:
    if n.deadline is None or n.event in (*_OVER, "run.deadline"):
        return None
    return f"Answer by {_when(n.deadline)}; then {_outcome(n, past=False)}."


def _until(links: Links) -> str:
    return f", works until {_when(links.expires_at)}" if links.expires_at else ""


def _footer(n: Notification) -> str:
    run = n.run
    brief = run.brief
    return (
        f"Run {run.interaction_id} · {_one_line(brief.product, 80)} · from "
        f"{_one_line(brief.sender, 80)} · coldmail show {run.interaction_id}"
    )


def _sequence_blocks(label: str, sequence: EmailSequence) -> list[_Block]:
    return [
        _Block(
            f"{label}, email {i} (day {step.wait_days}): {_one_line(step.subject, 200)}",
            _clean(step.body, MAX_TEXT_CHARS),
        )
        for i, step in enumerate(sequence.steps, start=1)
    ]


def _webhook_body(n: Notification, links: Links) -> str:
    data = {
        "run": _bounded(n.run.to_public_dict()),
        "links": links.as_dict(),
        "pause_id": n.pause_id,
        "deadline": _iso(n.deadline),
        "on_timeout": n.on_timeout,
        "reminder": n.reminder,
    }
    if n.sample is not None:
        sample = n.sample.to_record()
        sample["guidance"] = [
            _cut(_valid_utf8(g), MAX_GUIDANCE_CHARS)
            for g in sample["guidance"][-MAX_GUIDANCE_SHOWN:]
        ]
        data["sample"] = _bounded(sample)
    body = {"type": n.event, "timestamp": _iso(n.created_at), "data": data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _bounded(value: Any) -> Any:
    """The run's JSON with each string cut at ``MAX_TEXT_CHARS`` and made valid UTF-8, and
    each list at ``MAX_LIST_ITEMS``; the shape is unchanged."""
    if isinstance(value, str):
        return _cut(_valid_utf8(value), MAX_TEXT_CHARS)
    if isinstance(value, dict):
        return {key: _bounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_bounded(item) for item in list(value)[:MAX_LIST_ITEMS]]
    return value


def _clean(text: str | None, limit: int) -> str:
    """Run text made safe to show: valid UTF-8, control characters but newline and tab
    replaced, bidi embeddings and overrides made visible, cut at ``limit`` characters."""
    text = _valid_utf8(text or "").replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("\N{REPLACEMENT CHARACTER}", text)
    text = _BIDI.sub(lambda m: f"<U+{ord(m.group()):04X}>", text)
    return _cut(text, limit)


def _one_line(text: str | None, limit: int) -> str:
    """:func:`_clean` text on one line (for a subject or a heading): every line break and
    tab folded into a space."""
    return _cut(" ".join(_LINE_BREAKS.sub(" ", _clean(text, 4 * limit)).split()), limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _valid_utf8(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def _html(text: str) -> str:
    return html.escape(text, quote=True)


def _slack(text: str) -> str:
    """Slack's own escaping: without it ``<!channel>`` notifies a whole channel and
    ``<https://evil|Approve>`` shows a link that is not ours."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _section(mrkdwn: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _cut_markup(mrkdwn)}}


def _cut_markup(text: str, limit: int = SLACK_SECTION_CHARS) -> str:
    """Cut escaped Slack text at ``limit`` without splitting an entity like ``&amp;``."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    amp = cut.rfind("&", max(0, len(cut) - 5))
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + "…"


def _when(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(timezone.utc).isoformat() if moment is not None else None


def _from_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None
