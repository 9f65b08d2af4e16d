"""What every verb shares: where the config file is found, and loading it."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workerhost.config.settings import Config

# Where the configuration is looked for when neither -c nor WORKERHOST_CONFIG names one: the
# file the systemd unit runs with, so that an operator on that machine can leave -c out.
DEFAULT_CONFIG = Path("/etc/workerhost/workerhost.yaml")
CONFIG_ENV = "WORKERHOST_CONFIG"
CONFIG_HELP = (f"the YAML file; default: ${CONFIG_ENV}, else {DEFAULT_CONFIG}; "
               "may stand anywhere on the line")


class NoConfigFile(Exception):
    """Neither -c, nor WORKERHOST_CONFIG, nor the default file: a usage error (exit 2)."""


def config_path(given: Path | None, environ: Mapping[str, str]) -> Path:
    """The file of -c, else of WORKERHOST_CONFIG, else DEFAULT_CONFIG when it exists."""
    if given is not None:
        return given
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    if DEFAULT_CONFIG.exists():
        return DEFAULT_CONFIG
    raise NoConfigFile(f"no configuration file: give -c FILE, set {CONFIG_ENV}=FILE, or "
                       f"write {DEFAULT_CONFIG}")


def plural(count: int, noun: str) -> str:
    """`1 dead letter`, `2 dead letters`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def load(args: argparse.Namespace, *, import_handlers: bool = False) -> Config:
    """The file of -c; its python: handlers imported only for the verbs that run or check
    them (check, doctor, run)."""
    from workerhost.config.load import load_config

    return load_config(args.config, import_handlers=import_handlers)
