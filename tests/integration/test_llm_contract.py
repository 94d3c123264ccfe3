"""The LLM contract: every answer the schema sent to the LLM allows is accepted.

The schema is taken from the real request the OpenAI client sends (through the scripted
server), then hypothesis-jsonschema generates answers that follow it. A rule the code
enforced but the schema did not state (e.g. "the opener waits 0 days" while the schema
allowed 0-90) would make one of them fail.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from bridgic_coldmail import Brief, ColdMailAgent, RunStatus
from bridgic_coldmail.llm.writing import WritingTask, _checked, answer_model
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

FIELDS = ("first_name", "company")


async def _schema_sent(db_path: Path, brief: Brief, fields: tuple[str, ...]) -> dict[str, Any]:
    """The JSON schema of the draft request, exactly as the LLM server received it."""
    async with ColdMailAgent.open(db_path) as agent:
        await agent.start(brief, fields=fields)
    return dict(_last_request_schema())


_SERVER: list[ScriptedOpenAIServer] = []


def _last_request_schema() -> dict[str, Any]:
    body = _SERVER[0].requests[-1].body
    schema: dict[str, Any] = body["response_format"]["json_schema"]["schema"]
    assert body["response_format"]["json_schema"]["strict"] is True
    return schema


@pytest.fixture
def schemas(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> dict[tuple[str, ...], dict[str, Any]]:
    import asyncio

    _SERVER[:] = [server]
    found = {}
    for fields in ((), FIELDS):
        found[fields] = asyncio.run(_schema_sent(db_path, brief, fields))
    return found


def test_the_schema_states_the_rules_the_code_enforces(
    schemas: dict[tuple[str, ...], dict[str, Any]],
) -> None:
    schema = schemas[()]
    defs = schema["$defs"]
    assert set(defs["OpenerAnswer"]["properties"]) == {"subject", "body"}  # no day to get wrong
    wait = defs["FollowUpAnswer"]["properties"]["wait_days"]
    assert (wait["minimum"], wait["maximum"]) == (1, 30)
    body = re.compile(defs["OpenerAnswer"]["properties"]["body"]["pattern"])
    subject = re.compile(defs["OpenerAnswer"]["properties"]["subject"]["pattern"])
    assert body.search("Hi,\n\nplain text") and not body.search("{") and not body.search("\x1b")
    assert subject.search("One line") and not subject.search("Two\nlines")
    with_fields = schemas[FIELDS]["$defs"]["OpenerAnswer"]["properties"]["subject"]["pattern"]
    assert "first_name" in with_fields and "company" in with_fields


@pytest.mark.slow
@pytest.mark.parametrize("fields", [(), FIELDS], ids=["no-fields", "fields"])
def test_every_answer_the_schema_allows_is_accepted(
    schemas: dict[tuple[str, ...], dict[str, Any]], fields: tuple[str, ...], brief: Brief
) -> None:
    schema = schemas[fields]
    model = answer_model(fields)
    task = WritingTask(kind="draft", brief=brief, fields=fields)

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(from_schema(schema))
    def accepted(answer: dict[str, Any]) -> None:
        parsed = model.model_validate_json(json.dumps(answer))  # as OpenAILlm parses it
        sequence = _checked(parsed.to_sequence(), task)
        assert sequence.opener.wait_days == 0
        assert sequence.follow_up.wait_days == answer["follow_up"]["wait_days"]

    accepted()


@given(st.integers(min_value=-(2**40), max_value=2**40))
@settings(max_examples=60, deadline=None)
def test_answers_outside_the_schema_are_refused_by_it(days: int) -> None:
    schema_ok = 1 <= days <= 30
    answer = {
        "opener": {"subject": "s", "body": "b"},
        "follow_up": {"subject": "s", "body": "b", "wait_days": days},
    }
    model = answer_model(())
    if schema_ok:
        model.model_validate(answer)
    else:
        with pytest.raises(ValueError):
            model.model_validate(answer)


async def test_a_server_that_follows_the_schema_to_its_limits_succeeds(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    # The shape the old code refused after four tries: any follow-up day the schema allows,
    # long subjects, unicode, merge fields with fallbacks.
    limit = {
        "opener": {"subject": "Ü" * 200, "body": "Hi {{first_name|there}},\n\n— " + "x" * 4000},
        "follow_up": {"subject": "{{company}}", "body": "Again", "wait_days": 30},
    }
    server.enqueue(Reply(kind="draft", content=json.dumps(limit)))
    async with ColdMailAgent.open(db_path) as agent:
        run = await agent.start(brief, fields=["First Name", "Company"])
    assert run.status is RunStatus.AWAITING_FEEDBACK
    assert run.fields == FIELDS
    assert run.draft.follow_up.wait_days == 30 and run.draft.opener.wait_days == 0
    assert server.count("draft") == 1  # accepted at the first try
