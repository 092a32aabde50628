"""Instructions per request: the gateway (or the floor) under valgrind's
callgrind, against the stack ``bash bench/run.sh --only none --serve-for S``
keeps up, for an A/B of two versions of the code on a machine too noisy for
their CPU times to compare (bench/README.md, "Instructions, not seconds").

What it counts: the user-space instructions of the server process while
it answers exactly ``--requests`` requests (keep-alive, ``--connections``
at a time) or new mTLS connections of one request each (``--mode
handshake``), after a warm-up, divided by their number. Not counted: the
kernel (system calls, the network), the other processes. Deterministic but
for what runs by the clock (the maintenance round, timers): the same code
measures within about 1 % from run to run, so take the median of a few.
Under valgrind OpenSSL takes its generic code paths (no SHA or AVX
extensions), so the TLS share is larger than on the CPU: compare code with
code, never these counts with seconds.

Usage (the stack first, in another shell or in the background)::

    bash bench/run.sh --only none --serve-for 1800
    .venv/bin/python bench/instructions.py                      # this tree
    .venv/bin/python bench/instructions.py --tree /tmp/old      # another checkout
    .venv/bin/python bench/instructions.py --mode handshake --requests 300
    .venv/bin/python bench/instructions.py --target floor
    .venv/bin/python bench/instructions.py --target naive     # the naive proxy
    .venv/bin/python bench/instructions.py --patches no-trace   # by difference

It installs valgrind from Debian's packages when it is missing (as
``bench/run.sh`` installs nginx). ``--tree`` is a checkout (a ``git
worktree``) whose C module is built in place: ``pip install -e . --no-deps``
there, in a venv of its own, builds it into ``gateway/core/``; the
interpreter is this repository's, with the tree first on ``PYTHONPATH``.
Everything listens on 127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PY = str(REPO / ".venv" / "bin" / "python")
RUN = REPO / "var" / "bench" / "run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _session(port: int, endpoints: dict[str, Any], args: argparse.Namespace,
                   pid: int) -> tuple[int, float]:
    """``args.warmup`` requests, then callgrind's instrumentation on for
    ``args.requests`` more (and off): keep-alive over ``args.connections``
    connections opened in the warm-up and kept (no handshake in the count),
    or (``--mode handshake``) a new mTLS connection each. Every answer must
    be a 200. Returns the requests counted and their seconds."""
    client = endpoints["client"]
    fresh = args.mode == "handshake"
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=client["ca"])
    ctx.check_hostname = False  # the server still checks our certificate in full
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(client["cert"], client["key"])
    ctx.options |= ssl.OP_NO_TICKET  # a full handshake each time
    path = endpoints["paths"]["proxied"]
    request = (f"GET {path} HTTP/1.1\r\nHost: gateway.shared-grid.test\r\n"
               f"User-Agent: bench-instructions\r\n"
               f"{'Connection: close' + chr(13) + chr(10) if fresh else ''}\r\n").encode()
    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = (
        [None] * args.connections)
    left = 0

    async def one(i: int) -> int:
        nonlocal left
        done = 0
        while left > 0:
            left -= 1
            if streams[i] is None:
                streams[i] = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, ssl=ctx), 60)
            reader, writer = streams[i]  # type: ignore[misc]
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"not a 200: {head[:200]!r}")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            assert length is not None
            await reader.readexactly(int(length.group(1)))
            done += 1
            if fresh:
                writer.transport.abort()
                streams[i] = None
        return done

    left = max(args.warmup, args.connections)
    await asyncio.gather(*(one(i) for i in range(args.connections)))
    await asyncio.to_thread(_callgrind, pid, "-i", "on")  # counting from here
    left = args.requests
    started = time.monotonic()
    answered = sum(await asyncio.gather(*(one(i) for i in range(args.connections))))
    seconds = time.monotonic() - started
    await asyncio.to_thread(_callgrind, pid, "-i", "off")
    for stream in streams:
        if stream is not None:
            stream[1].transport.abort()
    return answered, seconds


def _server(args: argparse.Namespace, endpoints: dict[str, Any], work: Path,
            port: int) -> tuple[list[str], str | None]:
    """The server's command line and, for the gateway, its readiness URL."""
    certs = REPO / "var" / "bench" / "certs"
    if args.target == "naive":
        return [PY, str(Path(args.tree) / "bench" / "naive_proxy.py"),
                "--upstream", f"http://127.0.0.1:{endpoints['upstream']['port']}",
                "--cert", str(certs / "server" / "gateway.pem"),
                "--key", str(certs / "server" / "gateway.key"),
                "--ca", str(certs / "ca.pem"), "--port", str(port), "--loop", "uvloop"], None
    if args.target == "floor":
        return [PY, str(Path(args.tree) / "bench" / "floor.py"),
                "--upstream-port", str(endpoints["upstream"]["port"]),
                "--cert", str(certs / "server" / "gateway.pem"),
                "--key", str(certs / "server" / "gateway.key"),
                "--ca", str(certs / "ca.pem"), "--crl", str(RUN / "crl.pem"),
                "--port", str(port), "--loop", "uvloop"], None
    # A copy of the stack's gateway: its own ports and state, the same
    # tenants, relations, upstream and certificates.
    shutil.copytree(RUN / "stack", work / "stack")
    ops, admin = free_port(), free_port()
    text = (RUN / "gateway.toml").read_text().replace(str(RUN / "stack"), str(work / "stack"))
    for section, value in (("data", port), ("ops", ops), ("admin", admin)):
        text = re.sub(rf"(\[listeners\.{section}\]\n(?:[^\[]*?\n)??port = )\d+",
                      rf"\g<1>{value}", text)
    (work / "gateway.toml").write_text(text)
    serve = ["serve", "--config", str(work / "gateway.toml")]
    launcher = ([str(Path(args.tree) / "bench" / "whatif.py"), "--patches", args.patches]
                if args.patches else
                ["-c", "import sys; sys.argv[0] = 'gateway'; from gateway.cli import main; "
                 "sys.exit(main())"])
    return [PY, *launcher, *serve], f"http://127.0.0.1:{ops}/readyz"


