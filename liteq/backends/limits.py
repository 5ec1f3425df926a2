"""Global limits, enforced at claim time over every daemon on the database:

- concurrency: at most N running tasks of a name (`@task(concurrency=N)`) or of a
  queue (`liteqd --queue-limit emails=5`);
- rate: at most R task starts a second of a name (`@task(rate_limit="20/s")`) or of
  a queue (`liteqd --queue-rate emails=20/s`).

Each backend counts what runs, reads the rate buckets and picks its candidates
inside the claim's transaction (SQLite: under its write lock; PostgreSQL: under
advisory locks of the limited names and queues); pick() and the bucket arithmetic
below are the parts they share.

A rate is a GCRA bucket (the "generic cell rate algorithm", a token bucket kept as
one number): `tat`, the theoretical arrival time of the next start, in epoch
seconds. A start is allowed once `tat - early <= now`; each start pushes `tat` one
interval (1 / rate) further. `early` (at most one interval, at most EARLY_S) lets a
daemon that wakes a little late still start on schedule, so the rate is kept
exactly, and caps a burst after an idle spell at two starts (one when the interval
is longer than EARLY_S): starts are spread evenly in time, never a second's worth
at once.
"""

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# How early a start may come (and how late a daemon may wake without the rate
# losing the start), seconds, at most: see the module's docstring.
EARLY_S = 0.25
# Float slack in the bucket arithmetic, seconds (epoch times near 2e9 carry about
# 2e-7 s of rounding: a start due "now" is not refused for that).
_SLACK = 1e-6


@dataclass(frozen=True)
class Limits:
    """by_name: {task name: N running}; by_queue: {queue: N running};
    rate_by_name: {task name: starts a second}; rate_by_queue: {queue: starts a second}."""
    by_name: dict[str, int] = field(default_factory=dict[str, int])
    by_queue: dict[str, int] = field(default_factory=dict[str, int])
    rate_by_name: dict[str, float] = field(default_factory=dict[str, float])
    rate_by_queue: dict[str, float] = field(default_factory=dict[str, float])

    def __bool__(self) -> bool:
        return bool(self.by_name or self.by_queue or self.rate_by_name or self.rate_by_queue)

    def relevant(self, queues: Collection[str]) -> tuple[list[str], list[str]]:
        """These limits as they bear on a claim from `queues`: (names, queues) limited,
        by concurrency or by rate."""
        return (sorted(set(self.by_name) | set(self.rate_by_name)),
                sorted(q for q in set(self.by_queue) | set(self.rate_by_queue) if q in queues))


def rate_key(kind: str, value: str) -> str:
    """The key of a rate bucket: "n:NAME" for a task name, "q:QUEUE" for a queue."""
    return f"{kind}:{value}"


def early(interval: float) -> float:
    """How long before its theoretical time a start may come (see the docstring)."""
    return min(interval, EARLY_S)


def tokens(tat: float | None, now: float, interval: float) -> int:
    """How many may start at `now` from a bucket at `tat` (None: never used)."""
    base = now if tat is None else max(tat, now)
    window = now + early(interval) - base
    if window < -_SLACK:
        return 0
    return int((window + _SLACK) / interval) + 1


def spend(tat: float | None, now: float, interval: float, n: int) -> float:
    """The bucket's tat once `n` more start at `now`."""
    base = now if tat is None else max(tat, now)
    return base + n * interval


def next_start(tat: float, interval: float) -> float:
    """When the bucket at `tat` allows a start again (epoch seconds)."""
    return tat - early(interval)


