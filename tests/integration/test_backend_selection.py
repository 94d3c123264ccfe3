"""Which LLM is used: the explicit choice, COLDMAIL_LLM, else OpenAI when configured, else the
local model when its extra is installed, else one error naming both ways."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bridgic_coldmail import Brief, ColdMailAgent, ConfigurationError, RunStatus
from bridgic_coldmail.llm import choose_backend, openai_llm
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import run_cli


@pytest.mark.parametrize(
    ("choice", "env", "expected"),
    [
        ("local", {"OPENAI_API_KEY": "sk"}, "local"),
        ("openai", {}, "openai"),
        (None, {"COLDMAIL_LLM": "local", "OPENAI_API_KEY": "sk"}, "local"),
        (None, {"COLDMAIL_LLM": " OpenAI "}, "openai"),
        (None, {"OPENAI_API_KEY": "sk"}, "openai"),
        (None, {"OPENAI_API_BASE": "http://127.0.0.1:1/v1"}, "openai"),
    ],
)
def test_explicit_choice_then_environment(
    choice: str | None, env: dict[str, str], expected: str
) -> None:
    assert choose_backend(Settings.resolve(env=env, llm=choice)) == expected


def test_with_nothing_configured_the_local_model_is_chosen_when_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("bridgic_coldmail.llm.local.model.local_extra_installed", lambda: True)
    assert choose_backend(Settings.resolve(env={})) == "local"


def test_with_nothing_configured_and_no_extra_one_error_names_both_ways(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if the extra were not installed
    with pytest.raises(ConfigurationError) as caught:
        choose_backend(Settings.resolve(env={}))
    message = str(caught.value)
    assert "OPENAI_API_KEY" in message and "pip install 'bridgic-coldmail[local]'" in message


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(
        ConfigurationError, match="COLDMAIL_LLM='claude' is not valid: use one of openai, local"
    ):
        Settings.resolve(env={"COLDMAIL_LLM": "claude"})
    with pytest.raises(ConfigurationError, match="llm='gpt' is not valid: use one of"):
        Settings.resolve(env={}, llm="gpt")


def test_local_chosen_without_the_extra_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bridgic_coldmail.llm.local.model import LocalLlm

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'bridgic-coldmail\[local\]'"):
        LocalLlm()


def test_cli_refuses_an_unknown_backend() -> None:
    result = run_cli("--llm", "claude", "list")
    assert result.returncode == 2
    assert "invalid choice: 'claude'" in result.stderr


async def test_a_run_drafted_with_one_backend_resumes_with_another(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Drafted by an injected LLM object; resumed by the OpenAI backend named by string.
    injected = openai_llm(Settings.resolve())
    async with ColdMailAgent.open(db_path, llm=injected) as agent:
        pending = await agent.start(brief)
    await injected.async_client.close()
    async with ColdMailAgent.open(db_path, llm="openai") as agent:
        done = await agent.resume(pending.interaction_id, "CTOs")
    assert done.status is RunStatus.COMPLETED
    with open(db_path, "rb") as handle:
        stored = handle.read()
    assert b"OpenAILlm" not in stored and b"api_key" not in stored  # no LLM in the snapshot
