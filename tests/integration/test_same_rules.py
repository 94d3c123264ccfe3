"""Every way in enforces the same rules, and an approved run can always be exported.

A decision reaches a run through ``approve``/``revise``/``edit``/``reject``, through
``decide(Decision(...))``, the command line, the JSON API and the run page's forms; emails come
from a reviewer's edit or from the LLM; lead cells come from a CSV. The same rules hold for all
of them (``Decision`` and ``EmailStep`` validate themselves): no control character reaches what
is stored, shown or exported, no empty or oversized guidance reaches the LLM, and no email that
no lead could ever be exported with (a malformed placeholder, a line break in a subject) is
accepted — each is refused before anything changes, with the reason.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from bridgic_coldmail import Brief, ColdMailAgent, InvalidInput, RunConflict, RunStatus
from bridgic_coldmail.models import Decision, EmailSequence, EmailStep
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

from ..conftest import Completed
from ..rows import SqliteRows
from .test_web import csrf, settings_for, web_client

FEEDBACK = "CTOs at mid-size hospitals"
FIELDS = ["email", "first_name", "company"]
GOOD = {
    "opener": {
        "subject": "Hello {{first_name|there}}",
        "body": "Hi,\n\nMine.\n\nDana",
        "wait_days": 0,
    },
    "follow_up": {"subject": "Again", "body": "Hi again", "wait_days": 4},
}

CONTROL_CHARACTERS = {
    "NUL": "\x00",
    "BEL": "\x07",
    "ESC": "\x1b",
    "vertical-tab": "\x0b",
    "form-feed": "\x0c",
    "DEL": "\x7f",
    "NEL": "\x85",
    "CSI": "\x9b",
    "line-separator": "\u2028",
    "paragraph-separator": "\u2029",
}


async def _at_review(agent: ColdMailAgent, brief: Brief) -> str:
    pending = await agent.start(brief, review=True, fields=FIELDS)
    return (await agent.resume(pending.interaction_id, FEEDBACK)).interaction_id


@pytest.fixture
async def reviewing(agent: ColdMailAgent, brief: Brief) -> str:
    return await _at_review(agent, brief)


def _with(path: str, value: str) -> dict[str, Any]:
    """GOOD with one text replaced (``"opener.subject"``)."""
    step, part = path.split(".")
    changed = json.loads(json.dumps(GOOD))
    changed[step][part] = value
    return changed


# ------------------------------------------------------------------ decide() and Decision


def _by_hand(**fields: Any) -> Decision:
    """A decision that skipped validation (``model_construct``): what a caller holding the
    decision as data, or a bug, could hand to ``decide``."""
    return Decision.model_construct(**{"text": None, "sequence": None, "reviewer": None,
                                       "round": None, **fields})  # fmt: skip


BAD_DECISIONS = {
    "whitespace-guidance": (_by_hand(kind="revise", text=" \n\t "), "guidance must not be empty"),
    "megabyte-guidance": (
        _by_hand(kind="revise", text="shorter " * 131072),
        "guidance is 1048575 characters; the limit is 2000",
    ),
    "escape-in-guidance": (_by_hand(kind="revise", text="shorter\x1b[2J"), "control characters"),
    "line-separator-in-reason": (_by_hand(kind="reject", text="no\u2028way"), "control char"),
    "bell-in-reviewer": (_by_hand(kind="approve", reviewer="Ann\x07"), "control characters"),
    "edit-without-emails": (_by_hand(kind="edit"), "edit needs the reviewer's emails"),
    "approve-with-text": (_by_hand(kind="approve", text="fine"), "approve takes no text"),
    "revise-with-emails": (
        _by_hand(kind="revise", text="x", sequence=EmailSequence.model_validate(GOOD)),
        "revise takes no emails",
    ),
    "round-zero": (_by_hand(kind="approve", round=0), "round must be between 1"),
    "round-as-text": (_by_hand(kind="approve", round="1"), "round must be a whole number"),
    "round-as-bool": (_by_hand(kind="approve", round=True), "round must be a whole number"),
    "unknown-kind": (_by_hand(kind="publish"), "unknown decision 'publish'"),
    "edit-with-escape": (
        _by_hand(
            kind="edit",
            sequence=EmailSequence.model_construct(
                opener=EmailStep.model_construct(subject="Hi\x1b]52;c;x", body="b", wait_days=0),
                follow_up=EmailStep.model_construct(subject="s", body="b", wait_days=3),
            ),
        ),
        "opener.subject: contains control characters",
    ),
}


@pytest.mark.parametrize("case", BAD_DECISIONS)
async def test_decide_holds_a_decision_built_by_hand_to_the_same_rules(
    agent: ColdMailAgent,
    server: ScriptedOpenAIServer,
    reviewing: str,
    db_path: Path,
    case: str,
) -> None:
    decision, message = BAD_DECISIONS[case]
    before = SqliteRows(db_path).row(reviewing)
    calls = server.count()
    with pytest.raises(InvalidInput, match=message):
        await agent.decide(reviewing, decision)
    assert SqliteRows(db_path).row(reviewing) == before  # not even claimed
    assert server.count() == calls  # nothing reached the LLM


async def test_a_decision_changed_after_it_was_validated_is_checked_again(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, reviewing: str, db_path: Path
) -> None:
    valid = Decision(kind="revise", text="shorter")
    before = SqliteRows(db_path).row(reviewing)
    with pytest.raises(InvalidInput, match="control characters"):
        await agent.decide(reviewing, valid.model_copy(update={"text": "\x1b[31mshorter"}))
    assert SqliteRows(db_path).row(reviewing) == before and server.count("revise") == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "revise", "text": "   "}, "guidance must not be empty"),
        ({"kind": "reject", "text": "x" * 2001}, "reason is 2001 characters"),
        ({"kind": "revise", "text": "a\x00b"}, "control characters"),
        ({"kind": "edit"}, "edit needs the reviewer's emails"),
        ({"kind": "approve", "reviewer": "\u2029"}, "reviewer must not be empty"),
        ({"kind": "edit", "sequence": _with("opener.body", "Hi {first_name}")}, "stray '{'"),
    ],
)
def test_a_decision_validates_itself_when_built(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Decision(**fields)


# ------------------------------------------------------------------ emails no lead could get

UNEXPORTABLE = {
    "single-braces": ("opener.body", "Hi {first_name},\n\nMine.", "a stray '{'"),
    "unclosed": ("opener.body", "Hi {{first_name,\n\nMine.", "a stray '{'"),
    "header-as-name": ("opener.subject", "For {{First Name}}", "is not a placeholder"),
    "subject-line-break": ("follow_up.subject", "Again\nBcc: x@evil.example", "one line"),
    "subject-carriage-return": ("opener.subject", "Hello\r\nthere", "one line"),
    "escape-in-body": ("follow_up.body", "Hi \x1b[2Jagain", "control characters"),
    "line-separator-in-body": ("opener.body", "Hi\u2028there", "control characters"),
}


def _bad_sequence(case: str) -> tuple[dict[str, Any], str]:
    where, text, message = UNEXPORTABLE[case]
    return _with(where, text), message


@pytest.mark.parametrize("case", UNEXPORTABLE)
async def test_python_edit_and_decide_refuse_an_email_no_lead_could_be_exported_with(
    agent: ColdMailAgent, reviewing: str, db_path: Path, case: str
) -> None:
    sequence, message = _bad_sequence(case)
    before = SqliteRows(db_path).row(reviewing)
    with pytest.raises(InvalidInput, match=message):
        await agent.edit(reviewing, sequence)
    with pytest.raises((InvalidInput, ValidationError), match=message):
        await agent.decide(reviewing, Decision(kind="edit", sequence=sequence))
    with pytest.raises(InvalidInput, match=message):  # even when it skipped validation
        await agent.decide(
            reviewing,
            _by_hand(kind="edit", sequence=_constructed(sequence)),
        )
    assert SqliteRows(db_path).row(reviewing) == before


def _constructed(data: dict[str, Any]) -> EmailSequence:
    return EmailSequence.model_construct(
        opener=EmailStep.model_construct(**data["opener"]),
        follow_up=EmailStep.model_construct(**data["follow_up"]),
    )


async def _reviewing_in_new_agent(brief: Brief) -> str:
    async with ColdMailAgent.open() as agent:
        return await _at_review(agent, brief)


@pytest.mark.parametrize("case", UNEXPORTABLE)
def test_the_command_line_refuses_an_email_no_lead_could_be_exported_with(
    server: ScriptedOpenAIServer,
    brief: Brief,
    db_path: Path,
    tmp_path: Path,
    cli: Callable[..., Completed],
    case: str,
) -> None:
    reviewing = asyncio.run(_reviewing_in_new_agent(brief))
    sequence, message = _bad_sequence(case)
    file = tmp_path / "seq.json"
    file.write_text(json.dumps(sequence), encoding="utf-8")
    before = SqliteRows(db_path).row(reviewing)
    refused = cli("edit", reviewing, "--file", str(file))
    assert refused.returncode == InvalidInput.exit_code, refused
    assert message.replace("'", "") in refused.stderr.replace("'", ""), refused.stderr
    assert len(refused.stderr.splitlines()) == 1
    assert SqliteRows(db_path).row(reviewing) == before


@pytest.fixture
async def client(server: ScriptedOpenAIServer, db_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with web_client(settings_for(db_path)) as c:
        yield c


@pytest.mark.parametrize("case", UNEXPORTABLE)
async def test_the_json_api_refuses_an_email_no_lead_could_be_exported_with(
    client: httpx.AsyncClient, agent: ColdMailAgent, reviewing: str, db_path: Path, case: str
) -> None:
    sequence, message = _bad_sequence(case)
    before = SqliteRows(db_path).row(reviewing)
    refused = await client.post(f"/api/runs/{reviewing}/edit", json={"sequence": sequence})
    assert refused.status_code == 422
    assert message in refused.json()["error"]["message"]
    assert SqliteRows(db_path).row(reviewing) == before


FORM_FIELD = {
    "opener.subject": "opener_subject",
    "opener.body": "opener_body",
    "follow_up.subject": "follow_up_subject",
    "follow_up.body": "follow_up_body",
}


@pytest.mark.parametrize("case", [c for c in UNEXPORTABLE if "subject-" not in c])
async def test_the_run_page_refuses_an_email_no_lead_could_be_exported_with(
    client: httpx.AsyncClient, agent: ColdMailAgent, reviewing: str, db_path: Path, case: str
) -> None:
    """(A browser's subject field is one line: the form has no way to send a line break in
    one, so those cases are the API's and the command line's.)"""
    where, text, message = UNEXPORTABLE[case]
    page = (await client.get(f"/runs/{reviewing}")).text
    data = {
        "csrf_token": csrf(page),
        "round": "1",
        "opener_subject": GOOD["opener"]["subject"],
        "opener_body": GOOD["opener"]["body"],
        "follow_up_subject": GOOD["follow_up"]["subject"],
        "follow_up_body": GOOD["follow_up"]["body"],
        "follow_up_wait_days": "4",
        FORM_FIELD[where]: text,
    }
    before = SqliteRows(db_path).row(reviewing)
    refused = await client.post(f"/runs/{reviewing}/edit", data=data)
    assert refused.status_code == 422
    assert message.replace("'", "&#39;") in refused.text
    assert SqliteRows(db_path).row(reviewing) == before


# ------------------------------------------------------------------ the LLM's answers


def _answer(**changes: str) -> str:
    """A capable model's answer (no wait_days for the opener), with some texts changed."""
    answer: dict[str, Any] = {
        "opener": {"subject": "Scheduling for clinics", "body": "Hi there,\n\nAcme.\n\nDana"},
        "follow_up": {"subject": "Following up", "body": "Hi again,\n\nDana", "wait_days": 3},
    }
    for where, text in changes.items():
        step, part = where.split("__")
        answer[step][part] = text
    return json.dumps(answer)


