"""Forks (internal): a new run from one of a run's kept pauses, given other input there.

:meth:`~.agent.ColdMailAgent.fork` hands its arguments here. A fork is checked like the
resume or revision it stands for, stored paused where its parent was (``store.fork``, from
that pause's kept, signed snapshot), then answered through the runner's ordinary claim —
so it comes back as a resume or a revision would. A ``key`` names the fork (its id derives
from parent and key), which makes a retry, or a double click, fork once.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any

from . import _wording as wording
from ._runner import SUPPORTED_SERIALIZATION_VERSIONS, Runner
from .errors import (
    ColdmailError,
    InvalidInput,
    RunBeingResumed,
    RunConflict,
    RunNotFound,
    StoreError,
)
from .models import (
    MAX_ROUND_NUMBER,
    Decision,
    Run,
    RunStatus,
    make_decision,
    validate_interaction_id,
    validate_reviewer,
)
from .store import Refusal, RefusalReason
from .store.forks import Family, ForkLink, fork_refusal_problem


async def fork(
    runner: Runner,
    interaction_id: str,
    *,
    round: int | None,
    feedback: str | None,
    guidance: str | None,
    reviewer: str | None,
    key: str | None,
) -> Run:
    """:meth:`~.agent.ColdMailAgent.fork`: check the input, store the fork, answer it."""
    store = runner.store
    interaction_id = validate_interaction_id(interaction_id)
    at = _fork_round(round)
    who = validate_reviewer(reviewer)
    if at == 0:
        if guidance is not None or feedback is None:
            raise InvalidInput(
                "round 0 is the audience question: give feedback (who the emails should "
                "target), not guidance; guidance forks a review round (round 1, 2…)"
            )
        action = make_decision("feedback", text=feedback, reviewer=who)
        link = ForkLink(interaction_id, 0, "feedback", str(action.text), who)
    else:
        if feedback is not None or guidance is None:
            raise InvalidInput(
                f"round {at} is a review round: give guidance (what the next version "
                "should change), not feedback; feedback forks the audience question "
                "(round 0)"
            )
        action = make_decision("revise", text=guidance, reviewer=who, round=at)
        link = ForkLink(interaction_id, at, "revise", str(action.text), who)
        parent = await runner.get(interaction_id)
        if parent.max_rounds is not None and at >= parent.max_rounds:
            raise RunConflict(
                f"round {at} is the last of run {interaction_id} ({parent.max_rounds} "
                "rounds): a fork of it could not be revised; fork an earlier round",
                topic="round_limit",
            )
    new_id = uuid.uuid4().hex if key is None else _fork_id(interaction_id, key)
    if key is not None and await _made_by_key(runner, new_id, link):
        return await _fork_again(runner, new_id, action, interaction_id, at)
    try:
        stored = await store.fork(
            interaction_id, at, new_id, link, SUPPORTED_SERIALIZATION_VERSIONS
        )
    except StoreError:
        # The same key at the same moment (a double click): the other call stored it.
        if key is None or not await _made_by_key(runner, new_id, link):
            raise
        return await _fork_again(runner, new_id, action, interaction_id, at)
    if isinstance(stored, Refusal):
        if stored.reason is RefusalReason.NOT_KEPT and stored.problem is None:
            await _refuse_before_a_forks_start(runner, interaction_id, at)
        problem = fork_refusal_problem(stored, interaction_id, at)
        if problem is not None:
            raise RunConflict(problem, topic=stored.reason.value)
        raise wording.refusal_error(
            interaction_id,
            stored,
            action,
            location=store.location,
            supported_versions=SUPPORTED_SERIALIZATION_VERSIONS,
        )
    if key is not None:  # a repeat of this key may have taken the step first: it is the same
        return await _fork_again(runner, new_id, action, interaction_id, at)
    return await _finish_fork(runner, new_id, action, interaction_id, at)


async def family(runner: Runner, interaction_id: str) -> Family:
    """:meth:`~.agent.ColdMailAgent.family`: the run's family, or ``RunNotFound``."""
    interaction_id = validate_interaction_id(interaction_id)
    found = await runner.store.family(interaction_id)
    if found is None:
        raise RunNotFound(interaction_id, runner.store.location)
    return found


async def family_variants(runner: Runner, interaction_id: str) -> list[str]:
    """:meth:`~.agent.ColdMailAgent.family_variants`: the family's other approved runs."""
    found = await family(runner, interaction_id)
    return [
        member.interaction_id
        for member in found.members
        if member.interaction_id != interaction_id
        and not member.altered
        and isinstance(member.run, Run)
        and member.run.status is RunStatus.COMPLETED
    ]


async def _finish_fork(
    runner: Runner, new_id: str, action: Decision, interaction_id: str, at: int
) -> Run:
    """Resume the stored fork with its input (a repeat returns what was recorded)."""
    try:
        return await runner.answer(new_id, action)
    except ColdmailError as exc:
        verb = "resume" if at == 0 else "revise"
        exc.args = (
            f"{exc} (the fork {new_id} of run {interaction_id} is stored, paused where "
            f"its parent was: {verb} it rather than forking again)",
        )
        raise


async def _fork_again(
    runner: Runner, new_id: str, action: Decision, interaction_id: str, at: int
) -> Run:
    """A repeat of a keyed fork: what its first call recorded, the fork as it is while
    that call still works on it, or its step finished now if that call's failed."""
    try:
        return await _finish_fork(runner, new_id, action, interaction_id, at)
    except RunBeingResumed:
        return await runner.get(new_id)


async def _made_by_key(runner: Runner, new_id: str, link: ForkLink) -> bool:
    """Whether the fork a key names is stored: True when it is this fork; a fork made
    with other input under the same key is refused."""
    found = await runner.store.family(new_id)
    own = None if found is None else found.member(new_id)
    if own is None:
        return False
    if own.link != link:
        raise InvalidInput(
            f"this key was used for another fork of run {link.parent_id} (run {new_id}): "
            "give a new key for a new fork"
        )
    return True


async def _refuse_before_a_forks_start(runner: Runner, interaction_id: str, round: int) -> None:
    """A fork never paused before the round it was forked at: say to fork its parent."""
    found = await runner.store.family(interaction_id)
    own = None if found is None else found.member(interaction_id)
    link = None if own is None else own.link
    if link is not None and round < link.round:
        where = "the audience question" if round == 0 else f"review round {round}"
        raise RunConflict(
            f"run {interaction_id} is a fork of run {link.parent_id} started at review "
            f"round {link.round}: it never paused at {where} itself; fork run "
            f"{link.parent_id} at round {round} instead",
            topic="no_round",
        )


def _fork_round(round: Any) -> int:
    """A fork's round: None or 0 is the audience question, N is review round N."""
    if round is None:
        return 0
    if (
        isinstance(round, bool)
        or not isinstance(round, int)
        or not (0 <= round <= MAX_ROUND_NUMBER)
    ):
        raise InvalidInput(
            f"round must be 0 (the audience question) or a review round 1 to "
            f"{MAX_ROUND_NUMBER}, not {round!r}"
        )
    return round


_FORK_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _fork_id(interaction_id: str, key: Any) -> str:
    """The id of the fork that ``key`` names for this parent (32 hex, as run ids are)."""
    if not isinstance(key, str) or not _FORK_KEY.fullmatch(key):
        raise InvalidInput(
            f"a fork's key is 1-64 letters, digits, '-' or '_', not {str(key)[:40]!r}"
        )
    seed = f"bridgic-coldmail fork\0{interaction_id}\0{key}".encode()
    return hashlib.sha256(seed).hexdigest()[:32]
