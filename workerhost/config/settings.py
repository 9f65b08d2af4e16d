"""The configuration as frozen dataclasses, with every default and every choice it offers.

load.py builds them from ``workerhost.yaml``; every other module reads them, never the YAML.
Each default is a named constant with its unit and reason.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from mysql.connector.constants import ClientFlag

from workerhost.config.converters import (
    Server,  # re-exported: part of GearmanConfig
    )

DEFAULT_GEARMAN_PORT = 4730  # gearmand's registered port, used when a server omits one
DEFAULT_RECONNECT_BACKOFF = 1.0  # seconds before the first reconnect; doubles, with jitter
DEFAULT_MAX_RECONNECT_BACKOFF = 30.0  # cap, so a restarted gearmand is found within 30s
DEFAULT_DB_HOST = "127.0.0.1"
DEFAULT_DB_PORT = 3306
DEFAULT_CONNECT_TIMEOUT = 5.0  # seconds; a dead database should fail a job, not hang it
DEFAULT_SHUTDOWN_TIMEOUT = 30.0  # seconds running jobs get to finish after SIGTERM
# The relay ships delayed retries and trigger-written jobs; relays on many hosts share the ledger
# safely (SKIP LOCKED), so every host runs one unless told otherwise.
DEFAULT_RELAY_ENABLED = True
DEFAULT_RELAY_BATCH = 500  # ledger rows shipped per round trip
DEFAULT_RELAY_INTERVAL = 0.2  # seconds between polls, unless the last shipped a full batch
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
DEFAULT_BATCH = 128  # jobs per server a process runs in one transaction, at most
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
    """The relay: ships the ledger's due rows to gearmand."""

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
    callable: Callable[..., object] | None = None  # imported; None for sql, command, or unimported
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
    # concurrency, held through the database: store/ledger.take_slot); None: no such limit.
    concurrency: int | None = None
    # Jobs of the function started per second on every host together, at most (limits: rate,
    # a token bucket in the database: store/ledger.take_rate); None: no such limit.
    rate: float | None = None

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
