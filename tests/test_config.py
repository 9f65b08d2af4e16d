"""config/load.py and converters.py: each rule, checked against the message a user would see."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mysql.connector.constants import ClientFlag

from workerhost.config import converters as conv
from workerhost.config.converters import Server
from workerhost.config.load import load_config, parse_config
from workerhost.config.settings import (
    Config,
    DatabaseConfig,
    HandlerConfig,
    RetryPolicy,
    ScheduleConfig,
    TriggerConfig,
)
from workerhost.errors import ConfigError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ENV = {"APP_DB_PASSWORD": "hunter2"}


@pytest.fixture(autouse=True)
def in_fixture_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load fixtures by bare name, so messages read as a user sees them; undo sys.path edits."""
    monkeypatch.chdir(FIXTURES / "config")
    monkeypatch.setattr(sys, "path", [str(FIXTURES / "handlers"), *sys.path])


def error_of(name: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(name, env={} if env is None else env)
    return str(info.value)


# -- files that load ------------------------------------------------------------------------


def test_minimal_file_gets_every_default() -> None:
    config = load_config("minimal.yaml", env={})
    assert config.gearman.servers == (Server("127.0.0.1", 4730),)
    assert config.gearman.reconnect_backoff == 1.0
    assert config.gearman.max_reconnect_backoff == 30.0
    assert config.database == DatabaseConfig(user="app", database="shop")
    assert config.host.shutdown_timeout == 30.0
    assert config.host.metrics is None
    assert config.host.relay.enabled is True
    assert config.triggers == ()
    assert config.handlers["mark_seen"] == HandlerConfig(
        name="mark_seen",
        sql=("UPDATE events SET seen_at = NOW(6) WHERE id = %(id)s",),
        params=("id",),
    )
    handler = config.handlers["mark_seen"]
    assert (handler.kind, handler.callable, handler.processes, handler.timeout) == (
        "sql", None, 1, 60.0,
    )  # fmt: skip
    assert handler.retries == RetryPolicy(attempts=3, backoff=1.0, max_backoff=300.0)
    assert (handler.max_jobs, handler.max_lifetime, handler.on_no_rows) == (0, None, "ignore")


def test_full_file_sets_every_key() -> None:
    import config_handlers

    config = load_config("full.yaml", env=ENV)
    assert config.file == "full.yaml"
    assert config.gearman.servers == (
        Server("127.0.0.1", 4730), Server("gearman-2", 4730), Server("::1", 4731),
    )  # fmt: skip
    assert (config.gearman.reconnect_backoff, config.gearman.max_reconnect_backoff) == (0.5, 60.0)
    assert config.database.connect_kwargs() == {
        "host": "db.internal",
        "port": 3307,  # ${APP_DB_PORT:-3307}, a string until the port converter reads it
        "user": "app",
        "password": "hunter2",
        "database": "shop",
        "connection_timeout": 2,  # 1.5s rounded up: the connector takes whole seconds
        "autocommit": False,
        "client_flags": [ClientFlag.FOUND_ROWS],
    }
    assert config.host.shutdown_timeout == 45.0
    assert config.host.metrics == Server("127.0.0.1", 9464)
    assert (config.host.relay.enabled, config.host.relay.batch) == (True, 100)
    assert config.host.relay.interval == pytest.approx(0.2)

    resize = config.handlers["resize_image"]
    assert resize.kind == "python"
    assert resize.python == "config_handlers:resize_image"
    assert resize.callable is config_handlers.resize_image
    assert (resize.processes, resize.timeout, resize.max_jobs) == (2, 30.0, 10000)
    assert resize.retries == RetryPolicy(attempts=5, backoff=2.0, max_backoff=300.0)
    assert (resize.max_lifetime, resize.on_no_rows) == (3600.0, "dead_letter")
    assert config.handlers["thumbnail"].callable is config_handlers.Images.thumbnail

    mark_seen = config.handlers["mark_seen"]
    assert len(mark_seen.sql) == 3
    assert mark_seen.params == ("id", "note")
    assert list(config.handlers) == ["resize_image", "thumbnail", "mark_seen"]

    assert config.triggers == (
        TriggerConfig(table="orders", events=("insert", "update"), function="order_total",
                      columns=("id", "customer_id"), delivery="outbox"),
        TriggerConfig(table="orders", events=("delete",), function="order_total",
                      columns=("id",), delivery="immediate"),
    )  # fmt: skip


def test_unix_socket_replaces_host_and_port() -> None:
    kwargs = load_config("unix-socket.yaml", env={}).database.connect_kwargs()
    assert kwargs["unix_socket"] == "/run/mysqld/mysqld.sock"
    assert "host" not in kwargs and "port" not in kwargs


def test_password_stays_out_of_repr() -> None:
    config = load_config("unix-socket.yaml", env={})
    assert config.database.password == "s3cret"
    assert "s3cret" not in repr(config)


def test_env_default_applies_when_variable_unset_or_empty() -> None:
    assert load_config("full.yaml", env=ENV).database.port == 3307
    assert load_config("full.yaml", env={**ENV, "APP_DB_PORT": ""}).database.port == 3307
    assert load_config("full.yaml", env={**ENV, "APP_DB_PORT": "3310"}).database.port == 3310


def test_env_defaults_to_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_DB_PASSWORD", "from-os")
    assert load_config("env-missing.yaml").database.password == "from-os"


def test_x_keys_hold_anchors_and_merged_keys_may_be_overridden() -> None:
    handler = load_config("anchors.yaml", env={}).handlers["mark_seen"]
    assert (handler.timeout, handler.processes) == (5.0, 2)


def test_an_alias_bomb_is_refused_at_once_and_many_aliases_still_load(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError, match="more than 100000 values"):
        load_config("yaml-alias-bomb.yaml", env={})  # 9**10 values once expanded
    assert time.monotonic() - started < 2.0
    # What real files do: one anchor merged into many handlers, a list reused.
    lines = ["x-servers: &servers ['127.0.0.1:4730', '127.0.0.1:4731']",
             "x-defaults: &defaults {timeout: 5s, processes: 2, retries: {attempts: 5}}",
             "gearman: {servers: *servers}", "database: {user: app, database: shop}",
             "handlers:"]
    lines += [f"  h{i}: {{<<: *defaults, sql: 'DELETE FROM t WHERE id = %(id)s'}}"
              for i in range(1000)]
    (tmp_path / "many-aliases.yaml").write_text("\n".join(lines))
    loaded = load_config(tmp_path / "many-aliases.yaml", env={})
    assert len(loaded.handlers) == 1000 and loaded.handlers["h999"].retries.attempts == 5


def test_triggers_owner_defaults_to_the_file_name(tmp_path: Path) -> None:
    assert load_config("minimal.yaml", env={}).triggers_owner == "minimal"
    odd = tmp_path / "fleet B (eu).yaml"
    odd.write_text(Path("minimal.yaml").read_text())
    assert load_config(odd, env={}).triggers_owner == "fleet_B__eu_"
    odd.write_text(Path("minimal.yaml").read_text() + "triggers_owner: shop-web.eu_1\n")
    assert load_config(odd, env={}).triggers_owner == "shop-web.eu_1"


def test_config_is_frozen() -> None:
    config = load_config("minimal.yaml", env={})
    with pytest.raises(AttributeError):
        config.host = config.host  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.handlers["other"] = config.handlers["mark_seen"]  # type: ignore[index]


def test_handler_module_next_to_config_file_is_importable(tmp_path: Path) -> None:
    (tmp_path / "jobs_next_to_yaml.py").write_text("def run(job, db):\n    return job\n")
    (tmp_path / "workerhost.yaml").write_text(
        "gearman: {servers: [gm]}\n"
        "database: {user: app, database: shop}\n"
        "handlers: {run: {python: 'jobs_next_to_yaml:run'}}\n"
    )
    config: Config = load_config(tmp_path / "workerhost.yaml", env={})
    assert config.handlers["run"].callable is not None
    assert config.handlers["run"].callable("job", None) == "job"
    assert sys.path[0] == str(tmp_path)


def test_parse_config_takes_data_already_read() -> None:
    data = {
        "gearman": {"servers": "gm:4731"},
        "database": {"user": "app", "database": "shop"},
        "handlers": {"run": {"sql": "DELETE FROM t WHERE id = %(id)s"}},
    }
    config = parse_config(data, file="inline", env={})
    assert config.gearman.servers == (Server("gm", 4731),)
    with pytest.raises(ConfigError) as info:
        parse_config({**data, "handlers": []}, file="inline", env={})
    assert str(info.value) == "inline: handlers: expected a mapping, got a list"


def test_console_users_come_from_the_environment_and_files() -> None:
    console = load_config("console.yaml", env={"ALICE_PASSWORD": "a1ice"}).host.console
    assert console.listen == Server("0.0.0.0", 9465)
    assert {name: (user.password, user.role) for name, user in console.users.items()} == {
        "alice": ("a1ice", "admin"), "bob": ("b0b-secret", "viewer"), "carol": ("c4r0l", "viewer"),
    }
    assert "a1ice" not in repr(console)
    key = (FIXTURES / "config" / "console-secret.key").read_text().strip()
    assert console.secret_key == key and key not in repr(console)
    # Off unless set; loopback without users is allowed.
    assert load_config("minimal.yaml", env={}).host.console.listen is None


def test_tls_keys_reach_the_connector() -> None:
    kwargs = load_config("tls.yaml", env={}).database.connect_kwargs()
    assert {key: value for key, value in kwargs.items() if key.startswith("ssl_")} == {
        "ssl_ca": "ca.pem", "ssl_cert": "client-cert.pem", "ssl_key": "client-key.pem",
        "ssl_verify_cert": True, "ssl_verify_identity": True,
    }
    disabled = load_config("tls-disabled.yaml", env={}).database.connect_kwargs()
    assert disabled["ssl_disabled"] is True
    # Unset, the connector's own default stays: TLS when the server offers it.
    assert not any(key.startswith("ssl_") for key in
                   load_config("minimal.yaml", env={}).database.connect_kwargs())


# -- files that do not load: one rule each, with the exact message ---------------------------


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("unknown-key.yaml",
         "unknown-key.yaml: handlers.resize_image: unknown key 'timout' (did you mean"
         " 'timeout'?); allowed: python, sql, processes, batch, timeout, retries, max_jobs,"
         " max_lifetime, on_no_rows, accept, command, max_memory, env, limits"),
        ("unknown-top-key.yaml",
         "unknown-top-key.yaml: unknown key 'handler' (did you mean 'handlers'?);"
         " allowed: gearman, database, host, handlers, triggers, triggers_owner, schedules"),
        ("bad-duration.yaml",
         "bad-duration.yaml: handlers.resize_image.timeout: expected a duration like 30s,"
         " got '-1'"),
        ("missing-handler-module.yaml",
         "missing-handler-module.yaml: handlers.resize_image.python: cannot import module"
         " 'shop.jobs': No module named 'shop'"),
        ("missing-handler-callable.yaml",
         "missing-handler-callable.yaml: handlers.resize_image.python: module"
         " 'config_handlers' has no attribute 'resize_imgae'"),
        ("handler-not-callable.yaml",
         "handler-not-callable.yaml: handlers.resize_image.python:"
         " config_handlers:NOT_CALLABLE is not callable (it is int)"),
        ("handler-wrong-signature.yaml",
         "handler-wrong-signature.yaml: handlers.resize_image.python:"
         " config_handlers:one_argument must accept two arguments (job, db), but its"
         " signature is (job: 'object') -> 'None'"),
        ("handler-import-fails.yaml",
         "handler-import-fails.yaml: handlers.resize_image.python: cannot import module"
         " 'config_handlers_broken': No module named 'config_missing_dependency'"),
        ("bad-python-reference.yaml",
         "bad-python-reference.yaml: handlers.resize_image.python: expected"
         " \"package.module:callable\", got 'config_handlers.resize_image'"),
        ("sql-and-python.yaml",
         "sql-and-python.yaml: handlers.resize_image: has both python: and sql:; keep one"),
        ("neither-sql-nor-python.yaml",
         "neither-sql-nor-python.yaml: handlers.resize_image: needs python, sql or command"),
        ("env-missing.yaml",
         "env-missing.yaml: database.password: environment variable 'APP_DB_PASSWORD' is not"
         " set (write ${APP_DB_PASSWORD:-default} to give a default)"),
        ("no-handlers.yaml",
         "no-handlers.yaml: handlers: no handlers defined; add at least one under handlers:"),
        ("missing-database-user.yaml",
         "missing-database-user.yaml: database: missing required key 'user'"),
        ("yaml-syntax-error.yaml",
         "yaml-syntax-error.yaml: invalid YAML at line 3, column 1: expected ',' or ']',"
         " but got '<scalar>' (while parsing a flow sequence at line 2, column 12)"),
        ("duplicate-key.yaml",
         "duplicate-key.yaml: invalid YAML at line 10, column 5: duplicate key 'timeout'"),
        ("empty.yaml",
         "empty.yaml: the file is empty; it needs gearman, database and handlers"),
        ("section-not-mapping.yaml",
         "section-not-mapping.yaml: gearman: expected a mapping, got a list"),
        ("bad-server.yaml",
         "bad-server.yaml: gearman.servers[0]: expected host:port like 127.0.0.1:4730,"
         " got '127.0.0.1:99999'"),
        ("duplicate-server.yaml",
         "duplicate-server.yaml: gearman.servers[1]: '127.0.0.1:4730' is listed twice"),
        ("unix-socket-and-host.yaml",
         "unix-socket-and-host.yaml: database.host: host cannot be combined with unix_socket"),
        ("password-not-string.yaml",
         "password-not-string.yaml: database.password: expected a string; put the password in"
         " quotes"),
        ("password-unterminated-reference.yaml",
         "password-unterminated-reference.yaml: database.password: unterminated environment"
         " reference: a ${ without its }; write $${ for a literal ${"),
        ("password-unset-reference.yaml",
         "password-unset-reference.yaml: database.password: an environment variable named in"
         " it is not set (the name is not shown: the value is a secret); write $${ for a"
         " literal ${"),
        ("sql-malformed-placeholder.yaml",
         "sql-malformed-placeholder.yaml: handlers.mark_seen.sql: malformed placeholder"
         " '%(id)d': write %(name)s"),
        ("sql-positional-placeholder.yaml",
         "sql-positional-placeholder.yaml: handlers.mark_seen.sql: positional placeholder '%s'"
         " is not supported; write %(name)s with a key of the JSON payload"),
        ("sql-quoted-placeholder.yaml",
         "sql-quoted-placeholder.yaml: handlers.mark_seen.sql: placeholder '%(note)s' is inside"
         " a quoted string; remove the quotes, the value is quoted for you"),
        ("sql-quoted-placeholder-after-comment.yaml",
         "sql-quoted-placeholder-after-comment.yaml: handlers.mark_seen.sql: placeholder"
         " '%(name)s' is inside a quoted string; remove the quotes, the value is quoted for you"),
        ("sql-placeholder-in-comment.yaml",
         "sql-placeholder-in-comment.yaml: handlers.mark_seen.sql: placeholder '%(name)s' is"
         " inside a comment, where it is still replaced (a value holding */ would end the"
         " comment); take it out"),
        ("sql-placeholder-in-executable-comment.yaml",
         "sql-placeholder-in-executable-comment.yaml: handlers.mark_seen.sql: placeholder"
         " '%(name)s' is inside an executable comment '/*!80000 ... */', which a server runs or"
         " skips by its kind and version; move it out of the comment"),
        ("sql-placeholder-in-identifier.yaml",
         "sql-placeholder-in-identifier.yaml: handlers.mark_seen.sql: placeholder '%(shard)s'"
         " is inside a quoted identifier; a value cannot name a table or column"),
        ("sql-placeholder-glued-to-literal.yaml",
         "sql-placeholder-glued-to-literal.yaml: handlers.mark_seen.sql: placeholder"
         " '%(name)s' follows \"'\" without a space, so the quoted value would merge with it;"
         " put a space or an operator between them"),
        ("sql-backslash-quote-before-placeholder.yaml",
         "sql-backslash-quote-before-placeholder.yaml: handlers.mark_seen.sql: placeholder"
         " '%(id)s' is inside a quoted string when the server's sql_mode has"
         " NO_BACKSLASH_ESCAPES, where a backslash escapes nothing; write '' for a quote inside"
         " a string"),
        ("sql-double-percent.yaml",
         "sql-double-percent.yaml: handlers.mark_seen.sql: '%%' reaches MySQL unchanged with"
         " named parameters; write a single %"),
        ("sql-bad-statement-in-list.yaml",
         "sql-bad-statement-in-list.yaml: handlers.mark_seen.sql[1]: malformed placeholder"
         " '%(note WHERE id = %(id)s': write %(name)s"),
        ("bad-on-no-rows.yaml",
         "bad-on-no-rows.yaml: handlers.mark_seen.on_no_rows: expected one of ignore, retry,"
         " dead_letter, got 'skip'"),
        ("retry-cap-below-backoff.yaml",
         "retry-cap-below-backoff.yaml: handlers.mark_seen.retries.max_backoff: 30s is less"
         " than backoff (120s)"),
        ("zero-processes.yaml",
         "zero-processes.yaml: handlers.mark_seen.processes: expected a whole number of at"
         " least 1, got '0'"),
        ("bad-handler-name.yaml",
         "bad-handler-name.yaml: handlers.mark seen: expected a Gearman function name (no"
         " whitespace or control characters, at most 255 bytes), got 'mark seen'"),
        ("trigger-bad-event.yaml",
         "trigger-bad-event.yaml: triggers[0].events[1]: expected one of insert, update,"
         " delete, got 'upsert'"),
        ("trigger-bad-column.yaml",
         "trigger-bad-column.yaml: triggers[0].columns[1]: expected a table or column name"
         " (letters, digits, _ or $, at most 64), got 'customer id'"),
        ("trigger-no-events.yaml",
         "trigger-no-events.yaml: triggers[0].events: expected a non-empty list, got a list"),
        ("trigger-missing-function.yaml",
         "trigger-missing-function.yaml: triggers[0]: missing required key 'function'"),
        ("trigger-repeated.yaml",
         "trigger-repeated.yaml: triggers[1]: repeats triggers[0]: update on orders already"
         " submits order_total"),
        ("tls-missing-ca.yaml",
         "tls-missing-ca.yaml: database.ssl_ca: expected a file, got 'no-such-ca.pem', which"
         " does not exist"),
        ("tls-cert-without-key.yaml",
         "tls-cert-without-key.yaml: database.ssl_cert: ssl_cert needs ssl_key too (a client"
         " certificate and its private key go together)"),
        ("bad-triggers-owner.yaml",
         "bad-triggers-owner.yaml: triggers_owner: expected a name of letters, digits, _, . or -"
         " (at most 64), got 'shop web'"),
        ("yaml-alias-bomb.yaml",
         "yaml-alias-bomb.yaml: invalid YAML at line 7, column 7: with its aliases expanded"
         " this holds more than 100000 values; write the values out, or use fewer aliases"),
        ("yaml-alias-loop.yaml",
         "yaml-alias-loop.yaml: invalid YAML at line 2, column 9: an alias refers to the"
         " mapping or list that holds it"),
        ("yaml-nested-too-deep.yaml",
         "yaml-nested-too-deep.yaml: invalid YAML: lists or mappings nested too deeply to read"),
        ("tls-disabled-and-ca.yaml",
         "tls-disabled-and-ca.yaml: database.ssl_ca: ssl_ca cannot be combined with"
         " ssl_disabled: true"),
        ("rate-per-week.yaml",
         "rate-per-week.yaml: handlers.mark_seen.limits.rate: expected a rate greater than zero"
         " like 20/s or 600/m (jobs per second, minute, hour or day), got '20/week'"),
        ("rate-zero.yaml",
         "rate-zero.yaml: handlers.mark_seen.limits.rate: expected a rate greater than zero"
         " like 20/s or 600/m (jobs per second, minute, hour or day), got '0/s'"),
        ("rate-negative.yaml",
         "rate-negative.yaml: handlers.mark_seen.limits.rate: expected a rate greater than zero"
         " like 20/s or 600/m (jobs per second, minute, hour or day), got '-1/s'"),
        ("rate-not-a-rate.yaml",
         "rate-not-a-rate.yaml: handlers.mark_seen.limits.rate: expected a rate greater than zero"
         " like 20/s or 600/m (jobs per second, minute, hour or day), got 'fast'"),
        ("console-exposed-without-users.yaml",
         "console-exposed-without-users.yaml: host.console.listen: 0.0.0.0:9465 is reachable"
         " from other machines, and no users are configured: add users, or listen on"
         " 127.0.0.1"),
        ("console-user-without-password.yaml",
         "console-user-without-password.yaml: host.console.users.alice: needs a password or a"
         " password_file (one of them)"),
        ("console-bad-role.yaml",
         "console-bad-role.yaml: host.console.users.alice.role: expected one of admin, viewer,"
         " got 'root'"),
        ("console-short-secret-key.yaml",
         "console-short-secret-key.yaml: host.console.secret_key: expected at least 32"
         " characters, got 20 (`openssl rand -hex 32` makes a key)"),
        ("console-secret-key-and-file.yaml",
         "console-secret-key-and-file.yaml: host.console.secret_key_file: cannot be combined"
         " with secret_key; keep one"),
        ("console-password-unset-reference.yaml",
         "console-password-unset-reference.yaml: host.console.users.alice.password: an"
         " environment variable named in it is not set (the name is not shown: the value is a"
         " secret); write $${ for a literal ${"),
    ],
)  # fmt: skip
def test_invalid_file_names_file_path_and_reason(fixture: str, message: str) -> None:
    assert error_of(fixture) == message


