"""`workerhost udf build | install | uninstall`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workerhost.cli.common import load
from workerhost.exitcodes import (
    RET_OK,
)

if TYPE_CHECKING:
    from workerhost.config.settings import Config


def _udf_connection(args: argparse.Namespace, config: Config) -> Any:
    """The installer's connection: the file's database settings, or an administrator's."""
    import os

    from workerhost.udf.install import connect

    params = config.database.connect_kwargs()
    if args.user:
        params["user"] = args.user
        params["password"] = os.environ.get(args.password_env, "") if args.password_env else ""
    if args.socket:
        params.pop("host", None)
        params.pop("port", None)
        params["unix_socket"] = str(args.socket)
    return connect(params)


def udf_build(args: argparse.Namespace) -> int:
    from workerhost.udf import install as udf_install

    udf_install.build(args.output, print, args.server)
    return RET_OK


def udf_install(args: argparse.Namespace) -> int:
    import tempfile

    from workerhost.udf import install as udf_install

    config = load(args)
    conn = _udf_connection(args, config)
    try:
        with tempfile.TemporaryDirectory(prefix="workerhost-udf-") as work:
            library = args.so or udf_install.build(Path(work) / "gearman_udf.so", print,
                                                   udf_install.server_flavor(conn))
            udf_install.install(conn, library, servers=[str(s) for s in config.gearman.servers],
                                source=str(args.config), config_file=args.config_file,
                                force=args.force, say=print)
    finally:
        conn.close()
    print(f"UDF installed; next: workerhost doctor -c {args.config}")
    return RET_OK


def udf_uninstall(args: argparse.Namespace) -> int:
    from workerhost.udf import install as udf_install

    config = load(args)
    conn = _udf_connection(args, config)
    try:
        udf_install.uninstall(conn, database=config.database.database, force=args.force,
                              say=print)
    finally:
        conn.close()
    return RET_OK
