"""Load ``workerhost.yaml`` into frozen dataclasses.

Every raw value passes through a named converter from ``converters.py``; every error is a
``ConfigError`` naming the file and the dotted key path. Unknown keys are errors.

``${VAR}`` and ``${VAR:-default}`` are replaced from the environment in every string value
(not in keys) before anything else is checked; ``$${`` writes a literal ``${``. Top-level keys
starting with ``x-`` are ignored, to hold YAML anchors (``<<: *handler_defaults``).

Python handlers (``python: package.module:callable``) are imported while the file is loaded, so
``workerhost check`` catches a typo before any job arrives. To let handler modules live next
to the YAML file, ``load_config`` puts the file's directory at the front of ``sys.path`` and
leaves it there, as ``python script.py`` does for the script's directory: imports the handler
makes later, inside a job, must keep working.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar, cast

import yaml
from mysql.connector.constants import ClientFlag

from workerhost import converters as conv
from workerhost import sqlcheck
from workerhost.converters import Server as Server  # re-exported: part of GearmanConfig
from workerhost.converters import show
from workerhost.errors import ConfigError

# Values a file may hold once its YAML aliases are expanded: a large real file holds a few
# thousand; nested aliases can make a 1 KB file hold billions (an "alias bomb").
MAX_YAML_VALUES = 100_000
SECRET_KEYS = ("database.password", "host.console.secret_key")  # values no message may quote
# ... and these, whatever NAME is: the console's passwords.
SECRET_PATTERN = re.compile(r"host\.console\.users\.[^.]+\.password")
DEFAULT_GEARMAN_PORT = 4730  # gearmand's registered port, used when a server omits one
DEFAULT_RECONNECT_BACKOFF = 1.0  # seconds before the first reconnect; doubles, with jitter
DEFAULT_MAX_RECONNECT_BACKOFF = 30.0  # cap, so a restarted gearmand is found within 30s
DEFAULT_DB_HOST = "127.0.0.1"
DEFAULT_DB_PORT = 3306
DEFAULT_CONNECT_TIMEOUT = 5.0  # seconds; a dead database should fail a job, not hang it
DEFAULT_SHUTDOWN_TIMEOUT = 30.0  # seconds running jobs get to finish after SIGTERM
# The relay ships delayed retries and trigger-written jobs; relays on many hosts share the outbox
# safely (SKIP LOCKED), so every host runs one unless told otherwise.
DEFAULT_RELAY_ENABLED = True
DEFAULT_RELAY_BATCH = 500  # outbox rows submitted per round trip
DEFAULT_RELAY_INTERVAL = 0.2  # seconds between polls of an empty outbox
# How long a shipped ledger row waits for its job's effect before it is shipped again (then
# twice as long, up to 16 times): how soon a job gearmand lost runs after all.
DEFAULT_RELAY_LEASE = 30.0
# A ledger row shipped again at this age or older has waited that long for a worker to
# complete it: the relay warns, status lists it (most often no host serves its function).
DEFAULT_RELAY_UNSERVED_AFTER = 600.0
DEFAULT_PROCESSES = 1  # worker processes per handler
DEFAULT_TIMEOUT = 60.0  # seconds one job may run before its worker is killed
DEFAULT_RETRY_ATTEMPTS = 3  # total tries including the first; 1 means never retry
DEFAULT_RETRY_BACKOFF = 1.0  # seconds before the first retry; doubles each time
DEFAULT_RETRY_MAX_BACKOFF = 300.0  # cap on the delay between retries
DEFAULT_BATCH = 64  # jobs per server a process runs in one transaction, at most
DEFAULT_MAX_JOBS = 0  # recycle a worker after this many jobs; 0 means never
DEFAULT_ON_NO_ROWS = "ignore"
DEFAULT_DELIVERY = "immediate"
# The operator console: `workerhost console` listens here unless told otherwise; `workerhost
# run` serves it only when host.console.listen is set.
DEFAULT_CONSOLE_PORT = 9465
CONSOLE_ROLES = ("admin", "viewer")  # viewer may look; admin may also retry and purge
DEFAULT_CONSOLE_ROLE = "viewer"  # the least a user may do, unless the file says more
ON_NO_ROWS = ("ignore", "retry", "dead_letter")  # what to do when a write-back matched no row
# Whose jobs a handler runs: those with a ledger row (fired by a trigger, or shipped from the
# outbox), or any job at all (clients outside the database).
ACCEPT = ("ledger", "any")
Accept = Literal["ledger", "any"]
TRIGGER_EVENTS = ("insert", "update", "delete")
DELIVERIES = ("immediate", "outbox")  # submit from the trigger, or via the outbox table
# What becomes of a schedule's slots that came due while no host led it (scheduler.py): the
# newest of them fires once, every one fires in order, or none does.
CATCH_UPS = ("latest", "all", "none")
DEFAULT_CATCH_UP = "latest"
DEFAULT_SCHEDULE_ZONE = "UTC"  # the time zone cron: expressions are read in
# Keys the host adds to every scheduled job's payload; a payload of the file may not set them.
SCHEDULE_PAYLOAD_KEYS = ("schedule", "slot", "event_id")
# Every host whose file has schedules runs the scheduler; the database picks one per schedule.
DEFAULT_SCHEDULER_ENABLED = True

OnNoRows = Literal["ignore", "retry", "dead_letter"]
Delivery = Literal["immediate", "outbox"]
CatchUp = Literal["latest", "all", "none"]
Role = Literal["admin", "viewer"]
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class GearmanConfig:
    """Where gearmand runs and how hard to retry reaching it."""

    servers: tuple[Server, ...]
    reconnect_backoff: float = DEFAULT_RECONNECT_BACKOFF
    max_reconnect_backoff: float = DEFAULT_MAX_RECONNECT_BACKOFF


@dataclass(frozen=True, kw_only=True)
class DatabaseConfig:
    """The database results are written to; TCP (host, port) or a unix socket."""

    user: str
    database: str
    password: str = field(default="", repr=False)
    host: str | None = DEFAULT_DB_HOST
    port: int | None = DEFAULT_DB_PORT
    unix_socket: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    # TLS, passed to the connector as they are. Left unset, the connector negotiates TLS when
    # the server offers it, without checking its certificate.
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    ssl_verify_cert: bool = False
    ssl_verify_identity: bool = False
    ssl_disabled: bool = False

    def connect_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``mysql.connector.connect``."""
        kwargs: dict[str, object] = {}
        if self.unix_socket is not None:
            kwargs["unix_socket"] = self.unix_socket
        else:
            kwargs["host"] = self.host or DEFAULT_DB_HOST
            kwargs["port"] = self.port or DEFAULT_DB_PORT
        kwargs.update(
            user=self.user,
            password=self.password,
            database=self.database,
            # The connector wants whole seconds; round up so 500ms does not become 0 (no limit).
            connection_timeout=max(1, math.ceil(self.connect_timeout)),
            autocommit=False,
            # Rows matched, not rows changed: an idempotent re-run that changes nothing still
            # matched its row, and must not count as "no row" (on_no_rows).
            client_flags=[ClientFlag.FOUND_ROWS],
        )
        for key in ("ssl_ca", "ssl_cert", "ssl_key"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        for key in ("ssl_verify_cert", "ssl_verify_identity", "ssl_disabled"):
            if getattr(self, key):
                kwargs[key] = True
        return kwargs


@dataclass(frozen=True, kw_only=True)
class RelayConfig:
    """The outbox relay: moves rows from the outbox table to gearmand."""

    enabled: bool = DEFAULT_RELAY_ENABLED
    batch: int = DEFAULT_RELAY_BATCH
    interval: float = DEFAULT_RELAY_INTERVAL
    lease: float = DEFAULT_RELAY_LEASE
    unserved_after: float = DEFAULT_RELAY_UNSERVED_AFTER


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, kw_only=True)
class ConsoleUser:
    """Someone who may log in to the console, and what they may do there."""

    name: str
    password: str = field(repr=False)
    role: Role = "viewer"


