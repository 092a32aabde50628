"""The ``gateway state backup|restore`` verbs.

Where the state is comes from the gateway's configuration (``--config``:
``[state] url``, else ``data_dir/state.db``, as ``gateway serve`` finds it)
or is named directly (``--db``). The caller hands in how a configuration
file is read (:data:`Locate`), so this package stays below the
configuration's layer.

Exit status: 0 done; 1 refused (the message on stderr says why: the target
exists without ``--force``, a gateway has it open, the file is not a state
database of a schema this release reads, the state is in PostgreSQL, a
file cannot be read or written);
configuration errors are the CLI's (2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from gateway.state._backup import StateFileRefused, backup_state, restore_state
from gateway.state._open import POSTGRES, SQLITE

# A configuration file -> its ``[state] url`` (None: embedded) and data_dir.
Locate = Callable[[Path], tuple[str | None, Path]]

KEEP_IT_CLOSE = "it holds the CA and signing keys: keep it as secret as the state itself"


def state_file(url: str | None, data_dir: Path) -> Path:
    """The SQLite file of a gateway whose state is ``url`` (None: the
    embedded default under ``data_dir``)."""
    if url is None:
        return data_dir / "state.db"
    if url.startswith(SQLITE):
        return Path(url[len(SQLITE):])
    if url.startswith(POSTGRES):
        raise StateFileRefused("the state is in PostgreSQL ([state] url): back it up with "
                               "pg_dump and restore it with pg_restore")
    raise StateFileRefused(f"not a state URL: {url.split(':', 1)[0]}:...")


def add_backup_parsers(state_sub: argparse._SubParsersAction[argparse.ArgumentParser],
                       locate: Locate) -> None:
    def where(args: argparse.Namespace) -> Path:
        if args.db is not None:
            return Path(args.db)
        return state_file(*locate(Path(args.config)))

    def backup(args: argparse.Namespace) -> int:
        try:
            src = where(args)
            size = backup_state(src, Path(args.out))
        except (StateFileRefused, OSError) as exc:
            print(f"gateway: backup refused: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {size} bytes to {args.out} (a copy of {src}); {KEEP_IT_CLOSE}")
        return 0

    def restore(args: argparse.Namespace) -> int:
        try:
            target = where(args)
            version = restore_state(Path(args.from_), target, force=args.force)
        except (StateFileRefused, OSError) as exc:
            print(f"gateway: restore refused: {exc}", file=sys.stderr)
            return 1
        print(f"restored {target} from {args.from_} (state schema version {version})")
        return 0

    def locate_args(parser: argparse.ArgumentParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--config", help="the gateway's TOML config: its state is found "
                           "as `gateway serve` finds it")
        which.add_argument("--db", help="or the SQLite state file itself")

    out = state_sub.add_parser(
        "backup", help="copy the embedded SQLite state (online, consistent while the gateway "
        "runs) to a file created with mode 0600; " + KEEP_IT_CLOSE)
    locate_args(out)
    out.add_argument("--out", required=True, help="the backup file to write (replaced "
                     "atomically)")
    out.set_defaults(func=backup)

    back = state_sub.add_parser(
        "restore", help="replace the embedded SQLite state with a backup, atomically, after "
        "checking it is a state database of a schema this release reads; refuses while a "
        "gateway has the state open")
    locate_args(back)
    back.add_argument("--from", dest="from_", required=True, metavar="FILE",
                      help="the backup file")
    back.add_argument("--force", action="store_true",
                      help="replace an existing state (its content is lost)")
    back.set_defaults(func=restore)
