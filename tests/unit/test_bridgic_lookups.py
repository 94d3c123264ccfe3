"""Bridgic's per-run lookups, memoized (``bridgic_coldmail/_bridgic_lookups.py``): the same
answers as Bridgic's own functions, never a stale one, and installed where Bridgic calls them."""

from __future__ import annotations

import inspect
import sys
import types
from typing import Any

import pytest
from bridgic.core.automa.args._args_binding import set_method_signature
from bridgic.core.automa.worker import _callable_worker, _worker
from bridgic.core.utils import _inspect_tools, _msgpackx

from bridgic_coldmail import _bridgic_lookups as lookups
from bridgic_coldmail.automa import ColdMailAutoma


def test_bridgic_calls_the_memoized_functions() -> None:
    """On the pinned bridgic-core the functions are replaced where Bridgic looks them up; if
    this fails after an upgrade, the speed-up silently stopped applying."""
    assert _msgpackx.load_qualified_class_or_func is lookups.load_qualified_class_or_func
    assert _callable_worker.load_qualified_class_or_func is lookups.load_qualified_class_or_func
    assert _callable_worker.get_param_names_all_kinds is lookups.get_param_names_all_kinds
    assert _worker.get_param_names_all_kinds is lookups.get_param_names_all_kinds


def _plain(a: int, b: str = "x", *rest: Any, c: float, **more: Any) -> None: ...


class _Thing:
    def act(self, x: int, y: int = 2) -> None: ...


@pytest.mark.parametrize("exclude_default", [False, True])
def test_the_memo_answers_as_bridgic_does(exclude_default: bool) -> None:
    original = _inspect_tools.get_param_names_all_kinds
    for func in (_plain, _Thing().act, ColdMailAutoma.refine, ColdMailAutoma().draft):
        for _ in range(2):  # the second answer comes from the memo
            assert lookups.get_param_names_all_kinds(func, exclude_default) == original(
                func, exclude_default
            )


def test_each_caller_gets_its_own_copy() -> None:
    first = lookups.get_param_names_all_kinds(_plain)
    first[inspect.Parameter.POSITIONAL_OR_KEYWORD].clear()
    first.clear()
    again = lookups.get_param_names_all_kinds(_plain)
    assert [n for n, _ in again[inspect.Parameter.POSITIONAL_OR_KEYWORD]] == ["a", "b"]


def test_a_signature_set_later_is_never_answered_from_the_memo() -> None:
    class Local:
        def act(self, x: int) -> None: ...

    one, two = Local(), Local()
    assert [n for n, _ in lookups.get_param_names_all_kinds(one.act)[
        inspect.Parameter.POSITIONAL_OR_KEYWORD]] == ["self", "x"]  # fmt: skip
    # Bridgic gives one instance a signature of its own: the other keeps the class's.
    set_method_signature(one.act, {inspect.Parameter.KEYWORD_ONLY: [("z", inspect._empty)]})
    mine = lookups.get_param_names_all_kinds(one.act)
    assert mine[inspect.Parameter.KEYWORD_ONLY] == [("z", inspect._empty)]
    assert mine == _inspect_tools.get_param_names_all_kinds(one.act)
    assert lookups.get_param_names_all_kinds(two.act) == _inspect_tools.get_param_names_all_kinds(
        two.act
    )

    def free(a: int) -> None: ...

    assert list(lookups.get_param_names_all_kinds(free)) == [
        inspect.Parameter.POSITIONAL_OR_KEYWORD
    ]
    free.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("k", inspect.Parameter.KEYWORD_ONLY)]
    )
    assert lookups.get_param_names_all_kinds(free) == {
        inspect.Parameter.KEYWORD_ONLY: [("k", inspect._empty)]
    }


def test_a_name_that_failed_to_load_is_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "coldmail_lookup_probe.Later"
    with pytest.raises(ModuleNotFoundError):
        lookups.load_qualified_class_or_func(name)
    module = types.ModuleType("coldmail_lookup_probe")
    module.Later = type("Later", (), {})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "coldmail_lookup_probe", module)
    assert lookups.load_qualified_class_or_func(name) is module.Later  # type: ignore[attr-defined]
    assert lookups.load_qualified_class_or_func(name) is module.Later  # type: ignore[attr-defined]


def test_automas_share_one_thread_pool() -> None:
    first, second = ColdMailAutoma(), ColdMailAutoma()
    first.attach_llm(None, "m", None)
    second.attach_llm(None, "m", None)
    assert first.thread_pool is second.thread_pool is lookups.SHARED_POOL
