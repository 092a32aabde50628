"""The push intake's memory guard (gateway/dataplane/_pushgate.py, D1
availability), each guard pinned by its outcome over real mTLS on
127.0.0.1 (the harness's data plane, tests/dataplane/harness.py): how many
large pushes are read at once, which push is large, the 503 and 413 a
pusher gets (status, reason, headers, the limits named), and what reached
the push service. The push service is a stand-in that records the bodies
it was handed (routing them is gateway.push's, tested there)."""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

from gateway.config import EdgeLimits
from gateway.core.push.size import MiB
from gateway.errors import RequestRefused
from tests.dataplane.harness import Plane, RawAnswer, Start, _answers

HES = "/push/hes/batches"
CMH = "/push/cmh/requests"
PUSHER = "hes-operator-service-pusher"
PORTAL = "cmh-portal-service-pusher"
# Caps of 2 MiB (per record, a booking) and 3 MiB (meter-days) here.
LIMITS = EdgeLimits(max_push_records_mb=2, max_push_meter_days_mb=3)


class Intake:
    """The push service as the intake calls it: only the intake's own system
    may push; every body handed over is kept (its size) and accepted."""

    def __init__(self) -> None:
        self.bodies: list[int] = []

    def authorize(self, caller: Any, intake: str) -> None:
        if caller.tenant_id != {"cmh": "cmh-portal", "hes": "hes-operator"}[intake]:
            raise RequestRefused(403, "push-intake-not-yours")

    def intake(self, caller: Any, raw: bytes) -> tuple[int, Any, str]:
        self.bodies.append(len(raw))
        return 202, {"accepted": len(raw)}, "0190000000aa-00000000000000aa"

    def intake_cmh(self, caller: Any, raw: bytes, kinds: dict[str, str],
                   coordinators: frozenset[str]) -> tuple[int, Any, str]:
        self.bodies.append(len(raw))
        return 202, {"accepted": len(raw)}, "0190000000aa-00000000000000bb"


def records(size: int) -> bytes:
    """A per-record batch of exactly ``size`` bytes (JSON whitespace pads it)."""
    body = b'{"records": []}'
    return body + b" " * (size - len(body))


def meter_days(size: int) -> bytes:
    body = json.dumps({"format": "meter-days/v1", "meter_days": []}).encode()
    return body + b" " * (size - len(body))


def head(path: str, length: int | None, *, close: bool = True) -> bytes:
    fields = ["Host: localhost", "Content-Type: application/json"]
    fields.append(f"Content-Length: {length}" if length is not None
                  else "Transfer-Encoding: chunked")
    if close:
        fields.append("Connection: close")
    return (f"POST {path} HTTP/1.1\r\n" + "".join(f"{f}\r\n" for f in fields)
            + "\r\n").encode()


def post(path: str, body: bytes, *, close: bool = True) -> bytes:
    return head(path, len(body), close=close) + body


