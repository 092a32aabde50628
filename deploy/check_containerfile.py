"""Policy check of deploy/Containerfile (standard library only).

hadolint says the file follows good practice; this says it is the image
docs/operations.md describes:

- multi-stage, every base image pinned (a full version tag such as
  3.11.11-slim-bookworm, not 3.11-slim or `latest`, or a digest); later
  stages may build on earlier ones by name;
- the final stage runs as a numeric, non-root USER (so Kubernetes'
  runAsNonRoot can verify it);
- no key material copied in: only explicit sources, never the whole build
  context, certs/, var/, *.key or *.pem, and no ADD from a URL; no
  secret-looking ENV or ARG with a value;
- EXPOSE 8443 8444 9102, ENTRYPOINT ["gateway"],
  CMD ["serve", "--config", "/etc/gateway/gateway.toml"].

Usage: check_containerfile.py [FILE]   (exit 0 when all holds, 1 otherwise)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

PORTS = {"8443", "8444", "9102"}
ENTRYPOINT = ["gateway"]
CMD = ["serve", "--config", "/etc/gateway/gateway.toml"]
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|(^|_)KEY($|_)|PRIVATE", re.IGNORECASE)
FORBIDDEN_SOURCE = re.compile(r"(^|/)(certs|var)(/|$)|\.(key|pem|p12|pfx)$|vault")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        line = pending + line
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition("/")[2].partition(":")
    # A full version (3.11.11-...), not a moving one (3.11-slim, latest).
    return bool(name) and bool(re.match(r"\d+\.\d+\.\d+", tag))


def check(path: Path) -> list[str]:
    if not path.is_file():
        return [f"{path}: missing"]
    failures: list[str] = []
    stages: list[str] = []
    final_user: str | None = None
    exposed: set[str] = set()
    entrypoint: object = None
    cmd: object = None
    for word, args in instructions(path.read_text()):
        if word == "FROM":
            parts = [p for p in args.split() if not p.startswith("--")]
            image = parts[0] if parts else ""
            alias = parts[2].lower() if len(parts) >= 3 and parts[1].upper() == "AS" else ""
            if image.lower() not in stages and not pinned(image):
                failures.append(f"FROM {image}: pin the base image (version tag or digest)")
            stages.append(alias)
            final_user, exposed, entrypoint, cmd = None, set(), None, None
        elif word == "USER":
            final_user = args
        elif word == "EXPOSE":
            exposed |= {p.split("/")[0] for p in args.split()}
        elif word == "ENTRYPOINT":
            entrypoint = _exec_form(args)
        elif word == "CMD":
            cmd = _exec_form(args)
        elif word in ("COPY", "ADD"):
            parts = [p for p in args.split() if not p.startswith("--")]
            from_stage = any(p.startswith("--from=") for p in args.split())
            for src in parts[:-1]:
                if word == "ADD" and re.match(r"[a-z]+://", src):
                    failures.append(f"ADD {src}: fetch nothing from the network at build")
                if not from_stage and (src in (".", "./", "*") or FORBIDDEN_SOURCE.search(src)):
                    failures.append(f"{word} {src}: key material or the whole build context "
                                    "must not be copied into the image")
        elif word in ("ENV", "ARG"):
            for name, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)", args):
                if SECRET_NAME.search(name) and value:
                    failures.append(f"{word} {name}: no secret in the image")
    if len(stages) < 2:
        failures.append("multi-stage build expected (a build stage and a runtime stage)")
    user = (final_user or "").split(":")[0]
    if not user.isdigit() or user == "0":
        failures.append(f"final stage: USER must be a numeric non-root uid (got {final_user!r})")
    if not exposed.issuperset(PORTS):
        failures.append(f"final stage: EXPOSE {' '.join(sorted(PORTS))} "
                        f"(got {' '.join(sorted(exposed)) or 'none'})")
    if entrypoint != ENTRYPOINT:
        failures.append(f"ENTRYPOINT {json.dumps(ENTRYPOINT)} expected (got {entrypoint!r})")
    if cmd != CMD:
        failures.append(f"CMD {json.dumps(CMD)} expected (got {cmd!r})")
    return failures


def _exec_form(args: str) -> object:
    try:
        return json.loads(args)
    except json.JSONDecodeError:
        return args  # shell form: never equal to the expected list


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else Path(__file__).parent / "Containerfile"
    failures = check(path)
    for failure in failures:
        print(f"FAIL {path.name}: {failure}")
    print(f"{path.name} policy: {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
