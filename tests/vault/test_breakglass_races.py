"""Break-glass on a fleet (D6 dual control, D7 privileged access): replicas
racing on one case. On PostgreSQL a replica is a BreakGlass
object with its own state-store connection and its own vault connection to
the shared database; on SQLite (one process, embedded) the two share the
process's connections, as an admin request and the maintenance task do. The
shared system's admin API is a real HTTP server on loopback that records
each password it is given.
Threads start each race at a barrier; every test runs it many times.

Each test fails when the compare-and-set (StateStore.move_breakglass) is
replaced by a plain write: two leases, two decisions, two rotations.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gateway.audit._soc import SecurityEvents
from gateway.config import Upstream
from gateway.core.model import Principal
from gateway.metrics import GatewayMetrics
from gateway.pki import AdminRefused
from gateway.state import StateStore, open_store
from gateway.upstream import UpstreamPool
from gateway.vault import (
    BreakGlass,
    MasterKeys,
    UpstreamCredentials,
    Vault,
    account_secret_id,
    open_vault,
)
from tests.postgres import Cluster

NOW = datetime(2026, 6, 15, 9, 0, tzinfo=UTC)
ROUNDS = 12
DAVE = Principal("ores", "person", "dave", frozenset({"privileged-user"}), "grid-ops")
GRACE = Principal("ores", "person", "grace", frozenset({"privileged-user"}), "soc")
BOB = Principal("ores", "person", "bob", frozenset({"vault-approver"}), "iam")
CAROL = Principal("ores", "person", "carol", frozenset({"vault-approver"}), "it")
ACCOUNTS = [f"hes-admin-{n}" for n in range(ROUNDS)]


class PasswordDesk:
    """The shared system's admin API: records every password set."""

    def __init__(self) -> None:
        self.sets: list[tuple[str, str]] = []
        desk = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                account = self.path.split("/")[3]
                desk.sets.append((account, body["password"]))
                reply = json.dumps({"account": account, "rotated": True}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Replica:
    def __init__(self, url: str, tmp: Path, master: MasterKeys, desk: PasswordDesk,
                 name: str, same_process: Replica | None = None) -> None:
        self.now = NOW
        self.owner = same_process is None
        self.store: StateStore = open_store(url) if same_process is None \
            else same_process.store
        self.vault: Vault = open_vault(url, tmp / "vault.db", master) \
            if same_process is None else same_process.vault
        metrics = GatewayMetrics()
        self.pool = UpstreamPool({"hes": Upstream("hes", f"http://127.0.0.1:{desk.port}")},
                                 metrics)
        self.audited: list[tuple[Any, ...]] = []
        self.bg = BreakGlass(
            store=self.store, vault=self.vault, pool=self.pool,
            accounts=dict.fromkeys(ACCOUNTS, "hes"),
            upstream_creds=UpstreamCredentials(self.vault, self.pool, metrics),
            soc=SecurityEvents(file=tmp / f"soc-{name}.jsonl"), metrics=metrics,
            audit=lambda *a: self.audited.append(a) or "inc", clock=lambda: self.now)

    def run(self, coro_fn: Callable[[], Any]) -> Any:
        """An async step on this replica's own event loop (in the calling thread)."""
        async def main() -> Any:
            self.pool._pools["hes"] = self.pool._pool("hes")  # no health probe
            try:
                return await coro_fn()
            finally:
                await self.pool.close()
        return asyncio.run(main())

    def close(self) -> None:
        if self.owner:
            self.vault.close()
            self.store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    cluster: Cluster = request.getfixturevalue("postgres")
    return cluster.new_database()


@pytest.fixture
def fleet(state_url: str, tmp_path: Path) -> Iterator[tuple[Replica, Replica, PasswordDesk]]:
    desk, master = PasswordDesk(), MasterKeys.generate()
    a = Replica(state_url, tmp_path, master, desk, "a")
    b = Replica(state_url, tmp_path, master, desk, "b",
                None if state_url.startswith("postgresql://") else a)
    for account in ACCOUNTS:
        a.bg.provision(account)
    yield a, b, desk
    a.close()
    b.close()
    desk.close()


def race(*steps: Callable[[], Any]) -> list[Any]:
    """Run the steps in threads released at once; each one's result, or the
    (status, reason) of its refusal."""
    start = threading.Barrier(len(steps))
    out: list[Any] = [None] * len(steps)

    def run(i: int) -> None:
        start.wait()
        try:
            out[i] = steps[i]()
        except AdminRefused as exc:
            out[i] = (exc.status, exc.reason)
        except BaseException as exc:  # shown in the assertion
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(steps))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def approved_case(replica: Replica, account: str) -> str:
    cid = replica.bg.request(DAVE, account, "fix the head-end", "CHG-1",
                             timedelta(minutes=30), False).id
    replica.bg.decide(BOB, cid, True)
    return cid


