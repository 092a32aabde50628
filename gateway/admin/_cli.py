"""Command-line verbs of the security team; they call the admin API over mTLS.

Which admin principal speaks is chosen with ``--cert/--key`` and the admin
plane's CA with ``--cacert`` (or the environment variables
``GATEWAY_ADMIN_CERT``, ``GATEWAY_ADMIN_KEY``, ``GATEWAY_ADMIN_CACERT``,
``GATEWAY_ADMIN_URL``). Only in a demo work tree (the directory ``gateway
demo`` ran in: ``var/demo/gateway.toml`` and ``certs/dev/ca.pem``) do they
default to the demo's security admin ``ores/person/alice``; anywhere else a
missing one is named and the command exits 2, so no operator's command ever
speaks with a demo certificate by accident (:mod:`gateway.admin._client`).

Listing verbs print an aligned table when stdout is a terminal and JSON
otherwise or with ``--json`` (:mod:`gateway.admin._output`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gateway.admin._client import DEFAULTS, call
from gateway.admin._output import rekey_bar, rows_in, show_listing, wrote
from gateway.console import is_terminal, waiting, wants_json


def _emit(status: int, payload: bytes, out: str | None = None, fmt: str = "json") -> int:
    if status >= 400:
        print(payload.decode(errors="replace"), file=sys.stderr)
        return 1
    if out:
        Path(out).write_bytes(payload)
        wrote(f"{rows_in(payload, fmt)} rows", out)
        return 0
    sys.stdout.write(payload.decode())
    if not payload.endswith(b"\n"):
        sys.stdout.write("\n")
    return 0


def _listing(status: int, payload: bytes, key: str, args: argparse.Namespace) -> int:
    """A listing: a table on a terminal, JSON piped or with ``--json``."""
    if status >= 400:
        return _emit(status, payload)
    show_listing(json.loads(payload), key, as_json=args.json)
    return 0


def _write_cert(status: int, payload: bytes, out: str | None) -> int:
    if status == 202:
        # D6: the request waits for a second security admin.
        doc = json.loads(payload)
        print(json.dumps(doc, indent=1))
        print(f"gateway: pending approval by a security admin of another team: "
              f"gateway certs approve {doc['id']} --reason ...", file=sys.stderr)
        return 0
    if status >= 400 or not out:
        return _emit(status, payload)
    doc = json.loads(payload)
    Path(out).write_text(doc["certificate"])
    wrote(f"the certificate {doc.get('serial', '')}".rstrip(), out)
    print(json.dumps({k: v for k, v in doc.items() if k != "certificate"}, indent=1))
    return 0


def _write_result(status: int, payload: bytes, out: str | None) -> int:
    """A pending action's answer; with ``--out``, its certificate is written."""
    if status >= 400:
        return _emit(status, payload)
    doc = json.loads(payload)
    result = doc.get("result") or {}
    if out and isinstance(result, dict) and result.get("certificate"):
        Path(out).write_text(result["certificate"])
        wrote(f"the certificate {result.get('serial', '')}".rstrip(), out)
        result = {k: v for k, v in result.items() if k != "certificate"}
        doc["result"] = result
    elif out:
        print("gateway: no certificate (yet) in this pending action", file=sys.stderr)
        print(json.dumps(doc, indent=1))
        return 1
    print(json.dumps(doc, indent=1))
    return 0


def cmd_pending(args: argparse.Namespace) -> int:
    if args.id:
        return _write_result(*call(args, "GET", f"/admin/pending/{args.id}"), args.out)
    query = f"?status={args.status}" if args.status else ""
    return _listing(*call(args, "GET", f"/admin/pending{query}"), "pending", args)


def _is_rekey(args: argparse.Namespace) -> bool:
    status, payload = call(args, "GET", f"/admin/pending/{quote(args.id)}")
    return status == 200 and json.loads(payload).get("action") == "vault-rekey"


