"""What the worker does when a pause's timer falls due (see ``store/outbox.py``'s timers).

A **reminder** queues ``run.reminder`` for the run's destinations and plans the next
reminder, in one transaction. A **deadline** does what the run's wait policy declared:

- ``wait``: the run keeps waiting; ``run.deadline`` tells its destinations and
  ``run.escalated`` tells the policy's ``escalate_to``;
- ``proceed``: the path without the person — at the audience question, the refinement with
  the brief's own audience guess; at a review round, approval of the sequence under review;
  at the pause a fork started from (its first step failed), the fork's own input;
- ``reject``: the run ends as rejected, its reason saying the deadline ended it.

The outcome is a :class:`~bridgic_coldmail.models.Decision` whose actor is
:data:`~bridgic_coldmail.models.DEADLINE_ACTOR`, applied through the same claim as a
person's answer: applied once however many workers fire the same timer, and a person who
answers first wins (the deadline then does nothing; a person who answers after it gets the
conflict error that names what the deadline did). Queued messages have ids derived from
what they announce, so a worker killed between the outcome and its messages, fired again,
queues nothing twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .models import DEADLINE_ACTOR, Brief, DamagedRun, Decision, Run, RunStatus, recorded_decision
from .signing import SnapshotSigner
from .store.outbox import OutboxOutcome, Timer, plan_notifications
from .store.protocol import Refusal, RefusalReason

if TYPE_CHECKING:
    from .store import RunStore

Apply = Callable[[str, Decision], Awaitable["Run | Refusal"]]
"""``Runner.apply``: claim the run for an answer, run it, record it."""
HELD_RETRY_SECONDS = 15.0
"""When the run is being answered right now, look again this much later."""
EARLY_SECONDS = 1.0
"""A timer fired this much before its signed due time (clocks apart) still counts as due."""


def deadline_action(run: Run, timer: Timer) -> Decision:
    """The answer a deadline gives for the person at ``timer``'s pause."""
    when = timer.due_at.strftime("%Y-%m-%d %H:%M UTC")
    if timer.wait.on_timeout == "reject":
        return recorded_decision(
            "reject",
            text=f"No answer came before the deadline ({when}); the deadline ended the run.",
            reviewer=DEADLINE_ACTOR,
            round=timer.round,
        )
    if timer.round is None:
        return recorded_decision(
            "feedback", text=audience_guess(run.brief), reviewer=DEADLINE_ACTOR
        )
    return recorded_decision("approve", reviewer=DEADLINE_ACTOR, round=timer.round)


def audience_guess(brief: Brief) -> str:
    """The feedback a deadline that proceeds gives: the brief's own guess at the audience."""
    if brief.audience:
        return brief.audience
    return (
        "No audience feedback came before the deadline: keep the audience the draft was "
        f"written for ({brief.product})."
    )


