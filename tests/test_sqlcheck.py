"""sqlcheck.py: a placeholder is accepted only where the server reads a bound value.

The refused forms dress a quoted placeholder up the ways a quote counter gets wrong; the
accepted ones are run on both servers with payloads that try to break out of the value.
"""

from __future__ import annotations

from typing import Any

import pytest

from workerhost.config.sqlcheck import placeholders

IN_STRING = "is inside a quoted string; remove the quotes"
IN_COMMENT = "is inside a comment, where it is still replaced"
IN_EXECUTABLE = "is inside an executable comment"
NO_BACKSLASH = "when the server's sql_mode has NO_BACKSLASH_ESCAPES"
ANSI = "when the server's sql_mode has ANSI_QUOTES"
GLUED = "without a space, so the quoted value would merge with it"
AMBIGUOUS = "servers disagree on where the comment ends"
WHERE = "UPDATE items SET note = 'hit' "

REFUSED = [
    # The statement: the apostrophe in the comment turned a quote counter around.
    (WHERE + "/* it's the name */ WHERE name = '%(name)s'", IN_STRING),
    (WHERE + "-- it's the name\nWHERE name = '%(name)s'", IN_STRING),
    (WHERE + "# it's the name\nWHERE name = '%(name)s'", IN_STRING),
    (WHERE + "/*+ it's a hint */ WHERE name = '%(name)s'", IN_STRING),
    (WHERE + "/*!99999 it's */ WHERE name = '%(name)s'", AMBIGUOUS),
    (WHERE + "/*! AND 'it''s' */ WHERE name = '%(name)s'", IN_STRING),
    (WHERE + "WHERE name = 'it\\'s %(name)s'", IN_STRING),
    (WHERE + "WHERE name = 'it''s %(name)s'", IN_STRING),
    (WHERE + "WHERE note = 'x\\' AND name = %(name)s -- '", IN_STRING),
    (WHERE + "WHERE name = \"%(name)s\"", IN_STRING),
    (WHERE + "WHERE name = \"it\\\"s %(name)s\"", IN_STRING),
    (WHERE + "WHERE name = CONCAT('%(name)s', 'x')", IN_STRING),
    (WHERE + "WHERE name = LOWER(TRIM('  %(name)s'))", IN_STRING),
    ("UPDATE `items_%(shard)s` SET note = 'hit'", "is inside a quoted identifier"),
    (WHERE + "WHERE id = 1 -- name = %(name)s", IN_COMMENT),
    (WHERE + "WHERE id = 1 # name = %(name)s", IN_COMMENT),
    (WHERE + "WHERE id = 1 /* name = %(name)s */", IN_COMMENT),
    (WHERE + "WHERE id = 1 /* it's never closed AND name = %(name)s", IN_COMMENT),
    (WHERE + "WHERE id = 1 /*! AND name = %(name)s */", IN_EXECUTABLE + " '/*! ... */'"),
    (WHERE + "WHERE id = 1 /*M!100000 AND name = %(name)s */", "'/*M!100000 ... */'"),
    (WHERE + "WHERE id = 1 /*! AND '*/' = %(name)s */", AMBIGUOUS),
    (WHERE + "WHERE id = 1 /*! AND 1 -- */\n*/ AND name = %(name)s", AMBIGUOUS),
    (WHERE + "WHERE id = 1 /*! AND /* x */ 1 */ AND name = %(name)s", AMBIGUOUS),
    # Read another way by a server whose sql_mode changes what a backslash or " means.
    (WHERE + "WHERE note = 'it\\'s' AND name = %(name)s", NO_BACKSLASH),
    (WHERE + "WHERE note = \"it\\\"s\" AND name = %(name)s", ANSI),
    # Next to a literal, the quoted value becomes part of it: 'x''v' is one string, X'v' hex.
    (WHERE + "WHERE name = 'x'%(name)s", GLUED),
    (WHERE + "WHERE name = %(name)s'x'", GLUED),
    (WHERE + "WHERE name = X%(name)s", GLUED),
    (WHERE + "WHERE name = _utf8mb4%(name)s", GLUED),
    # % formatting the connector would pass through unchanged.
    ("SELECT %(my-id)s", "malformed placeholder '%(my-id)s': write %(name)s"),
    ("SELECT %(id)d", "malformed placeholder '%(id)d'"),
    ("SELECT %d", "positional placeholder '%d' is not supported"),
    ("SELECT 1 /*! + %s */", "positional placeholder '%s' is not supported"),
    ("SELECT '100%%'", "'%%' reaches MySQL unchanged"),
]


