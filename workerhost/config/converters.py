"""Tiny named converters from raw YAML values to typed values.

Each converter takes the raw value (whatever YAML produced, or a string after ``${VAR}``
substitution) and returns the typed value, or raises ``ValueError`` with a message that quotes
the bad value. ``load.py`` adds the file name and the key path.
"""

from __future__ import annotations

import importlib
import inspect
import ipaddress
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from workerhost import limits
from workerhost.config import sqlcheck

# Duration units in seconds; a bare number means seconds.
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?")
# A rate: jobs per unit of time, "20/s", "600/m", "1000/h", "100/d" (also "20/1s").
_RATE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*/\s*(1\s*)?(s|m|h|d)")
_IDENTIFIER = re.compile(r"[A-Za-z0-9_$]{1,64}")
_ENV_REFERENCE = re.compile(r"\$(\$?)\{([^}]*)(\}?)")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PYTHON_REF = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
MAX_OWNER_NAME = 64  # a triggers_owner, written into every trigger's body
_OWNER_NAME = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_OWNER_NAME}}}")
# The least a console session key may hold: 32 hex digits are 128 bits (`openssl rand -hex 32`
# makes 64).
SECRET_KEY_LENGTH = 32


@dataclass(frozen=True)
class Server:
    """A ``host:port`` address: a gearmand server, or a listen address."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def show(value: object) -> str:
    """Spell a raw value the way the user wrote it in YAML, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"'{value}'"


