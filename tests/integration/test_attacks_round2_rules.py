"""Attacks on "every way in enforces the same rules", round two (issue 17, item 4).

Two holes: text that is not text at all (a lone surrogate, which JSON's ``\\ud800`` escape
and a command-line argument that is not UTF-8 both produce) gets past every check and
fails deep inside the store, as an unexpected error; and emails made only of spaces or
invisible characters are accepted, although the README says the same rule holds for them
as for briefs and feedback ("text made only of spaces, zero-width or bidi characters counts
as empty. Emails follow the same rule whoever writes them").

Each test failed on main when it was written; see the report of the "attack" helper.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bridgic_coldmail import Brief, ColdMailAgent, InvalidInput, RunStatus
from bridgic_coldmail.merge import allowed_text_pattern, is_allowed_text
from bridgic_coldmail.models import EmailStep, make_brief, make_decision, validate_feedback
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer
from bridgic_coldmail.text import INVISIBLE_CLASS, control_chars

from ..conftest import Completed
from ..rows import SqliteRows
from .test_same_rules import _answer
from .test_web import settings_for, web_client

FEEDBACK = "CTOs at mid-size hospitals"
JSON = {"Content-Type": "application/json"}


async def _at_review(db_path: Path, brief: Brief) -> str:
    async with ColdMailAgent.open(db_path) as agent:
        pending = await agent.start(brief, review=True)
        return (await agent.resume(pending.interaction_id, FEEDBACK)).interaction_id


# --- a lone surrogate: not text -------------------------------------------------------------

LONE_SURROGATE = "\udcff"
"""What Python makes of the byte 0xFF in a command-line argument (surrogateescape), and what
JSON's ``"\\udcff"`` decodes to: no UTF-8 encoding exists for it."""


@pytest.mark.parametrize(
    "build",
    [
        lambda: make_brief(product=f"Acme{LONE_SURROGATE}", offer="o", sender="Dana"),
        lambda: validate_feedback(f"CTOs {LONE_SURROGATE}"),
        lambda: make_decision("reject", text=f"wrong market {LONE_SURROGATE}"),
        lambda: make_decision("revise", text=f"shorter {LONE_SURROGATE}"),
        lambda: make_decision("approve", reviewer=f"Ann{LONE_SURROGATE}"),
    ],
    ids=["brief", "feedback", "reason", "guidance", "reviewer"],
)
def test_text_holding_a_lone_surrogate_is_invalid_input(build: Callable[[], Any]) -> None:
    """Each is accepted on main; the first store write then fails with UnicodeEncodeError."""
    with pytest.raises(InvalidInput):
        build()