def test_every_fixture_is_used() -> None:
    """A fixture file nobody loads is a test that silently stopped running."""
    source = Path(__file__).read_text()
    unused = [p.name for p in (FIXTURES / "config").glob("*.yaml") if f'"{p.name}"' not in source]
    assert unused == []


def test_missing_file() -> None:
    assert error_of("no-such-file.yaml") == "no-such-file.yaml: file not found"


def test_error_carries_file_and_path_apart() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("bad-duration.yaml", env={})
    assert (info.value.file, info.value.path) == (
        "bad-duration.yaml",
        "handlers.resize_image.timeout",
    )
    assert info.value.reason == "expected a duration like 30s, got '-1'"


def test_password_never_appears_in_error() -> None:
    assert "123456" not in error_of("password-not-string.yaml")


def test_import_error_is_chained_for_the_cli() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("missing-handler-module.yaml", env={})
    assert isinstance(info.value.__cause__, ValueError)
    assert isinstance(info.value.__cause__.__cause__, ModuleNotFoundError)


# -- converters ---------------------------------------------------------------------------


def reason(convert: Callable[..., object], *args: object, **kwargs: object) -> str:
    """The ValueError message a converter gives for these arguments."""
    with pytest.raises(ValueError) as info:
        convert(*args, **kwargs)
    return str(info.value)


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("30s", 30.0), ("200ms", 0.2), ("5m", 300.0), ("1h", 3600.0), ("2d", 172800.0),
     ("1.5s", 1.5), (" 10 s ", 10.0), ("30", 30.0), (30, 30.0), (0.25, 0.25), ("0", 0.0)],
)  # fmt: skip
def test_duration_accepts(raw: object, seconds: float) -> None:
    assert conv.duration(raw) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [("-1", "'-1'"), (-1, "'-1'"), ("30 seconds", "'30 seconds'"), ("s", "'s'"), ("", "''"),
     (True, "true"), (None, "null"), ([1], "a list"), (float("inf"), "'inf'"),
     ("1e400", "'1e400'")],
)  # fmt: skip
def test_duration_rejects(raw: object, shown: str) -> None:
    assert reason(conv.duration, raw) == f"expected a duration like 30s, got {shown}"


