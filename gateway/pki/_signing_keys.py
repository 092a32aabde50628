"""The signing keys of the identity assertions, with rotation.

Every key has a ``kid``. ``rotate()`` publishes the next key in the JWKS
``publish_ahead`` before it starts signing, so upstreams that cache the JWKS
already know it; the previous key stays published until every token it
signed has expired. Keys live in the state store.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.clock import utc_now
from gateway.state import SigningKeyRecord, StateStore

# Tokens are accepted with this much clock skew by verifiers.
LEEWAY = timedelta(seconds=5)


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private_key: Ed25519PrivateKey
    created: datetime
    activate_at: datetime
    unpublish_at: datetime | None

    @classmethod
    def generate(cls, now: datetime | None = None) -> SigningKey:
        """A fresh key, active at once (tests and tools)."""
        rec = _new_record(now or datetime.now(UTC), now or datetime.now(UTC))
        return cls.from_record(rec)

    @classmethod
    def from_record(cls, rec: SigningKeyRecord) -> SigningKey:
        key = serialization.load_pem_private_key(rec.key_pem.encode(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"signing key {rec.kid} is not Ed25519")
        return cls(rec.kid, key, rec.created, rec.activate_at, rec.unpublish_at)


def _new_record(now: datetime, activate_at: datetime) -> SigningKeyRecord:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    kid = f"gw-{now:%Y%m%dT%H%M%S}-{os.urandom(4).hex()}"
    return SigningKeyRecord(kid, pem, now, activate_at)


class KeyRing:
    def __init__(self, store: StateStore, *, token_lifetime: timedelta,
                 publish_ahead: timedelta = timedelta(seconds=60),
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.store = store
        self.token_lifetime = token_lifetime
        self.publish_ahead = publish_ahead
        self.clock = clock
        self._lock = threading.Lock()
        self._keys: tuple[SigningKey, ...] = ()
        self._by_activation: tuple[SigningKey, ...] = ()
        self._load()
        if not self._keys:
            now = clock()
            store.add_signing_key(_new_record(now, now))
            self._load()

    def _load(self) -> None:
        keys = tuple(SigningKey.from_record(r) for r in self.store.signing_keys())
        # Newest activation first (stable: among equal times, the store's
        # order): current() takes the first whose time has come, once a
        # request, without building a list.
        self._keys, self._by_activation = keys, tuple(
            sorted(keys, key=lambda k: k.activate_at, reverse=True))

    def reload(self) -> None:
        """Read the keys again: another process of the fleet rotated them."""
        with self._lock:
            self._load()

    def current(self, now: datetime | None = None) -> SigningKey:
        """The newest key whose activation time has come."""
        now = now or self.clock()
        for key in self._by_activation:
            if key.activate_at <= now:
                return key
        return self._keys[0]

    def published(self, now: datetime | None = None) -> tuple[SigningKey, ...]:
        now = now or self.clock()
        return tuple(k for k in self._keys if k.unpublish_at is None or k.unpublish_at > now)

    def rotate(self, now: datetime | None = None) -> SigningKey:
        """Publish a successor now; it signs from ``now + publish_ahead``. The
        present key stays published until its last token has expired."""
        now = now or self.clock()
        with self._lock:
            previous = self.current(now)
            rec = _new_record(now, now + self.publish_ahead)
            self.store.add_signing_key(rec)
            self.store.set_unpublish(previous.kid,
                                     rec.activate_at + self.token_lifetime + LEEWAY)
            self._load()
        return SigningKey.from_record(rec)

    def maintain(self, now: datetime | None = None) -> list[str]:
        """Forget keys no token can need any more; returns their kids."""
        now = now or self.clock()
        gone = []
        with self._lock:
            for k in self._keys:
                if k.unpublish_at is not None and k.unpublish_at <= now and \
                        k.kid != self.current(now).kid:
                    self.store.delete_signing_key(k.kid)
                    gone.append(k.kid)
            if gone:
                self._load()
        return gone

    def age_seconds(self, now: datetime | None = None) -> float:
        now = now or self.clock()
        return (now - self.current(now).activate_at).total_seconds()