@dataclass(frozen=True, kw_only=True)
class ConsoleConfig:
    """The operator console in the browser (console/)."""

    listen: Server | None = None  # where `workerhost run` serves it; None = not at all
    users: Mapping[str, ConsoleUser] = field(default_factory=lambda: MappingProxyType({}))
    # What signs the login sessions; "" = a random key per console process, so a restart
    # logs everyone out.
    secret_key: str = field(default="", repr=False)
    # Addresses whose X-Forwarded-Proto and X-Forwarded-For the console believes (its TLS
    # proxies); anyone else's are ignored, since anyone can send them.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    # Host: names the console answers to without users, beside localhost, 127.0.0.1 and
    # [::1] at its port (a page of another site that a rebinding DNS name points here gets
    # nothing).
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """The scheduler child, which fires the jobs of the schedules: section."""

    enabled: bool = DEFAULT_SCHEDULER_ENABLED


@dataclass(frozen=True, kw_only=True)
class HostConfig:
    """Settings of the host process itself."""

    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    metrics: Server | None = None  # listen address for metrics and health; None = off
    relay: RelayConfig = field(default_factory=RelayConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often and how far apart a failed job is tried again."""

    attempts: int = DEFAULT_RETRY_ATTEMPTS
    backoff: float = DEFAULT_RETRY_BACKOFF
    max_backoff: float = DEFAULT_RETRY_MAX_BACKOFF


@dataclass(frozen=True, kw_only=True)
class HandlerConfig:
    """One Gearman function and how its workers run: a Python callable or SQL statements."""

    name: str
    python: str | None = None  # "package.module:callable" as written
    callable: Callable[..., object] | None = None  # the imported object; None for sql
    sql: tuple[str, ...] = ()
    params: tuple[str, ...] = ()  # %(name)s placeholders of all statements, first use first
    processes: int = DEFAULT_PROCESSES
    timeout: float = DEFAULT_TIMEOUT
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    batch: int = DEFAULT_BATCH  # jobs per gearmand server committed together, at most
    max_jobs: int = DEFAULT_MAX_JOBS
    max_lifetime: float | None = None  # seconds; None means never recycle by age
    on_no_rows: OnNoRows = "ignore"
    accept: Accept = "ledger"
    # A program run per job (payload on stdin, result on stdout); with sql, its JSON output
    # is bound to the statements instead of the payload.
    command: tuple[str, ...] = ()
    max_memory: int | None = None  # bytes a worker process may use before it is recycled
    # What a command: program finds in its environment besides PATH, HOME, LANG, LC_* and
    # WORKERHOST_* (command.py); a name passed through from the host is read at load.
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    # Jobs of the function running at once on every host together, at most (limits:
    # concurrency, held through the database: tables.take_slot); None: no such limit.
    concurrency: int | None = None

    @property
    def kind(self) -> Literal["python", "sql", "command"]:
        if self.command:
            return "command"
        return "python" if self.python is not None else "sql"


@dataclass(frozen=True, kw_only=True)
class TriggerConfig:
    """A table trigger that submits a job (installed by a later feature)."""

    table: str
    events: tuple[str, ...]
    function: str
    columns: tuple[str, ...]
    delivery: Delivery = "immediate"
    when: str | None = None  # an SQL condition on NEW/OLD (sql_condition); None: every row
    on_change: tuple[str, ...] = ()  # update only: fire when one of these columns changed


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """A job submitted at every slot of a timetable (timetable.py): `every` seconds, or a
    `cron` expression read in `timezone`."""

    name: str
    function: str
    every: int | None = None  # seconds; slots at its multiples since the Unix epoch
    cron: str | None = None
    timezone: str = DEFAULT_SCHEDULE_ZONE
    payload: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    catch_up: CatchUp = "latest"


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole file."""

    file: str
    gearman: GearmanConfig
    database: DatabaseConfig
    host: HostConfig
    handlers: Mapping[str, HandlerConfig]  # read-only, in file order
    triggers: tuple[TriggerConfig, ...] = ()
    # Recorded in the triggers this file creates: `triggers --apply` replaces and drops only
    # its own. The file's name without its extension unless set.
    triggers_owner: str = "workerhost"
    schedules: tuple[ScheduleConfig, ...] = ()


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, check and resolve a config file; ``env`` defaults to ``os.environ``."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=file) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", file=file) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror}", file=file) from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        message = f"invalid YAML{_at(exc.problem_mark)}: {exc.problem}"
        if exc.context and exc.context_mark:  # where the unclosed thing began
            message += f" ({exc.context}{_at(exc.context_mark)})"
        raise ConfigError(message, file=file) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=file) from exc
    except RecursionError:
        raise ConfigError("invalid YAML: lists or mappings nested too deeply to read",
                          file=file) from None
    return parse_config(data, file=file, env=env, base_dir=Path(path).resolve().parent)


