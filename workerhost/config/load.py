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

import ipaddress
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import yaml

from workerhost.config import converters as conv
from workerhost.config import schedule_converters, sqlcheck
from workerhost.config.conditions import check_condition, sql_condition
from workerhost.config.converters import (
    show,
)
from workerhost.config.settings import (
    ACCEPT,
    CATCH_UPS,
    CONSOLE_ROLES,
    DEFAULT_BATCH,
    DEFAULT_CATCH_UP,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_CONSOLE_ROLE,
    DEFAULT_DB_HOST,
    DEFAULT_DB_PORT,
    DEFAULT_DELIVERY,
    DEFAULT_GEARMAN_PORT,
    DEFAULT_MAX_JOBS,
    DEFAULT_MAX_RECONNECT_BACKOFF,
    DEFAULT_ON_NO_ROWS,
    DEFAULT_PROCESSES,
    DEFAULT_RECONNECT_BACKOFF,
    DEFAULT_RELAY_BATCH,
    DEFAULT_RELAY_ENABLED,
    DEFAULT_RELAY_INTERVAL,
    DEFAULT_RELAY_LEASE,
    DEFAULT_RELAY_UNSERVED_AFTER,
    DEFAULT_RETRY_ATTEMPTS,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_RETRY_MAX_BACKOFF,
    DEFAULT_SCHEDULE_ZONE,
    DEFAULT_SCHEDULER_ENABLED,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_TIMEOUT,
    DELIVERIES,
    ON_NO_ROWS,
    SCHEDULE_PAYLOAD_KEYS,
    TRIGGER_EVENTS,
    Accept,
    CatchUp,
    Config,
    ConsoleConfig,
    ConsoleUser,
    DatabaseConfig,
    Delivery,
    GearmanConfig,
    HandlerConfig,
    HostConfig,
    IPNetwork,
    OnNoRows,
    RelayConfig,
    RetryPolicy,
    Role,
    ScheduleConfig,
    SchedulerConfig,
    TriggerConfig,
)
from workerhost.config.yamlfile import Section, UniqueKeyLoader, at_line, expand
from workerhost.errors import ConfigError


def load_config(path: str | Path, env: Mapping[str, str] | None = None, *,
                import_handlers: bool = True) -> Config:
    """Read, check and resolve a config file; ``env`` defaults to ``os.environ``.

    ``import_handlers=False`` checks each ``python:`` reference's form but imports nothing:
    for the verbs that never run a handler (status, jobs, dead letters, the console, ...), so
    that they neither pay for nor depend on the handlers' code."""
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
        data = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        message = f"invalid YAML{at_line(exc.problem_mark)}: {exc.problem}"
        if exc.context and exc.context_mark:  # where the unclosed thing began
            message += f" ({exc.context}{at_line(exc.context_mark)})"
        raise ConfigError(message, file=file) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=file) from exc
    except RecursionError:
        raise ConfigError("invalid YAML: lists or mappings nested too deeply to read",
                          file=file) from None
    return parse_config(data, file=file, env=env, base_dir=Path(path).resolve().parent,
                        import_handlers=import_handlers)


def parse_config(
    data: object,
    *,
    file: str,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    import_handlers: bool = True,
) -> Config:
    """Check already-parsed YAML ``data``; ``file`` is only used in messages.

    ``base_dir``, if given, goes at the front of ``sys.path`` before handlers are imported.
    """
    host_env = os.environ if env is None else env
    data = expand(data, "", file, host_env)
    if data is None:
        raise ConfigError("the file is empty; it needs gearman, database and handlers", file=file)
    if isinstance(data, dict):  # "x-" keys hold YAML anchors for reuse, as in docker compose
        data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    top = Section(data, "", file, _TOP_KEYS, required=("gearman", "database", "handlers"))
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
                _handler(handlers.section(name, _HANDLER_KEYS), name, host_env, import_handlers)
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
_LIMIT_KEYS = ("concurrency", "rate")
_TRIGGER_KEYS = ("table", "events", "function", "columns", "delivery", "when", "on_change")


def _at_least(section: Section, cap_key: str, cap: float, base_key: str, base: float) -> None:
    if cap < base:
        raise section.error(f"{cap:g}s is less than {base_key} ({base:g}s)", cap_key)