@pytest.mark.parametrize(("statement", "message"), REFUSED)
def test_every_dressed_up_placeholder_is_refused(statement: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        placeholders(statement)
    assert message in str(caught.value)


# Statements whose placeholders are bound values, each with the names it binds; a statement
# updates the row named by `name` only.
BOUND = [
    (WHERE + "WHERE name = %(name)s", ("name",)),
    (WHERE + "/* it's the name */ WHERE name = %(name)s", ("name",)),
    (WHERE + "-- it's the name\nWHERE name = %(name)s", ("name",)),
    (WHERE + "# it's the name\nWHERE name = %(name)s", ("name",)),
    ("UPDATE /*! LOW_PRIORITY */ items SET note = 'it''s' WHERE name = %(name)s", ("name",)),
    ("UPDATE /*!50000 LOW_PRIORITY */ items SET note = \"it's \\\"hit\\\"\" "
     "WHERE name = %(name)s", ("name",)),
    (WHERE + "WHERE CONCAT(name, 'x') = CONCAT(%(name)s, 'x')", ("name",)),
    (WHERE + "WHERE name = TRIM(%(name)s) AND DATE_FORMAT(NOW(), '%Y-%m-%d %s') <> ''",
     ("name",)),
    (WHERE + "WHERE `name` = %(name)s AND id > 1--%(floor)s", ("name", "floor")),
    (WHERE + "WHERE name IN (%(name)s, %(name)s) AND id <> 7 % 2", ("name",)),
]
HOSTILE = [" OR 1=1 -- ", "' OR 1=1 -- ", "*/ OR 1=1 /*", "\\' OR 1=1 #", "x\n OR 1=1"]


@pytest.mark.parametrize(("statement", "names"), BOUND)
def test_bound_forms_are_accepted(statement: str, names: tuple[str, ...]) -> None:
    assert placeholders(statement) == names


def test_percent_signs_in_literals_and_comments_are_left_alone() -> None:
    assert placeholders("SELECT 7 % 2, 'it''s 50%' FROM t WHERE x = %(x)s") == ("x",)
    assert placeholders(r"SELECT 'a\'%s', DATE_FORMAT(d, '%H:%i:%s') -- %s") == ()
    assert placeholders("SELECT 1 -- 50% and %s are only words here\n") == ()


@pytest.fixture
def items(db: Any) -> Any:
    cursor = db.cursor()
    cursor.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(64), "
                   "note VARCHAR(64))")
    cursor.execute("INSERT INTO items VALUES (1, 'pen', NULL), (2, 'ink', NULL), "
                   "(3, 'pad', NULL)")
    cursor.close()
    return db


def notes(db: Any) -> list[Any]:
    cursor = db.cursor()
    cursor.execute("SELECT note FROM items ORDER BY id")
    found = [note for (note,) in cursor.fetchall()]
    cursor.close()
    return found


@pytest.mark.parametrize(("statement", "names"), BOUND)
def test_accepted_statements_bind_what_a_payload_sends(
    items: Any, statement: str, names: tuple[str, ...]
) -> None:
    del names
    cursor = items.cursor()
    for hostile in HOSTILE:
        cursor.execute(statement, {"name": hostile, "floor": 0})
        assert notes(items) == [None, None, None], f"{hostile!r} reached the SQL"
    cursor.execute(statement, {"name": "ink", "floor": 0})
    assert notes(items)[0::2] == [None, None] and notes(items)[1] is not None
    cursor.close()


def test_the_refused_statement_of_the_report_does_inject(items: Any) -> None:
    """Why the issue's statement must be refused: run as written, the payload rewrites it."""
    cursor = items.cursor()
    cursor.execute(REFUSED[0][0], {"name": " OR 1=1 -- "})
    cursor.close()
    assert notes(items) == ["hit", "hit", "hit"]
