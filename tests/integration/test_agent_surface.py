"""The two agents stay twins, and both close the way their callers expect.

The blocking ``SyncColdMailAgent`` mirrors every public method of ``ColdMailAgent`` with the
same parameters (names, kinds, defaults) and result; the async agent opens with
``async with`` or ``connect`` and ``aclose``; a sync agent left open warns as an unclosed
file does.
"""

from __future__ import annotations

import gc
import inspect
import warnings
from pathlib import Path

import pytest

from bridgic_coldmail import ColdMailAgent, SyncColdMailAgent

LIFECYCLE = {"open", "connect", "aclose", "close"}


def _public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, callable)
        if not name.startswith("_") and name not in LIFECYCLE
    }


def test_the_sync_agent_has_every_method_of_the_async_one_with_the_same_signature() -> None:
    async_methods = _public_methods(ColdMailAgent)
    sync_methods = _public_methods(SyncColdMailAgent)
    assert len(async_methods) > 15, sorted(async_methods)
    assert sorted(async_methods) == sorted(sync_methods)
    for name, expected in async_methods.items():
        got = sync_methods[name]
        assert list(got.parameters.values()) == list(expected.parameters.values()), name
        assert got.return_annotation == expected.return_annotation, name


async def test_connect_and_aclose_without_a_with_block(tmp_path: Path) -> None:
    agent = await ColdMailAgent.connect(tmp_path / "runs.db", missing="create")
    assert await agent.list() == []
    await agent.aclose()
    await agent.aclose()  # idempotent
    async with await ColdMailAgent.connect(tmp_path / "runs.db") as again:
        assert await again.counts() is not None


def test_a_sync_agent_left_open_warns_as_an_unclosed_file_does(tmp_path: Path) -> None:
    agent = SyncColdMailAgent.open(tmp_path / "runs.db", missing="create")
    with pytest.warns(ResourceWarning, match="unclosed SyncColdMailAgent .*close"):
        del agent
        gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        with SyncColdMailAgent.open(tmp_path / "runs.db") as closed:
            closed.list()
        del closed
        gc.collect()
