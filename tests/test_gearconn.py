"""One worker connection holding several jobs at once, against the real gearmand.

The worker host asks for up to `batch` jobs on a single connection with pipelined GRAB_JOBs.
These tests pin down what that relies on: gearmand assigns several jobs to one connection,
re-queues every one of them when the connection drops, and wakes a sleeping connection.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import gearman
import pytest
from conftest import ON_FIRST_SERVER
from gearman import protocol as p

from workerhost.config.converters import Server
from workerhost.gearman import admin as gearadmin
from workerhost.gearman import conn as gearconn
from workerhost.gearman.conn import Assigned, WorkerConnection
from workerhost.sandbox.stack import Sandbox


def submit(sandbox: Sandbox, function: str, count: int) -> None:
    client = gearman.GearmanClient([sandbox.gearman_server])
    client.submit_multiple_jobs([{"task": function, "data": f"job {i}"} for i in range(count)],
                                background=True, wait_until_complete=False)
    client.shutdown()


def status(sandbox: Sandbox, function: str) -> tuple[int, int, int]:
    """(queued or running, running, workers) as gearmand counts them."""
    row = gearadmin.status("127.0.0.1", sandbox.gearman_port).get(function)
    return (row.queued, row.running, row.workers) if row else (0, 0, 0)


def pump(conn: WorkerConnection, until: int, timeout: float = 10.0) -> list[Assigned]:
    """Flush and read until `until` jobs came in and no GRAB_JOB waits for its answer."""
    jobs: list[Assigned] = []
    deadline = time.monotonic() + timeout
    while len(jobs) < until or conn.asking or conn.wants_write():
        assert time.monotonic() < deadline, f"{conn}: {len(jobs)} of {until} jobs came in"
        for ready in gearconn.wait([conn], 0.05):
            jobs.extend(ready.read())
    return jobs


@pytest.fixture
def function() -> str:
    return f"gearconn_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def conn(sandbox: Sandbox, function: str) -> Iterator[WorkerConnection]:
    connection = WorkerConnection(
        Server("127.0.0.1", sandbox.gearman_port), function.encode(), b"test-gearconn", 4)
    yield connection
    connection.close()


@ON_FIRST_SERVER  # only gearmand takes part
def test_one_connection_holds_up_to_its_capacity(
    sandbox: Sandbox, function: str, conn: WorkerConnection
) -> None:
    submit(sandbox, function, 10)
    conn.connect()
    jobs = pump(conn, 4)
    assert len(jobs) == 4 and conn.holding == 4 and conn.asking == 0
    assert status(sandbox, function) == (10, 4, 1)

    # Answering two makes room for two more, asked for in the same write.
    for job in jobs[:2]:
        conn.complete(job.handle, b"done")
    conn.top_up()
    more = pump(conn, 2)
    assert len(more) == 2 and conn.holding == 4
    assert status(sandbox, function) == (8, 4, 1)
    assert {j.handle for j in more}.isdisjoint({j.handle for j in jobs})


@ON_FIRST_SERVER  # only gearmand takes part
def test_every_held_job_goes_back_when_the_connection_drops(
    sandbox: Sandbox, function: str, conn: WorkerConnection
) -> None:
    submit(sandbox, function, 6)
    conn.connect()
    jobs = pump(conn, 4)
    conn.complete(jobs[0].handle, b"done")
    conn.flush()
    conn.close()
    assert not any(job.answerable for job in jobs)
    # gearmand notices the dropped connection at once: 5 jobs left, none running.
    deadline = time.monotonic() + 5
    while status(sandbox, function) != (5, 0, 0):
        assert time.monotonic() < deadline, status(sandbox, function)
        time.sleep(0.02)

    # A new connection (same object, next generation) gets the re-queued jobs again.
    conn.connect()
    again = pump(conn, 4)
    assert not any(job.answerable for job in jobs)
    assert all(job.answerable for job in again)
    assert {job.data for job in again} <= {f"job {i}".encode() for i in range(1, 6)}


@ON_FIRST_SERVER  # only gearmand takes part
def test_an_idle_connection_sleeps_and_noop_wakes_it(
    sandbox: Sandbox, function: str, conn: WorkerConnection
) -> None:
    conn.connect()
    assert pump(conn, 0) == []
    assert conn.sleeping and conn.asking == 0 and conn.holding == 0

    submit(sandbox, function, 1)
    jobs = pump(conn, 1)
    assert [job.data for job in jobs] == [b"job 0"]
    # Woken, it asked for two jobs at once: the queue had one, so it sleeps again.
    assert conn.sleeping and conn.holding == 1


@ON_FIRST_SERVER  # only gearmand takes part
def test_a_connection_that_leaves_its_jobs_to_another_asks_for_none_until_it_looks_again(
    sandbox: Sandbox, function: str, conn: WorkerConnection
) -> None:
    """Woken while another process takes the jobs, it neither asks nor sleeps, so gearmand
    wakes it no more; looking again, it asks for jobs: the other took them (it sleeps, and is
    woken by the next job), or they are still queued and its own."""
    other = WorkerConnection(Server("127.0.0.1", sandbox.gearman_port), function.encode(),
                             b"test-gearconn-other", 4)
    sibling = {"takes": True}
    conn.defer = lambda: sibling["takes"]

    def left_to_the_other() -> None:
        deadline = time.monotonic() + 5
        while not conn.deferred_until:  # its NOOP: read, and left to the other
            assert time.monotonic() < deadline, conn
            for ready in gearconn.wait([conn], 0.05):
                assert ready.read() == []
        assert conn.asking == 0 and not conn.sleeping and not conn.wants_write()
        assert conn.deferred_until - time.monotonic() <= gearconn.DEFER_RECHECK

    conn.connect()
    other.connect()
    try:
        assert pump(conn, 0) == [] and pump(other, 0) == []
        submit(sandbox, function, 1)
        taken = pump(other, 1)
        left_to_the_other()
        submit(sandbox, function, 1)  # no NOOP for it: gearmand counts it awake
        taken += pump(other, 1)
        assert len(taken) == 2 and status(sandbox, function) == (2, 2, 2)
        assert pump(conn, 0, timeout=0.3) == [] and conn.holding == 0

        conn.recheck()  # the other took them: nothing for it, and it sleeps
        assert pump(conn, 0) == [] and conn.sleeping and not conn.deferred_until

        other.grabbing = False  # the other takes no more: jobs that come now wait for it
        for job in taken:
            other.complete(job.handle, b"done")
        other.flush()
        submit(sandbox, function, 1)  # woken again (its GRAB_JOB let gearmand), it leaves it
        left_to_the_other()
        assert status(sandbox, function) == (1, 0, 2)
        conn.recheck()  # still queued: its own
        assert [job.data for job in pump(conn, 1)] == [b"job 0"]
    finally:
        other.close()


@ON_FIRST_SERVER  # only gearmand takes part
def test_jobs_queued_meanwhile_come_in_rounds_that_double_not_one_grab_each(
    sandbox: Sandbox, function: str
) -> None:
    """Jobs that queued up while the worker was busy cost a few round trips, not one each."""
    conn = WorkerConnection(
        Server("127.0.0.1", sandbox.gearman_port), function.encode(), b"test-gearconn", 16)
    rounds: list[int] = []
    grab = conn.grab

    def counted(count: int = 1) -> None:
        asking = conn.asking
        grab(count)
        if conn.asking > asking:
            rounds.append(conn.asking - asking)

    try:
        conn.connect()
        assert pump(conn, 0) == [] and conn.sleeping
        conn.grab = counted  # type: ignore[method-assign]
        submit(sandbox, function, 7)  # all queued (JOB_CREATED) before the NOOP is read
        jobs = pump(conn, 7)
        assert len(jobs) == 7 and conn.holding == 7
        # Two at the wake, four when both found a job, eight more: one found the last job.
        assert rounds == [2, 4, 8]
        assert conn.sleeping

        # After a batch, it asks for as many as came in for it, asleep or not: jobs that
        # queued up while the batch ran come in without a NOOP first.
        submit(sandbox, function, 3)
        for job in jobs:
            conn.complete(job.handle, b"done")
        rounds.clear()
        conn.top_up()
        more = pump(conn, 3)
        assert len(more) == 3 and rounds == [7]
    finally:
        conn.close()


@ON_FIRST_SERVER  # only gearmand takes part
def test_a_stopping_connection_asks_for_nothing_more(
    sandbox: Sandbox, function: str, conn: WorkerConnection
) -> None:
    submit(sandbox, function, 8)
    conn.connect()
    jobs = pump(conn, 4)
    conn.grabbing = False
    for job in jobs:
        conn.complete(job.handle, b"done")
    conn.top_up()
    conn.flush()
    assert conn.asking == 0 and conn.holding == 0
    deadline = time.monotonic() + 5
    while status(sandbox, function) != (4, 0, 1):
        assert time.monotonic() < deadline, status(sandbox, function)
        time.sleep(0.02)


@pytest.mark.parametrize("command, args, fields", [
    (p.GEARMAN_COMMAND_WORK_COMPLETE, (b"H:vm:1", b"res\0ult"),
     {"job_handle": b"H:vm:1", "data": b"res\0ult"}),
    (p.GEARMAN_COMMAND_WORK_FAIL, (b"H:vm:1",), {"job_handle": b"H:vm:1"}),
    (p.GEARMAN_COMMAND_PRE_SLEEP, (), {}),
    (p.GEARMAN_COMMAND_CAN_DO, (b"resize",), {"task": b"resize"}),
])
def test_requests_are_packed_as_pygearman_packs_them(
    command: int, args: tuple[bytes, ...], fields: dict[str, bytes]
) -> None:
    packet = gearconn.request(command, *args)
    assert packet == p.pack_binary_command(command, fields)
    # And read back whole, however the bytes arrive.
    buffer = bytearray(packet[:5])
    assert gearconn.take_packets(buffer) == []
    buffer += packet[5:] + packet[:3]
    assert gearconn.take_packets(buffer) == [(command, b"\0".join(args))]
    assert buffer == packet[:3]