@pytest.mark.parametrize(
    "changes",
    [
        {"opener__body": "Hi there,\x1b]0;pwned\x07\n\nAcme."},
        {"follow_up__body": "Hi\x00again"},
        {"opener__subject": "Scheduling\u2028for clinics"},
        {"opener__subject": "Scheduling\nfor clinics"},
        {"follow_up__body": "Hi {first_name}"},
    ],
    ids=["escape", "nul", "line-separator", "subject-line-break", "single-braces"],
)
async def test_an_llm_answer_that_breaks_a_rule_is_invalid_output_and_retried(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief, changes: dict[str, str]
) -> None:
    pending = await agent.start(brief)
    server.enqueue(Reply(kind="refine", content=_answer(**changes)))
    done = await agent.resume(pending.interaction_id, FEEDBACK)
    assert server.count("refine") == 2  # the bad answer was refused, the next one taken
    assert done.final is not None
    stored = json.dumps(done.final.model_dump())
    assert all(json.dumps(c)[1:-1] not in stored for c in CONTROL_CHARACTERS.values())
    assert "{first_name}" not in stored and "\\n" not in json.dumps(done.final.opener.subject)


async def test_the_schema_the_llm_receives_states_the_new_rules(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    """The LLM contract: every rule is in the schema (so a model that follows it is never
    refused): subjects are one line, and no text holds a control character."""
    await agent.start(brief)
    (request,) = server.requests
    opener = request.body["response_format"]["json_schema"]["schema"]["$defs"]["OpenerAnswer"]
    subject = re.compile(opener["properties"]["subject"]["pattern"])
    body = re.compile(opener["properties"]["body"]["pattern"])
    assert body.search("Hi there,\n\nAcme.\tDana") and subject.search("Scheduling\tfor clinics")
    assert not subject.search("Scheduling\nfor clinics") and not subject.search("a\rb")
    for character in CONTROL_CHARACTERS.values():
        assert not body.search(f"Hi {character}there") and not subject.search(f"a{character}b")


# ------------------------------------------------------------------ lead cells


async def test_a_lead_whose_cells_hold_control_characters_is_skipped_and_said_why(
    agent: ColdMailAgent, reviewing: str, tmp_path: Path
) -> None:
    await agent.approve(reviewing)
    leads = tmp_path / "leads.csv"
    leads.write_text(
        "email,First Name,Company,Notes\n"
        'ana@x.com,Ana,Acme Health,"two\nlines\tand a tab"\n'
        "bo@y.io,Bo,Evil\x1b[2J Corp,\n"
        "cy@z.org,Cy\u2028,Zeta,\n"
        "di@w.net,Di,Delta,ring\x07\n",
        encoding="utf-8",
    )
    out = tmp_path / "campaign.json"
    report = await agent.export(reviewing, leads, out, format="json")
    assert report.rows_written == 1
    assert [(s.row, s.email) for s in report.skipped] == [
        (3, "bo@y.io"),
        (4, "cy@z.org"),
        (5, "di@w.net"),
    ]
    reasons = [s.reason for s in report.skipped]
    assert "the 'Company' cell contains control characters (U+001B)" in reasons[0]
    assert "the 'First Name' cell contains control characters (U+2028)" in reasons[1]
    assert "'Notes'" in reasons[2] and "U+0007" in reasons[2]
    written = out.read_text(encoding="utf-8")
    for character in ("\x1b", "\u2028", "\x07"):
        assert character not in written and json.dumps(character)[1:-1] not in written
    assert json.loads(written)[0]["Notes"] == "two\nlines\tand a tab"  # line breaks, tabs stay


# ------------------------------------------------------------------ an approved run exports


async def test_a_run_holding_an_unexportable_sequence_cannot_be_approved_but_can_be_fixed(
    agent: ColdMailAgent,
    reviewing: str,
    db_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run edited by a release that accepted ``{first_name}`` (emulated by switching the
    placeholder check off for that one edit) is refused approval with the reason; an edit
    that fixes it is accepted, and the approved run exports."""
    import bridgic_coldmail.models as models

    with monkeypatch.context() as old_release:
        old_release.setattr(models, "syntax_errors", lambda text: [])
        stored = await agent.edit(reviewing, _with("opener.body", "Hi {first_name},\n\nMine."))
    assert stored.round == 2 and stored.sequence is not None
    before = SqliteRows(db_path).row(reviewing)
    with pytest.raises(RunConflict, match=r"cannot be exported.*a stray '\{'.*edit"):
        await agent.approve(reviewing)
    assert SqliteRows(db_path).row(reviewing) == before
    fixed = await agent.edit(reviewing, GOOD)  # the stored sequence does not block an edit
    assert fixed.round == 3
    done = await agent.approve(reviewing)
    assert done.status is RunStatus.COMPLETED
    leads = tmp_path / "leads.csv"
    leads.write_text("email,First Name,Company\nana@x.com,Ana,Acme\n", encoding="utf-8")
    report = await agent.export(reviewing, leads, tmp_path / "out.csv")
    assert report.rows_written == 1 and not report.skipped
