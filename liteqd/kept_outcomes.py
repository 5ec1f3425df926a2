"""Outcomes a stopping daemon could not record, kept in a file for the next start.

A graceful stop tries to record its last outcomes until its deadline. When the
database still refuses them (a full disk, a server away), the daemon writes them,
one JSON object a line, to `.liteqd-outcomes-<hash>.jsonl` (hash: the database's
identity) in the first directory that takes them: the control socket's directory
(the runtime directory, /run/liteq under systemd), then, for SQLite, the
database's own. Where neither does, each task is named in the log
(`task.outcome_lost`), and an empty file whose name carries the daemon's worker
id marks the loss (a full file system still has room for a name). Either way the
daemon exits non-zero.

The next daemon on the database, before it reclaims anything, replays every such
file it finds, guarded as always: an outcome is recorded only while the task
still runs for the daemon that kept it (so one replayed twice, or a task another
daemon reclaimed meanwhile, is refused and logged, never applied twice). The
tasks of a daemon marked as having lost outcomes are given back at once with the
reason "outcome lost at daemon stop" (pending while they have retries left, else
failed with that error, not with one of their own).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias, cast
from urllib.parse import quote, unquote

from liteq.backends import identity_of, local_dir
from liteq.errors import DatabaseError
from liteq.paths import socket_path

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from liteq.backends import Backend

    from .config import DaemonConfig
    from .dispatch import Dispatcher


KINDS = ("done", "failed", "retry", "release")
LOST_REASON = "outcome lost at daemon stop"
LOST_INFIX = ".lost-"
#: One parsed line of a kept file.
Entry: TypeAlias = "dict[str, Any]"


def kept_paths(config: DaemonConfig) -> list[str]:
    """Where the outcomes of the daemon with this configuration are kept, in order."""
    identity = identity_of(config.db)
    name = f".liteqd-outcomes-{hashlib.sha1(identity.encode()).hexdigest()[:16]}.jsonl"
    dirs = [os.path.dirname(os.path.abspath(config.socket or socket_path(identity)))]
    beside_db = local_dir(config.db)  # SQLite: the database's directory too
    if beside_db is not None:
        dirs.append(beside_db)
    return [os.path.join(d, name) for d in dict.fromkeys(dirs)]


def lines_of(worker_id: str, outcomes: Mapping[str, Iterable[Any]]) -> bytes:
    """The file's lines for a daemon's unrecorded outcomes ({kind: rows})."""
    out: list[str] = []
    for kind in KINDS:
        for row in outcomes.get(kind, ()):
            row = [row] if kind == "release" else list(row)
            out.append(json.dumps({"worker_id": worker_id, "kind": kind, "row": row},
                                  separators=(",", ":")))
    return ("\n".join(out) + "\n").encode() if out else b""


def keep(paths: Iterable[str], worker_id: str, outcomes: Mapping[str, Iterable[Any]]) -> str | None:
    """Append the outcomes to the first of `paths` that takes them all (written and
    synced); returns that path, or None when none did."""
    data = lines_of(worker_id, outcomes)
    for path in paths:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        except OSError:
            continue
        try:
            # In a shared directory (/tmp) the name may be someone else's file.
            if os.fstat(fd).st_uid != os.geteuid():
                continue
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            return path
        except OSError:
            continue  # a partial line is skipped when replayed; the next place gets all
        finally:
            os.close(fd)
    return None


def mark_lost(paths: Iterable[str], worker_id: str) -> str | None:
    """Create an empty file named for `worker_id` beside the first of `paths` that
    takes it; returns its path, or None."""
    for path in paths:
        marker = f"{path}{LOST_INFIX}{quote(worker_id, safe='')}"
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
            return marker
        except OSError:
            continue
    return None


def _lost_markers(path: str) -> list[tuple[str, str]]:
    """The loss markers beside kept-outcomes path `path`: [(marker path, worker id)]."""
    folder, name = os.path.split(path)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    prefix = name + LOST_INFIX
    return [(os.path.join(folder, n), unquote(n[len(prefix):]))
            for n in names if n.startswith(prefix)]


def give_back_lost(backend: Backend, paths: Iterable[str],
                   log: FilteringBoundLogger) -> list[tuple[int, str]]:
    """Give back the running tasks of every daemon marked as having lost outcomes at
    its stop (reason LOST_REASON); returns [(task id, status)]."""
    out: list[tuple[int, str]] = []
    for path in paths:
        for marker, worker_id in _lost_markers(path):
            try:
                st = os.lstat(marker)
            except FileNotFoundError:
                continue
            if st.st_uid != os.geteuid():
                continue
            rows = backend.reclaim([worker_id], None, reason=LOST_REASON)
            for task_id, status in rows:
                log.warning("task.reclaimed", task_id=task_id, status=status,
                            reason=LOST_REASON, stopped_worker=worker_id)
            out.extend(rows)
            try:
                os.unlink(marker)
            except FileNotFoundError:
                pass
    return out


def _read(path: str) -> list[dict[str, Any]]:
    """The entries of a kept file (lines that are not whole JSON objects skipped)."""
    entries: list[dict[str, Any]] = []
    with open(path, "rb") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and cast(Entry, entry).get("kind") in KINDS:
                entries.append(cast(Entry, entry))
    return entries


def _claim(path: str) -> str | None:
    """Take the file for this process (another daemon starting now cannot take it
    too); the name it now has, or None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if st.st_uid != os.geteuid() or st.st_mode & 0o022 or not os.path.isfile(path):
        return None
    taken = f"{path}.{os.getpid()}.replaying"
    try:
        os.rename(path, taken)
    except FileNotFoundError:
        return None
    return taken


