"""``gateway audit verify``: one process's log and its segments, or a
fleet's shipped chains (docs/audit-format.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEMO_AUDIT_LOG = "var/demo/audit.jsonl"
DEMO_AUDIT_KEY_DIR = "var/demo/audit-key"


def cmd_audit_verify(args: argparse.Namespace) -> int:
    import json

    from gateway.audit import public_keys, published_keys, segment_files, segments_dir, verify_log
    from gateway.console import progress

    if args.fleet:
        return _verify_fleet(args)
    from gateway.admin import demo_work_tree

    # The demo's files are the default only where the demo ran.
    demo = demo_work_tree()
    args.log = args.log or (DEMO_AUDIT_LOG if demo else None)
    if not args.keys:
        args.key_dir = args.key_dir or (DEMO_AUDIT_KEY_DIR if demo else None)
    missing = [what for what, given in (("--log FILE", args.log),
                                        ("--keys FILE or --key-dir DIR",
                                         args.keys or args.key_dir)) if not given]
    if missing:
        print(f"gateway: audit verify needs {' and '.join(missing)} (the demo's files are "
              "the default only in a demo work tree)", file=sys.stderr)
        return 2
    # A verifier only reads: it never creates or changes a key (audit format §6).
    try:
        if args.keys:
            keys = json.loads(Path(args.keys).read_text(encoding="utf-8"))
            if not isinstance(keys, dict):
                raise ValueError("expected a JSON object {\"keys\": [...]}")
            public_keys(keys)  # every kid must match its key
        else:
            key_dir = Path(args.key_dir).resolve()
            if any(part.endswith(".segments") for part in key_dir.parts):
                raise ValueError(f"{key_dir} is inside an audit segments directory, "
                                 "not a key directory")
            keys = published_keys(key_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        source = args.keys or args.key_dir
        print(f"gateway: cannot read the audit keys from {source}: {exc}", file=sys.stderr)
        return 2
    log_path = Path(args.log)
    if log_path.is_dir():
        print(f"gateway: --log {log_path} is a directory; name the active log file "
              "(e.g. audit.jsonl beside audit.segments/)", file=sys.stderr)
        return 2
    if log_path.parent.name.endswith(".segments"):
        print(f"gateway: --log {log_path} is a sealed segment; name the active log "
              f"(e.g. {log_path.parent.parent / 'audit.jsonl'}): the whole log, every "
              "segment included, is verified from it", file=sys.stderr)
        return 2
    try:
        files = segment_files(segments_dir(log_path))
        if not log_path.exists() and not files:
            print(f"gateway: no audit log at {log_path}", file=sys.stderr)
            return 2
        files += [log_path] if log_path.exists() else []
        # A bar on a terminal (bytes of every segment); nothing when piped.
        with progress(sum(f.stat().st_size for f in files), "verifying the audit log",
                      unit="B", scale=True) as bar:
            result = verify_log(log_path, keys, lambda f: bar.advance(f.stat().st_size))
    except OSError as exc:  # unreadable file or directory: not a verdict on the log
        print(f"gateway: cannot read the audit log {log_path}: {exc}", file=sys.stderr)
        return 2
    summary = {"ok": result.ok, "events": result.events, "checkpoints": result.checkpoints,
               "files": result.files, "first_seq": result.first_seq,
               "last_seq": result.last_seq, "first_bad_file": None if result.ok else result.file,
               "first_bad_line": result.first_bad_line, "first_bad_seq": result.first_bad_seq,
               "problem": result.problem, "warning": result.warning}
    print(json.dumps(summary, indent=1))
    return 0 if result.ok else 1


def _verify_fleet(args: argparse.Namespace) -> int:
    """``gateway audit verify --fleet URL``: every replica's shipped chain and
    the fleet checkpoints (audit format §13)."""
    import json

    import psycopg

    from gateway.audit import public_keys, published_fleet_keys, verify_fleet
    from gateway.state import AuditTables

    try:
        tables = AuditTables(args.fleet)
    except psycopg.Error as exc:
        print(f"gateway: cannot read the fleet's audit tables: {exc}", file=sys.stderr)
        return 2
    try:
        if args.keys:
            keys = json.loads(Path(args.keys).read_text(encoding="utf-8"))
            source = args.keys
        else:
            # Keys from the same database are no independent check: say so.
            keys, source = published_fleet_keys(tables), "database"
        public_keys(keys)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"gateway: cannot read the audit keys: {exc}", file=sys.stderr)
        tables.close()
        return 2
    try:
        result = verify_fleet(tables, keys)
    except psycopg.Error as exc:
        print(f"gateway: cannot read the fleet's audit tables: {exc}", file=sys.stderr)
        return 2
    finally:
        tables.close()
    summary = result.summary()
    summary["keys"] = source
    if source == "database":
        summary["warning"] = ("the public keys were read from the database being verified; "
                              "pass --keys with a copy kept elsewhere for an independent check")
    print(json.dumps(summary, indent=1))
    return 0 if result.ok else 1