class Conn:
    """One mTLS connection held open by the test (a pusher mid-body)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, p: Plane, stem: str) -> Conn:
        ctx = ssl.create_default_context(cafile=str(p.certs / "ca.pem"))
        ctx.load_cert_chain(p.certs / f"{stem}.pem", p.certs / f"{stem}.key")
        host, _, port = p.url.removeprefix("https://").rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx,
                                                      server_hostname="localhost")
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answers(self) -> list[RawAnswer]:
        received = b""
        async with asyncio.timeout(10):
            while chunk := await self.reader.read(65536):
                received += chunk
        self.writer.close()
        return _answers(received)


async def start(plane: Start, limits: EdgeLimits = LIMITS, **overrides: Any) -> tuple[Plane,
                                                                                      Intake]:
    intake = Intake()
    p = await plane(push=intake, limits=limits, **overrides)
    await p.client("hes-operator", "service", "pusher")
    await p.client("cmh-portal", "service", "pusher")
    return p, intake


async def slot_taken(p: Plane, count: int = 1) -> None:
    for _ in range(500):
        if p.data_plane.push_gate.in_progress == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never {count} large pushes in progress")


def busy(answer: RawAnswer) -> None:
    assert answer.status == 503
    assert answer.header("Retry-After") == "2"
    assert answer.header("Connection") == "close"
    assert answer.json()["status"] == 503


def reasons(p: Plane) -> list[str]:
    return [e["reason"] for e in p.requests()]


# -- one large push at a time --------------------------------------------------------------

async def test_a_second_large_push_waits_for_the_first(plane: Start) -> None:
    """D1 availability: while one large push (over 1 MiB) is being read, a
    second gets 503 with Retry-After at once, unread; a small one is served
    meanwhile; once the first is done, the next large push is served."""
    p, intake = await start(plane)
    body = records(MiB + 1)
    first = await Conn.open(p, PUSHER)
    await first.send(head(HES, len(body)) + body[:1000])
    await slot_taken(p)
    [second] = await p.raw(post(HES, records(MiB + 1)), stem=PUSHER)
    busy(second)
    [small] = await p.raw(post(HES, records(MiB)), stem=PUSHER)  # exactly 1 MiB: no slot
    assert small.status == 202
    [booking] = await p.raw(post(CMH, b'{"requests": []}'), stem=PORTAL)
    assert booking.status == 202
    await first.send(body[1000:])
    [done] = await first.answers()
    assert done.status == 202
    assert p.data_plane.push_gate.in_progress == 0
    [again] = await p.raw(post(HES, records(2 * MiB)), stem=PUSHER)
    assert again.status == 202
    assert intake.bodies == [MiB, 16, MiB + 1, 2 * MiB]
    assert reasons(p) == ["push-busy", "push-accepted", "push-accepted", "push-accepted",
                          "push-accepted"]


async def test_a_push_without_a_declared_length_is_large(plane: Start) -> None:
    """A chunked push declares no size: it takes the slot (it may be up to
    the cap), so a second one meanwhile is refused."""
    p, intake = await start(plane)
    first = await Conn.open(p, PUSHER)
    await first.send(head(HES, None) + b"10\r\n" + records(16) + b"\r\n")
    await slot_taken(p)
    [second] = await p.raw(head(HES, None) + b"2\r\n{}\r\n0\r\n\r\n", stem=PUSHER)
    busy(second)
    await first.send(b"0\r\n\r\n")
    [done] = await first.answers()
    assert done.status == 202 and intake.bodies == [16]
    assert p.data_plane.push_gate.in_progress == 0


async def test_max_push_in_progress_large_pushes_are_read_at_once(plane: Start) -> None:
    """With max_push_in_progress = 2, two large pushes are read together; the
    third is refused; the slots come back after each, refused or served."""
    p, intake = await start(plane, EdgeLimits(max_push_records_mb=2, max_push_in_progress=2))
    body = records(MiB + 1)
    held = [await Conn.open(p, PUSHER) for _ in range(2)]
    for count, conn in enumerate(held, 1):
        await conn.send(head(HES, len(body)) + body[:10])
        await slot_taken(p, count)
    [third] = await p.raw(post(HES, body), stem=PUSHER)
    busy(third)
    for conn in held:
        await conn.send(body[10:])
        assert [a.status for a in await conn.answers()] == [202]
    assert p.data_plane.push_gate.in_progress == 0
    [too_large] = await p.raw(post(HES, records(2 * MiB + 1)), stem=PUSHER)
    assert too_large.status == 413
    assert p.data_plane.push_gate.in_progress == 0  # a refused push gives its slot back
    assert intake.bodies == [MiB + 1, MiB + 1]


# -- each form's cap ----------------------------------------------------------------------

DETAIL = ("A pushed body may have at most 2 MiB for a per-record batch or a booking "
          "(limits.max_push_records_mb) and 3 MiB for a meter-days/v1 batch "
          "(limits.max_push_meter_days_mb); split the batch.")


async def test_a_per_record_batch_is_capped_at_its_own_limit(plane: Start) -> None:
    """D1 availability: a per-record batch of exactly 2 MiB is routed; one
    byte more is refused (413, the limits named) after it was read, and the
    connection stays usable."""
    p, intake = await start(plane)
    answers = await p.raw(post(HES, records(2 * MiB), close=False)
                          + post(HES, records(2 * MiB + 1), close=False)
                          + post(HES, records(16)), stem=PUSHER)
    assert [a.status for a in answers] == [202, 413, 202]
    refused = answers[1]
    assert refused.header("Connection") is None  # read whole: the connection goes on
    problem = refused.json()
    assert (problem["status"], problem["detail"]) == (413, DETAIL)
    assert intake.bodies == [2 * MiB, 16]
    assert reasons(p) == ["push-accepted", "push-too-large", "push-accepted"]


async def test_a_meter_days_batch_may_reach_its_larger_cap(plane: Start) -> None:
    """The HES's meter-days batch has a cap of its own (3 MiB here): it is
    read up to it, and refused past it unread (the connection closed)."""
    p, intake = await start(plane)
    [ok] = await p.raw(post(HES, meter_days(3 * MiB)), stem=PUSHER)
    assert ok.status == 202
    [over] = await p.raw(post(HES, meter_days(3 * MiB + 1), close=False)
                         + post(HES, records(16)), stem=PUSHER)  # the second: never read
    assert over.status == 413 and over.header("Connection") == "close"
    assert sorted(over.headers) == ["Connection", "Content-Length", "Content-Type", "Date",
                                    "Server", "X-Request-Id"]
    assert over.json()["detail"] == DETAIL
    assert intake.bodies == [3 * MiB]


async def test_a_booking_is_capped_at_the_per_record_limit_unread(plane: Start) -> None:
    """A Connect My Home booking has no columnar form: past the per-record
    cap it is refused before its body is read (413, connection closed), even
    where the meter-days cap is larger."""
    p, intake = await start(plane)
    booking = b'{"requests": []}'
    body = booking + b" " * (2 * MiB + 1 - len(booking))
    [over] = await p.raw(post(CMH, body, close=False) + post(CMH, booking), stem=PORTAL)
    assert over.status == 413 and over.header("Connection") == "close"
    assert over.json()["detail"] == DETAIL
    [ok] = await p.raw(post(CMH, body[:2 * MiB]), stem=PORTAL)
    assert ok.status == 202
    assert intake.bodies == [2 * MiB]


async def test_push_max_body_bytes_is_the_outer_bound(plane: Start) -> None:
    """push.max_body_bytes below the form caps bounds what is read."""
    p, intake = await start(plane, push_max_body_bytes=MiB + 10)
    [over] = await p.raw(post(HES, records(MiB + 11), close=False) + post(HES, records(16)),
                         stem=PUSHER)
    assert over.status == 413 and over.header("Connection") == "close"
    [ok] = await p.raw(post(HES, records(MiB + 10)), stem=PUSHER)
    assert ok.status == 202
    assert intake.bodies == [MiB + 10]


async def test_a_push_body_that_stalls_is_a_timeout_not_too_large(plane: Start) -> None:
    """Only a 413 of the body reader becomes push-too-large: a body that
    stops arriving is refused as such (408 body-timeout, the connection
    closed), and its slot comes back."""
    p, intake = await start(plane, EdgeLimits(max_push_records_mb=2, body_timeout_s=0.3))
    body = records(MiB + 1)
    conn = await Conn.open(p, PUSHER)
    await conn.send(head(HES, len(body)) + body[:100])
    [answer] = await conn.answers()
    assert answer.status == 408 and answer.header("Connection") == "close"
    assert p.data_plane.push_gate.in_progress == 0
    assert intake.bodies == []
    assert reasons(p) == ["body-timeout"]


async def test_a_booking_is_never_held_to_the_columnar_forms_rules(plane: Start) -> None:
    """A booking between the meter-days cap (2 MiB here) and the per-record
    cap (3 MiB) is routed, escapes and all: the rule that a body past one
    form's cap must be unable to be the other form applies to the HES's
    batches only."""
    p, intake = await start(plane, EdgeLimits(max_push_records_mb=3, max_push_meter_days_mb=2))
    booking = b'{"requests": [{"note": "caf\\u00e9 \\"meter-days/v1\\""}]}'
    body = booking + b" " * (2 * MiB + 1 - len(booking))
    [ok] = await p.raw(post(CMH, body), stem=PORTAL)
    assert ok.status == 202
    assert intake.bodies == [2 * MiB + 1]
