"""Signed one-click links: only a token this key made, unaltered, unexpired, for the pause the
run still waits at, opens anything; every other token gets the right refusal."""

from __future__ import annotations

import string
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridgic_coldmail.errors import LinkAnswered, LinkExpired, LinkRefused, LinkRunGone
from bridgic_coldmail.models import RunStatus
from bridgic_coldmail.notify import check_run, make_link, make_token, read_token
from bridgic_coldmail.notify.links import LINK_PATH, MAX_TOKEN_CHARS

from ..notify_servers import NOW, ORIGIN, PAUSE_ID, RUN_ID, make_run, make_sequence, make_signer

SIGNER = make_signer()
EXPIRES = NOW + timedelta(days=2)
TOKEN = make_token(SIGNER, RUN_ID, PAUSE_ID, EXPIRES)
ALPHABET = string.ascii_letters + string.digits + "-_."


def read(token: str, now: datetime = NOW) -> object:
    return read_token(SIGNER, token, now=now)


def test_a_genuine_token_says_its_run_its_pause_and_its_end() -> None:
    claim = read_token(SIGNER, TOKEN, now=NOW)
    assert (claim.run_id, claim.pause_id, claim.expires_at) == (RUN_ID, PAUSE_ID, EXPIRES)
    assert make_token(SIGNER, RUN_ID, PAUSE_ID, EXPIRES) == TOKEN  # stable across retries
    link = make_link(SIGNER, ORIGIN + "/", RUN_ID, PAUSE_ID, EXPIRES)
    assert link == f"{ORIGIN}{LINK_PATH}{TOKEN}"
    assert len(TOKEN) < 200


def test_every_single_character_edit_is_refused() -> None:
    for i, original in enumerate(TOKEN):
        for replacement in ALPHABET:
            if replacement == original:
                continue
            edited = TOKEN[:i] + replacement + TOKEN[i + 1 :]
            with pytest.raises(LinkRefused) as refused:
                read(edited)
            assert type(refused.value) is LinkRefused and refused.value.http_status == 403


def test_every_truncation_and_extension_is_refused() -> None:
    for end in range(len(TOKEN)):
        with pytest.raises(LinkRefused):
            read(TOKEN[:end])
        with pytest.raises(LinkRefused):
            read(TOKEN[end + 1 :])
    for extra in ("=", "==", "A", ".", "%3D", " ", "\n", "\x00"):
        with pytest.raises(LinkRefused):
            read(TOKEN + extra)


def test_a_token_signed_with_another_key_is_refused() -> None:
    other = make_token(make_signer(b"o" * 32), RUN_ID, PAUSE_ID, EXPIRES)
    assert other.split(".")[0] == TOKEN.split(".")[0]  # same payload, other MAC
    with pytest.raises(LinkRefused):
        read(other)


def test_a_forged_payload_with_a_copied_mac_is_refused() -> None:
    forged = make_token(SIGNER, RUN_ID, "another-pause", EXPIRES).split(".")[0]
    with pytest.raises(LinkRefused):
        read(forged + "." + TOKEN.split(".")[1])
    later = make_token(SIGNER, RUN_ID, PAUSE_ID, EXPIRES + timedelta(days=365)).split(".")[0]
    with pytest.raises(LinkRefused):
        read(later + "." + TOKEN.split(".")[1])


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "a.b",
        "é" + TOKEN[1:],
        TOKEN.replace("A", "Ａ", 1) if "A" in TOKEN else "Ａ" + TOKEN,
        TOKEN + "\u202e",
        "x" * (MAX_TOKEN_CHARS + 1),
        "a." * 5000,
        TOKEN.replace(".", ".."),
    ],
)
def test_malformed_non_ascii_and_huge_tokens_are_refused(token: str) -> None:
    with pytest.raises(LinkRefused) as refused:
        read(token)
    assert type(refused.value) is LinkRefused
    assert RUN_ID not in str(refused.value) and PAUSE_ID not in str(refused.value)


def test_a_huge_token_is_refused_without_being_decoded() -> None:
    with pytest.raises(LinkRefused):
        read("A" * 50_000_000 + "." + "A" * 43)


@given(st.text(max_size=600))
@settings(max_examples=300, deadline=None)
def test_no_text_but_a_genuine_token_is_accepted(token: str) -> None:
    if token == TOKEN:
        return
    with pytest.raises(LinkRefused):
        read(token)


@given(st.binary(min_size=0, max_size=200))
@settings(max_examples=200, deadline=None)
def test_no_payload_passes_without_its_mac(payload: bytes) -> None:
    import base64

    encoded = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    with pytest.raises(LinkRefused):
        read(encoded + "." + TOKEN.split(".")[1])


def test_an_expired_token_answers_410_at_its_last_second() -> None:
    assert read(TOKEN, now=EXPIRES - timedelta(seconds=1))
    for now in (EXPIRES, EXPIRES + timedelta(days=400)):
        with pytest.raises(LinkExpired) as expired:
            read(TOKEN, now=now)
        assert expired.value.http_status == 410
    assert RUN_ID not in str(expired.value)


def test_make_token_wants_an_aware_time() -> None:
    with pytest.raises(ValueError):
        make_token(SIGNER, RUN_ID, PAUSE_ID, datetime(2030, 1, 1))
    with pytest.raises(ValueError):
        make_token(SIGNER, RUN_ID, "p" * 600, EXPIRES)


def test_a_token_of_a_run_no_longer_stored_or_of_another_run_answers_404() -> None:
    claim = read_token(SIGNER, TOKEN, now=NOW)
    for run in (None, make_run(interaction_id="f" * 32)):
        with pytest.raises(LinkRunGone) as gone:
            check_run(claim, run, to_act=False)
        assert gone.value.http_status == 404


def test_the_link_acts_only_while_the_run_waits_at_its_pause() -> None:
    at_pause = make_run(pause_id=PAUSE_ID)
    claim = read_token(SIGNER, TOKEN, now=NOW)
    assert check_run(claim, at_pause, to_act=True) is True
    moved_on = make_run(
        status=RunStatus.AWAITING_REVIEW,
        pause_id="a-later-round",
        round=2,
        review=True,
        sequence=make_sequence(),
    )
    answered = make_run(pause_id=PAUSE_ID, status=RunStatus.COMPLETED, final=make_sequence())
    being_resumed = make_run(pause_id=PAUSE_ID, status=RunStatus.RESUMING)
    for run in (moved_on, answered, being_resumed):
        assert check_run(claim, run, to_act=False) is False  # a page may show the outcome
        with pytest.raises(LinkAnswered) as over:
            check_run(claim, run, to_act=True)
        assert over.value.http_status == 410


def test_the_audience_pause_is_the_run_itself() -> None:
    token = make_token(SIGNER, RUN_ID, RUN_ID, EXPIRES)
    claim = read_token(SIGNER, token, now=NOW)
    assert check_run(claim, make_run(pause_id=None), to_act=True)


def test_links_do_not_pass_for_other_signatures_of_the_same_key() -> None:
    """A link's MAC is under its own domain: a row or event MAC of the same bytes is no link."""
    import base64

    payload = base64.urlsafe_b64decode(TOKEN.split(".")[0] + "==")
    for mac in (SIGNER.row_mac([payload]), SIGNER.event_mac([payload])):
        encoded = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
        with pytest.raises(LinkRefused):
            read(TOKEN.split(".")[0] + "." + encoded)