def parse_config(
    data: object,
    *,
    file: str,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> Config:
    """Check already-parsed YAML ``data``; ``file`` is only used in messages.

    ``base_dir``, if given, goes at the front of ``sys.path`` before handlers are imported.
    """
    host_env = os.environ if env is None else env
    data = _expand(data, "", file, host_env)
    if data is None:
        raise ConfigError("the file is empty; it needs gearman, database and handlers", file=file)
    if isinstance(data, dict):  # "x-" keys hold YAML anchors for reuse, as in docker compose
        data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    top = _Section(data, "", file, _TOP_KEYS, required=("gearman", "database", "handlers"))
    handlers = top.section("handlers", None)
    if not handlers.data:
        raise handlers.error("no handlers defined; add at least one under handlers:")
    if base_dir is not None and str(base_dir) not in sys.path:
        sys.path.insert(0, str(base_dir))
    return Config(
        file=file,
        gearman=_gearman(top.section("gearman", _GEARMAN_KEYS, required=("servers",))),
        database=_database(top.section("database", _DATABASE_KEYS, ("user", "database"))),
        host=_host(top.section("host", _HOST_KEYS)),
        handlers=MappingProxyType({
            handlers.convert(name, conv.function_name, name):
                _handler(handlers.section(name, _HANDLER_KEYS), name, host_env)
            for name in handlers.data
        }),
        triggers=_triggers(top) if top.data.get("triggers") is not None else (),
        schedules=_schedules(top) if top.data.get("schedules") is not None else (),
        triggers_owner=top.get("triggers_owner", conv.owner_name, _default_owner(file)),
    )  # fmt: skip


def _default_owner(file: str) -> str:
    """The file's name without directory and extension, as conv.owner_name would take it."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(file).stem)[:conv.MAX_OWNER_NAME]
    return name or "workerhost"


_TOP_KEYS = ("gearman", "database", "host", "handlers", "triggers", "triggers_owner",
             "schedules")
_GEARMAN_KEYS = ("servers", "reconnect_backoff", "max_reconnect_backoff")
_DATABASE_KEYS = ("host", "port", "unix_socket", "user", "password", "database", "connect_timeout",
                  "ssl_ca", "ssl_cert", "ssl_key", "ssl_verify_cert", "ssl_verify_identity",
                  "ssl_disabled")
_HOST_KEYS = ("shutdown_timeout", "metrics", "relay", "console", "scheduler")
_CONSOLE_KEYS = ("listen", "users", "secret_key", "secret_key_file", "trusted_proxies",
                 "allowed_hosts")
_CONSOLE_USER_KEYS = ("password", "password_file", "role")
_RELAY_KEYS = ("enabled", "batch", "interval", "lease", "unserved_after")
_SCHEDULER_KEYS = ("enabled",)
_SCHEDULE_KEYS = ("name", "function", "every", "cron", "timezone", "payload", "catch_up")
_HANDLER_KEYS = ("python", "sql", "processes", "batch", "timeout", "retries", "max_jobs",
                 "max_lifetime", "on_no_rows", "accept", "command", "max_memory",
                 "env", "limits")  # fmt: skip
_RETRY_KEYS = ("attempts", "backoff", "max_backoff")
_LIMIT_KEYS = ("concurrency",)
_TRIGGER_KEYS = ("table", "events", "function", "columns", "delivery", "when", "on_change")


class _Section:
    """One mapping of the file: checks its keys and converts its values, naming their path."""

    def __init__(self, data: object, path: str, file: str, allowed: Sequence[str] | None,
                 required: Sequence[str] = ()) -> None:  # fmt: skip
        self.path, self.file = path, file
        if data is None:  # a section whose entries are all commented out
            data = {}
        if not isinstance(data, dict):
            raise self.error(f"expected a mapping, got {show(data)}")
        self.data: dict[str, object] = data
        for key in data:
            if not isinstance(key, str):
                raise self.error(f"keys must be strings, got {show(key)}; quote it")
            if allowed is not None and key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.error(f"unknown key {key!r}{hint}; allowed: {', '.join(allowed)}")
        for key in required:
            if key not in data:
                raise self.error(f"missing required key {key!r}")

    def child(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def error(self, message: str, key: str | int | None = None) -> ConfigError:
        path = self.path if key is None else self.child(key)
        return ConfigError(message, file=self.file, path=path or None)

    def convert(self, key: str | int, convert: Callable[[object], T], value: object) -> T:
        try:
            return convert(value)
        except ValueError as exc:
            raise self.error(str(exc), key) from exc

    def get(self, key: str, convert: Callable[[object], T], default: T) -> T:
        return self.convert(key, convert, self.data[key]) if key in self.data else default

    def optional(self, key: str, convert: Callable[[object], T]) -> T | None:
        value = self.data.get(key)
        return None if value is None else self.convert(key, convert, value)

    def section(self, key: str, allowed: Sequence[str] | None,
                required: Sequence[str] = ()) -> _Section:  # fmt: skip
        return _Section(self.data.get(key), self.child(key), self.file, allowed, required)

    def values(
        self, key: str, convert: Callable[[object], T], *, single: bool = False
    ) -> tuple[T, ...]:
        """Convert a non-empty list of distinct values; with ``single`` a lone string will do."""
        value = self.data.get(key)
        if single and isinstance(value, str):
            return (self.convert(key, convert, value),)
        if not isinstance(value, list) or not value:
            raise self.error(f"expected a non-empty list, got {show(value)}", key)
        items = _Section(None, self.child(key), self.file, None)
        converted: list[T] = []
        for index, item in enumerate(value):
            converted.append(items.convert(index, convert, item))
            if converted[-1] in converted[:-1]:
                raise items.error(f"{show(item)} is listed twice", index)
        return tuple(converted)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys instead of keeping the last one silently, and
    aliases that expand the document past MAX_YAML_VALUES before anything is built from it."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *defaults" may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the SafeLoader itself says so below
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand it past MAX_YAML_VALUES, or refer to their own
    container. PyYAML shares an aliased node, but everything that walks the values (merge
    keys, ``${VAR}`` substitution, the checks) walks every copy: a 1 KB file of nested
    aliases is billions of values. Sizes are counted once per node, so this is fast."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # the nodes whose children are being counted: the path
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, counted = stack.pop()
        children = _children(node)
        if counted:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_YAML_VALUES:
                raise yaml.constructor.ConstructorError(
                    None, None, f"with its aliases expanded this holds more than "
                    f"{MAX_YAML_VALUES} values; write the values out, or use fewer aliases",
                    node.start_mark)  # fmt: skip
        elif id(node) in open_nodes:
            raise yaml.constructor.ConstructorError(
                None, None, "an alias refers to the mapping or list that holds it",
                node.start_mark)  # fmt: skip
        elif id(node) not in sizes:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _at(mark: yaml.Mark | None) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _expand(value: object, path: str, file: str, env: Mapping[str, str]) -> object:
    """Substitute environment variables in every string value below ``value``."""
    if isinstance(value, str):
        try:
            secret = path in SECRET_KEYS or SECRET_PATTERN.fullmatch(path) is not None
            return conv.expand_env(value, env, secret=secret)
        except ValueError as exc:
            raise ConfigError(str(exc), file=file, path=path or None) from exc
    if isinstance(value, dict):
        return {
            key: _expand(item, f"{path}.{key}" if path else str(key), file, env)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_expand(item, f"{path}[{i}]", file, env) for i, item in enumerate(value)]
    return value


def _at_least(section: _Section, cap_key: str, cap: float, base_key: str, base: float) -> None:
    if cap < base:
        raise section.error(f"{cap:g}s is less than {base_key} ({base:g}s)", cap_key)


def _gearman(section: _Section) -> GearmanConfig:
    backoff = section.get("reconnect_backoff", conv.positive_duration, DEFAULT_RECONNECT_BACKOFF)
    cap = section.get("max_reconnect_backoff", conv.positive_duration,
                      max(backoff, DEFAULT_MAX_RECONNECT_BACKOFF))  # fmt: skip
    _at_least(section, "max_reconnect_backoff", cap, "reconnect_backoff", backoff)
    servers = section.values(
        "servers", partial(conv.server, default_port=DEFAULT_GEARMAN_PORT), single=True
    )
    return GearmanConfig(servers=servers, reconnect_backoff=backoff, max_reconnect_backoff=cap)


def _database(section: _Section) -> DatabaseConfig:
    socket = section.optional("unix_socket", conv.string)
    for key in ("host", "port"):
        if socket is not None and key in section.data:
            raise section.error(f"{key} cannot be combined with unix_socket", key)
    return DatabaseConfig(
        user=section.get("user", conv.string, ""),
        database=section.get("database", conv.string, ""),
        password=section.get("password", conv.secret, ""),
        host=None if socket else section.get("host", conv.string, DEFAULT_DB_HOST),
        port=None if socket else section.get("port", conv.port, DEFAULT_DB_PORT),
        unix_socket=socket,
        connect_timeout=section.get("connect_timeout", conv.positive_duration,
                                    DEFAULT_CONNECT_TIMEOUT),
        **_tls(section),
    )  # fmt: skip


def _tls(section: _Section) -> dict[str, Any]:
    """The ssl_* keys, checked against each other: a combination the connector would reject
    (or quietly ignore) is refused here, with the key to fix."""
    files = {key: section.optional(key, conv.readable_file)
             for key in ("ssl_ca", "ssl_cert", "ssl_key")}
    flags = {key: section.get(key, conv.boolean, False)
             for key in ("ssl_verify_cert", "ssl_verify_identity", "ssl_disabled")}
    if flags["ssl_disabled"]:
        for key in (*files, "ssl_verify_cert", "ssl_verify_identity"):
            if files.get(key) or flags.get(key):
                raise section.error(f"{key} cannot be combined with ssl_disabled: true", key)
    for given, needed in (("ssl_cert", "ssl_key"), ("ssl_key", "ssl_cert")):
        if files[given] and not files[needed]:
            raise section.error(f"{given} needs {needed} too (a client certificate and its "
                                "private key go together)", given)
    return {**files, **flags}


def _host(section: _Section) -> HostConfig:
    relay = section.section("relay", _RELAY_KEYS)
    return HostConfig(
        shutdown_timeout=section.get("shutdown_timeout", conv.duration, DEFAULT_SHUTDOWN_TIMEOUT),
        metrics=section.optional("metrics", conv.listen_address),
        relay=RelayConfig(
            enabled=relay.get("enabled", conv.boolean, DEFAULT_RELAY_ENABLED),
            batch=relay.get("batch", conv.positive_int, DEFAULT_RELAY_BATCH),
            interval=relay.get("interval", conv.positive_duration, DEFAULT_RELAY_INTERVAL),
            lease=relay.get("lease", conv.positive_duration, DEFAULT_RELAY_LEASE),
            unserved_after=relay.get("unserved_after", conv.positive_duration,
                                     DEFAULT_RELAY_UNSERVED_AFTER),
        ),
        scheduler=SchedulerConfig(enabled=section.section("scheduler", _SCHEDULER_KEYS).get(
            "enabled", conv.boolean, DEFAULT_SCHEDULER_ENABLED)),
        console=_console(section.section("console", _CONSOLE_KEYS)),
    )


def _console(section: _Section) -> ConsoleConfig:
    listen = section.optional("listen", conv.listen_address)
    users = section.section("users", None)
    found: dict[str, ConsoleUser] = {}
    for name in users.data:
        user = users.section(name, _CONSOLE_USER_KEYS)
        given = [key for key in ("password", "password_file") if key in user.data]
        if len(given) != 1:
            raise user.error("needs a password or a password_file (one of them)")
        password = (user.get("password", conv.password, "") if given == ["password"] else
                    user.get("password_file", conv.password_file, ""))
        found[users.convert(name, conv.user_name, name)] = ConsoleUser(
            name=name, password=password,
            role=cast(Role, user.get("role", conv.one_of(*CONSOLE_ROLES), DEFAULT_CONSOLE_ROLE)))
    if listen is not None and not found and not conv.is_loopback(listen.host):
        raise section.error(f"{listen} is reachable from other machines, and no users are "
                            "configured: add users, or listen on 127.0.0.1", "listen")
    keys = [key for key in ("secret_key", "secret_key_file") if key in section.data]
    if len(keys) > 1:
        raise section.error("cannot be combined with secret_key; keep one", keys[1])
    secret_key = (section.get("secret_key", conv.secret_key, "") if keys == ["secret_key"] else
                  section.get("secret_key_file", conv.secret_key_file, ""))
    proxies = (section.values("trusted_proxies", _ip_network, single=True)
               if "trusted_proxies" in section.data else ())
    hosts = (section.values("allowed_hosts", _host_header, single=True)
             if "allowed_hosts" in section.data else ())
    return ConsoleConfig(listen=listen, users=MappingProxyType(found), secret_key=secret_key,
                         trusted_proxies=proxies, allowed_hosts=hosts)


def _ip_network(value: object) -> IPNetwork:
    """An address or a network of them: 10.0.0.5, 10.0.0.0/24, ::1."""
    try:
        return ipaddress.ip_network(conv.string(value).strip(), strict=False)
    except ValueError:
        raise ValueError(f"expected an IP address or network like 10.0.0.0/24, "
                         f"got {conv.show(value)}") from None


def _host_header(value: object) -> str:
    """A Host: header's value as a browser sends it: a name, with :port unless it is the
    scheme's default (console.example.com, console.example.com:9465)."""
    text = conv.string(value).strip().lower()
    if not re.fullmatch(r"(?:[a-z0-9_.-]+|\[[0-9a-f:.]+\])(?::\d{1,5})?", text):
        raise ValueError(f"expected a host name, with :port unless 80 or 443, "
                         f"got {conv.show(value)}")
    return text


def _handler(section: _Section, name: str, host_env: Mapping[str, str]) -> HandlerConfig:
    kinds = [kind for kind in ("python", "sql", "command") if kind in section.data]
    if not kinds:
        raise section.error("needs python, sql or command")
    if "python" in kinds and len(kinds) > 1:
        raise section.error(f"has both python: and {kinds[1]}:; keep one")
    retries = section.section("retries", _RETRY_KEYS)
    policy = RetryPolicy(
        attempts=retries.get("attempts", conv.positive_int, DEFAULT_RETRY_ATTEMPTS),
        backoff=retries.get("backoff", conv.duration, DEFAULT_RETRY_BACKOFF),
        max_backoff=retries.get("max_backoff", conv.duration, DEFAULT_RETRY_MAX_BACKOFF),
    )
    _at_least(retries, "max_backoff", policy.max_backoff, "backoff", policy.backoff)
    python = section.optional("python", conv.python_ref)
    command: tuple[str, ...] = section.get("command", conv.command, ())
    sql = (section.values("sql", conv.sql_statement, single=True)
           if "sql" in section.data else ())
    params = dict.fromkeys(name for statement in sql for name in sqlcheck.placeholders(statement))
    return HandlerConfig(
        name=name,
        python=python,
        callable=section.convert("python", conv.import_callable, python) if python else None,
        sql=sql,
        params=tuple(params),
        processes=section.get("processes", conv.positive_int, DEFAULT_PROCESSES),
        batch=section.get("batch", conv.positive_int, DEFAULT_BATCH),
        timeout=section.get("timeout", conv.positive_duration, DEFAULT_TIMEOUT),
        retries=policy,
        max_jobs=section.get("max_jobs", conv.non_negative_int, DEFAULT_MAX_JOBS),
        max_lifetime=section.optional("max_lifetime", conv.positive_duration),
        on_no_rows=cast(OnNoRows, section.get("on_no_rows", conv.one_of(*ON_NO_ROWS),
                                              DEFAULT_ON_NO_ROWS)),
        accept=cast(Accept, section.get("accept", conv.one_of(*ACCEPT), "ledger")),
        command=command,
        max_memory=section.optional("max_memory", conv.size),
        env=_program_env(section, host_env) if "env" in section.data else MappingProxyType({}),
        concurrency=section.section("limits", _LIMIT_KEYS).optional("concurrency",
                                                                    conv.positive_int),
    )  # fmt: skip


def _program_env(section: _Section, host_env: Mapping[str, str]) -> Mapping[str, str]:
    """handlers.NAME.env: a mapping of NAME: value, where a NAME without a value is passed
    through from the host's environment; or a list of names, all passed through."""
    if "command" not in section.data:
        raise section.error("applies to command: handlers only", "env")
    raw = section.data["env"]
    if raw is None:  # entries all commented out, as in a section
        raw = {}
    items = _Section(None, section.child("env"), section.file, None)
    pairs: dict[str, object] = {}
    if isinstance(raw, list):
        for index, name in enumerate(raw):
            key = items.convert(index, _env_name, name)
            if key in pairs:
                raise items.error(f"{key!r} is listed twice", index)
            pairs[key] = None
    elif isinstance(raw, dict):
        items = section.section("env", None)  # checks that every name is a string
        pairs = {items.convert(name, _env_name, name): value for name, value in raw.items()}
    else:
        raise section.error("expected a mapping of NAME: value, or a list of names passed "
                            f"through from the host's environment, got {show(raw)}", "env")
    found: dict[str, str] = {}
    for index, (name, value) in enumerate(pairs.items()):
        where: str | int = index if isinstance(raw, list) else name
        if value is None:
            if name not in host_env:
                raise items.error("not set in the host's environment, to be passed through; "
                                  "set it, or give a value (NAME: value)", where)
            value = host_env[name]
        found[name] = items.convert(where, _env_value, value)
    return MappingProxyType(found)


def _env_name(value: object) -> str:
    """The name of an environment variable the host does not set itself."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError(f"expected a variable name (letters, digits, _), got {show(value)}")
    if value.upper().startswith("WORKERHOST_"):
        raise ValueError(f"{value!r}: the host sets the WORKERHOST_ variables itself")
    return value


def _env_value(value: object) -> str:
    """A variable's value: a string, or a number written as it is. The value itself is never
    quoted in a message: it may be a secret."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected a string or a number, got {show(value)}; quote it")
    text = str(value)
    if "\0" in text:
        raise ValueError("contains a NUL character, which no environment can hold")
    return text


