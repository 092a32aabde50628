"""D8, D10: retention as a control duty of the running gateway, over its real
SQLite files: a consultation older than the register's period goes (recorded
and counted first), a recent one stays; `gateway retention report` on the
same config says what is due and when, and deletes nothing."""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.cli import main
from gateway.push import PostgresOutbox, RetryPolicy
from gateway.state import Consultation, PrincipalState, SqliteStore
from tests.e2e.conftest import start_stack
from tests.postgres import Cluster

FAST = "[retention]\ninterval_s = 0.2\n"


def register(at: datetime, incident: str) -> Consultation:
    return Consultation(incident, at, "ores", "ores/person/carol", "/itsm/persons/{nrn}",
                        "85073003328", "hr-administration", "HR-2026-17")


def report(config: Path) -> dict[str, dict[str, object]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["retention", "report", "--config", str(config), "--format", "json"]) == 0
    return {c["category"]: c for c in json.loads(out.getvalue())["categories"]}


def test_the_running_gateway_deletes_what_is_due_and_the_report_foretells_it(
        tmp_path: Path) -> None:
    gw = start_stack(tmp_path, extra_config=FAST)
    try:
        store = gw.stack.gateway.store
        now = datetime.now(UTC)
        store.add_consultation(register(now - timedelta(days=611), "old"))
        store.add_consultation(register(now - timedelta(days=1), "recent"))
        # A leaver (not declared in tenants/) disabled 401 days ago.
        store.set_principal_state(PrincipalState(("ores", "person", "left"), True,
                                                 now - timedelta(days=401), "left",
                                                 "ores/person/alice"))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(store.consultations()) != 1:
            time.sleep(0.1)
        assert [c.incident for c in store.consultations()] == ["recent"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and store.principal_states():
            time.sleep(0.1)
        assert store.principal_states() == []
        events = [e for e in gw.audit_events() if e.get("event") == "retention"]
        assert {(e["category"], e["count"]) for e in events} == \
            {("consultations", 1), ("disabled-principals", 1)}
        assert gw.metric("gateway_retention_deleted_total", category="consultations") == 1
        assert gw.metric("gateway_retention_deleted_total",
                         category="disabled-principals") == 1

    finally:
        gw.stop()

    # The report, from the same files once the gateway is stopped (nothing
    # deletes meanwhile): the recent entry is due 610 days after it was made.
    state = SqliteStore(gw.stack.gateway.config.data_dir / "state.db")
    try:
        state.add_consultation(register(now - timedelta(days=700), "due-now"))
        register_ = report(gw.stack.config_path)["consultations"]
        assert (register_["kept"], register_["due"]) == (2, 1)
        assert register_["policy"] == "consultation_register_days=610"
        assert register_["oldest_due_at"] == (now - timedelta(days=90)).isoformat()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["retention", "report", "--config", str(gw.stack.config_path)]) == 0
        assert "consultations (consultation_register_days=610): 2 kept, 1 due now" in \
            out.getvalue()
        assert "disabled-principals (disabled_principal_days=400): 0 kept" in out.getvalue()
        assert sorted(c.incident for c in state.consultations()) == ["due-now", "recent"]
    finally:
        state.close()


def test_on_postgresql_state_the_duty_erases_dead_letters_and_old_consultations(
        tmp_path: Path, postgres: Cluster) -> None:
    url = postgres.new_database()
    gw = start_stack(tmp_path, extra_config=f"""
        [state]
        url = "{url}"

        {FAST}
        """)
    long_ago = datetime.now(UTC) - timedelta(days=31)
    other = PostgresOutbox(url, os.urandom(32), owner="elsewhere", clock=lambda: long_ago)
    try:
        other.enqueue(batch_id="B1", source="hes-operator", fingerprint="fp", received=1,
                      quarantined=0, parts=[("hes-operator/B1/ores", "ores", "hes-readings",
                                             [{"v": 1}])])
        (part,) = other.claim("ores")
        other.failed(part, "http-410", RetryPolicy(), permanent=True)  # died 31 days ago
        gw.stack.gateway.store.add_consultation(
            register(datetime.now(UTC) - timedelta(days=611), "old"))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (
                other.dead_letters()[0].payload_kept
                or gw.stack.gateway.store.consultations()):
            time.sleep(0.1)
        (letter,) = other.dead_letters()
        assert not letter.payload_kept and letter.part.records == 1
        assert gw.stack.gateway.store.consultations() == []
        assert gw.metric("gateway_retention_deleted_total",
                         category="dead-letter-payloads") == 1
    finally:
        other.close()
        gw.stop()