def check_one_lease(replica: Replica, cid: str, outcomes: list[Any], password: str) -> None:
    wins = [o for o in outcomes if isinstance(o, tuple) and len(o) == 2
            and not isinstance(o[0], int)]
    assert len(wins) == 1, outcomes
    assert wins[0][1] == password
    # The losers get what a second checkout gets (D7: one exclusive lease).
    assert [o for o in outcomes if o not in wins] == [(409, "not-approved")] * \
        (len(outcomes) - 1)
    stored = replica.store.breakglass(cid)
    assert stored is not None and stored.status == "checked-out"


def test_threads_racing_to_check_out_one_case_get_one_lease(
        fleet: tuple[Replica, Replica, PasswordDesk]) -> None:
    a, _, _ = fleet
    for account in ACCOUNTS:
        cid = approved_case(a, account)
        password = a.vault.get(account_secret_id(account)).decode()
        outcomes = race(*[lambda c=cid: a.bg.checkout(DAVE, c)] * 6)
        check_one_lease(a, cid, outcomes, password)


def test_two_replicas_racing_to_check_out_one_case_get_one_lease(
        fleet: tuple[Replica, Replica, PasswordDesk]) -> None:
    a, b, _ = fleet
    for account in ACCOUNTS:
        cid = approved_case(a, account)
        password = b.vault.get(account_secret_id(account)).decode()
        outcomes = race(*[lambda r=r, c=cid: r.bg.checkout(DAVE, c) for r in (a, b, a, b)])
        check_one_lease(b, cid, outcomes, password)


def test_two_approvers_racing_on_two_replicas_give_one_decision(
        fleet: tuple[Replica, Replica, PasswordDesk]) -> None:
    """D6: approve on one replica, deny on another, at once: one decision
    stands, and it is the one its approver was told of."""
    a, b, _ = fleet
    for account in ACCOUNTS:
        cid = a.bg.request(DAVE, account, "fix", "CHG-2", timedelta(minutes=5), False).id
        outcomes = race(lambda c=cid: a.bg.decide(BOB, c, True),
                        lambda c=cid: b.bg.decide(CAROL, c, False))
        decided = [o for o in outcomes if not isinstance(o, tuple)]
        assert len(decided) == 1, outcomes
        assert outcomes.count((409, "not-pending")) == 1
        assert a.store.breakglass(cid) == decided[0]


def test_expiry_racing_a_check_in_closes_once_and_rotates_once(
        fleet: tuple[Replica, Replica, PasswordDesk]) -> None:
    """The requester checks in on one replica while another's maintenance
    finds the lease expired: one closes the case, the other is refused (or
    skips it), and the password is changed once, at the shared system and in
    the vault alike."""
    a, b, desk = fleet
    for account in ACCOUNTS:
        cid = approved_case(a, account)
        a.bg.checkout(DAVE, cid)
        a.now = b.now = NOW + timedelta(minutes=31)  # the lease has run out
        before = len(desk.sets)
        outcomes = race(lambda c=cid: a.run(lambda: a.bg.checkin(DAVE, c)),
                        lambda: b.run(b.bg.maintain))
        assert not any(isinstance(o, BaseException) for o in outcomes), outcomes
        checked_in, expired = outcomes[0] != (409, "not-checked-out"), \
            any(e[1] == "breakglass-expire" and e[2] == cid for e in b.audited)
        assert checked_in != expired, outcomes  # one outcome
        case = a.store.breakglass(cid)
        assert case is not None and case.status == "closed" and case.rotated
        assert case.close_reason == ("checked in" if checked_in else "lease expired")
        sets = [p for acct, p in desk.sets[before:] if acct == account]
        assert len(sets) == 1  # rotated once
        versions = a.vault.versions(account_secret_id(account))
        assert [m.version for m in versions] == [2]  # one new version, the old one shredded
        assert a.vault.get(account_secret_id(account)).decode() == sets[0]
        a.now = b.now = NOW


def test_two_cases_of_one_account_racing_on_two_replicas_never_give_two_leases(
        fleet: tuple[Replica, Replica, PasswordDesk]) -> None:
    """D7: one lease per account, also when two approved cases of it are
    checked out at once on two replicas. Both may step back; never both win."""
    a, b, _ = fleet
    for account in ACCOUNTS:
        first = approved_case(a, account)
        cid = a.bg.request(GRACE, account, "fix", "CHG-3", timedelta(minutes=5), False).id
        a.bg.decide(BOB, cid, True)
        outcomes = race(lambda f=first: a.bg.checkout(DAVE, f),
                        lambda c=cid: b.bg.checkout(GRACE, c))
        leases = [c for c in a.store.breakglass_cases() if c.account == account
                  and c.status == "checked-out"]
        assert len(leases) <= 1, outcomes
        assert sum(1 for o in outcomes if o != (409, "account-leased")) == len(leases)
        if not leases:  # both stepped back: the cases are approved again
            assert a.bg.checkout(DAVE, first)[0].status == "checked-out"
