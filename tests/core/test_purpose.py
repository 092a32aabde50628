"""check_purpose(): a national-register consultation states a known purpose
and a case reference before it happens (D8), or it is refused (400)."""

from __future__ import annotations

import pytest

from gateway.core.decide import PURPOSES, check_purpose

README_PURPOSES = {"customer-request", "billing-dispute", "fraud-investigation",
                   "social-assistance", "legal-obligation", "hr-administration"}


def test_the_purposes_are_the_documented_ones() -> None:
    assert README_PURPOSES == PURPOSES


@pytest.mark.parametrize("purpose", sorted(README_PURPOSES))
@pytest.mark.parametrize("justification", ["HR-2026-17", "abc", "A" * 64, "case:12/3.b_x-y"])
def test_a_known_purpose_with_a_reference_passes(purpose: str, justification: str) -> None:
    assert check_purpose(purpose, justification) is None


@pytest.mark.parametrize("purpose,justification,reason", [
    (None, "HR-2026-17", "purpose-required"),
    ("hr-administration", None, "purpose-required"),
    (None, None, "purpose-required"),
    ("curiosity", "HR-2026-17", "purpose-unknown"),
    ("", "HR-2026-17", "purpose-unknown"),
    ("HR-ADMINISTRATION", "HR-2026-17", "purpose-unknown"),
    ("hr-administration", "", "justification-malformed"),
    ("hr-administration", "ab", "justification-malformed"),  # too short: 3 at least
    ("hr-administration", "A" * 65, "justification-malformed"),  # 64 at most
    ("hr-administration", "-HR-1", "justification-malformed"),  # starts with a letter or digit
    ("hr-administration", "HR 2026", "justification-malformed"),
    ("hr-administration", "HR-2026\n", "justification-malformed"),
    ("hr-administration", "HR-2026-17; drop", "justification-malformed"),
])
def test_anything_else_is_refused_with_its_reason(purpose: str | None,
                                                 justification: str | None,
                                                 reason: str) -> None:
    decision = check_purpose(purpose, justification)
    assert decision is not None and not decision.allowed
    assert (decision.status, decision.reason) == (400, reason)