@dataclass
class Buckets:
    """The rate buckets a claim read ({key: tat or None}) at `now`, and what it spent.

    Built by a backend from its rate_limits rows; `rooms()` says how many may start,
    `spent(rows)` the new tats once `rows` start, `wait(...)` when to claim again."""
    limits: Limits
    now: float
    # key -> tat or None
    tats: dict[str, float | None] = field(default_factory=dict[str, float | None])

    def interval(self, key: str) -> float:
        """Seconds between starts under the bucket `key`."""
        kind, _, value = key.partition(":")
        rate = (self.limits.rate_by_name if kind == "n" else self.limits.rate_by_queue)[value]
        return 1.0 / float(rate)

    def rooms(self) -> tuple[dict[str, int], dict[str, int]]:
        """({name: starts allowed}, {queue: starts allowed}) of the buckets read."""
        names: dict[str, int] = {}
        queues: dict[str, int] = {}
        for key, tat in self.tats.items():
            kind, _, value = key.partition(":")
            (names if kind == "n" else queues)[value] = tokens(tat, self.now,
                                                               self.interval(key))
        return names, queues

    def spent(self, rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        """{key: new tat} of the buckets that `rows` (dicts with name, queue) start under."""
        used: dict[str, int] = {}
        for row in rows:
            for key in (rate_key("n", row["name"]), rate_key("q", row["queue"])):
                if key in self.tats:
                    used[key] = used.get(key, 0) + 1
        return {key: spend(self.tats[key], self.now, self.interval(key), n)
                for key, n in used.items()}

    def wait(self, candidates: Iterable[Mapping[str, Any]], chosen: Iterable[int],
             new_tats: Mapping[str, float]) -> float | None:
        """Seconds until a bucket that held back a due candidate allows a start again
        (the daemon claims then, not at its next poll), or None when none held one back."""
        picked = set(chosen)
        held: set[str] = set()
        for row in candidates:
            if row["id"] not in picked:
                held.update(k for k in (rate_key("n", row["name"]), rate_key("q", row["queue"]))
                            if k in self.tats)
        waits: list[float] = []
        for key in held:
            tat = new_tats.get(key, self.tats[key])
            if tat is not None and tokens(tat, self.now, self.interval(key)) <= 0:
                waits.append(next_start(tat, self.interval(key)) - self.now)
        return max(min(waits), 0.0) if waits else None


def merge_rooms(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    """Two {key: room} dicts as one: the smaller room where both limit a key."""
    out = dict(a)
    for key, room in b.items():
        out[key] = min(room, out[key]) if key in out else room
    return out


def rooms(limits: Limits, running_by_name: Mapping[str, int],
          running_by_queue: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """({name: room}, {queue: room}): how many more may start under each concurrency
    limit."""
    return ({n: cap - running_by_name.get(n, 0) for n, cap in limits.by_name.items()},
            {q: cap - running_by_queue.get(q, 0) for q, cap in limits.by_queue.items()})


def pick(candidates: Iterable[Mapping[str, Any]], limit: int, name_room: Mapping[str, int],
         queue_room: Mapping[str, int]) -> list[int]:
    """The ids to claim: candidates (dicts with id, name, queue, in claim order) taken
    while their name and queue have room, up to `limit`."""
    name_room, queue_room = dict(name_room), dict(queue_room)
    chosen: list[int] = []
    for row in candidates:
        if len(chosen) >= limit:
            break
        name, queue = row["name"], row["queue"]
        if name_room.get(name, 1) <= 0 or queue_room.get(queue, 1) <= 0:
            continue
        if name in name_room:
            name_room[name] -= 1
        if queue in queue_room:
            queue_room[queue] -= 1
        chosen.append(row["id"])
    return chosen



def rooms_left(rows: Iterable[Mapping[str, Any]], chosen: Iterable[int], name_room: Mapping[str, int],
               queue_room: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """({name: room}, {queue: room}) once the chosen ids (from pick over rows) start."""
    chosen = set(chosen)
    name_left, queue_left = dict(name_room), dict(queue_room)
    for row in rows:
        if row["id"] in chosen:
            if row["name"] in name_left:
                name_left[row["name"]] -= 1
            if row["queue"] in queue_left:
                queue_left[row["queue"]] -= 1
    return name_left, queue_left


def used_up(rows: Iterable[Mapping[str, Any]], chosen: Iterable[int], name_room: Mapping[str, int],
            queue_room: Mapping[str, int]) -> tuple[list[str], list[str]]:
    """(names, queues) with no room left once the chosen ids start: a claim that came
    back short reads past their other rows with a second query."""
    name_left, queue_left = rooms_left(rows, chosen, name_room, queue_room)
    return (sorted(n for n, room in name_left.items() if room <= 0),
            sorted(q for q, room in queue_left.items() if room <= 0))
