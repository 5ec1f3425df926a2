"""The claim under global limits (concurrency and rate, see liteq.backends.limits),
written once for every backend, and the claim order.

A backend supplies a LimitDialect: its query for due candidates, its lock of a
limited name or queue (PostgreSQL: an advisory lock; SQLite: nothing, its write
lock already covers the claim), its running counts, its rate buckets and its
claim of chosen ids. The whole claim runs in one transaction of the backend's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from .limits import Buckets, Limits, merge_rooms, pick, rate_key, rooms, used_up

Row = Mapping[str, Any]

#: The columns of a claimed task that a claim hands the daemon, on every backend (the
#: times as epoch seconds).
CLAIMED_COLUMNS = ("id", "name", "payload", "queue", "priority", "run_at", "attempts",
                   "max_retries", "timeout", "retry_delay", "retry_backoff",
                   "retry_max_delay", "created_at")


def claim_key(row: Row) -> tuple[Any, Any, Any]:
    """The sort key of the claim order: priority (highest first), due time, id."""
    return (-row["priority"], row["run_at"], row["id"])


def by_claim_order(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Claimed rows as dicts in claim order (RETURNING gives no order guarantee)."""
    out: list[dict[str, Any]] = [r if type(r) is dict else dict(r) for r in rows]
    out.sort(key=claim_key)
    return out


