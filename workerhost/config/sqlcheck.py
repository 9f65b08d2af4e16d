"""The ``%(name)s`` placeholders of an ``sql:`` handler, found where the server will read them.

mysql-connector binds ``%(name)s`` by writing the value, quoted and escaped, in its place
wherever it stands in the text: inside a string literal, a quoted identifier or a comment as
well as between them. Only a placeholder that stands where a value may stand is bound. One
inside ``'...'`` gets the value's quotes inside that string, so the payload closes it and
writes SQL (``{"name": " OR 1=1 -- "}``); one inside ``/* ... */`` ends the comment with a
value holding ``*/``. So the check reads the statement as the server's lexer does, not by
counting quotes: comments of every kind (``-- ``, ``#``, ``/* */``), MySQL's executable
comments (``/*! */``, ``/*!80000 */``, MariaDB's ``/*M! */``, SQL to one server and a comment
to another), strings in ``'`` and ``"`` with backslash and doubled-quote escapes, and
identifiers in backticks.

Where the reading depends on the server's sql_mode (NO_BACKSLASH_ESCAPES, ANSI_QUOTES), the
statement is read each way, and a placeholder must be bound in every one of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["string", "identifier", "comment", "executable comment"]

_PLACEHOLDER = re.compile(r"%\(([A-Za-z_][A-Za-z0-9_]*)\)s")
_BAD_PLACEHOLDER = re.compile(r"%\([^)]{0,40}\)?\w?")
_EXECUTABLE = re.compile(r"/\*M?!\d*")  # /*! ... */, /*!80000 ... */, MariaDB's /*M! ... */
# A value written next to these would merge with them: X'..' is a hex literal, 'a''b' one
# string, `a`'b' an alias.
_GLUE = re.compile(r"[\w$@'\"`]")


@dataclass(frozen=True)
class _Mode:
    """How one sql_mode reads quotes."""

    backslash: bool  # \' escapes a quote inside '...' (off with NO_BACKSLASH_ESCAPES)
    double_quote: Kind  # "..." is a string, or an identifier with ANSI_QUOTES
    when: str = ""  # for messages: the mode, and what it changes
    fix: str = ""


# The default first: its messages are the ones most users need.
_DEFAULT = _Mode(backslash=True, double_quote="string")
_MODES = (
    _DEFAULT,
    _Mode(backslash=True, double_quote="identifier",
          when="when the server's sql_mode has ANSI_QUOTES, where \"...\" is an identifier in "
               "which a backslash escapes nothing", fix="write strings in '...'"),
    _Mode(backslash=False, double_quote="string",
          when="when the server's sql_mode has NO_BACKSLASH_ESCAPES, where a backslash escapes "
               "nothing", fix="write '' for a quote inside a string"),
)
_WHAT = {"string": "a quoted string", "identifier": "a quoted identifier",
         "comment": "a comment", "executable comment": "an executable comment"}


@dataclass(frozen=True)
class _Region:
    """A stretch of the statement that is not SQL text: a literal, identifier or comment."""

    kind: Kind
    start: int
    end: int  # past the closing quote or */; the statement's end when never closed

    @property
    def runs(self) -> bool:
        """Read as SQL by some server: a %s in it reaches the server as written."""
        return self.kind == "executable comment"


def placeholders(statement: str) -> tuple[str, ...]:
    """The ``%(name)s`` names of ``statement``, in order of first use.

    Raises ValueError for a placeholder that would not be bound as a value, and for ``%``
    formatting that the connector would pass to the server unchanged (``%%``, ``%s``, ``%d``,
    a malformed ``%(``). A ``%`` inside a string is left alone (``LIKE 'a%'``,
    ``DATE_FORMAT(d, '%Y-%m-%d')``).
    """
    regions_by_mode = [(mode, _regions(statement, mode)) for mode in _MODES]
    names: list[str] = []
    for match in re.finditer("%", statement):
        at = match.start()
        following = statement[at + 1 : at + 2]
        placeholder = _PLACEHOLDER.match(statement, at)
        if following == "(" and not placeholder:
            bad = _BAD_PLACEHOLDER.match(statement, at)
            shown = bad.group(0) if bad else "%("
            raise ValueError(f"malformed placeholder {shown!r}: write %(name)s")
        if following == "%":
            raise ValueError("'%%' reaches MySQL unchanged with named parameters; write a single %")
        for mode, regions in regions_by_mode:
            region = _innermost(regions, at)
            if placeholder:
                _check_bound(statement, placeholder, region, mode)
            elif following in ("s", "d") and mode is _DEFAULT and (region is None or region.runs):
                raise ValueError(
                    f"positional placeholder '%{following}' is not supported; write %(name)s"
                    " with a key of the JSON payload"
                )
        if placeholder and placeholder.group(1) not in names:
            names.append(placeholder.group(1))
    return tuple(names)


def _check_bound(statement: str, placeholder: re.Match[str], region: _Region | None,
                 mode: _Mode) -> None:  # fmt: skip
    shown = placeholder.group(0)
    if region is not None and mode is not _DEFAULT:
        raise ValueError(f"placeholder {shown!r} is inside {_WHAT[region.kind]} {mode.when}; "
                         f"{mode.fix}")
    if region is not None and region.kind == "string":
        raise ValueError(f"placeholder {shown!r} is inside a quoted string; remove the quotes, "
                         "the value is quoted for you")
    if region is not None and region.kind == "identifier":
        raise ValueError(f"placeholder {shown!r} is inside a quoted identifier; a value cannot "
                         "name a table or column")
    if region is not None and region.kind == "comment":
        raise ValueError(f"placeholder {shown!r} is inside a comment, where it is still "
                         "replaced (a value holding */ would end the comment); take it out")
    if region is not None:
        raise ValueError(f"placeholder {shown!r} is inside an executable comment "
                         f"{_opener(statement, region)}, which a server runs or skips by its "
                         "kind and version; move it out of the comment")
    before = statement[placeholder.start() - 1 : placeholder.start()]
    after = statement[placeholder.end() : placeholder.end() + 1]
    for side, char in (("follows", before), ("is followed by", after)):
        if _GLUE.fullmatch(char):
            raise ValueError(f"placeholder {shown!r} {side} {char!r} without a space, so the "
                             "quoted value would merge with it; put a space or an operator "
                             "between them")


def _opener(statement: str, region: _Region) -> str:
    match = _EXECUTABLE.match(statement, region.start)
    return f"'{match.group(0) if match else '/*!'} ... */'"


def _innermost(regions: list[_Region], at: int) -> _Region | None:
    """The region that holds position ``at``: a string inside an executable comment wins."""
    holding = [r for r in regions if r.start <= at < r.end]
    return max(holding, key=lambda r: r.start) if holding else None


def _regions(text: str, mode: _Mode) -> list[_Region]:
    """Every literal, quoted identifier and comment of ``text``, as ``mode`` reads it."""
    regions: list[_Region] = []
    executable: int | None = None  # where the /*! ... */ that we are inside began
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if executable is not None and text.startswith("*/", i):
            regions.append(_Region("executable comment", executable, i + 2))
            executable, i = None, i + 2
            continue
        if char in "'\"`":
            kind: Kind = ("string" if char == "'" else "identifier" if char == "`"
                          else mode.double_quote)  # fmt: skip
            end = _quoted_end(text, i, backslash=mode.backslash and kind == "string")
            region = _Region(kind, i, end)
        elif char == "#" or (text.startswith("--", i) and _ends_dashes(text, i + 2)):
            newline = text.find("\n", i)
            region = _Region("comment", i, n if newline < 0 else newline + 1)
        elif text.startswith("/*", i):
            opener = _EXECUTABLE.match(text, i)
            if opener and executable is None:
                executable, i = i, opener.end()
                continue
            close = text.find("*/", i + 2)
            region = _Region("comment", i, n if close < 0 else close + 2)
            if executable is not None:
                raise ValueError(f"a comment at character {i + 1} is inside an executable "
                                 "comment; servers disagree on where the comment ends")
        else:
            i += 1
            continue
        if executable is not None and "*/" in text[region.start + 1 : region.end - 1]:
            # The server that runs the comment reads past this */; one that skips the
            # comment stops at it, and reads the rest of the literal as SQL.
            raise ValueError(f"the {region.kind} at character {region.start + 1} inside an "
                             "executable comment holds */; servers disagree on where the "
                             "comment ends")
        regions.append(region)
        i = region.end
    if executable is not None:
        regions.append(_Region("executable comment", executable, n))
    return regions


def _ends_dashes(text: str, after: int) -> bool:
    """``--`` starts a comment only when followed by whitespace, a control character, or
    the end (``1--1`` is 1 - -1)."""
    return after >= len(text) or text[after].isspace() or ord(text[after]) < 32


def _quoted_end(text: str, start: int, *, backslash: bool) -> int:
    """Past the quote that closes the one at ``start``; a doubled quote is part of the text."""
    quote = text[start]
    i = start + 1
    while i < len(text):
        if backslash and text[i] == "\\":
            i += 2
        elif text[i] != quote:
            i += 1
        elif text.startswith(quote * 2, i):
            i += 2
        else:
            return i + 1
    return len(text)
