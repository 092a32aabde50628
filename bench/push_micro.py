"""The push intake's ceiling without HTTP or TLS: one process, one core.

Runs what ``PushService.intake`` runs for a batch, stage by stage, on synthetic
batches of both formats (the same readings as ``bench/run.py``'s push phase):
parse (``decode_readings``, the per-record fast path's typed parse, and
where it does not take the batch ``scan_days``, with the nesting check
within it, which takes the records format to ``scan_batch``), route
(``route_readings`` / ``route_batch`` / ``route_meter_days``), the
fingerprint (canonical JSON for per-record batches, SHA-256 of the body
for meter-days), encoding of
the parts, and ``Outbox.enqueue_encoded`` (AES-GCM and one SQLite
transaction, ``synchronous=FULL``) into a scratch outbox. Reports process CPU
time per stage and meter-days per CPU-second. Bounded: ``--meters`` meter-days
per format (default 50,000), ``--repeat`` passes (default 3, the fastest
counts).

A meter-days batch is read and routed from its bytes in one pass
(``route_posted_days``), as the intake does; ``--general`` times the path
the intake takes for a body that one pass leaves to it (decode,
``scan_days``, ``route_meter_days``).

Usage: .venv/bin/python bench/push_micro.py [--meters N] [--feed N] [--repeat N] [--general]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.core.model import Relation
from gateway.core.push.canonical import batch_fingerprint, encode_days, encode_routed
from gateway.core.push.days import KIND, route_meter_days
from gateway.core.push.posted import route_posted_days
from gateway.core.push.readings import (
    batch_encoders,
    decode_readings,
    route_readings,
)
from gateway.core.push.records import route_batch
from gateway.core.push.scan import scan_days
from gateway.core.relations.index import RelationIndex
from gateway.push import SqliteOutbox
from gateway.push._outbox import Outbox
from gateway.push._parts import EncodedPart

TENANTS = ["ores", "fluvius", "sibelga", "resa", "pidpa", "dewatergroep", "farys"]
WATER = {"pidpa", "dewatergroep", "farys"}
DAY = datetime(2026, 11, 26, tzinfo=UTC)
NOW = DAY + timedelta(days=1, hours=6)
_COMPACT = json.JSONEncoder(separators=(",", ":")).encode


def serial(i: int) -> str:
    return f"9BEN{i:010d}"


def obis_unit(i: int) -> tuple[str, str]:
    return ("8-0:1.0.0", "m3") if TENANTS[i % len(TENANTS)] in WATER else ("1-0:1.8.1", "kWh")


def records_body(start: int, count: int) -> bytes:
    stamps = [(DAY + timedelta(minutes=15 * (q + 1))).isoformat() for q in range(96)]
    recs: list[str] = []
    for i in range(start, start + count):
        obis, unit = obis_unit(i)
        head = f'{{"meter":"{serial(i)}","timestamp":"'
        tail = f'","obis":"{obis}","unit":"{unit}","quality":"01","value":'
        recs.extend(f"{head}{ts}{tail}{(i * 31 + q * 7) % 997 / 10}}}"
                    for q, ts in enumerate(stamps))
    return (f'{{"batch_id":"M-{start:09d}","source":"hes","records":['
            + ",".join(recs) + "]}").encode()


def days_body(start: int, count: int) -> bytes:
    first = (DAY + timedelta(minutes=15)).isoformat()
    days: list[str] = []
    for i in range(start, start + count):
        obis, unit = obis_unit(i)
        values = ",".join(str((i * 31 + q * 7) % 997 / 10) for q in range(96))
        days.append(f'{{"meter":"{serial(i)}","start":"{first}","interval":900,'
                    f'"obis":"{obis}","unit":"{unit}","quality":"{"01" * 96}",'
                    f'"values":[{values}]}}')
    return (f'{{"format":"meter-days/v1","batch_id":"M-D-{start:09d}","source":"hes",'
            f'"meter_days":[' + ",".join(days) + "]}").encode()


class Stages:
    """CPU time per stage: ``with st("name"): ...``."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self._name = ""
        self._t = 0.0

    def __call__(self, name: str) -> Stages:
        self._name = name
        return self

    def __enter__(self) -> None:
        self._t = time.process_time()

    def __exit__(self, *_: object) -> None:
        spent = time.process_time() - self._t
        self.cpu[self._name] = self.cpu.get(self._name, 0.0) + spent


