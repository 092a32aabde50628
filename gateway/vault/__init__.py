"""The vault: upstream credentials and privileged accounts, encrypted at rest.

A few safe verbs (DESIGN.md §5; STYLE.md, "Safe layer over a hazardous
one")::

    master = MasterKeys.from_file(Path("vault.key"))     # or MasterKeys.from_env()
    vault = open_vault(state_url, Path("data/vault.db"), master)  # VaultLocked on a wrong key
    vault.put("ores/hes-api", b"...", kind="upstream-credential")
    vault.get("ores/hes-api")

Rotation is built in: the newest master version wraps, every listed version
unwraps; ``vault.rekey(master.with_new_version())`` moves every data key to
the new version, after which the old one can leave the key file. Key handling
lives in the private ``_keys`` module, which nothing outside this package
imports.

Two backends share the vault's SQL (``_store``): one SQLite file
(:class:`SqliteVault`, one process) and PostgreSQL (:class:`PostgresVault`,
for a fleet of replicas sharing the state database); ``open_vault`` picks
the one that goes with ``[state] url``.

Also here: the gateway's own service credentials at the shared systems
(:class:`UpstreamCredentials`: bearer tokens and per-tenant client
identities, rotated from the vault) and break-glass (:class:`BreakGlass`):
privileged accounts checked out by people under dual control, rotated after
use (D6, D7), and the tenant lockbox (:class:`Lockbox`): the tenants an
account reaches are told of each case and, in approve mode, consent first.

May import: :mod:`gateway.upstream` (to rotate at the shared system),
:mod:`gateway.audit`, :mod:`gateway.state`, the foundation modules and psycopg.
"""

from gateway.vault._breakglass import BreakGlass, BreakGlassPolicy, account_secret_id
from gateway.vault._errors import SecretNotFound, VaultError, VaultLocked, VaultTampered
from gateway.vault._keys import MasterKeys
from gateway.vault._lockbox import Lockbox, LockboxRefused
from gateway.vault._open import open_vault
from gateway.vault._postgres import PostgresVault
from gateway.vault._service import (
    UpstreamCredentials,
    identity_id,
    identity_uri,
    new_token,
    token_id,
)
from gateway.vault._sqlite import SqliteVault
from gateway.vault._store import RekeyProgress, SecretMeta, Vault

__all__ = [
    "BreakGlass",
    "BreakGlassPolicy",
    "Lockbox",
    "LockboxRefused",
    "MasterKeys",
    "PostgresVault",
    "RekeyProgress",
    "SecretMeta",
    "SecretNotFound",
    "SqliteVault",
    "UpstreamCredentials",
    "Vault",
    "VaultError",
    "VaultLocked",
    "VaultTampered",
    "account_secret_id",
    "identity_id",
    "identity_uri",
    "new_token",
    "open_vault",
    "token_id",
]
