"""The reviewer's pages: the inbox, a new run, a run, its feedback form and its export.

Submitting feedback resumes the run through the store's claim, so one submission is used
however many arrive at once. A second submission of the *same* feedback waits for the first
and shows its result; a submission of *different* feedback that lost the race is told, with a
409 page showing the feedback that was used, that its own was not. (The review decisions work
the same way; see :mod:`.review`. Both, and a one-click link's page, go through
:mod:`.answers`.)

Every form carries the CSRF token of the page it came from; one without it, or with another,
changes nothing and gets a 403 page.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile

from ..agent import ColdMailAgent
from ..compliance import MAX_FOOTER_CHARS
from ..errors import (
    ConfigurationError,
    InvalidInput,
    LlmError,
    RunBeingResumed,
    RunConflict,
    RunNotFound,
    SnapshotIntegrityError,
)
from ..export.lint import RULES, check_rule_ids
from ..export.profiles import NAMES as PROFILE_NAMES
from ..export.writer import MAX_VARIANTS, check_variant_ids
from ..models import (
    BRIEF_LIMITS,
    MAX_PAGE,
    Run,
    RunStatus,
    make_brief,
)
from ..notify.destinations import MAX_DEST_CHARS, MAX_DESTINATIONS
from ..notify.policy import ON_TIMEOUT, OUTCOME_WORDS
from ..store.outbox import Timer
from .answers import apply_decision, decision_form
from .api import API_MAX_OFFSET, exportable
from .dependencies import Agent, Policy
from .responses import error_response, templates
from .security import (
    CSRF_COOKIE,
    WebPolicy,
    csrf_matches,
    csrf_token,
    relative_location,
    set_private_cookie,
)
from .uploads import (
    ExportRefused,
    ExportShown,
    download,
    export_upload,
    left_out_fingerprint,
    private_folder,
    read_chunks,
    save_upload,
    shown_name,
)
from .views import (
    MAX_VARIANTS_TEXT,
    Applied,
    FormState,
    Outcome,
    age,
    clip,
    form_text,
    moment,
    show_run,
)

PAGE_SIZE = 20
"""Runs per inbox page."""
MAX_INBOX_PAGE = API_MAX_OFFSET // PAGE_SIZE + 1
TABS = {
    "awaiting": (RunStatus.AWAITING_FEEDBACK, "Waiting for feedback"),
    "review": (RunStatus.AWAITING_REVIEW, "Awaiting review"),
    "completed": (RunStatus.COMPLETED, "Completed"),
    "rejected": (RunStatus.REJECTED, "Rejected"),
}
"""The inbox's tabs: name in the address → the status listed, and the tab's label."""
AUDIENCE_CHARS = 120
"""The audience a list row shows (the feedback, else the brief's guess), clipped to this."""
BRIEF_FIELDS = ("product", "offer", "sender", "audience", "cta")
MAX_FIELDS_CHARS = 2000
"""The new-run form's merge-field list, as typed (comma-separated column names)."""

router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)


def form_expired(request: Request) -> Response:
    """The 403 page for a form without this page's CSRF token."""
    message = (
        "This form did not come from this page (missing or wrong CSRF token). "
        "Reload the page and submit again; nothing was changed."
    )
    return error_response(request.scope, 403, "Forbidden", message, title="Form expired")


def to_run_page(run: Run) -> Response:
    """The redirect after a successful form: back to the run's page."""
    return RedirectResponse(relative_location(f"/runs/{run.interaction_id}"), 303)


@router.get("/")
async def inbox(
    request: Request,
    agent: Agent,
    tab: str = "awaiting",
    page: int = Query(1, ge=1, le=MAX_INBOX_PAGE),
    sort: str = "newest",
) -> Response:
    """The runs of one tab (default: waiting for feedback), newest first, or with
    ``sort=due`` the soonest deadline first (runs without one after them); each tab says
    how many runs it has."""
    tab = tab if tab in TABS else "awaiting"
    sort = sort if sort in SORTS else "newest"
    status = TABS[tab][0]
    window = {"limit": PAGE_SIZE + 1, "offset": (page - 1) * PAGE_SIZE}
    deadlines: dict[str, Timer] = {}
    runs: list[Any]
    if sort == "due":
        due = await agent.list_due_soonest(status, **window)
        runs = [item.run for item in due]
        deadlines = {i.run.interaction_id: i.deadline for i in due if i.deadline is not None}
    else:
        runs = await agent.list(status, **window)
    counts = await agent.counts()
    return templates.TemplateResponse(
        request,
        "inbox.html",
        {
            "runs": runs[:PAGE_SIZE],
            "has_more": len(runs) > PAGE_SIZE,
            "page": page,
            "tab": tab,
            "tabs": {name: (label, counts.get(s, 0)) for name, (s, label) in TABS.items()},
            "age": age,
            "clip": clip,
            "audience_chars": AUDIENCE_CHARS,
            "sort": sort,
            "sorts": SORTS,
            "deadlines": deadlines,
            "moment": moment,
            "outcome_words": OUTCOME_WORDS,
        },
    )