def cmd_decide(args: argparse.Namespace) -> int:
    # Approving may run the action now (a vault rekey re-wraps every data key).
    path = f"/admin/pending/{quote(args.id)}/{args.decision}"
    if args.decision == "approve" and is_terminal(sys.stderr) and _is_rekey(args):
        with rekey_bar(call, args, "vault rekey: data keys re-wrapped"):
            status, payload = call(args, "POST", path, {"reason": args.reason})
    else:
        with waiting(f"{args.decision} {args.id}: waiting for the admin plane"):
            status, payload = call(args, "POST", path, {"reason": args.reason})
    if args.decision == "approve" and status < 400:
        doc = json.loads(payload)
        flat = {**doc["pending"], "result": doc["result"]}
        return _write_result(status, json.dumps(flat).encode(), args.out)
    return _emit(status, payload)


def cmd_csr(args: argparse.Namespace) -> int:
    from gateway.files import write_private
    from gateway.pki import key_pem, make_key_and_csr, spiffe_uri

    key, csr = make_key_and_csr(spiffe_uri(args.trust_domain, args.tenant, args.kind, args.name))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_private(out / f"{args.name}.key", key_pem(key))
    (out / f"{args.name}.csr").write_bytes(csr)
    print(f"key {out / (args.name + '.key')} (stays here), CSR {out / (args.name + '.csr')}")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"tenant": args.tenant, "kind": args.kind, "name": args.name,
                            "csr": Path(args.csr).read_text(), "reason": args.reason}
    if args.lifetime_days:
        body["lifetime_days"] = args.lifetime_days
    return _write_cert(*call(args, "POST", "/admin/certs", body), args.out)


def cmd_rotate(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"csr": Path(args.csr).read_text(), "reason": args.reason}
    if args.overlap_s:
        body["overlap_s"] = args.overlap_s
    return _write_cert(*call(args, "POST", f"/admin/certs/{args.serial}/rotate", body),
                       args.out)


def cmd_revoke(args: argparse.Namespace) -> int:
    return _emit(*call(args, "POST", f"/admin/certs/{args.serial}/revoke",
                       {"reason": args.reason, "code": args.code}))


def cmd_list(args: argparse.Namespace) -> int:
    status_ = "active" if args.active else args.status
    query = "&".join(f"{k}={quote(v)}" for k, v in (("tenant", args.tenant),
                                                    ("status", status_)) if v)
    status, payload = call(args, "GET", "/admin/certs" + (f"?{query}" if query else ""))
    if status >= 400:
        return _emit(status, payload)
    doc = json.loads(payload)
    # --name narrows to one principal's certificates (the serial to rotate);
    # the PEM blobs only with --pem.
    doc["certificates"] = [
        c if args.pem else {k: v for k, v in c.items() if k != "certificate"}
        for c in doc["certificates"]
        if (not args.name or c["name"] == args.name) and (not args.kind or c["kind"] == args.kind)]
    show_listing(doc, "certificates", as_json=args.json)
    if args.pem and not wants_json(args.json):
        for cert in doc["certificates"]:
            print(f"\n# {cert['serial']} {cert['tenant']}/{cert['kind']}/{cert['name']}\n"
                  f"{cert['certificate'].rstrip()}")
    return 0


def cmd_rotate_ca(args: argparse.Namespace) -> int:
    return _write_cert(*call(args, "POST", "/admin/ca/rotate",
                             {"overlap_s": args.overlap_s, "reason": args.reason}), None)


def cmd_rotate_server(args: argparse.Namespace) -> int:
    return _emit(*call(args, "POST", "/admin/tls/server/rotate", {"reason": args.reason}))


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    return _emit(*call(args, "POST", "/admin/keys/rotate", {"reason": args.reason}))


def cmd_audit_rotate_key(args: argparse.Namespace) -> int:
    return _emit(*call(args, "POST", "/admin/audit/rotate-key", {"reason": args.reason}))


def add_audit_parsers(audit_sub: Any) -> None:
    """``gateway audit rotate-key``: an admin verb beside ``audit verify``."""
    p = audit_sub.add_parser("rotate-key", help="sign audit checkpoints with a new key; the "
                             "old one stays published as retired")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_audit_rotate_key)
    _client_options(p)


def cmd_keys_list(args: argparse.Namespace) -> int:
    return _listing(*call(args, "GET", "/admin/keys"), "keys", args)


def cmd_principal(args: argparse.Namespace) -> int:
    return _write_cert(*call(args, "POST", f"/admin/principals/{args.principal}/{args.action}",
                             {"reason": args.reason}), None)


