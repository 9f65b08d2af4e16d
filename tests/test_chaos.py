"""The short form of `make chaos`: rows through random SIGKILLs, on each server.

gearmand (its queue in memory), workers, the relay, the whole host and the database server
are killed or restarted while rows go in; handlers that are not idempotent must have had their
effect exactly once for every committed row, for both deliveries. The two-gearmand mode (a
second gearmand, a 300ms lease, stalled workers) runs on the first server only: what it adds
is copies of rows on both gearmand servers, which reach the database the same way on each. The
enqueue mode takes its jobs from a hand-written trigger (CALL workerhost_enqueue) and from
workerhost.enqueue in the application's transactions, some rolled back on purpose.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT, SERVERS, server_id


def chaos(server: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chaos.py"), "--server", server, *args],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "chaos: OK: nothing lost, nothing applied twice" in done.stdout
    return done


@pytest.mark.slow
@pytest.mark.parametrize("server", SERVERS, ids=server_id)
def test_nothing_lost_and_nothing_applied_twice_through_random_kills(server: str) -> None:
    done = chaos(server, "--rows", "2000", "--seconds", "8")
    for delivery in ("immediate", "outbox"):
        assert f"{delivery:10} {2000:>8} {0:>6} {0:>14}" in done.stdout, done.stdout
    assert "database x1" in done.stdout, "the database server was restarted once"


@pytest.mark.slow
@pytest.mark.parametrize("server", SERVERS[:1], ids=server_id)
def test_two_gearmand_servers_a_short_lease_and_stalled_workers_apply_each_row_once(
        server: str) -> None:
    done = chaos(server, "--mode", "two-gearmand", "--rows", "1000", "--seconds", "8")
    again = 0
    for delivery in ("immediate", "outbox"):
        found = re.search(rf"^{delivery} +1000 +0 +0 +(\d+)$", done.stdout, re.MULTILINE)
        assert found, done.stdout
        again += int(found.group(1))
    assert again > 0, f"no row shipped more than once: the mode did not work\n{done.stdout}"
    assert "stall x" in done.stdout, done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("server", SERVERS, ids=server_id)
def test_enqueued_jobs_run_once_and_rolled_back_ones_never_through_random_kills(
        server: str) -> None:
    """Jobs from a hand-written trigger (CALL workerhost_enqueue when an order becomes paid)
    and from workerhost.enqueue in the application's transactions, some rolled back."""
    done = chaos(server, "--mode", "enqueue", "--rows", "1500", "--seconds", "10")
    committed = {}
    for function in ("paid", "app"):
        found = re.search(rf"^{function} +(\d+) +0 +0 +\d+$", done.stdout, re.MULTILINE)
        assert found, done.stdout
        committed[function] = int(found.group(1))
    rolled = re.search(r"rolled back on purpose: (\d+) of (\d+) transactions, (\d+) orders; "
                       r"effects of jobs that must not run: paid 0 \(rolled back 0\), app 0 "
                       r"\(rolled back 0\)$", done.stdout, re.MULTILINE)
    assert rolled, done.stdout
    orders = int(rolled.group(3))
    assert orders > 0, "no transaction was rolled back: the mode did not work"
    assert committed["app"] + orders == 1500, done.stdout
    # The trigger's condition: two orders in three are paid (33 or 34 of each transaction's
    # 50), the others cancelled, and no order paid twice enqueues twice.
    batches = committed["app"] // 50
    assert batches * 33 <= committed["paid"] <= batches * 34, done.stdout
    assert "database x1" in done.stdout, "the database server was restarted once"
