"""Who may talk to the inbox: Host and Origin, the token, cookies, headers, the body limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bridgic_coldmail import Brief, RunStatus
from bridgic_coldmail.errors import ConfigurationError
from bridgic_coldmail.settings import DEFAULT_MAX_BODY_BYTES, Settings
from bridgic_coldmail.testing import ScriptedOpenAIServer
from bridgic_coldmail.web.app import create_app
from bridgic_coldmail.web.security import CONTENT_SECURITY_POLICY, check_bind_address

from .test_web import FEEDBACK, STRONG_TOKEN, csrf, paused, settings_for, stored, web_client

EVIL = {"Host": "evil.example:8000", "Origin": "http://evil.example:8000"}
"""What a DNS-rebinding page sends: its own name, which now resolves to this server."""


@pytest.fixture
async def client(server: ScriptedOpenAIServer, db_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with web_client(settings_for(db_path)) as c:
        yield c


# ---------------------------------------------------------------------------- Host and Origin


async def test_a_foreign_host_gets_421_and_no_run_data(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    for url in ("/", "/api/runs", f"/api/runs/{interaction_id}", f"/runs/{interaction_id}"):
        refused = await client.get(url, headers=EVIL)
        assert refused.status_code == 421, url
        assert interaction_id not in refused.text and "Acme" not in refused.text


async def test_a_foreign_host_cannot_complete_a_run_through_the_api_or_the_form(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    api = await client.post(
        f"/api/runs/{interaction_id}/feedback", json={"feedback": FEEDBACK}, headers=EVIL
    )
    assert api.status_code == 421 and api.json()["error"]["type"] == "MisdirectedRequest"
    page = await client.get(f"/runs/{interaction_id}")  # a real CSRF token and cookie
    form = await client.post(
        f"/runs/{interaction_id}/feedback",
        data={"feedback": FEEDBACK, "csrf_token": csrf(page.text)},
        headers=EVIL,
    )
    assert form.status_code == 421
    assert await stored(db_path, interaction_id) == (RunStatus.AWAITING_FEEDBACK, None)
    assert server.count("refine") == 0


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "review.internal", "review.example"]
)
async def test_loopback_listed_and_public_hosts_are_answered(
    server: ScriptedOpenAIServer, db_path: Path, host: str
) -> None:
    settings = settings_for(
        db_path, allowed_hosts="review.internal", public_origin="https://review.example"
    )
    async with web_client(settings) as client:
        assert (await client.get("/api/runs", headers={"Host": host})).status_code == 200


async def test_the_bound_address_is_answered(server: ScriptedOpenAIServer, db_path: Path) -> None:
    settings = settings_for(db_path, web_token=STRONG_TOKEN)
    async with web_client(settings, host="10.1.2.3", base_url="http://10.1.2.3:8000") as client:
        ok = await client.get("/api/runs", headers={"Authorization": f"Bearer {STRONG_TOKEN}"})
        assert ok.status_code == 200


async def test_origin_is_checked_against_the_configured_origin_not_the_requests_host(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    settings = settings_for(db_path, public_origin="https://review.example")
    async with web_client(settings, base_url="https://review.example") as client:
        # The Host is answered, and the Origin names it, but not as browsers reach it (https).
        refused = await client.post(
            f"/api/runs/{interaction_id}/feedback",
            json={"feedback": FEEDBACK},
            headers={"Origin": "http://review.example"},
        )
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "Forbidden"
        assert await stored(db_path, interaction_id) == (RunStatus.AWAITING_FEEDBACK, None)
        accepted = await client.post(
            f"/api/runs/{interaction_id}/feedback",
            json={"feedback": FEEDBACK},
            headers={"Origin": "https://review.example"},
        )
        assert accepted.status_code == 200


# ---------------------------------------------------------------------------- the token


async def test_a_token_guards_every_request(server: ScriptedOpenAIServer, db_path: Path) -> None:
    async with web_client(settings_for(db_path, web_token=STRONG_TOKEN)) as client:
        assert (await client.get("/")).status_code == 401
        assert (await client.get("/api/runs")).status_code == 401
        assert (await client.get("/openapi.json")).status_code == 401
        wrong = await client.get("/api/runs", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "Unauthorized"
        ok = await client.get("/api/runs", headers={"Authorization": f"Bearer {STRONG_TOKEN}"})
        assert ok.status_code == 200
        exchanged = await client.get(f"/?token={STRONG_TOKEN}")
        assert exchanged.status_code == 303 and exchanged.headers["location"] == "/"
        assert (await client.get("/")).status_code == 200  # the cookie now carries it


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
async def test_the_bearer_scheme_is_case_insensitive(
    server: ScriptedOpenAIServer, db_path: Path, scheme: str
) -> None:
    async with web_client(settings_for(db_path, web_token=STRONG_TOKEN)) as client:
        answer = await client.get(
            "/api/runs", headers={"Authorization": f"{scheme} {STRONG_TOKEN}"}
        )
        assert answer.status_code == 200


@pytest.mark.parametrize("where", ["header", "cookie", "query"])
async def test_a_token_outside_ascii_is_refused_not_a_crash(
    server: ScriptedOpenAIServer, db_path: Path, where: str
) -> None:
    offered = STRONG_TOKEN[:-1] + "é"
    async with web_client(settings_for(db_path, web_token=STRONG_TOKEN)) as client:
        if where == "header":
            sent = {"Authorization": f"Bearer {offered}".encode()}
            answer = await client.get("/api/runs", headers=sent)
        elif where == "cookie":
            sent = {"Cookie": f"coldmail_token={offered}".encode()}
            answer = await client.get("/api/runs", headers=sent)
        else:
            answer = await client.get("/api/runs", params={"token": offered})
        assert answer.status_code == 401


@pytest.mark.parametrize(
    ("path", "location"),
    [
        (
            "/runs/0123456789abcdef0123456789abcdef?tab=x",
            "/runs/0123456789abcdef0123456789abcdef?tab=x",
        ),
        ("//evil.example/", "/evil.example/"),
        ("/%5Cevil.example/", "/%5Cevil.example/"),
    ],
)
async def test_the_token_exchange_redirects_to_a_path_on_this_server(
    server: ScriptedOpenAIServer, db_path: Path, path: str, location: str
) -> None:
    separator = "&" if "?" in path else "?"
    async with web_client(settings_for(db_path, web_token=STRONG_TOKEN)) as client:
        request = client.build_request("GET", "/")  # then the exact path, as a browser sends it
        raw = f"{path}{separator}token={STRONG_TOKEN}".encode()
        request.url = request.url.copy_with(raw_path=raw)
        exchanged = await client.send(request)
        assert (exchanged.status_code, exchanged.headers["location"]) == (303, location)


def test_a_token_of_too_few_distinct_characters_is_refused_by_the_app(db_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="repeats too few characters"):
        create_app(Settings(db=str(db_path), web_token="t" * 40))


def test_a_short_token_is_refused_by_the_bind_check() -> None:
    with pytest.raises(ConfigurationError, match="COLDMAIL_WEB_TOKEN=.* at least 32 printable"):
        check_bind_address("0.0.0.0", "s3cr3t-Pa55word")


def test_a_public_address_without_a_token_is_refused_by_the_app(db_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="refusing to listen on 0.0.0.0"):
        create_app(Settings(db=str(db_path)), host="0.0.0.0")


# ---------------------------------------------------------------------------- cookies


async def test_cookies_are_secure_when_browsers_use_https(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    settings = settings_for(db_path, web_token=STRONG_TOKEN, public_origin="https://review.example")
    # The proxy in front speaks HTTPS to browsers and plain HTTP to the app.
    async with web_client(settings, base_url="http://review.example") as client:
        exchanged = await client.get(f"/runs/{interaction_id}?token={STRONG_TOKEN}")
        assert "; secure" in exchanged.headers["set-cookie"].lower()
        page = await client.get(
            f"/runs/{interaction_id}", headers={"Authorization": f"Bearer {STRONG_TOKEN}"}
        )
        assert "; secure" in page.headers["set-cookie"].lower()


async def test_cookies_are_not_secure_over_plain_http_on_loopback(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    page = await client.get(f"/runs/{interaction_id}")
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie


# ---------------------------------------------------------------------------- headers


async def test_security_headers_are_on_every_response(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    answers = [
        await client.get("/"),
        await client.get(f"/runs/{interaction_id}"),
        await client.get("/static/style.css"),
        await client.get("/api/runs"),
        await client.get("/api/nowhere"),
        await client.get("/runs/not-an-id"),
        await client.get("/", headers=EVIL),
        await client.post("/api/runs", content=b"{}", headers={"Content-Type": "text/plain"}),
        await client.post("/api/runs", content=b"x" * (DEFAULT_MAX_BODY_BYTES + 1)),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 404, 422, 421, 415, 413]
    for answer in answers:
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "same-origin"
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY
    assert "style-src 'self';" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY


async def test_nothing_that_carries_run_data_may_be_stored_by_a_cache(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    page = await client.get(f"/runs/{interaction_id}")
    token = csrf(page.text)
    answers = {
        "inbox": await client.get("/?tab=awaiting"),
        "run page": page,
        "new run form": await client.get("/runs/new"),
        "api list": await client.get("/api/runs"),
        "api run": await client.get(f"/api/runs/{interaction_id}"),
        "api 404": await client.get("/api/runs/0123456789abcdef0123456789abcdef"),
        "page 404": await client.get("/runs/0123456789abcdef0123456789abcdef"),
        "api 409 with the run's state": await client.post(
            f"/api/runs/{interaction_id}/approve", json={}
        ),
        "page 409 with the run": await client.post(
            f"/runs/{interaction_id}/approve",
            data={"csrf_token": token, "round": "1"},
            headers={"Origin": "http://127.0.0.1:8000"},
        ),
        "page 422 with the run": await client.post(
            f"/runs/{interaction_id}/feedback",
            data={"csrf_token": token, "feedback": " "},
            headers={"Origin": "http://127.0.0.1:8000"},
        ),
        "openapi": await client.get("/openapi.json"),
        "unexpected host": await client.get("/", headers=EVIL),
    }
    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {
        "inbox": 200,
        "run page": 200,
        "new run form": 200,
        "api list": 200,
        "api run": 200,
        "api 404": 404,
        "page 404": 404,
        "api 409 with the run's state": 409,
        "page 409 with the run": 409,
        "page 422 with the run": 422,
        "openapi": 200,
        "unexpected host": 421,
    }
    uncached = {name: a.headers.get("cache-control") for name, a in answers.items()}
    assert uncached == {name: "no-store" for name in answers}
    # Static files carry no run data: a browser may keep them.
    assert (await client.get("/static/style.css")).headers.get("cache-control") != "no-store"


# ---------------------------------------------------------------------------- body limit


async def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(
    client: httpx.AsyncClient,
) -> None:
    read: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        read.append(b"x")
        yield b"{}"

    refused = await client.post(
        "/api/runs",
        content=body(),
        headers={"Content-Type": "application/json", "Content-Length": str(200 * 2**20)},
    )
    assert refused.status_code == 413 and refused.json()["error"]["type"] == "PayloadTooLarge"
    assert str(DEFAULT_MAX_BODY_BYTES) in refused.json()["error"]["message"]
    assert read == []


async def test_a_chunked_body_is_counted_as_it_arrives_and_cut_off_at_the_limit(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer
) -> None:
    chunk = b" " * 4096
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(10_000):  # 40 MB, unless the server stops reading
            sent.append(len(chunk))
            yield chunk

    refused = await client.post(
        "/api/runs", content=endless(), headers={"Content-Type": "application/json"}
    )
    assert refused.status_code == 413
    assert sum(sent) <= DEFAULT_MAX_BODY_BYTES + len(chunk)
    assert server.count() == 0


async def test_a_chunked_body_under_the_limit_reaches_the_api(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer
) -> None:
    async def brief() -> AsyncIterator[bytes]:
        yield b'{"product": "Acme", '
        yield b'"offer": "saves time", "sender": "Dana"}'

    created = await client.post(
        "/api/runs", content=brief(), headers={"Content-Type": "application/json"}
    )
    assert created.status_code == 201 and created.json()["status"] == "awaiting_feedback"


async def test_a_form_over_the_limit_gets_the_html_page(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    refused = await client.post(
        f"/runs/{interaction_id}/feedback", data={"feedback": "x" * DEFAULT_MAX_BODY_BYTES}
    )
    assert refused.status_code == 413 and refused.headers["content-type"].startswith("text/html")
    assert "Too large" in refused.text and "x" * 100 not in refused.text
