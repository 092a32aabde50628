"""RFC 5424 syslog for security events (D12): the message format, checked
against the RFC's grammar, and real UDP and TCP (RFC 6587 octet counting)
delivery to collectors on loopback."""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.audit._soc import SEVERITIES
from gateway.audit._syslog import SEVERITY_CODES, SyslogSink, format_rfc5424
from gateway.demo import spare_port
from gateway.errors import ConfigError

HOST = "127.0.0.1"
TS = datetime(2026, 6, 15, 12, 0, 0, 250000, tzinfo=UTC).timestamp()

_NAME = r'[^\x00-\x20\x7f-\U0010ffff=\]"]{1,32}'  # SD-NAME: PRINTUSASCII but = SP ] "
_VALUE = r'(?:[^"\\\]]|\\.)*'  # PARAM-VALUE: '"', '\' and ']' only escaped
_PRINT = r"[\x21-\x7e]"
RFC5424 = re.compile(
    rf"<(?P<pri>\d{{1,3}})>1 "
    rf"(?P<ts>-|\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{6}}Z) "
    rf"(?P<host>{_PRINT}{{1,255}}) (?P<app>{_PRINT}{{1,48}}) (?P<procid>{_PRINT}{{1,128}}) "
    rf"(?P<msgid>{_PRINT}{{1,32}}) "
    rf'(?P<sd>-|(?:\[{_NAME}(?: {_NAME}="{_VALUE}")*\])+)'
    rf"(?: (?P<msg>.*))?\Z",
    re.DOTALL,
)


def parse(message: bytes) -> dict[str, Any]:
    """Split a message by the RFC 5424 grammar; SD params unescaped, in order."""
    match = RFC5424.match(message.decode("utf-8"))
    assert match, f"not RFC 5424: {message!r}"
    out: dict[str, Any] = match.groupdict()
    sd_id = re.match(rf"\[({_NAME})", out["sd"])
    out["sd_id"] = sd_id[1] if sd_id else None
    out["params"] = [
        (m[1], re.sub(r'\\(["\\\]])', r"\1", m[2]))
        for m in re.finditer(rf' ({_NAME})="({_VALUE})"', out["sd"])
    ]
    return out


def event(**fields: Any) -> dict[str, Any]:
    return {"ts": TS, "kind": "isolation-violation", "severity": "warning",
            "incident": "inc-7f3a", **fields}


# -- format ------------------------------------------------------------------------


def test_message_has_the_rfc5424_structure() -> None:
    ev = event(tenant="lumen-energie", route="ean-read", status=403)
    msg = parse(format_rfc5424(ev, hostname="gw-1"))
    assert int(msg["pri"]) == 10 * 8 + 4  # authpriv.warning
    assert msg["ts"] == "2026-06-15T12:00:00.250000Z"
    assert (msg["host"], msg["app"], msg["procid"]) == ("gw-1", "shared-grid-gateway",
                                                       str(os.getpid()))
    assert msg["msgid"] == "isolation-violation"
    assert msg["sd_id"] == "gateway@32473"
    assert msg["params"] == [("incident", "inc-7f3a"), ("route", "ean-read"),
                             ("status", "403"), ("tenant", "lumen-energie")]
    # MSG: BOM, then the whole event as JSON (RFC 5424 §6.4).
    assert msg["msg"].startswith("\ufeff")
    assert json.loads(msg["msg"][1:]) == ev


@pytest.mark.parametrize("name", SEVERITIES)
def test_every_soc_severity_maps_to_its_rfc5424_code(name: str) -> None:
    rfc = {"emergency": 0, "alert": 1, "critical": 2, "error": 3, "warning": 4,
           "notice": 5, "info": 6, "debug": 7}
    assert SEVERITY_CODES[name] == rfc[name]
    assert int(parse(format_rfc5424(event(severity=name)))["pri"]) == 80 + rfc[name]
    assert int(parse(format_rfc5424(event(severity=name), facility=4))["pri"]) == 32 + rfc[name]


def test_severity_table_covers_exactly_the_soc_severities() -> None:
    assert set(SEVERITY_CODES) == set(SEVERITIES)


def test_param_values_escape_quote_backslash_and_bracket() -> None:
    tricky = 'a"b\\c]d [x="y"] \\"'
    raw = format_rfc5424(event(detail=tricky))
    assert b'detail="a\\"b\\\\c\\]d [x=\\"y\\"\\] \\\\\\""' in raw
    assert dict(parse(raw)["params"])["detail"] == tricky


