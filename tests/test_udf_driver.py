"""The C test driver (udf/test_driver.c) under valgrind, against the sandbox's gearmand.

It calls gearman_udf.so's entry points the way mysqld does, so memory errors and leaks in
init/row/deinit, failure paths and unloading show up without a mysqld in between.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ON_FIRST_SERVER

from workerhost.sandbox.stack import Sandbox

ROOT = Path(__file__).resolve().parent.parent
UDF_DIR = ROOT / "udf"


@pytest.mark.slow
@ON_FIRST_SERVER  # the driver needs only gearmand
def test_driver_passes_under_valgrind(sandbox: Sandbox) -> None:
    if shutil.which("valgrind") is None:
        pytest.fail("valgrind is not installed; run: make setup (or apt-get install valgrind)")
    done = subprocess.run(
        ["make", "-C", str(UDF_DIR), "test"],
        env=dict(os.environ, GEARMAN_PORT=str(sandbox.gearman_port)),
        capture_output=True, text=True, timeout=600, check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    summary = re.search(r"^(\d+) passed, (\d+) failed$", done.stdout, re.MULTILINE)
    assert summary is not None, output
    assert int(summary.group(1)) >= 30 and summary.group(2) == "0", output
    assert "not ok" not in done.stdout, output
