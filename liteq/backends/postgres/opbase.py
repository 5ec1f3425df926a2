"""PostgreSQL: what the operation mixins of PostgresBackend (tasks, workers, reads,
schedules, ...) share, declared once so that each mixin can subclass it and be
type-checked."""

from __future__ import annotations

from ..base import Backend
from ..stats import NameCache
from .connection import Connector, DbSession
from .vacuum import Vacuums


class OpBase(Backend):
    """The state PostgresBackend's operations run on."""

    #: True in liteqd's supervisor (a lock_timeout on its statements).
    daemon: bool
    _connector: Connector
    #: The connection (run each operation under its lock: connection.guarded).
    _session: DbSession
    #: The schema of the queue's tables, and its NOTIFY channel (known once connected).
    _schema: str
    _channel: str
    _vacuums: Vacuums
    #: The task names task_stats holds (stats.py).
    _stat_names: NameCache
    #: The task_stats rows this backend adds to (schema.STAT_SHARDS).
    _stat_shard: int
    #: See rate_wait().
    _rate_wait: float | None
