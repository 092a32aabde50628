"""Reload without restart: a new relation snapshot changes decisions at once
on open connections; a broken feed is refused and the old snapshot stays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.errors import ConfigError

from .conftest import start_stack


def test_relation_feed_reload(tmp_path: Path) -> None:
    gw = start_stack(tmp_path)
    try:
        meter = next(m["serial"] for m in gw.stack.dataset.meters
                     if m["owners"][-1]["tenant"] == "ores" and not m["airplane_mode"])
        client = gw.client("ores")
        assert client.get(f"/hes/meters/{meter}").status == 200

        feed = gw.stack.gateway.config.relations
        doc = json.loads(feed.read_text())
        original = feed.read_text()
        doc["relations"] = [r for r in doc["relations"] if r["id"] != meter]
        feed.write_text(json.dumps(doc))
        gw.stack.gateway.reload()
        # Same keep-alive connection, new snapshot: ORES no longer owns it.
        assert client.get(f"/hes/meters/{meter}").status == 403

        feed.write_text("{not json")
        with pytest.raises(ConfigError):
            gw.stack.gateway.reload()
        assert client.get(f"/hes/meters/{meter}").status == 403  # previous snapshot kept
        feed.write_text(original)
        gw.stack.gateway.reload()
        assert client.get(f"/hes/meters/{meter}").status == 200
    finally:
        gw.stop()