class LimitDialect(Protocol):
    """What a backend supplies for claim_limited (inside the claim's transaction)."""

    def candidates(self, queues: Sequence[str], skip_names: Sequence[str],
                   per_queue: int) -> list[Any]:
        """Due pending rows (id, name, queue, priority, run_at) of `queues`, but those
        of `skip_names`, in claim order: the first `per_queue` at least (a backend
        may read that many of each queue)."""
        ...

    def lock_limit(self, key: str, wait: bool) -> bool:
        """Take the lock of one limit key ("n:NAME" or "q:QUEUE") to the end of the
        transaction; wait=False only tries (False when another holds it)."""
        ...

    def running_counts(self, column: str, values: Sequence[str]) -> dict[str, int]:
        """{value: running tasks} for these names (column "name") or queues."""
        ...

    def read_buckets(self, keys: Sequence[str]) -> tuple[dict[str, float | None], float]:
        """({key: tat or None} of these rate buckets, the claim's clock now)."""
        ...

    def write_buckets(self, new_tats: Mapping[str, float]) -> None:
        """Store the buckets' new tats."""
        ...

    def claim_ids(self, worker_id: str, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Mark these candidates running for worker_id; returns them in claim order."""
        ...


class LimitCounts:
    """The running counts and rate buckets of the limited names and queues a claim met,
    each read under its lock (held to the end of the claim's transaction)."""

    def __init__(self, dialect: LimitDialect, limits: Limits, names: Sequence[str],
                 queues: Sequence[str]) -> None:
        self.dialect = dialect
        self.limits = limits
        self.limited_names, self.limited_queues = set(names), set(queues)
        self.names: dict[str, int] = {}          # locked: running count
        self.queues: dict[str, int] = {}
        self.skipped: set[str] = set()           # keys another claimer held (try-lock)
        self.buckets: Buckets | None = None      # the locked rate keys' buckets

    def take(self, rows: Iterable[Row], wait: bool) -> None:
        """Lock and count the limited names and queues of `rows` not locked yet.

        wait=True waits for each lock, in sorted order (the first pass of a claim);
        wait=False only tries (a second pass may meet a key that sorts before one
        held, and waiting then could deadlock): a key it cannot get is skipped."""
        rows = list(rows)
        new_names = sorted({r["name"] for r in rows} & self.limited_names - set(self.names))
        new_queues = sorted({r["queue"] for r in rows} & self.limited_queues
                            - set(self.queues))
        got_names = self._lock("n", new_names, wait)
        got_queues = self._lock("q", new_queues, wait)
        counted = [n for n in got_names if n in self.limits.by_name]
        by_name = self.dialect.running_counts("name", counted) if counted else {}
        self.names.update({n: by_name.get(n, 0) for n in got_names})
        counted = [q for q in got_queues if q in self.limits.by_queue]
        by_queue = self.dialect.running_counts("queue", counted) if counted else {}
        self.queues.update({q: by_queue.get(q, 0) for q in got_queues})
        self._read_buckets(got_names, got_queues)

    def _lock(self, kind: str, values: list[str], wait: bool) -> list[str]:
        got: list[str] = []
        for value in values:
            key = rate_key(kind, value)
            if key in self.skipped:
                continue
            if self.dialect.lock_limit(key, wait):
                got.append(value)
            else:
                self.skipped.add(key)
        return got

    def _read_buckets(self, names: list[str], queues: list[str]) -> None:
        keys = [rate_key("n", n) for n in names if n in self.limits.rate_by_name] + \
            [rate_key("q", q) for q in queues if q in self.limits.rate_by_queue]
        if not keys:
            return
        tats, now = self.dialect.read_buckets(keys)
        if self.buckets is None:
            # One clock for the claim: read once its first rate keys are locked (a
            # later pass's keys are judged by it too, which can only allow fewer).
            self.buckets = Buckets(self.limits, now)
        self.buckets.tats.update(tats)

    def rooms(self) -> tuple[dict[str, int], dict[str, int]]:
        """({name: room}, {queue: room}) of the locked limits, concurrency and rate."""
        name_room, queue_room = rooms(self.limits, self.names, self.queues)
        name_room = {n: name_room[n] for n in self.names if n in name_room}
        queue_room = {q: queue_room[q] for q in self.queues if q in queue_room}
        if self.buckets is not None:
            rate_names, rate_queues = self.buckets.rooms()
            name_room = merge_rooms(name_room, rate_names)
            queue_room = merge_rooms(queue_room, rate_queues)
        return name_room, queue_room

    def spend(self, candidates: list[Any], ids: list[int]) -> float | None:
        """Write the buckets once `ids` (of `candidates`) start; returns the seconds until
        a bucket that held back a candidate allows a start again, or None."""
        if self.buckets is None:
            return None
        chosen = set(ids)
        new_tats = self.buckets.spent([r for r in candidates if r["id"] in chosen])
        if new_tats:
            self.dialect.write_buckets(new_tats)
        return self.buckets.wait(candidates, ids, new_tats)

    def allowed(self, row: Row) -> bool:
        """False for a row of a limited name or queue whose lock this claim lacks."""
        return (row["name"] not in self.limited_names or row["name"] in self.names) and \
            (row["queue"] not in self.limited_queues or row["queue"] in self.queues)


def claim_limited(dialect: LimitDialect, worker_id: str, queues: Sequence[str], limit: int,
                  limits: Limits) -> tuple[list[dict[str, Any]], float | None]:
    """Claim up to `limit` due tasks of `queues` for worker_id within `limits`, inside
    the caller's transaction; returns (rows in claim order, rate wait: seconds until a
    rate limit that held back a due task allows a start again, or None).

    The due candidates come first, in claim order: while none is of a limited name
    or queue, they are claimed as they are. Otherwise only the limited names and
    queues among them are locked and counted, so a limit whose tasks are not due
    costs nothing; locks are taken in one order, so claimers never deadlock.
    """
    candidates = list(dialect.candidates(queues, [], limit))
    if not candidates:
        return [], None
    names, limited_queues = limits.relevant(queues)
    counts = LimitCounts(dialect, limits, names, limited_queues)
    if not any(r["name"] in counts.limited_names or r["queue"] in counts.limited_queues
               for r in candidates):
        return dialect.claim_ids(worker_id, [r["id"] for r in candidates[:limit]]), None
    counts.take(candidates, wait=True)
    name_room, queue_room = counts.rooms()
    ids = pick(candidates, limit, name_room, queue_room)
    full, closed = used_up(candidates, ids, name_room, queue_room)
    open_queues = [q for q in queues if q not in closed]
    if len(ids) < limit and len(candidates) >= limit and open_queues and (full or closed):
        # The rows read were mostly of names or queues at their limit: read past them.
        more = dialect.candidates(open_queues, full, limit * 4 + 16)
        counts.take(more, wait=False)
        name_room, queue_room = counts.rooms()
        seen = {r["id"] for r in candidates}
        candidates += [r for r in more if r["id"] not in seen]
        candidates.sort(key=claim_key)
        ids = pick([r for r in candidates if counts.allowed(r)], limit, name_room, queue_room)
    rate_wait = counts.spend(candidates, ids)
    return (dialect.claim_ids(worker_id, ids) if ids else []), rate_wait
