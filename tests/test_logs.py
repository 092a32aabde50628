"""The process log (gateway.logs) and its ``[log]`` table: text or JSON,
a record's fields (its incident id first of all) shown either way, and
configuration mistakes refused at start-up."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayConfig, LogConfig
from gateway.errors import ConfigError
from gateway.logs import TextFormatter, configure, fields, json_formatter
from tests.audit.test_prune import config_doc


def _record(msg: str = "audit write failed; refusing", *, exc: bool = False,
            **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            exc_info = sys.exc_info()
    record = logging.getLogger("gateway.dataplane").makeRecord(
        "gateway.dataplane", logging.ERROR, __file__, 1, msg, (), exc_info, extra=extra)
    return record


def test_text_lines_carry_the_fields_after_the_message() -> None:
    line = TextFormatter().format(_record(incident="01a2-b3c4"))
    assert line.endswith(" ERROR gateway.dataplane: audit write failed; refusing "
                         "incident=01a2-b3c4")
    plain = TextFormatter().format(_record())
    assert plain.endswith("gateway.dataplane: audit write failed; refusing")


def test_text_keeps_a_traceback_below_the_line_and_its_fields() -> None:
    first, *rest = TextFormatter().format(_record(exc=True, incident="01a2")).splitlines()
    assert first.endswith("refusing incident=01a2")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "RuntimeError: boom"


def test_json_lines_are_one_object_with_the_fields_as_keys() -> None:
    doc = json.loads(json_formatter().format(_record(incident="01a2-b3c4", tenant="ores")))
    assert doc["level"] == "ERROR" and doc["logger"] == "gateway.dataplane"
    assert doc["message"] == "audit write failed; refusing"
    assert (doc["incident"], doc["tenant"]) == ("01a2-b3c4", "ores")
    assert doc["timestamp"].endswith("+00:00")  # UTC, ISO 8601
    # Nothing of the record's own bookkeeping beyond those.
    assert set(doc) == {"timestamp", "level", "logger", "message", "incident", "tenant"}
    with_trace = json.loads(json_formatter().format(_record(exc=True, incident="01a2")))
    assert "RuntimeError: boom" in with_trace["exc_info"] and "\n" not in json.dumps(with_trace)


def test_fields_are_only_what_the_call_gave() -> None:
    assert fields(_record(incident="x", status=200)) == {"incident": "x", "status": 200}
    assert fields(_record()) == {}


def test_a_logging_set_up_by_someone_else_is_left_alone() -> None:
    """As logging.basicConfig: under a test runner (or a program that runs
    the CLI in-process) the root logger's handlers are not ours to replace."""
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    try:
        configure("json")
        assert root.handlers[-1] is foreign and root.handlers[:-1] == before[0]
        assert root.level == before[1]
    finally:
        root.removeHandler(foreign)
    with pytest.raises(ValueError, match="text, json"):
        configure("yaml")


# -- [log] -----------------------------------------------------------------------
def load(tmp_path: Path, log: Any) -> GatewayConfig:
    doc = config_doc(None)
    if log is not None:
        doc["log"] = log
    return GatewayConfig.from_mapping(doc, base=tmp_path, source="g.toml")


def test_the_defaults_are_text_and_no_access_log(tmp_path: Path) -> None:
    assert load(tmp_path, None).log == LogConfig("text", False)
    assert load(tmp_path, {}).log == LogConfig("text", False)
    assert load(tmp_path, {"format": "json", "access": True}).log == LogConfig("json", True)
    assert load(tmp_path, {"format": "text", "access": False}).log == LogConfig("text", False)


@pytest.mark.parametrize(("log", "message"), [
    ({"format": "yaml"}, r"g\.toml: log\.format: must be one of text, json \(got 'yaml'\)"),
    ({"format": "JSON"}, r"g\.toml: log\.format: must be one of text, json"),
    ({"format": 1}, r"g\.toml: log\.format: must be one of text, json"),
    ({"access": "yes"}, r"g\.toml: log\.access: must be true or false \(got 'yes'\)"),
    ({"access": 1}, r"g\.toml: log\.access: must be true or false"),
    ({"acess": True}, r"g\.toml: log\.acess: unknown key \(did you mean log\.access\?\)"),
    ({"format": "json", "level": "debug"},
     r"g\.toml: log\.level: unknown key \(known: format, access\)"),
    ("json", r"g\.toml: log: must be a table \(got 'json'\)"),
])
def test_mistakes_in_the_log_table_are_refused(tmp_path: Path, log: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, log)
