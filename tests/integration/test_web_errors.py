"""The error contract: every JSON API error is ``{"error": {"type", "message"}}`` with the
documented status, every page error is the HTML error page, and no error echoes the input."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bridgic_coldmail import errors
from bridgic_coldmail.settings import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_UPLOAD_BYTES
from bridgic_coldmail.testing import ScriptedOpenAIServer
from bridgic_coldmail.web.api import API_MAX_OFFSET
from bridgic_coldmail.web.app import create_app
from bridgic_coldmail.web.security import check_bind_address

from ..conftest import REPO
from .test_web import BASE, HOST, PORT, settings_for, web_client


@pytest.fixture
async def client(server: ScriptedOpenAIServer, db_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with web_client(settings_for(db_path)) as c:
        yield c


def error_of(answer: httpx.Response) -> dict[str, str]:
    """The ``error`` object, after checking it is the only key and has exactly its two."""
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert list(body) == ["error"] and sorted(body["error"]) == ["message", "type"]
    return dict(body["error"])


async def test_a_validation_error_has_the_shape_and_does_not_echo_the_body(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer
) -> None:
    marker = "ECHO-ME-" * 4000
    answer = await client.post(
        "/api/runs", json={"product": marker, "offer": "saves time", "sender": "Dana"}
    )
    assert answer.status_code == 422
    error = error_of(answer)
    assert error["type"] == "InvalidInput" and "product" in error["message"]
    assert "ECHO-ME" not in answer.text
    assert server.count() == 0


async def test_an_unknown_brief_field_is_named_with_the_documented_message(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.post(
        "/api/runs", json={"product": "A", "offer": "B", "sender": "C", "budget": 5}
    )
    assert answer.status_code == 422
    assert "budget: Extra inputs are not permitted" in error_of(answer)["message"]


async def test_a_body_that_is_not_json_is_invalid_input_without_the_body(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.post(
        "/api/runs",
        content=b'{"product": "SECRET-TEXT',
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 422
    assert error_of(answer)["message"] == "invalid request: the body is not valid JSON"
    assert "SECRET-TEXT" not in answer.text


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
async def test_a_wrong_content_type_is_415_before_the_body_is_parsed(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, content_type: str | None
) -> None:
    # Neither body would parse as a brief: a 415 says it was refused before parsing.
    headers = {"Content-Type": content_type} if content_type else {}
    answer = await client.post("/api/runs", content=b"product=Acme", headers=headers)
    assert answer.status_code == 415
    assert error_of(answer)["type"] == "UnsupportedMediaType"
    assert server.count() == 0


async def test_json_with_a_charset_is_json(client: httpx.AsyncClient) -> None:
    answer = await client.post(
        "/api/runs",
        content=b'{"product": "Acme", "offer": "saves time", "sender": "Dana"}',
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
    )
    assert answer.status_code == 201


@pytest.mark.parametrize("offset", [str(API_MAX_OFFSET + 1), str(2**63), str(10**400)])
async def test_an_offset_past_the_documented_maximum_is_422(
    client: httpx.AsyncClient, offset: str
) -> None:
    answer = await client.get("/api/runs", params={"offset": offset})
    assert answer.status_code == 422
    error = error_of(answer)
    assert error["type"] == "InvalidInput" and error["message"].startswith(
        "invalid request: offset"
    )
    assert offset not in answer.text


async def test_the_largest_documented_offset_is_accepted(client: httpx.AsyncClient) -> None:
    answer = await client.get("/api/runs", params={"offset": str(API_MAX_OFFSET)})
    assert (answer.status_code, answer.json()) == (200, [])


@pytest.mark.parametrize("page", ["0", "abc", str(10**400)])
async def test_a_bad_inbox_page_number_is_the_html_422_page(
    client: httpx.AsyncClient, page: str
) -> None:
    answer = await client.get("/", params={"page": page})
    assert answer.status_code == 422 and answer.headers["content-type"].startswith("text/html")
    assert "Not accepted" in answer.text and "page" in answer.text


async def test_an_unknown_api_route_answers_in_the_json_shape(client: httpx.AsyncClient) -> None:
    answer = await client.get("/api/nowhere")
    assert answer.status_code == 404 and error_of(answer)["type"] == "NotFound"


async def test_a_wrong_method_answers_in_the_json_shape(client: httpx.AsyncClient) -> None:
    answer = await client.delete("/api/runs")
    assert answer.status_code == 405
    assert error_of(answer)["type"] == "MethodNotAllowed"
    assert "POST" in answer.headers["allow"]


async def test_an_unknown_page_is_the_html_404_page(client: httpx.AsyncClient) -> None:
    answer = await client.get("/nowhere")
    assert answer.status_code == 404 and answer.headers["content-type"].startswith("text/html")
    assert "Not found" in answer.text


async def test_an_unexpected_exception_is_a_json_500_for_the_api_and_a_page_otherwise(
    server: ScriptedOpenAIServer, db_path: Path
) -> None:
    app = create_app(settings_for(db_path), host=HOST, port=PORT)

    async def broken() -> None:
        raise RuntimeError("a bug with a secret detail")

    app.add_api_route("/api/broken", broken)  # a stand-in for any bug in a route
    app.add_api_route("/broken", broken)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url=BASE) as client,
    ):
        api = await client.get("/api/broken")
        assert api.status_code == 500 and error_of(api)["type"] == "InternalError"
        page = await client.get("/broken")
        assert page.status_code == 500 and page.headers["content-type"].startswith("text/html")
        assert "unexpected error" in page.text
        assert "secret detail" not in api.text + page.text


ERRORS_PAGE = REPO / "docs" / "reference" / "errors.md"
"""The reference page with the error classes' table and the hand-written "Bad input" table."""


