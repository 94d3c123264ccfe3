"""The LLM's HTTP transport (the OpenAI SDK's on aiohttp) against a server that misbehaves
at the socket: bytes trickled forever, a body that stops coming, a connection reset or
closed mid-answer. Each ends in one clear ``LlmError`` within the LLM timeout, the run stays
resumable, a broken connection is not used again while a sound one is, and an agent closed
properly leaves no "Unclosed client session" behind."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from bridgic_coldmail import Brief, ColdMailAgent, LlmError, RetryPolicy, SyncColdMailAgent
from bridgic_coldmail.testing import default_sequence

TWO = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)
TIMEOUT = 1.0
HEAD = b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


def _answer() -> bytes:
    content = json.dumps(default_sequence("draft", "Product: Acme Scheduler"))
    message = {"role": "assistant", "content": content}
    choice = {"index": 0, "finish_reason": "stop", "message": message}
    completion = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                  "choices": [choice]}  # fmt: skip
    body = json.dumps(completion).encode()
    return HEAD % (200, len(body)) + body


class RawServer:
    """HTTP/1.1 by hand on a loopback socket, keep-alive included: the first ``faults``
    requests get ``fault``, the rest a valid answer. Counts connections and requests."""

    def __init__(self, fault: str, faults: int) -> None:
        self.fault = fault
        self.faults = faults
        self.connections = 0
        self.requests = 0
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for conn in self.sockets:
            conn.close()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self.sockets.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _request(self, conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        (length,) = [
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ]
        while len(body) < length:
            body += conn.recv(65536)
        self.requests += 1
        return True

    def _serve(self, conn: socket.socket) -> None:
        try:
            while self._request(conn):
                if self.requests > self.faults:
                    conn.sendall(_answer())
                elif not self._fault(conn):
                    return
        except OSError:
            return

    def _fault(self, conn: socket.socket) -> bool:
        """Send the fault; whether the connection stays usable."""
        if self.fault == "trickle":  # a byte every 0.1 s, each within any read timeout
            conn.sendall(HEAD % (200, 100_000))
            while not self.stop.wait(0.1):
                conn.sendall(b" ")
        elif self.fault == "stall":  # the head and one byte, then nothing
            conn.sendall(HEAD % (200, 100_000) + b"{")
            self.stop.wait(60)
        elif self.fault == "reset":
            conn.sendall(HEAD % (200, 100_000) + b'{"id"')
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
        elif self.fault == "close-before-head":
            conn.close()
        elif self.fault == "short-body":
            conn.sendall(HEAD % (200, 100_000) + b'{"id"')
            conn.shutdown(socket.SHUT_WR)
        elif self.fault == "error-500":  # a whole, small error: the connection stays sound
            body = b'{"error": {"message": "busy"}}'
            conn.sendall(HEAD % (500, len(body)) + body)
            return True
        elif self.fault == "huge-error-500":  # cut at the error cap: the rest is never read
            body = b"e" * (5 * 1024 * 1024)
            conn.sendall(HEAD % (500, len(body)) + body)
            return True
        elif self.fault == "huge-answer":  # refused at the answer cap
            body = b" " * (5 * 1024 * 1024)
            conn.sendall(HEAD % (200, len(body)) + body)
            return True
        return False


@pytest.fixture
def raw() -> Iterator[list[RawServer]]:
    made: list[RawServer] = []
    yield made
    for server in made:
        server.close()


def _server(raw: list[RawServer], fault: str, faults: int) -> RawServer:
    raw.append(RawServer(fault, faults))
    return raw[-1]


def _open(
    db_path: Path, server: RawServer, retry: RetryPolicy = TWO
) -> AbstractAsyncContextManager[ColdMailAgent]:
    return ColdMailAgent.open(
        db_path, retry=retry, llm_timeout=TIMEOUT, openai_api_base=server.base_url
    )


@pytest.mark.parametrize("fault", ["trickle", "stall"])
async def test_an_answer_that_never_finishes_ends_at_the_llm_timeout(
    raw: list[RawServer], db_path: Path, brief: Brief, fault: str
) -> None:
    """aiohttp's read timeout is per read: a byte every 0.1 s never trips it. The LLM
    timeout is for the whole call, so each try ends there, and the error says so."""
    server = _server(raw, fault, faults=2)
    async with _open(db_path, server) as agent:
        started = time.monotonic()
        with pytest.raises(LlmError, match=r"did not answer the draft request within 1 s"):
            await asyncio.wait_for(agent.start(brief), 2 * TIMEOUT + 10)  # not a hang
        took = time.monotonic() - started
    assert server.requests == 2
    assert 2 * TIMEOUT <= took < 2 * TIMEOUT + 5, took


@pytest.mark.parametrize("fault", ["reset", "close-before-head", "short-body"])
async def test_a_connection_lost_mid_answer_is_retried_on_a_new_one_then_one_clear_error(
    raw: list[RawServer], db_path: Path, brief: Brief, fault: str
) -> None:
    server = _server(raw, fault, faults=1)
    async with _open(db_path, server) as agent:
        paused = await agent.start(brief)  # the retry, on a new connection, is answered
    assert paused.draft.opener.subject
    assert (server.requests, server.connections) == (2, 2)

    server = _server(raw, fault, faults=2)
    async with _open(db_path, server) as agent:
        with pytest.raises(LlmError) as failed:
            await agent.start(brief)
    message = str(failed.value)
    assert "draft LLM call failed after 2 tries" in message and "\n" not in message
    assert len(message) < 400 and "Traceback" not in message


@pytest.mark.parametrize(
    ("fault", "connections"),
    [("error-500", 1), ("huge-error-500", 2), ("huge-answer", 2)],
)
async def test_a_connection_is_used_again_only_when_its_answer_was_read_to_the_end(
    raw: list[RawServer], db_path: Path, brief: Brief, fault: str, connections: int
) -> None:
    """A whole small error leaves the connection sound and kept; one whose body was cut at
    a cap has the rest unread on it, so the next request must not read that as its answer."""
    server = _server(raw, fault, faults=1)
    async with _open(db_path, server, RetryPolicy(attempts=1)) as agent:
        with pytest.raises(LlmError):
            await agent.start(brief)
        paused = await agent.start(brief)
    assert paused.draft.opener.subject
    assert (server.requests, server.connections) == (2, connections)


@pytest.fixture
def unclosed(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail if aiohttp's "Unclosed client session"/"Unclosed connector" (logged by asyncio
    when the garbage collector meets one) appears."""
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        yield
        gc.collect()
    found = [r.getMessage() for r in caplog.records if "nclosed" in r.getMessage()]
    assert found == []