def _export(args: argparse.Namespace, path: str, key: str) -> int:
    """An export: the asked --format (csv by default), to --out or stdout;
    on a terminal without either, a table. ``--json`` is ``--format json``."""
    if args.json:
        args.format = "json"
    if args.format is None and not args.out and not wants_json(False):
        query = "&".join(part for part in (path.partition("?")[2], "format=json") if part)
        return _listing(*call(args, "GET", f"{path.partition('?')[0]}?{query}"), key, args)
    fmt = args.format or "csv"
    query = "&".join(part for part in (path.partition("?")[2], f"format={fmt}") if part)
    return _emit(*call(args, "GET", f"{path.partition('?')[0]}?{query}"), args.out, fmt)


def cmd_review(args: argparse.Namespace) -> int:
    if args.lockbox or args.reviews_due:
        # D7: each reached tenant's consent, refusal, expiry and pending review.
        query = "?review=pending" if args.reviews_due else ""
        return _export(args, f"/admin/lockbox{query}", "lockbox")
    return _export(args, "/admin/review", "principals")


def cmd_vault_list(args: argparse.Namespace) -> int:
    return _listing(*call(args, "GET", "/admin/vault/secrets"), "secrets", args)


def cmd_vault_rotate(args: argparse.Namespace) -> int:
    return _emit(*call(args, "POST", f"/admin/vault/upstreams/{args.upstream}/rotate",
                       {"reason": args.reason}))


def cmd_vault_rekey(args: argparse.Namespace) -> int:
    # Done at once (one admin) it re-wraps every data key: that may take a while.
    with rekey_bar(call, args, "vault rekey: data keys re-wrapped"):
        answer = call(args, "POST", "/admin/vault/rekey", {"reason": args.reason})
    return _write_cert(*answer, None)


def cmd_bg_request(args: argparse.Namespace) -> int:
    return _emit(*call(args, "POST", "/admin/breakglass/requests", {
        "account": args.account, "reason": args.reason, "ticket": args.ticket,
        "duration_s": args.duration_s, "emergency": args.emergency}))


def cmd_bg_step(args: argparse.Namespace) -> int:
    return _emit(*call(args, "POST", f"/admin/breakglass/requests/{args.case}/{args.step}",
                       {"reason": args.reason}))


def cmd_bg_list(args: argparse.Namespace) -> int:
    return _listing(*call(args, "GET", "/admin/breakglass"), "cases", args)


def cmd_nrn_request(args: argparse.Namespace) -> int:
    return _emit(*call(args, "POST", "/admin/nrn-approvals", {
        "nrn": args.nrn, "purpose": args.purpose, "justification": args.justification,
        "reason": args.reason}))


def cmd_nrn_step(args: argparse.Namespace) -> int:
    return _emit(*call(args, "POST", f"/admin/nrn-approvals/{quote(args.id)}/{args.step}",
                       {"reason": args.reason}))


def cmd_nrn_list(args: argparse.Namespace) -> int:
    return _listing(*call(args, "GET", "/admin/nrn-approvals"), "approvals", args)


def cmd_usage(args: argparse.Namespace) -> int:
    query = "&".join(f"{k}={v}" for k, v in (("period", args.period), ("tenant", args.tenant),
                                             ("upstream", args.upstream), ("since", args.since))
                     if v)
    return _listing(*call(args, "GET", f"/admin/usage?{query}"), "rows", args)


def cmd_consultations(args: argparse.Namespace) -> int:
    query = f"?tenant={quote(args.tenant)}" if args.tenant else ""
    return _export(args, f"/admin/consultations{query}", "consultations")


