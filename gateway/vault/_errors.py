"""Exceptions of the vault, split by who is at fault.

::

    VaultError
    ├── VaultLocked      the operator's master keys are missing, malformed or wrong
    ├── SecretNotFound   the caller asked for an id or version that does not exist
    └── VaultTampered    a stored record failed authentication (the file was altered)

Messages name versions, secret ids and files, never key material or values.
"""

from __future__ import annotations

from gateway.errors import GatewayFailed


class VaultError(GatewayFailed):
    """Base class of every error the vault raises on purpose."""


class VaultLocked(VaultError):
    """The master keys cannot unlock the vault; the message names the version."""


class SecretNotFound(VaultError):
    """No such secret id, or no such version of it (never stored or destroyed)."""


class VaultTampered(VaultError):
    """Decryption or authentication of a stored record failed (names id + version)."""
