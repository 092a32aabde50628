"""The command line for people and programs (gateway/console.py): aligned
tables, progress bars on a terminal and silence when piped, and the shell
completion of the ``gateway`` parser. The terminal is a real pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import _chain as ac
from gateway.audit._format import segment_files
from gateway.console import age, table
from tests.audit.test_chain import Clock
from tests.audit.test_prune import event

GATEWAY = [sys.executable, "-m", "gateway"]


def on_terminal(args: list[str], cwd: Path, stream: str = "stderr",
                timeout: float = 60) -> tuple[int, str, str]:
    """Run ``gateway`` with ``stream`` (stderr or stdout) on a pseudo-terminal,
    the other piped; returns (exit code, terminal output, piped output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        args, cwd=cwd, stdin=subprocess.DEVNULL,
        stdout=slave if stream == "stdout" else subprocess.PIPE,
        stderr=slave if stream == "stderr" else subprocess.PIPE)
    os.close(slave)
    seen = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not data:
                break
            seen += data
        elif proc.poll() is not None:
            break
    os.close(master)
    piped = proc.stdout if stream == "stderr" else proc.stderr
    assert piped is not None
    other = piped.read().decode()
    piped.close()
    return proc.wait(10), seen.decode(errors="replace"), other


def piped(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60,
                          check=False)


# -- tables --------------------------------------------------------------------------
def test_a_table_is_aligned_with_numbers_to_the_right() -> None:
    rows = [{"id": "upstream/hes/token", "version": 3, "note": None},
            {"id": "account/hes-admin", "version": 12, "note": "x\ny"}]
    text = table(rows, [("ID", lambda r: r["id"]), ("VERSION", lambda r: r["version"]),
                        ("NOTE", lambda r: r["note"])])
    # Columns start at the same place on every line; numbers end together;
    # no cell breaks a line, and an empty one shows as "-".
    assert text.splitlines() == ["ID                  VERSION  NOTE",
                                 "upstream/hes/token        3  -",
                                 "account/hes-admin        12  x y"]


def test_ages_read_as_a_person_says_them() -> None:
    assert [age(s) for s in (None, -1, 5, 59, 60, 3599, 3600, 86399, 86400 + 7200,
                             29 * 86400, 30 * 86400)] == \
        ["-", "0s", "5s", "59s", "1m", "59m", "1h 0m", "23h 59m", "1d 2h", "29d 0h", "30d"]


# -- progress --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("feed") / "relations.json"
    path.write_text(json.dumps({"relations": [
        {"kind": "meter", "id": f"1SAG{i:010d}", "tenant": "ores", "relation": "owner",
         "valid_from": None, "valid_to": None} for i in range(25_000)]}))
    return path


def test_relations_compile_draws_a_bar_on_a_terminal(feed: Path, tmp_path: Path) -> None:
    code, terminal, out = on_terminal([*GATEWAY, "relations", "compile", "--feed", str(feed),
                                       "--out", str(tmp_path / "r.snap")], tmp_path)
    assert code == 0, terminal
    assert "indexing relations" in terminal and "100%" in terminal
    assert "25.0k/25.0k" in terminal  # it counted every relation of the feed
    assert out.startswith("25000 relations -> ")


def test_a_snapshot_as_input_fills_the_bar_too(feed: Path, tmp_path: Path) -> None:
    """A snapshot compiled again reports no steps of its own: the bar still
    ends at the count, not at 0."""
    snap = tmp_path / "first.snap"
    assert piped([*GATEWAY, "relations", "compile", "--feed", str(feed), "--out", str(snap)],
                 tmp_path).returncode == 0
    code, terminal, out = on_terminal([*GATEWAY, "relations", "compile", "--feed", str(snap),
                                       "--out", str(tmp_path / "again.snap")], tmp_path)
    assert code == 0, terminal
    assert "25.0k/25.0k" in terminal and out.startswith("25000 relations -> ")


