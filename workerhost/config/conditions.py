"""A trigger's `when:` condition: an SQL expression on NEW and OLD, read with the tokenizer
of `sql:` handlers, refused when it is a statement or a query, or names a row its event
lacks (NEW in a delete, OLD in an insert).
"""

from __future__ import annotations

import re

from workerhost.config import sqlcheck
from workerhost.config.converters import (
    show,
)
from workerhost.config.settings import (
    TriggerConfig,
)
from workerhost.config.yamlfile import Section

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


def check_condition(section: Section, trigger: TriggerConfig) -> None:
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
