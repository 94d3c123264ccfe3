"""A loopback OpenAI-compatible server with scripted answers, for tests and benchmarks.

It speaks ``POST /v1/chat/completions`` well enough for the real OpenAI client in each form of
structured output (a JSON-schema response format, a JSON-object one, a forced tool call, or
plain JSON asked for in the prompt), records every request, and answers either from a queue
of scripted replies or with a valid sequence built from the prompt. It can also refuse a form
the way a real server does (:meth:`ScriptedOpenAIServer.refuse`, with the real servers' status
codes and error bodies in :data:`REFUSALS`). Use it to test a host application end to end
without an API key::

    with ScriptedOpenAIServer() as server:
        os.environ["OPENAI_API_BASE"] = server.base_url
        ...
        assert server.count("refine") == 1
"""

from __future__ import annotations

import gzip
import json
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from .llm.prompts import REFINE_MARKER, REVISE_MARKER
from .personalize.writer import LINE_MARKER


@dataclass(frozen=True)
class Reply:
    """One scripted answer: the assistant message ``content`` (None: a generated valid
    sequence), or an HTTP error when ``status`` is not 200; sent after ``delay`` seconds."""

    content: str | None = None
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    kind: str | None = None
    """Only answer a request of this kind ("draft", "refine" or "revise"); None answers any."""
    chunked: bool = False
    """Send the body in chunks without a ``Content-Length``, as a streaming server does."""
    gzip: bool = False
    """Send the body gzip-compressed, whatever the client asked for."""


FORMS = ("json_schema", "json_object", "tools", "prompt")
"""The forms of structured output a request can take, as :attr:`RecordedRequest.form` names
them: a ``json_schema`` or ``json_object`` response format, a forced tool call, or none of
these (the JSON is asked for in the prompt)."""


@dataclass(frozen=True)
class Refusal:
    """How a real server refuses a request it does not support: the status and the body."""

    status: int
    body: Any
    """The JSON body, as the server sends it."""