def _triggers(top: _Section) -> tuple[TriggerConfig, ...]:
    triggers: list[TriggerConfig] = []
    items = top.data["triggers"]
    if not isinstance(items, list):
        raise top.error(f"expected a list, got {show(items)}", "triggers")
    for index, item in enumerate(items):
        section = _Section(item, f"triggers[{index}]", top.file, _TRIGGER_KEYS,
                           required=("table", "events", "function", "columns"))  # fmt: skip
        trigger = TriggerConfig(
            table=section.get("table", conv.identifier, ""),
            events=section.values("events", conv.one_of(*TRIGGER_EVENTS)),
            function=section.get("function", conv.function_name, ""),
            columns=section.values("columns", conv.identifier),
            delivery=cast(Delivery, section.get("delivery", conv.one_of(*DELIVERIES),
                                                DEFAULT_DELIVERY)),
            when=section.optional("when", sql_condition),
            on_change=(section.values("on_change", conv.identifier)
                       if "on_change" in section.data else ()),
        )  # fmt: skip
        _check_condition(section, trigger)
        for earlier, other in enumerate(triggers):
            shared = [event for event in trigger.events if event in other.events]
            if shared and (other.table, other.function) == (trigger.table, trigger.function):
                message = f"{shared[0]} on {trigger.table} already submits {trigger.function}"
                raise section.error(f"repeats triggers[{earlier}]: {message}")
        triggers.append(trigger)
    return tuple(triggers)


