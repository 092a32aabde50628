"""The vault's keys as one gateway process uses them: the master key's
online rotation, and the data keys the vault keeps (the outbox's, the
pseudonyms' master secret)."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.core.pseudonym import Pseudonymiser
from gateway.errors import NotReadyYet
from gateway.files import write_private
from gateway.pki import AdminRefused
from gateway.vault import MasterKeys, RekeyProgress, SecretNotFound, Vault

OUTBOX_KEY_ID = "outbox/data-key"
PSEUDONYM_KEY_ID = "pseudonyms/master"


class MasterKeyRotation:
    """``POST /admin/vault/rekey``: every data key re-wrapped under a new
    master-key version, online, one at a time (``progress``)."""

    def __init__(self, vault: Vault, master: MasterKeys, key_file: Path | None) -> None:
        self.vault = vault
        self.master = master
        self.key_file = key_file  # None: the master key comes from the environment
        self.progress = RekeyProgress()

    def run(self) -> int:
        """Re-wrap every data key; how many. The key file first gets both
        versions, so a crash at any point leaves a file that opens the vault;
        then only the new version stays."""
        key_file = self.key_file
        if key_file is None:
            raise AdminRefused(409, "master-key-from-environment",
                               "the master key comes from the environment: rekey offline "
                               "with a key file")
        if self.progress.running:
            raise AdminRefused(409, "rekey-running", "a rekey is running")
        both = self.master.with_new_version()
        self.progress = RekeyProgress(running=True)
        try:
            write_private(key_file, both.to_text().encode())
            count = self.vault.rekey(both, progress=self.progress.step)
        finally:
            self.progress.running = False
        newest = MasterKeys({both.current_version: both.keys[both.current_version]})
        write_private(key_file, newest.to_text().encode())
        self.master = newest
        return count


class DataKeys:
    """Data keys from the vault, made on first use where ``makes_keys``. A
    data-plane replica only reads the vault: the control plane makes the keys
    (at its start), and a replica started before it refuses to start."""

    def __init__(self, vault: Vault, *, makes_keys: bool) -> None:
        self.vault = vault
        self.makes_keys = makes_keys
        self._pseudonymisers: dict[str, Pseudonymiser] = {}

    def get(self, secret_id: str) -> bytes:
        try:
            return self.vault.get(secret_id)
        except SecretNotFound:
            if not self.makes_keys:
                raise NotReadyYet(f"vault: {secret_id} is not there yet: the control plane "
                                  "makes the fleet's data keys at its start") from None
        key = os.urandom(32)
        self.vault.put(secret_id, key, kind="data-key")
        return key

    def pseudonymiser(self, tenant: str) -> Pseudonymiser:
        """D9: each IT provider's own pseudonym key, derived from a master
        secret that lives in the vault."""
        cached = self._pseudonymisers.get(tenant)
        if cached is None:
            master = self.get(PSEUDONYM_KEY_ID)
            cached = self._pseudonymisers[tenant] = Pseudonymiser.for_tenant(master, tenant)
        return cached
