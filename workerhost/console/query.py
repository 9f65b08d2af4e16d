"""What a page's query string or form asks for, checked: a bad value is a 400 that says
which values are good, before any database is read."""

from __future__ import annotations

from typing import Any

from flask import abort, request

from workerhost.model.ledger_state import STATES

ORDERS = ("oldest", "newest")  # the ledger's orders, by id
SELECTED_MAX = 500  # dead letters one selection may name (a page shows 50)
FUNCTION_MAX = 255  # characters of a function's name (the tables' VARCHAR(255))


def filter_of(values: Any = None) -> tuple[str | None, str | None]:
    """A list's function and search, from the query (or `values`, a form)."""
    values = request.args if values is None else values
    return (values.get("function") or None), (values.get("q") or None)


def ledger_filter() -> tuple[str | None, int, str | None, str | None, bool]:
    """The ledger's filter: state, after, function, search, and whether newest first."""
    state = request.args.get("state") or None
    if state is not None and state not in STATES:
        abort(400, description=f"state is one of {', '.join(STATES)}")
    order = request.args.get("order") or ORDERS[0]
    if order not in ORDERS:
        abort(400, description=f"order is one of {', '.join(ORDERS)}")
    function, search = filter_of()
    return state, request.args.get("after", 0, type=int), function, search, order == "newest"


def selected(values: Any) -> list[int]:
    """The dead letter ids a selection names (`id`, repeated): each a positive whole number,
    SELECTED_MAX at most."""
    given = values.getlist("id")
    if not given:
        abort(400, description="id: select at least one dead letter")
    if len(given) > SELECTED_MAX:
        abort(400, description=f"id: {SELECTED_MAX} dead letters at most at once")
    if not all(text.isascii() and text.isdigit() and len(text) < 19 and int(text) > 0
               for text in given):
        abort(400, description="id: dead letter ids are positive whole numbers")
    return sorted({int(text) for text in given})


def function_named(values: Any) -> str:
    """The function an action on one function names (`function`): required, as long as the
    tables take at most."""
    function = values.get("function") or ""
    if not function or len(function) > FUNCTION_MAX:
        abort(400, description=f"function: the name of a function, {FUNCTION_MAX} characters "
              "at most")
    return str(function)