async def test_the_api_answers_a_lone_surrogate_in_a_decision_with_422_not_500(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    """``{"reviewer": "a\\ud800"}`` is valid JSON. On main: 500 InternalError (a
    UnicodeEncodeError while the claim signs the row), for approve, revise and reject."""
    reviewing = await _at_review(db_path, brief)
    before = SqliteRows(db_path).row(reviewing)
    async with web_client(settings_for(db_path)) as client:
        answers = {
            kind: await client.post(f"/api/runs/{reviewing}/{kind}", content=body, headers=JSON)
            for kind, body in (
                ("approve", '{"reviewer": "Ann\\ud800"}'),
                ("revise", '{"guidance": "shorter\\udcff"}'),
                ("reject", '{"reason": "no\\udcff"}'),
            )
        }
    assert {kind: a.status_code for kind, a in answers.items()} == dict.fromkeys(answers, 422)
    assert all(a.json()["error"]["type"] == "InvalidInput" for a in answers.values())
    assert SqliteRows(db_path).row(reviewing) == before
    assert server.count("revise") == 0


async def test_the_api_refuses_a_brief_with_a_lone_surrogate_before_calling_the_llm(
    server: ScriptedOpenAIServer, db_path: Path
) -> None:
    """On main: the brief is accepted, the draft request cannot be encoded, and the answer
    is a 502 LlmError ("check the LLM settings") — the wrong error, for bad input."""
    body = '{"product": "Acme\\ud800", "offer": "saves time", "sender": "Dana"}'
    async with web_client(settings_for(db_path)) as client:
        answer = await client.post("/api/runs", content=body, headers=JSON)
    assert (answer.status_code, answer.json()["error"]["type"]) == (422, "InvalidInput")
    assert server.count("draft") == 0


def test_the_cli_refuses_an_argument_that_is_not_utf8_in_one_line(
    cli: Callable[..., Completed], server: ScriptedOpenAIServer, db_path: Path
) -> None:
    """``coldmail reject ID --reason $'no \\xff'`` (a Latin-1 terminal, a pasted byte): the
    argument holds a lone surrogate. On main: exit 1, "unexpected error: UnicodeEncodeError"
    — the README's sign of a bug. Expected: exit 2 and a line that says what to fix."""
    started = cli("start", "--product", "Acme", "--offer", "o", "--sender", "Dana", "--review",
                  "--json")  # fmt: skip
    reviewing = json.loads(started.stdout)["interaction_id"]
    assert cli("resume", reviewing, "--feedback", FEEDBACK).returncode == 0
    before = SqliteRows(db_path).row(reviewing)
    for args in (
        ("reject", reviewing, "--reason", f"no {LONE_SURROGATE}"),
        ("revise", reviewing, "--feedback", f"shorter {LONE_SURROGATE}"),
        ("approve", reviewing, "--reviewer", f"Ann{LONE_SURROGATE}"),
    ):
        refused = cli(*args)
        assert refused.returncode == InvalidInput.exit_code, (args[0], refused.stderr)
        assert refused.stderr.count("\n") == 1
    assert SqliteRows(db_path).row(reviewing) == before


def test_the_cli_refuses_a_brief_that_is_not_utf8_before_calling_the_llm(
    cli: Callable[..., Completed], server: ScriptedOpenAIServer, db_path: Path
) -> None:
    refused = cli("start", "--product", f"Acme{LONE_SURROGATE}", "--offer", "o", "--sender", "D")
    assert refused.returncode == InvalidInput.exit_code, refused.stderr
    assert refused.stderr.count("\n") == 1
    assert "U+DCFF" in refused.stderr
    assert server.count("draft") == 0


async def test_an_edit_holding_a_lone_surrogate_is_invalid_input(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    """The Python API (a JSON body's ``\\ud800`` is refused by the API's parser itself)."""
    reviewing = await _at_review(db_path, brief)
    before = SqliteRows(db_path).row(reviewing)
    async with ColdMailAgent.open(db_path) as agent:
        for where in ("opener__subject", "follow_up__body"):
            with pytest.raises(InvalidInput, match="U\\+D800"):
                await agent.edit(reviewing, _sequence(**{where: "Hi \ud800 there"}))
    assert SqliteRows(db_path).row(reviewing) == before


async def test_the_api_refuses_a_merge_field_holding_a_lone_surrogate(
    server: ScriptedOpenAIServer, db_path: Path
) -> None:
    """Found by a probe: ``"fields": ["email", "x\\ud800"]`` started a run whose field was
    quietly ``x`` (the name's folding to ASCII dropped the surrogate)."""
    body = '{"product": "Acme", "offer": "o", "sender": "Dana", "fields": ["email", "x\\ud800"]}'
    async with web_client(settings_for(db_path)) as client:
        answer = await client.post("/api/runs", content=body, headers=JSON)
    assert (answer.status_code, answer.json()["error"]["type"]) == (422, "InvalidInput")
    assert server.count("draft") == 0


async def test_an_llm_answer_holding_a_lone_surrogate_is_invalid_output_and_retried(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    """JSON's ``"\\udcff"`` in the model's answer: never stored, the step is asked again."""
    async with ColdMailAgent.open(db_path) as agent:
        pending = await agent.start(brief)
        server.enqueue(Reply(kind="refine", content=_answer(opener__body="Hi \udcff there")))
        done = await agent.resume(pending.interaction_id, FEEDBACK)
    assert done.status is RunStatus.COMPLETED and done.final is not None
    assert "\udcff" not in done.final.opener.body
    assert server.count("refine") == 2


# --- emails that are only spaces or invisible characters ------------------------------------

BLANKS = {
    "spaces": "   ",
    "ideographic-space": "\u3000",
    "zero-width": "\u200b\u200b",
    "bidi": "\u202e\u2066",
}


def _sequence(**changes: str) -> dict[str, Any]:
    sequence: dict[str, Any] = {
        "opener": {"subject": "Scheduling for clinics", "body": "Hi,\n\nAcme.", "wait_days": 0},
        "follow_up": {"subject": "Following up", "body": "Hi again", "wait_days": 3},
    }
    for where, text in changes.items():
        step, part = where.split("__")
        sequence[step][part] = text
    return sequence


@pytest.mark.parametrize("where", ["opener__subject", "opener__body", "follow_up__body"])
@pytest.mark.parametrize("blank", list(BLANKS.values()), ids=list(BLANKS))
async def test_an_edit_whose_email_is_only_blanks_is_refused(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief, where: str, blank: str
) -> None:
    """On main the edit is taken as round 2 and can be approved: every lead is then exported
    with an empty-looking subject or body."""
    reviewing = await _at_review(db_path, brief)
    async with ColdMailAgent.open(db_path) as agent:
        with pytest.raises(InvalidInput):
            await agent.edit(reviewing, _sequence(**{where: blank}))
        assert (await agent.get(reviewing)).round == 1


async def test_the_api_refuses_an_edit_whose_subject_is_only_a_zero_width_space(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    reviewing = await _at_review(db_path, brief)
    body = json.dumps({"sequence": _sequence(opener__subject="\u200b")})
    async with web_client(settings_for(db_path)) as client:
        answer = await client.post(f"/api/runs/{reviewing}/edit", content=body, headers=JSON)
    assert answer.status_code == 422, answer.text
    async with ColdMailAgent.open(db_path) as agent:
        assert (await agent.get(reviewing)).round == 1


async def test_an_llm_answer_whose_body_is_only_blanks_is_invalid_output_and_retried(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    """The same rule for the LLM's text: an answer whose opener body is only an ideographic
    space and a zero-width space is taken as the refinement on main."""
    async with ColdMailAgent.open(db_path) as agent:
        pending = await agent.start(brief)
        server.enqueue(Reply(kind="refine", content=_answer(opener__body="\u3000\u200b")))
        done = await agent.resume(pending.interaction_id, FEEDBACK)
    assert done.status is RunStatus.COMPLETED and done.final is not None
    assert done.final.opener.body.strip("\u3000\u200b ") != ""
    assert server.count("refine") == 2


def test_the_invisible_class_is_exactly_unicodes_invisible_characters_of_the_bmp() -> None:
    """``INVISIBLE_CLASS`` is written out (the LLM's schema states it), so it is checked
    against this Python's Unicode database: white space and format characters, but for
    tab, line breaks and control characters, which have rules of their own."""
    listed = re.compile(f"[{INVISIBLE_CLASS}]")
    for code in range(0x10000):
        char = chr(code)
        if 0xD800 <= code <= 0xDFFF or char in "\t\n\r" or control_chars(char):
            continue
        invisible = char.isspace() or unicodedata.category(char) in ("Cf", "Zs", "Zl", "Zp")
        assert (listed.match(char) is not None) == invisible, f"U+{code:04X}"


@pytest.mark.parametrize("text", ["\u3000\u200b", " \n\t ", "\u2066\u2069"])
def test_a_blank_text_is_refused_by_the_schema_and_the_code_alike(text: str) -> None:
    assert re.search(allowed_text_pattern(()), text) is None
    assert not is_allowed_text(text, ())
    with pytest.raises(ValidationError):
        EmailStep(subject="Hello", body=text, wait_days=0)
