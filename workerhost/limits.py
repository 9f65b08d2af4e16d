"""Limits that the config, the triggers, the schedules, the ledger and the UDF share.

Each is written here once; tests/test_limits.py fails when one of them disagrees with the
UDF's own constants (udf/src/gearman_udf.h) or with the SQL schema (sql/workerhost.sql).
"""

from __future__ import annotations

# gearmand's buffers, each with room for a NUL (GEARMAN_FUNCTION_MAX_SIZE 512,
# GEARMAN_MAX_UNIQUE_SIZE 64): the UDF refuses longer names and uniques (MAX_FUNCTION,
# MAX_UNIQUE).
GEARMAN_FUNCTION_BYTES = 511
GEARMAN_UNIQUE_BYTES = 63
# A function the host handles has ledger rows, whose `function` column is VARCHAR(255).
FUNCTION_NAME_BYTES = 255
# What a ledger job's Gearman unique holds: L<id>:<token>, an id of up to 20 digits and a token
# of 32 hex digits (the ledger's `token` column, CHAR(32)).
LEDGER_ID_DIGITS = 20
TOKEN_CHARS = 32
LEDGER_UNIQUE_BYTES = 1 + LEDGER_ID_DIGITS + 1 + TOKEN_CHARS
# A ledger row's own unique (unique_key VARCHAR(255)): a schedule's is schedule:NAME:SLOT.
ROW_UNIQUE_CHARS = 255
# Schedule names: the schedules table's `name` is VARCHAR(64); a name also goes into the
# GET_LOCK name of the schedule (64 characters at most, with the database's name).
SCHEDULE_NAME_CHARS = 24
# MySQL and MariaDB identifiers (tables, columns, triggers).
IDENTIFIER_CHARS = 64


def name_problem(name: str, limit: int) -> str | None:
    """What the UDF would refuse in a function name (its name_problem): None when nothing."""
    if len(name.encode("utf-8")) > limit:
        return f"longer than {limit} bytes"
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in name):
        return "whitespace or a control character"
    return None
