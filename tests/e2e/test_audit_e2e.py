"""The audit trail of a running gateway (D10): every decision
is chained and checkpointed, `gateway audit verify` checks it from the
public keys on the ops plane, and an unwritable audit store refuses requests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from .conftest import start_stack


def test_live_log_verifies_and_tampering_is_named(tmp_path: Path) -> None:
    gw = start_stack(tmp_path)
    try:
        for path in ("/hes/meters", "/itsm/tickets", "/nowhere"):
            gw.client("ores").get(path)
        keys = gw.ops("/.well-known/audit-keys.json").json
        assert keys["keys"][0]["kid"].startswith("audit-")
    finally:
        gw.stop()  # closes the log with a final signed checkpoint
    log = tmp_path / "work" / "audit.jsonl"
    keys_file = tmp_path / "audit-keys.json"
    keys_file.write_text(json.dumps(keys))

    def verify(target: Path) -> tuple[int, dict[str, object]]:
        proc = subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", "--log",
                               str(target), "--keys", str(keys_file)], capture_output=True,
                              text=True, timeout=60, check=False)
        return proc.returncode, json.loads(proc.stdout)

    code, result = verify(log)
    assert code == 0 and result["ok"] and result["checkpoints"] >= 1, result
    lines = log.read_bytes().splitlines(keepends=True)
    edited = tmp_path / "edited.jsonl"
    n = next(i for i, line in enumerate(lines) if b'"status":200' in line)
    changed = lines[n].replace(b'"status":200', b'"status":201')
    edited.write_bytes(b"".join([*lines[:n], changed, *lines[n + 1:]]))
    code, result = verify(edited)
    assert code == 1 and result["first_bad_line"] == n + 1, result


def test_unwritable_audit_store_fails_closed(tmp_path: Path) -> None:
    gw = start_stack(tmp_path)
    try:
        assert gw.client("ores").get("/itsm/tickets").status == 200
        gw.stack.gateway.audit.close()  # the audit store goes away
        gw.clear_sim_logs()
        resp = gw.client("ores").get("/itsm/tickets")
        assert resp.status == 503 and resp.json["incident"]
        assert gw.sim_log("itsm") == []  # refused before anything was forwarded
        assert gw.metric("gateway_audit_write_failures_total") >= 1
    finally:
        gw.stop()


def test_live_log_seals_segments_and_prunes_by_policy(tmp_path: Path) -> None:
    """D10: raw events go once sealed, rolled up and past the retention; the
    maintenance loop does it, also for segments signed by an audit key that
    was rotated since (the pruner verifies them with the retired key), and
    what is left verifies with the keys the ops plane publishes."""
    from .test_credentials import admin

    gw = start_stack(tmp_path, extra_config="""
        [audit]
        checkpoint_every = 5
        segment_max_mb = 0.002
        raw_retention_days = 0.00002
        """)
    segments = tmp_path / "work" / "audit.segments"
    try:
        for _ in range(50):  # bounded: a few segments sealed under the first key
            gw.client("ores").get("/hes/meters")
            if len(list(segments.glob("*.jsonl"))) >= 2:
                break
        old_kid = gw.ops("/.well-known/audit-keys.json").json["keys"][0]["kid"]
        old_segments = sorted(p.name for p in segments.glob("*.jsonl"))
        assert old_segments
        resp = admin(gw, "POST", "/admin/audit/rotate-key", {"reason": "yearly"})
        assert resp.status == 200, resp.body
        keys = gw.ops("/.well-known/audit-keys.json").json
        assert [k["kid"] for k in keys["keys"]] == [resp.json["kid"], old_kid]
        pruned = 0.0
        for _ in range(200):  # bounded: ~40 s at most; usage flushes every 5 s
            for path in ("/hes/meters", "/itsm/tickets"):
                gw.client("ores").get(path)
            pruned = gw.metric("gateway_audit_pruned_segments_total")
            if pruned >= 1:
                break
            time.sleep(0.2)
        assert pruned >= 1
    finally:
        gw.stop()
    keys_file = tmp_path / "audit-keys.json"
    keys_file.write_text(json.dumps(keys))
    proc = subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", "--log",
                           str(tmp_path / "work" / "audit.jsonl"), "--keys", str(keys_file)],
                          capture_output=True, text=True, timeout=60, check=False)
    result = json.loads(proc.stdout)
    assert proc.returncode == 0 and result["ok"], result
    assert result["first_seq"] > 1 and result["files"] >= 2, result
    # The oldest segments, sealed under the retired key, were among the pruned.
    lines = [json.loads(x) for f in [*sorted(segments.glob("*.jsonl")),
                                     tmp_path / "work" / "audit.jsonl"]
             for x in f.read_bytes().splitlines()]
    pruned_names = {n for e in lines if e.get("event") == "audit-prune" for n in e["segments"]}
    assert old_segments[0] in pruned_names, (old_segments, pruned_names)


def test_audit_key_rotation_online_verifies_with_the_published_keys(tmp_path: Path) -> None:
    """D10, audit format §6: a security admin rotates the audit key on the
    running gateway; the old key stays published as retired, so the whole log
    verifies with what the ops plane serves, and nothing else."""
    from .test_credentials import admin, admin_events

    gw = start_stack(tmp_path)
    try:
        gw.client("ores").get("/hes/meters")
        before = gw.ops("/.well-known/audit-keys.json").json["keys"]
        assert len(before) == 1
        refused = admin(gw, "POST", "/admin/audit/rotate-key", {"reason": "yearly"},
                        who="carol")  # an auditor may not
        assert refused.status == 403
        # The operator's verb, `gateway audit rotate-key`, over the admin plane.
        pki = gw.stack.pki
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", "audit", "rotate-key", "--reason", "yearly",
             "--admin-url", f"https://localhost:{gw.stack.gateway.admin_port}",
             "--cert", str(pki.client_cert("ores", "alice")),
             "--key", str(pki.client_key("ores", "alice")), "--cacert", str(pki.ca_cert)],
            capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        answer = json.loads(proc.stdout)
        assert answer["retired"] == before[0]["kid"] != answer["kid"]
        gw.client("ores").get("/hes/meters")
        keys = gw.ops("/.well-known/audit-keys.json").json
        assert [k["kid"] for k in keys["keys"]] == [answer["kid"], before[0]["kid"]]
        assert admin_events(gw, "audit-rotate-key")[-1]["outcome"] == "done"
    finally:
        gw.stop()
    log = tmp_path / "work" / "audit.jsonl"
    rows = [json.loads(line) for line in log.read_bytes().splitlines()]
    kids = {row.get("kid") for row in rows}
    assert {k["kid"] for k in keys["keys"]} <= kids  # both keys signed checkpoints
    # In chain order (§6): the admin's attempt, the key-change record, the
    # old key's checkpoint over both, the admin's "done", the new key's.
    change = next(i for i, r in enumerate(rows) if r.get("event") == "audit-key-change")
    assert (rows[change]["old_kid"], rows[change]["new_kid"]) == (before[0]["kid"],
                                                                  answer["kid"])
    attempt = max(i for i, r in enumerate(rows[:change]) if r.get("action") == "audit-rotate-key")
    assert rows[attempt]["outcome"] == "attempt"
    assert rows[change + 1].get("kid") == before[0]["kid"]  # the old key covers the record
    assert all(r["kid"] == answer["kid"] for r in rows[change + 2:] if "kid" in r)
    published = tmp_path / "audit-keys.json"
    published.write_text(json.dumps(keys))
    proc = subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", "--log",
                           str(log), "--keys", str(published)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    only_new = tmp_path / "only-new.json"
    only_new.write_text(json.dumps({"keys": keys["keys"][:1]}))
    proc = subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", "--log",
                           str(log), "--keys", str(only_new)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 1 and "unknown kid" in json.loads(proc.stdout)["problem"]
    # The key directory verifies alike, read-only.
    proc = subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", "--log",
                           str(log), "--key-dir", str(tmp_path / "work" / "audit-key")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