def test_positive_duration_rejects_zero() -> None:
    assert conv.positive_duration("1ms") == pytest.approx(0.001)
    assert reason(conv.positive_duration, "0s") == (
        "expected a duration greater than zero like 30s, got '0s'"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("127.0.0.1:4730", Server("127.0.0.1", 4730)), ("gm.local:1", Server("gm.local", 1)),
     ("[::1]:4731", Server("::1", 4731)), ("[::1]", Server("::1", 4730)),
     ("::1", Server("::1", 4730)), ("gm", Server("gm", 4730))],
)  # fmt: skip
def test_server_accepts(raw: str, expected: Server) -> None:
    assert conv.server(raw, default_port=4730) == expected


@pytest.mark.parametrize(
    ("raw", "shown"),
    [("", "''"), ("gm:", "'gm:'"), (":4730", "':4730'"), ("gm:0", "'gm:0'"),
     ("gm:65536", "'gm:65536'"), ("gm:x", "'gm:x'"), ("[::1", "'[::1'"), ("[::1]x", "'[::1]x'"),
     ("[::1]:", "'[::1]:'"), ("a b:1", "'a b:1'"), (4730, "'4730'")],
)  # fmt: skip
def test_server_rejects(raw: object, shown: str) -> None:
    assert reason(conv.server, raw, default_port=4730) == (
        f"expected host:port like 127.0.0.1:4730, got {shown}"
    )