def test_control_characters_cannot_forge_a_second_line() -> None:
    raw = format_rfc5424(event(principal="mallory\r\n<86>1 2026-01-01T00:00:00Z forged"))
    assert b"\n" not in raw and b"\r" not in raw
    msg = parse(raw)
    assert dict(msg["params"])["principal"].startswith("mallory\ufffd\ufffd<86>")
    # The JSON MSG keeps the exact value.
    assert json.loads(msg["msg"][1:])["principal"].startswith("mallory\r\n")


def test_scalars_are_text_and_nested_values_json() -> None:
    ev = event(flag=True, gone=None, n=3, ratio=2.5, nested={"b": [1, 2], "a": "x"})
    params = dict(parse(format_rfc5424(ev))["params"])
    assert params == {"incident": "inc-7f3a", "flag": "true", "gone": "null", "n": "3",
                      "ratio": "2.5", "nested": '{"a":"x","b":[1,2]}'}


def test_msgid_is_cut_to_32_printable_ascii_characters() -> None:
    msg = parse(format_rfc5424(event(kind="break glass/übung " + "x" * 40)))
    assert msg["msgid"] == "break_glass/_bung_" + "x" * 14
    assert parse(format_rfc5424(event(kind="")))["msgid"] == "-"


def test_param_names_are_sanitised_and_the_first_of_a_clash_wins() -> None:
    ev = event(**{"a_b": 1, "a b": 2, 'k="v"]': 3, "n" * 40: 4, "": 5, "zähler": 6})
    msg = parse(format_rfc5424(ev))
    assert msg["params"] == [("incident", "inc-7f3a"), ("_", "5"), ("a_b", "2"),
                             ("k__v__", "3"), ("n" * 32, "4"), ("z_hler", "6")]
    assert json.loads(msg["msg"][1:]) == ev  # MSG keeps every key under its real name


def test_header_fields_are_sanitised_or_nil() -> None:
    ev = {k: v for k, v in event().items() if k != "ts"}
    msg = parse(format_rfc5424(ev, hostname="", app_name="grid gateway"))
    assert (msg["ts"], msg["host"], msg["app"]) == ("-", "-", "grid_gateway")
    assert parse(format_rfc5424(event()))["host"] != ""  # this machine's name


def test_bad_severity_or_facility_is_refused() -> None:
    with pytest.raises(ValueError, match="severity"):
        format_rfc5424(event(severity="panic"))
    with pytest.raises(ValueError, match="facility"):
        format_rfc5424(event(), facility=24)
    with pytest.raises(ValueError, match="enterprise"):
        format_rfc5424(event(), enterprise_id=0)


# -- sinks -------------------------------------------------------------------------


@pytest.fixture()
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


def listener(stack: ExitStack, port: int = 0) -> socket.socket:
    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.listen()
    sock.settimeout(3)
    return sock


def accept(stack: ExitStack, server: socket.socket) -> socket.socket:
    conn = stack.enter_context(server.accept()[0])
    conn.settimeout(3)
    return conn


def read_frames(conn: socket.socket, count: int) -> list[bytes]:
    """Octet-counting frames (RFC 6587 §3.4.1): MSG-LEN SP SYSLOG-MSG."""
    buf, frames = b"", list[bytes]()
    while len(frames) < count:
        head = re.match(rb"([1-9][0-9]*) ", buf)
        if head and len(buf) >= head.end() + int(head[1]):
            end = head.end() + int(head[1])
            frames.append(buf[head.end():end])
            buf = buf[end:]
            continue
        chunk = conn.recv(65536)
        assert chunk, f"connection closed with {buf!r} pending"
        buf += chunk
    assert buf == b""
    return frames


def test_udp_sink_sends_one_datagram_per_event(stack: ExitStack) -> None:
    collector = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    collector.bind((HOST, 0))
    collector.settimeout(3)
    sink = stack.enter_context(SyslogSink(HOST, collector.getsockname()[1], hostname="gw"))
    sink.send(event(incident="inc-1"))
    sink.send(event(incident="inc-2", severity="alert", note="two words"))
    first, second = (parse(collector.recv(65536)) for _ in range(2))
    assert dict(first["params"])["incident"] == "inc-1"
    assert int(second["pri"]) == 81
    assert dict(second["params"]) == {"incident": "inc-2", "note": "two words"}
    assert (sink.sent, sink.failures) == (2, 0)


