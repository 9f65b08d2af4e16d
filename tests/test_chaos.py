"""The short form of `make chaos`: rows through random SIGKILLs, on each server.

gearmand (its queue in memory), workers, the relay, the whole host and the database server
are killed or restarted while rows go in; handlers that are not idempotent must have had their
effect exactly once for every committed row, for both deliveries.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, SERVERS, server_id


@pytest.mark.slow
@pytest.mark.parametrize("server", SERVERS, ids=server_id)
def test_nothing_lost_and_nothing_applied_twice_through_random_kills(server: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chaos.py"), "--server", server,
         "--rows", "2000", "--seconds", "8"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "chaos: OK: nothing lost, nothing applied twice" in done.stdout
    for delivery in ("immediate", "outbox"):
        assert f"{delivery:10} {2000:>8} {0:>6} {0:>14}" in done.stdout, done.stdout
    assert "database x1" in done.stdout, "the database server was restarted once"
