"""Operations examples: the annotated config documents every key and loads; the unit verifies."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from workerhost.config import load

ANNOTATED = ROOT / "examples" / "workerhost.annotated.yaml"
SERVICE = ROOT / "examples" / "workerhost.service"
SECTIONS = {
    "top": load._TOP_KEYS, "gearman": load._GEARMAN_KEYS,
    "database": load._DATABASE_KEYS, "host": load._HOST_KEYS, "relay": load._RELAY_KEYS,
    "handlers.NAME": load._HANDLER_KEYS, "retries": load._RETRY_KEYS,
    "schedules[]": load._SCHEDULE_KEYS, "scheduler": load._SCHEDULER_KEYS,
    "triggers[]": load._TRIGGER_KEYS, "console": load._CONSOLE_KEYS,
    "console.users.NAME": load._CONSOLE_USER_KEYS,
}  # fmt: skip


@pytest.mark.parametrize("section", SECTIONS)
def test_the_annotated_example_mentions_every_key(section: str) -> None:
    text = ANNOTATED.read_text()
    missing = [key for key in SECTIONS[section] if not re.search(rf"\b{key}:", text)]
    assert not missing, f"{section}: document {missing} in {ANNOTATED.name}"


def test_the_annotated_example_is_a_valid_config() -> None:
    loaded = load.load_config(ANNOTATED, env={"DB_PASSWORD": "x"})
    assert loaded.host.metrics is not None and str(loaded.host.metrics) == "127.0.0.1:9464"
    assert loaded.handlers["award_points"].timeout == 30.0  # from the x- anchor
    assert loaded.handlers["confirm_order"].on_no_rows == "retry"
    assert [t.delivery for t in loaded.triggers] == ["immediate", "outbox"]


def test_the_annotated_example_checks_as_it_stands_in_an_empty_folder(tmp_path: Path) -> None:
    copy = tmp_path / "workerhost.yaml"
    shutil.copy(ANNOTATED, copy)
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith(("GEARMAN_", "DB_"))}
    checked = subprocess.run([sys.executable, "-m", "workerhost.cli", "check", "-c", str(copy)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
                             check=False)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{copy}: valid")
    loaded = load.load_config(copy, env={})
    assert [str(s) for s in loaded.gearman.servers] == ["127.0.0.1:4730"], "one gearmand"


def test_the_examples_never_say_a_job_runs_before_its_commit() -> None:
    for example in (ANNOTATED, ROOT / "examples" / "shop.yaml"):
        text = " ".join(example.read_text().replace("#", " ").split())
        assert "before the commit" not in text.replace("never runs before the commit", ""), \
            example.name
        assert "before the INSERT commits" not in text, example.name
    assert "either python: or sql:, never both" not in ANNOTATED.read_text()


def test_the_readme_links_the_annotated_example() -> None:
    assert "(examples/workerhost.annotated.yaml)" in (ROOT / "README.md").read_text()


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


def test_the_systemd_unit_creates_its_user_first_and_names_no_missing_file() -> None:
    steps = SERVICE.read_text()
    assert steps.index("useradd") < steps.index("-g workerhost"), "the group must exist first"
    assert "Documentation=" not in steps.replace("# No Documentation=", "")


def test_the_systemd_unit_rates_under_4_in_systemd_analyze_security(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "workerhost.service"
    unit.write_text(SERVICE.read_text().replace("/opt/workerhost/.venv/bin/workerhost",
                                                "/bin/true"))
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                            capture_output=True, text=True, timeout=60, check=False)
    found = re.search(r"Overall exposure level for workerhost.service: ([0-9.]+)",
                      result.stdout)
    if found is None and "--offline" in result.stderr:
        pytest.skip("this systemd-analyze cannot rate a unit file offline (systemd < 250)")
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) < 4.0, result.stdout


def test_the_annotated_example_has_schedules_of_both_kinds() -> None:
    loaded = load.load_config(ANNOTATED, env={"DB_PASSWORD": "x"})
    assert [(s.name, s.cron, s.every, s.timezone) for s in loaded.schedules] == [
        ("nightly_report", "30 2 * * *", None, "Europe/Paris"), ("heartbeat", None, 300, "UTC")]
    assert loaded.host.scheduler.enabled
