"""The supervisor: the one process of the daemon that claims tasks and watches children.

Shape: it imports the app once, forks the children, claims as
many due tasks as its children have room for in one transaction, hands them out
over each child's socket, records outcomes in batches, and sleeps in select()
until a child answers, a signal arrives, a producer sends a wake-up, or the
next deadline (a due task, a time limit, a heartbeat, a cron fire) comes.

The work is split by ownership, each part given the collaborators it uses:
liteqd.lifecycle owns the processes (spawn, reap, retire, kill, time limits) and
reports each exit with its cause; liteqd.channel owns a child's socket and the
tasks it holds; liteqd.accounting acts on what the children say; liteqd.dispatch
owns every decision about tasks (claims, hand-out, outcomes, what becomes of a
dead child's tasks); liteqd.duties does the heartbeat, reclaim, pruning and cron.
This module builds them, and holds the loop, signals, and the operator's commands
(stop, reload, scale, status).

Signal handlers only record the signal; the loop acts on it (gunicorn's arbiter).
Every wait is bounded, kills go in two steps, and a child is identified by its
pid and its start time.
"""

import os
import selectors
import signal
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from setproctitle import setproctitle

from liteq.backends import identity_of, open_backend
from liteq.backends.base import Backend
from liteq.errors import DatabaseError, DatabaseRefused, DatabaseUnavailable

from . import kept_outcomes, logs, proc, snapshot
from .accounting import ChildMessages
from .config import MAX_CHILDREN, DaemonConfig
from .dispatch import Dispatcher
from .duties import Duties
from .exits import ExitCause, signal_name
from .fds import Fds, Handler
from .lifecycle import Lifecycle
from .logs import get_logger
from .outage import Outage
from .plugins import Plugin
from .pool import Pool
from .signals import SignalPipe

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

# A stop tries to record its last outcomes until the stop deadline, and for at least
# this long (the deadline may have passed while the tasks ran).
LAST_OUTCOMES_MIN_S = 5.0
# The exit status of a stop that left outcomes unrecorded (kept in a file or lost).
EXIT_OUTCOMES_UNRECORDED = 1


