"""The admin CLI's connection to the admin plane: which principal speaks
(``--cert/--key``, ``--cacert``, ``--admin-url`` or ``GATEWAY_ADMIN_*``; the
demo's ``alice`` only in a demo work tree) and one call over mTLS, its
failures told apart: unreachable (exit 3), or the handshake or the client
certificate refused (exit 4)."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import ConfigError, GatewayError
from gateway.tls import client_context

# option -> (environment variable, the demo's value: used only in a demo work tree)
DEFAULTS = {
    "url": ("GATEWAY_ADMIN_URL", "https://localhost:8444"),
    "cert": ("GATEWAY_ADMIN_CERT", "certs/dev/ores/alice.pem"),
    "key": ("GATEWAY_ADMIN_KEY", "certs/dev/ores/alice.key"),
    "cacert": ("GATEWAY_ADMIN_CACERT", "certs/dev/ca.pem"),
}
# What `gateway demo` (default --certs and --work) leaves in the directory it ran in.
DEMO_TREE_MARKERS = ("var/demo/gateway.toml", "certs/dev/ca.pem")


def demo_work_tree(cwd: Path | None = None) -> bool:
    """Whether ``cwd`` is where ``gateway demo`` ran with its default paths:
    only there do the CLI's defaults point at the demo's files."""
    base = cwd or Path.cwd()
    return all((base / marker).is_file() for marker in DEMO_TREE_MARKERS)


def _identity(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """``--cacert``, ``--cert``, ``--key``: given, from the environment, or the
    demo's in a demo work tree; else a :class:`ConfigError` naming each one
    missing (exit 2)."""
    demo = demo_work_tree()
    missing: list[str] = []
    found: dict[str, str] = {}
    for name in ("cacert", "cert", "key"):
        env, demo_value = DEFAULTS[name]
        value = getattr(args, name) or os.environ.get(env) or (demo_value if demo else "")
        if not value:
            missing.append(f"--{name} (or {env})")
        found[name] = value
    if missing:
        raise ConfigError(f"no admin identity: pass {', '.join(missing)}; the demo's "
                          "certificates are the default only in a demo work tree")
    return Path(found["cacert"]), Path(found["cert"]), Path(found["key"])


class AdminCallFailed(GatewayError):
    """The admin plane cannot be reached (exit 3)."""

    exit_code = 3


class AdminCallRefused(AdminCallFailed):
    """The admin plane is reachable but refused the TLS handshake: the client
    certificate is revoked, expired, of another CA or not a client
    certificate, or the server is not trusted (exit 4)."""

    exit_code = 4


def call(args: argparse.Namespace, method: str, path: str,
         body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    cacert, cert, key = _identity(args)
    args.cert = str(cert)
    url = urlsplit(args.admin_url)
    try:
        ctx = client_context(cacert, cert, key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"cannot use the admin identity (--cacert {cacert}, --cert {cert}, "
                          f"--key {key}): {exc}") from exc
    conn = http.client.HTTPSConnection(url.hostname or "localhost", url.port or 8444,
                                       context=ctx, timeout=30)
    try:
        try:
            conn.connect()
        except ssl.SSLError as exc:
            raise AdminCallRefused(f"the admin plane at {args.admin_url} refused the TLS "
                                   f"handshake ({exc.reason or exc}): check --cert/--cacert"
                                   ) from exc
        except OSError as exc:
            raise AdminCallFailed(f"cannot reach the admin plane at {args.admin_url}: {exc}"
                                  ) from exc
        data = json.dumps(body).encode() if body is not None else None
        try:
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError,
                http.client.RemoteDisconnected) as exc:
            # TLS 1.3: the server checks the client certificate after the
            # client's side of the handshake; its alert (certificate revoked,
            # unknown CA, ...) or its close arrives with the first read.
            detail = getattr(exc, "reason", None) or exc
            raise AdminCallRefused(
                f"the admin plane at {args.admin_url} refused the client certificate "
                f"{args.cert} ({detail}): it may be revoked, expired or disabled") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise AdminCallFailed(f"cannot reach the admin plane at {args.admin_url}: {exc}"
                                  ) from exc
    finally:
        conn.close()
