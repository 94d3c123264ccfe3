"""Chat completions are sent without the OpenAI SDK's parameter transform (issue 23: it was a
fifth of a batch of short calls' CPU and changes nothing in chat completions' parameters).
The request the server receives must be the one ``chat.completions.create`` sends, in every
structured-output form, and the answer read the same."""

from __future__ import annotations

from typing import Any

import pytest

from bridgic_coldmail.llm.choose import openai_llm
from bridgic_coldmail.llm.openai_backend import MAX_ANSWER_TOKENS, _plain_json
from bridgic_coldmail.personalize.lines import LineContext, LineTask
from bridgic_coldmail.personalize.writer import LineAnswer, line_messages
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..personalize_cases import LEDGERLY, LEDGERLY_SEQUENCE


def _task() -> LineTask:
    columns = {"company": "Acme", "title": "CFO"}
    return LineTask(LineContext(LEDGERLY, LEDGERLY_SEQUENCE), columns, 2)


@pytest.mark.parametrize("form", ["json_schema", "json_object", "tools", "prompt"])
async def test_the_lean_request_is_the_one_the_sdk_sends(
    server: ScriptedOpenAIServer, form: str
) -> None:
    llm: Any = openai_llm(Settings.resolve(structured_output=form))
    messages = line_messages(_task())
    lean = await llm.astructured_output(messages, _constraint(), model="m", timeout=30)
    sent = server.requests[-1]
    sdk_create = llm.async_client.chat.completions.create
    params = {**sent.body}
    via_sdk = await sdk_create(**params)
    again = server.requests[-1]
    assert sent.body == again.body
    assert sent.body["max_tokens"] == MAX_ANSWER_TOKENS and sent.body["model"] == "m"
    varying = {"x-stainless-read-timeout", "x-stainless-retry-count"}
    assert {k: v for k, v in sent.headers.items() if k not in varying} == {
        k: v for k, v in again.headers.items() if k not in varying
    }
    assert sent.headers["authorization"].startswith("Bearer ")
    assert isinstance(lean, LineAnswer) and via_sdk.choices[0].message is not None


async def test_the_lean_path_does_not_go_through_create(
    server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm: Any = openai_llm(Settings.resolve(structured_output="json_schema"))

    def refused(**params: Any) -> Any:
        raise AssertionError("create() was called")

    monkeypatch.setattr(llm.async_client.chat.completions, "create", refused)
    answer = await llm.astructured_output(line_messages(_task()), _constraint(), model="m")
    assert isinstance(answer, LineAnswer) and server.count("line") == 1


def _constraint() -> Any:
    from bridgic.core.model.protocols import PydanticModel

    return PydanticModel(model=LineAnswer)


def test_only_plain_json_takes_the_lean_path() -> None:
    assert _plain_json({"a": [1, 2.5, "x", None, True, {"b": ()}]})
    assert not _plain_json({"a": {1: "key not a string"}})
    assert not _plain_json({"messages": iter([{"role": "user"}])})  # the SDK makes it a list
    assert not _plain_json({"a": object()})
