"""Structured output adapts to what an OpenAI-compatible server supports.

Each test gets a server of its own (a new base URL): the form chosen is remembered per
process for a base URL and model, so a shared server would carry one test's choice into the
next. The refusals are the real servers' status codes and error bodies (``testing.REFUSALS``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridgic_coldmail import Brief, ColdMailAgent, LlmError, RetryPolicy, RunStatus
from bridgic_coldmail.errors import ConfigurationError
from bridgic_coldmail.llm.openai_backend import json_text_pattern
from bridgic_coldmail.merge import allowed_text_pattern
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer, default_sequence

from ..conftest import TEST_KEY

FEEDBACK = "CTOs at mid-size hospitals"
FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def own_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedOpenAIServer]:
    """A scripted server on a port of its own, set as the OpenAI base URL."""
    with ScriptedOpenAIServer() as server:
        monkeypatch.setenv("OPENAI_API_BASE", server.base_url)
        yield server


async def _start_and_resume(db_path: Path, brief: Brief, **options: object) -> None:
    async with ColdMailAgent.open(db_path, retry=FAST, **options) as agent:  # type: ignore[arg-type]
        paused = await agent.start(brief)
        done = await agent.resume(paused.interaction_id, FEEDBACK)
    assert done.status is RunStatus.COMPLETED and done.final is not None
    assert "CTOs at mid-size hospitals" in done.final.opener.subject


def _forms(server: ScriptedOpenAIServer, kind: str | None = None) -> list[str]:
    return [r.form for r in server.requests if kind is None or r.kind == kind]


@pytest.mark.parametrize(
    ("refused", "chosen"),
    [
        ({"json_schema": "llama-cpp-python"}, "json_object"),
        ({"json_schema": "openai", "json_object": "lm-studio"}, "tools"),
        ({"json_schema": "openai", "json_object": "lm-studio", "tools": "ollama"}, "prompt"),
    ],
    ids=["llama-cpp-python", "no-json-object", "no-tools"],
)
async def test_a_refused_form_gives_way_to_the_next_one_the_server_takes(
    own_server: ScriptedOpenAIServer,
    db_path: Path,
    brief: Brief,
    refused: dict[str, str],
    chosen: str,
) -> None:
    for form, like in refused.items():
        own_server.refuse(form, like)
    await _start_and_resume(db_path, brief)
    # The draft tried each form once, in order; the refinement went straight to the one that
    # worked: the choice is made once per process.
    assert _forms(own_server, "draft") == [*refused, chosen]
    assert _forms(own_server, "refine") == [chosen]


async def test_the_choice_is_remembered_per_server_and_model(
    own_server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    own_server.refuse("json_schema", "llama-cpp-python")
    await _start_and_resume(db_path, brief)
    own_server.reset()
    own_server.refuse("json_schema", "llama-cpp-python")
    await _start_and_resume(db_path, brief)  # a new agent, the same process: no new probe
    assert _forms(own_server) == ["json_object", "json_object"]
    own_server.reset()
    await _start_and_resume(db_path, brief, model="another-model")  # another model: probed
    assert _forms(own_server) == ["json_schema", "json_schema"]


async def test_each_form_carries_the_schema_where_that_form_takes_it(
    own_server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    for form in ("json_object", "tools", "prompt"):
        own_server.reset()
        await _start_and_resume(db_path, brief, structured_output=form)
        assert _forms(own_server) == [form, form]  # forced: no probing at all
        body = own_server.requests[0].body
        user_text = own_server.requests[0].user_text
        if form == "json_object":
            schema = body["response_format"]["schema"]  # where llama-cpp-python reads it
            assert "JSON" in user_text  # OpenAI's JSON mode refuses a prompt without it
        elif form == "tools":
            (tool,) = body["tools"]
            schema = tool["function"]["parameters"]
            assert body["tool_choice"] == {
                "type": "function",
                "function": {"name": tool["function"]["name"]},
            }
        else:
            assert "response_format" not in body and "tools" not in body
            schema = json.loads(user_text.split("JSON schema:\n", 1)[1])
        # The schema is self-contained (no $ref for a server to resolve) and complete; where a
        # server may build a grammar from it, in the terms llama.cpp's grammar builder reads.
        assert "$ref" not in json.dumps(schema) and "$defs" not in schema
        assert set(schema["properties"]) == {"opener", "follow_up"}
        follow_up = schema["properties"]["follow_up"]["properties"]
        assert follow_up["body"]["maxLength"] == 1000 and follow_up["subject"]["maxLength"] == 120
        assert "no { or }" in json.dumps(schema).lower()  # the rule, in words
        if form == "prompt":
            assert "pattern" not in json.dumps(schema)
        else:
            assert follow_up["wait_days"]["enum"] == list(range(1, 31))
            assert follow_up["body"]["pattern"] == json_text_pattern(allowed_text_pattern(()), 1000)


async def test_a_plain_json_answer_in_a_code_fence_is_accepted(
    own_server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    answer = json.dumps(default_sequence("draft", "Product: Acme"))
    own_server.enqueue(Reply(kind="draft", content=f"Here you go:\n```json\n{answer}\n```\n"))
    await _start_and_resume(db_path, brief, structured_output="prompt")
    assert own_server.count("draft") == 1


async def test_a_forced_form_the_server_refuses_fails_at_once_naming_its_limit(
    own_server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    own_server.refuse("json_schema", "llama-cpp-python")
    async with ColdMailAgent.open(db_path, retry=FAST, structured_output="json_schema") as agent:
        with pytest.raises(LlmError) as raised:
            await agent.start(brief)
    message = str(raised.value)
    assert own_server.count() == 1  # a refusal is not retried: the same request fails again
    assert "refused" in message and "json_schema" in message
    assert "Input should be 'text' or 'json_object'" in message  # the server's own reason
    assert "COLDMAIL_STRUCTURED_OUTPUT" in message  # and what to do
    assert "\n" not in message and len(message) < 1000


async def test_when_no_form_works_the_error_names_what_the_server_refused(
    own_server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    own_server.refuse("json_schema", "openai")
    own_server.refuse("json_object", "lm-studio")
    own_server.refuse("tools", "ollama")
    own_server.enqueue(*[Reply(content="Sure! Here is a great cold email for you.")] * 4)
    async with ColdMailAgent.open(db_path, retry=FAST) as agent:
        with pytest.raises(LlmError) as raised:
            await agent.start(brief)
    message = str(raised.value)
    # One try of each refused form, then the policy's four tries of plain JSON.
    assert _forms(own_server) == ["json_schema", "json_object", "tools", *["prompt"] * 4]
    assert own_server.base_url in message
    for reason in (
        "'response_format' of type 'json_schema' is not supported",
        "'response_format.type' must be 'json_schema' or 'text'",
        "does not support tools",
    ):
        assert reason in message
    assert "after 4 tries" in message and "\n" not in message


async def test_a_transient_error_is_retried_in_the_same_form(
    own_server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    own_server.enqueue(Reply(kind="draft", status=500, content="upstream connect error"))
    own_server.enqueue(Reply(kind="draft", status=400, content="unknown model gpt-4o-mini"))
    async with ColdMailAgent.open(db_path, retry=FAST) as agent:
        with pytest.raises(LlmError, match="unknown model gpt-4o-mini"):
            await agent.start(brief)
    # A 500 or 400 that does not name the response format is not a refusal of the form.
    assert _forms(own_server) == ["json_schema", "json_schema"]


async def test_a_server_that_refuses_max_tokens_gets_max_completion_tokens(
    own_server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    own_server.refuse("max_tokens", "openai")
    await _start_and_resume(db_path, brief)
    first, second, third = (r.body for r in own_server.requests)
    assert "max_tokens" in first and "max_completion_tokens" not in first
    assert second["max_completion_tokens"] == first["max_tokens"] and "max_tokens" not in second
    assert "max_tokens" not in third  # remembered
    assert _forms(own_server) == ["json_schema"] * 3


async def test_a_server_whose_context_cannot_hold_the_limit_gets_none(
    own_server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    own_server.refuse("max_tokens", "vllm")
    await _start_and_resume(db_path, brief)
    first, second, third = (r.body for r in own_server.requests)
    assert "max_tokens" in first
    for body in (second, third):  # neither parameter: the server clamps to its context
        assert "max_tokens" not in body and "max_completion_tokens" not in body


async def test_the_key_never_reaches_a_message_or_the_store(
    own_server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    own_server.refuse("json_schema", "llama-cpp-python")
    own_server.refuse("json_object", "lm-studio")
    own_server.refuse("tools", "ollama")
    async with ColdMailAgent.open(db_path, retry=FAST) as agent:
        paused = await agent.start(brief)
        own_server.enqueue(*[Reply(kind="refine", content="no JSON here")] * 4)
        with pytest.raises(LlmError) as raised:
            await agent.resume(paused.interaction_id, FEEDBACK)
    assert TEST_KEY not in str(raised.value)
    assert TEST_KEY.encode() not in db_path.read_bytes()
    assert all(r.headers["authorization"] == f"Bearer {TEST_KEY}" for r in own_server.requests)


def test_the_setting_takes_only_the_known_forms() -> None:
    for value in ("auto", "json_schema", "json_object", "tools", "prompt", " TOOLS "):
        assert Settings.resolve(env={"COLDMAIL_STRUCTURED_OUTPUT": value}).structured_output
    with pytest.raises(ConfigurationError, match="COLDMAIL_STRUCTURED_OUTPUT='xml' .* auto"):
        Settings.resolve(env={"COLDMAIL_STRUCTURED_OUTPUT": "xml"})


_PIECES = [*'ab {}|"\\/\n\r\té€', "{{first_name}}", "{{company|your team}}", "{{ceo}}"]
_PIECES += ["{{first_name|a|b}}", "\\n", "{{ first_name }}"]


@pytest.mark.parametrize("fields", [(), ("first_name", "company")], ids=["no-fields", "fields"])
@given(text=st.lists(st.sampled_from(_PIECES), max_size=12).map("".join))
@settings(max_examples=300, deadline=None)
def test_the_json_text_pattern_accepts_exactly_the_valid_texts(
    fields: tuple[str, ...], text: str
) -> None:
    # llama.cpp matches a pattern against a string's JSON text; pydantic against its value.
    value_ok = re.fullmatch(allowed_text_pattern(fields), text) is not None and 1 <= len(text)
    json_text = json.dumps(text, ensure_ascii=False)[1:-1]
    text_ok = re.fullmatch(json_text_pattern(allowed_text_pattern(fields), 10_000), json_text)
    assert value_ok == (text_ok is not None), (text, json_text)


_JSON_PIECES = [
    *'ab {}|"\\/\n\té',
    '\\"',
    "\\\\",
    "\\n",
    "\\u0041",
    "{{first_name}}",
    '{{first_name|\\"}}',
]


@pytest.mark.parametrize("fields", [(), ("first_name",)], ids=["no-fields", "fields"])
@given(json_text=st.lists(st.sampled_from(_JSON_PIECES), min_size=1, max_size=10).map("".join))
@settings(max_examples=400, deadline=None)
def test_whatever_the_json_text_pattern_lets_a_model_write_parses(
    fields: tuple[str, ...], json_text: str
) -> None:
    # A grammar built from the pattern lets a model write any text it matches, bare quotes
    # and backslashes included: each one it matches must be a valid JSON string's text.
    matched = re.fullmatch(json_text_pattern(allowed_text_pattern(fields), 10_000), json_text)
    try:
        value: str | None = json.loads(f'"{json_text}"')
    except json.JSONDecodeError:
        value = None
    allowed = value is not None and re.fullmatch(allowed_text_pattern(fields), value)
    # \u0041 is valid JSON the pattern does not take: a grammar need not allow every text.
    assert matched is None or allowed, json_text
    if allowed and "\\u" not in json_text:
        assert matched is not None, json_text
