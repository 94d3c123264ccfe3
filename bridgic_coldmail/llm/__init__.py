"""The LLM side (internal): everything between a writing task and a validated sequence.

* ``prompts.py`` — the words a capable model is shown;
* ``writing.py`` — one LLM step: the task, the answer schema, the call, one ``LlmError``;
* ``choose.py`` — which LLM to use, and building it from the settings;
* ``openai_backend.py`` — the OpenAI-compatible backend and its forms of structured output;
* ``local/`` — the embedded model (llama.cpp) and how it composes emails.

The retry policy is ``bridgic_coldmail.retry`` (the notifications use it too). Nothing here is
public API beyond the names the package's ``__init__`` exports; this package keeps
``bridgic_coldmail.llm.build_llm`` and its neighbours importable, as release 0.5 had them.
"""

from __future__ import annotations

from .choose import ColdmailLlm, build_llm, check_llm, choose_backend, close_llm, openai_llm

__all__ = [
    "ColdmailLlm",
    "build_llm",
    "check_llm",
    "choose_backend",
    "close_llm",
    "openai_llm",
]
