"""Global concurrency limits, enforced at claim time: at most N running tasks of a
name (`@task(concurrency=N)`) or of a queue (`liteqd --queue-limit emails=5`),
counted over every daemon on the database.

Each backend counts what runs and picks its candidates inside the claim's
transaction (SQLite: under its write lock; PostgreSQL: under advisory locks of the
limited names and queues); pick() is the part they share.
"""

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Limits:
    """by_name: {task name: N}; by_queue: {queue: N}."""
    by_name: dict[str, int] = field(default_factory=dict[str, int])
    by_queue: dict[str, int] = field(default_factory=dict[str, int])

    def __bool__(self) -> bool:
        return bool(self.by_name or self.by_queue)

    def relevant(self, queues: Collection[str]) -> tuple[list[str], list[str]]:
        """These limits as they bear on a claim from `queues`: (names, queues) limited."""
        return sorted(self.by_name), sorted(q for q in self.by_queue if q in queues)


def rooms(limits: Limits, running_by_name: Mapping[str, int],
          running_by_queue: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """({name: room}, {queue: room}): how many more may start under each limit."""
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
