"""`workerhost sandbox up | down | status | install-udf`."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from workerhost.exitcodes import (
    RET_ERROR,
    RET_OK,
)

DEFAULT_SANDBOX_DIR = ".sandbox"


def sandbox_up(args: argparse.Namespace) -> int:
    from workerhost.sandbox.stack import Sandbox

    box = Sandbox(args.dir, server=args.server)
    started = box.up(gearman_port=args.gearman_port, mysql_port=args.mysql_port,
                     gearman_queue=args.gearman_queue, gearman_threads=args.gearman_threads)
    if args.install_udf:
        box.install_udf(args.install_udf)
    info = box.info
    assert info is not None
    if not started:
        print(f"sandbox in {box.dir} already runs; nothing changed")
    else:
        print(f"sandbox up in {box.dir}")
    print(f"  gearmand  {box.gearman_server}")
    print(f"  {box.database_process:9} 127.0.0.1:{box.mysql_port}  socket {box.unix_socket}")
    print(f"  logs      {box.gearmand_log}  {box.mysql_log}")
    print(f"  user {info.mysql.user}, password in {box.dir / 'sandbox.json'}")
    return RET_OK


def sandbox_down(args: argparse.Namespace) -> int:
    from workerhost.sandbox.stack import Sandbox

    box = Sandbox(args.dir)
    stopped = box.down()
    print(f"stopped {', '.join(stopped)}" if stopped else f"nothing runs in {box.dir}")
    return RET_OK


def sandbox_status(args: argparse.Namespace) -> int:
    from workerhost.sandbox.stack import Sandbox

    box = Sandbox(args.dir)
    state = box.status()
    if args.json:
        info = asdict(box.info) if box.info else None
        print(json.dumps({"dir": str(box.dir), "running": state, "info": info}, indent=2))
    elif box.info is None:
        print(f"no sandbox in {box.dir}")
    else:
        for name, running in state.items():
            port = box.gearman_port if name == "gearmand" else box.mysql_port
            pid = box.info.pids.get(name, "-")
            where = f"127.0.0.1:{port}, pid {pid}" if running else f"port {port}"
            print(f"{name:9} {'running' if running else 'stopped':8} {where}")
    # Scripts can ask "is it up?" with the exit status alone.
    return RET_OK if box.info is not None and all(state.values()) else RET_ERROR


def sandbox_install_udf(args: argparse.Namespace) -> int:
    from workerhost.sandbox.stack import Sandbox

    box = Sandbox(args.dir)
    box.install_udf(args.so)
    print(f"UDF installed into {box.plugin_dir} and its functions created")
    return RET_OK
