"""PostgreSQL: VACUUM of the tasks table by LiteQ itself, on a server whose autovacuum
is off.

Every task leaves dead row versions behind (its claim, its outcome, its deletion
by retention). autovacuum reclaims them (the table's settings in schema.py make
it take the table at each of its rounds); with autovacuum off nothing does, the
table grows without end and the claim slows down with it (tests/bench_pg_bloat.py:
0.53 MB per thousand tasks, and 3,000 tasks a second instead of 12,000 after
300,000 tasks). So on such a server, when the table's dead rows pass its own
autovacuum threshold (schema.py: 1,000 plus 1 % of the live rows), LiteQ vacuums
as autovacuum would have. Dead rows decide, not deletions: claims and outcomes
leave most of them, and with a retention of a day nothing is deleted for a day.
The dead rows are looked at:

- by purge() (an operator's or a schedule's call), which vacuums before it returns;
- by prune() (the daemons' retention, each heartbeat), and after every
  CHECK_EVERY outcomes a backend records (so churn is vacuumed with retention
  off too): these start a VACUUM on a connection of its own without waiting for
  it (the supervisor's loop must never stall), and a later look collects it, so
  at most one runs per backend at a time.

VACUUM (SKIP_LOCKED) does not block the queue's reads and writes, and skips the
table when another VACUUM holds it. A role that does not own the table gets a
warning from the server instead, and nothing else changes.
"""

from __future__ import annotations

import os
import time

import psycopg
from psycopg import pq
from psycopg.rows import DictRow

from ...errors import DatabaseError
from .connection import Connector, DbSession, close_if_own, is_gone, one
from .schema import VACUUM_SCALE_FACTOR, VACUUM_THRESHOLD

VACUUM = "VACUUM (SKIP_LOCKED) tasks"
AUTOVACUUM_ON = "SELECT current_setting('autovacuum')::bool AS on"
# The statistics' dead and live rows (the caller's own deletions not yet counted).
ROW_COUNTS = ("SELECT pg_stat_get_dead_tuples(t) AS dead, pg_stat_get_live_tuples(t) AS live "
              "FROM (SELECT 'tasks'::regclass AS t) r")

# How long the server's autovacuum setting is trusted before it is read again
# (it changes only with the server's configuration).
RECHECK_S = 60.0

# Outcomes recorded between two looks at the dead rows: each outcome leaves two dead
# row versions (its claim's and its own), so a look every 250 outcomes comes at
# least twice per threshold's worth (1,000 dead rows) of this backend's churn.
CHECK_EVERY = 250


def vacuum_now(connector: Connector) -> None:
    """VACUUM the tasks table on a new connection and wait for it."""
    conn = connector.connect()
    try:
        conn.execute(VACUUM)
    except psycopg.Error as exc:
        raise connector.error(exc, gone=is_gone(exc, conn)) from exc
    finally:
        conn.close()


class BackgroundVacuum:
    """One VACUUM sent on a connection of its own; finished() collects it without
    waiting."""

    def __init__(self, connector: Connector) -> None:
        conn = connector.connect()
        self.conn: psycopg.Connection[DictRow] | None = conn
        self.pid = os.getpid()
        self.error: str | None = None
        try:
            pgconn = conn.pgconn
            pgconn.nonblocking = 1
            pgconn.send_query(VACUUM.encode())
            pgconn.flush()
        except psycopg.Error as exc:
            self.close()
            self.error = str(exc)

    def finished(self) -> bool:
        """True once the VACUUM ended (well or not: `error` says), and the connection
        is closed."""
        if self.conn is None:
            return True
        pgconn = self.conn.pgconn
        try:
            pgconn.flush()
            pgconn.consume_input()
            if pgconn.is_busy():
                return False
            while (result := pgconn.get_result()) is not None:
                if result.status == pq.ExecStatus.FATAL_ERROR:
                    self.error = result.error_message.decode(errors="replace").strip()
        except psycopg.Error as exc:
            self.error = str(exc)
        self.close()
        return True

    def close(self) -> None:
        """Close the connection (a VACUUM still running on the server is left to end;
        a forked child only forgets its parent's)."""
        conn, self.conn = self.conn, None
        close_if_own(conn, self.pid)


class Vacuums:
    """A backend's VACUUMs of tasks, run only while the server's autovacuum is off."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self.running: BackgroundVacuum | None = None   # the one in flight
        self.last_error: str | None = None   # what the last one that failed said
        self._autovacuum: bool | None = None
        self._checked = 0.0
        self.outcomes = 0            # outcomes recorded since the dead rows were looked at
        self.started = 0             # VACUUMs started in the background so far

    def needed(self, session: DbSession, deleted: int = 0) -> bool:
        """True when the server's autovacuum is off (read at most every RECHECK_S) and
        the dead rows, with the `deleted` ones just now, pass the table's threshold
        (whether or not anything was deleted)."""
        if self._autovacuum is None or time.monotonic() - self._checked > RECHECK_S:
            self._autovacuum = bool(one(session.run(AUTOVACUUM_ON))["on"])
            self._checked = time.monotonic()
        if self._autovacuum:
            return False
        rows = one(session.run(ROW_COUNTS))
        dead: int = rows["dead"]
        live: int = rows["live"]
        return dead + deleted > VACUUM_THRESHOLD + VACUUM_SCALE_FACTOR * live

    def idle(self) -> bool:
        """Collect a VACUUM that ended; True when none is in flight."""
        if self.running is not None and self.running.finished():
            self.last_error = self.running.error or self.last_error
            self.running = None
        return self.running is None

    def after_outcomes(self, session: DbSession, recorded: int) -> None:
        """Count `recorded` outcomes; every CHECK_EVERY of them, look at the dead rows
        as after_prune() does. A failure here is left for the next look: the
        outcomes are already committed."""
        self.outcomes += recorded
        if self.outcomes < CHECK_EVERY:
            return
        self.outcomes = 0
        try:
            self.after_prune(session, 0)
        except psycopg.Error as exc:
            self.last_error = str(exc)

    def after_prune(self, session: DbSession, deleted: int) -> None:
        """Collect a VACUUM that ended; start one when none runs and needed() says so.
        Never waits for a VACUUM."""
        if self.idle() and self.needed(session, deleted):
            try:
                self.running = BackgroundVacuum(self.connector)
                self.started += 1
            except DatabaseError as exc:   # the next prune tries again
                self.last_error = str(exc)

    def close(self) -> None:
        """Let go of a VACUUM in flight (the server finishes it on its own)."""
        if self.running is not None:
            self.running.close()
            self.running = None
