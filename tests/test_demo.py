"""scripts/demo.py (`make demo`): the whole path on a sandbox of its own, as a newcomer runs it.

It passes and points to the deployment guide; a demo that does not finish keeps its directory
(the host's and the servers' logs) and says where, and leaves no process behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scripts" / "demo.py"

pytestmark = pytest.mark.slow  # `make test` builds the UDF it installs (make udf) first


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A short directory for the demo's own temporary one: a server's socket path must stay
    under 108 bytes, which pytest's tmp_path under /tmp/pytest-of-USER/... can exceed."""
    path = Path(tempfile.mkdtemp(prefix="whdemo-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def demo(tmp_path: Path, *argv: str) -> subprocess.Popen[str]:
    # Its temporary directory inside tmp_path, so that nothing it leaves escapes the test.
    env = dict(os.environ, TMPDIR=str(tmp_path))
    return subprocess.Popen([sys.executable, str(DEMO), *argv], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def left(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("workerhost-demo-*"))


def no_process_under(path: Path) -> bool:
    """No process whose command line names `path` (the sandbox's servers name their dirs)."""
    found = subprocess.run(["pgrep", "-f", str(path)], capture_output=True, text=True)
    return found.stdout.strip() == ""


def test_the_demo_passes_cleans_up_and_points_to_the_deployment_guide(tmp_path: Path) -> None:
    proc = demo(tmp_path)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    assert "demo: every order came back: OK" in out
    assert "docs/deploy.md" in out.splitlines()[-1]
    assert (ROOT / "docs" / "deploy.md").is_file()
    assert left(tmp_path) == [], out
    assert no_process_under(tmp_path)


def test_a_demo_that_does_not_finish_keeps_its_logs_and_stops_its_servers(
    tmp_path: Path,
) -> None:
    proc = demo(tmp_path)
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 180
    for line in proc.stdout:  # stopped once the host runs: its log then exists
        seen.append(line)
        if "workers registered with gearmand" in line or time.monotonic() > deadline:
            break
    os.kill(proc.pid, signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    out = "".join(seen) + rest
    assert proc.returncode == 130, out
    [kept] = left(tmp_path)
    assert f"kept {kept}" in out
    assert (kept / "workerhost.log").stat().st_size > 0
    assert list((kept / "sandbox").glob("*/*.log")), sorted(kept.rglob("*.log"))
    assert "demo: every order came back" not in out
    assert no_process_under(tmp_path)
