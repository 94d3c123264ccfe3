"""Every word a capable LLM and the human are shown, in one place.

The prompts are written like a brief to a good copywriter: who the reader is, what the
sender offers, what a good cold email looks like, and what to return. The output format is
enforced by structured output (``writing.answer_model``), so the prompts describe content,
not JSON syntax. Small local models get their own short prompts in ``local/writer.py``.

The markers (``REFINE_MARKER``, ``REVISE_MARKER``) appear in exactly one kind of prompt each;
the scripted test server tells the kinds of call apart by them.
"""

from __future__ import annotations

import json
from typing import Any

from bridgic.core.model.types import Message, Role

from ..models import Brief, EmailSequence
from .writing import WritingTask

AUDIENCE_QUESTION = (
    "Who is this sequence really for? Describe the audience the emails should target "
    "(role, company size, industry, what they care about)."
)
"""The question put to the human when the run pauses for audience feedback."""

REVIEW_QUESTION = (
    "Review the refined sequence: approve it, ask for a revision with guidance, edit the "
    "emails yourself, or reject the run with a reason."
)
"""What a reviewer is asked at each review round."""

REFINE_MARKER = "Feedback on the audience, verbatim:"
"""Text that only the refinement prompt contains."""
REVISE_MARKER = "Reviewer's guidance for this revision, verbatim:"
"""Text that only the revision prompt contains."""

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
- Write no postal address, unsubscribe link or opt-out line: the sender's address and
  opt-out sentence are added to every email after you, exactly as the sender wrote them.

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


def sequence_text(sequence: EmailSequence) -> str:
    """Both emails as plain text, as a prompt shows them."""
    parts = []
    for label, step in (("Opener", sequence.opener), ("Follow-up", sequence.follow_up)):
        parts.append(
            f"{label} (day {step.wait_days} after the previous email)\n"
            f"Subject: {step.subject}\n{step.body}"
        )
    return "\n\n".join(parts)


def _fields_paragraph(fields: tuple[str, ...]) -> str:
    from ..merge import describe_fields

    return describe_fields(fields)


def _verbatim(marker: str, text: str) -> str:
    return f"{marker}\n<<<\n{text}\n>>>"


def draft_messages(brief: Brief, fields: tuple[str, ...] = ()) -> list[Message]:
    """The prompt for the first draft."""
    user = (
        "Write a two-email cold sequence from this brief.\n\n"
        f"{_brief_lines(brief)}\n\n"
        "The audience is only a first guess; a human will review it after this draft, so "
        "write for the likeliest reader and keep the emails easy to retarget.\n\n"
        f"{_fields_paragraph(fields)}"
    )
    return _conversation(user)


def refine_messages(
    brief: Brief, draft: EmailSequence, feedback: str, fields: tuple[str, ...] = ()
) -> list[Message]:
    """The prompt for the refinement: the brief, the draft and the human's feedback verbatim."""
    user = (
        "You wrote the draft below from this brief. A person who knows the market has told "
        "you who the emails should really target. Rewrite both emails for that audience: "
        "their role, their problems, their vocabulary. Keep what still works, change what "
        "does not, and keep the same sender and call to action unless the feedback says "
        "otherwise.\n\n"
        f"Brief:\n{_brief_lines(brief)}\n\n"
        f"Draft:\n{sequence_text(draft)}\n\n"
        f"{_fields_paragraph(fields)}\n\n"
        f"{_verbatim(REFINE_MARKER, feedback)}"
    )
    return _conversation(user)


def revise_messages(
    brief: Brief,
    current: EmailSequence,
    feedback: str | None,
    guidance: tuple[str, ...],
    fields: tuple[str, ...] = (),
) -> list[Message]:
    """The prompt for a review round's revision: every earlier instruction and the new one."""
    earlier = "\n".join(f"- {g}" for g in guidance[:-1]) or "- none"
    user = (
        "A reviewer is going through your cold sequence round by round. Revise both emails "
        "as this round's guidance asks, keeping every earlier instruction and the audience "
        "unless the guidance changes them.\n\n"
        f"Brief:\n{_brief_lines(brief)}\n\n"
        f"Audience, from the reviewer: {feedback or brief.audience or 'as in the brief'}\n\n"
        f"Earlier guidance, oldest first:\n{earlier}\n\n"
        f"The sequence under review:\n{sequence_text(current)}\n\n"
        f"{_fields_paragraph(fields)}\n\n"
        f"{_verbatim(REVISE_MARKER, guidance[-1])}"
    )
    return _conversation(user)


TOOL_NAME = "record_email_sequence"
"""The function a server that takes tools but no response format is made to call."""


def json_answer_instruction(schema: dict[str, Any], form: str) -> str:
    """What is added to the prompt when the server cannot take the schema as a response format
    (see ``openai_backend``): call the function (``tools``), or answer in JSON that follows the
    schema (``json_object`` and ``prompt``)."""
    if form == "tools":
        return f"Give your answer by calling the function {TOOL_NAME} with both emails."
    return (
        "Answer with one JSON object and nothing else: no words before or after it, no code "
        "fence. It must follow this JSON schema:\n" + json.dumps(schema, ensure_ascii=False)
    )


def messages_for(task: WritingTask) -> list[Message]:
    """The prompt for a writing task."""
    if task.kind == "draft":
        return draft_messages(task.brief, task.fields)
    if task.current is None:
        raise ValueError(f"a {task.kind} task needs the sequence to rewrite")
    if task.kind == "refine":
        if task.feedback is None:
            raise ValueError("a refine task needs the audience feedback")
        return refine_messages(task.brief, task.current, task.feedback, task.fields)
    if not task.guidance:
        raise ValueError("a revise task needs the reviewer's guidance")
    return revise_messages(task.brief, task.current, task.feedback, task.guidance, task.fields)


def _conversation(user: str) -> list[Message]:
    return [
        Message.from_text(text=SYSTEM_PROMPT, role=Role.SYSTEM),
        Message.from_text(text=user, role=Role.USER),
    ]
