"""Separation of duties on the admin plane (D6, D7): who needs whom for what.

One security admin may issue a certificate for a service of their own
organisation. Everything that lets one person act as someone else, or
changes what every identity rests on, needs a second security admin who is
not the requester and not of the requester's team (the dual control of
CyberArk, Vault's control groups; unlike hashicorp/vault#19214, a requester
never approves their own request):

====================================  =============================================
action on a target                    needs
====================================  =============================================
own certificate / own (re-)enable     refused (nobody issues their own credentials)
disable oneself                       refused
disable the last enabled admin        refused (the security team is never locked out)
issue/rotate/re-enable: principal     two persons
  with a privileged role
issue/rotate/re-enable: a person      two persons
issue/rotate/re-enable: another       two persons
  tenant's principal
issue/rotate/re-enable: a service     one security admin
  of the admin's own tenant
disable a ``security-admin``          two persons
disable anyone else                   one security admin
CA rotation, vault rekey              two persons
====================================  =============================================

Privileged roles are the admin-plane roles, ``privileged-user``, and every
role a shared system's route requires (``required_role`` in
:mod:`gateway.core.catalog`; today ``meter-operator``, which can disconnect a
household or change its power limit, D5). ``pusher`` is not: a pusher
belongs to a shared system, another tenant than any admin's, so issuing for
it needs two persons anyway.

A pending action moves through one transition table (h11 ``_state.py``
style); anything not in the table is refused. Pure: no I/O, no aiohttp.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from gateway.core.catalog import ROUTES
from gateway.core.model import Principal
from gateway.core.rejected import Rejected

SECURITY_ADMIN = "security-admin"
# The roles a shared system treats as privileged: each role one of its routes
# requires (remote meter operations, D5).
ROUTE_ROLES = frozenset(r.required_role for r in ROUTES if r.required_role)
PRIVILEGED_ROLES = frozenset({SECURITY_ADMIN, "auditor", "vault-approver",
                              "privileged-user"}) | ROUTE_ROLES

ONE_ADMIN = "one-admin"
TWO_PERSON = "two-person"
REFUSED = "refused"

# Actions that give a principal a usable credential.
CREDENTIAL_ACTIONS = frozenset({"certs-issue", "certs-rotate", "principal-enable"})
# Actions every identity or secret rests on.
CRITICAL_ACTIONS = frozenset({"ca-rotate", "vault-rekey"})
DISABLE = "principal-disable"
TWO_PERSON_ACTIONS = CREDENTIAL_ACTIONS | CRITICAL_ACTIONS | {DISABLE}


@dataclass(frozen=True, slots=True)
class Ruling:
    need: str  # ONE_ADMIN | TWO_PERSON | REFUSED
    reason: str  # a stable code for the audit event and the README table


@dataclass(frozen=True, slots=True)
class Situation:
    action: str
    actor: Principal
    target: Principal | None
    other_enabled_admins: int  # enabled security admins other than the target


Rule = tuple[Callable[[Situation], bool], str, str]


def _is_self(s: Situation) -> bool:
    return s.target is not None and s.target.key == s.actor.key


def _credential(s: Situation) -> bool:
    return s.action in CREDENTIAL_ACTIONS and s.target is not None


def _target_roles(s: Situation) -> frozenset[str]:
    return s.target.roles if s.target is not None else frozenset()


# The policy, first match wins. Each row: condition, need, reason.
RULES: tuple[Rule, ...] = (
    (lambda s: s.action in CREDENTIAL_ACTIONS and _is_self(s), REFUSED,
     "self-service-refused"),
    (lambda s: s.action == DISABLE and _is_self(s), REFUSED, "self-disable-refused"),
    (lambda s: s.action == DISABLE and SECURITY_ADMIN in _target_roles(s)
     and s.other_enabled_admins < 1, REFUSED, "last-security-admin"),
    (lambda s: s.action == DISABLE and SECURITY_ADMIN in _target_roles(s), TWO_PERSON,
     "disable-security-admin"),
    (lambda s: s.action == DISABLE, ONE_ADMIN, "disable"),
    (lambda s: s.action in CRITICAL_ACTIONS, TWO_PERSON, "critical-action"),
    (lambda s: _credential(s) and bool(_target_roles(s) & PRIVILEGED_ROLES), TWO_PERSON,
     "privileged-principal"),
    (lambda s: _credential(s) and s.target is not None and s.target.kind == "person",
     TWO_PERSON, "person-principal"),
    (lambda s: _credential(s) and s.target is not None and s.target.tenant != s.actor.tenant,
     TWO_PERSON, "other-tenant"),
    (_credential, ONE_ADMIN, "own-service"),
)


def ruling(action: str, actor: Principal, target: Principal | None = None, *,
           other_enabled_admins: int) -> Ruling:
    """What ``actor`` needs to do ``action`` on ``target`` (D6)."""
    situation = Situation(action, actor, target, other_enabled_admins)
    for condition, need, reason in RULES:
        if condition(situation):
            return Ruling(need, reason)
    return Ruling(ONE_ADMIN, "not-dual-controlled")


def other_enabled_admins(principals: Iterable[Principal],
                         disabled: Collection[tuple[str, str, str]],
                         target: tuple[str, str, str] | None) -> int:
    """How many enabled security admins there are besides ``target`` (the
    last one is never disabled, D6)."""
    return sum(1 for p in principals
               if SECURITY_ADMIN in p.roles and p.key != target and p.key not in disabled)


def approval_refusal(requester: Principal, approver: Principal,
                     target: tuple[str, str, str] | None) -> str | None:
    """Why ``approver`` may not approve ``requester``'s pending action, or None.

    D6: a second person, a security admin, of another team, who is not the
    principal the action is about. An undeclared team is no team: two admins
    without a team count as one team (they cannot be told apart)."""
    if approver.key == requester.key:
        return "own-request"
    if SECURITY_ADMIN not in approver.roles:
        return "missing-role"
    if (approver.team or "") == (requester.team or ""):
        return "same-team"
    if target is not None and target == approver.key:
        return "self-service-refused"
    return None


# -- the lifecycle of a pending action -------------------------------------------
PENDING, APPROVED, DONE, FAILED, DENIED, EXPIRED = (
    "pending", "approved", "done", "failed", "denied", "expired")
# approved is held only while the approved action runs: a crash there never
# leaves the item pending (it cannot be approved, hence done, twice).
TRANSITIONS: dict[tuple[str, str], str] = {
    (PENDING, "approve"): APPROVED,
    (PENDING, "deny"): DENIED,
    (PENDING, "expire"): EXPIRED,
    (APPROVED, "succeed"): DONE,
    (APPROVED, "fail"): FAILED,
}
FINAL = frozenset({DONE, FAILED, DENIED, EXPIRED})


class InvalidTransition(Rejected, ValueError):
    """An event the transition table does not allow in this state (409)."""

    def __init__(self, state: str, event: str) -> None:
        super().__init__("invalid-transition",
                         f"{event!r} is not allowed for an item that is {state!r}", status=409)
        self.state = state
        self.event = event


def transition(table: Mapping[tuple[str, str], str], state: str, event: str) -> str:
    """The state after ``event`` in a transition table (this one, break-glass's,
    the lockbox's); InvalidTransition if the table has no row."""
    try:
        return table[(state, event)]
    except KeyError:
        raise InvalidTransition(state, event) from None


def next_state(state: str, event: str) -> str:
    return transition(TRANSITIONS, state, event)


def allows(state: str, event: str) -> bool:
    return (state, event) in TRANSITIONS


def expiry_due(state: str, expires_at: datetime, now: datetime) -> bool:
    """A pending item whose time is up (``expires_at`` itself included) expires."""
    return allows(state, "expire") and expires_at <= now