SORTS = {"newest": "Newest first", "due": "Due soonest"}
"""The inbox's orders: name in the address → the link's label."""


# ---------------------------------------------------------------------------- a new run


def render_new_run(
    request: Request,
    policy: WebPolicy,
    *,
    values: dict[str, str] | None = None,
    status: int = 200,
    message: str | None = None,
) -> Response:
    """The new-run form (with what was typed, after a refusal); sets the CSRF cookie."""
    csrf = csrf_token(request)
    context = {
        "values": values or {},
        "limits": {
            **BRIEF_LIMITS,
            "fields": MAX_FIELDS_CHARS,
            "footer": MAX_FOOTER_CHARS,
            "destinations": MAX_DESTINATIONS_CHARS,
        },
        "on_timeout_choices": ON_TIMEOUT,
        "outcome_words": OUTCOME_WORDS,
        "csrf_token": csrf,
        "message": message,
    }
    response = templates.TemplateResponse(request, "new.html", context, status)
    set_private_cookie(response, request, policy, CSRF_COOKIE, csrf)
    return response


@router.get("/runs/new")
async def new_run_page(request: Request, policy: Policy) -> Response:
    """The form that starts a run."""
    return render_new_run(request, policy)


@router.post("/runs")
async def new_run(
    request: Request,
    agent: Agent,
    policy: Policy,
    product: str = Form(""),
    offer: str = Form(""),
    sender: str = Form(""),
    audience: str = Form(""),
    cta: str = Form(""),
    postal_address: str = Form(""),
    opt_out: str = Form(""),
    fields: str = Form(""),
    review: str = Form(""),
    notify: str = Form(""),
    respond_within: str = Form(""),
    remind_every: str = Form(""),
    on_timeout: str = Form(""),
    escalate_to: str = Form(""),
    csrf_token: str = Form(""),
) -> Response:
    """Draft a run from the form's brief (and where its notifications go, how long each
    pause waits); on success, to its page. Bad input shows the form again with what was
    typed, before any LLM call."""
    if not csrf_matches(request, csrf_token):
        return form_expired(request)
    typed = {"product": product, "offer": offer, "sender": sender, "audience": audience}
    typed |= {"cta": cta, "fields": fields, "review": "on" if review else ""}
    typed |= {"postal_address": postal_address, "opt_out": opt_out}
    wait = {"respond_within": respond_within, "remind_every": remind_every}
    wait |= {"on_timeout": on_timeout, "escalate_to": escalate_to}
    typed |= {"notify": notify, **wait}
    try:
        brief = make_brief(
            product=product,
            offer=offer,
            sender=sender,
            audience=audience,
            cta=cta,
            postal_address=postal_address,
            opt_out=opt_out,
        )
        columns = [name.strip() for name in fields.split(",") if name.strip()]
        if len(fields) > MAX_FIELDS_CHARS:
            raise InvalidInput(
                f"the column names are {len(fields)} characters; the limit is {MAX_FIELDS_CHARS}"
            )
        run = await agent.start(
            brief, review=bool(review), fields=columns, **wait_fields(notify, wait)
        )
    except (InvalidInput, LlmError, ConfigurationError) as exc:
        return render_new_run(
            request, policy, values=typed, status=exc.http_status, message=str(exc)
        )
    return to_run_page(run)


MAX_DESTINATIONS_CHARS = MAX_DESTINATIONS * (MAX_DEST_CHARS + 2)
"""The new-run form's notify and escalate-to fields, as typed: every destination at its
longest, with separators."""
_DEST_SEPARATORS = re.compile(r"[,\r\n]+")


def wait_fields(notify: str, typed: dict[str, str]) -> dict[str, Any]:
    """The new-run form's notify and wait fields as ``agent.start`` takes them: destinations
    separated by commas or lines, and each field left empty taking the setting's default.

    Raises:
        InvalidInput: a destination field longer than any list of destinations can be.
    """
    for name, text in (("notify", notify), ("escalate to", typed["escalate_to"])):
        if len(text) > MAX_DESTINATIONS_CHARS:
            raise InvalidInput(
                f"the {name} field is {len(text)} characters; give at most "
                f"{MAX_DESTINATIONS} destinations, one per line or separated by commas"
            )
    return {
        "notify": split_destinations(notify),
        "respond_within": typed["respond_within"].strip() or None,
        "remind_every": typed["remind_every"].strip() or None,
        "on_timeout": typed["on_timeout"] or None,
        "escalate_to": split_destinations(typed["escalate_to"]),
    }


