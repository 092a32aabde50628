"""Counting the calls of a function the routers look up at call time: how
the guard tests show that each cache checks a value once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest


def first_string(args: tuple[Any, ...]) -> Any:
    return next(a for a in args if isinstance(a, str))


def counting(monkeypatch: pytest.MonkeyPatch, target: Any, name: str,
             key: Callable[[tuple[Any, ...]], Any] = first_string) -> Counter[Any]:
    """Count the calls of ``target.name`` (replaced for the test), by ``key``
    of their arguments (by default the first that is a string)."""
    calls: Counter[Any] = Counter()
    original: Callable[..., Any] = getattr(target, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[key(args)] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, counted)
    return calls