def test_server_without_default_port_requires_one() -> None:
    assert reason(conv.server, "gm") == "expected host:port like 127.0.0.1:4730, got 'gm'"
    assert str(Server("::1", 9464)) == "[::1]:9464"
    assert str(Server("gm", 4730)) == "gm:4730"


def test_integers() -> None:
    assert conv.positive_int(3) == 3
    assert conv.positive_int("3") == 3  # as ${VAR} substitution produces
    assert conv.non_negative_int(0) == 0
    assert conv.port("3306") == 3306
    for bad, shown in ((0, "'0'"), ("x", "'x'"), (1.5, "'1.5'"), (True, "true"), (None, "null")):
        assert (
            reason(conv.positive_int, bad) == f"expected a whole number of at least 1, got {shown}"
        )
    assert reason(conv.non_negative_int, -1) == "expected a whole number of at least 0, got '-1'"
    assert reason(conv.port, 0) == "expected a port number 1-65535, got '0'"


def test_boolean() -> None:
    assert [conv.boolean(v) for v in (True, "yes", "On", "1", False, "no", "off", "0")] == [
        True, True, True, True, False, False, False, False,
    ]  # fmt: skip
    assert reason(conv.boolean, "maybe") == "expected true or false, got 'maybe'"
    assert reason(conv.boolean, 1) == "expected true or false, got '1'"