REFUSALS: dict[str, dict[str, Refusal]] = {
    "json_schema": {
        # llama-cpp-python 0.3's server: its request model allows only "text" and
        # "json_object", and its error handler turns the validation error into a 500.
        "llama-cpp-python": Refusal(
            500,
            {
                "error": {
                    "message": "1 validation error:\n  {'type': 'literal_error', 'loc': "
                    "('body', 'response_format', 'type'), 'msg': \"Input should be 'text' or "
                    "'json_object'\", 'input': 'json_schema', 'ctx': {'expected': \"'text' or "
                    "'json_object'\"}}\n\n  File \"/usr/lib/python3/site-packages/llama_cpp/"
                    'server/app.py", line 376, in create_chat_completion\n    POST '
                    "/v1/chat/completions",
                    "type": "internal_server_error",
                    "param": None,
                    "code": None,
                }
            },
        ),
        # OpenAI, for a model without structured outputs.
        "openai": Refusal(
            400,
            {
                "error": {
                    "message": "Invalid parameter: 'response_format' of type 'json_schema' is "
                    "not supported with this model. Learn more about supported models at the "
                    "Structured Outputs guide: https://platform.openai.com/docs/guides/"
                    "structured-outputs",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
        ),
    },
    "json_object": {
        # LM Studio takes only "json_schema" and "text".
        "lm-studio": Refusal(
            400, {"error": "'response_format.type' must be 'json_schema' or 'text'"}
        ),
    },
    "tools": {
        # Ollama, for a model whose template has no tool support.
        "ollama": Refusal(
            400,
            {
                "error": {
                    "message": "registry.ollama.ai/library/gemma3:270m does not support tools",
                    "type": "api_error",
                    "param": None,
                    "code": None,
                }
            },
        ),
    },
    "prompt": {
        # Any server that fails every request, e.g. a model that cannot be loaded.
        "broken": Refusal(
            500,
            {"error": {"message": "model failed to load", "type": "server_error"}},
        ),
    },
    "max_tokens": {
        # vLLM refuses a limit that does not fit its context beside the prompt.
        "vllm": Refusal(
            400,
            {
                "object": "error",
                "message": "This model's maximum context length is 4096 tokens. However, you "
                "requested 5012 tokens (916 in the messages, 4096 in the completion). Please "
                "reduce the length of the messages or completion.",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            },
        ),
        # OpenAI's reasoning models take max_completion_tokens instead.
        "openai": Refusal(
            400,
            {
                "error": {
                    "message": "Unsupported parameter: 'max_tokens' is not supported with this "
                    "model. Use 'max_completion_tokens' instead.",
                    "type": "invalid_request_error",
                    "param": "max_tokens",
                    "code": "unsupported_parameter",
                }
            },
        ),
    },
}
"""Real servers' refusals, by what they refuse (a form of :data:`FORMS`, or ``max_tokens``)
and by who refuses it so, with their error bodies verbatim."""


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the server received it."""

    kind: str
    body: dict[str, Any]
    headers: dict[str, str]
    received_at: float = field(default_factory=time.monotonic)
    """``time.monotonic()`` when the request arrived."""

    @property
    def form(self) -> str:
        """The request's form of structured output (one of :data:`FORMS`)."""
        return request_form(self.body)

    @property
    def user_text(self) -> str:
        """The text of the last user message."""
        for message in reversed(self.body.get("messages", [])):
            if message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, list):
                    return "".join(part.get("text", "") for part in content)
                return str(content)
        return ""


def request_form(body: dict[str, Any]) -> str:
    """The form of structured output a chat-completions request body asks for."""
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in FORMS:
        return str(response_format["type"])
    return "tools" if body.get("tools") else "prompt"


def default_sequence(kind: str, user_text: str) -> dict[str, Any]:
    """A valid answer for a prompt: the draft names the product, the refinement the feedback,
    a revision the reviewer's guidance. The opener has no ``wait_days``: the schema sent to
    the LLM does not ask for it (the opener is sent on day 0 by definition)."""
    product = _line_value(user_text, "Product") or "the product"
    sender = _line_value(user_text, "Sender (signs the emails)") or "The team"
    fields = _merge_fields(user_text)
    hello = "Hi {{first_name|there}}," if "first_name" in fields else "Hi there,"
    if kind == "revise":
        guidance = _verbatim(user_text, REVISE_MARKER) or "the guidance"
        return {
            "opener": {
                "subject": _one_line(f"{product}, revised: {guidance}"[:200]),
                "body": f"{hello}\n\nRevised as asked ({guidance}): {product}.\n\n{sender}",
            },
            "follow_up": {
                "subject": _one_line(f"Following up, revised: {guidance}"[:200]),
                "body": f"Hi again,\n\nOne more thought on {product}.\n\n{sender}",
                "wait_days": 5,
            },
        }
    if kind == "refine":
        audience = _verbatim(user_text, REFINE_MARKER) or "the audience"
        opener = f"{hello}\n\nWritten for {audience}: {product} saves you time.\n\n{sender}"
        return {
            "opener": {"subject": _one_line(f"{product} for {audience}"[:200]), "body": opener},
            "follow_up": {
                "subject": _one_line(f"One more idea for {audience}"[:200]),
                "body": f"Hi again,\n\nA short case study for {audience}.\n\n{sender}",
                "wait_days": 4,
            },
        }
    return {
        "opener": {
            "subject": _one_line(f"A faster way with {product}"[:200]),
            "body": f"{hello}\n\n{product} could help your team.\n\n{sender}",
        },
        "follow_up": {
            "subject": _one_line(f"Following up on {product}"[:200]),
            "body": f"Hi again,\n\nHappy to show {product} in 15 minutes.\n\n{sender}",
            "wait_days": 3,
        },
    }


def default_line(user_text: str) -> str:
    """A valid personalized line for a line prompt: it names the lead's company when its
    data gives one (so each lead's line is its own), else nothing about them."""
    company = re.search(r"^- company: (.{1,60})$", user_text, re.MULTILINE)
    if company and company.group(1).replace(" ", "").isalnum():
        return f"I imagine {company.group(1)} keeps your team busy."
    return "I imagine your team handles a lot of this by hand."


def _one_line(subject: str) -> str:
    """A subject is one line (a brief or a guidance may have several)."""
    return " ".join(subject.split())


def _merge_fields(text: str) -> list[str]:
    """The merge fields a prompt offers (``Merge fields available: {{a}}, {{b}}.``)."""
    match = re.search(r"Merge fields available: (.*?)\. Write", text)
    return re.findall(r"\{\{(\w+)\}\}", match.group(1)) if match else []


def _verbatim(text: str, marker: str) -> str | None:
    match = re.search(re.escape(marker) + r"\n<<<\n(.*)\n>>>", text, re.S)
    return match.group(1) if match else None


def _line_value(text: str, label: str) -> str | None:
    match = re.search(rf"^{re.escape(label)}: (.*)$", text, re.M)
    return match.group(1).strip() if match else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096  # the default backlog of 5 drops connections under load

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout test) closes its socket mid-reply: not an error here.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class ScriptedOpenAIServer:
    """An OpenAI chat-completions server on 127.0.0.1, on a free port, in a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._script: deque[Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._refusals: dict[str, Refusal] = {}
        self._httpd = _Server((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._responder: Callable[[RecordedRequest], Reply | None] | None = None

    @property
    def base_url(self) -> str:
        """The value for ``OPENAI_API_BASE``."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> ScriptedOpenAIServer:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> ScriptedOpenAIServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def enqueue(self, *replies: Reply) -> None:
        """Script the next answers, in order; when the queue is empty, answers are generated."""
        with self._lock:
            self._script.extend(replies)

    def respond_with(self, responder: Callable[[RecordedRequest], Reply | None] | None) -> None:
        """Answer every request the queue does not answer with ``responder(request)``: a
        reply chosen from what was asked (per lead, per try, a storm of 429s…); when it
        returns None, a generated answer. ``None`` removes it. It runs on the server's
        threads, one per request: keep its state behind a lock."""
        with self._lock:
            self._responder = responder

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def count(self, kind: str | None = None) -> int:
        """How many requests of this kind ("draft", "refine", "revise", "line"; None: all)
        arrived."""
        return sum(1 for r in self.requests if kind is None or r.kind == kind)

    def refuse(self, what: str, like: str | Refusal) -> None:
        """Refuse every request of this form (one of :data:`FORMS`) or with this parameter
        (``"max_tokens"``) as a real server does: ``like`` names a server of
        ``REFUSALS[what]`` (e.g. ``refuse("json_schema", like="llama-cpp-python")``), or is
        the refusal itself."""
        refusal = like if isinstance(like, Refusal) else REFUSALS[what][like]
        with self._lock:
            self._refusals[what] = refusal

    def reset(self) -> None:
        """Forget recorded requests, scripted replies, refusals and the responder."""
        with self._lock:
            self._script.clear()
            self._requests.clear()
            self._refusals.clear()
            self._responder = None

    def _refusal(self, request: RecordedRequest) -> Refusal | None:
        with self._lock:
            if "max_tokens" in request.body and "max_tokens" in self._refusals:
                return self._refusals["max_tokens"]
            return self._refusals.get(request.form)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _next_reply(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self._requests.append(request)
            for index, reply in enumerate(self._script):
                if reply.kind is None or reply.kind == request.kind:
                    del self._script[index]
                    return reply
            responder = self._responder
        if responder is not None and (chosen := responder(request)) is not None:
            return chosen
        return Reply()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle's algorithm and the client's
            # delayed ACK, every response would stall for 40 ms.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                return

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                text = "".join(
                    str(m.get("content")) for m in body.get("messages", []) if m["role"] == "user"
                )
                kind = (
                    "line"
                    if LINE_MARKER in text
                    else "revise"
                    if REVISE_MARKER in text
                    else "refine"
                    if REFINE_MARKER in text
                    else "draft"
                )
                request = RecordedRequest(
                    kind, body, {k.lower(): v for k, v in self.headers.items()}
                )
                refusal = server._refusal(request)
                if refusal is not None:
                    server._record(request)
                    self._send(refusal.status, refusal.body)
                    return
                reply = server._next_reply(request)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.status != 200:
                    error = {"message": reply.content or "scripted error", "type": "server_error"}
                    self._send(reply.status, {"error": error}, reply.headers, reply)
                    return
                content = reply.content
                if content is None and kind == "line":
                    content = json.dumps({"line": default_line(request.user_text)})
                if content is None:
                    content = json.dumps(default_sequence(kind, request.user_text))
                model = body.get("model", "scripted")
                self._send(200, _completion(model, content, body), reply.headers, reply)

            def _send(
                self,
                status: int,
                payload: Any,
                headers: dict[str, str] | None = None,
                reply: Reply | None = None,
            ) -> None:
                data = json.dumps(payload).encode()
                if reply is not None and reply.gzip:
                    data = gzip.compress(data)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if reply is not None and reply.gzip:
                    self.send_header("Content-Encoding", "gzip")
                chunked = reply is not None and reply.chunked
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                if not chunked:
                    self.wfile.write(data)
                    return
                step = 64 * 1024
                for start in range(0, len(data), step):
                    chunk = data[start : start + step]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")

        return Handler


def _completion(model: str, content: str, request: dict[str, Any]) -> dict[str, Any]:
    """A chat completion answering ``request`` with ``content``: as the arguments of a call
    to the requested function when the request forces a tool call, else as the message."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    finish_reason = "stop"
    tool_choice = request.get("tool_choice")
    if request_form(request) == "tools" and isinstance(tool_choice, dict):
        name = tool_choice.get("function", {}).get("name", "answer")
        call = {"id": "call_scripted", "type": "function"}
        call["function"] = {"name": name, "arguments": content}  # type: ignore[assignment]
        message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
        finish_reason = "tool_calls"
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m bridgic_coldmail.testing [--port N]``: serve until interrupted; prints the
    base URL to give as ``OPENAI_API_BASE``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m bridgic_coldmail.testing",
        description="An OpenAI-compatible chat-completions server on 127.0.0.1 that answers "
        "with fixed, valid cold-email sequences (no model, no key): point coldmail at it "
        "with OPENAI_API_BASE=<the URL it prints> OPENAI_API_KEY=x COLDMAIL_LLM=openai. "
        "Ctrl-C stops it.",
    )
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument(
        "--line-latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="answer each personalized-line request after this long (benchmarks)",
    )
    args = parser.parse_args(argv)
    server = ScriptedOpenAIServer(port=args.port).start()
    if args.line_latency > 0:
        latency = args.line_latency
        server.respond_with(lambda r: Reply(delay=latency) if r.kind == "line" else None)
    print(server.base_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