def split_destinations(text: str) -> list[str]:
    return [part.strip() for part in _DEST_SEPARATORS.split(text) if part.strip()]


# ---------------------------------------------------------------------------- a run


@router.get("/runs/{interaction_id}")
async def run_page(request: Request, interaction_id: str, agent: Agent, policy: Policy) -> Response:
    """A run: its brief, lint, draft and feedback form, review rounds and decisions, or its
    result and export; then its history."""
    return await show_run(request, agent, policy, await agent.get(interaction_id))


@router.post("/runs/{interaction_id}/feedback")
async def submit_feedback(
    request: Request,
    interaction_id: str,
    agent: Agent,
    policy: Policy,
    feedback: str = Form(""),
    csrf_token: str = Form(""),
) -> Response:
    """Resume the run with the form's feedback; on success, back to the run page."""
    if not csrf_matches(request, csrf_token):
        return form_expired(request)
    answer = decision_form("feedback", {"feedback": feedback})
    outcome = await apply_decision(agent, interaction_id, answer)
    return await answer_on_run_page(request, agent, policy, outcome)


async def answer_on_run_page(
    request: Request, agent: ColdMailAgent, policy: WebPolicy, outcome: Outcome
) -> Response:
    """The run page's answer to a submitted form: back to the page when it was applied, else
    the page saying why, with what was typed."""
    if isinstance(outcome, Applied):
        return to_run_page(outcome.run)
    return await show_run(
        request,
        agent,
        policy,
        outcome.run,
        status=outcome.status,
        message=outcome.message,
        message_kind="error",
        form=outcome.form,
    )


# ---------------------------------------------------------------------------- forks


@router.post("/runs/{interaction_id}/fork")
async def fork_page(
    request: Request,
    interaction_id: str,
    agent: Agent,
    policy: Policy,
    round: str = Form("0"),
    text: str = Form(""),
    csrf_token: str = Form(""),
    fork_key: str = Form(""),
) -> Response:
    """Fork one of the run's pauses into a variant (``agent.fork``): the audience question
    (round 0) with other feedback, or review round N with other guidance; on success, the
    new run's page. Refused input comes back on this page with what was typed. The form's
    key (new with each page) makes the same form sent twice fork once."""
    if not csrf_matches(request, csrf_token):
        return form_expired(request)
    kept = FormState("fork", {"round": round, "text": text})
    at: Any = round.strip()
    at = int(at) if at.isdigit() and len(at) <= 6 else at
    words = {"feedback": text} if at in (0, "0") else {"guidance": text}
    try:
        forked = await agent.fork(interaction_id, round=at, key=fork_key or None, **words)
    except (InvalidInput, RunConflict, RunBeingResumed, LlmError, SnapshotIntegrityError) as exc:
        run = await agent.get(interaction_id)
        return await show_run(
            request,
            agent,
            policy,
            run,
            status=exc.http_status,
            message=f"No fork was made: {exc}" if not isinstance(exc, LlmError) else str(exc),
            message_kind="error",
            form=kept,
        )
    return to_run_page(forked)


# ---------------------------------------------------------------------------- notifications


@router.post("/runs/{interaction_id}/notifications/{notification_id}/retry")
async def retry_notification_page(
    request: Request,
    interaction_id: str,
    notification_id: str,
    agent: Agent,
    policy: Policy,
    csrf_token: str = Form(""),
) -> Response:
    """Queue one of the run's failed notifications again, due now; back to the run page.
    One that is pending or delivered is left as it is, and the page says so (a second
    click of the button is answered that way too)."""
    if not csrf_matches(request, csrf_token):
        return form_expired(request)
    run = await agent.get(interaction_id)
    deliveries = await agent.notifications(run.interaction_id, limit=MAX_PAGE)
    found = next((d for d in deliveries if d.id == notification_id), None)
    if found is None:
        message = (
            "This run has no such notification (it may have been purged with its run); "
            "nothing was changed."
        )
        return await show_run(
            request, agent, policy, run, status=404, message=message, message_kind="error"
        )
    if found.status != "failed":
        return await show_run(
            request, agent, policy, run, message=NOT_RETRIED[found.status], message_kind="notice"
        )
    await agent.retry_notification(found.id)
    return to_run_page(run)


