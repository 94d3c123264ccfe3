"""The OpenAI-compatible backend: a structured answer from any server that speaks chat completions.

Servers take a JSON schema in different ways, and refuse the others: OpenAI and vLLM take a
``json_schema`` response format; llama-cpp-python's server refuses it (HTTP 500) and takes a
``json_object`` response format with the schema beside it; LM Studio refuses ``json_object``;
some Ollama models refuse tools. So the answer is asked for in one of four forms
(:data:`FORMS`), in this order:

1. ``json_schema``: the response format OpenAI defined for structured outputs (strict).
2. ``json_object``: JSON mode, with the schema in the response format (where llama-cpp-python's
   server reads it to build a grammar) and in the prompt (for servers that only promise JSON).
3. ``tools``: one forced call of a function whose parameters are the schema.
4. ``prompt``: no response format and no tools; the prompt asks for JSON that follows the
   schema, and the answer is validated like the others (a code fence around it is fine).

With ``COLDMAIL_STRUCTURED_OUTPUT=auto`` (the default), a form the server refuses — an HTTP
error whose body names what the form uses (``response_format``, ``json_schema``, ``tool`` …) —
gives way at once to the next; other errors are left to the retry policy. The form that
worked is remembered for the rest of the process, per base URL and model, so only the first
call pays for the refusals. Forced to one form (``json_schema``, ``json_object``, ``tools`` or
``prompt``), a refusal fails at once with the server's reason. Every error names the base
URL with any password hidden, never the key.

What a server sends back is capped before anything parses it: ``max_tokens`` on every request
(``max_completion_tokens`` for a server that refuses the former; nothing for one that refuses
both, or that refuses a limit its context cannot hold beside the prompt, as vLLM does), the
HTTP body as it is read (:data:`MAX_RESPONSE_BYTES`, compressed or not, whatever its framing;
an error body is cut at :data:`MAX_ERROR_BODY_BYTES`), and the answer's text before JSON
parsing (:data:`MAX_ANSWER_CHARS`).
"""

from __future__ import annotations

import copy
import functools
import json
import re
import sys
import threading
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

from bridgic.core.model.protocols import PydanticModel
from bridgic.core.model.types import Message
from bridgic.llms.openai import OpenAILlm
from openai.types.chat import ChatCompletion
from pydantic import ValidationError

from ..retry import FailureNote, InvalidOutput, Unretryable, error_message, summarize
from ..settings import ENV, redact_url
from .prompts import TOOL_NAME, json_answer_instruction

_REQUEST_OPTIONS = {
    "extra_headers": "headers",
    "extra_query": "params",
    "extra_body": "extra_json",
    "timeout": "timeout",
}
"""``create``'s arguments that are options of the request, not the JSON body, and their
names in the SDK's request options."""


def _plain_json(value: Any) -> bool:
    """Whether ``value`` is JSON data as is (dicts, lists, strings, numbers, booleans,
    None): what the SDK's transform would send unchanged."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_plain_json(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool)


FORMS = ("json_schema", "json_object", "tools", "prompt")
"""The forms of structured output, in the order they are tried."""
MAX_ANSWER_TOKENS = 4096
"""Tokens an answer may take: a sequence at its longest (two 5,000-character bodies) fits."""
MAX_RESPONSE_BYTES = 1024 * 1024
"""The largest HTTP answer read, after decompression; a sequence is a few kB."""
MAX_ERROR_BODY_BYTES = 64 * 1024
"""The part of an HTTP error body that is read; the rest is dropped unread."""
MAX_ANSWER_CHARS = 64 * 1024
"""The longest answer text parsed as JSON; a valid sequence is under 11,000 characters."""
GENERATION_MAX_CHARS = {"subject": 120, "body": 1000}
"""The longest subject and body the schema of the fallback forms allows (see
:func:`generation_schema`): room for the prompt's "under 150 words", and within what
llama.cpp's grammar parser takes: it refused the grammar of a 1,200-character bound ("exceeds
sane defaults"), and llama-cpp-python's server, given 1,500, stopped answering."""