def test_udp_sink_resends_once_after_a_port_unreachable(stack: ExitStack) -> None:
    port = spare_port(HOST)  # nobody listens there, and no connection takes it
    sink = stack.enter_context(SyslogSink(HOST, port))
    sink.send(event(incident="into-the-void"))  # the ICMP error surfaces on the next send
    collector = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    collector.bind((HOST, port))
    collector.settimeout(3)
    sink.send(event(incident="delivered"))
    assert dict(parse(collector.recv(65536))["params"])["incident"] == "delivered"
    assert sink.failures == 0


def test_tcp_sink_frames_back_to_back_messages_by_octet_count(stack: ExitStack) -> None:
    server = listener(stack)
    sink = stack.enter_context(SyslogSink(HOST, server.getsockname()[1], transport="tcp"))
    # Digits and spaces in the payload, and multi-byte UTF-8: the length is in octets.
    sink.send(event(incident="inc-1", note="12 34 ]]"))
    sink.send(event(incident="inc-2", note="é" * 300))
    frames = read_frames(accept(stack, server), 2)
    assert [dict(parse(f)["params"])["incident"] for f in frames] == ["inc-1", "inc-2"]
    assert dict(parse(frames[1])["params"])["note"] == "é" * 300
    assert (sink.sent, sink.failures) == (2, 0)


def test_tcp_sink_reconnects_after_the_collector_restarts(stack: ExitStack) -> None:
    server = listener(stack)
    port = server.getsockname()[1]
    sink = stack.enter_context(SyslogSink(HOST, port, transport="tcp"))
    sink.send(event(incident="before"))
    conn = accept(stack, server)
    assert [dict(parse(f)["params"])["incident"] for f in read_frames(conn, 1)] == ["before"]
    conn.close()
    server.close()

    restarted = listener(stack, port)
    sink.send(event(incident="after"))  # noticed the close, so nothing is lost
    conn = accept(stack, restarted)
    assert [dict(parse(f)["params"])["incident"] for f in read_frames(conn, 1)] == ["after"]
    assert (sink.sent, sink.failures) == (2, 0)


def test_tcp_sink_counts_failures_while_down_and_retries_after_the_interval(
        stack: ExitStack) -> None:
    port = spare_port(HOST)  # nobody listens there, and no connection takes it
    clock = [100.0]
    sink = stack.enter_context(SyslogSink(HOST, port, transport="tcp", retry_interval=5.0,
                                          clock=lambda: clock[0]))
    sink.send(event(incident="lost-1"))  # connection refused: counted, not raised
    assert sink.failures == 1
    server = listener(stack, port)
    clock[0] += 4.0
    sink.send(event(incident="lost-2"))  # within the retry interval: no connect attempt
    assert sink.failures == 2
    clock[0] += 1.0
    sink.send(event(incident="delivered"))
    conn = accept(stack, server)
    assert [dict(parse(f)["params"])["incident"] for f in read_frames(conn, 1)] == ["delivered"]
    assert (sink.sent, sink.failures) == (1, 2)


def test_send_never_raises(stack: ExitStack) -> None:
    collector = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    collector.bind((HOST, 0))
    sink = SyslogSink(HOST, collector.getsockname()[1])
    sink.send(event(severity="panic"))  # cannot be formatted
    sink.close()
    sink.send(event())  # after close
    assert (sink.sent, sink.failures) == (0, 2)
    sink.close()  # idempotent


@pytest.mark.parametrize("host", ["192.0.2.10", "0.0.0.0", "2001:db8::1", "::ffff:192.0.2.10"])
def test_non_loopback_collectors_are_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="not a loopback address"):
        SyslogSink(host, 514)


def test_remote_collector_needs_allow_remote_and_loopback_names_are_fine() -> None:
    # No traffic: a UDP sink connects lazily, on the first send.
    SyslogSink("192.0.2.10", 514, allow_remote=True).close()
    SyslogSink("localhost", 514, transport="tcp").close()
    SyslogSink("::1", 514).close()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"transport": "tls"}, "transport"),
    ({"facility": 99}, "facility"),
    ({"severity": "info"}, "unknown syslog format option"),
])
def test_bad_sink_settings_fail_at_start_up(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SyslogSink(HOST, 514, **kwargs)