def add_vault_parsers(sub: Any) -> list[argparse.ArgumentParser]:
    clients = []
    p = sub.add_parser("consultations", help="the register of purpose-bound consultations (D8)")
    p.add_argument("--format", choices=["json", "csv"],
                   help="default csv (a table on a terminal without --out)")
    p.add_argument("--tenant")
    p.add_argument("--out")
    _json_option(p)
    p.set_defaults(func=cmd_consultations)
    clients.append(p)
    p = sub.add_parser("usage", help="aggregated usage per tenant, system and route (D10)")
    p.add_argument("--period", choices=["day", "week", "month"], default="day")
    p.add_argument("--tenant")
    p.add_argument("--upstream")
    p.add_argument("--since", help="YYYY-MM-DD")
    _json_option(p)
    p.set_defaults(func=cmd_usage)
    clients.append(p)
    vault = sub.add_parser("vault", help="the vault: secrets metadata, rotation, rekey")
    vs = vault.add_subparsers(dest="vault_command", required=True)
    p = vs.add_parser("list", help="secret ids, versions and ages (never values)")
    _json_option(p)
    p.set_defaults(func=cmd_vault_list)
    clients.append(p)
    p = vs.add_parser("rotate-upstream", help="rotate a shared system's service credential")
    p.add_argument("upstream")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_vault_rotate)
    clients.append(p)
    p = vs.add_parser("rekey", help="re-wrap every data key under a new master-key version")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_vault_rekey)
    clients.append(p)

    bg = sub.add_parser("breakglass", help="privileged accounts under dual control")
    bs = bg.add_subparsers(dest="breakglass_command", required=True)
    p = bs.add_parser("request", help="ask for a privileged account")
    p.add_argument("--account", required=True)
    p.add_argument("--reason", required=True)
    p.add_argument("--ticket", required=True)
    p.add_argument("--duration-s", type=float, default=3600)
    p.add_argument("--emergency", action="store_true",
                   help="skip approval: alerts the SOC at once and needs a review")
    p.set_defaults(func=cmd_bg_request)
    clients.append(p)
    for step, text in (("approve", "approve a request (another person)"),
                       ("deny", "deny a request"),
                       ("checkout", "receive the credential, once"),
                       ("checkin", "end the lease; the password is rotated"),
                       ("review", "record the post-incident review of an emergency case")):
        p = bs.add_parser(step, help=text)
        p.add_argument("case")
        p.add_argument("--reason", required=True)
        p.set_defaults(func=cmd_bg_step, step=step)
        clients.append(p)
    p = bs.add_parser("list", help="cases and leases")
    _json_option(p)
    p.set_defaults(func=cmd_bg_list)
    clients.append(p)

    nrn = sub.add_parser("nrn", help="national-register lookups approved beforehand (D8)")
    ns = nrn.add_subparsers(dest="nrn_command", required=True)
    p = ns.add_parser("request", help="ask to look a person up (then name the id in X-Approval)")
    p.add_argument("--nrn", required=True)
    p.add_argument("--purpose", required=True)
    p.add_argument("--justification", required=True, help="a case reference")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_nrn_request)
    clients.append(p)
    for step, text in (("approve", "approve a request of your team (a manager, not your own)"),
                       ("deny", "deny a request of your team")):
        p = ns.add_parser(step, help=text)
        p.add_argument("id")
        p.add_argument("--reason", required=True)
        p.set_defaults(func=cmd_nrn_step, step=step)
        clients.append(p)
    p = ns.add_parser("list", help="your tenant's requests")
    _json_option(p)
    p.set_defaults(func=cmd_nrn_list)
    clients.append(p)
    return clients


def _json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print the admin API's JSON (the default when stdout is not a terminal)")


def _client_options(p: argparse.ArgumentParser) -> None:
    for name, (env, default) in DEFAULTS.items():
        if name == "url":
            p.add_argument("--admin-url", default=os.environ.get(env, default),
                           help=f"the admin plane (env {env}, default {default})")
        else:
            p.add_argument(f"--{name}", help=f"(env {env}; in a demo work tree, default "
                           f"{default})")


