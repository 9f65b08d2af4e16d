"""The worker's database side with a fake database: batches, deferral, the ledger, dead letters.

The fake stands in at the seam of the host's tables (store/ledger.py and store/letters.py)
and keeps their rows in memory, with transactions: what a unit of work changed is kept when it
returns, and undone when it raises or rolls back. The same branches run against the real
servers in test_worker_host.py and test_ledger.py.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from workerhost.config.load import parse_config
from workerhost.host.worker import LATER, Worker
from workerhost.model.job import Job, Outcome
from workerhost.store import job_control, letters
from workerhost.store import ledger as ledger_store


@dataclass
class Store:
    """The host's tables, in memory."""

    ledger: dict[int, tuple[str, bytes]] = field(default_factory=dict)
    tokens: dict[int, str] = field(default_factory=dict)
    held: set[int] = field(default_factory=set)  # rows another transaction holds
    early: set[int] = field(default_factory=set)  # rows waiting for a retry's delay
    refused: list[tuple[str, bytes, bytes, str]] = field(default_factory=list)
    paused: set[str] = field(default_factory=set)
    parked: set[int] = field(default_factory=set)
    due_in: dict[int, float] = field(default_factory=dict)  # rescheduled ledger rows
    attempts: dict[bytes, tuple[int, str, str | None]] = field(default_factory=dict)
    outbox: list[tuple[str, bytes, str | None, float]] = field(default_factory=list)
    dead: list[tuple[str, bytes, int, str]] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)  # what handlers wrote, committed


class FakeConnection:
    unread_result = False

    def __init__(self, db: FakeDatabase) -> None:
        self.db = db

    def rollback(self) -> None:
        self.db.store = copy.deepcopy(self.db.snapshot)

    def cursor(self, buffered: bool = False) -> Any:
        return FakeCursor(self.db)


class FakeCursor:
    """What a handler's writes look like: `INSERT ...` recorded in the store."""

    def __init__(self, db: FakeDatabase) -> None:
        self.db = db
        self.rowcount = 1

    def execute(self, sql: str, params: Any = None) -> None:
        self.db.store.writes.append(sql % params if params else sql)

    def close(self) -> None:
        pass


