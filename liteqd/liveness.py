"""Which other daemons on the database are dead, judged so that neither a clock step nor
a database outage can make a live one look dead.

- A daemon on this host and in this PID namespace is judged by its pid and process
  start time only (a zombie is dead), never by its heartbeat: it is dead at once when
  it is gone, and alive as long as it runs, whatever the clocks say.
- Any other daemon (another host, another PID namespace, an earlier boot) is judged
  by its heartbeat: dead when the value in its row has not changed for stale-after
  seconds of this daemon's monotonic clock. No wall clock is read, so a clock stepped
  forward (here, on the database server, or on that host) ages nobody. Only time
  since this daemon last regained the database counts (Outage.up_since): while the
  database was away nobody could write a heartbeat, so after an outage, and after a
  start, a daemon waits a full stale-after of its own connected time before it takes
  anyone's tasks, and the others are back long before (their back-off is capped well
  under stale-after).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from . import proc


class HeartbeatWatch:
    """Remembers, for each daemon judged by its heartbeat, the value last read and the
    monotonic time it was first read with that value."""

    def __init__(self, stale_after: float) -> None:
        self.stale_after = stale_after
        self.seen: dict[str, tuple[Any, float]] = {}   # worker_id -> (last_heartbeat, monotonic time first seen)

    def stale(self, workers: Iterable[dict[str, Any]], up_since: float,
              now: float | None = None) -> dict[str, Any]:
        """{worker_id: last_heartbeat} of the `workers` (rows of list_workers) whose
        heartbeat has not changed for stale_after seconds of connected time since
        `up_since` (monotonic). Rows no longer listed are forgotten."""
        now = time.monotonic() if now is None else now
        seen: dict[str, tuple[Any, float]] = {}
        out: dict[str, Any] = {}
        for w in workers:
            wid, beat = w["worker_id"], w["last_heartbeat"]
            before = self.seen.get(wid)
            seen[wid] = before if before is not None and before[0] == beat else (beat, now)
            unchanged_since = max(seen[wid][1], up_since)
            if now - unchanged_since >= self.stale_after:
                out[wid] = beat
        self.seen = seen
        return out


def judge(sup: proc.Identity, workers: Iterable[dict[str, Any]], watch: HeartbeatWatch,
          up_since: float) -> tuple[list[str], dict[str, Any]]:
    """Split the other daemons' rows into (dead, stale): `dead` lists the worker ids of
    daemons of this host and pid space that no longer run; `stale` maps the worker ids
    of the rest whose heartbeat stopped (see HeartbeatWatch) to that heartbeat."""
    dead: list[str] = []
    remote: list[dict[str, Any]] = []
    for w in workers:
        if w["worker_id"] == sup.worker_id:
            continue
        if _judged_by_pid(sup, w):
            if not proc.is_same_process_alive(w["pid"], w["process_started"]):
                dead.append(w["worker_id"])
        else:
            remote.append(w)
    return dead, watch.stale(remote, up_since)


def _judged_by_pid(sup: proc.Identity, w: dict[str, Any]) -> bool:
    # A pid names a process only in the pid space it came from. A daemon with this
    # hostname in another PID namespace (a container with the host's name) or from an
    # earlier boot is judged by its heartbeat alone: read here, its pid would be some
    # other process, or none, and a live daemon's tasks would be taken from it.
    if w["hostname"] != sup.hostname:
        return False
    space = proc.pid_space_of(w["worker_id"])
    return space is None or space == sup.pid_space
