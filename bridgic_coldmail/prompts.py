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


def draft_messages(brief: Brief) -> list[Message]:
    """The prompt for the first draft."""
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


def refine_messages(brief: Brief, draft: EmailSequence, feedback: str) -> list[Message]:
    """The prompt for the refinement: the brief, the draft and the human's feedback verbatim."""
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
