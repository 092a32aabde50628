"""The response check's cost per answer, in process: the full parse against
the proof in C, side by side, for the shapes of answer the HES routes give.

What ``ResponseCheck.check`` runs on a 200 answer before it is sent, without
HTTP or TLS: the body read (the full parse, ``loads_limited``, or where the
route allows it the proof that makes only the strings the check reads,
``record_strings`` / ``records_strings``) and ``check_response`` on what
was read, for

* ``meter``: one meter's record of about 1 KB (``/hes/meters/{serial}``,
  the bench's request),
* ``meters``: a list of ``--meters`` such records (``/hes/meters``),
* ``readings``: a day of an electricity meter's readings, 4 registers and
  96 quarter-hours (``/hes/meters/{serial}/readings``), the same shape as
  the HES simulator's.

Each path's CPU time per answer is the best of ``--repeat`` rounds of
``--number`` answers (bounded both ways), the two paths alternated; the
ratio is the full parse's cost over the proof's. The verdicts of both paths
are compared before anything is timed.

For instructions rather than seconds (a noisy machine), ``--count N
--only SHAPE --path full|proof`` runs just that many answers of one shape
and path, untimed: under valgrind's callgrind, the difference of two counts
divided by the difference of the two N is the cost of one answer.

Usage: .venv/bin/python bench/answer_micro.py [--number N] [--repeat N] [--meters N]
       valgrind --tool=callgrind .venv/bin/python bench/answer_micro.py \
           --count 110 --only readings --path proof
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from run import device_block  # the bench's ~1 KB meter record

from gateway.core.catalog import default_route_table
from gateway.core.check import check_response
from gateway.core.decide import RequestFacts
from gateway.core.jsonlimits import MAX_DEPTH, loads_limited, record_strings, records_strings
from gateway.core.model import Caller, Principal, Relation, Tenant
from gateway.core.relations.index import RelationIndex

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
DAY = datetime(2026, 6, 14, tzinfo=UTC)
REGISTERS = ("1-0:1.8.1", "1-0:1.8.2", "1-0:2.8.1", "1-0:2.8.2")


def serial(i: int) -> str:
    return f"1SAG{i:010d}"


def meter_record(i: int) -> dict[str, Any]:
    meter = {"serial": serial(i), "utility": "electricity", "type": "smart",
             "model": "Sagemcom T211", "communicating": True}
    return {**meter, **device_block(meter, NOW.isoformat())}


def day_of_readings(i: int) -> dict[str, Any]:
    readings = [{"meter": serial(i), "timestamp": DAY.isoformat(), "obis": obis,
                 "value": round(8000 + 17.3 * k, 3), "unit": "kWh", "quality": "01"}
                for k, obis in enumerate(REGISTERS)]
    readings += [{"meter": serial(i), "timestamp": (DAY + timedelta(minutes=15 * q)).isoformat(),
                  "obis": "1-0:99.1.0", "value": round(0.02 + (q * 37 % 60) / 100, 3),
                  "unit": "kWh", "quality": "01"} for q in range(96)]
    return {"meter": serial(i), "date": DAY.date().isoformat(), "readings": readings}


Case = tuple[str, str, dict[str, str], bytes]


def cases(meters: int) -> list[Case]:
    """(name, path, query, answer bytes)."""
    return [
        ("meter", f"/hes/meters/{serial(0)}", {}, json.dumps(meter_record(0)).encode()),
        (f"meters ({meters})", "/hes/meters", {},
         json.dumps({"meters": [meter_record(i) for i in range(meters)]}).encode()),
        ("readings (a day)", f"/hes/meters/{serial(0)}/readings",
         {"date": DAY.date().isoformat()}, json.dumps(day_of_readings(0)).encode()),
    ]


def best_us(run: Callable[[], object], number: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(number):
            run()
        times.append((time.process_time() - start) / number)
    return 1e6 * min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--number", type=int, default=200, help="answers per round (at most 10,000)")
    ap.add_argument("--repeat", type=int, default=7, help="rounds per path (at most 50)")
    ap.add_argument("--meters", type=int, default=50, help="records in the list (at most 1,000)")
    ap.add_argument("--count", type=int, default=0,
                    help="untimed: run this many answers (at most 100,000) of --only and --path")
    ap.add_argument("--only", choices=("meter", "meters", "readings"), default="readings")
    ap.add_argument("--path", choices=("full", "proof"), default="proof")
    args = ap.parse_args()
    number, repeat = min(args.number, 10_000), min(args.repeat, 50)
    if record_strings is None or records_strings is None:
        print("gateway.core._native was not built: no proof to compare with")
        return 1
    relations = RelationIndex(Relation("meter", serial(i), "ores", "owner")
                              for i in range(max(args.meters, 1)))
    principal = Principal("ores", "service", "api", frozenset({"reader"}))
    caller = Caller(Tenant("ores", "ores", "dso", principals={("service", "api"): principal},
                           memberships=frozenset({"hes_consortium"})), principal)
    table = default_route_table()
    if not args.count:
        print(f"{'answer':18s} {'bytes':>8s} {'full parse':>12s} {'proof':>10s} {'ratio':>7s}")
    for name, path, query, raw in cases(min(args.meters, 1_000)):
        if args.count and name.split()[0] != args.only:
            continue
        match = table.lookup("GET", path).match
        assert match is not None, path
        route, facts = match.route, RequestFacts(match.params, query)
        if route.record_fields is not None:
            fields = route.record_fields

            def proof(raw: bytes = raw, fields: tuple[str, ...] = fields) -> Any:
                return record_strings(raw, fields, MAX_DEPTH)
        else:
            assert route.listed_fields is not None, path
            items, names = route.listed_fields

            def proof(raw: bytes = raw, items: str = items,
                      names: tuple[str, ...] = names) -> Any:
                return records_strings(raw, items, names, MAX_DEPTH)

        def full(raw: bytes = raw, route: Any = route, facts: RequestFacts = facts) -> Any:
            return check_response(caller, route, facts, relations,
                                  loads_limited(raw, max_depth=MAX_DEPTH), NOW)

        def proven(proof: Callable[[], Any] = proof, route: Any = route,
                   facts: RequestFacts = facts) -> Any:
            return check_response(caller, route, facts, relations, proof(), NOW)

        verdicts = full().decision, proven().decision
        assert verdicts[0].allowed and verdicts[0] == verdicts[1], (name, verdicts)
        if args.count:
            run = full if args.path == "full" else proven
            for _ in range(min(args.count, 100_000)):
                run()
            continue
        full_us = proof_us = float("inf")
        for _ in range(2):  # alternated: a slower minute weighs on both
            full_us = min(full_us, best_us(full, number, repeat))
            proof_us = min(proof_us, best_us(proven, number, repeat))
        print(f"{name:18s} {len(raw):8,d} {full_us:10.1f}µs {proof_us:8.1f}µs "
              f"{full_us / proof_us:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