NOT_RETRIED = {
    "pending": "That notification is already queued (pending); nothing was changed.",
    "delivered": "That notification was already delivered; nothing was changed.",
}
"""What the run page says when asked to retry a notification that has not failed."""


# ---------------------------------------------------------------------------- export


EXPORT_FORM_FIELDS = 10 + len(RULES)
"""The export form's fields: the file, its options, and a box per check rule."""


@router.post("/runs/{interaction_id}/export")
async def export_page(
    request: Request, interaction_id: str, agent: Agent, policy: Policy
) -> Response:
    """Export a completed run for the uploaded lead list.

    The file is downloaded when every lead can be sent, or when the form carries the
    fingerprint of the left-out rows the page listed (``leave_out``): a download never leaves
    out a lead the person was not shown. Otherwise — and always with ``check`` (the page's
    script checks first) — the run page lists what the export found: the leads left out and
    why, and the lint for this list. When nothing can be exported, it says why.

    ``variants`` names other approved runs for an A/B export (ids separated by spaces or
    commas); the ticked ``disabled_rule`` boxes are the checks turned off (the form's
    ``rules`` field says the boxes were shown, so none ticked turns none off; without either,
    ``COLDMAIL_DISABLED_RULES`` applies, as in the API).
    """
    run = await exportable(agent, interaction_id)
    async with request.form(max_files=1, max_fields=EXPORT_FORM_FIELDS) as submitted:
        if not csrf_matches(request, form_text(submitted, "csrf_token")):
            return form_expired(request)
        upload = submitted.get("leads")
        format = form_text(submitted, "format") or "csv"
        strict = bool(form_text(submitted, "strict"))
        profile = form_text(submitted, "profile") or "generic"
        check = bool(form_text(submitted, "check"))
        acknowledged = form_text(submitted, "leave_out")
        variants = form_text(submitted, "variants")
        ticked = [rule for rule in submitted.getlist("disabled_rule") if isinstance(rule, str)]
        disabled = ticked if ticked or form_text(submitted, "rules") else None
        kept_values = {
            "format": format,
            "strict": "on" if strict else "",
            "profile": profile,
            "variants": variants[:MAX_VARIANTS_TEXT],
        }
        if disabled is not None:
            kept_values["disabled_rules"] = ",".join(disabled)
        kept = FormState("export", kept_values)
        problem = None
        problem_status = 422
        if not isinstance(upload, UploadFile) or not upload.filename:
            problem = "choose the lead list's CSV file to export for"
        elif format not in ("csv", "json"):
            problem = f"unknown export format {format[:20]!r}; choose CSV or JSON"
        elif profile not in PROFILE_NAMES:
            problem = f"unknown sending tool {profile[:20]!r}; choose one from the list"
        elif len(variants) > MAX_VARIANTS_TEXT:
            problem = (
                f"the variants field is {len(variants)} characters; name at most "
                f"{MAX_VARIANTS - 1} other runs by their ids"
            )
        else:
            try:
                # Before the list is read: these refusals are about the form, not the list.
                ids = check_variant_ids(run.interaction_id, variants.replace(",", " ").split())
                for variant in ids[1:]:
                    await exportable(agent, variant)
                if disabled is not None:
                    check_rule_ids(disabled)
            except (InvalidInput, RunNotFound, RunConflict) as exc:
                problem, problem_status = str(exc), exc.http_status
        if problem is not None or not isinstance(upload, UploadFile):
            return await show_run(
                request,
                agent,
                policy,
                run,
                status=problem_status,
                message=problem,
                message_kind="error",
                form=kept,
            )
        with private_folder() as folder:
            leads = await save_upload(read_chunks(upload.file), folder)
            await upload.close()
            result = await export_upload(
                agent,
                interaction_id,
                leads,
                format=format,
                strict=strict,
                profile=profile,
                variants=ids[1:],
                disabled_rules=disabled,
                shown_as=shown_name(upload.filename),
                max_bytes=policy.max_export_bytes,
            )
            if isinstance(result, ExportRefused):
                return await show_run(
                    request,
                    agent,
                    policy,
                    run,
                    status=422,
                    message=result.message,
                    message_kind="error",
                    form=kept,
                    export_problem=result,
                )
            report, handle = result
            fingerprint = left_out_fingerprint(report.skipped)
            if check or (report.skipped and acknowledged != fingerprint):
                handle.close()
                template = report.template
                text = None if template is None else await asyncio.to_thread(template.read_text)
                shown = ExportShown(report, fingerprint, text)
                return await show_run(request, agent, policy, run, form=kept, export_shown=shown)
    return download(handle, report, interaction_id=run.interaction_id, format=format, folder=folder)
