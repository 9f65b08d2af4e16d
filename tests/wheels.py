"""The package built and installed as a user gets it, without a package index: shared by
tests/test_packaging.py and tests/test_deploy.py.

`python -m build` takes setuptools from pip's configured local sources only, and pip installs
the wheel's dependencies from wheels repacked from the checkout's virtualenv (the versions the
rest of the suite runs with). Any address pip would reach (an index, a proxy) is a closed port
on loopback, so a test that needs the network fails instead of reaching it; file:// sources
still answer.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import importlib.metadata
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

from conftest import ROOT
from packaging.requirements import Requirement
from packaging.tags import sys_tags
from packaging.utils import canonicalize_name

from workerhost.sandbox.processes import free_port

BUILD_TIMEOUT = 600.0  # seconds: the sdist, then the wheel in a build environment of its own


def clean_env(**extra: str) -> dict[str, str]:
    """An environment with nothing of the checkout in it: no PYTHONPATH, no virtualenv of the
    checkout on PATH. HOME stays, so that pip finds its configuration and cache."""
    path = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
            if p and not Path(p).resolve().is_relative_to(ROOT)]
    env = {"PATH": os.pathsep.join(path), "LANG": "C.UTF-8"}
    for name in ("HOME", "TMPDIR", "XDG_CACHE_HOME", "PIP_CACHE_DIR", "PIP_INDEX_URL"):
        if name in os.environ:
            env[name] = os.environ[name]
    return {**env, **extra}


def offline_env(**extra: str) -> dict[str, str]:
    """`clean_env` with pip kept off the network: an index or a proxy it would reach is a
    closed port on loopback; file:// sources still answer."""
    closed = f"http://127.0.0.1:{free_port()}"
    return clean_env(PIP_PROXY=closed, HTTP_PROXY=closed, HTTPS_PROXY=closed, PIP_RETRIES="0",
                     PIP_TIMEOUT="5", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)


def install_env(wheelhouse: Path, **extra: str) -> dict[str, str]:
    """`offline_env` for pip install: no index, the wheelhouse as its only source."""
    return offline_env(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheelhouse), **extra)


def run(argv: Sequence[str | Path], cwd: Path, env: dict[str, str],
        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
    return result.stdout


# setuptools writes the sdist's tree into the checkout itself (workerhost-<version>/, then
# removed) and its egg-info beside it: two builds at once (test_packaging.py and
# test_deploy.py on two xdist workers) remove each other's files. They take turns.
BUILD_LOCK = ROOT / "build" / "python-build.lock"


def build(out: Path) -> subprocess.CompletedProcess[str]:
    """`python -m build` of the checkout into `out`: the sdist, then the wheel built from the
    sdist (so a file the sdist lacks fails the wheel, and nothing is built into the
    checkout's own build/ directory). One build at a time (BUILD_LOCK)."""
    BUILD_LOCK.parent.mkdir(exist_ok=True)
    with BUILD_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = run([sys.executable, "-m", "build", "--outdir", out, ROOT], cwd=out,
                    env=offline_env(), timeout=BUILD_TIMEOUT)
    assert built.returncode == 0, (
        "python -m build failed; without network it needs setuptools>=77 from a local source "
        f"of pip's configuration:\n{built.stdout[-3000:]}{built.stderr[-3000:]}")
    return built


def repack(dist: importlib.metadata.Distribution, out: Path) -> Path:
    """An installed distribution packed back into a wheel: its files in site-packages, with a
    RECORD of their hashes (scripts are left out: pip writes them from entry_points.txt)."""
    tags = [line.split(":", 1)[1].strip() for line in (dist.read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")]
    supported = {str(tag) for tag in sys_tags()}
    tag = next((tag for tag in tags if tag in supported), None)  # py2-none-any comes first
    assert tag, f"{dist.metadata['Name']}: no tag of {tags} fits this interpreter"
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    wheel = out / f"{name}-{dist.version}-{tag}.whl"
    records = []
    skipped = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        record_name = ""
        for item in dist.files or []:
            parts = item.parts
            if ".." in parts or "__pycache__" in parts:
                continue
            if parts[0].endswith(".dist-info") and len(parts) == 2:
                if parts[1] == "RECORD":
                    record_name = str(item)
                if parts[1] in skipped:
                    continue
            data = Path(str(dist.locate_file(item))).read_bytes()
            archive.writestr(str(item), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            records.append(f"{item},sha256={digest.decode()},{len(data)}")
        assert record_name, f"{dist.metadata['Name']} has no RECORD"
        archive.writestr(record_name, "\n".join([*records, f"{record_name},,", ""]))
    return wheel


def dependencies(wheel: Path) -> list[importlib.metadata.Distribution]:
    """The distributions that the wheel's requirements need, as installed here."""
    with zipfile.ZipFile(wheel) as archive:
        [metadata] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        wanted = [line.split(":", 1)[1].strip()
                  for line in archive.read(metadata).decode().splitlines()
                  if line.startswith("Requires-Dist:")]
    found: dict[str, importlib.metadata.Distribution] = {}
    while wanted:
        requirement = Requirement(wanted.pop())
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        key = canonicalize_name(requirement.name)
        if key not in found:
            found[key] = importlib.metadata.distribution(requirement.name)
            wanted += found[key].requires or []
    return list(found.values())


def repack_dependencies(wheel: Path, out: Path) -> Path:
    """`out` with a wheel of each of `wheel`'s dependencies, repacked from this virtualenv."""
    for dist in dependencies(wheel):
        repack(dist, out)
    return out
