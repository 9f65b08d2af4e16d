"""Operations examples: the annotated config documents every key and loads; the unit verifies."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

from workerhost import config

ANNOTATED = ROOT / "examples" / "workerhost.annotated.yaml"
SERVICE = ROOT / "examples" / "workerhost.service"
SECTIONS = {
    "top": config._TOP_KEYS, "gearman": config._GEARMAN_KEYS,
    "database": config._DATABASE_KEYS, "host": config._HOST_KEYS, "relay": config._RELAY_KEYS,
    "handlers.NAME": config._HANDLER_KEYS, "retries": config._RETRY_KEYS,
    "schedules[]": config._SCHEDULE_KEYS, "scheduler": config._SCHEDULER_KEYS,
    "triggers[]": config._TRIGGER_KEYS, "console": config._CONSOLE_KEYS,
    "console.users.NAME": config._CONSOLE_USER_KEYS,
}  # fmt: skip


@pytest.mark.parametrize("section", SECTIONS)
def test_the_annotated_example_mentions_every_key(section: str) -> None:
    text = ANNOTATED.read_text()
    missing = [key for key in SECTIONS[section] if not re.search(rf"\b{key}:", text)]
    assert not missing, f"{section}: document {missing} in {ANNOTATED.name}"


def test_the_annotated_example_is_a_valid_config() -> None:
    loaded = config.load_config(ANNOTATED, env={"DB_PASSWORD": "x"})
    assert loaded.host.metrics is not None and str(loaded.host.metrics) == "127.0.0.1:9464"
    assert loaded.handlers["award_points"].timeout == 30.0  # from the x- anchor
    assert loaded.handlers["confirm_order"].on_no_rows == "retry"
    assert [t.delivery for t in loaded.triggers] == ["immediate", "outbox"]


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # The unit names /opt/workerhost; point it at an executable that exists here.
    unit = tmp_path / "workerhost.service"
    unit.write_text(SERVICE.read_text().replace("/opt/workerhost/.venv/bin/workerhost",
                                                "/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60, check=False)
    problems = [line for line in result.stderr.splitlines() if "workerhost.service" in line]
    assert not problems, result.stderr


def test_the_annotated_example_has_schedules_of_both_kinds() -> None:
    loaded = config.load_config(ANNOTATED, env={"DB_PASSWORD": "x"})
    assert [(s.name, s.cron, s.every, s.timezone) for s in loaded.schedules] == [
        ("nightly_report", "30 2 * * *", None, "Europe/Paris"), ("heartbeat", None, 300, "UTC")]
    assert loaded.host.scheduler.enabled
