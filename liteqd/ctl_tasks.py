"""`liteqctl failed`, `liteqctl retry` and `liteqctl purge`: operators' commands on
finished tasks. They work on the database itself (no daemon needed), through the
backend's find_finished / count_finished and its retry_tasks / delete_tasks, the
operations behind liteq.retry_task(), liteq.purge_tasks() and the panel's actions.

Retry (in bulk) and purge ask before they act: on a terminal they prompt, and
anywhere else they need --yes; --dry-run only counts.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from liteq.backends import get_backend
from liteq.backends.base import Backend
from liteq.backends.filters import FINISHED, TaskFilter
from liteq.status import task_row_to_dict
from liteq.timeutil import to_iso

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.I)


def parse_duration(text: str) -> float:
    """Seconds from `3600`, `90s`, `15m`, `2h`, `7d` or `2w` (argparse type: a clear
    error for anything else)."""
    m = _DURATION.match(text)
    if m is None:
        raise argparse.ArgumentTypeError(
            f"expected an age such as 3600, 90s, 15m, 2h, 7d or 2w; got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2).lower()]


def parse_statuses(text: str) -> list[str]:
    """`done,failed` -> ['done', 'failed'], only finished statuses (argparse type)."""
    chosen = [s.strip().lower() for s in text.split(",") if s.strip()]
    bad = [s for s in chosen if s not in FINISHED]
    if bad or not chosen:
        raise argparse.ArgumentTypeError(
            f"a status to purge is done, failed or cancelled (comma-separated); got {text!r}")
    return chosen


def _fmt_age(seconds: float) -> str:
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def add_filters(p: argparse.ArgumentParser, what: str) -> None:
    """The filters every task command takes."""
    p.add_argument("ids", nargs="*", type=int, metavar="ID",
                   help=f"only these task ids ({what})")
    p.add_argument("--queue", help="only tasks of this queue")
    p.add_argument("--name", help="only tasks of this task name")
    p.add_argument("--older-than", type=parse_duration, metavar="AGE",
                   help="only tasks that finished over AGE ago: seconds, or 90s, 15m, 2h, "
                        "7d, 2w")
    p.add_argument("--json", action="store_true", help="print JSON")


def add_commands(sub: Any) -> None:
    """Add failed, retry and purge to liteqctl's subparsers."""
    s = sub.add_parser("failed", help="list failed tasks (from the database): id, name, "
                                      "queue, attempts, finished, error")
    add_filters(s, "failed ones")
    s.add_argument("--limit", type=int, default=50,
                   help="show at most this many, latest first (default 50)")
    s = sub.add_parser("retry", help="put failed tasks back to pending, attempts reset "
                                     "(named ids: failed or cancelled ones)")
    add_filters(s, "failed or cancelled ones; no confirmation needed")
    _add_confirm(s)
    s = sub.add_parser("purge", help="delete finished tasks: needs --older-than or ids")
    add_filters(s, "finished ones")
    s.add_argument("--status", type=parse_statuses, action="append", metavar="STATUS",
                   help="only these finished statuses: done, failed, cancelled "
                        "(comma-separated or repeated; default all three)")
    _add_confirm(s)


def _add_confirm(p: argparse.ArgumentParser) -> None:
    p.add_argument("--yes", "-y", action="store_true",
                   help="do it without asking (needed when stdin is not a terminal)")
    p.add_argument("--dry-run", action="store_true",
                   help="only count the tasks it would touch")


def _scope(args: argparse.Namespace, statuses: Sequence[str]) -> str:
    """What a command touches, in words: `failed tasks of queue emails, finished over
    2h ago`."""
    parts = [f"{'/'.join(statuses)} tasks"]
    if args.ids:
        parts.append("with id " + ", ".join(map(str, sorted(set(args.ids)))))
    if args.queue is not None:
        parts.append(f"of queue {args.queue}")
    if args.name is not None:
        parts.append(f"named {args.name}")
    if args.older_than is not None:
        parts.append(f"finished over {_fmt_age(args.older_than)} ago")
    return parts[0] + (" " + ", ".join(parts[1:]) if len(parts) > 1 else "")


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {"queue": args.queue, "name": args.name, "older_than": args.older_than,
            "ids": args.ids or None}


def _chosen(args: argparse.Namespace, statuses: Sequence[str]) -> TaskFilter:
    """The tasks a retry or purge acts on: its filters, among `statuses`."""
    return TaskFilter(ids=tuple(args.ids) if args.ids else None, queue=args.queue,
                      name=args.name, statuses=tuple(statuses), older_than=args.older_than)


def confirm(question: str, yes: bool, stdin: TextIO | None = None,
            stderr: TextIO | None = None) -> bool:
    """True to go ahead: --yes, or a `y` typed at the terminal. Not on a terminal and no
    --yes: ValueError, so a script never deletes by accident or hangs on a prompt."""
    if yes:
        return True
    stdin = stdin or sys.stdin
    stderr = stderr or sys.stderr
    assert stdin is not None and stderr is not None  # (None only in a process without them)
    if not stdin.isatty():
        raise ValueError(f"{question.rstrip('?')}: not without --yes (stdin is not a "
                         f"terminal to ask on); --dry-run only counts")
    stderr.write(f"{question} [y/N] ")
    stderr.flush()
    try:
        answer = stdin.readline()
    except KeyboardInterrupt:  # Ctrl-C at the prompt: a no, without a traceback
        stderr.write("\n")
        return False
    return answer.strip().lower() in ("y", "yes")


