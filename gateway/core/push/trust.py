"""Who may push to which intake (D1, D12), pure.

Each push intake belongs to one shared system: ``hes`` (``POST
/push/hes/batches``) to the Head-End System's operator, ``cmh`` (``POST
/push/cmh/requests``) to the Connect My Home portal. The shared system says so
in its tenant file (``push_intake = "hes"``); the tenant kind alone never
qualifies, so a portal's pusher cannot post meter readings, nor the HES's a
booking. A refusal is 403 with an audit event and a SOC event.

:func:`may_push` is the decision the push service asks, before any body
byte is read; :func:`intake_refusal` is its rule over plain values.
"""

from __future__ import annotations

from gateway.core.model import Caller, Decision

PUSH_ROLE = "pusher"
PUSH_INTAKES = frozenset({"hes", "cmh"})
# Reasons a principal is refused at an intake (the SOC sees each one, D12).
PUSH_INTAKE_REFUSALS = frozenset({"not-a-pusher", "push-intake-foreign"})


def intake_refusal(roles: frozenset[str], declared_intake: object, intake: str) -> str | None:
    """Why a principal with ``roles``, of a tenant declaring ``declared_intake``
    (its ``push_intake``, or None), may not push to ``intake``; None: it may."""
    if PUSH_ROLE not in roles:
        return "not-a-pusher"
    # SECURITY: D1. The intake's own system, declared in configuration; nothing else.
    if intake not in PUSH_INTAKES or declared_intake != intake:
        return "push-intake-foreign"
    return None


def may_push(caller: Caller, intake: str) -> Decision:
    """May ``caller`` push to ``intake``: allow, or deny (403) with the reason."""
    reason = intake_refusal(caller.principal.roles, caller.tenant.push_intake, intake)
    return Decision.allow("push-intake") if reason is None else Decision.deny(reason, 403)
