"""The security team's recipes from the README, run with the real CLI
against a running gateway (every task of the README's security-team recipes)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import RunningStack, start_stack
from .test_credentials import admin


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[RunningStack]:
    gw = start_stack(tmp_path / "stack", gateway_settings="signing_publish_ahead_s = 0.2\n")
    yield gw
    gw.stop()


def gateway(gw: RunningStack, *args: str, who: str = "alice", cwd: Path) -> str:
    pki = gw.stack.pki
    cmd = [sys.executable, "-m", "gateway", *args]
    if args[0] != "certs" or args[1] != "csr":
        cmd += ["--admin-url", f"https://localhost:{gw.stack.gateway.admin_port}",
                "--cert", str(pki.client_cert("ores", who)),
                "--key", str(pki.client_key("ores", who)), "--cacert", str(pki.ca_cert)]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_security_team_recipes(stack: RunningStack, tmp_path: Path) -> None:
    # Issue for a service of the admins' own tenant: one admin (D6 table).
    gateway(stack, "certs", "csr", "--tenant", "ores", "--name", "api", "--out", "ores",
            cwd=tmp_path)
    out = gateway(stack, "certs", "issue", "--tenant", "ores", "--name", "api",
                  "--csr", "ores/api.csr", "--reason", "new key", "--out", "ores/api.pem",
                  cwd=tmp_path)
    assert json.loads(out)["status"] == "active"
    assert (tmp_path / "ores" / "api.pem").read_text().startswith("-----BEGIN CERTIFICATE")
    # Issue for another tenant: the tenant makes key + CSR on its side; alice
    # asks, ivan (another team) approves and gets the certificate (D6).
    gateway(stack, "certs", "csr", "--tenant", "fluvius", "--name", "api", "--out", "fluvius",
            cwd=tmp_path)
    assert (tmp_path / "fluvius" / "api.key").exists()
    out = gateway(stack, "certs", "issue", "--tenant", "fluvius", "--name", "api",
                  "--csr", "fluvius/api.csr", "--reason", "onboarding",
                  "--out", "fluvius/api.pem", cwd=tmp_path)
    pending = json.loads(out)
    assert pending["status"] == "pending" and not (tmp_path / "fluvius" / "api.pem").exists()
    listed = json.loads(gateway(stack, "certs", "pending", "--status", "pending",
                                cwd=tmp_path, who="ivan"))
    assert pending["id"] in {p["id"] for p in listed["pending"]}
    out = gateway(stack, "certs", "approve", pending["id"], "--reason", "ticket ONB-7 checked",
                  "--out", "fluvius/api.pem", cwd=tmp_path, who="ivan")
    serial = json.loads(out)["result"]["serial"]
    assert (tmp_path / "fluvius" / "api.pem").read_text().startswith("-----BEGIN CERTIFICATE")
    # The requester fetches the same certificate through the pending id.
    gateway(stack, "certs", "pending", pending["id"], "--out", "fluvius/again.pem",
            cwd=tmp_path)
    assert (tmp_path / "fluvius" / "again.pem").read_text() == \
        (tmp_path / "fluvius" / "api.pem").read_text()
    # Rotate: a new CSR, the successor, an overlap (approved likewise).
    gateway(stack, "certs", "csr", "--tenant", "fluvius", "--name", "api", "--out", "next",
            cwd=tmp_path)
    out = gateway(stack, "certs", "rotate", serial, "--csr", "next/api.csr", "--reason",
                  "monthly", "--overlap-s", "3600", "--out", "next/api.pem", cwd=tmp_path)
    out = gateway(stack, "certs", "approve", json.loads(out)["id"], "--reason", "ok",
                  "--out", "next/api.pem", cwd=tmp_path, who="ivan")
    successor = json.loads(out)["result"]["serial"]
    listed = json.loads(gateway(stack, "certs", "list", "--tenant", "fluvius", cwd=tmp_path))
    old = next(c for c in listed["certificates"] if c["serial"] == serial)
    assert old["retire_at"] and old["status"] == "active"
    # Revoke.
    gateway(stack, "certs", "revoke", successor, "--reason", "key leaked", "--code",
            "key-compromise", cwd=tmp_path)
    # Rotate the signing key and the server certificate.
    kid = json.loads(gateway(stack, "keys", "rotate", "--reason", "quarterly",
                             cwd=tmp_path))["kid"]
    assert kid in gateway(stack, "keys", "list", cwd=tmp_path, who="carol")
    gateway(stack, "certs", "rotate-server", "--reason", "yearly", cwd=tmp_path)
    # A leaver.
    out = json.loads(gateway(stack, "principals", "disable", "orange/service/api",
                             "--reason", "left the consortium", cwd=tmp_path))
    assert out["disabled"] is True
    # The access review, as the auditor: who asked and who approved (D6).
    gateway(stack, "review", "--format", "csv", "--out", "review.csv", cwd=tmp_path,
            who="carol")
    review = (tmp_path / "review.csv").read_text()
    assert "orange,telecom,service,api" in review and ",yes," in review
    assert f"{serial}:ores/person/alice:ores/person/ivan" in review
    # Rotate the CA (a long overlap here: the other tests cover its end).
    out = json.loads(gateway(stack, "certs", "rotate-ca", "--overlap-s", "86400", "--reason",
                             "yearly", cwd=tmp_path))
    out = json.loads(gateway(stack, "certs", "approve", out["id"], "--reason", "ok",
                             cwd=tmp_path, who="ivan"))
    assert out["result"]["ca"]
    actions = {e["action"] for e in stack.audit_events() if e.get("event") == "admin"}
    assert {"certs-issue", "certs-rotate", "certs-revoke", "keys-rotate", "server-rotate",
            "principal-disable", "review", "ca-rotate", "pending-approve"} <= actions


def test_cli_reports_refusals(stack: RunningStack, tmp_path: Path) -> None:
    pki = stack.stack.pki
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "rotate", "--reason", "x",
         "--admin-url", f"https://localhost:{stack.stack.gateway.admin_port}",
         "--cert", str(pki.client_cert("ores", "carol")),
         "--key", str(pki.client_key("ores", "carol")), "--cacert", str(pki.ca_cert)],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    problem = json.loads(proc.stderr)
    assert problem["status"] == 403 and problem["incident"]


def test_vault_and_breakglass_recipes(stack: RunningStack, tmp_path: Path) -> None:
    listed = json.loads(gateway(stack, "vault", "list", cwd=tmp_path))
    assert {"upstream/hes/token", "account/hes-admin"} <= {s["id"] for s in listed["secrets"]}
    assert "value" not in json.dumps(listed)
    case = json.loads(gateway(stack, "breakglass", "request", "--account", "hes-admin",
                              "--ticket", "CHG-1001", "--duration-s", "3600", "--reason",
                              "head-end stuck", cwd=tmp_path, who="dave"))
    cid = case["id"]
    gateway(stack, "breakglass", "approve", cid, "--reason", "ok", cwd=tmp_path, who="bob")
    out = json.loads(gateway(stack, "breakglass", "checkout", cid, "--reason", "fixing",
                             cwd=tmp_path, who="dave"))
    assert out["credential"]["username"] == "hes-admin" and out["credential"]["password"]
    gateway(stack, "breakglass", "checkin", cid, "--reason", "done", cwd=tmp_path, who="dave")
    cases = json.loads(gateway(stack, "breakglass", "list", cwd=tmp_path, who="carol"))
    assert next(c for c in cases["cases"] if c["id"] == cid)["status"] == "closed"
    pending = json.loads(gateway(stack, "vault", "rekey", "--reason", "yearly", cwd=tmp_path))
    done = json.loads(gateway(stack, "certs", "approve", pending["id"], "--reason", "ok",
                              cwd=tmp_path, who="ivan"))
    assert done["result"]["rewrapped"] >= 1


def run_cli(gw: RunningStack, *args: str, who: str = "alice",
            port: int | None = None) -> subprocess.CompletedProcess[str]:
    pki = gw.stack.pki
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args,
         "--admin-url", f"https://localhost:{port or gw.stack.gateway.admin_port}",
         "--cert", str(pki.client_cert("ores", who)),
         "--key", str(pki.client_key("ores", who)), "--cacert", str(pki.ca_cert)],
        capture_output=True, text=True, timeout=60, check=False)


def test_cli_tells_a_refused_certificate_from_an_unreachable_plane(stack: RunningStack) -> None:
    # A closed port: unreachable, exit 3.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    proc = run_cli(stack, "keys", "list", port=closed)
    assert proc.returncode == 3 and "cannot reach" in proc.stderr
    # bob's certificate revoked: the plane is reachable and refuses it, exit 4.
    serial = next(c.serial for c in stack.stack.gateway.store.certificates(
        principal=("ores", "person", "bob"), status="active"))
    assert run_cli(stack, "certs", "revoke", serial, "--reason", "laptop stolen").returncode == 0
    proc = run_cli(stack, "keys", "list", who="bob")
    assert proc.returncode == 4, proc.stderr
    assert "refused" in proc.stderr and "cannot reach" not in proc.stderr


def test_usage_rollups_through_the_cli(stack: RunningStack, tmp_path: Path) -> None:
    for _ in range(3):
        assert stack.client("farys").get("/itsm/tickets").status == 200
    assert stack.client("farys").get("/itsm/tickets/INC000001").status == 403
    rows = json.loads(gateway(stack, "usage", "--period", "day", "--tenant", "farys",
                              cwd=tmp_path, who="carol"))["rows"]
    tickets = next(r for r in rows if r["route"] == "/itsm/tickets")
    assert tickets["requests"] == 3 and tickets["denied"] == 0 and tickets["bytes_out"] > 0
    detail = next(r for r in rows if r["route"] == "/itsm/tickets/{ticket_id}")
    assert detail["denied"] == 1
    for period in ("week", "month"):
        assert json.loads(gateway(stack, "usage", "--period", period, "--tenant", "farys",
                                  cwd=tmp_path, who="carol"))["rows"]


def test_consultation_register_export(stack: RunningStack, tmp_path: Path) -> None:
    person = next(p for p in stack.stack.dataset.persons if p["employer"] == "ores")
    asked = admin(stack, "POST", "/admin/nrn-approvals",
                  {"nrn": person["nrn"], "purpose": "legal-obligation",
                   "justification": "LEGAL-42", "reason": "court order"}, who="erik")
    assert asked.status == 201, asked.body
    assert admin(stack, "POST", f"/admin/nrn-approvals/{asked.json['id']}/approve",
                 {"reason": "signed"}, who="hanna").status == 200
    resp = stack.client("ores", "erik").get(f"/itsm/persons/{person['nrn']}",
                                            headers={"X-Approval": asked.json["id"]})
    assert resp.status == 200
    gateway(stack, "consultations", "--format", "csv", "--out", "reg.csv", cwd=tmp_path,
            who="carol")
    rows = (tmp_path / "reg.csv").read_text().splitlines()
    assert rows[0].startswith("incident,at,tenant,principal,route,resource,purpose")
    assert any(person["nrn"] in row and "LEGAL-42" in row for row in rows[1:])


def test_admin_identity_never_falls_back_to_the_demo_outside_its_tree(
        stack: RunningStack, tmp_path: Path) -> None:
    pki = stack.stack.pki
    url = f"https://localhost:{stack.stack.gateway.admin_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_ADMIN_")}

    def run(*args: str, cwd: Path = tmp_path, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=cwd,
                              env={**env, **extra}, capture_output=True, text=True,
                              timeout=60, check=False)

    # Anywhere else than a demo work tree: what is missing is named, exit 2.
    proc = run("keys", "list", "--admin-url", url)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for missing in ("--cacert (or GATEWAY_ADMIN_CACERT)", "--cert (or GATEWAY_ADMIN_CERT)",
                    "--key (or GATEWAY_ADMIN_KEY)"):
        assert missing in proc.stderr
    assert "alice" not in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run("keys", "list", "--admin-url", url, "--cert", str(pki.client_cert("ores", "carol")))
    assert proc.returncode == 2 and "--key (or GATEWAY_ADMIN_KEY)" in proc.stderr
    assert "--cert (or" not in proc.stderr
    # The environment names the identity.
    proc = run("keys", "list", "--json", GATEWAY_ADMIN_URL=url,
               GATEWAY_ADMIN_CERT=str(pki.client_cert("ores", "carol")),
               GATEWAY_ADMIN_KEY=str(pki.client_key("ores", "carol")),
               GATEWAY_ADMIN_CACERT=str(pki.ca_cert))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["keys"]
    # A file that is not there is named, without a traceback.
    proc = run("keys", "list", "--admin-url", url, "--cacert", str(pki.ca_cert), "--cert",
               str(tmp_path / "nope.pem"), "--key", str(tmp_path / "nope.key"))
    assert proc.returncode == 2 and "nope.pem" in proc.stderr
    assert "Traceback" not in proc.stderr
    # In a demo work tree (where `gateway demo` ran) the demo's alice is the default.
    tree = tmp_path / "tree"
    (tree / "certs").mkdir(parents=True)
    (tree / "certs" / "dev").symlink_to(pki.root)
    (tree / "var").mkdir()
    (tree / "var" / "demo").symlink_to(stack.stack.work_dir)
    proc = run("keys", "rotate", "--reason", "demo default", "--admin-url", url, cwd=tree)
    assert proc.returncode == 0, proc.stderr  # alice is a security admin
    actors = {e.get("actor") for e in stack.audit_events() if e.get("action") == "keys-rotate"}
    assert "ores/person/alice" in actors
    # The environment still wins over the demo's default there: carol may not rotate.
    proc = run("keys", "rotate", "--reason", "as carol", "--admin-url", url, cwd=tree,
               GATEWAY_ADMIN_CERT=str(pki.client_cert("ores", "carol")),
               GATEWAY_ADMIN_KEY=str(pki.client_key("ores", "carol")))
    assert proc.returncode == 1 and json.loads(proc.stderr)["status"] == 403
    # A dev PKI alone (no demo ran here) is not a demo work tree.
    half = tmp_path / "half"
    (half / "certs").mkdir(parents=True)
    (half / "certs" / "dev").symlink_to(pki.root)
    proc = run("keys", "list", "--admin-url", url, cwd=half)
    assert proc.returncode == 2 and "--cert (or GATEWAY_ADMIN_CERT)" in proc.stderr


def test_audit_verify_needs_its_files_outside_a_demo_tree(stack: RunningStack,
                                                           tmp_path: Path) -> None:
    def verify(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", *args],
                              cwd=cwd, capture_output=True, text=True, timeout=60, check=False)

    proc = verify(tmp_path)
    assert proc.returncode == 2
    assert "--log FILE and --keys FILE or --key-dir DIR" in proc.stderr
    assert "var/demo" not in proc.stderr.replace("the demo's files", "")
    work = stack.stack.work_dir
    proc = verify(tmp_path, "--log", str(work / "audit.jsonl"))
    assert proc.returncode == 2 and "--keys FILE or --key-dir DIR" in proc.stderr
    assert "--log FILE" not in proc.stderr
    tree = tmp_path / "tree"
    (tree / "certs").mkdir(parents=True)
    (tree / "certs" / "dev").symlink_to(stack.stack.pki.root)
    (tree / "var").mkdir()
    (tree / "var" / "demo").symlink_to(work)
    proc = verify(tree)  # the demo's log and key directory
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["ok"] is True


def test_listings_are_tables_on_a_terminal_and_json_when_piped(stack: RunningStack,
                                                              tmp_path: Path) -> None:
    from tests.test_console import on_terminal

    pki = stack.stack.pki
    client = ["--admin-url", f"https://localhost:{stack.stack.gateway.admin_port}",
              "--cert", str(pki.client_cert("ores", "alice")),
              "--key", str(pki.client_key("ores", "alice")), "--cacert", str(pki.ca_cert)]
    cmd = [sys.executable, "-m", "gateway"]
    api = next(c.serial for c in stack.stack.gateway.store.certificates(
        principal=("ores", "service", "api"), status="active"))
    # Piped: the admin API's JSON, without PEM blobs; --tenant --name --active
    # find the serial to rotate.
    found = json.loads(gateway(stack, "certs", "list", "--tenant", "ores", "--name", "api",
                               "--active", cwd=tmp_path))["certificates"]
    assert [c["serial"] for c in found] == [api]
    assert "certificate" not in found[0]
    everything = json.loads(gateway(stack, "certs", "list", cwd=tmp_path))["certificates"]
    assert {c["name"] for c in everything} > {"api"} and "certificate" not in everything[0]
    with_pem = json.loads(gateway(stack, "certs", "list", "--tenant", "ores", "--name", "api",
                                  "--pem", cwd=tmp_path))["certificates"]
    assert with_pem[0]["certificate"].startswith("-----BEGIN CERTIFICATE")
    # --active leaves out a revoked one; without it, it is listed.
    gateway(stack, "certs", "revoke", api, "--reason", "test", cwd=tmp_path)
    assert json.loads(gateway(stack, "certs", "list", "--tenant", "ores", "--name", "api",
                              "--active", cwd=tmp_path))["certificates"] == []
    listed = json.loads(gateway(stack, "certs", "list", "--tenant", "ores", "--name", "api",
                                cwd=tmp_path))["certificates"]
    assert [(c["serial"], c["status"]) for c in listed] == [(api, "revoked")]
    # On a terminal: an aligned table, a heading first; the PEM only with --pem.
    code, shown, _ = on_terminal([*cmd, "certs", "list", "--tenant", "ores", *client],
                                 tmp_path, stream="stdout")
    assert code == 0, shown
    lines = shown.splitlines()
    assert lines[0].split()[:3] == ["SERIAL", "PRINCIPAL", "STATUS"]
    row = next(line for line in lines if line.startswith(api))
    assert row.split()[1:3] == ["ores/service/api", "revoked"]
    assert lines[0].index("STATUS") == row.index("revoked")  # aligned
    assert "BEGIN CERTIFICATE" not in shown and not shown.lstrip().startswith("{")
    code, shown, _ = on_terminal([*cmd, "certs", "list", "--tenant", "ores", "--name", "api",
                                  "--pem", *client], tmp_path, stream="stdout")
    assert "SERIAL" in shown and "BEGIN CERTIFICATE" in shown
    code, shown, _ = on_terminal([*cmd, "certs", "list", "--json", *client], tmp_path,
                                 stream="stdout")
    assert json.loads(shown)["certificates"]
    # Every listing verb.
    for verb, heading in ((["keys", "list"], "KID"), (["vault", "list"], "AGE"),
                          (["breakglass", "list"], "CASE"), (["certs", "pending"], "ID"),
                          (["usage", "--period", "day"], "ROUTE"),
                          (["review"], "PRINCIPAL"), (["consultations"], "PURPOSE")):
        code, shown, err = on_terminal([*cmd, *verb, *client], tmp_path, stream="stdout")
        assert code == 0, err
        assert heading in shown.splitlines()[0] or shown.startswith("(no "), (verb, shown)
    # vault list: the ages the README promises, on the gateway's clock.
    code, shown, _ = on_terminal([*cmd, "vault", "list", *client], tmp_path, stream="stdout")
    token = next(line for line in shown.splitlines() if line.startswith("upstream/hes/token"))
    assert re.search(r"\s\d+[smhd]\b", token), token
    secrets = json.loads(gateway(stack, "vault", "list", cwd=tmp_path))["secrets"]
    assert all(isinstance(s["age_s"], int) and s["age_s"] >= 0 for s in secrets)


def test_verbs_that_write_a_file_say_what_they_wrote(stack: RunningStack,
                                                     tmp_path: Path) -> None:
    # Piped without --out, an export stays CSV on stdout; --json as for listings.
    proc = run_cli(stack, "review", who="carol")
    assert proc.stdout.startswith("tenant,tenant_kind,principal_kind,principal,")
    proc = run_cli(stack, "review", "--json", who="carol")
    assert json.loads(proc.stdout)["principals"]
    proc = run_cli(stack, "review", "--format", "csv", "--out", str(tmp_path / "review.csv"),
                   who="carol")
    assert proc.returncode == 0, proc.stderr
    rows = len((tmp_path / "review.csv").read_text().splitlines()) - 1
    assert rows > 10
    assert proc.stderr == f"wrote {rows} rows to {tmp_path / 'review.csv'}\n"
    assert proc.stdout == ""
    proc = run_cli(stack, "review", "--format", "json", "--out", str(tmp_path / "review.json"),
                   who="carol")
    assert proc.stderr == f"wrote {rows} rows to {tmp_path / 'review.json'}\n"
    proc = run_cli(stack, "consultations", "--format", "csv", "--out",
                   str(tmp_path / "reg.csv"), who="carol")
    assert proc.stderr == f"wrote 0 rows to {tmp_path / 'reg.csv'}\n"
    pki = stack.stack.pki
    subprocess.run([sys.executable, "-m", "gateway", "certs", "csr", "--tenant", "ores",
                    "--name", "api", "--out", str(tmp_path)], check=True, capture_output=True)
    proc = run_cli(stack, "certs", "issue", "--tenant", "ores", "--name", "api", "--csr",
                   str(tmp_path / "api.csr"), "--reason", "new key", "--out",
                   str(tmp_path / "api.pem"))
    serial = json.loads(proc.stdout)["serial"]
    assert proc.stderr == f"wrote the certificate {serial} to {tmp_path / 'api.pem'}\n"
    assert pki.ca_cert.exists()


def test_vault_rekey_shows_its_progress_on_a_terminal_only(stack: RunningStack,
                                                           tmp_path: Path) -> None:
    """The rekey runs where it is approved (D6): the approver's terminal shows
    a bar of the data keys re-wrapped (GET /admin/vault/rekey); piped, nothing."""
    from tests.test_console import on_terminal

    from .test_credentials import admin

    pki = stack.stack.pki
    client = ["--admin-url", f"https://localhost:{stack.stack.gateway.admin_port}",
              "--cacert", str(pki.ca_cert)]
    alice = ["--cert", str(pki.client_cert("ores", "alice")),
             "--key", str(pki.client_key("ores", "alice"))]
    ivan = ["--cert", str(pki.client_cert("ores", "ivan")),
            "--key", str(pki.client_key("ores", "ivan"))]
    cmd = [sys.executable, "-m", "gateway"]
    code, shown, out = on_terminal([*cmd, "vault", "rekey", "--reason", "yearly", *client,
                                    *alice], tmp_path)
    assert code == 0 and "vault rekey: data keys re-wrapped" in shown
    pending = json.loads(out)["id"]
    code, shown, out = on_terminal([*cmd, "certs", "approve", pending, "--reason", "ok",
                                    *client, *ivan], tmp_path)
    assert code == 0 and "vault rekey: data keys re-wrapped" in shown
    rewrapped = json.loads(out)["result"]["rewrapped"]
    assert rewrapped >= 1
    state = admin(stack, "GET", "/admin/vault/rekey", who="carol").json
    assert state == {"running": False, "done": rewrapped, "total": rewrapped}
    # Piped: no bar, no spinner, the JSON only.
    pending = json.loads(subprocess.run(
        [*cmd, "vault", "rekey", "--reason", "again", *client, *alice], capture_output=True,
        text=True, timeout=60, check=True).stdout)["id"]
    proc = subprocess.run([*cmd, "certs", "approve", pending, "--reason", "ok", *client, *ivan],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and json.loads(proc.stdout)["result"]["rewrapped"] >= 1