_TOKEN_PARAMETERS: tuple[str | None, ...] = ("max_tokens", "max_completion_tokens", None)
_REFUSAL_STATUSES = frozenset({400, 404, 405, 415, 422, 500, 501})
_FORM_TERMS = {
    "json_schema": ("response_format", "response format", "json_schema", "structured output"),
    "json_object": ("response_format", "response format", "json_object", "json mode"),
    "tools": ("tool", "function"),
    "prompt": (),
}
"""Words a server's refusal of each form contains; the prompt form is never refused as such."""


class FormRefused(Unretryable):
    """The server refused the form(s) of structured output it was offered."""


class UnusableResponse(Unretryable):
    """The server's answer cannot be read within the caps: larger than any sequence, or
    encoded in a way that was not asked for. The same request would get the same again."""


@dataclass
class _ServerChoice:
    """What this process learned about one server and model."""

    form: str | None = None
    """The form that worked, once one has."""
    refused: dict[str, str] = field(default_factory=dict)
    """Each refused form and the server's reason."""
    token_parameter: str | None = _TOKEN_PARAMETERS[0]


_choices: dict[tuple[str, str], _ServerChoice] = {}
_choices_lock = threading.Lock()


def _choice_for(base_url: str, model: str) -> _ServerChoice:
    with _choices_lock:
        return _choices.setdefault((base_url, model), _ServerChoice())