def one_pass(fmt: str, bodies: list[bytes], relations: RelationIndex, outbox: Outbox,
             tag: str, general: bool) -> dict[str, float]:
    st = Stages()
    for n, raw in enumerate(bodies):
        posted = None
        with st("decode+parse"):
            typed = decode_readings(raw)  # as PushService.intake
        if typed is None and not general:
            with st("read+route in one pass"):
                posted = route_posted_days(raw, relations, NOW)
        if typed is None and posted is None:
            with st("decode+parse"):
                text = raw.decode()
                doc, spans = scan_days(text)
        parts: list[EncodedPart]
        if typed is None and posted is None and fmt != "records":  # the general path
            with st("route"):
                posted = route_meter_days(doc, relations, NOW, text=text, spans=spans)
        if posted is not None:  # meter-days, routed
            with st("fingerprint"):
                fp = "sha256-body:" + hashlib.sha256(raw).hexdigest()
            with st("encode parts"):
                parts = [EncodedPart(f"{tag}{n}/{t}", t, KIND, p.readings,
                                     encode_days(p.meter_days))
                         for t, p in posted.parts.items()]
            received, quarantined = posted.received, len(posted.quarantined)
        elif typed is not None:  # the per-record fast path (gateway.core.push.readings)
            with st("route"):
                routed = route_readings(typed, relations, NOW)
            with st("fingerprint"):  # as PushService._intake_readings
                fp, encoders = batch_encoders(routed, typed.records)
            with st("encode parts"):
                parts = [EncodedPart(f"{tag}{n}/{t}", t, "hes-readings", len(recs),
                                     encoders[t]())
                         for t, recs in routed.parts.items()]
            received, quarantined = routed.received, len(routed.quarantined)
        else:
            with st("route"):
                routed = route_batch(doc, relations, NOW)
            with st("fingerprint"):
                fp = batch_fingerprint(routed.batch_id, doc["records"], raw)
            with st("encode parts"):
                parts = [EncodedPart(f"{tag}{n}/{t}", t, "hes-readings", len(recs),
                                     encode_routed(recs))
                         for t, recs in routed.parts.items()]
            received, quarantined = routed.received, len(routed.quarantined)
        with st("enqueue (AES-GCM + SQLite)"):
            outbox.enqueue_encoded(batch_id=f"{tag}{n}", source="hes-operator", fingerprint=fp,
                                   received=received, quarantined=quarantined, parts=parts)
    return st.cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--meters", type=int, default=50_000, help="meter-days per format")
    ap.add_argument("--batch", type=int, default=10_000, help="meter-days per batch")
    ap.add_argument("--feed", type=int, default=200_000, help="meters in the relation feed")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--formats", default="meter-days,records")
    ap.add_argument("--general", action="store_true",
                    help="meter-days by the general path (decode, scan_days, route_meter_days) "
                         "instead of route_posted_days")
    args = ap.parse_args()
    feed = max(args.feed, args.meters)
    relations = RelationIndex(Relation("meter", serial(i), TENANTS[i % len(TENANTS)], "owner")
                              for i in range(feed))
    key = os.urandom(32)
    with tempfile.TemporaryDirectory() as tmp:
        outbox = SqliteOutbox(Path(tmp) / "outbox.db", key)
        for fmt in args.formats.split(","):
            # Per-record batches are 96x more objects: keep them the size bench/run.py uses.
            per = args.batch if fmt == "meter-days" else min(args.batch, 1000)
            make = days_body if fmt == "meter-days" else records_body
            bodies = [make(s, min(per, args.meters - s)) for s in range(0, args.meters, per)]
            mb = sum(map(len, bodies)) / 2**20
            best: dict[str, float] | None = None
            for r in range(args.repeat):
                cpu = one_pass(fmt, bodies, relations, outbox, f"{fmt}-{r}-", args.general)
                if best is None or sum(cpu.values()) < sum(best.values()):
                    best = cpu
            assert best is not None
            total = sum(best.values())
            print(f"{fmt}: {args.meters} meter-days in {len(bodies)} batches ({mb:.1f} MiB), "
                  f"feed {feed} meters: {total:.2f} CPU-s = "
                  f"{args.meters / total:,.0f} meter-days per CPU-second")
            for name, s in best.items():
                print(f"  {name:28s} {s:7.3f} s  {1e6 * s / args.meters:7.2f} µs/meter-day "
                      f"{100 * s / total:5.1f} %")
        outbox.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
