"""One source per limit: the Python side, the UDF and the SQL schema must agree."""

from __future__ import annotations

import re

from conftest import ROOT

from workerhost import limits
from workerhost.model.job import ledger_unique

UDF_SOURCE = ROOT / "udf" / "src" / "gearman_udf.h"
SCHEMA = ROOT / "workerhost" / "sql" / "workerhost.sql"


def udf_define(name: str) -> int:
    match = re.search(rf"^#define {name} (\d+)\b", UDF_SOURCE.read_text(), re.MULTILINE)
    assert match, f"udf/src/gearman_udf.h defines no {name}"
    return int(match.group(1))


def column(table: str, name: str, text: str | None = None) -> str:
    """The type of a column in sql/workerhost.sql, as written there."""
    text = text or SCHEMA.read_text()
    body = text.split(f"CREATE TABLE IF NOT EXISTS {table} (", 1)[1].split(") ENGINE", 1)[0]
    for line in body.splitlines():
        words = line.strip().replace("`", "").split()
        if words and words[0] == name:
            return words[1]
    raise AssertionError(f"{table}.{name} is not in {SCHEMA}")


def size(sql_type: str) -> int:
    match = re.fullmatch(r"[A-Z]+\((\d+)\),?", sql_type)
    assert match, sql_type
    return int(match.group(1))


def test_gearmand_limits_are_the_udfs() -> None:
    assert limits.GEARMAN_FUNCTION_BYTES == udf_define("MAX_FUNCTION")
    assert limits.GEARMAN_UNIQUE_BYTES == udf_define("MAX_UNIQUE")


def test_the_ledger_holds_what_the_limits_allow() -> None:
    assert limits.FUNCTION_NAME_BYTES == size(column("workerhost_outbox", "function"))
    assert limits.FUNCTION_NAME_BYTES <= limits.GEARMAN_FUNCTION_BYTES
    assert limits.TOKEN_CHARS == size(column("workerhost_outbox", "token"))
    assert limits.ROW_UNIQUE_CHARS == size(column("workerhost_outbox", "unique_key"))
    assert limits.FUNCTION_NAME_BYTES == size(column("workerhost_dead_letters", "function"))
    assert limits.SCHEDULE_NAME_CHARS <= size(column("workerhost_schedules", "name"))


def test_every_ledger_unique_fits_gearmand() -> None:
    longest = ledger_unique(2**64 - 1, "F" * limits.TOKEN_CHARS)
    assert len(longest) == limits.LEDGER_UNIQUE_BYTES <= limits.GEARMAN_UNIQUE_BYTES


def test_a_name_the_udf_refuses_is_refused_by_the_config_too() -> None:
    assert limits.name_problem("resize", limits.FUNCTION_NAME_BYTES) is None
    assert limits.name_problem("a\x01b", limits.FUNCTION_NAME_BYTES)
    assert limits.name_problem("x" * 256, limits.FUNCTION_NAME_BYTES)

