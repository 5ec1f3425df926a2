"""The panel's task search: by id, name, argument text and error text.

How it stays fast on a table of millions without an index of the text: a search
reads the newest tasks first, one slice of SLICE ids at a time (a range of the
primary key, so each slice costs the same whatever the table's size), and stops
as soon as it has a page of matches, or when it has spent BUDGET seconds. The
page then offers "Search older", which goes on below the last id it reached.
A whole number also finds that task by id at once (a primary-key lookup), shown
first, above the tasks whose text has the number; "#number" finds only the task
with that id.
"""

import re
import time
from typing import Any

SLICE = 20_000      # ids per slice: a bounded range scan of the primary key (small,
                    # so the last slice overshoots the budget little)
BUDGET = 0.4        # seconds one request may spend scanning slices
_ID = re.compile(r"#?(\d{1,18})")


def wanted_id(text: str) -> int | None:
    """The task id `text` names ("123" or "#123"), else None."""
    m = _ID.fullmatch(text.strip())
    return int(m.group(1)) if m else None


def _matches(row: dict[str, Any], filters: dict[str, Any]) -> bool:
    return all(filters.get(k) is None or row[k] == filters[k]
               for k in ("status", "queue", "name"))


def search(store: Any, filters: dict[str, Any], limit: int, *, slice_ids: int | None = None,
           budget: float | None = None) -> dict[str, Any]:
    """One page of tasks matching filters["q"] (and status/queue/name), newest first,
    below filters["before"] when set.

    Returns {"rows", "pinned" (the task whose id is the text, on the first page),
    "next_before" (the id to go on below, None when every task was read),
    "scanned_from" (the lowest id read)}.
    """
    slice_ids = slice_ids or SLICE
    budget = BUDGET if budget is None else budget
    text, before = filters["q"], filters.get("before")
    pinned = None
    task_id = wanted_id(text)
    if task_id is not None and before is None:
        row = store.get_task(task_id)
        if row is not None and _matches(row, filters):
            pinned = row
    if before is None:
        newest = store.find_tasks(limit=1)
        top = newest[0]["id"] + 1 if newest else 1
    else:
        top = before
    rows: list[dict[str, Any]] = []
    if text.strip().startswith("#") and task_id is not None:
        # "#123": the id alone, no text to search.
        return {"rows": [], "pinned": pinned, "next_before": None, "scanned_from": 1}
    hi = top
    started = time.monotonic()
    while hi > 1:
        lo = max(1, hi - slice_ids)
        rows += store.find_tasks(status=filters["status"], queue=filters["queue"],
                                 name=filters["name"], search=text, below=hi, at_least=lo,
                                 limit=limit + 1 - len(rows))
        if len(rows) > limit:
            break
        hi = lo
        if time.monotonic() - started > budget:
            break
    if len(rows) > limit:
        rows = rows[:limit]
        next_before = rows[-1]["id"]
    else:
        next_before = hi if hi > 1 else None
    if pinned is not None:
        rows = [r for r in rows if r["id"] != pinned["id"]]
    return {"rows": rows, "pinned": pinned, "next_before": next_before,
            "scanned_from": next_before or 1}