def _gearman(section: Section) -> GearmanConfig:
    backoff = section.get("reconnect_backoff", conv.positive_duration, DEFAULT_RECONNECT_BACKOFF)
    cap = section.get("max_reconnect_backoff", conv.positive_duration,
                      max(backoff, DEFAULT_MAX_RECONNECT_BACKOFF))  # fmt: skip
    _at_least(section, "max_reconnect_backoff", cap, "reconnect_backoff", backoff)
    servers = section.values(
        "servers", partial(conv.server, default_port=DEFAULT_GEARMAN_PORT), single=True
    )
    return GearmanConfig(servers=servers, reconnect_backoff=backoff, max_reconnect_backoff=cap)


def _database(section: Section) -> DatabaseConfig:
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


def _tls(section: Section) -> dict[str, Any]:
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


def _host(section: Section) -> HostConfig:
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


def _console(section: Section) -> ConsoleConfig:
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


def _handler(section: Section, name: str, host_env: Mapping[str, str],
             import_handlers: bool) -> HandlerConfig:
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
    limits = section.section("limits", _LIMIT_KEYS)
    return HandlerConfig(
        name=name,
        python=python,
        callable=(section.convert("python", conv.import_callable, python)
                  if python and import_handlers else None),
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
        concurrency=limits.optional("concurrency", conv.positive_int),
        rate=limits.optional("rate", conv.rate),
    )  # fmt: skip


def _program_env(section: Section, host_env: Mapping[str, str]) -> Mapping[str, str]:
    """handlers.NAME.env: a mapping of NAME: value, where a NAME without a value is passed
    through from the host's environment; or a list of names, all passed through."""
    if "command" not in section.data:
        raise section.error("applies to command: handlers only", "env")
    raw = section.data["env"]
    if raw is None:  # entries all commented out, as in a section
        raw = {}
    items = Section(None, section.child("env"), section.file, None)
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


def _items(top: Section, key: str, keys: Sequence[str],
           required: Sequence[str]) -> Iterator[Section]:
    """Each mapping of the list under `key` (triggers, schedules), as a Section named
    `key[index]`."""
    items = top.data[key]
    if not isinstance(items, list):
        raise top.error(f"expected a list, got {show(items)}", key)
    for index, item in enumerate(items):
        yield Section(item, f"{key}[{index}]", top.file, keys, required=tuple(required))


def _triggers(top: Section) -> tuple[TriggerConfig, ...]:
    triggers: list[TriggerConfig] = []
    for section in _items(top, "triggers", _TRIGGER_KEYS,
                          ("table", "events", "function", "columns")):
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
        check_condition(section, trigger)
        for earlier, other in enumerate(triggers):
            shared = [event for event in trigger.events if event in other.events]
            if shared and (other.table, other.function) == (trigger.table, trigger.function):
                message = f"{shared[0]} on {trigger.table} already submits {trigger.function}"
                raise section.error(f"repeats triggers[{earlier}]: {message}")
        triggers.append(trigger)
    return tuple(triggers)


def _schedules(top: Section) -> tuple[ScheduleConfig, ...]:
    schedules: list[ScheduleConfig] = []
    for section in _items(top, "schedules", _SCHEDULE_KEYS, ("name", "function")):
        if ("every" in section.data) == ("cron" in section.data):
            raise section.error("has both every: and cron:; keep one" if "every" in section.data
                                else "needs every: (a duration) or cron: (an expression)")
        if "every" in section.data and "timezone" in section.data:
            raise section.error("applies to cron: only; every: counts from 1970-01-01 00:00 "
                                "UTC, so every: 1d fires at 00:00 UTC", "timezone")
        payload: dict[str, object] = section.get("payload", schedule_converters.json_object, {})
        for key in SCHEDULE_PAYLOAD_KEYS:
            if key in payload:
                raise section.error("the host sets schedule, slot and event_id in every "
                                    "scheduled job's payload; use another key", f"payload.{key}")
        schedule = ScheduleConfig(
            name=section.get("name", schedule_converters.schedule_name, ""),
            function=section.get("function", conv.function_name, ""),
            every=section.optional("every", schedule_converters.interval),
            cron=section.optional("cron", schedule_converters.cron_expression),
            timezone=section.get("timezone", schedule_converters.time_zone, DEFAULT_SCHEDULE_ZONE),
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