def test_each_error_class_carries_the_http_status_the_docs_document() -> None:
    documented = dict(re.findall(r"^\| `(\w+)` \| (\d{3}) \|", ERRORS_PAGE.read_text(), re.M))
    classes = {
        name: cls
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, errors.ColdmailError)
    }
    assert {name: int(status) for name, status in documented.items()} == {
        name: cls.http_status for name, cls in classes.items()
    }


def bad_input_row(first_cell: str) -> list[str]:
    """The cells of the "Bad input" row (docs/reference/errors.md) whose first cell is
    ``first_cell``."""
    page = ERRORS_PAGE.read_text()
    line = next(row for row in page.splitlines() if row.startswith(f"| {first_cell} |"))
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]


WEB_ROWS = {
    "Host header not answered (web)": ("GET", "/api/runs", {"headers": {"Host": "evil.example"}}),
    "request body over `COLDMAIL_MAX_BODY_BYTES` (web)": (
        "POST",
        "/api/runs",
        {"content": b"{}" + b" " * DEFAULT_MAX_BODY_BYTES},
    ),
    "lead list over `COLDMAIL_MAX_UPLOAD_BYTES` (web export)": (
        "POST",
        "/api/runs/0123456789abcdef0123456789abcdef/export",
        {"content": b"x" * (DEFAULT_MAX_UPLOAD_BYTES + 1), "headers": {"Content-Type": "text/csv"}},
    ),
    "API body not `application/json` (web)": (
        "POST",
        "/api/runs",
        {"content": b"{}", "headers": {"Content-Type": "text/plain"}},
    ),
    "`offset` over 1,000,000,000 (API)": ("GET", f"/api/runs?offset={API_MAX_OFFSET + 1}", {}),
}


@pytest.mark.parametrize("row", list(WEB_ROWS))
async def test_the_bad_input_rows_for_the_web_match_the_answers(
    client: httpx.AsyncClient, row: str
) -> None:
    _, error, message = bad_input_row(row)
    status, kind = re.fullmatch(r"HTTP (\d{3}) `(\w+)`", error).groups()  # type: ignore[union-attr]
    method, url, options = WEB_ROWS[row]
    answer = await client.request(method, url, **options)  # type: ignore[arg-type]
    assert answer.status_code == int(status)
    assert error_of(answer) == {"type": kind, "message": message.strip("`")}


def test_the_weak_token_row_matches_the_refusals() -> None:
    _, error, message = bad_input_row("weak `COLDMAIL_WEB_TOKEN` (`coldmail serve`)")
    assert error == "`ConfigurationError` (7)"
    for documented, token in zip(message.split(" / "), ["short-token-123", "t" * 40], strict=True):
        with pytest.raises(errors.ConfigurationError) as refused:
            check_bind_address("0.0.0.0", token)
        for fragment in documented.strip("`").split("…"):
            assert fragment.strip() in str(refused.value)
