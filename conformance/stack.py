"""Run the demo stack on kernel-chosen ports for the conformance checks.

Runs in the project's venv. Starts what ``gateway demo --ephemeral-ports``
starts (dev PKI, the four simulators, the gateway), writes where everything
is to a JSON file once every listener is up, and stops on SIGTERM or SIGINT.

    python conformance/stack.py --certs DIR --work DIR --endpoints FILE
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

from gateway.demo._stack import LOOPBACK, Stack

REPO = Path(__file__).resolve().parents[1]


def endpoints(stack: Stack) -> dict[str, object]:
    pki = stack.pki
    gw = stack.gateway
    return {
        "host": LOOPBACK,
        "data_port": gw.data_port,
        "admin_port": gw.admin_port,
        "ops_port": gw.ops_port,
        "ca": str(pki.ca_cert.resolve()),
        # A partner's service principal for the data plane, a security admin
        # (tenants/ores.toml) for the admin plane.
        "data_cert": str(pki.client_cert("ores", "api").resolve()),
        "data_key": str(pki.client_key("ores", "api").resolve()),
        "admin_cert": str(pki.client_cert("ores", "alice").resolve()),
        "admin_key": str(pki.client_key("ores", "alice").resolve()),
        # The header-read deadline (the edge limits); None where this
        # build has none, which the slow-headers probe reports as a failure.
        "header_timeout_s": getattr(getattr(gw.config, "limits", None), "header_timeout_s",
                                    None),
    }


async def main(args: argparse.Namespace) -> None:
    stack = Stack(tenants_dir=REPO / "tenants", certs_dir=Path(args.certs),
                  work_dir=Path(args.work))  # StackPorts(): port 0 everywhere
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await stack.start()
    try:
        out = Path(args.endpoints)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(endpoints(stack), indent=1))
        tmp.replace(out)  # the script polls for this file: it appears whole
        await done.wait()
    finally:
        await stack.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--certs", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--endpoints", required=True)
    asyncio.run(main(parser.parse_args()))
