"""Policy check of the systemd unit in deploy/systemd (standard library only).

`systemd-analyze verify` says the unit parses and its commands exist; this
says it keeps the hardening and the stop behaviour docs/operations.md
promises, and that the example configurations fit it:

- its own unprivileged user (DynamicUser=yes, or User= that is not root),
  ProtectSystem=strict, ProtectHome, PrivateTmp, PrivateDevices,
  NoNewPrivileges, an empty CapabilityBoundingSet, RestrictAddressFamilies
  within AF_INET AF_INET6 AF_UNIX, SystemCallFilter=@system-service, the
  kernel protections, a StateDirectory, UMask 0077;
- the vault master key as a credential (LoadCredential=vault.key:...);
- KillSignal=SIGTERM, TimeoutStopSec longer than the drain timeout each
  <role>.toml configures ([gateway] drain_timeout_s, 20 s when absent),
  Restart=on-failure, ExecStart running `gateway serve --config`;
- each <role>.toml beside it names that role, reads the vault key from the
  unit's credential directory, keeps its TLS files in the unit's state
  directory, has a PostgreSQL state url without a password and a memory
  budget below MemoryMax.

Usage: check_units.py [DIR]   (exit 0 when all holds, 1 otherwise)
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

DEFAULT_DRAIN_TIMEOUT_S = 20  # the gateway's default for [gateway] drain_timeout_s
UNIT = "gateway@.service"
ROLES = ("control", "data")
ALLOWED_FAMILIES = {"AF_INET", "AF_INET6", "AF_UNIX"}
REQUIRED_YES = ("ProtectHome", "PrivateTmp", "PrivateDevices", "NoNewPrivileges",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                "ProtectControlGroups", "ProtectClock", "ProtectHostname",
                "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID",
                "LockPersonality")
URL_WITH_PASSWORD = re.compile(r"postgres(?:ql)?://[^/@\s]*:[^/@\s]*@")

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections -> key -> every assignment in order (systemd's repeated keys)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        if section is not None and "=" in line:
            key, _, value = line.partition("=")
            section.setdefault(key.strip(), []).append(value.strip())
    return unit


def seconds(value: str) -> float | None:
    """A systemd time span: "45", "45s", "1min 30s", "2m", "500ms"."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    if not parts or re.sub(r"[\d.\sa-z]", "", value):
        return None
    for number, unit in parts:
        if unit not in units:
            return None
        total += float(number) * units[unit]
    return total


def memory_mib(value: str) -> float | None:
    m = re.fullmatch(r"(\d+)([KMGT]?)", value)
    if not m:
        return None
    return int(m[1]) * {"": 2**-20, "K": 2**-10, "M": 1, "G": 2**10, "T": 2**20}[m[2]]


def check(directory: Path) -> list[str]:
    failures: list[str] = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            failures.append(f"{UNIT}: {what}")

    path = directory / UNIT
    if not path.is_file():
        return [f"{path}: missing"]
    svc = parse_unit(path.read_text()).get("Service", {})

    def last(key: str) -> str | None:
        values = svc.get(key)
        return values[-1] if values else None

    user = last("User")
    need(last("DynamicUser") == "yes" or (user not in (None, "", "root", "0")),
         "runs as its own unprivileged user (DynamicUser=yes or User=)")
    need(last("ProtectSystem") == "strict", "ProtectSystem=strict")
    for key in REQUIRED_YES:
        allowed = ("yes", "read-only", "tmpfs") if key == "ProtectHome" else ("yes",)
        need(last(key) in allowed, f"{key}=yes")
    need("CapabilityBoundingSet" in svc and last("CapabilityBoundingSet") == "",
         "CapabilityBoundingSet= (empty: no capability at all)")
    need(last("AmbientCapabilities") in (None, ""), "AmbientCapabilities must stay empty")
    families = set(" ".join(svc.get("RestrictAddressFamilies", [])).split())
    need(bool(families) and families <= ALLOWED_FAMILIES,
         f"RestrictAddressFamilies within {' '.join(sorted(ALLOWED_FAMILIES))} "
         f"(got {' '.join(sorted(families)) or 'none'})")
    filters = svc.get("SystemCallFilter", [])
    need(any(f.split()[0] == "@system-service" for f in filters if f),
         "SystemCallFilter=@system-service")
    need(bool(last("StateDirectory")), "StateDirectory= (the only writable place)")
    need(last("UMask") == "0077", "UMask=0077")
    credentials = [c.split(":", 1)[0] for c in svc.get("LoadCredential", [])]
    need("vault.key" in credentials, "LoadCredential=vault.key:... (the vault master key)")
    need(last("KillSignal") == "SIGTERM", "KillSignal=SIGTERM (the gateway drains on it)")
    stop = seconds(last("TimeoutStopSec") or "")
    need(stop is not None, "TimeoutStopSec= (longer than the drain timeout)")
    need(last("Restart") == "on-failure", "Restart=on-failure")
    start = last("ExecStart") or ""
    need(start.startswith("/") and " serve --config " in f"{start} ",
         "ExecStart=/ABSOLUTE/gateway serve --config ...")
    memory_max = memory_mib(last("MemoryMax") or "")

    for role in ROLES:
        cfg_path = directory / f"{role}.toml"
        if not cfg_path.is_file():
            failures.append(f"{cfg_path}: missing (the example configuration of {role})")
            continue
        where = f"{cfg_path.name}"
        cfg = tomllib.loads(cfg_path.read_text())
        instance = f"gateway@{role}.service"
        state_dir = f"/var/lib/{(last('StateDirectory') or '').replace('%i', role)}"
        drain = (cfg.get("gateway") or {}).get("drain_timeout_s", DEFAULT_DRAIN_TIMEOUT_S)
        if stop is not None and stop <= drain:
            failures.append(f"{where}: [gateway] drain_timeout_s ({drain} s) must be shorter "
                            f"than the unit's TimeoutStopSec ({stop} s)")
        if (cfg.get("fleet") or {}).get("role") != role:
            failures.append(f"{where}: [fleet] role = {role!r}")
        key_file = (cfg.get("vault") or {}).get("key_file", "")
        if key_file != f"/run/credentials/{instance}/vault.key":
            failures.append(f"{where}: [vault] key_file must be the unit's credential "
                            f"/run/credentials/{instance}/vault.key (got {key_file!r})")
        for key in ("cert", "key", "trust_bundle"):
            value = str((cfg.get("tls") or {}).get(key, ""))
            if not value.startswith(state_dir + "/"):
                failures.append(f"{where}: [tls] {key} must be in the state directory "
                                f"{state_dir} (the unit copies it there; got {value!r})")
        url = str((cfg.get("state") or {}).get("url", ""))
        if not url.startswith(("postgresql://", "postgres://")) or URL_WITH_PASSWORD.search(url):
            failures.append(f"{where}: [state] url must be postgresql:// without a password")
        budget = (cfg.get("limits") or {}).get("memory_budget_mb")
        if memory_max is None or budget is None or budget >= memory_max:
            failures.append(f"{where}: [limits] memory_budget_mb ({budget}) must be set "
                            f"below the unit's MemoryMax ({memory_max} MiB)")
    return failures


def main(argv: list[str]) -> int:
    directory = Path(argv[1]) if len(argv) > 1 else Path(__file__).parent / "systemd"
    failures = check(directory)
    for failure in failures:
        print(f"FAIL {failure}")
    print(f"{UNIT} policy: {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