@pytest.mark.parametrize("fault", ["stall", "reset"])
def test_an_agent_closed_properly_leaves_no_unclosed_session(
    raw: list[RawServer], db_path: Path, brief: Brief, fault: str, unclosed: None
) -> None:
    server = _server(raw, fault, faults=1)

    async def use() -> None:
        async with _open(db_path, server) as agent:
            await agent.start(brief)

    asyncio.run(use())
    with SyncColdMailAgent.open(
        db_path, retry=TWO, llm_timeout=TIMEOUT, openai_api_base=server.base_url
    ) as agent:
        agent.start(brief)
    assert server.requests == 3


async def test_the_proxy_settings_of_the_environment_hold_as_with_httpx(
    raw: list[RawServer], db_path: Path, brief: Brief, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``HTTP_PROXY`` is used and ``NO_PROXY`` exempts a host, as they were before the
    transport changed (a dead proxy here: what goes through it fails)."""
    server = _server(raw, "none", faults=0)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    async with _open(db_path, server, RetryPolicy(attempts=1)) as agent:
        assert (await agent.start(brief)).draft.opener.subject  # NO_PROXY=127.0.0.1,...
    monkeypatch.delenv("NO_PROXY")
    async with _open(db_path, server, RetryPolicy(attempts=1)) as agent:
        with pytest.raises(LlmError, match="draft LLM call failed"):
            await agent.start(brief)
    assert server.requests == 1
