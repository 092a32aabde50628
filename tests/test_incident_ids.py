"""Incident ids (RFC 9457 `incident`, X-Request-Id): time-ordered, unique,
unguessable, and never shared between a process and its forked child."""

from __future__ import annotations

import os
import re

from gateway.problem import new_incident_id

SHAPE = re.compile(r"[0-9a-f]{12}-[0-9a-f]{16}")


def test_ids_are_unique_and_well_formed_across_pool_refills() -> None:
    ids = [new_incident_id() for _ in range(5000)]  # ~10 refills of the random pool
    assert all(SHAPE.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)
    randoms = [i.split("-")[1] for i in ids]
    assert len(set(randoms)) == len(randoms)  # the random half alone is unique too
    assert ids == sorted(ids, key=lambda i: i.split("-")[0])  # time-ordered prefix


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    new_incident_id()  # the pool holds bytes the child must not reuse
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids, then leave at once
        os.close(read)
        os.write(write, " ".join(new_incident_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    child = b""
    while chunk := os.read(read, 65536):
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    parent = {new_incident_id().split("-")[1] for _ in range(50)}
    assert not parent & {i.split("-")[1] for i in child.decode().split()}


def test_threads_taking_ids_at_once_never_share_one() -> None:
    """The random halves are handed out without a lock (list.pop is atomic):
    threads that drain and refill the pool together still get distinct ones."""
    import threading

    got: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def take(into: list[str]) -> None:
        start.wait()
        into.extend(new_incident_id().split("-")[1] for _ in range(3000))

    threads = [threading.Thread(target=take, args=(into,)) for into in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    halves = [h for into in got for h in into]
    assert len(halves) == 24000 and len(set(halves)) == len(halves)