# Words that start a statement or read another table: a condition is one expression on the
# row. A word followed by "(" is a function (INSERT(), REPLACE(), TRUNCATE()), except these
# two, which always begin a query.
_STATEMENT_WORDS = frozenset({
    "alter", "begin", "call", "commit", "create", "deallocate", "declare", "delete", "do",
    "drop", "execute", "grant", "handler", "insert", "iterate", "leave", "load", "lock",
    "loop", "prepare", "rename", "repeat", "replace", "resignal", "return", "revoke",
    "rollback", "select", "set", "signal", "table", "truncate", "unlock", "update", "values",
    "while", "with",
})
_QUERY_WORDS = frozenset({"select", "with", "table", "values"})
_ROW_REFERENCE = re.compile(r"\b(NEW|OLD)\s*\.\s*", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
# The row image an event has: no OLD row before an insert, no NEW row after a delete.
EVENT_ROWS = {"insert": ("NEW",), "update": ("NEW", "OLD"), "delete": ("OLD",)}


def sql_condition(value: object) -> str:
    """A ``when:`` condition: one SQL expression that a trigger puts in ``IF ... THEN``.

    Read with the tokenizer of ``sql:`` handlers (sqlcheck.py), so that quotes, comments and
    sql_mode are read as the server reads them: no ``;`` and no comment (either could end the
    IF early or hide its THEN), parentheses that balance, no word that starts a statement or
    a query, and the same reading under ANSI_QUOTES and NO_BACKSLASH_ESCAPES (the trigger
    keeps the sql_mode of the session that creates it).
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected an SQL condition on NEW and OLD, got {show(value)}")
    if "\0" in value:
        raise ValueError("contains a NUL character")
    code = _condition_code(value)
    if ";" in code:
        raise ValueError("holds ';': a condition is one expression, not statements")
    depth = 0
    for char in code:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            raise ValueError("closes a parenthesis it never opened")
    if depth:
        raise ValueError("opens a parenthesis it never closes")
    for word in _WORD.finditer(code):
        name = word.group(0).lower()
        call = code[word.end():].lstrip().startswith("(")
        if name in _STATEMENT_WORDS and (name in _QUERY_WORDS or not call):
            what = ("reads a table: a condition may look at the changed row only (NEW and "
                    "OLD); decide the rest in the handler") if name in _QUERY_WORDS else (
                    "starts a statement: a condition is one expression")
            raise ValueError(f"{word.group(0)!r} {what}")
    return value.strip()


def _condition_code(value: str) -> str:
    """The condition with its strings and quoted identifiers blanked out; refuses comments,
    unclosed quotes, and text that an sql_mode reads differently."""
    # Read with a space after it: a quote closed by the last character ends inside the
    # condition, one never closed runs on into the space.
    readings = [(mode, sqlcheck._regions(value + " ", mode)) for mode in sqlcheck._MODES]
    default = readings[0][1]
    for region in default:
        if region.kind in ("comment", "executable comment"):
            raise ValueError(f"holds {'an executable' if region.runs else 'a'} comment at "
                             f"character {region.start + 1}; take it out (it could hide the "
                             "THEN that follows the condition)")
        if region.end > len(value):
            raise ValueError(f"the quote at character {region.start + 1} is never closed")
    for mode, regions in readings[1:]:
        if [(r.kind, r.start, r.end) for r in regions] != [(r.kind, r.start, r.end)
                                                          for r in default]:
            raise ValueError(f"reads differently {mode.when}; {mode.fix}")
    code = list(value)
    for region in default:
        code[region.start:region.end] = " " * (region.end - region.start)
    return "".join(code)


def row_references(condition: str) -> list[tuple[str, str]]:
    """The (NEW or OLD, column) pairs a condition reads, in order: ``NEW.c`` or ``OLD.`c```."""
    code = _condition_code(condition)
    found: list[tuple[str, str]] = []
    for match in _ROW_REFERENCE.finditer(code):
        at = match.end()
        if condition.startswith("`", at):
            end = sqlcheck._quoted_end(condition, at, backslash=False)
            column = condition[at + 1 : end - 1].replace("``", "`")
        else:
            word = _WORD.match(code, at)
            column = word.group(0) if word else ""
        found.append((match.group(1).upper(), column))
    return found


def _check_condition(section: _Section, trigger: TriggerConfig) -> None:
    """OLD in an insert, NEW in a delete, on_change off an update: the event lacks the row."""
    if trigger.on_change and trigger.events != ("update",):
        others = [event for event in trigger.events if event != "update"]
        raise section.error(f"applies to update only (an {others[0]} changes no column); "
                            "give update an entry of its own", "on_change")
    if trigger.when is None:
        return
    for row, _column in row_references(trigger.when):
        for event in trigger.events:
            if row not in EVENT_ROWS[event]:
                lacks = ("there is no OLD row before an insert" if row == "OLD"
                         else "there is no NEW row after a delete")
                raise section.error(f"reads {row} on {event}, but {lacks}; give {event} an "
                                    "entry of its own", "when")


def _schedules(top: _Section) -> tuple[ScheduleConfig, ...]:
    schedules: list[ScheduleConfig] = []
    items = top.data["schedules"]
    if not isinstance(items, list):
        raise top.error(f"expected a list, got {show(items)}", "schedules")
    for index, item in enumerate(items):
        section = _Section(item, f"schedules[{index}]", top.file, _SCHEDULE_KEYS,
                           required=("name", "function"))  # fmt: skip
        if ("every" in section.data) == ("cron" in section.data):
            raise section.error("has both every: and cron:; keep one" if "every" in section.data
                                else "needs every: (a duration) or cron: (an expression)")
        if "every" in section.data and "timezone" in section.data:
            raise section.error("applies to cron: only; every: counts from 1970-01-01 00:00 "
                                "UTC, so every: 1d fires at 00:00 UTC", "timezone")
        payload: dict[str, object] = section.get("payload", conv.json_object, {})
        for key in SCHEDULE_PAYLOAD_KEYS:
            if key in payload:
                raise section.error("the host sets schedule, slot and event_id in every "
                                    "scheduled job's payload; use another key", f"payload.{key}")
        schedule = ScheduleConfig(
            name=section.get("name", conv.schedule_name, ""),
            function=section.get("function", conv.function_name, ""),
            every=section.optional("every", conv.interval),
            cron=section.optional("cron", conv.cron_expression),
            timezone=section.get("timezone", conv.time_zone, DEFAULT_SCHEDULE_ZONE),
            payload=MappingProxyType(payload),
            catch_up=cast(CatchUp, section.get("catch_up", conv.one_of(*CATCH_UPS),
                                               DEFAULT_CATCH_UP)),
        )  # fmt: skip
        for earlier, other in enumerate(schedules):
            if other.name == schedule.name:
                raise section.error(f"{schedule.name!r} is the name of schedules[{earlier}] "
                                    "too; each schedule needs a name of its own", "name")
        schedules.append(schedule)
    return tuple(schedules)
