"""The second worked example of docs/audit-format.md (§12): segments, a key
rotation and a prune, produced by the code and checked against the text, and
verified from the document's key list alone (D10)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import _chain as ac
from gateway.audit._format import segment_files
from gateway.audit._prune import AuditPruner
from tests.audit.test_chain import RFC8032_TEST1, Clock

REPO = Path(__file__).resolve().parents[2]
RFC8032_TEST2 = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb"
T = 1767225600.0  # 2026-01-01T00:00:00Z
DAY = 86400.0


def rotation_example(tmp: Path) -> tuple[dict[str, str], dict[str, object]]:
    """Two events, a sealed segment, a key rotation (its key-change record is
    covered by a checkpoint under the old key, which seals a second segment),
    then a prune of the oldest segment only (the usage rollup has not reached
    the second). Returns the files left ({name: text}) and the key document."""
    old = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8032_TEST1))
    new = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8032_TEST2))
    old_kid, new_kid = ac.audit_kid(old.public_key()), ac.audit_kid(new.public_key())
    path, clock = tmp / "audit.jsonl", Clock(T)
    log = ac.ChainedAuditLog(path, old, old_kid, checkpoint_every=1000, segment_max_bytes=1,
                             checkpoint_interval_s=10 * DAY, clock=clock)
    clock.now = T + 1
    log.record({"event": "request", "incident": "inc-1", "tenant": "ores", "status": 200})
    clock.now = T + 2
    log.record({"event": "request", "incident": "inc-2", "tenant": "ores", "status": 403})
    clock.now = T + 3
    log.checkpoint()  # seq 3 (old key) seals 000000000001-000000000003.jsonl
    clock.now = T + 4
    log.record({"event": "admin", "incident": "inc-3", "actor": "ores/person/alice",
                "action": "audit-rotate-key", "outcome": "attempt"})
    clock.now = T + 5
    log.rotate_key(new, new_kid)  # seq 5 key change, seq 6 (old key) seals a segment
    clock.now = T + 6
    log.record({"event": "admin", "incident": "inc-3", "actor": "ores/person/alice",
                "action": "audit-rotate-key", "outcome": "done"})
    clock.now = T + DAY + 10  # a day later: both old-key segments are past retention,
    # but only the first is rolled up (its checkpoint at T + 3, the next at T + 5)
    pruner = AuditPruner(log, raw_retention_days=1, rolled_up_through=lambda: T + 4,
                         public_keys={"keys": [*ac.public_key_document(new, new_kid)["keys"],
                                               *ac.public_key_document(old, old_kid)["keys"]]},
                         rollup_margin_s=0, clock=clock)
    pruner.prune()  # seq 8 audit-prune, seq 9 (new key) signs it and seals a segment
    log.close()
    files = {p.name: p.read_text(encoding="utf-8") for p in segment_files(log.segments)}
    files[path.name] = path.read_text(encoding="utf-8")
    keys = {"keys": [*ac.public_key_document(new, new_kid)["keys"],
                     *ac.public_key_document(old, old_kid)["keys"]]}
    return files, keys


def test_the_rotation_example_in_the_docs_is_true(tmp_path: Path) -> None:
    doc = (REPO / "docs" / "audit-format.md").read_text(encoding="utf-8")
    section = doc[doc.index("## 12."):]
    files, keys = rotation_example(tmp_path / "made")
    assert list(files) == ["000000000003-000000000006.jsonl",
                           "000000000006-000000000009.jsonl", "audit.jsonl"]
    # The files as printed in the doc, byte for byte, are what the code wrote.
    copy = tmp_path / "from-doc"
    (copy / "audit.segments").mkdir(parents=True)
    for name, text in files.items():
        block = re.search(rf"`{re.escape(name)}`:\n\n```\n(.*?)```", section, re.S)
        assert block is not None, name
        assert block.group(1) == text, name
        target = copy / name if name == "audit.jsonl" else copy / "audit.segments" / name
        target.write_bytes(block.group(1).encode("utf-8"))
    assert json.dumps(keys) in section
    # The checkpoint at seq 6 (line 4 of its segment) signs seq numbers (§5).
    cp = json.loads(files["000000000003-000000000006.jsonl"].splitlines()[3])
    message = ac.checkpoint_message(6, cp["prev"], cp["kid"]).decode()
    assert "\n    ".join(message.split("\n")) in section
    change = json.loads(files["000000000003-000000000006.jsonl"].splitlines()[2])
    assert (change["event"], change["old_kid"], change["new_kid"]) == (
        "audit-key-change", cp["kid"], keys["keys"][0]["kid"])  # type: ignore[index]
    result = ac.verify_log(copy / "audit.jsonl", keys)
    assert result.ok and result.first_seq == 3 and result.files == 3, result.problem
    assert result.key_change is not None and result.key_change.covered
    # Without the retired key the older checkpoints name an unknown kid.
    result = ac.verify_log(copy / "audit.jsonl", {"keys": keys["keys"][:1]})  # type: ignore[index]
    assert not result.ok and "unknown kid" in result.problem
