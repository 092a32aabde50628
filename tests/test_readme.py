"""The README tour names concrete ids; this keeps them true for the dataset
the demo generates (ids are deterministic; contract dates follow today)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from gateway.demo._dataset import generate
from gateway.tenants import load_tenants

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_quickstart_commands_exist() -> None:
    assert "make demo" in README and "make test" in README
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_tour_ids_match_the_demo_dataset() -> None:
    now = datetime.now(UTC)
    ds = generate(load_tenants(REPO / "tenants"), now)
    owner = {m["serial"]: m["owners"][-1]["tenant"] for m in ds.meters}
    assert "1SAG8286366805" in README and owner["1SAG8286366805"] == "ores"
    assert "1SAG1369116532" in README and owner["1SAG1369116532"] == "fluvius"
    ap = next(a for a in ds.access_points if a["ean"] == "541448141228997421")
    assert ap["restricted"]["initiator"] == "mosa-energie" and ap["grid_operator"] == "ores"
    running = {c["supplier"] for c in ap["contracts"]
               if c["valid_from"] <= now.isoformat() < c["valid_to"]}
    assert running == {"mosa-energie", "kempen-power"}
    first = ds.cmh_requests[0]
    assert first["id"] == f"CMH{now:%Y}0001"
    assert "proximus" in {c["operator"] for c in first["connections"]}
