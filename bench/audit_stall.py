"""How long the event loop stops for the audit log: each group's callback
(``ChainedAuditLog._group_due``: the group's one ``write(2)``, and the
checkpoint when one falls due) timed on a real file, in process.

Groups of ``--group`` request events are recorded with ``record_soon`` one
loop iteration apart, ``--groups`` of them, with a checkpoint every
``--every`` events as the gateway's default; the script prints the
callbacks' median, p99, p99.9 and maximum, and the same for the callbacks
that wrote a checkpoint. Run it in two checkouts to compare them.

Usage: python bench/audit_stall.py [--groups 4000] [--group 4] [--every 1000]
       [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import RequestEvent
from gateway.audit import _chain as ac


def event(i: int) -> RequestEvent:
    return RequestEvent(incident=f"inc-{i:08d}", tenant="ores", principal="api",
                        cert_serial="0A", cert_fingerprint="ab" * 32, method="GET",
                        route="/hes/meters/{serial}", upstream="hes", decision="allow",
                        reason="ok", status=200, resources=(f"meter:{i}",), bytes_in=0,
                        bytes_out=1010, classification="personal")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace, directory: Path) -> None:
    key = Ed25519PrivateKey.generate()
    kid = ac.audit_kid(key.public_key())
    log = ac.ChainedAuditLog(directory / "audit.jsonl", key, kid, checkpoint_every=args.every)
    durations: list[float] = []
    with_checkpoint: list[float] = []
    original = log._group_due

    def timed(group: ac._Group) -> None:
        before = log._since_checkpoint
        start = time.perf_counter()
        original(group)
        took = (time.perf_counter() - start) * 1e6
        durations.append(took)
        if log._since_checkpoint < before + len(group.lines):
            with_checkpoint.append(took)

    log._group_due = timed  # type: ignore[method-assign]
    n = 0
    for _ in range(args.groups):
        waiters = [log.record_soon(event(n + k)) for k in range(args.group)]
        n += args.group
        await asyncio.gather(*waiters)
    log.close()
    result = ac.verify_log(log.path, {kid: key.public_key()})
    assert result.ok, result
    print(f"{args.groups} groups of {args.group} events, a checkpoint every {args.every}: "
          f"{len(with_checkpoint)} checkpoints")
    for name, values in (("every group's callback", durations),
                         ("the callbacks with a checkpoint", with_checkpoint)):
        if values:
            print(f"{name}: median {statistics.median(values):.0f} µs, p99 "
                  f"{pct(values, 0.99):.0f}, p99.9 {pct(values, 0.999):.0f}, max "
                  f"{max(values):.0f} µs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=4000)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--every", type=int, default=1000)
    ap.add_argument("--dir", default=str(REPO / "var"), help="where the log is written")
    args = ap.parse_args()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
