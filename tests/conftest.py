"""Fixtures shared by the audit log tests (tests/audit)."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import _chain as ac


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def kid(key: Ed25519PrivateKey) -> str:
    return ac.audit_kid(key.public_key())


@pytest.fixture(scope="module")
def keys(key: Ed25519PrivateKey, kid: str) -> dict[str, Any]:
    return ac.public_key_document(key, kid)
