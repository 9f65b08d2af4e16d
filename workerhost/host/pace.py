"""How many jobs a worker process holds: about HOLD_TIME of work, at the pace of its last jobs.

Holding jobs ahead is what makes fast jobs cheap: whole batches come in with one read and
commit in one transaction. It is also what makes slow jobs wait: a job held behind a slow one
is kept from workers that are idle elsewhere. So a process holds what it expects to finish in
HOLD_TIME, and never more than its handler's batches allow: a handler taking a second per job
holds one at a time (one per server, with several servers), like a plain worker, and one
taking 20 µs holds two full batches.

The pace leaves out the batch's own commit, which one job would pay as well: a slow commit
(a remote database, a slow disk) is no reason to hold less.
"""

from __future__ import annotations

# Work a process holds ahead, in seconds of its recent pace.
HOLD_TIME = 0.1
# Weight of the newest batch in the moving average of the time per job: the pace follows a
# change within a few batches, and one odd batch weighs less than a third in it.
WEIGHT = 0.3
# What a process holds before it has timed any job: one, so that workers that start together
# share a queue of slow jobs instead of the first one taking them all.
FIRST_HOLD = 1


class Pace:
    """The moving average of the seconds a job takes, and what follows for holding jobs."""

    def __init__(self, most: int) -> None:
        self.most = most  # what the handler's batches allow, per process
        self.per_job: float | None = None

    def record(self, jobs: int, seconds: float, committing: float = 0.0) -> None:
        """`jobs` ran and were committed in `seconds`, of which `committing` went to the
        batch's own commit."""
        if jobs <= 0:
            return
        sample = max(0.0, seconds - committing) / jobs
        if self.per_job is None:
            self.per_job = sample
        else:
            self.per_job += WEIGHT * (sample - self.per_job)

    def hold(self) -> int:
        """Jobs to hold at once, at least one."""
        if self.per_job is None:
            return min(FIRST_HOLD, self.most)
        if self.per_job <= 0:
            return self.most
        return max(1, min(self.most, int(HOLD_TIME / self.per_job)))

    def per_connection(self, connections: int) -> int:
        """What each of `connections` gearmand servers' connections may hold, at least one."""
        return max(1, self.hold() // max(1, connections))


# How long new jobs wait before their first claim: at least the worker's gathering of a batch
# (BATCH_WAIT in worker.py), at most this long. A trigger ships its job before its transaction
# commits, so a job claimed at once finds its row still held, comes back, and costs another
# claim; waiting about as long as those commits take gathers bigger batches as well.
FIRST_CLAIM_MAX = 0.02
# Share of new jobs whose rows may be held at their first claim before the wait grows.
HELD_SHARE = 0.1
# The wait grows by GROW (by GROW_FROM_FLOOR at least) when too many rows were held, and
# shrinks by SHRINK otherwise: it climbs to the commits' pace within a few batches, and comes
# back down over a dozen.
GROW = 2.0
GROW_FROM_FLOOR = 0.001
SHRINK = 0.8


class FirstClaim:
    """The wait before new jobs are first claimed, learned from how many of their rows were
    still held by the transactions that wrote them."""

    def __init__(self, floor: float, ceiling: float = FIRST_CLAIM_MAX) -> None:
        self.floor = floor
        self.ceiling = max(floor, ceiling)
        self.wait = floor

    def record(self, new: int, held: int) -> None:
        """`new` jobs were claimed for the first time, `held` of them found their row held."""
        if new <= 0:
            return
        if held > HELD_SHARE * new:
            self.wait = min(self.ceiling, max(self.wait * GROW, self.floor + GROW_FROM_FLOOR))
        else:
            self.wait = max(self.floor, self.wait * SHRINK)

    @property
    def waiting(self) -> bool:
        """True while new jobs wait longer than the gathering of a batch."""
        return self.wait > self.floor