def _number(value: object) -> float | None:
    """The finite number in ``value`` (int, float or numeric string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _integer(value: object) -> int | None:
    """The integer in ``value`` (int or decimal string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        return int(value)
    return None


def duration(value: object) -> float:
    """``"30s"`` -> 30.0 seconds. Units ms, s, m, h, d; a plain number means seconds."""
    number = _number(value)
    if number is None and isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match:
            number = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    if number is None or number < 0:
        raise ValueError(f"expected a duration like 30s, got {show(value)}")
    return number


def positive_duration(value: object) -> float:
    """Like :func:`duration`, but zero is refused (a zero timeout or poll interval)."""
    seconds = duration(value)
    if seconds == 0:
        raise ValueError(f"expected a duration greater than zero like 30s, got {show(value)}")
    return seconds


def rate(value: object) -> float:
    """``"20/s"`` -> 20.0 jobs per second; units s, m, h, d (``"600/m"`` is 10.0)."""
    match = _RATE.fullmatch(value.strip()) if isinstance(value, str) else None
    per_second = float(match.group(1)) / _DURATION_UNITS[match.group(3)] if match else 0.0
    if not per_second > 0:
        raise ValueError(f"expected a rate greater than zero like 20/s or 600/m (jobs per "
                         f"second, minute, hour or day), got {show(value)}")
    return per_second


def positive_int(value: object) -> int:
    """An integer of at least 1."""
    number = _integer(value)
    if number is None or number < 1:
        raise ValueError(f"expected a whole number of at least 1, got {show(value)}")
    return number


def non_negative_int(value: object) -> int:
    """An integer of at least 0."""
    number = _integer(value)
    if number is None or number < 0:
        raise ValueError(f"expected a whole number of at least 0, got {show(value)}")
    return number


def port(value: object) -> int:
    """A TCP port, 1-65535."""
    number = _integer(value)
    if number is None or not 1 <= number <= 65535:
        raise ValueError(f"expected a port number 1-65535, got {show(value)}")
    return number


def boolean(value: object) -> bool:
    """true/false, also yes/no, on/off, 1/0 as strings (as ``${VAR}`` substitution gives)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "yes", "on", "1"):
            return True
        if word in ("false", "no", "off", "0"):
            return False
    raise ValueError(f"expected true or false, got {show(value)}")


def string(value: object) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {show(value)}")
    return value


def one_of(*choices: str) -> Callable[[object], str]:
    """A converter accepting exactly one of ``choices``."""

    def convert(value: object) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise ValueError(f"expected one of {', '.join(choices)}, got {show(value)}")

    convert.__name__ = f"one_of{choices}"
    return convert


def identifier(value: object) -> str:
    """An unquoted SQL table or column name: letters, digits, _ and $, at most 64 characters."""
    if (
        not isinstance(value, str)
        or not _IDENTIFIER.fullmatch(value)
        or value.isdigit()  # MySQL reads an all-digit name as a number
    ):
        raise ValueError(
            "expected a table or column name (letters, digits, _ or $, at most 64),"
            f" got {show(value)}"
        )
    return value


def function_name(value: object) -> str:
    """A Gearman function name: non-empty, no whitespace or control character (the UDF refuses
    them), at most limits.FUNCTION_NAME_BYTES bytes of UTF-8 (the ledger's column)."""
    if (
        not isinstance(value, str)
        or not value
        or any(char.isspace() for char in value)
        or limits.name_problem(value, limits.FUNCTION_NAME_BYTES) is not None
    ):
        raise ValueError(
            "expected a Gearman function name (no whitespace or control characters, at most "
            f"{limits.FUNCTION_NAME_BYTES} bytes), got {show(value)}"
        )
    return value


def owner_name(value: object) -> str:
    """A name for the configuration that owns a set of triggers: letters, digits, _ . -."""
    if not isinstance(value, str) or not _OWNER_NAME.fullmatch(value):
        raise ValueError(f"expected a name of letters, digits, _, . or - (at most "
                         f"{MAX_OWNER_NAME}), got {show(value)}")
    return value


def python_ref(value: object) -> str:
    """A ``"package.module:callable"`` reference (the callable may be dotted: ``Class.run``)."""
    if not isinstance(value, str) or not _PYTHON_REF.fullmatch(value):
        raise ValueError(f'expected "package.module:callable", got {show(value)}')
    return value


def command(value: object) -> tuple[str, ...]:
    """A program and its arguments as a list (no shell); the program must be executable."""
    if (not isinstance(value, list) or not value
            or not all(isinstance(arg, str) for arg in value) or not value[0].strip()):
        raise ValueError(f"expected a list of strings, the program first (no shell), like "
                         f"['/usr/local/bin/resize', '--width', '200'], got {show(value)}")
    program = value[0]
    found = program if "/" in program else shutil.which(program)
    if found is None or not (os.path.isfile(found) and os.access(found, os.X_OK)):
        where = "on PATH" if "/" not in program else "there"
        raise ValueError(f"no executable program {program!r} {where}; install it, or give its "
                         "full path")
    return tuple(value)


def size(value: object) -> int:
    """Bytes: a number with a unit, like 512MB, 2GB or 64KB (powers of 1024), or plain bytes."""
    text = str(value).strip() if isinstance(value, (str, int)) else ""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB)?", text, re.IGNORECASE)
    if match is None or isinstance(value, bool):
        raise ValueError(f"expected a size like 512MB or 2GB, got {show(value)}")
    factor = 1024 ** ("B KB MB GB TB".split().index((match.group(2) or "B").upper()))
    number = int(float(match.group(1)) * factor)
    if number <= 0:
        raise ValueError(f"expected a size above zero, got {show(value)}")
    return number


def readable_file(value: object) -> str:
    """The path of a file this process can read (a certificate, a key)."""
    path = string(value)
    if not os.path.isfile(path):
        raise ValueError(f"expected a file, got {show(value)}, which "
                         f"{'is not a file' if os.path.exists(path) else 'does not exist'}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{show(value)} is not readable by this user")
    return path


def secret(value: object) -> str:
    """A password: any string. The message never shows the value, which is a secret."""
    if not isinstance(value, str):
        raise ValueError("expected a string; put the password in quotes")
    return value


def listen_address(value: object) -> Server:
    """``9464`` or ``":9464"`` -> 127.0.0.1:9464 (loopback unless a host is named); else server."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(text, str) and text.lstrip(":").isdigit() and text.count(":") <= 1:
        return Server("127.0.0.1", port(text.lstrip(":")))
    return server(value)


def server(value: object, *, default_port: int | None = None) -> Server:
    """``"host:port"``, ``"[::1]:4730"`` -> Server. Without ``default_port`` a port is required.

    A bare IPv6 address (``"::1"``) is taken as a host without a port.
    """
    bad = ValueError(f"expected host:port like 127.0.0.1:4730, got {show(value)}")
    if not isinstance(value, str) or not value or any(char.isspace() for char in value):
        raise bad
    host, port_text = value, ""
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise bad
        port_text = rest[1:] if rest else ""
        if rest == ":":
            raise bad
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
        if not port_text:
            raise bad
    if not host:
        raise bad
    if not port_text:
        if default_port is None:
            raise bad
        return Server(host, default_port)
    try:
        return Server(host, port(port_text))
    except ValueError:
        raise bad from None


def import_callable(ref: object) -> Callable[..., object]:
    """Import "package.module:callable" and check it can be called as callable(job, db)."""
    ref = python_ref(ref)
    module_name, _, attr_path = ref.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from exc
    except Exception as exc:  # the module itself raised while being imported
        message = f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        raise ValueError(message) from exc
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise ValueError(f"module {module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise ValueError(f"{ref} is not callable (it is {type(obj).__name__})")
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # some builtins have no signature to check
        return obj
    try:
        signature.bind(None, None)
    except TypeError:
        message = f"{ref} must accept two arguments (job, db), but its signature is {signature}"
        raise ValueError(message) from None
    return obj


def expand_env(text: str, env: Mapping[str, str], *, secret: bool = False) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` from ``env``; ``$${`` gives a literal ``${``.

    ``${VAR:-default}`` uses the default when VAR is unset or empty, as the shell does. A
    message never quotes the text around a bad reference, which may be a password with a
    ``${`` in it; with ``secret`` it names an unset variable only when the reference is the
    whole value.
    """
    literal = "; write $${ for a literal ${"

    def replace(match: re.Match[str]) -> str:
        escaped, body, closed = match.groups()
        if escaped:
            return match.group(0)[1:]
        if not closed:
            raise ValueError(f"unterminated environment reference: a ${{ without its }}{literal}")
        name, sep, default = body.partition(":-")
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"bad environment reference: write ${{NAME}} or ${{NAME:-default}}"
                             f"{literal}")
        found = env.get(name, "")
        if found or sep:
            return found or default
        if name in env:
            return found
        if secret and match.group(0) != text.strip():
            raise ValueError("an environment variable named in it is not set (the name is not "
                             f"shown: the value is a secret){literal}")
        raise ValueError(
            f"environment variable {name!r} is not set"
            f" (write ${{{name}:-default}} to give a default)"
        )

    return _ENV_REFERENCE.sub(replace, text)