def test_one_of() -> None:
    convert = conv.one_of("a", "b")
    assert convert("b") == "b"
    assert reason(convert, "c") == "expected one of a, b, got 'c'"


@pytest.mark.parametrize("good", ["orders", "order_items", "t$1", "1t", "x" * 64])
def test_identifier_accepts(good: str) -> None:
    assert conv.identifier(good) == good


@pytest.mark.parametrize("bad", ["", "x" * 65, "a-b", "a b", "a.b", "`a`", "123", 5])
def test_identifier_rejects(bad: object) -> None:
    assert reason(conv.identifier, bad) == (
        "expected a table or column name (letters, digits, _ or $, at most 64),"
        f" got {conv.show(bad)}"
    )


def test_function_name_limit_is_in_bytes() -> None:
    assert conv.function_name("x" * 255) == "x" * 255
    for bad in ("é" * 128, "", "a\tb", "bell\x07", "del\x7f", "nul\x00"):
        assert reason(conv.function_name, bad) == (
            "expected a Gearman function name (no whitespace or control characters, at most "
            f"255 bytes), got {conv.show(bad)}"
        )


def test_expand_env() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert conv.expand_env("x${A}y${A}", env) == "x1y1"
    assert conv.expand_env("${EMPTY}", env) == ""
    assert conv.expand_env("${EMPTY:-d}|${UNSET:-d}|${A:-d}|${UNSET:-}", env) == "d|d|1|"
    assert conv.expand_env("$${A} costs $5", env) == "${A} costs $5"
    assert reason(conv.expand_env, "${UNSET}", env) == (
        "environment variable 'UNSET' is not set (write ${UNSET:-default} to give a default)"
    )
    assert reason(conv.expand_env, "${1A}", env) == (
        "bad environment reference: write ${NAME} or ${NAME:-default}; write $${ for a literal ${"
    )
    assert reason(conv.expand_env, "x ${A", env) == (
        "unterminated environment reference: a ${ without its }; write $${ for a literal ${"
    )
    # In a secret, an unset variable is named only when the reference is the whole value.
    assert reason(conv.expand_env, "${UNSET}", env, secret=True) == (
        "environment variable 'UNSET' is not set (write ${UNSET:-default} to give a default)"
    )
    assert "UNSET" not in reason(conv.expand_env, "pw${UNSET}", env, secret=True)