def test_relations_compile_is_quiet_when_piped(feed: Path, tmp_path: Path) -> None:
    proc = piped([*GATEWAY, "relations", "compile", "--feed", str(feed),
                  "--out", str(tmp_path / "r.snap")], tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("25000 relations -> ")


@pytest.fixture(scope="module")
def segmented_log(tmp_path_factory: pytest.TempPathFactory, key: Ed25519PrivateKey,
                  kid: str) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("audit")
    path = base / "audit.jsonl"
    log = ac.ChainedAuditLog(path, key, kid, checkpoint_every=3, segment_max_bytes=600,
                             clock=Clock())
    for i in range(60):
        log.record(event(i))
    log.close()
    assert len(segment_files(path.with_name("audit.segments"))) >= 5
    keys = base / "keys.json"
    keys.write_text(json.dumps(ac.public_key_document(key, kid)))
    return path, keys


def test_audit_verify_draws_a_bar_over_the_segments(segmented_log: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    log, keys = segmented_log
    code, terminal, out = on_terminal([*GATEWAY, "audit", "verify", "--log", str(log),
                                       "--keys", str(keys)], tmp_path)
    assert code == 0, terminal + out
    assert "verifying the audit log" in terminal and "100%" in terminal
    summary = json.loads(out)
    assert summary["ok"] and summary["files"] >= 6


def test_audit_verify_is_quiet_when_piped(segmented_log: tuple[Path, Path],
                                          tmp_path: Path) -> None:
    log, keys = segmented_log
    proc = piped([*GATEWAY, "audit", "verify", "--log", str(log), "--keys", str(keys)],
                 tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    assert json.loads(proc.stdout)["ok"] is True


# -- completion ------------------------------------------------------------------------
VERBS = ("serve", "demo", "certs", "audit", "relations", "keys", "principals", "review",
         "vault", "breakglass", "usage", "consultations", "completion")


def test_bash_completion_is_valid_and_completes_the_verbs(tmp_path: Path) -> None:
    proc = piped([*GATEWAY, "completion", "bash"], tmp_path)
    assert proc.returncode == 0
    script = tmp_path / "gateway.bash"
    script.write_text(proc.stdout)
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stderr
    for verb in VERBS:
        assert f" {verb}" in proc.stdout or f"({verb}" in proc.stdout, verb
    # What a person gets on <Tab>: the verbs, then the verb's own sub-verbs.
    run = subprocess.run(["bash", "-c", f"""source {script}
COMP_WORDS=(gateway vault r); COMP_CWORD=2; COMP_LINE="gateway vault r"; COMP_POINT=15
_shtab_gateway gateway r vault; echo "${{COMPREPLY[@]}}"
COMP_WORDS=(gateway cert); COMP_CWORD=1; COMP_LINE="gateway cert"; COMP_POINT=12
_shtab_gateway gateway cert gateway; echo "${{COMPREPLY[@]}}"
COMP_WORDS=(gateway certs list --ac); COMP_CWORD=3; COMP_LINE="gateway certs list --ac"
COMP_POINT=23; _shtab_gateway gateway --ac list; echo "${{COMPREPLY[@]}}"
"""], capture_output=True, text=True, check=False)
    assert run.stdout.splitlines() == ["rotate-upstream rekey", "certs", "--active"], run.stderr
    # Options that name a file complete paths.
    (tmp_path / "gw.toml").write_text("")
    run = subprocess.run(["bash", "-c", f"""source {script}
COMP_WORDS=(gateway serve --config gw); COMP_CWORD=3; COMP_LINE="gateway serve --config gw"
COMP_POINT=25; _shtab_gateway gateway gw --config; echo "${{COMPREPLY[@]}}"
"""], capture_output=True, text=True, check=False, cwd=tmp_path)
    assert run.stdout.split() == ["gw.toml"], run.stderr


def test_zsh_completion_names_the_verbs(tmp_path: Path) -> None:
    proc = piped([*GATEWAY, "completion", "zsh"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("#compdef gateway")
    for verb in VERBS:
        assert f"{verb}:" in proc.stdout, verb
    if shutil.which("zsh"):
        script = tmp_path / "_gateway"
        script.write_text(proc.stdout)
        check = subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True,
                               check=False)
        assert check.returncode == 0, check.stderr


def test_completion_knows_only_bash_and_zsh(tmp_path: Path) -> None:
    proc = piped([*GATEWAY, "completion", "fish"], tmp_path)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