def _error_line(error: str | None, width: int = 70) -> str:
    """The last line of an error text (the exception after its traceback), cut short."""
    lines = [x for x in (error or "").strip().splitlines() if x.strip()]
    text = lines[-1].strip() if lines else "-"
    return text if len(text) <= width else text[:width - 3] + "..."


def render_failed(rows: list[dict[str, Any]], total: int) -> str:
    """The human-readable `liteqctl failed`."""
    from .tables import table
    if not rows:
        return "no failed tasks match"
    out: str = table(["ID", "NAME", "QUEUE", "ATTEMPTS", "FINISHED", "ERROR"],
                     [(r["id"], r["name"], r["queue"],
                       f"{r['attempts']}/{r['max_retries'] + 1}",
                       (to_iso(r["finished_at"]) or "-")[:19], _error_line(r["error"]))
                      for r in rows])
    if total > len(rows):
        out += f"\n{len(rows)} of {total} shown (latest first; --limit shows more)"
    return out


def run_failed(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    """`liteqctl failed`."""
    if args.limit < 1:
        raise ValueError(f"--limit must be at least 1; got {args.limit}")
    store = get_backend(args.db)
    rows = store.find_finished(("failed",), limit=args.limit, **_filters(args))
    if args.json:
        out(json.dumps([task_row_to_dict(r) for r in rows], indent=2, default=str))
        return 0
    total = store.count_finished(("failed",), **_filters(args)) \
        if len(rows) == args.limit else len(rows)
    out(render_failed(rows, total))
    return 0


def _either(words: Sequence[str]) -> str:
    """`a`, `a or b`, `a, b or c`."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _rows(store: Backend, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    return {r["id"]: r for r in store.get_tasks(sorted(set(ids)))} if ids else {}


def _named_misses(ids: Sequence[int], before: dict[int, dict[str, Any]],
                  after: dict[int, dict[str, Any]], wanted: Sequence[str], verb: str,
                  kept_because: str) -> list[str]:
    """Why each named id was not acted on (rows before and after the action)."""
    misses: list[str] = []
    for i in sorted(set(ids)):
        row, now_row = before.get(i), after.get(i)
        if row is None:
            misses.append(f"task {i} is not there")
        elif row["status"] not in wanted:
            misses.append(f"task {i} is {row['status']}: only {_either(wanted)} tasks "
                          f"can be {verb}")
        elif now_row is not None and now_row["status"] == row["status"]:
            misses.append(f"task {i} was not {verb}: another filter left it out, or "
                          f"{kept_because}")
    return misses


def run_retry(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    """`liteqctl retry`."""
    store = get_backend(args.db)
    statuses = ("failed", "cancelled") if args.ids else ("failed",)
    matched = store.count_finished(statuses, **_filters(args))
    scope = _scope(args, statuses)
    before = _rows(store, args.ids)
    if matched == 0 or args.dry_run:
        return _report(args, out, "retry", matched, None, scope, before, before, statuses)
    # Named ids are a deliberate choice; a bulk retry runs every side effect again.
    if not args.ids and not confirm(f"Retry {matched} {scope}?", args.yes):
        out("nothing retried")
        return 0
    done = store.retry_tasks(_chosen(args, statuses))
    return _report(args, out, "retry", matched, done, scope, before,
                   _rows(store, args.ids), statuses)


def run_purge(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    """`liteqctl purge`."""
    if args.older_than is None and not args.ids:
        raise ValueError("purge needs --older-than AGE (e.g. 7d; --older-than 0 for any "
                         "age) or task ids: it will not delete every finished task by "
                         "default")
    statuses = tuple(dict.fromkeys(s for group in (args.status or [FINISHED]) for s in group))
    store = get_backend(args.db)
    matched = store.count_finished(statuses, **_filters(args))
    scope = _scope(args, statuses)
    before = _rows(store, args.ids)
    if matched == 0 or args.dry_run:
        return _report(args, out, "purge", matched, None, scope, before, before, statuses)
    if not confirm(f"Delete {matched} {scope}?", args.yes):
        out("nothing deleted")
        return 0
    done = store.delete_tasks(_chosen(args, statuses))
    return _report(args, out, "purge", matched, done, scope, before,
                   _rows(store, args.ids), statuses)


_KEPT = {"retry": "a pending or running task holds its unique key",
         "purge": "a pending or running task depends on it"}


def _report(args: argparse.Namespace, out: Callable[[str], None], verb: str, matched: int,
            done: int | None, scope: str, before: dict[int, dict[str, Any]],
            after: dict[int, dict[str, Any]], statuses: Sequence[str]) -> int:
    """Print what a retry or purge did (done None: nothing was done, a dry run or no
    match); exit 1 when a named id was left out."""
    past = {"retry": "retried", "purge": "purged"}[verb]
    misses = [] if args.dry_run or not args.ids else \
        _named_misses(args.ids, before, after, statuses, past, _KEPT[verb])
    if args.json:
        out(json.dumps({"matched": matched, past: done or 0, "dry_run": args.dry_run,
                        "scope": scope, "problems": misses}, indent=2))
    elif done is None:
        out(f"would {verb} {matched} {scope}" if args.dry_run and matched
            else f"no {scope}")
    else:
        line = f"{past} {done} {scope}"
        if done < matched:
            line += f" ({matched - done} left as they are: {_KEPT[verb]})"
        out(line)
    for m in misses:
        print(f"liteqctl: {m}", file=sys.stderr)
    return 1 if misses else 0