def test_a_password_with_dollar_brace_is_never_quoted() -> None:
    for fixture, fragments in (("password-unterminated-reference.yaml", ("s3cr", "et-pa55")),
                               ("password-unset-reference.yaml", ("hunter", "two"))):
        message = error_of(fixture)
        assert not [f for f in fragments if f in message], message
    assert load_config("password-literal-dollar-brace.yaml", env={}).database.password == (
        "pa${ss}word")


def test_import_callable_resolves_dotted_attributes() -> None:
    import config_handlers

    assert conv.import_callable("config_handlers:Images.thumbnail") is (
        config_handlers.Images.thumbnail
    )
    assert conv.import_callable("os.path:join") is os.path.join


@pytest.mark.parametrize("value, expected", [
    (9464, conv.Server("127.0.0.1", 9464)),
    ("9464", conv.Server("127.0.0.1", 9464)),
    (":9464", conv.Server("127.0.0.1", 9464)),
    ("0.0.0.0:9100", conv.Server("0.0.0.0", 9100)),
])
def test_metrics_listen_address_defaults_to_loopback(value: object, expected: conv.Server) -> None:
    assert conv.listen_address(value) == expected


def test_metrics_listen_address_rejects_garbage() -> None:
    with pytest.raises(ValueError, match=r"expected host:port like 127\.0\.0\.1:4730, got 'nope'"):
        conv.listen_address("nope")


