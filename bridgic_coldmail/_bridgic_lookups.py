"""Bridgic's per-run lookups, done once per process instead of once per run (internal).

Profiled (benchmarks/NOTES.md, change 2): loading an automa from a snapshot and running it
spent about half its time in two functions of bridgic-core 0.3 that give the same answer
every time for the same input:

* ``load_qualified_class_or_func`` imports a module and walks its attributes for every
  object a snapshot names (tens per resume): memoized by name. Only names Bridgic's loader
  reads from a snapshot reach it, and a snapshot reaches Bridgic only after its signature
  verified; a name that fails to load is not remembered.
* ``get_param_names_all_kinds`` calls ``inspect.signature`` for every worker of every
  automa: memoized per function and per signature object, so a signature set later (Bridgic's
  ``set_method_signature``, which also marks the instance or the function) is never answered
  from the memo. Each caller gets its own copy of the answer.

Bridgic's own module attributes are replaced when this module is imported, and only when
they are the functions this was written against (bridgic-core is pinned below 0.4); a change
upstream leaves Bridgic as it is. The same change belongs in bridgic-core itself.

Every automa also made a ``ThreadPoolExecutor`` of its own on its first run: they share
:data:`SHARED_POOL` instead (Bridgic's public ``thread_pool`` setter).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import MethodType
from typing import Any

from bridgic.core.automa.worker import _callable_worker, _worker
from bridgic.core.utils import _inspect_tools, _msgpackx

SHARED_POOL = ThreadPoolExecutor(thread_name_prefix="bridgic-thread")
"""The pool every automa of this process runs its synchronous workers on."""

_MEMO_SIZE = 4096

_load_original = _inspect_tools.load_qualified_class_or_func
_names_original = _inspect_tools.get_param_names_all_kinds

load_qualified_class_or_func = functools.lru_cache(maxsize=_MEMO_SIZE)(_load_original)


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _names_of(func: Any, signature: Any, exclude_default: bool) -> Any:
    """``signature`` (the function's ``__signature__``, or None) is part of the key only, so
    that one set later is a new entry."""
    return _names_original(func, exclude_default)


def get_param_names_all_kinds(func: Callable[..., Any], exclude_default: bool = False) -> Any:
    """Bridgic's answer, from the memo when nothing can have changed it."""
    target: Any = func
    if isinstance(func, MethodType):
        name = func.__func__.__name__
        if hasattr(func.__self__, f"__{name}_signature__") or hasattr(
            func.__func__, f"__{name}_original_signature__"
        ):
            return _names_original(func, exclude_default)  # a signature set per instance
        target = func.__func__  # what Bridgic inspects for a plain method
    try:
        found = _names_of(target, getattr(target, "__signature__", None), exclude_default)
    except TypeError:  # unhashable: not memoized
        return _names_original(func, exclude_default)
    return {kind: list(names) for kind, names in found.items()}


def _install() -> None:
    """Point bridgic-core's modules at the memoized functions, if they still hold the
    originals this module was written for."""
    for module in (_msgpackx, _callable_worker):
        if getattr(module, "load_qualified_class_or_func", None) is _load_original:
            module.load_qualified_class_or_func = load_qualified_class_or_func
    for module in (_callable_worker, _worker):
        if getattr(module, "get_param_names_all_kinds", None) is _names_original:
            module.get_param_names_all_kinds = get_param_names_all_kinds


if inspect.isfunction(_load_original) and inspect.isfunction(_names_original):
    _install()
