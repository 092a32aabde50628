"""The ``gateway`` command line: ``_parser`` builds it, ``_serve``, ``_demo``,
``_audit`` and ``_verbs`` carry its verbs out (the admin, retention and
backup verbs live with their subsystems), ``_run`` runs the event loop.

May import every package of the gateway, :mod:`gateway.demo` included (its
only importer, for the demo verbs); nothing imports it but ``__main__``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from gateway.cli._parser import build_parser
from gateway.cli._run import loop_factory, tune_gc
from gateway.errors import ConfigError, ListenerUnavailable, NotReadyYet
from gateway.logs import configure as configure_logging

__all__ = ["build_parser", "loop_factory", "main", "tune_gc"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose)  # text on stderr until a config says otherwise
    from gateway.admin import AdminCallFailed

    try:
        code: int = args.func(args)
    except ListenerUnavailable as exc:  # one line naming the listener and the address
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    except NotReadyYet as exc:
        print(f"gateway: not ready yet, exiting to be started again: {exc}", file=sys.stderr)
        return NotReadyYet.exit_code
    except AdminCallFailed as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return exc.exit_code  # 3 unreachable, 4 TLS handshake refused
    return code