@dataclass
class DeadlineKeeper:
    """Fires due timers for one store. Without ``apply`` (no runner) deadlines that
    proceed or reject are left for a worker that has one."""

    store: RunStore
    apply: Apply | None = None

    async def fire(self, timer: Timer) -> tuple[OutboxOutcome, str]:
        """Fire ``timer``; the outcome to record on its row, and one line saying what was
        done. Raises what applying the outcome raised (an LLM that gave up: the worker
        tries the timer again later, by the retry schedule)."""
        now = datetime.now(timezone.utc)
        early = (timer.due_at - now).total_seconds()
        if early > EARLY_SECONDS:  # its row's due time was moved: the signed one rules
            return OutboxOutcome.retry("not due yet", early), f"not due for {early:.0f} s"
        stored = await self.store.get(timer.interaction_id)
        if stored is None:
            return OutboxOutcome.delivered(), "not needed: the run is gone"
        if isinstance(stored, DamagedRun):
            return OutboxOutcome.failed("the run does not verify; nothing was done"), (
                "the run does not verify"
            )
        run = stored
        # A run "resuming" at this pause still waits for it: its answer may fail or its
        # resumer may have died (the claim below tells a live lease from a lapsed one).
        waiting = run.status.is_paused or run.status is RunStatus.RESUMING
        if not (waiting and run.pause_id == timer.pause_id):
            if timer.kind == "deadline" and await self._done_by_deadline(timer):
                await self._announce_deadline(timer, timer.wait.on_timeout)
                return OutboxOutcome.delivered(), "the deadline's outcome was applied"
            return OutboxOutcome.delivered(_ANSWERED), _ANSWERED
        if timer.kind == "reminder":
            return await self._remind(timer)
        return await self._deadline(run, timer)

    async def _remind(self, timer: Timer) -> tuple[OutboxOutcome, str]:
        following = timer.next_reminder()

        def plan(row: Mapping[str, Any], now: datetime, signer: SnapshotSigner) -> list[Any]:
            rows = plan_notifications(
                row, "run.reminder", now=now, signer=signer, n=timer.n, timer=timer
            )
            return rows + ([following.row(signer, now=now)] if following else [])

        await self.store.enqueue(timer.interaction_id, plan)
        return OutboxOutcome.delivered(), f"reminder {timer.n} queued"

    async def _deadline(self, run: Run, timer: Timer) -> tuple[OutboxOutcome, str]:
        outcome = timer.wait.on_timeout
        if outcome == "wait":
            await self._announce_deadline(timer, "wait")
            return OutboxOutcome.delivered(), "deadline passed: the run keeps waiting"
        if self.apply is None:
            raise ConfigurationError(
                "this worker cannot apply a deadline's outcome (it has no runner)"
            )
        forked = await self._fork_input(run, timer) if outcome == "proceed" else None
        action = forked or deadline_action(run, timer)
        result = await self.apply(timer.interaction_id, action)
        if isinstance(result, Refusal):
            if result.reason is RefusalReason.HELD:
                return (
                    OutboxOutcome.retry("someone is answering right now", HELD_RETRY_SECONDS),
                    "someone is answering right now; looking again shortly",
                )
            if not await self._done_by_deadline(timer):  # a person answered first
                return OutboxOutcome.delivered(_ANSWERED), _ANSWERED
        elif not await self._done_by_deadline(timer):  # the same answer a person gave
            return OutboxOutcome.delivered(_ANSWERED), _ANSWERED
        await self._announce_deadline(timer, outcome)
        return OutboxOutcome.delivered(), f"deadline passed: {outcome} applied"

    async def _fork_input(self, run: Run, timer: Timer) -> Decision | None:
        """At the pause a fork started from (its first step failed), the fork's own input:
        that pause was answered when the fork was made, and proceeding with anything else
        would make a variant of an angle the family says it did not take."""
        family = await self.store.family(run.interaction_id)
        own = None if family is None else family.member(run.interaction_id)
        link = None if own is None or own.altered else own.link
        if link is None or link.round != (timer.round or 0):
            return None
        if link.kind == "feedback":
            return recorded_decision("feedback", text=link.text, reviewer=DEADLINE_ACTOR)
        return recorded_decision(
            "revise", text=link.text, reviewer=DEADLINE_ACTOR, round=link.round
        )

    async def _done_by_deadline(self, timer: Timer) -> bool:
        """Whether the history says this pause was answered by its deadline."""
        history = await self.store.history(timer.interaction_id)
        if not isinstance(history, list):
            return False
        answers = ("feedback", "approved", "revised", "rejected")
        return any(
            e.actor == DEADLINE_ACTOR
            and e.kind in answers
            and e.round == timer.round
            and e.verified
            for e in history
        )

    async def _announce_deadline(self, timer: Timer, outcome: Any) -> None:
        def plan(row: Mapping[str, Any], now: datetime, signer: SnapshotSigner) -> list[Any]:
            told = plan_notifications(
                row, "run.deadline", now=now, signer=signer, timer=timer, on_timeout=outcome
            )
            escalated = plan_notifications(
                row, "run.escalated", now=now, signer=signer, timer=timer, on_timeout=outcome
            )
            return told + escalated

        await self.store.enqueue(timer.interaction_id, plan)


_ANSWERED = "not needed: the pause was answered before it fell due"
