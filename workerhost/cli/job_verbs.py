"""Jobs as objects and dead letters: `workerhost jobs`, `pause`, `resume`, `dead-letters`."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from workerhost.cli.common import load, plural
from workerhost.exitcodes import (
    RET_ERROR,
    RET_OK,
    RET_USAGE,
)

if TYPE_CHECKING:
    from workerhost.store.db import Database


def dead_letters(args: argparse.Namespace) -> int:
    from workerhost.store.db import Database

    db = Database(load(args).database.connect_kwargs())
    try:
        return _dead_letter_action(args, db)
    finally:
        db.close()


def _dead_letter_action(args: argparse.Namespace, db: Database) -> int:
    from workerhost.store import deadletters

    action = args.dl_verb
    if action == "list":
        letters = deadletters.list_letters(db, args.function, args.limit)
        print(f"{'ID':>6}  {'FUNCTION':20} {'ATTEMPTS':>8}  {'FAILED AT':26} ERROR")
        for dl in letters:
            print(f"{dl.id:>6}  {dl.function:20} {dl.attempts:>8}  {dl.failed_at!s:26} "
                  f"{dl.error.splitlines()[0][:80] if dl.error else ''}")
        print(plural(len(letters), "dead letter"))
        return RET_OK
    if action == "show":
        letter = deadletters.get(db, args.id)
        if letter is None:
            return _no_such_letters([args.id])
        for name in ("id", "function", "unique", "attempts", "first_failed_at", "failed_at",
                     "error"):
            print(f"{name:16} {getattr(letter, name)}")
        print(f"{'payload':16} {deadletters.payload_text(letter.payload, SHOWN_PAYLOAD)}")
        if letter.traceback:
            print("traceback:\n" + letter.traceback)
        return RET_OK
    if action == "retry" and not args.all and not args.ids:
        print("name dead letter ids, or --all", file=sys.stderr)
        return RET_USAGE
    if action == "purge" and not args.all and not args.ids and not args.function:
        print("name dead letter ids, --function NAME, or --all", file=sys.stderr)
        return RET_USAGE
    # Named ids: those that exist are acted on; the others are named, and the exit is 1.
    missing = [i for i in dict.fromkeys(args.ids) if deadletters.get(db, i) is None]
    found = [i for i in dict.fromkeys(args.ids) if i not in missing]
    if action == "retry":
        if args.all:
            moved = _retry_all(db)
        else:  # never retry(db, []): an empty list would mean every letter
            moved = deadletters.retry(db, found) if found else 0
        print(f"{plural(moved, 'dead letter')} queued again")
    else:
        if args.ids:
            deleted = deadletters.purge(db, found) if found else 0
        else:
            deleted = deadletters.purge(db, None, None if args.all else args.function)
        print(f"{plural(deleted, 'dead letter')} deleted")
    return _no_such_letters(missing) if missing else RET_OK


SHOWN_PAYLOAD = 4096  # bytes of a payload that `dead-letters show` prints

# What `jobs cancel` and `jobs retry-now` say of each id, and whether it counts as done.
_JOB_ANSWERS = {
    "cancelled": ("cancelled", True), "due": ("due now", True),
    "running": ("left alone: a worker runs it now", False),
    "missing": ("no such job (done, cancelled, or never there)", False),
    "not delayed": ("not delayed: due or shipped already", False),
}


def jobs(args: argparse.Namespace) -> int:
    from workerhost.store import jobs
    from workerhost.store.db import Database

    db = Database(load(args).database.connect_kwargs())
    try:
        if args.jobs_verb == "list":
            found = jobs.list_jobs(db, args.function, args.state, args.search, args.limit,
                                   args.older_than)
            print(f"{'ID':>8}  {'FUNCTION':20} {'STATE':8} {'SHIPS':>5}  {'CREATED AT':26} "
                  "PAYLOAD")
            for job in found:
                print(f"{job.id:>8}  {job.function:20} {job.state:8} {job.ships:>5}  "
                      f"{job.created_at!s:26} {job.payload[:60]!r}")
            print(f"{plural(len(found), 'job')} (newest first)")
            return RET_OK
        if args.jobs_verb == "show":
            shown = jobs.show(db, args.id)
            if shown is None:
                print(f"workerhost: no job {args.id} in the ledger (done, cancelled, or never "
                      "there)", file=sys.stderr)
                return RET_ERROR
            for name in ("id", "function", "unique", "priority", "state", "not_before",
                         "created_at", "ships", "size", "failures", "last_error"):
                print(f"{name:12} {getattr(shown, name)}")
            print(f"{'payload':12} {shown.payload}")
            return RET_OK
        act = jobs.cancel if args.jobs_verb == "cancel" else jobs.run_now
        failed = False
        for ident in dict.fromkeys(args.ids):
            said, done = _JOB_ANSWERS[act(db, ident)]
            print(f"job {ident}: {said}")
            failed = failed or not done
        return RET_ERROR if failed else RET_OK
    finally:
        db.close()


def pause(args: argparse.Namespace) -> int:
    from workerhost.store import jobs
    from workerhost.store.db import Database

    db = Database(load(args).database.connect_kwargs())
    try:
        if args.func is pause:
            parked = jobs.pause(db, args.function)
            print(f"{args.function} paused on every host; {plural(parked, 'waiting job')} "
                  f"parked in the ledger until `workerhost resume {args.function}`")
            return RET_OK
        was_paused, due = jobs.resume(db, args.function)
        if not was_paused:
            print(f"workerhost: {args.function} was not paused", file=sys.stderr)
        print(f"{args.function} resumed; {plural(due, 'parked job')} due again")
        return RET_OK if was_paused else RET_ERROR
    finally:
        db.close()


def resume(args: argparse.Namespace) -> int:
    return pause(args)


def _no_such_letters(ids: list[int]) -> int:
    """The one answer of show, retry and purge to ids that name no dead letter: exit 1."""
    named = ", ".join(str(i) for i in ids)
    print(f"workerhost: error: no dead letter with id {named}" if len(ids) == 1 else
          f"workerhost: error: no dead letters with ids {named}", file=sys.stderr)
    return RET_ERROR


RETRY_BATCH = 100  # dead letters moved back to the ledger per transaction by retry --all


def _retry_all(db: Database) -> int:
    """`dead-letters retry --all` in batches: progress shows, and no lock is held for long."""
    import time

    from workerhost.observe import progress, status
    from workerhost.store import deadletters
    from workerhost.store import letters as letters_store

    # A deadline: without one, a refused connection is retried for ever.
    deadline = time.monotonic() + status.STATUS_TIMEOUT
    total = sum(db.run(letters_store.dead_letters_by_function, deadline=deadline).values())
    moved = 0
    with progress.Progress("dead letters queued again", total) as bar:
        while moved < total:  # letters that die meanwhile wait for the next retry --all
            batch = deadletters.list_letters(db, None, min(RETRY_BATCH, total - moved))
            done = deadletters.retry(db, [dl.id for dl in batch]) if batch else 0
            if not done:
                break
            moved += done
            bar.advance(done)
    return moved