class FakeDatabase:
    """Database's interface (run, describe, forget, ...) over a Store with transactions."""

    def __init__(self) -> None:
        self.store = Store()
        self.snapshot = Store()
        self.commits = 0
        self.last_commit_seconds = 0.0

    def run(self, work: Any, *, deadline: float | None = None, give_up: Any = None,
            guarded: bool = False) -> Any:
        self.snapshot = copy.deepcopy(self.store)
        try:
            result = work(FakeConnection(self))
        except BaseException:
            self.store = self.snapshot
            raise
        self.commits += 1
        return result

    def restart(self) -> None:
        self.store = copy.deepcopy(self.snapshot)

    def describe(self) -> str:
        return "the fake database"

    def forget(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def db(monkeypatch: pytest.MonkeyPatch) -> FakeDatabase:
    fake = FakeDatabase()

    def store() -> Store:
        return fake.store

    def claim(conn: Any, ids: Any, keys: Any, function: str | None = None) -> ledger_store.Claim:
        ledger = store().ledger
        rows = {i: ledger_store.LedgerRow(i, ledger[i][0], ledger[i][1], None, store().tokens[i],
                                    i not in store().early)
                for i in ids if i in ledger and i not in store().held}
        return ledger_store.Claim(rows, frozenset(i for i in ids if i in store().held),
                            {k: store().attempts[k][0] for k in keys if k in store().attempts},
                            function in store().paused)

    monkeypatch.setattr(ledger_store, "claim", claim)
    monkeypatch.setattr(job_control, "park", lambda conn, ids: store().parked.update(ids))
    monkeypatch.setattr(letters, "add_refused", lambda conn, function, unique, payload, reason:
                        store().refused.append((function, unique, payload, reason)))
    monkeypatch.setattr(letters, "failures_so_far",
                        lambda conn, key: store().attempts.get(key, (0, "", None))[0])

    def count_failure(conn: Any, key: bytes, error: str, traceback: str | None) -> int:
        failures = store().attempts.get(key, (0, "", None))[0] + 1
        store().attempts[key] = (failures, error, traceback)
        return failures

    monkeypatch.setattr(letters, "count_failure", count_failure)
    monkeypatch.setattr(letters, "last_failure", lambda conn, key: store().attempts[key][1:]
                        if key in store().attempts else None)
    monkeypatch.setattr(letters, "forget", lambda conn, key: store().attempts.pop(key, None))

    def delete(conn: Any, ids: Any) -> None:
        for ident in ids:
            store().ledger.pop(ident, None)

    monkeypatch.setattr(ledger_store, "delete_ledger_rows", delete)
    monkeypatch.setattr(ledger_store, "reschedule",
                        lambda conn, ident, delay: store().due_in.__setitem__(ident, delay))
    monkeypatch.setattr(ledger_store, "enqueue", lambda conn, function, payload, unique, delay:
                        store().outbox.append((function, payload, unique, delay)))

    def add_dead_letter(conn: Any, key: bytes, function: str, payload: bytes,
                        unique: str | None, attempts: int, error: str,
                        traceback: str | None) -> None:
        store().dead.append((function, payload, attempts, error))
        store().attempts.pop(key, None)

    monkeypatch.setattr(letters, "add_dead_letter", add_dead_letter)
    return fake


def handler_calls(job: Job, conn: Any) -> str:
    """Writes a row per job; raises for payloads that say so."""
    data = job.json()
    if data.get("fail"):
        raise RuntimeError(f"job {data['id']} fails")
    conn.cursor().execute("INSERT %s", (data["id"],))
    return f"done {data['id']}"


def worker(db: FakeDatabase, **handler: Any) -> Worker:
    config = parse_config({
        "gearman": {"servers": ["127.0.0.1:4999"]},
        "database": {"user": "u", "database": "d"},
        "handlers": {"f": {"python": "test_worker:handler_calls",
                           "retries": {"attempts": 2, "backoff": "1s"}, **handler}},
    }, file="test.yaml")
    return Worker(config, config.handlers["f"], database=db)  # type: ignore[arg-type]


def ledger_job(db: FakeDatabase, ident: int, payload: bytes, function: str = "f",
               proof: str | None = None) -> Job:
    db.store.ledger[ident] = (function, payload)
    db.store.tokens[ident] = f"T{ident:031d}"
    # gearmand's copy of the workload is not the one that runs: the ledger row's is.
    token = db.store.tokens[ident] if proof is None else proof
    return Job(function="f", payload=b"", unique=token, handle=f"H:{ident}", ledger=ident,
               proof=token, unique_sent=f"L{ident}:{token}")


def test_a_batch_commits_once_and_deletes_its_ledger_rows(db: FakeDatabase) -> None:
    jobs = [ledger_job(db, i, b'{"id": %d}' % i) for i in (1, 2, 3)]
    answers = worker(db).run_batch(jobs)
    assert answers == [b"done 1", b"done 2", b"done 3"]
    assert db.commits == 1
    assert db.store.ledger == {}
    assert db.store.writes == ["INSERT 1", "INSERT 2", "INSERT 3"]


def test_a_job_whose_ledger_row_is_gone_is_answered_without_running(db: FakeDatabase) -> None:
    done = ledger_job(db, 7, b'{"id": 7}')
    del db.store.ledger[7]  # its effect committed already (or its transaction rolled back)
    fresh = ledger_job(db, 8, b'{"id": 8}')
    assert worker(db).run_batch([done, fresh]) == [b"", b"done 8"]
    assert db.store.writes == ["INSERT 8"]


def test_one_failing_job_rolls_the_batch_back_and_the_others_run_alone(
    db: FakeDatabase,
) -> None:
    jobs = [ledger_job(db, 1, b'{"id": 1}'), ledger_job(db, 2, b'{"id": 2, "fail": true}'),
            ledger_job(db, 3, b'{"id": 3}')]
    answers = worker(db).run_batch(jobs)
    assert answers == [b"done 1", None, b"done 3"]
    # Job 1's first write was rolled back with the batch: each effect is there once.
    assert db.store.writes == ["INSERT 1", "INSERT 3"]
    assert set(db.store.ledger) == {2}, "the failed job's row stays for its retry"
    assert 0.5 <= db.store.due_in[2] <= 1, "due again after the back-off (1s, jittered)"
    assert db.store.outbox == [], "a ledger job is retried through its own row"


def test_a_failed_batch_of_a_python_handler_is_not_halved_but_run_job_by_job(
    db: FakeDatabase,
) -> None:
    """A Python handler may act outside the transaction (a request, a file), which every run
    of a job repeats: after a failed batch each of its jobs runs once more, alone, however
    large the batch (the halving of sql: batches would run some of them several times)."""
    from workerhost.host.runner import ALONE_FROM

    bad = ledger_job(db, 99, b'{"id": 99, "fail": true}')
    worker(db).run_batch([bad])
    bad_alone, db.commits = db.commits, 0
    jobs = [ledger_job(db, i, b'{"id": %d}' % i) for i in range(1, 4 * ALONE_FROM)]
    jobs.insert(5, ledger_job(db, 100, b'{"id": 100, "fail": true}'))
    answers = worker(db).run_batch(jobs)
    assert answers.count(None) == 1
    assert db.commits == len(jobs) - 1 + bad_alone, "one transaction per job, after the batch"
    assert db.store.writes == [f"INSERT {i}" for i in range(1, 4 * ALONE_FROM)]


def test_a_job_with_earlier_failures_is_deferred_and_dead_lettered_on_its_last(
    db: FakeDatabase,
) -> None:
    job = ledger_job(db, 4, b'{"id": 4, "fail": true}')
    db.store.attempts[job.key] = (1, "RuntimeError: job 4 fails", None)
    other = ledger_job(db, 5, b'{"id": 5}')
    assert worker(db).run_batch([job, other]) == [None, b"done 5"]
    assert db.store.dead == [("f", b'{"id": 4, "fail": true}', 2, "RuntimeError: job 4 fails")]
    assert db.store.ledger == {}, "a dead letter takes the job's ledger row with it"
    assert job.key not in db.store.attempts


def test_a_job_without_a_ledger_row_is_refused_unless_the_handler_accepts_any(
    db: FakeDatabase,
) -> None:
    loose = Job(function="f", payload=b'{"id": 9}', unique="u-9", handle="H:9",
                unique_sent="u-9")
    assert worker(db).run_batch([loose]) == [None]
    (refusal,) = db.store.refused
    assert refusal[:3] == ("f", b"u-9", b'{"id": 9}')
    assert refusal[3].startswith("refused: the job names no ledger row")
    assert db.store.writes == [] and db.store.dead == [], "refused: never a dead letter"
    assert worker(db, accept="any").run_batch([loose]) == [b"done 9"]


def test_a_job_naming_another_functions_ledger_row_is_refused_and_the_row_kept(
    db: FakeDatabase,
) -> None:
    forged = ledger_job(db, 6, b'{"id": 6}', function="payroll")
    assert worker(db).run_batch([forged]) == [None]
    assert db.store.ledger == {6: ("payroll", b'{"id": 6}')}
    assert db.store.refused[0][3] == ("refused: ledger row 6 belongs to 'payroll', not to "
                                      "this function")
    assert db.store.writes == [] and db.store.dead == []


def test_copies_of_one_delivery_in_a_batch_run_once(db: FakeDatabase) -> None:
    first = ledger_job(db, 1, b'{"id": 1}')
    copy_ = ledger_job(db, 1, b'{"id": 1}')
    other = ledger_job(db, 2, b'{"id": 2}')
    assert worker(db).run_batch([first, other, copy_]) == [b"done 1", b"done 2", b""]
    assert db.store.writes == ["INSERT 1", "INSERT 2"]
    assert db.store.ledger == {}


def test_a_forged_token_is_refused_and_the_real_copy_beside_it_runs_once(
    db: FakeDatabase,
) -> None:
    forged = ledger_job(db, 3, b'{"id": 3}', proof="0" * 32)
    real = ledger_job(db, 3, b'{"id": 3}')
    assert worker(db).run_batch([forged]) == [None]
    (refusal,) = db.store.refused
    assert "without the row's token" in refusal[3]
    assert db.store.attempts == {} and db.store.dead == [], "a forgery counts no failure"
    assert db.store.ledger[3] == ("f", b'{"id": 3}'), "the row is untouched"
    # Beside the real delivery: the forgery is dealt with after the batch, whose commit took
    # the row, so it is answered without running.
    assert worker(db).run_batch([forged, real]) == [b"", b"done 3"]
    assert db.store.writes == ["INSERT 3"]


def test_a_forged_delivery_of_a_failing_row_counts_nothing_and_runs_nothing(
    db: FakeDatabase,
) -> None:
    failing = ledger_job(db, 4, b'{"id": 4, "fail": true}')
    forged = ledger_job(db, 4, b'{"id": 4, "fail": true}', proof="f" * 32)
    for _ in range(5):
        assert worker(db).run_batch([forged]) == [None]
    assert db.store.attempts == {}, "failures count only for deliveries with the row's token"
    assert worker(db).run_batch([failing]) == [None]
    assert db.store.attempts[failing.key][0] == 1
    assert failing.key == b"f\0L4", "counted per ledger row, whatever the unique says"


def test_a_row_another_transaction_holds_waits_and_the_others_run(db: FakeDatabase) -> None:
    held = ledger_job(db, 5, b'{"id": 5}')
    free = ledger_job(db, 6, b'{"id": 6}')
    db.store.held.add(5)
    answers = worker(db).run_batch([held, free])
    assert answers[1] == b"done 6" and answers[0] is LATER
    assert db.store.attempts == {}, "waiting is no attempt"
    db.store.held.clear()  # its transaction committed
    assert worker(db).run_batch([held]) == [b"done 5"]


def test_a_copy_of_a_row_waiting_for_its_retry_does_not_run_early(db: FakeDatabase) -> None:
    job = ledger_job(db, 7, b'{"id": 7}')
    db.store.early.add(7)
    assert worker(db).run_batch([job]) == [b""]
    assert db.store.writes == [] and 7 in db.store.ledger


def test_outcomes_are_one_vocabulary() -> None:
    from workerhost.observe import metrics

    assert metrics.OUTCOMES == tuple(outcome.value for outcome in Outcome)
    assert str(Outcome.COMPLETE) == "complete"


@pytest.mark.parametrize(("handler", "together"), [
    ({"sql": "UPDATE t SET a = 1 WHERE id = %(id)s"}, True),
    ({"sql": ["INSERT INTO t (id) VALUES (%(id)s)", "delete from u WHERE id = %(id)s"]}, True),
    ({"sql": "REPLACE INTO t (id) VALUES (%(id)s)"}, True),
    # Anything that could answer with more than one result, or none, runs job by job.
    ({"sql": "UPDATE t SET a = 'x;y' WHERE id = %(id)s"}, False),
    ({"sql": "CALL recompute(%(id)s)"}, False),
    ({"sql": "/* first */ UPDATE t SET a = 1 WHERE id = %(id)s"}, False),
    ({"python": "test_worker:handler_calls"}, False),
    ({"command": ["cat"], "sql": "UPDATE t SET a = %(a)s WHERE id = 1"}, False),
])
def test_only_single_writes_of_sql_handlers_run_a_batch_in_one_query(
    handler: dict[str, Any], together: bool
) -> None:
    from workerhost.host import handlers

    config = parse_config({
        "gearman": {"servers": ["127.0.0.1:4999"]},
        "database": {"user": "u", "database": "d"},
        "handlers": {"f": handler},
    }, file="test.yaml")
    assert handlers.runs_together(config.handlers["f"]) is together


def test_a_paused_functions_jobs_are_parked_and_run_nothing(db: FakeDatabase) -> None:
    jobs = [ledger_job(db, 11, b'{"id": 11}'), ledger_job(db, 12, b'{"id": 12}')]
    db.store.paused.add("f")
    assert worker(db).run_batch(jobs) == [b"", b""]
    assert db.store.writes == [] and db.store.parked == {11, 12}
    assert set(db.store.ledger) == {11, 12}, "the rows wait in the ledger"
    assert db.store.attempts == {}
    db.store.paused.clear()  # resumed: the relay ships the rows again, and they run
    assert worker(db).run_batch(jobs) == [b"done 11", b"done 12"]


def test_a_held_job_found_free_wakes_the_jobs_held_as_long_or_longer() -> None:
    """A bulk INSERT's transaction commits: the first of its jobs tried again finds its row,
    and the others held with it (or before it) are tried at once, not at the end of their
    back-off; jobs held since later, by other transactions, keep theirs."""
    from workerhost.host import worker as worker_module

    def held(since: float, next_try: float) -> Any:
        return worker_module._Held(cast(Any, None), since, next_try=next_try)

    now = time.monotonic()
    earlier, same, later = held(now - 3, now + 60), held(now - 2, now + 60), held(now - 1, now + 60)
    tried = held(now - 2, now)
    worker_module._wake([earlier, same, later], [tried], [b"done"])
    assert earlier.next_try <= time.monotonic() and same.next_try <= time.monotonic()
    assert later.next_try == now + 60
    # Still held when tried again: nothing is woken.
    still = held(now - 1, now + 60)
    worker_module._wake([still], [held(now - 1, now)], [LATER])
    assert still.next_try == now + 60


def test_a_process_leaves_new_jobs_to_a_sibling_only_while_it_takes_them_as_they_come(
    db: FakeDatabase,
) -> None:
    """What a handler's processes tell each other through their slots: a lower-numbered one
    takes new jobs while its intake is ahead; a batch it begins caps that at TAKEN_WITHIN;
    a full batch, a stop or a lost server ends it; `busy` passes over an idle one."""
    import multiprocessing

    from workerhost.gearman.conn import WorkerConnection
    from workerhost.host import worker as worker_module
    from workerhost.host.supervisor import new_slot

    leader, follower = new_slot(), new_slot()
    config = worker(db).config
    handler = config.handlers["f"]
    first = Worker(config, handler, leader, database=cast(Any, db))
    second = Worker(config, handler, follower, database=cast(Any, db), siblings=[leader])
    assert Worker(config, handler, follower, database=cast(Any, db),
                  siblings=[worker_module.Slot(multiprocessing.Value("d", 0.0),
                                               multiprocessing.Array("c", 8),
                                               multiprocessing.Value("Q", 0))]).siblings == []
    assert not second.sibling_takes(), "a sibling that never said so"

    conn = WorkerConnection(config.gearman.servers[0], b"f", b"t")
    conn.sock = cast(Any, object())  # connected, asleep: as after a NO_JOB
    conn.sleeping = True
    first._publish_intake([conn], held=0, waiting=0, limit=8)
    assert second.sibling_takes() and not second.sibling_takes(busy=True), "idle"
    first._publish_intake([conn], held=3, waiting=0, limit=8)
    assert second.sibling_takes(busy=True), "gathering a batch"

    first._batch_begins(time.monotonic() - worker_module.TAKEN_WITHIN / 2)
    assert second.sibling_takes(busy=True), "a batch begun a moment ago"
    first._batch_begins(time.monotonic() - worker_module.TAKEN_WITHIN)
    assert not second.sibling_takes(), "a batch running past TAKEN_WITHIN"
    first._publish_intake([conn], held=1, waiting=0, limit=8)
    first._batch_begins(time.monotonic(), expected=worker_module.TAKEN_WITHIN)
    assert not second.sibling_takes(), "a batch of slow jobs, just begun"

    first._publish_intake([conn], held=8, waiting=0, limit=8)
    assert not second.sibling_takes(), "a full batch in hand"
    first._publish_intake([conn], held=0, waiting=0, limit=8)
    first.stopping = True
    first._publish_intake([conn], held=0, waiting=0, limit=8)
    assert not second.sibling_takes(), "stopping"
    first.stopping = False
    conn.sock = None
    first._publish_intake([conn], held=0, waiting=0, limit=8)
    assert not second.sibling_takes(), "cut off from a server"
    conn.sock = cast(Any, object())
    first._publish_intake([conn], held=0, waiting=0, limit=8)
    leader.intake.value = time.monotonic() - 0.001
    assert not second.sibling_takes(), "an intake not renewed: a process hung or gone"
    conn.sock = None
