"""What the automa asks a writer for, and the two kinds of writer.

Every LLM step is a :class:`WritingTask`: the brief, what to write (a first draft, a
refinement for the audience a person named, or a revision with a reviewer's guidance), the
sequence it starts from and the merge fields the emails may use.

A capable model (OpenAI or any OpenAI-compatible server, a larger GGUF) is asked for the
whole sequence through Bridgic structured output, with the prompts of ``prompts.py``. A
small model writes better when it writes less: an LLM that implements
:class:`SequenceComposer` is handed the task itself and composes the emails its own way
(``local_writer.py`` lets a 270M model write only short lines and builds the emails around
the brief's own words). Either way the result is a validated :class:`EmailSequence`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from .models import Brief, EmailSequence

TaskKind = Literal["draft", "refine", "revise"]


@dataclass(frozen=True)
class WritingTask:
    """One request for a sequence."""

    kind: TaskKind
    """``draft``: the first sequence from the brief. ``refine``: rewrite ``current`` for the
    audience in ``feedback``. ``revise``: rewrite ``current`` following ``guidance[-1]``."""
    brief: Brief
    feedback: str | None = None
    """The reviewer's answer to the audience question (refine and revise)."""
    current: EmailSequence | None = None
    """The sequence to rewrite: the draft (refine) or the one under review (revise)."""
    guidance: tuple[str, ...] = ()
    """Every revise instruction so far, oldest first; the last one is this round's."""
    fields: tuple[str, ...] = ()
    """Merge fields the emails may use as ``{{name}}`` or ``{{name|fallback}}``; no others."""

    @property
    def audience(self) -> str | None:
        """Who the emails are for: the reviewer's answer when there is one, else the guess."""
        return self.feedback or self.brief.audience


@runtime_checkable
class SequenceComposer(Protocol):
    """An LLM that writes a sequence from the task itself instead of from a prompt."""

    async def acompose(self, task: WritingTask) -> EmailSequence:
        """Write the sequence the task asks for. Raise on failure; it may be retried."""
        ...
