"""Every word the LLM and the human are shown, in one place.

The prompts are written like a brief to a good copywriter: who the reader is, what the
sender offers, what a good cold email looks like, and what to return. The output format is
enforced by structured output, so the prompts describe content, not JSON syntax.
"""

from __future__ import annotations

from bridgic.core.model.types import Message, Role

from .models import Brief, EmailSequence

AUDIENCE_QUESTION = (
    "Who is this sequence really for? Describe the audience the emails should target "
    "(role, company size, industry, what they care about)."
)
"""The question put to the human when the run pauses."""

SYSTEM_PROMPT = """\
You are a senior B2B copywriter who writes cold email sequences that get replies.

Your standards:
- Write to one specific reader. Open with their situation, not with the sender.
- One idea per email. Under 150 words per body. Plain text, no markdown, no emojis.
- Concrete over clever: a number, a named outcome or a short proof beats adjectives.
- Subject lines are short, specific and honest. No "Quick question", no fake "Re:".
- End with one low-friction call to action.
- The follow-up adds something new (a proof point, a use case, a simpler ask); it never just
  "bumps" the first email.
- Sign off with the sender's name as given. Never invent facts about the product or the
  reader's company; if you need a placeholder, write it as [like this].

A sequence has exactly two emails: the opener, sent on day 0, and a follow-up sent to people
who did not reply, usually 3 to 5 days later.
"""


def _brief_lines(brief: Brief) -> str:
    lines = [
        f"Product: {brief.product}",
        f"What it brings the reader: {brief.offer}",
        f"Sender (signs the emails): {brief.sender}",
        f"Audience (first guess): {brief.audience or 'not given; infer the likeliest buyer'}",
        f"Call to action: {brief.cta or 'a 15-minute call'}",
    ]
    return "\n".join(lines)


def _sequence_text(sequence: EmailSequence) -> str:
    parts = []
    for label, step in (("Opener", sequence.opener), ("Follow-up", sequence.follow_up)):
        parts.append(
            f"{label} (day {step.wait_days} after the previous email)\n"
            f"Subject: {step.subject}\n{step.body}"
        )
    return "\n\n".join(parts)


COMPACT_HEADER = """\
Cold email sequences that get replies. Each has two short emails: an opener sent on day 0 and
a follow-up a few days later. Each body greets the reader, names their problem, says one
concrete thing the product does about it, asks one small question, and ends with the
sender's name."""

_EXAMPLE_DRAFT = """\
Product: Brightdesk
Value for the reader: answers support tickets twice as fast
Sender: Sam Roy
Audience: support managers at online shops
Call to action: a 15-minute call
JSON: {"opener": {"subject": "Half the ticket backlog by Friday", "body": "Hi there,\\n\\n\
Support teams at online shops lose whole afternoons to repeat questions. Brightdesk drafts \
the answer to each ticket, so your team replies twice as fast.\\n\\nWorth a 15-minute \
call next week?\\n\\nSam Roy", "wait_days": 0}, "follow_up": {"subject": "One number \
from a shop like yours", "body": "Hi again,\\n\\nA shoe shop with four agents cut its \
reply time from 9 hours to 4 in the first month.\\n\\nShall I show you how in 15 \
minutes?\\n\\nSam Roy", "wait_days": 3}}"""


def _compact_brief(brief: Brief, audience: str) -> str:
    return (
        f"Product: {brief.product}\n"
        f"Value for the reader: {brief.offer}\n"
        f"Sender: {brief.sender}\n"
        f"Audience: {audience}\n"
        f"Call to action: {brief.cta or 'a 15-minute call'}"
    )


def draft_messages(brief: Brief, compact: bool = False) -> list[Message]:
    """The prompt for the first draft (``compact``: the short one for small base models)."""
    if compact:
        audience = brief.audience or "people who would buy this"
        text = f"{COMPACT_HEADER}\n\n{_EXAMPLE_DRAFT}\n\n{_compact_brief(brief, audience)}"
        return [Message.from_text(text=text, role=Role.USER)]
    user = (
        "Write a two-email cold sequence from this brief.\n\n"
        f"{_brief_lines(brief)}\n\n"
        "The audience is only a first guess; a human will review it after this draft, so "
        "write for the likeliest reader and keep the emails easy to retarget."
    )
    return [
        Message.from_text(text=SYSTEM_PROMPT, role=Role.SYSTEM),
        Message.from_text(text=user, role=Role.USER),
    ]


def refine_messages(
    brief: Brief, draft: EmailSequence, feedback: str, compact: bool = False
) -> list[Message]:
    """The prompt for the refinement: the brief, the draft and the human's feedback verbatim."""
    if compact:
        # A base model cannot follow "rewrite this"; it continues documents. The draft is
        # shown as the earlier version, and the new sequence is written for the audience
        # the reviewer named, in the example's format.
        text = (
            f"{COMPACT_HEADER}\n\n{_EXAMPLE_DRAFT}\n\n"
            f"Earlier version, written for {brief.audience or 'a guessed audience'}:\n"
            f"{_sequence_text(draft)}\n\n"
            f"A reviewer says the emails should really target: {feedback}\n\n"
            f"{_compact_brief(brief, feedback)}"
        )
        return [Message.from_text(text=text, role=Role.USER)]
    user = (
        "You wrote the draft below from this brief. A person who knows the market has told "
        "you who the emails should really target. Rewrite both emails for that audience: "
        "their role, their problems, their vocabulary. Keep what still works, change what "
        "does not, and keep the same sender and call to action unless the feedback says "
        "otherwise.\n\n"
        f"Brief:\n{_brief_lines(brief)}\n\n"
        f"Draft:\n{_sequence_text(draft)}\n\n"
        "Feedback on the audience, verbatim:\n"
        "<<<\n"
        f"{feedback}\n"
        ">>>"
    )
    return [
        Message.from_text(text=SYSTEM_PROMPT, role=Role.SYSTEM),
        Message.from_text(text=user, role=Role.USER),
    ]
