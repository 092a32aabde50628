"""Fair queuing of an upstream's slots among tenants (pure):
a free slot goes at once; under contention each freed slot goes to the
waiting tenant holding the fewest, so a backlog cannot starve a newcomer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.fairqueue import FairSlots


def test_free_slots_are_taken_at_once_then_requests_queue() -> None:
    slots: FairSlots[str] = FairSlots(2)
    assert slots.acquire("ores", "a1") and slots.acquire("ores", "a2")
    assert not slots.acquire("ores", "a3")
    assert (slots.total, slots.waiting, slots.busy) == (2, 1, {"ores": 2})


def test_a_newcomer_is_served_before_the_backlog() -> None:
    slots: FairSlots[str] = FairSlots(2)
    slots.acquire("flood", "f0")
    slots.acquire("flood", "f1")
    for i in range(2, 10):
        assert not slots.acquire("flood", f"f{i}")  # a backlog of 8
    assert not slots.acquire("quiet", "q0")  # arrives last
    assert slots.release("flood") == ("quiet", "q0")  # ...and goes first
    assert slots.release("flood") == ("flood", "f2")
    assert slots.busy == {"quiet": 1, "flood": 1}


def test_two_backlogs_alternate() -> None:
    slots: FairSlots[str] = FairSlots(2)
    slots.acquire("a", "a0")
    slots.acquire("a", "a1")
    for i in range(2, 6):
        slots.acquire("a", f"a{i}")
        slots.acquire("b", f"b{i}")
    holders = ["a", "a"]  # oldest first; each request finishes in turn
    order = []
    for _ in range(8):
        handed = slots.release(holders.pop(0))
        assert handed is not None
        order.append(handed[0])
        holders.append(handed[0])
    assert order == ["b", "a"] * 4


def test_a_waiter_that_gives_up_is_removed() -> None:
    slots: FairSlots[str] = FairSlots(1)
    slots.acquire("a", "a0")
    slots.acquire("b", "b0")
    assert slots.cancel("b", "b0") and slots.waiting == 0
    assert not slots.cancel("b", "b0")  # not waiting any more
    assert slots.release("a") is None and slots.total == 0
    assert slots.acquire("b", "b1")  # nobody waits: straight in


def test_a_waiter_handed_the_slot_cannot_cancel() -> None:
    slots: FairSlots[str] = FairSlots(1)
    slots.acquire("a", "a0")
    slots.acquire("b", "b0")
    assert slots.release("a") == ("b", "b0")
    assert not slots.cancel("b", "b0")  # it holds the slot: it must release it
    assert slots.busy == {"b": 1}


def test_a_waiter_handed_the_slot_cannot_cancel_while_its_tenant_still_waits() -> None:
    # Its tenant's queue still holds others: "not waiting" must still be said,
    # or the caller drops a slot it holds and the pool shrinks for good (D1).
    slots: FairSlots[str] = FairSlots(1)
    slots.acquire("a", "a0")
    slots.acquire("b", "b0")
    slots.acquire("b", "b1")
    assert slots.release("a") == ("b", "b0")
    assert not slots.cancel("b", "b0")
    assert not slots.cancel("b", "never-queued")
    assert (slots.busy, slots.waiting) == ({"b": 1}, 1)
    assert slots.release("b") == ("b", "b1")  # the other waiter is still queued


def test_a_tie_goes_to_the_tenant_whose_waiter_came_first_whatever_the_tokens() -> None:
    # Max-min ties by arrival (D1): not by the token, which the caller makes
    # (a future, an id) and which may sort any way or not at all.
    slots: FairSlots[str] = FairSlots(1)
    slots.acquire("x", "x0")
    slots.acquire("b", "z-first")
    slots.acquire("a", "a-second")
    assert slots.release("x") == ("b", "z-first")
    assert slots.release("b") == ("a", "a-second")


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError) as refused:
        FairSlots(0)
    assert refused.value.args == ("capacity must be at least 1",)
    assert FairSlots(1).acquire("a", "a0")


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 4),
       ops=st.lists(st.tuples(st.sampled_from("acq rel"), st.sampled_from("abcd")),
                    max_size=80))
def test_never_over_capacity_and_every_grant_is_max_min_fair(
        capacity: int, ops: list[tuple[str, str]]) -> None:
    slots: FairSlots[int] = FairSlots(capacity)
    holding: dict[str, int] = {}
    waiting: dict[str, list[int]] = {}
    for n, (op, tenant) in enumerate(ops):
        if op == "acq":
            if slots.acquire(tenant, n):
                holding[tenant] = holding.get(tenant, 0) + 1
            else:
                waiting.setdefault(tenant, []).append(n)
        elif holding.get(tenant):
            before = dict(slots.busy)
            before[tenant] -= 1
            handed = slots.release(tenant)
            holding[tenant] -= 1
            if handed is None:
                assert not any(waiting.values())
            else:
                to, token = handed
                assert waiting[to][0] == token  # FIFO within a tenant
                waiting[to].pop(0)
                holding[to] = holding.get(to, 0) + 1
                # Max-min: nobody still waiting held fewer slots than the chosen one.
                others = [t for t, q in waiting.items() if q or t == to]
                assert before.get(to, 0) == min(before.get(t, 0) for t in others)
        assert slots.total == sum(holding.values()) <= capacity
        assert slots.waiting == sum(len(q) for q in waiting.values())
        if slots.waiting:
            assert slots.total == capacity  # no slot idles while someone waits