class ColdmailOpenAILlm(OpenAILlm):
    """``OpenAILlm`` whose structured output takes the form the server supports.

    Its retries (the SDK's and Bridgic's) are off: ``RetryPolicy`` is the only retry layer.
    ``structured_output`` is ``"auto"`` or one form of :data:`FORMS`.
    """

    def __init__(self, *args: Any, structured_output: str = "auto", **kwargs: Any) -> None:
        kwargs.setdefault("http_async_client", capped_http_client())
        super().__init__(*args, **kwargs)
        self.async_client: Any = self.async_client.with_options(max_retries=0)
        self.client: Any = self.client.with_options(max_retries=0)
        self.structured_output_form = structured_output

    @property
    def base_url(self) -> str:
        """The server's base URL, with any password hidden (for messages)."""
        return redact_url(str(self.async_client.base_url)).rstrip("/")

    async def astructured_output(
        self, messages: Any, constraint: Any, model: str | None = None, **kwargs: Any
    ) -> Any:
        """The answer as ``constraint``'s pydantic model, in the form the server takes."""
        if not isinstance(constraint, PydanticModel):
            raise TypeError("only PydanticModel constraints are supported")
        model_name = model or "default"
        choice = _choice_for(str(self.async_client.base_url), model_name)
        forced = self.structured_output_form != "auto"
        if forced:
            forms = [self.structured_output_form]
        else:
            start = FORMS.index(choice.form) if choice.form else 0
            forms = [form for form in FORMS[start:] if form not in choice.refused]
        for form in forms:
            try:
                response = await self._ask(form, messages, constraint, model, choice, kwargs)
            except Exception as exc:
                reason = refusal_reason(exc, form)
                if reason is None:
                    self._raise_with_limits(form, choice, exc)
                with _choices_lock:
                    choice.refused[form] = reason
                    if choice.form == form:
                        choice.form = None
                continue
            if not forced:
                choice.form = form
            try:
                return _parse(form, response, constraint)
            except Exception as exc:
                self._raise_with_limits(form, choice, exc)
        raise FormRefused(self._refusal_message(choice, forms, model_name, forced))

    async def _ask(
        self,
        form: str,
        messages: list[Message],
        constraint: PydanticModel,
        model: str | None,
        choice: _ServerChoice,
        options: dict[str, Any],
    ) -> Any:
        """One request in ``form``, trying the token-limit parameters the server takes."""
        schema: dict[str, Any] = {}
        if form != "json_schema":
            schema = generation_schema(
                answer_schema(constraint.model), grammar=form in {"json_object", "tools"}
            )
            messages = _with_instruction(messages, json_answer_instruction(schema, form))
        params = self._build_parameters(messages=messages, model=model, **options)
        if form == "json_schema":
            params["response_format"] = self._get_response_format(constraint)
        elif form == "json_object":
            params["response_format"] = {"type": "json_object", "schema": schema}
        elif form == "tools":
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": TOOL_NAME,
                        "description": "Record the two-email sequence you wrote.",
                        "parameters": schema,
                    },
                }
            ]
            params["tool_choice"] = {"type": "function", "function": {"name": TOOL_NAME}}
        while True:
            parameter = choice.token_parameter
            if parameter is not None:
                params[parameter] = MAX_ANSWER_TOKENS
            try:
                return await self._create(params)
            except Exception as exc:
                refused = None if parameter is None else _token_limit_refused(exc, parameter)
                if parameter is None or refused is None:
                    raise
                params.pop(parameter)
                following = (
                    None
                    if refused == "context"
                    else _TOKEN_PARAMETERS[_TOKEN_PARAMETERS.index(parameter) + 1]
                )
                with _choices_lock:
                    if choice.token_parameter == parameter:
                        choice.token_parameter = following

    async def _create(self, params: dict[str, Any]) -> Any:
        """``chat.completions.create(**params)``, sent as that method sends it but without
        its parameter transform, which walks every message and the whole response format's
        schema against the SDK's parameter types to rename aliased keys — chat completions'
        parameters have none, so it changes nothing, yet it was a fifth of a batch of short
        calls' CPU (issue 23). ``tests/test_openai_lean_path.py`` checks that both send the
        same request."""
        if params.get("stream") or not _plain_json(params):
            return await self.async_client.chat.completions.create(**params)
        body = {key: value for key, value in params.items() if key not in _REQUEST_OPTIONS}
        options: dict[str, Any] = {
            name: params[key] for key, name in _REQUEST_OPTIONS.items() if key in params
        }
        options["security"] = {"bearer_auth": True}
        return await self.async_client.post(
            "/chat/completions", body=body, options=options, cast_to=ChatCompletion
        )

    def _get_response_format(self, constraint: Any) -> dict[str, Any]:
        """Bridgic's ``json_schema`` response format, from the cached schema: pydantic
        builds a model's schema anew on every call, which cost a batch of short calls (issue
        23) a sixth of its event loop's time."""
        if not isinstance(constraint, PydanticModel):
            return dict(super()._get_response_format(constraint))
        return {
            "type": "json_schema",
            "json_schema": {
                "schema": self._adjust_schema(answer_schema(constraint.model)),
                "name": constraint.model.__name__,
                "strict": True,
            },
        }

    def _raise_with_limits(self, form: str, choice: _ServerChoice, exc: Exception) -> NoReturn:
        """Raise ``exc``, wrapped in a note of the server's refusals when they are why the
        answer was asked for as plain JSON."""
        if form != "prompt" or not choice.refused or isinstance(exc, Unretryable):
            raise exc
        refused = "; ".join(f"{name}: {reason}" for name, reason in choice.refused.items())
        raise FailureNote(
            f"the LLM server at {self.base_url} takes no structured output for this model "
            f"({refused}), so the emails were asked for as plain JSON; use a model that "
            "follows JSON instructions, or a server with JSON-schema output"
        ) from exc

    def _refusal_message(
        self, choice: _ServerChoice, forms: list[str], model: str, forced: bool
    ) -> str:
        reasons = "; ".join(f"{form}: {choice.refused[form]}" for form in forms)
        setting = ENV["structured_output"]
        if forced:
            advice = (
                f"set {setting}=auto to let coldmail find a form it takes, or another of "
                + ", ".join(f for f in FORMS if f not in forms)
            )
        else:
            advice = "check that it is an OpenAI-compatible chat-completions server"
        return (
            f"the LLM server at {self.base_url} refused structured output for model {model} "
            f"({reasons}); {advice}"
        )