def sql_statement(value: object) -> str:
    """A non-empty SQL statement whose placeholders are all bound as values (sqlcheck.py)."""
    statement = string(value)
    sqlcheck.placeholders(statement)
    return statement


_USER_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


def user_name(value: object) -> str:
    """A console user: letters, digits, _ . @ -, at most 64 (HTTP Basic forbids a colon)."""
    if not isinstance(value, str) or not _USER_NAME.fullmatch(value):
        raise ValueError(f"expected a user name of letters, digits, _, ., @ or - (at most 64), "
                         f"got {show(value)}")
    return value


def password(value: object) -> str:
    """A non-empty password; the message never shows the value."""
    text = secret(value)
    if not text:
        raise ValueError("the password is empty; give one, or a password_file")
    return text


def _first_line(value: object) -> str:
    """The first line of the readable file `value` names, the line break not included."""
    path = readable_file(value)
    try:
        with open(path, encoding="utf-8") as file:
            return file.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {show(value)}: {exc}") from None


def password_file(value: object) -> str:
    """The password held in a file (its first line, the line break not included)."""
    first = _first_line(value)
    if not first:
        raise ValueError(f"{show(value)} holds no password on its first line")
    return first


def secret_key(value: object) -> str:
    """A key that signs sessions: SECRET_KEY_LENGTH characters at least; never shown."""
    text = secret(value)
    if len(text) < SECRET_KEY_LENGTH:
        raise ValueError(f"expected at least {SECRET_KEY_LENGTH} characters, got {len(text)} "
                         "(`openssl rand -hex 32` makes a key)")
    return text


def secret_key_file(value: object) -> str:
    """The key held in a file (its first line, the line break not included)."""
    first = _first_line(value)
    try:
        return secret_key(first)
    except ValueError as exc:
        raise ValueError(f"the first line of {show(value)}: {exc}") from None


def is_loopback(host: str) -> bool:
    """Whether a listen host is reachable from this machine only: 127.0.0.0/8, ::1, localhost."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to anything
