"""What the replicas of a fleet share in PostgreSQL besides the state: the
heartbeat table, the control plane's lock and change notifications. Real
PostgreSQL (the session's cluster); several connections stand for several
replicas."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import psycopg
import pytest

from gateway.state import ChangeListener, Heartbeats, LeaderLock, open_store
from tests.postgres import Cluster
from tests.state.test_store import cert

T0 = datetime(2026, 6, 15, tzinfo=UTC)


@pytest.fixture()
def dsn(postgres: Cluster) -> str:
    return postgres.new_database()


def beat(hb: Heartbeats, replica_id: str, role: str = "data", *, draining: bool = False,
         pid: int = 1) -> None:
    hb.beat(replica_id=replica_id, role=role, host="h", pid=pid, data="127.0.0.1:1",
            ops="127.0.0.1:2", admin=None, draining=draining, leader=False)


def test_live_data_replicas_count_fresh_serving_heartbeats_only(dsn: str) -> None:
    hb, other = Heartbeats(dsn), Heartbeats(dsn)
    beat(hb, "dp-0")
    beat(other, "dp-1")
    beat(hb, "all-0", "all")
    beat(hb, "cp-0", "control")  # serves no data plane
    beat(hb, "dp-2", draining=True)  # leaving: no longer counted (quota shares grow)
    assert hb.live_data_replicas(live_within_s=5) == 3
    time.sleep(0.3)
    beat(hb, "dp-0")
    assert hb.live_data_replicas(live_within_s=0.2) == 1  # the others went quiet
    assert {r.id for r in other.replicas()} == {"all-0", "cp-0", "dp-0", "dp-1", "dp-2"}
    hb.forget("dp-1")
    assert "dp-1" not in {r.id for r in hb.replicas()}
    hb.close()
    other.close()


def test_a_heartbeat_keeps_the_start_time_of_the_same_process(dsn: str) -> None:
    hb = Heartbeats(dsn)
    beat(hb, "dp-0", pid=10)
    first = hb.replicas()[0]
    time.sleep(0.05)
    beat(hb, "dp-0", pid=10)
    again = hb.replicas()[0]
    assert again.started_at == first.started_at and again.heartbeat_at > first.heartbeat_at
    beat(hb, "dp-0", pid=11)  # restarted under the same id
    assert hb.replicas()[0].started_at > first.started_at
    hb.close()


def test_one_process_holds_the_control_lock_and_a_standby_takes_it_over(dsn: str) -> None:
    active, standby = LeaderLock(dsn), LeaderLock(dsn)
    assert active.poll() is True
    assert standby.poll() is False
    assert active.poll() is True  # kept while its session lives
    active.release()
    assert standby.poll() is True
    assert active.poll() is False
    standby.release()
    active.release()


def test_a_leader_whose_session_dies_loses_the_lock(dsn: str, postgres: Cluster) -> None:
    active, standby = LeaderLock(dsn), LeaderLock(dsn)
    assert active.poll()
    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks "
                      "WHERE locktype = 'advisory' AND objid = %s AND granted",
                      (active.key,))
    assert standby.poll() is True  # freed with the session
    assert active.poll() is False  # the old leader notices it lost
    standby.release()
    active.release()


def test_the_listener_reports_each_change_and_every_reconnect(
        dsn: str, postgres: Cluster) -> None:
    calls: list[float] = []
    woke = threading.Event()

    def on_change() -> None:
        calls.append(time.monotonic())
        woke.set()

    listener = ChangeListener(dsn, on_change, retry_s=0.05)
    listener.start()
    assert listener.connected.wait(5) and woke.wait(5)  # connected: a change it may have missed
    woke.clear()
    store = open_store(dsn)
    store.add_certificate(cert("0A"))
    store.revoke_certificate("0A", "keyCompromise", T0)
    assert woke.wait(2)  # D8: the revocation is announced, not polled for
    woke.clear()
    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE query LIKE 'LISTEN%%' AND datname = %s",
                      (dsn.split("@/", 1)[1].split("?")[0],))
    assert woke.wait(5)  # reconnected, and said so
    listener.stop()
    store.close()


def test_the_published_relation_snapshot_is_content_addressed(dsn: str) -> None:
    from gateway.state import RelationPublication

    control, replica = RelationPublication(dsn), RelationPublication(dsn)
    assert replica.pointer() is None
    assert control.publish("a" * 64, b"snapshot one", 2) is True
    assert control.publish("a" * 64, b"snapshot one", 2) is False  # already live
    pointer = replica.pointer()
    assert pointer is not None and (pointer.digest, pointer.relations) == ("a" * 64, 2)
    assert 0 <= pointer.age_s < 60
    assert replica.fetch("a" * 64) == b"snapshot one"
    control.publish("b" * 64, b"snapshot two", 3)
    assert replica.pointer() is not None and replica.pointer().digest == "b" * 64  # type: ignore[union-attr]
    assert replica.fetch("a" * 64) is None  # no one points at it any more
    control.close()
    replica.close()
