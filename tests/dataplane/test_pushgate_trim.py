"""The push gate gives the heap back after a run of large pushes, not after
each one (gateway.dataplane._pushgate; D1 availability: the RSS the memory
admission reads falls back once the pushes pause, bench/README.md)."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.config import EdgeLimits
from gateway.dataplane import _pushgate
from gateway.dataplane._pushgate import SMALL_PUSH_BYTES, PushGate

LARGE = SMALL_PUSH_BYTES + 1
PAUSE_S = 0.3  # wide: a loaded machine's scheduling hiccups stay well under it


@pytest.fixture
def trims(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The instants (monotonic clock) the heap was given back."""
    calls: list[float] = []
    monkeypatch.setattr(_pushgate, "release_memory", lambda: calls.append(time.monotonic()))
    monkeypatch.setattr(_pushgate, "TRIM_AFTER_S", PAUSE_S)
    return calls


async def settle() -> None:
    await asyncio.sleep(PAUSE_S * 2.5)


async def test_the_heap_is_given_back_once_the_pushes_pause(trims: list[float]) -> None:
    gate = PushGate(EdgeLimits())
    async with gate.slot(LARGE):
        pass
    ended = time.monotonic()
    assert trims == []  # not at once: another push may follow
    await settle()
    assert len(trims) == 1
    assert trims[0] - ended >= PAUSE_S * 0.9


async def test_a_run_of_pushes_gives_the_heap_back_once(trims: list[float]) -> None:
    gate = PushGate(EdgeLimits())
    for _ in range(3):
        async with gate.slot(LARGE):
            await asyncio.sleep(0)
    assert trims == []
    await settle()
    assert len(trims) == 1


async def test_no_trim_while_a_push_is_in_progress(trims: list[float]) -> None:
    """A push that began before the pause was over keeps its pages; its own
    end gives the heap back later."""
    gate = PushGate(EdgeLimits(max_push_in_progress=2))
    async with gate.slot(LARGE):
        async with gate.slot(LARGE):
            pass
        await settle()  # the inner push's timer fired: the outer one is still reading
        assert trims == []
    await settle()
    assert len(trims) == 1


async def test_a_small_push_takes_no_slot_and_trims_nothing(trims: list[float]) -> None:
    gate = PushGate(EdgeLimits())
    async with gate.slot(SMALL_PUSH_BYTES):
        assert gate.in_progress == 0
    await settle()
    assert trims == []