def _wait(proc: subprocess.Popen[bytes], port: int, ready: str | None, log: Path) -> None:
    deadline = time.monotonic() + 600  # valgrind starts the interpreter slowly
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"the server under valgrind exited:\n{tail}")
        try:
            if ready is not None:
                with urllib.request.urlopen(ready, timeout=2) as resp:  # noqa: S310 (http, ours)
                    if resp.status == 200:
                        return
            else:
                with socket.create_connection(("127.0.0.1", port), timeout=2):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server under valgrind did not come up in 600 s")


def _callgrind(pid: int, *command: str) -> None:
    subprocess.run(["callgrind_control", *command, str(pid)],
                   check=True, capture_output=True, timeout=120)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    endpoints = json.loads((RUN / "endpoints.json").read_text())
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        work = Path(tmp)
        port = free_port()
        argv, ready = _server(args, endpoints, work, port)
        out = work / "callgrind.out"
        env = {**os.environ, "PYTHONPATH": str(args.tree)}
        log = (work / "server.log").open("wb")
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={out}", *argv],
            cwd=args.tree, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait(proc, port, ready, work / "server.log")
            answered, seconds = asyncio.run(_session(port, endpoints, args, proc.pid))
            _callgrind(proc.pid, "-d")  # the counts so far, to callgrind.out.1
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        dumped = sorted(work.glob("callgrind.out.*"))
        if not dumped:
            raise SystemExit("callgrind wrote no dump")
        totals = re.search(r"^totals: (\d+)", dumped[0].read_text(errors="replace"), re.M)
        assert totals is not None
        if args.keep:
            shutil.copy(dumped[0], args.keep)
    instructions = int(totals.group(1))
    return {"target": args.target, "mode": args.mode, "tree": str(args.tree),
            "patches": args.patches,
            "requests": answered, "connections": args.connections,
            "instructions": instructions, "per_request": round(instructions / answered),
            "seconds_under_valgrind": round(seconds, 1)}


def _stack_up() -> bool:
    """The stack's upstream still answers connections."""
    port = json.loads((RUN / "endpoints.json").read_text())["upstream"]["port"]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _install_valgrind() -> None:
    """Debian's valgrind package, as bench/run.sh installs nginx (with sudo
    when not root); a machine without apt-get is told what to install."""
    apt = shutil.which("apt-get")
    if apt is None:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print("bench/instructions.py: installing valgrind (Debian package)", file=sys.stderr)
    subprocess.run([*sudo, apt, "update", "-qq"], check=False, timeout=600)
    subprocess.run([*sudo, apt, "install", "-y", "-qq", "valgrind"],
                   check=False, timeout=900, stdout=subprocess.DEVNULL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", type=Path, default=REPO, help="the source tree to measure")
    ap.add_argument("--target", choices=("gateway", "floor", "naive"), default="gateway")
    ap.add_argument("--mode", choices=("keepalive", "handshake"), default="keepalive")
    ap.add_argument("--requests", type=int, default=2000, help="measured (at most 100,000)")
    ap.add_argument("--warmup", type=int, default=300, help="before counting (at most 10,000)")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--runs", type=int, default=1, help="each its own server; medians")
    ap.add_argument("--keep", type=Path, help="copy the callgrind dump here (last run)")
    ap.add_argument("--patches", default="",
                    help="run the gateway under bench/whatif.py with these patches "
                         "(e.g. no-trace): what a part costs, by difference")
    args = ap.parse_args()
    args.requests = max(1, min(args.requests, 100_000))
    args.warmup = max(1, min(args.warmup, 10_000))
    args.tree = args.tree.resolve()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        _install_valgrind()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("bench/instructions.py needs valgrind (Debian: apt-get install valgrind)",
              file=sys.stderr)
        return 2
    if not (RUN / "endpoints.json").exists() or not _stack_up():
        # A --serve-for stack ends after at most 3,600 s (and leaves its endpoints).
        print("no stack: start it with bash bench/run.sh --only none --serve-for 1800",
              file=sys.stderr)
        return 2
    runs = [measure(args) for _ in range(max(1, min(args.runs, 9)))]
    for run in runs:
        print(json.dumps(run), flush=True)
    per = sorted(r["per_request"] for r in runs)
    print(f"{args.target} {args.mode}: median {per[len(per) // 2]:,} instructions per "
          f"{'connection' if args.mode == 'handshake' else 'request'} "
          f"({', '.join(f'{p:,}' for p in per)}; {args.tree})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
