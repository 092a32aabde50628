"""Who may push to which intake (D1): the shared system that declares it in
its tenant file, never any shared system, never by its kind alone."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.core.model import Caller, Principal, Tenant
from gateway.core.push.trust import PUSH_INTAKE_REFUSALS, PUSH_INTAKES, intake_refusal, may_push
from gateway.errors import ConfigError
from gateway.tenants import load_tenants, parse_tenant

REPO = Path(__file__).resolve().parents[3]
PUSHER = frozenset({"pusher"})


@pytest.mark.parametrize("roles,declared,intake,expected", [
    (PUSHER, "hes", "hes", None),
    (PUSHER, "cmh", "cmh", None),
    # Reproduced: the portal's pusher posted HES readings; the HES's a booking.
    (PUSHER, "cmh", "hes", "push-intake-foreign"),
    (PUSHER, "hes", "cmh", "push-intake-foreign"),
    (PUSHER, None, "hes", "push-intake-foreign"),  # a shared system that declares none
    (PUSHER, "other", "other", "push-intake-foreign"),  # not an intake the gateway has
    (frozenset({"reader"}), "hes", "hes", "not-a-pusher"),
    (frozenset(), "cmh", "cmh", "not-a-pusher"),
])
def test_only_the_declaring_systems_pushers(roles: frozenset[str], declared: object,
                                            intake: str, expected: str | None) -> None:
    assert intake_refusal(roles, declared, intake) == expected
    assert expected is None or expected in PUSH_INTAKE_REFUSALS


def _caller(tenant: str, kind: str, roles: frozenset[str],
            push_intake: str | None = None) -> Caller:
    return Caller(Tenant(tenant, tenant, kind, push_intake=push_intake),
                  Principal(tenant, "service", "pusher", roles))


HES = _caller("hes-operator", "shared-system", PUSHER, push_intake="hes")
PORTAL = _caller("cmh-portal", "shared-system", PUSHER, push_intake="cmh")


@pytest.mark.parametrize("caller,intake,allowed,reason", [
    (HES, "hes", True, "push-intake"),
    (PORTAL, "cmh", True, "push-intake"),
    (PORTAL, "hes", False, "push-intake-foreign"),
    (HES, "cmh", False, "push-intake-foreign"),
    # A shared system that declares no intake; its kind alone never qualifies.
    (_caller("it-platform", "shared-system", PUSHER), "hes", False, "push-intake-foreign"),
    # The declaration belongs to the tenant: another principal needs the role too.
    (_caller("hes-operator", "shared-system", frozenset({"reader"}), push_intake="hes"),
     "hes", False, "not-a-pusher"),
    # A tenant of another kind holding the role: the role alone never qualifies.
    (_caller("ores", "dso", PUSHER), "hes", False, "push-intake-foreign"),
])
def test_may_push_decides_from_the_callers_tenant_and_role(caller: Caller, intake: str,
                                                           allowed: bool, reason: str) -> None:
    decision = may_push(caller, intake)
    assert (decision.allowed, decision.reason) == (allowed, reason)
    assert decision.status == (200 if allowed else 403)


def _doc(**extra: Any) -> dict[str, Any]:
    return {"id": "hes-operator", "name": "HES", "kind": "shared-system",
            "principals": [{"kind": "service", "name": "pusher", "roles": ["pusher"]}],
            **extra}


def test_the_intake_is_read_from_the_tenant_file() -> None:
    assert parse_tenant(_doc(push_intake="hes"), "t.toml").push_intake == "hes"
    assert parse_tenant(_doc(), "t.toml").push_intake is None
    assert {"hes", "cmh"} == PUSH_INTAKES


@pytest.mark.parametrize("extra,message", [
    ({"push_intake": "meters"}, r"t\.toml: push_intake: unknown intake 'meters'"),
    ({"push_intake": ""}, r"t\.toml: push_intake: must be a non-empty string"),
    ({"push_intake": "hes", "kind": "dso"},
     r"t\.toml: push_intake: only a shared-system tenant owns a push intake"),
])
def test_a_wrong_intake_is_a_config_error_naming_file_and_key(extra: dict[str, Any],
                                                               message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_tenant(_doc(**extra), "t.toml")


def test_the_demo_tenants_declare_one_system_per_intake() -> None:
    registry = load_tenants(REPO / "tenants")
    owners = {t.push_intake: t.id for t in registry if t.push_intake is not None}
    assert owners == {"hes": "hes-operator", "cmh": "cmh-portal"}


def test_two_systems_claiming_one_intake_stop_start_up(tmp_path: Path) -> None:
    tenants = tmp_path / "tenants"
    shutil.copytree(REPO / "tenants", tenants)
    portal = tenants / "cmh-portal.toml"
    portal.write_text(portal.read_text().replace('push_intake = "cmh"', 'push_intake = "hes"'))
    with pytest.raises(ConfigError, match=r"hes-operator\.toml: push_intake: intake 'hes' is "
                                          r"already owned by .*cmh-portal\.toml"):
        load_tenants(tenants)
    portal.write_text(portal.read_text().replace('push_intake = "hes"', 'push_intake = "x"'))
    proc = subprocess.run([sys.executable, "-m", "gateway", "certs", "init-dev", "--tenants",
                           str(tenants), "--out", str(tmp_path / "certs")],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "cmh-portal.toml: push_intake: unknown intake 'x'" in proc.stderr
