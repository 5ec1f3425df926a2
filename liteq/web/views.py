"""What the panel's pages show, gathered from the database and the daemon.

Plain functions of a backend (no HTTP here), so the pages, the JSON API and the
tests read the same data. Filters from a query string are validated by
parse_filters(), which raises BadRequest with a message for the user.
"""

import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from ..scheduler import list_schedules
from ..serialization import decode_payload, decode_result
from ..status import task_state
from ..backends import TASK_STATUSES, Backend, open_backend
from ..status import task_row_to_dict
from ..timeutil import now
from . import search

CHART_MINUTES = 30
CHART_BUCKET = 60.0
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_TEXT = 200
T = TypeVar("T")


class BadRequest(ValueError):
    """A query parameter the panel cannot use; the message says which and why."""


class PanelStore:
    """One open backend for the whole panel, used by one thread at a time.

    Request handlers run in a thread pool; a lock around a single connection is
    simpler than a connection per pool thread, and each call is a few indexed
    queries. The backend is opened on first use and closed with close().
    """

    def __init__(self, db: str | None) -> None:
        self.db = db
        self._store: Backend | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call fn(store, *args, **kwargs) while holding the lock."""
        with self._lock:
            if self._store is None:
                self._store = open_backend(self.db)
            return fn(self._store, *args, **kwargs)

    def close(self) -> None:
        """Close the connection (the next run() opens a new one)."""
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def _positive_int(params: Mapping[str, str], key: str, default: int,
                  maximum: int | None = None) -> int:
    raw = params.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{key} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise BadRequest(f"{key} must be at least 1, got {value}")
    if maximum is not None and value > maximum:
        raise BadRequest(f"{key} must be at most {maximum}, got {value}")
    return value


def _text(params: Mapping[str, str], key: str) -> str | None:
    raw = params.get(key)
    if raw is None or raw.strip() == "":
        return None
    if len(raw) > MAX_TEXT:
        raise BadRequest(f"{key} is too long (at most {MAX_TEXT} characters)")
    return raw.strip()


def parse_filters(params, allow_status=True) -> dict:
    """Validate status, queue, name, q (search text), before (a search's next slice),
    page and limit from a query string or form."""
    status = _text(params, "status") if allow_status else None
    if status is not None and status not in TASK_STATUSES:
        raise BadRequest(f"unknown status {status!r}; use one of {', '.join(TASK_STATUSES)}")
    q = _text(params, "q")
    return {"status": status, "queue": _text(params, "queue"), "name": _text(params, "name"),
            "q": q, "before": _positive_int(params, "before", None) if q else None,
            "page": _positive_int(params, "page", 1),
            "limit": _positive_int(params, "limit", DEFAULT_LIMIT, MAX_LIMIT)}


def _first_line(text: object, width: int = 160) -> str:
    if not text:
        return ""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()[:width]
    return ""


def _pretty(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


# ---- overview ------------------------------------------------------------------

def count_matrix(store) -> dict:
    """Counts by queue and status: {"queues": [{queue, counts, claimed, total,
    estimated}], "totals": {...}, "total": n, "estimated": [...]}.

    counts["running"] is the tasks a child has started; `claimed` (and
    totals["claimed"]) the tasks a daemon claimed that no child has started yet.

    The counts of big groups may be estimates (Backend.queue_stats(estimate=True)):
    each queue's `estimated` lists its statuses whose counts are, the top-level one
    the statuses whose totals include one, and the page marks them.
    """
    by_queue: dict[str, dict[str, int]] = {}
    marks: dict[str, set[str]] = {}
    for row in store.queue_stats(estimate=True):
        by_queue.setdefault(row["queue"], {})[row["status"]] = row["count"]
        if row.get("estimated"):
            marks.setdefault(row["queue"], set()).add(row["status"])
    # Queues that have schedules but no tasks yet. (Not list_queues(): it reads
    # every task, which is what the estimates avoid.)
    for schedule in store.list_schedules():
        if schedule.get("queue"):
            by_queue.setdefault(schedule["queue"], {})
    totals = {s: 0 for s in TASK_STATUSES}
    totals["claimed"] = 0
    claimed_by_queue = store.claimed_counts()
    rows = []
    for queue in sorted(by_queue):
        counts = {s: by_queue[queue].get(s, 0) for s in TASK_STATUSES}
        # "running" means started by a child; claimed tasks wait for one (both are
        # status running in the rows).
        claimed = min(claimed_by_queue.get(queue, 0), counts["running"])
        counts["running"] -= claimed
        for s, n in counts.items():
            totals[s] += n
        totals["claimed"] += claimed
        estimated = [s for s in TASK_STATUSES if s in marks.get(queue, ())]
        rows.append({"queue": queue, "counts": counts, "claimed": claimed,
                     "total": sum(counts.values()) + claimed, "estimated": estimated})
    return {"queues": rows, "totals": totals, "total": sum(totals.values()),
            "estimated": [s for s in TASK_STATUSES if any(s in r["estimated"] for r in rows)]}


def throughput(store: Backend, t: float | None = None, minutes: int = CHART_MINUTES,
               bucket: float = CHART_BUCKET) -> list[dict[str, Any]]:
    """Finished tasks per minute over the last `minutes`: [{t, done, failed}], oldest first.

    The last slot is the current, partial minute.
    """
    t = now() if t is None else t
    since = math.floor(t / bucket) * bucket - (minutes - 1) * bucket
    series: list[dict[str, Any]] = [{"t": since + i * bucket, "done": 0, "failed": 0} for i in range(minutes)]
    for row in store.finished_buckets(since, bucket):
        slot = int(row["slot"])
        if 0 <= slot < minutes and row["status"] in ("done", "failed"):
            series[slot][row["status"]] += row["count"]
    return series


def workers(store: Backend, t: float | None = None) -> list[dict[str, Any]]:
    """Daemons with a row in `workers`, with the age of their last heartbeat."""
    t = now() if t is None else t
    out: list[dict[str, Any]] = []
    for w in store.list_workers():
        beat = w.get("last_heartbeat")
        out.append({**w, "heartbeat_age": None if beat is None else max(0.0, t - beat)})
    return out


def overview(store: Backend) -> dict[str, Any]:
    """Everything the overview page shows that comes from the database."""
    t = now()
    series = throughput(store, t)
    return {"counts": count_matrix(store), "series": series,
            "done_30m": sum(p["done"] for p in series),
            "failed_30m": sum(p["failed"] for p in series),
            "workers": workers(store, t), "now": t}


def pool_summary(daemon: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per pool: name, queues, size, children, busy (running a task), failing."""
    if not daemon:
        return []
    out: list[dict[str, Any]] = []
    for pool in daemon.get("pools", ()):
        children = pool.get("children", ())
        out.append({"name": pool["name"], "queues": pool.get("queues", []),
                    "size": pool.get("size", 0), "children": len(children),
                    "busy": sum(1 for c in children if c.get("task_id") is not None),
                    "failing": bool(pool.get("failing"))})
    return out


# ---- tasks ---------------------------------------------------------------------

QUEUES_TTL = 30.0
_queues_seen: dict = {}   # backend identity -> (monotonic time read, queue names)


def known_queues(store) -> list:
    """The queue names for the filters' menu, read at most every QUEUES_TTL seconds:
    list_queues() reads every task (1.5 s on PostgreSQL at a million tasks), and a
    queue new since then is still reachable by typing its name in the URL."""
    t = time.monotonic()
    seen = _queues_seen.get(store.identity)
    if seen is None or t - seen[0] > QUEUES_TTL:
        seen = (t, store.list_queues())
        _queues_seen[store.identity] = seen
    return list(seen[1])


def task_list(store, filters, order="id") -> dict:
    """One page of tasks matching the filters, with paging numbers (a search: see
    liteq.web.search; it has no total, and pages by `before`)."""
    if filters.get("q"):
        found = search.search(store, filters, filters["limit"])
        for r in found["rows"] + ([found["pinned"]] if found["pinned"] else []):
            r["error_line"] = _first_line(r.get("error"))
        return {**found, "total": None, "page": 1, "pages": 1, "limit": filters["limit"],
                "queues": known_queues(store)}
    total = store.count_tasks(status=filters["status"], queue=filters["queue"],
                              name=filters["name"])
    limit, page = filters["limit"], filters["page"]
    pages = max(1, math.ceil(total / limit))
    rows = store.find_tasks(status=filters["status"], queue=filters["queue"],
                            name=filters["name"], limit=limit, offset=(page - 1) * limit,
                            order=order)
    for r in rows:
        r["error_line"] = _first_line(r.get("error"))
        r["state"] = task_state(r["status"], r["started_at"])   # "claimed": not started
    return {"rows": rows, "total": total, "page": page, "pages": pages, "limit": limit,
            "queues": known_queues(store), "pinned": None, "next_before": None}


def task_detail(store: Backend, task_id: int) -> dict[str, Any] | None:
    """One task with decoded args, kwargs and result (pretty JSON), or None."""
    row = store.get_task(task_id)
    if row is None:
        return None
    try:
        args, kwargs = decode_payload(row["payload"])
        args_text, kwargs_text = _pretty(args), _pretty(kwargs)
    except ValueError:
        args_text = kwargs_text = f"(unreadable payload) {row['payload']!r}"
    result = decode_result(row["result"])
    t = now()
    waited = None
    if row["started_at"] is not None:
        waited = max(0.0, row["started_at"] - row["run_at"])
    ran = None
    if row["started_at"] is not None:
        end = row["finished_at"] if row["finished_at"] is not None else (
            t if row["status"] == "running" else None)
        if end is not None:
            ran = max(0.0, end - row["started_at"])
    # state "claimed": a daemon (worker_id) holds it, no child has started it yet.
    return {**row, "state": task_state(row["status"], row["started_at"]),
            "args_text": args_text, "kwargs_text": kwargs_text,
            "result_text": None if row["result"] is None else _pretty(result),
            "waited": waited, "ran": ran, "now": t,
            "errors": attempt_errors({**row, "errors": store.task_errors(int(task_id)) or None})}


def attempt_errors(row) -> list:
    """The error of every attempt, [{attempt, error, finished_at}] oldest first, when
    the task's status (get_task_status()'s `errors`) has them; else []."""
    errors = row.get("errors")
    if errors is None:
        errors = task_row_to_dict(row).get("errors")
    out = []
    for e in errors or []:
        finished = e.get("finished_at")
        if isinstance(finished, str):  # get_task_status() gives ISO 8601
            try:
                finished = datetime.fromisoformat(finished).timestamp()
            except ValueError:
                pass
        out.append({"attempt": e.get("attempt"), "error": e.get("error") or "",
                    "finished_at": finished})
    return out


# ---- schedules -----------------------------------------------------------------

def schedules(store: Backend) -> list[dict[str, Any]]:
    """Every schedule (see liteq.scheduler.list_schedules) with its payload as text."""
    out: list[dict[str, Any]] = []
    for s in list_schedules(store):
        args: list[Any] = s["args"] or []
        kwargs: dict[str, Any] = s["kwargs"] or {}
        call = ", ".join([json.dumps(a, ensure_ascii=False, default=repr)
                          for a in args] +
                         [f"{k}={json.dumps(v, ensure_ascii=False, default=repr)}"
                          for k, v in kwargs.items()])
        out.append({**s, "call": call})
    return out