def refusal_reason(exc: BaseException, form: str) -> str | None:
    """The server's reason, when ``exc`` is its refusal of ``form`` (else None)."""
    status = getattr(exc, "status_code", None)
    if status not in _REFUSAL_STATUSES:
        return None
    text = f"{getattr(exc, 'message', '')} {json.dumps(getattr(exc, 'body', None), default=str)}"
    if not any(term in text.lower() for term in _FORM_TERMS[form]):
        return None
    return f"HTTP {status}: {summarize(error_message(exc), 200)}"


def _token_limit_refused(exc: BaseException, parameter: str) -> str | None:
    """How a server refused the token limit sent as ``parameter``: ``"parameter"`` (it does
    not take that parameter; OpenAI's reasoning models want ``max_completion_tokens``),
    ``"context"`` (the limit and the prompt exceed its context; vLLM refuses rather than
    clamps), or None (not a refusal of the limit)."""
    if getattr(exc, "status_code", None) not in {400, 422}:
        return None
    message = f"{getattr(exc, 'message', '')} {error_message(exc)}".lower()
    if "context length" in message or "context window" in message:
        return "context"
    if any(name in message for name in {parameter, "max_tokens", "max_completion_tokens"}):
        return "parameter"
    return None


def answer_schema(model: type[Any]) -> dict[str, Any]:
    """``model.model_json_schema()``, built once per model: a fresh copy each call (callers
    adjust it in place)."""
    text = _schema_texts.get(model)
    if text is None:
        if len(_schema_texts) >= 256:  # models made per merge-field set: keep it bounded
            _schema_texts.clear()
        text = _schema_texts[model] = json.dumps(model.model_json_schema())
    schema: dict[str, Any] = json.loads(text)
    return schema


_schema_texts: dict[type[Any], str] = {}


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every ``$ref`` to its ``$defs`` replaced by the definition: some
    servers do not resolve references in a tool's parameters or a JSON-mode schema."""
    schema = copy.deepcopy(schema)
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(copy.deepcopy(defs[ref.removeprefix("#/$defs/")]))
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def generation_schema(schema: dict[str, Any], *, grammar: bool = True) -> dict[str, Any]:
    """The schema the forms other than ``json_schema`` carry, from the answer schema.

    References are inlined (:func:`inline_schema`), and each text is at most
    :data:`GENERATION_MAX_CHARS` long: a small model under a grammar writes until the limit,
    and the answer schema allows 5,000 characters. For a schema a server may build a grammar
    from (``grammar``: the ``json_object`` and ``tools`` forms), every rule is stated the way
    llama.cpp's grammar builder reads it, so that every answer the grammar allows is valid: a
    text's placeholder ``pattern`` becomes :func:`json_text_pattern` (it constrains a string's
    JSON text, not its value), and a bounded integer lists its values (the builder ignores
    ``minimum`` and ``maximum``). For the prompt form the pattern is left out; the
    descriptions state the rule. Every answer either schema allows is valid.
    """
    schema = inline_schema(schema)

    def bound(node: Any, name: str = "") -> None:
        if isinstance(node, dict):
            limit = GENERATION_MAX_CHARS.get(name)
            if node.get("type") == "string" and limit is not None:
                node["maxLength"] = min(node.get("maxLength", limit), limit)
                pattern = node.pop("pattern", None)
                if grammar and isinstance(pattern, str):
                    node["pattern"] = json_text_pattern(pattern, node["maxLength"])
            low, high = node.get("minimum"), node.get("maximum")
            if grammar and node.get("type") == "integer" and low is not None and high is not None:
                if 0 <= high - low <= 100:
                    node["enum"] = list(range(low, high + 1))
            for key, value in node.items():
                if key == "properties" and isinstance(value, dict):
                    for field_name, field_schema in value.items():
                        bound(field_schema, field_name)
                elif isinstance(value, (dict, list)):
                    bound(value)
        elif isinstance(node, list):
            for item in node:
                bound(item)

    bound(schema)
    return schema


_NEGATED_CLASS = re.compile(r"\[\^((?:\\.|[^\]\\])*)\]")
"""A negated character class ``[^…]`` of ``merge.allowed_text_pattern``, its body in group 1."""


