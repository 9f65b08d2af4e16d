"""scripts/docker-engine.sh: runs from one checkout share the project's dockerd, and the last
one to finish stops it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, wait_until

SCRIPT = ROOT / "scripts" / "docker-engine.sh"


def engine_answers(env: dict[str, str]) -> bool:
    done = subprocess.run(["docker", "info"], capture_output=True, env=env, check=False,
                          timeout=60)
    return done.returncode == 0


@pytest.mark.slow
def test_two_runs_at_once_share_one_engine_and_the_one_still_running_keeps_it(
        tmp_path: Path) -> None:
    if os.geteuid() != 0 and not engine_answers(dict(os.environ)):
        pytest.skip("starting the project's dockerd needs root")
    started = tmp_path / "first-started"
    # Without an engine of its own in the environment, a run takes the project's path even
    # under make test (whose engine is the project's dockerd, shared through the same lock).
    env = {name: value for name, value in os.environ.items() if name != "DOCKER_HOST"}
    # The first run ends while the second still uses the engine: the second must reach it to
    # the end (with one data root, a second dockerd would not start at all).
    first = subprocess.Popen(
        [str(SCRIPT), "sh", "-c", f"docker info >/dev/null && touch {started} && sleep 2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        wait_until(started.exists, timeout=120, what="the first run's engine")
        second = subprocess.run(
            [str(SCRIPT), "sh", "-c", "sleep 4; docker info >/dev/null && echo still-there"],
            capture_output=True, text=True, timeout=180, check=False, env=env)
        assert first.wait(timeout=60) == 0, first.stdout.read() if first.stdout else ""
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode == 0, second.stdout + second.stderr
    assert "still-there" in second.stdout
    if "DOCKER_HOST" in os.environ or engine_answers(dict(os.environ)):
        return  # a run outside this test (make test's own) holds the engine: it stays
    # No run holds it any more: the last one stopped it, and left nothing mounted.
    state = ROOT / "build" / "docker"
    wait_until(lambda: not engine_answers(dict(os.environ, DOCKER_HOST=f"unix://{state}/"
                                                                        "docker.sock")),
               timeout=60, what="the engine stopped by the last run")
    mounts = Path("/proc/self/mounts").read_text()
    assert f"{state}/" not in mounts