# -- schedules ----------------------------------------------------------------------------------


def test_schedules_load_with_their_defaults() -> None:
    config = load_config("schedules.yaml", env={})
    assert config.host.scheduler.enabled is False
    tick, nightly, cleanup = config.schedules
    assert tick == ScheduleConfig(name="tick", function="report", every=30)
    assert (tick.timezone, tick.catch_up, dict(tick.payload)) == ("UTC", "latest", {})
    assert (nightly.cron, nightly.timezone, nightly.catch_up) == (
        "0 3 * * mon-fri", "Europe/Paris", "all")
    assert dict(nightly.payload) == {"kind": "daily", "limits": {"rows": 100, "ratio": 0.5},
                                     "tags": ["a", "b"], "note": None}
    assert (cleanup.cron, cleanup.catch_up) == ("@hourly", "none")
    minimal = load_config("minimal.yaml", env={})
    assert (minimal.schedules, minimal.host.scheduler.enabled) == ((), True)


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("schedule-bad-cron.yaml",
         "schedule-bad-cron.yaml: schedules[0].cron: invalid cron expression '61 3 * * *': out"
         " of range"),
        ("schedule-cron-six-fields.yaml",
         "schedule-cron-six-fields.yaml: schedules[0].cron: expected a cron expression of 5"
         " fields (minute hour day-of-month month day-of-week) or one of @yearly, @annually,"
         " @monthly, @weekly, @daily, @midnight, @hourly, got '*/10 * * * * *'"),
        ("schedule-cron-matches-no-date.yaml",
         "schedule-cron-matches-no-date.yaml: schedules[0].cron: cron expression '0 0 30 2 *'"
         " matches no date"),
        ("schedule-unknown-timezone.yaml",
         "schedule-unknown-timezone.yaml: schedules[0].timezone: unknown time zone"
         " 'Europe/Pariss': use a name of the tz database like 'Europe/Paris' or 'UTC'"),
        ("schedule-every-and-cron.yaml",
         "schedule-every-and-cron.yaml: schedules[0]: has both every: and cron:; keep one"),
        ("schedule-neither-every-nor-cron.yaml",
         "schedule-neither-every-nor-cron.yaml: schedules[0]: needs every: (a duration) or cron:"
         " (an expression)"),
        ("schedule-unknown-key.yaml",
         "schedule-unknown-key.yaml: schedules[0]: unknown key 'catchup' (did you mean"
         " 'catch_up'?); allowed: name, function, every, cron, timezone, payload, catch_up"),
        ("schedule-bad-catch-up.yaml",
         "schedule-bad-catch-up.yaml: schedules[0].catch_up: expected one of latest, all, none,"
         " got 'some'"),
        ("schedule-every-fraction.yaml",
         "schedule-every-fraction.yaml: schedules[0].every: expected a whole number of seconds,"
         " at least 1s, like 30s or 5m, got '1500ms'"),
        ("schedule-timezone-with-every.yaml",
         "schedule-timezone-with-every.yaml: schedules[0].timezone: applies to cron: only;"
         " every: counts from 1970-01-01 00:00 UTC, so every: 1d fires at 00:00 UTC"),
        ("schedule-payload-not-mapping.yaml",
         "schedule-payload-not-mapping.yaml: schedules[0].payload: expected a mapping (a JSON"
         " object), got a list"),
        ("schedule-payload-sets-slot.yaml",
         "schedule-payload-sets-slot.yaml: schedules[0].payload.slot: the host sets schedule,"
         " slot and event_id in every scheduled job's payload; use another key"),
        ("schedule-payload-date.yaml",
         "schedule-payload-date.yaml: schedules[0].payload: window.since is a date (2026-01-01),"
         " which JSON cannot hold; quote it to keep it as text"),
        ("schedule-duplicate-name.yaml",
         "schedule-duplicate-name.yaml: schedules[1].name: 'tick' is the name of schedules[0]"
         " too; each schedule needs a name of its own"),
        ("schedule-name-too-long.yaml",
         "schedule-name-too-long.yaml: schedules[0].name: expected a name of letters, digits, _,"
         " . or - (at most 24), got 'nightly_invoice_reminders'"),
        ("schedule-missing-function.yaml",
         "schedule-missing-function.yaml: schedules[0]: missing required key 'function'"),
        ("schedules-not-a-list.yaml",
         "schedules-not-a-list.yaml: schedules: expected a list, got a mapping"),
    ],
)  # fmt: skip
def test_invalid_schedule_names_file_path_and_reason(fixture: str, message: str) -> None:
    assert error_of(fixture) == message
