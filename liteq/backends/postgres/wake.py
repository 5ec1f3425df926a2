"""PostgreSQL wake-ups: producers NOTIFY inside their enqueue's transaction, and each
daemon holds one LISTEN connection whose socket joins its select() loop.

A notification's payload is a small JSON object, so more kinds can travel on the
same channel later:

    {"q": "emails", "d": 0.0}     a task of queue "emails" is due in d seconds
    {"d": 12.5}                   something is due in d seconds (an explicit nudge)
    {"k": "cancel", "id": 7}      task 7 was cancelled: the daemon running it stops it

d counts from the server's now() at the enqueue (or from the sender's clock for
a nudge): a relative time, which each daemon adds to its own time.time(), so
clocks that disagree between hosts do not matter. d <= 0 means due now. A
payload with a "k" (kind) other than "wake" is for a later feature and ignored.

The channel is specific to the queue: notifications are per database, and the
tables' schema names the queue within it, so the name is derived from the schema.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, cast

import psycopg
from psycopg import sql
from psycopg.rows import DictRow

from ...errors import DatabaseUnavailable
from ..base import WakeChannel
from .connection import Connector

# SQL for a wake-up payload; {queue} and {due} are SQL expressions.
NOTIFY_PAYLOAD = ("json_build_object('q', {queue}, "
                  "'d', round(date_part('epoch', {due} - now())::numeric, 3))::text")

_NAME_MAX = 63  # NAMEDATALEN - 1: longer channel names are refused


def channel_name(schema: str) -> str:
    """The NOTIFY channel of the queue whose tables live in `schema`."""
    name = f"liteq_{schema}"
    if len(name.encode()) <= _NAME_MAX:
        return name
    return "liteq_" + hashlib.sha1(schema.encode()).hexdigest()[:24]


def nudge_payload(due: float | None, wall: float | None = None) -> str:
    """The payload of an explicit wake-up for a task due at `due` (epoch s; None: now)."""
    wait = 0.0 if due is None else due - (time.time() if wall is None else wall)
    return json.dumps({"d": round(max(wait, 0.0), 3)})


def read_payload(payload: str, wall: float) -> tuple[bool, float | None]:
    """(due_now, due_later epoch s on this host or None) of one notification's payload.

    Anything unreadable counts as "due now": the daemon just looks for work.
    """
    try:
        parsed: object = json.loads(payload)
        if not isinstance(parsed, dict):
            return True, None
        data = cast("dict[str, Any]", parsed)
        if data.get("k", "wake") != "wake":
            return False, None
        wait = float(data.get("d", 0.0))
    except (ValueError, TypeError):
        return True, None
    if wait <= 0:
        return True, None
    return False, wall + wait


def cancel_payload(task_id: int) -> str:
    """The payload that tells the daemons task `task_id` was cancelled (cancel_of reads
    it; cancel() builds the same one in SQL, to send it with its own statement)."""
    return json.dumps({"k": "cancel", "id": int(task_id)})


def cancel_of(payload: str) -> int | None:
    """The task id of a cancel notification ({"k": "cancel", "id": N}), else None."""
    if '"cancel"' not in payload:
        return None
    try:
        data = json.loads(payload)
        return int(data["id"]) if data.get("k") == "cancel" else None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


class ListenChannel(WakeChannel):
    """The daemon's end: a dedicated autocommit connection that LISTENs on the queue's
    channel.

    Contract, for the daemon's select() loop:
    - fileno() is the connection's socket; watch it for reading.
    - drain() reads what arrived, without blocking, and returns (due_now,
      due_later): due_later is an epoch time on this host's clock, or None.
    - When the connection is lost (server restart, pg_terminate_backend, a network
      that drops), drain() raises DatabaseUnavailable and the channel is down.
      fileno() still names the dead socket (which select() keeps reporting as
      readable) until reconnect(): unregister it first.
    - reconnect() opens a new connection and LISTENs again; it raises
      DatabaseUnavailable while the server is unreachable (retry with back-off).
      fileno() is then a new descriptor: register the channel again. Wake-ups
      sent while it was down are lost, so look for work after a reconnect.
    - `connected` says whether it is up; close() ends it for good.
    Notifications are only hints: the daemon also polls.
    """

    def __init__(self, connector: Connector, channel: str) -> None:
        self._connector = connector
        self.channel = channel
        self._conn: psycopg.Connection[DictRow] | None = None
        self._fd = -1
        self.connected = False
        self.reconnect()

    def reconnect(self) -> None:
        """(Re)open the connection and LISTEN; DatabaseUnavailable when it cannot."""
        self._close_conn()
        conn = self._connector.connect()
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except psycopg.Error as exc:
            conn.close()
            raise self._connector.error(exc, gone=True) from exc
        self._conn = conn
        self._fd = conn.pgconn.socket
        self.connected = True

    @property
    def server_pid(self) -> int | None:
        """The server process of the LISTEN connection (None while down)."""
        return None if self._conn is None else self._conn.info.backend_pid

    def fileno(self) -> int:
        """The LISTEN connection's socket (-1 once closed)."""
        return self._fd

    def drain(self) -> tuple[bool, float | None]:
        """Read every notification that arrived: (due_now, earliest later due time)."""
        conn = self._conn
        if not self.connected or conn is None:
            raise DatabaseUnavailable(f"the wake-up channel of {self._connector.identity} is "
                                      f"down; reconnect() it")
        pgconn = conn.pgconn
        try:
            # Twice: a terminated session sends its FATAL message and then closes; the
            # second read sees the close now rather than at the next select().
            pgconn.consume_input()
            pgconn.consume_input()
        except psycopg.Error as exc:
            self.connected = False
            raise self._connector.error(exc, gone=True) from exc
        due_now, later = False, None
        wall = time.time()
        encoding = conn.info.encoding
        while (note := pgconn.notifies()) is not None:
            text = note.extra.decode(encoding, "replace")
            cancel_id = cancel_of(text)
            if cancel_id is not None:
                self._note_cancel(cancel_id)
                continue
            now_due, due = read_payload(text, wall)
            due_now = due_now or now_due
            if due is not None and (later is None or due < later):
                later = due
        return due_now, later

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        self.connected = False
        self._fd = -1
        if conn is not None:
            try:
                conn.close()
            except Exception:  # a dead socket may fail to close cleanly: it is gone anyway
                pass

    def close(self) -> None:
        """Stop listening and close the connection."""
        self._close_conn()