def add_parsers(certs: Any, sub: Any) -> None:
    """Add the admin verbs to the ``gateway`` parser (``certs`` is its sub-parser set)."""
    p = certs.add_parser("csr", help="make a key and a CSR for a principal (the key stays here)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--kind", default="service")
    p.add_argument("--name", required=True)
    p.add_argument("--out", default=".")
    p.add_argument("--trust-domain", default="shared-grid.test")
    p.set_defaults(func=cmd_csr)

    p = certs.add_parser("issue", help="issue a client certificate from a CSR")
    for opt in ("--tenant", "--name", "--csr", "--reason"):
        p.add_argument(opt, required=True)
    p.add_argument("--kind", default="service")
    p.add_argument("--lifetime-days", type=float)
    p.add_argument("--out", help="write the certificate PEM here")
    p.set_defaults(func=cmd_issue)

    p = certs.add_parser("rotate", help="issue the successor; the predecessor is revoked "
                         "when the overlap ends")
    p.add_argument("serial")
    p.add_argument("--csr", required=True)
    p.add_argument("--reason", required=True)
    p.add_argument("--overlap-s", type=float)
    p.add_argument("--out")
    p.set_defaults(func=cmd_rotate)

    p = certs.add_parser("revoke", help="revoke a certificate at once, on every listener")
    p.add_argument("serial")
    p.add_argument("--reason", required=True)
    p.add_argument("--code", default="unspecified",
                   choices=["unspecified", "key-compromise", "affiliation-changed",
                            "superseded", "cessation-of-operation"])
    p.set_defaults(func=cmd_revoke)

    p = certs.add_parser("pending", help="actions waiting for a second security admin (D6); "
                         "with an ID and --out, write its certificate once issued")
    p.add_argument("id", nargs="?")
    p.add_argument("--status", choices=["pending", "done", "denied", "expired", "failed"])
    p.add_argument("--out")
    _json_option(p)
    p.set_defaults(func=cmd_pending)
    for decision, text in (("approve", "approve another admin's pending action (D6): "
                                       "never one's own, never one's own team's"),
                           ("deny", "deny (or, as its requester, withdraw) a pending action")):
        p = certs.add_parser(decision, help=text)
        p.add_argument("id")
        p.add_argument("--reason", required=True)
        if decision == "approve":
            p.add_argument("--out", help="write the issued certificate PEM here")
        else:
            p.set_defaults(out=None)
        p.set_defaults(func=cmd_decide, decision=decision)

    p = certs.add_parser("list", help="list certificates (find the serial to rotate: "
                         "--tenant T --name N --active)")
    p.add_argument("--tenant")
    p.add_argument("--kind", help="principal kind: service or person")
    p.add_argument("--name", help="principal name")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--status", choices=["active", "revoked"])
    which.add_argument("--active", action="store_true", help="only active certificates "
                       "(--status active)")
    p.add_argument("--pem", action="store_true", help="include each certificate's PEM")
    _json_option(p)
    p.set_defaults(func=cmd_list)

    p = certs.add_parser("rotate-ca", help="new CA now; the old one trusted for the overlap")
    p.add_argument("--overlap-s", type=float, default=7 * 86400)
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_rotate_ca)

    p = certs.add_parser("rotate-server", help="new server certificate, no restart")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_rotate_server)

    keys = sub.add_parser("keys", help="signing keys of the identity assertions")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    p = keys_sub.add_parser("rotate", help="publish the next key, then sign with it")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_keys_rotate)
    p = keys_sub.add_parser("list", help="published keys")
    _json_option(p)
    p.set_defaults(func=cmd_keys_list)

    principals = sub.add_parser("principals", help="disable a leaver, re-enable")
    principals_sub = principals.add_subparsers(dest="principals_command", required=True)
    for action in ("disable", "enable"):
        p = principals_sub.add_parser(action, help=f"{action} TENANT/KIND/NAME")
        p.add_argument("principal", help="e.g. fluvius/service/api")
        p.add_argument("--reason", required=True)
        p.set_defaults(func=cmd_principal, action=action)

    p = sub.add_parser("review", help="access review export (D8); with --lockbox, the "
                       "tenant lockbox decisions and pending tenant reviews (D7)")
    p.add_argument("--lockbox", action="store_true",
                   help="list the tenant lockbox: each reached tenant's consent, refusal, "
                   "expiry, and the reviews due after an emergency")
    p.add_argument("--reviews-due", action="store_true",
                   help="the tenant lockbox reviews still due after an emergency (implies "
                   "--lockbox)")
    p.add_argument("--format", choices=["json", "csv"],
                   help="default csv (a table on a terminal without --out)")
    p.add_argument("--out")
    _json_option(p)
    p.set_defaults(func=cmd_review)

    for name in ("issue", "rotate", "revoke", "list", "rotate-ca", "rotate-server", "pending",
                 "approve", "deny"):
        _client_options(certs.choices[name])
    for parser in add_vault_parsers(sub):
        _client_options(parser)
    for parser in (*keys_sub.choices.values(), *principals_sub.choices.values(),
                   sub.choices["review"]):
        _client_options(parser)
