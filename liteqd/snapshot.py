"""What the supervisor shows of itself: its process title and its pools' status."""

from collections.abc import Sequence
from typing import Any

from . import proc
from .pool import Pool


def title(pools: Sequence[Pool], identity: str, stopping: str | None, db_down: bool) -> str:
    """The supervisor's process title: per pool, the children busy with a task out of
    the pool's size (`default busy 1/4`)."""
    shown = ", ".join(f"{p.name} busy {sum(1 for c in p.children.values() if c.inflight)}"
                      f"/{p.size}" for p in pools)
    state = f" {stopping} stop" if stopping else ""
    if db_down:
        state += " (database unavailable)"
    return f"liteqd: supervisor [{shown}] db={identity}{state}"


def pools(all_pools: Sequence[Pool], now: float) -> list[dict[str, Any]]:
    """The pools and their children, for `liteqctl status` (`now`: monotonic)."""
    out: list[dict[str, Any]] = []
    for pool in all_pools:
        children: list[dict[str, Any]] = []
        for c in sorted(pool.children.values(), key=lambda c: c.slot):
            run = c.running
            started = c.started_runs()
            children.append({
                "pid": c.pid, "slot": c.slot, "state": c.state.value,
                "task_id": run.id if run else None,
                "task_name": run.name if run else None,
                "running_s": round(now - run.started_mono, 3)
                if run and run.started_mono else None,
                "queued": max(len(c.inflight) - len(started), 0),
                "tasks_running": len(started),
                "rss_bytes": proc.rss_bytes(c.pid),
                "tasks_done": c.tasks_done,
            })
        out.append({"name": pool.name, "queues": pool.queues, "size": pool.size,
                    "async_concurrency": pool.async_slots,
                    "children": children, "failing": pool.failing,
                    "consecutive_failures": pool.failures})
    return out