class Supervisor:
    """Runs the pools of one daemon until it is told to stop."""

    def __init__(self, config: DaemonConfig, reload_app: Callable[[], None] | None = None,
                 plugins: Iterable[Plugin] = ()) -> None:
        self.config = config
        self.reload_app = reload_app
        self.plugins: list[Plugin] = list(plugins)
        self.log = get_logger()
        self.pools = [Pool(p.name, list(p.queues), p.size,
                           async_slots=p.async_concurrency or config.async_concurrency)
                      for p in config.pools]
        me = self.me = proc.Identity.of_this_process()
        self.hostname, self.pid, self.pid_space = me.hostname, me.pid, me.pid_space
        self.process_started, self.worker_id = me.process_started, me.worker_id
        self.started_mono = time.monotonic()
        self.started_wall = me.started_wall
        self.identity = identity_of(config.db)  # names the queue; never holds a password
        self.backend: Backend | None = None
        self.fds = Fds(self.log)
        self.signals = SignalPipe()
        self.paused: set[str] = set()
        self.stopping: str | None = None    # None, "graceful" or "fast"
        self.stop_deadline: float | None = None
        self.exit_code = 0
        self.ready_sent = False
        self.on_ready: list[Callable[[Supervisor], object]] = []  # callbacks once all first children are up
        self.outage = Outage(self.log, on_recovered=self._outage_over)
        # Back in well under the others' stale-after after an outage that hit everyone.
        self.outage.limit_backoff(config.stale_after / 4)
        self.lifecycle = Lifecycle(self.pools, config, self.log, self.fds, me)
        # Built once the database answers (they use it): see _build.
        self.dispatch: Dispatcher
        self.duties: Duties
        self.messages: ChildMessages
        self._lost_claims = False           # an outage ended before the dispatcher was built
        self._title: str | None = None

    def _build(self, backend: Backend) -> None:
        """Make the parts that use the database, each with its collaborators."""
        self.backend = backend
        self.dispatch = Dispatcher(self.config, self.log, backend, self.outage, self.pools,
                                   self.lifecycle, self.worker_id, self.paused)
        if self._lost_claims:
            self.dispatch.after_outage()
        self.duties = Duties(self.config, self.log, backend, self.outage, self.me,
                             self.pools, self.dispatch.claim_soon)
        self.messages = ChildMessages(self.config, self.log, self.fds, self.lifecycle,
                                      self.dispatch)

    def _outage_over(self) -> None:
        if self.backend is None:
            self._lost_claims = True
        else:
            self.dispatch.after_outage()

    @property
    def tasks_done(self) -> int:
        """Outcomes recorded as done (for the control channel and systemd status)."""
        return self.dispatch.outcomes.tasks_done if self.backend is not None else 0

    @property
    def tasks_failed(self) -> int:
        """Outcomes recorded as failed."""
        return self.dispatch.outcomes.tasks_failed if self.backend is not None else 0

    # ---- the main loop --------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        if not self._start():
            self.log.info("daemon.stopped", tasks_done=0, tasks_failed=0,
                          exit_code=self.exit_code, reason="stopped during start-up")
            logs.flush()
            return self.exit_code
        try:
            while True:
                if not self.stopping:
                    self.lifecycle.spawn_missing()
                elif not self.lifecycle.all_children():
                    break
                self._wait(self._next_timeout())
                self._handle_signals()
                self._reap()
                self.lifecycle.enforce_deadlines(
                    self.stop_deadline if self.stopping else None, self.stopping == "fast")
                self.dispatch.release_held(self.lifecycle.take_abandoned())
                self.dispatch.sync(stopping=bool(self.stopping))
                if not self.stopping:
                    self.dispatch.check_cancelled()
                    self.duties.run_due()
                self._check_ready()
                self.show_title()
                for plugin in self.plugins:
                    plugin.on_tick(self)
                logs.flush()
        finally:
            self._shutdown()
            logs.flush()
        return self.exit_code

    def _start(self) -> bool:
        """Connect and set up; False when a stop came while waiting for the database."""
        self.signals.install(self.fds)
        proc.become_subreaper()
        # Inherited by every process our tasks start (through exec too), so that if
        # this daemon is SIGKILLed, the next one can find and end what it left.
        os.environ[proc.WORKER_TAG] = self.worker_id
        backend = self._connect()
        if backend is None:
            return False
        self._build(backend)
        # Before the first reclaim, which would take the tasks they belong to.
        try:
            kept = kept_outcomes.kept_paths(self.config)
            kept_outcomes.replay(backend, kept, self.log)
            kept_outcomes.give_back_lost(backend, kept, self.log)
        except BaseException:
            backend.close()
            raise
        registered: list[Plugin] = []
        try:
            for plugin in self.plugins:
                plugin.register(self)
                registered.append(plugin)
        except BaseException:
            for plugin in registered:
                plugin.close()
            backend.close()
            raise
        self.duties.heartbeat(startup=True)
        self.dispatch.refresh_limits()
        self.log.info("daemon.starting", worker_id=self.worker_id, db=self.identity,
                      app=self.config.app,
                      pools=[{"name": p.name, "queues": p.queues, "size": p.size}
                             for p in self.pools])
        self.show_title()
        return True

    def _connect(self) -> Backend | None:
        """Open the backend. While the server does not answer, wait for it (saying so in
        the log and to systemd) until it does, or until a stop; None after a stop."""
        outage = self.outage
        while True:
            try:
                backend = open_backend(self.config.db, daemon=True)
            except DatabaseRefused:
                raise  # a wrong database, role or password: waiting would not help
            except DatabaseUnavailable as exc:
                outage.failed("connect", exc)
            else:
                outage.succeeded()
                return backend
            self.show_title()
            for plugin in self.plugins:
                plugin.on_waiting(self)
            logs.flush()
            self._wait(max(0.0, outage.retry_at - time.monotonic()))
            self._handle_signals()
            if self.stopping:
                return None

    def _next_timeout(self) -> float:
        now = time.monotonic()
        deadlines = self.duties.deadlines(bool(self.stopping)) + self.lifecycle.deadlines()
        if self.dispatch.has_outcomes():
            if now >= self.outage.retry_at:
                return 0
            deadlines.append(self.outage.retry_at)
        if self.stopping:
            if self.stop_deadline is not None:
                deadlines.append(self.stop_deadline)
        else:
            deadlines.extend(self.dispatch.deadlines())
            deadlines.extend(p.next_spawn for p in self.pools if len(p.active) < p.size)
        for plugin in self.plugins:
            deadline = plugin.next_deadline()
            if deadline is not None:
                deadlines.append(deadline)
        return max(0.0, min(deadlines) - now)

    def _wait(self, timeout: float) -> None:
        for key, mask in self.fds.selector.select(timeout):
            kind, obj = key.data
            if kind == "child":
                self.messages.on_ready(obj, mask)
            elif kind == "signal":
                self.signals.drain()
            else:
                obj(key.fileobj, mask)

    def _reap(self) -> None:
        """Hand the exits of the children that ended to the parts that care."""
        for child, ended, status in self.lifecycle.reap():
            # Results it wrote before dying are still in the socket: take them first.
            self.messages.drain(child)
            self.lifecycle.close(child)
            requeued = self.dispatch.child_ended(child, ended)
            if self.lifecycle.ended(child, ended, status, requeued, bool(self.stopping)):
                self.exit_code = 3
                self.request_stop(fast=True, reason="children cannot start")
            self.show_title()

    # ---- file descriptors ------------------------------------------------------

    def register_fd(self, fileobj: "FileDescriptorLike", handler: Handler,
                    events: int = selectors.EVENT_READ) -> None:
        """Let a plugin (control server, wake-up channel) be called as
        handler(fileobj, mask) when fileobj is ready."""
        self.fds.register_fd(fileobj, handler, events)

    def modify_fd(self, fileobj: "FileDescriptorLike", handler: Handler, events: int) -> None:
        """Change what a plugin's file object is watched for."""
        self.fds.modify_fd(fileobj, handler, events)

    def unregister_fd(self, fileobj: "FileDescriptorLike") -> None:
        """Stop watching a plugin's file object."""
        self.fds.unregister_fd(fileobj)

    # ---- signals ---------------------------------------------------------------

    def _handle_signals(self) -> None:
        while (sig := self.signals.pop()) is not None:
            if sig == signal.SIGCHLD:
                continue  # reaping runs every loop turn
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.request_stop(fast=self.stopping is not None, reason=signal_name(sig))
            elif sig == signal.SIGHUP:
                self.reload()
            elif sig == signal.SIGTTIN:
                self.scale(self.pools[0].name, self.pools[0].size + 1)
            elif sig == signal.SIGTTOU:
                self.scale(self.pools[0].name, max(self.pools[0].size - 1, 0))

    # ---- operator commands -----------------------------------------------------

    def wake(self, due: float | None = None) -> None:
        """A producer enqueued something: look for work now, or at `due` (epoch s)."""
        self.dispatch.wake(due)

    def request_stop(self, fast: bool = False, reason: str = "request") -> None:
        """Graceful stop (finish running tasks within the graceful timeout), or fast stop."""
        if fast:
            if self.stopping == "fast":
                return
            self.stopping = "fast"
            self.log.warning("daemon.stopping", mode="fast", reason=reason)
            for child in self.lifecycle.all_children():
                self.lifecycle.kill(child, ExitCause.STOP)
            self.stop_deadline = time.monotonic() + 2.0
        else:
            if self.stopping:
                return
            self.stopping = "graceful"
            self.stop_deadline = time.monotonic() + self.config.graceful_timeout
            self.log.info("daemon.stopping", mode="graceful", reason=reason,
                          graceful_timeout_s=self.config.graceful_timeout)
            for child in self.lifecycle.all_children():
                self.lifecycle.retire(child, self.stop_deadline)
        for plugin in self.plugins:
            plugin.on_stopping(self)
        self.show_title()

    def reload(self) -> str | None:
        """Replace every child with a fresh one running freshly imported code.

        Returns None when the reload went ahead, else why not (the app failed to
        import: the daemon keeps serving with the code it had; or it is stopping).
        """
        if self.stopping:
            return f"the daemon is stopping ({self.stopping})"
        self.log.info("daemon.reloading")
        for plugin in self.plugins:
            plugin.on_reloading(self)
        if self.reload_app is not None:
            try:
                self.reload_app()
            except Exception as exc:  # keep serving with the code we have
                error = f"{type(exc).__name__}: {exc}"
                self.log.error("daemon.reload_failed", error=error)
                return f"the app failed to load ({error}); still running the code it had"
        deadline = time.monotonic() + self.config.graceful_timeout
        for child in self.lifecycle.all_children():
            self.lifecycle.retire(child, deadline)
        for pool in self.pools:
            pool.failures = 0
            pool.next_spawn = 0.0
        if self.backend is not None:    # (else the start reads them)
            self.dispatch.refresh_limits()
        self.lifecycle.spawn_missing()
        self.ready_sent = False  # READY=1 again once the new children are up
        self.log.info("daemon.reloaded")
        return None

    def scale(self, pool_name: str, size: int) -> None:
        """Set a pool's target size; shrinking retires idle children first."""
        pool = self.pool(pool_name)
        if not 0 <= size <= MAX_CHILDREN:
            raise ValueError(f"a pool's size must be from 0 to {MAX_CHILDREN}; got {size}")
        old = pool.size
        pool.size = size
        extra = len(pool.active) - size
        if extra > 0:
            # Idle children first, then the ones with the least queued work.
            victims = sorted(pool.active, key=lambda c: (len(c.inflight), -c.slot))[:extra]
            deadline = time.monotonic() + self.config.graceful_timeout
            for child in victims:
                self.lifecycle.retire(child, deadline)
        pool.next_spawn = 0.0
        if not self.stopping:
            self.lifecycle.spawn_missing()
        self.log.info("pool.scaled", pool=pool.name, size=size, previous=old)
        self.show_title()

    def pool(self, name: str) -> Pool:
        """The pool called `name`; KeyError naming the pools that exist."""
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(f"no pool named {name!r} (pools: {', '.join(p.name for p in self.pools)})")

    # ---- readiness, title, status ------------------------------------------------

    def _check_ready(self) -> None:
        if self.ready_sent or self.stopping:
            return
        if all(len([c for c in p.active if c.ready]) >= min(p.size, 1) for p in self.pools):
            self.ready_sent = True
            self.log.info("daemon.ready", pid=self.pid, worker_id=self.worker_id,
                          children=sum(len(p.children) for p in self.pools))
            for callback in self.on_ready:
                callback(self)

    def title(self) -> str:
        """The supervisor's process title: per pool, the children busy with a task
        out of the pool's size (`default busy 1/4`)."""
        return snapshot.title(self.pools, self.identity, self.stopping, self.outage.down)

    def show_title(self) -> None:
        """Set the process title when what it shows has changed (once per loop turn)."""
        title = self.title()
        if title != self._title:
            setproctitle(title)
            self._title = title

    def status(self) -> dict[str, Any]:
        """A snapshot of the daemon for `liteqctl status`."""
        now = time.monotonic()
        return {
            "pid": self.pid, "worker_id": self.worker_id, "hostname": self.hostname,
            "uptime_s": round(now - self.started_mono, 3), "db": self.identity,
            "app": self.config.app, "state": self.stopping or "running",
            "paused": sorted(self.paused), "pools": snapshot.pools(self.pools, now),
            "tasks_done": self.tasks_done, "tasks_failed": self.tasks_failed,
            "tasks_refused": self.dispatch.outcomes.tasks_refused,
            "database": "unavailable" if self.outage.down else "ok",
        }

    # ---- shutdown --------------------------------------------------------------

    def _shutdown(self) -> None:
        # Whatever is still held goes back to pending before we let go of the rows.
        self.stopping = self.stopping or "fast"  # (also after an error): claim nothing more
        self.lifecycle.kill_all_for_exit()
        self.dispatch.release_held(self.lifecycle.take_abandoned())
        deadline = max(self.stop_deadline or 0.0, time.monotonic() + LAST_OUTCOMES_MIN_S)
        unrecorded = kept_outcomes.record_last(self.dispatch, self.config, self.worker_id,
                                               deadline, self.log)
        if unrecorded:
            self.exit_code = self.exit_code or EXIT_OUTCOMES_UNRECORDED
        for plugin in self.plugins:
            try:
                plugin.close()
            except Exception as exc:  # closing must not hide the exit
                self.log.error("plugin.close_failed", error=str(exc))
        backend = self.dispatch.backend
        try:
            backend.remove_worker(self.worker_id)
        except DatabaseError as exc:
            self.log.error("db.error", op="remove_worker", error=str(exc))
        self.lifecycle.reap_remaining()
        self.lifecycle.end_leftovers()
        self.lifecycle.reap_remaining(timeout=0.5)
        (self.log.error if unrecorded else self.log.info)(
            "daemon.stopped", tasks_done=self.tasks_done, tasks_failed=self.tasks_failed,
            outcomes_unrecorded=unrecorded, exit_code=self.exit_code)
        backend.close()
