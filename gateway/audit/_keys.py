"""The audit checkpoint keys (``docs/audit-format.md`` §6): one current
signing key and every retired public key, kept in one directory.

- ``audit-signing-key.pem``: the current Ed25519 private key (PKCS#8, 0600);
- ``audit-retired-keys.json``: ``{"keys": [<JWK>, ...]}``, the public keys
  that signed checkpoints before, each with ``"retired_at"`` (seconds since
  the epoch). Public, but written 0600 like everything in the directory.

A rotation writes the retired file first and then replaces the private key,
each atomically, so a crash in between never loses a public key a log still
needs: at worst the old key is both current and listed as retired. Retired
private keys are not kept (nobody may sign as them again).

Verifiers read keys with :func:`published_keys`, which never creates or
changes a file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit._file import fsync_dir
from gateway.audit._format import (
    KEY_FILE,
    audit_kid,
    load_or_create_audit_key,
    public_key_document,
    public_keys,
)

RETIRED_FILE = "audit-retired-keys.json"

__all__ = ["RETIRED_FILE", "AuditKeys", "published_keys"]


class AuditKeys:
    """The key directory of a running gateway (the writer's side)."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.key, self.kid = load_or_create_audit_key(directory)
        self._retired = _read_retired(directory)
        self._clock = clock

    def document(self) -> dict[str, Any]:
        """Every key a verifier needs: the current one first, then the retired
        ones (what ``/.well-known/audit-keys.json`` serves)."""
        current = public_key_document(self.key, self.kid)["keys"]
        return {"keys": [*current, *(k for k in self._retired if k.get("kid") != self.kid)]}

    def rotate(self) -> tuple[Ed25519PrivateKey, str]:
        """A new current key; the old public key joins the retired list."""
        old = public_key_document(self.key, self.kid)["keys"][0]
        retired = [*self._retired, {**old, "retired_at": self._clock()}]
        new = Ed25519PrivateKey.generate()
        pem = new.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        _replace(self.directory / RETIRED_FILE,
                 json.dumps({"keys": retired}, indent=1).encode() + b"\n")
        _replace(self.directory / KEY_FILE, pem)
        self.key, self.kid, self._retired = new, audit_kid(new.public_key()), retired
        return self.key, self.kid


def published_keys(directory: Path) -> dict[str, Any]:
    """The public key document of a key directory, for a verifier: reads,
    never writes. Raises ``ValueError`` with a message a person can act on."""
    path = directory / KEY_FILE
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    if not path.is_file():
        raise ValueError(f"{directory} holds no audit key ({KEY_FILE}); "
                         "point --key-dir at the gateway's audit-key directory "
                         "or pass --keys with the published audit-keys.json")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the audit key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: audit signing key is not Ed25519")
    kid = audit_kid(key.public_key())
    current = public_key_document(key, kid)["keys"]
    # SECURITY: _read_retired refuses a kid that does not match its key (§6).
    return {"keys": [*current, *(k for k in _read_retired(directory) if k.get("kid") != kid)]}


def _read_retired(directory: Path) -> list[dict[str, Any]]:
    path = directory / RETIRED_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable retired audit keys ({exc})") from exc
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise ValueError(f"{path}: expected {{\"keys\": [...]}}")
    public_keys({"keys": keys})  # refuses a kid that does not match its key
    return keys


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # SECURITY: never 0644
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
