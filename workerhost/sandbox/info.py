"""DIR/sandbox.json: where a sandbox's servers listen and how to log in, for every client."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workerhost.sandbox.options import (
    DEFAULT_DATABASE_SERVER,
)

INFO_FILE = "sandbox.json"


@dataclass
class MysqlInfo:
    host: str
    port: int
    unix_socket: str
    user: str
    password: str


@dataclass
class SandboxInfo:
    """The content of DIR/sandbox.json."""

    gearman: dict[str, Any]
    mysql: MysqlInfo
    plugin_dir: str
    udf_config: str
    pids: dict[str, int] = field(default_factory=dict)
    server: str = DEFAULT_DATABASE_SERVER
    image: str = ""  # MySQL: the container image mysqld runs from

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxInfo:
        return cls(
            gearman=dict(data["gearman"]),
            mysql=MysqlInfo(**data["mysql"]),
            plugin_dir=str(data["plugin_dir"]),
            udf_config=str(data["udf_config"]),
            pids={str(k): int(v) for k, v in data.get("pids", {}).items()},
            server=str(data.get("server", DEFAULT_DATABASE_SERVER)),
            image=str(data.get("image", "")),
        )
