"""One-click links (internal): a signed link to the pause a run waits at, and what one opens.

:meth:`~.agent.ColdMailAgent.link` and ``open_link`` hand their arguments here. This module
finds the run and its pause, chooses when the link stops working (the pause's deadline, else
``COLDMAIL_LINK_TTL``), and checks a token and its page's form token against the store's key;
``notify/links.py`` makes and reads the tokens and knows nothing of the store. Answering
through a link goes through the agent's ``decide``, like every other answer.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from ._runner import Runner
from .errors import (
    ConfigurationError,
    InvalidInput,
    LinkRefused,
    LinkRunGone,
    RunBeingResumed,
    RunConflict,
    RunNotFound,
)
from .models import MAX_PAGE, Run, RunStatus, validate_interaction_id
from .notify.links import (
    MAX_LINK_DAYS,
    REFUSED,
    RUN_GONE,
    OpenedLink,
    check_run,
    current_pause,
    form_token_matches,
    link_expiry,
    make_form_token,
    make_link,
    read_token,
)
from .store.outbox import wait_state


async def link(runner: Runner, interaction_id: str, *, expires_at: datetime | None) -> str:
    """:meth:`~.agent.ColdMailAgent.link`."""
    store = runner.store
    origin = runner.settings.public_origin
    if not origin:
        raise ConfigurationError(
            "a one-click link needs the address browsers reach the inbox at: set "
            "COLDMAIL_PUBLIC_ORIGIN (e.g. https://review.example.com, or "
            "http://127.0.0.1:8000 for `coldmail serve` on this machine)",
            topic="public_origin",
        )
    now = datetime.now(timezone.utc)
    if expires_at is not None:
        if expires_at.tzinfo is None or expires_at <= now:
            raise InvalidInput("expires_at must be an aware time in the future (e.g. in UTC)")
        if expires_at - now > timedelta(days=MAX_LINK_DAYS):
            raise InvalidInput(
                f"a link works at most {MAX_LINK_DAYS} days; give an earlier expires_at"
            )
    run = await runner.get(validate_interaction_id(interaction_id))
    pause = current_pause(run)
    if run.status is RunStatus.RESUMING:
        raise RunBeingResumed(
            f"run {run.interaction_id} is being worked on right now; ask for its link "
            "once it pauses again",
            topic="held",
        )
    signer = await store.signer()
    if pause is None or signer is None:
        raise RunConflict(
            f"run {run.interaction_id} is {run.describe_state()} and waits for nobody: "
            "there is no question a link could answer",
            topic="not_paused",
        )
    if expires_at is None:
        # The pause's deadline, when it has one ahead: the link stops when the wait does.
        deliveries = await store.notifications(run.interaction_id, limit=MAX_PAGE)
        deadline = wait_state(pause, deliveries).deadline
        expires_at = link_expiry(now, runner.settings.link_ttl, deadline)
    at_review = run.status is RunStatus.AWAITING_REVIEW
    round = run.round if at_review else None
    return make_link(signer, origin, run.interaction_id, pause, expires_at, round=round)


async def open_link(runner: Runner, token: str, *, form_token: str | None) -> OpenedLink:
    """:meth:`~.agent.ColdMailAgent.open_link`."""
    signer = await runner.store.signer()
    if signer is None:  # no database: no link was made here
        raise LinkRefused(REFUSED, topic="forged")
    claim = read_token(signer, token)
    if form_token is not None and not form_token_matches(signer, token, form_token):
        raise LinkRefused(
            "this form did not come from this link's page (missing or wrong form token); "
            "open the link again and submit from there; nothing was changed",
            topic="form",
        )
    try:
        run: Run | None = await runner.get(validate_interaction_id(claim.run_id))
    except (RunNotFound, InvalidInput):
        run = None
    if run is None:
        raise LinkRunGone(RUN_GONE, topic="not_found")
    is_open = check_run(claim, run, to_act=False)
    return OpenedLink(claim, run, is_open, make_form_token(signer, token))
