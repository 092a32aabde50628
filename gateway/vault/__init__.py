"""The vault: upstream credentials and privileged accounts, encrypted at rest.

A few safe verbs (DESIGN.md §5; STYLE.md, "Safe layer over a hazardous
one")::

    master = MasterKeys.from_file(Path("vault.key"))     # or MasterKeys.from_env()
    vault = Vault(Path("data/vault.db"), master)          # VaultLocked on a wrong key
    vault.put("ores/hes-api", b"...", kind="upstream-credential")
    vault.get("ores/hes-api")

Rotation is built in: the newest master version wraps, every listed version
unwraps; ``vault.rekey(master.with_new_version())`` moves every data key to
the new version, after which the old one can leave the key file. Key handling
lives in the private ``_keys`` module, which nothing outside this package
imports.
"""

from gateway.vault._keys import MasterKeys
from gateway.vault.errors import SecretNotFound, VaultError, VaultLocked, VaultTampered
from gateway.vault.store import SecretMeta, Vault

__all__ = [
    "MasterKeys",
    "SecretMeta",
    "SecretNotFound",
    "Vault",
    "VaultError",
    "VaultLocked",
    "VaultTampered",
]