def _json_text_char(match: re.Match[str]) -> str:
    """One character of a string's JSON text standing for one character of ``[^body]``: a
    character the class allows that JSON writes as itself (not a quote, a backslash or a
    control character), or the escape of one it allows (``\\"`` ``\\\\`` ``\\/``, and
    ``\\n`` ``\\r`` ``\\t`` unless the class excludes that character)."""
    body = match.group(1)
    escapes = '"\\\\/' + "".join(letter for letter in "nrt" if f"\\{letter}" not in body)
    return f'([^{body}"\\\\\\u0000-\\u001f]|\\\\[{escapes}])'


def json_text_pattern(pattern: str, max_units: int) -> str:
    """The placeholder pattern of ``merge.allowed_text_pattern``, rewritten for the JSON text
    of a string (what llama.cpp's grammar builder matches a ``pattern`` against), at most
    ``max_units`` blanks and ``max_units`` characters or placeholders long, in the syntax
    that builder reads (plain groups, no ``(?:``). A JSON text matches it exactly when it is
    a valid JSON string's text (no bare quote or backslash, no raw control character) whose
    value matches ``pattern``: so whatever a grammar built from it lets a model write parses.
    """
    blanks = _BLANKS.match(pattern)
    if blanks is None:
        raise ValueError(f"not a pattern of merge.allowed_text_pattern: {pattern[:60]!r}")
    rest = pattern[blanks.end() :].removesuffix("$").removesuffix("*")
    rest = _NEGATED_CLASS.sub(_json_text_char, rest).replace("(?:", "(")
    bound = f"{{0,{max_units - 1}}}"
    return f"^{_json_blank_char(blanks.group(1))}{bound}{rest}{bound}$"


_BLANKS = re.compile(r"\^\[((?:\\.|[^\]\\])*)\]\*")
"""The leading ``[…]*`` of ``merge.allowed_text_pattern``: the blanks before what shows."""


def _json_blank_char(body: str) -> str:
    """One character of a string's JSON text standing for one character of ``[body]``: one
    JSON writes as itself, or the escape of a tab or line break the class holds."""
    escapes = "".join(letter for letter in "nrt" if f"\\{letter}" in body)
    raw = re.sub(r"\\[nrt]", "", body)
    return f"([{raw}]|\\\\[{escapes}])"


def _with_instruction(messages: list[Message], instruction: str) -> list[Message]:
    """The messages with ``instruction`` appended to the last user message."""
    updated = list(messages)
    for index in range(len(updated) - 1, -1, -1):
        if str(getattr(updated[index].role, "value", updated[index].role)) == "user":
            updated[index] = Message.from_text(
                text=f"{updated[index].content}\n\n{instruction}", role=updated[index].role
            )
            return updated
    return [*updated, Message.from_text(text=instruction)]


_FENCED = re.compile(r"```[A-Za-z]*\s*\n(.*?)\n?```", re.S)


def _parse(form: str, response: Any, constraint: PydanticModel) -> Any:
    """The answer's text, capped, as the constraint's model (may raise ``ValidationError``)."""
    choice = response.choices[0]
    message = choice.message
    text = message.content
    calls = getattr(message, "tool_calls", None)
    if form == "tools" and calls:
        text = calls[0].function.arguments
    if not text:
        refusal = getattr(message, "refusal", None)
        raise InvalidOutput(
            "the LLM returned no answer"
            + (f" (it said: {summarize(refusal, 200)})" if refusal else "")
        )
    if len(text) > MAX_ANSWER_CHARS:
        raise InvalidOutput(
            f"the LLM's answer has {len(text):,} characters, more than any sequence "
            f"({MAX_ANSWER_CHARS:,} at most)"
        )
    if form == "prompt":
        text = _json_in(text)
    try:
        return constraint.model.model_validate_json(text)
    except ValidationError:
        if choice.finish_reason == "length":
            raise InvalidOutput(
                f"the LLM's answer was cut off at {MAX_ANSWER_TOKENS} tokens"
            ) from None
        raise


