"""The ``gateway`` command's parser, and its shell completion."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.cli._audit import DEMO_AUDIT_KEY_DIR, DEMO_AUDIT_LOG, cmd_audit_verify
from gateway.cli._demo import cmd_certs_init_dev, cmd_demo
from gateway.cli._serve import cmd_serve
from gateway.cli._verbs import (
    cmd_config_check,
    cmd_relations_compile,
    cmd_state_grants,
    state_location,
)

DESCRIPTION = "The gateway command line."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    from gateway.metrics import version
    parser.add_argument("--version", action="version", version=f"gateway {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway from a config file")
    serve.add_argument("--config", required=True, help="path to gateway TOML config")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="N data-plane worker processes on the same sockets (SO_REUSEPORT), "
                       "each a replica of the fleet; needs [state] url = postgresql://...")
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    config = sub.add_parser("config", help="the configuration file")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser(
        "check", help="validate a config file and the tenant files it names without "
        "starting (exit 0 valid, 2 not; docs/configuration.md lists every key)")
    check.add_argument("--config", required=True, help="path to gateway TOML config")
    check.set_defaults(func=cmd_config_check)

    demo = sub.add_parser("demo", help="dev PKI + four simulators + gateway on loopback")
    demo.add_argument("--tenants", default="tenants", help="tenant declarations directory")
    demo.add_argument("--certs", default="certs/dev", help="where the dev PKI is written")
    demo.add_argument("--work", default="var/demo", help="dataset, keys, audit log")
    demo.add_argument("--replicas", type=int, metavar="N",
                      help="run the gateway as a fleet: a local PostgreSQL under --work, one "
                      "control plane and N data-plane replicas, each its own process "
                      "(described in <work>/fleet.json)")
    demo.add_argument("--ephemeral-ports", action="store_true",
                      help="let the kernel pick every port (for tests beside a running demo)")
    demo.set_defaults(func=cmd_demo)

    certs = sub.add_parser("certs", help="certificate tasks")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_sub.add_parser("init-dev", help="create or refresh the dev PKI")
    init.add_argument("--tenants", default="tenants")
    init.add_argument("--out", default="certs/dev")
    init.set_defaults(func=cmd_certs_init_dev)
    audit = sub.add_parser("audit", help="the tamper-evident audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify", help="check the hash chain and every checkpoint, across the sealed "
        "segments (<log>.segments/) and the active file")
    verify.add_argument("--log", help="the active log file (in a demo work tree, default "
                        f"{DEMO_AUDIT_LOG})")
    verify.add_argument("--keys", help="public keys (JSON, as served on the ops plane at "
                        "/.well-known/audit-keys.json)")
    verify.add_argument("--key-dir", help="or the gateway's audit key directory (in a demo "
                        f"work tree, default {DEMO_AUDIT_KEY_DIR})")
    verify.add_argument("--fleet", metavar="POSTGRESQL_URL",
                        help="verify a fleet: every replica's chain shipped to this database "
                        "and the fleet checkpoints (names a truncated or missing replica)")
    verify.set_defaults(func=cmd_audit_verify)
    from gateway.admin import add_audit_parsers
    add_audit_parsers(audit_sub)
    state = sub.add_parser("state", help="the gateway's state: backup and restore of the "
                           "SQLite file, the PostgreSQL data-plane grants")
    state_sub = state.add_subparsers(dest="state_command", required=True)
    grants = state_sub.add_parser(
        "data-plane-grants", help="print the SQL that gives an existing database role the "
        "data-plane replicas' privileges, no more (run it as the schema's owner after the "
        "control plane's first start)")
    grants.add_argument("--role", default="gateway_data")
    grants.set_defaults(func=cmd_state_grants)
    from gateway.state import add_backup_parsers
    add_backup_parsers(state_sub, state_location)
    relations = sub.add_parser("relations", help="the relation feed")
    relations_sub = relations.add_subparsers(dest="relations_command", required=True)
    compile_ = relations_sub.add_parser(
        "compile", help="compile a JSON feed into a snapshot (gateway.relations accepts "
        "either; a snapshot loads in a fraction of a second), written atomically")
    compile_.add_argument("--feed", required=True, help="JSON feed {\"relations\": [...]}")
    compile_.add_argument("--out", required=True, help="snapshot file to write")
    compile_.set_defaults(func=cmd_relations_compile)

    from gateway.retention import add_parsers as add_retention_parsers
    add_retention_parsers(sub)
    from gateway.admin import add_parsers

    add_parsers(certs_sub, sub)
    _add_completion(sub)
    return parser


def _add_completion(sub: Any) -> None:
    """``gateway completion bash|zsh``: the shell completion script of this
    very parser (shtab), to source or install."""
    p = sub.add_parser("completion", help="print the shell completion script: "
                       "source <(gateway completion bash), or install it (zsh: as _gateway "
                       "in a directory of $fpath)")
    p.add_argument("shell", choices=["bash", "zsh"])
    p.set_defaults(func=cmd_completion)


# Options that name a file or a directory: the shell completes paths for them.
_FILE_OPTIONS = {"config", "feed", "out", "log", "keys", "cert", "key", "cacert", "csr"}
_DIR_OPTIONS = {"key_dir", "tenants", "certs", "work"}


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    parser = build_parser()
    parsers = [parser]
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.option_strings and action.dest in _FILE_OPTIONS:
                action.complete = shtab.FILE  # type: ignore[attr-defined]
            elif action.option_strings and action.dest in _DIR_OPTIONS:
                action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    print(shtab.complete(parser, shell=args.shell), end="")
    return 0