def replay(backend: Backend, paths: Iterable[str], log: FilteringBoundLogger) -> int:
    """Record the outcomes kept in any of `paths` (guarded: only while each task
    still runs for the daemon that kept it); returns how many were recorded. A file
    is removed once replayed; on a database error it is put back for the next start
    and the error raised."""
    total = 0
    for path in paths:
        taken = _claim(path)
        if taken is None:
            continue
        try:
            total += _replay_entries(backend, _read(taken), log, path)
        except DatabaseError:
            if not os.path.exists(path):
                os.rename(taken, path)
            raise
        os.unlink(taken)
    return total


def _replay_entries(backend: Backend, entries: Iterable[dict[str, Any]], log: FilteringBoundLogger,
                    path: str) -> int:
    by_worker: dict[str, dict[str, list[Any]]] = {}
    for entry in entries:
        kinds = by_worker.setdefault(entry["worker_id"], {k: [] for k in KINDS})
        kinds[entry["kind"]].append(entry["row"])
    recorded_total = 0
    for worker_id, kinds in by_worker.items():
        recorded = set(backend.record_outcomes(
            worker_id, done=[tuple(r) for r in kinds["done"]],
            failed=[tuple(r) for r in kinds["failed"]],
            retry=[tuple(r) for r in kinds["retry"]]))
        released = backend.release(worker_id, [r[0] for r in kinds["release"]])
        for kind in ("done", "failed", "retry"):
            for row in kinds[kind]:
                ok = row[0] in recorded
                (log.info if ok else log.warning)(
                    "task.outcome_replayed" if ok else "task.outcome_refused",
                    task_id=row[0], outcome=kind, kept_by=worker_id, path=path,
                    **({} if ok else {"reason": "the task no longer runs for the daemon "
                                                "that kept its outcome"}))
        recorded_total += len(recorded) + released
    return recorded_total


def record_last(dispatch: Dispatcher, config: DaemonConfig, worker_id: str, deadline: float,
                log: FilteringBoundLogger) -> int:
    """At exit: record the outcomes still held, trying until `deadline` (monotonic);
    keep what the database still refuses for the next start, or name it in the log.
    Returns how many were left unrecorded (then the exit is non-zero)."""
    outcomes = dispatch.outcomes
    while True:
        dispatch.outage.retry_at = 0.0
        dispatch.sync(stopping=True)
        if not outcomes.pending() or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if not outcomes.pending():
        return 0
    held = {kind: list(rows) for kind, rows in outcomes.held.items()}
    ids = sorted(row if kind == "release" else row[0]
                 for kind, rows in held.items() for row in rows)
    paths = kept_paths(config)
    path = keep(paths, worker_id, held)
    if path is not None:
        log.error("outcomes.kept", count=len(ids), task_ids=ids, path=path,
                  reason="the database refused them until the stop deadline; "
                         "the next start records them")
        return len(ids)
    mark_lost(paths, worker_id)
    for kind, rows in held.items():
        for row in rows:
            log.error("task.outcome_lost", outcome=kind,
                      task_id=row if kind == "release" else row[0],
                      reason=f"{LOST_REASON}: neither the database nor a file took it")
    return len(ids)