def _json_in(text: str) -> str:
    """The JSON object in a plain answer: inside a code fence, or from the first ``{`` to the
    last ``}``."""
    fenced = _FENCED.search(text)
    if fenced:
        text = fenced.group(1)
    start, end = text.find("{"), text.rfind("}")
    return text[start : end + 1] if 0 <= start < end else text


# --------------------------------------------------------------------------- the HTTP cap


def capped_http_client() -> Any:
    """The OpenAI SDK's async HTTP client on its aiohttp transport (``openai[aiohttp]``),
    reading at most :data:`MAX_RESPONSE_BYTES` of an answer and :data:`MAX_ERROR_BODY_BYTES`
    of an error.

    aiohttp rather than the SDK's default httpx pool: with 32 calls in flight (a
    personalization batch) httpcore scans every pooled connection twice a request, and one
    event loop spent 1.7 ms of CPU a line against 1.3 ms here, which decides the batch's
    rate (``benchmarks/NOTES.md``). Errors reach the SDK as httpx's (the transport maps
    them), so the retries are the same; a message names aiohttp's error
    (``ServerDisconnectedError: Server disconnected``)."""
    import openai

    return openai.DefaultAioHttpClient(
        headers={"Accept-Encoding": "identity"}, event_hooks={"response": [_cap_body]}
    )


async def _cap_body(response: Any) -> None:
    """Put a byte cap (and, for a server that compresses anyway, a bounded decoder) between
    the connection and whoever reads the body. Runs before the body is read."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in {"identity", "gzip", "x-gzip", "deflate"}:
        raise UnusableResponse(
            f"the LLM server encoded its answer as {summarize(encoding, 40)!r}, which was not "
            "asked for (Accept-Encoding: identity)"
        )
    decoder = None if encoding == "identity" else zlib.decompressobj(wbits=47)
    if decoder is not None:
        del response.headers["content-encoding"]  # decoded here, within the cap
    error = response.status_code >= 400
    limit = MAX_ERROR_BODY_BYTES if error else MAX_RESPONSE_BYTES
    stream_class = _capped_stream_class(type(response).__module__.partition(".")[0])
    response.stream = stream_class(response.stream, limit, decoder, truncate=error)


@functools.cache
def _capped_stream_class(httpx_module: str) -> type:
    """A byte stream of the HTTP library the SDK uses (``httpx`` or ``httpx2``) that yields at
    most ``limit`` decoded bytes: then it stops (``truncate``) or raises."""
    base: Any = sys.modules[httpx_module].AsyncByteStream

    class CappedStream(base):
        def __init__(self, inner: Any, limit: int, decoder: Any, *, truncate: bool) -> None:
            self._inner = inner
            self._limit = limit
            self._decoder = decoder
            self._truncate = truncate

        async def __aiter__(self) -> AsyncIterator[bytes]:
            left = self._limit
            async for raw in self._inner:
                for chunk in self._decoded(raw, left):
                    if len(chunk) > left:
                        if self._truncate:
                            yield chunk[:left]
                            return
                        raise UnusableResponse(
                            f"the LLM server's answer is larger than {self._limit // 1024 // 1024} "
                            "MiB, far more than a sequence; check the server and the model"
                        )
                    left -= len(chunk)
                    yield chunk
            if self._decoder is not None:
                rest = self._decoder.flush()
                if len(rest) > left and not self._truncate:
                    raise UnusableResponse(
                        f"the LLM server's answer is larger than {self._limit // 1024 // 1024} MiB"
                    )
                yield rest[:left]

        def _decoded(self, raw: bytes, left: int) -> list[bytes]:
            if self._decoder is None:
                return [raw]
            chunks = []
            try:
                data = raw
                while data:
                    out = self._decoder.decompress(data, left + 1)
                    chunks.append(out)
                    left -= len(out)
                    if left < 0:
                        break
                    data = self._decoder.unconsumed_tail
            except zlib.error as exc:
                raise UnusableResponse(
                    f"the LLM server's compressed answer is corrupt: {exc}"
                ) from None
            return chunks

        async def aclose(self) -> None:
            await self._inner.aclose()

    return CappedStream
