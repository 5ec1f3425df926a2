"""The supervisor: the one process of the daemon that claims tasks and watches children.

Shape (see DESIGN.md): it imports the app once, forks the children, claims as
many due tasks as its children have room for in one transaction, hands them out
over each child's socket, records outcomes in batches, and sleeps in select()
until a child answers, a signal arrives, a producer sends a wake-up, or the
next deadline (a due task, a time limit, a heartbeat, a cron fire) comes.

The work is split by concern: liteqd.lifecycle (spawn, reap, retire, kill,
time limits), liteqd.dispatch (claims and outcomes against the backend) and
liteqd.duties (heartbeat, reclaim, cron). This module holds the loop, signals,
and the operator's commands (stop, reload, scale, status).

Signal handlers only record the signal; the loop acts on it (gunicorn's arbiter).
Every wait is bounded, kills go in two steps, and a child is identified by its
pid and its start time.
"""

import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from setproctitle import setproctitle

from liteq.backends import identity_of, open_backend
from liteq.errors import DatabaseError, DatabaseRefused, DatabaseUnavailable

from . import kept_outcomes, logs, proc
from .config import MAX_CHILDREN, DaemonConfig
from .dispatch import Dispatcher
from .duties import Duties
from .lifecycle import Lifecycle, signal_name
from .logs import get_logger
from .pool import Pool

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
                 plugins: Iterable[Any] = ()) -> None:
        self.config = config
        self.reload_app = reload_app
        self.plugins: list[Any] = list(plugins)   # objects with register(sup), on_tick(sup), close()
        self.log = get_logger()
        self.pools = [Pool(p.name, list(p.queues), p.size,
                           async_slots=getattr(p, "async_concurrency", None)
                           or getattr(config, "async_concurrency", 1))
                      for p in config.pools]
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.process_started = proc.process_start_time(self.pid)
        self.pid_space = proc.pid_space()
        self.worker_id = proc.worker_id(self.hostname, self.pid, self.pid_space)
        self.started_mono = time.monotonic()
        self.started_wall = time.time()
        self.identity = identity_of(config.db)  # names the queue; never holds a password
        self.backend = None
        self.selector = selectors.DefaultSelector()
        self.signals = []
        self.paused = set()
        self.stopping = None            # None, "graceful" or "fast"
        self.stop_deadline = None
        self.exit_code = 0
        self.ready_sent = False
        self.on_ready: list[Callable[[Supervisor], object]] = []  # callbacks once all first children are up
        self.lifecycle = Lifecycle(self)
        self.dispatch = Dispatcher(self)
        self.duties = Duties(self)
        self._sig_r = self._sig_w = None
        self._title = None

    # Counters read by the control channel and systemd status.
    tasks_done = property(lambda self: self.dispatch.tasks_done)
    tasks_failed = property(lambda self: self.dispatch.tasks_failed)

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
                self.lifecycle.spawn_missing()
                if self.stopping and not self.lifecycle.all_children():
                    break
                self._wait(self._next_timeout())
                self._handle_signals()
                self.lifecycle.reap()
                self.lifecycle.enforce_deadlines()
                self.dispatch.sync()
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
        self._install_signals()
        proc.become_subreaper()
        # Inherited by every process our tasks start (through exec too), so that if
        # this daemon is SIGKILLed, the next one can find and end what it left.
        os.environ[proc.WORKER_TAG] = self.worker_id
        self.backend = self._connect()
        if self.backend is None:
            return False
        # Before the first reclaim, which would take the tasks they belong to.
        try:
            kept = kept_outcomes.kept_paths(self.config)
            kept_outcomes.replay(self.backend, kept, self.log)
            kept_outcomes.give_back_lost(self.backend, kept, self.log)
        except BaseException:
            self.backend.close()
            raise
        registered = []
        try:
            for plugin in self.plugins:
                plugin.register(self)
                registered.append(plugin)
        except BaseException:
            for plugin in registered:
                plugin.close()
            self.backend.close()
            raise
        self.duties.heartbeat(startup=True)
        self.dispatch.refresh_limits()
        self.log.info("daemon.starting", worker_id=self.worker_id, db=self.identity,
                      app=self.config.app,
                      pools=[{"name": p.name, "queues": p.queues, "size": p.size}
                             for p in self.pools])
        self.show_title()
        return True

    def _connect(self):
        """Open the backend. While the server does not answer, wait for it (saying so in
        the log and to systemd) until it does, or until a stop; None after a stop."""
        outage = self.dispatch.outage
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
            self._call_plugins("on_waiting")
            logs.flush()
            self._wait(max(0.0, outage.retry_at - time.monotonic()))
            self._handle_signals()
            if self.stopping:
                return None

    def _next_timeout(self):
        now = time.monotonic()
        deadlines = self.duties.deadlines() + self.lifecycle.deadlines()
        if self.dispatch.has_outcomes():
            if now >= self.dispatch.outage.retry_at:
                return 0
            deadlines.append(self.dispatch.outage.retry_at)
        if self.stopping:
            deadlines.append(self.stop_deadline)
        else:
            deadlines.extend(self.dispatch.deadlines())
            deadlines.extend(p.next_spawn for p in self.pools if len(p.active) < p.size)
        for plugin in self.plugins:
            hook = getattr(plugin, "next_deadline", None)
            if hook:
                deadlines.append(hook())
        return max(0.0, min(d for d in deadlines if d is not None) - now)

    def _wait(self, timeout) -> None:
        for key, mask in self.selector.select(timeout):
            kind, obj = key.data
            if kind == "child":
                self.lifecycle.on_ready(obj, mask)
            elif kind == "signal":
                try:
                    while self._sig_r.recv(4096):
                        pass
                except BlockingIOError:
                    pass
            else:
                obj(key.fileobj, mask)

    # ---- file descriptors ------------------------------------------------------

    def register_fd(self, fileobj: "FileDescriptorLike", handler: Callable[[Any, int], object],
                    events: int = selectors.EVENT_READ) -> None:
        """Let a plugin (control server, wake-up channel) be called as
        handler(fileobj, mask) when fileobj is ready."""
        self.selector.register(fileobj, events, ("plugin", handler))

    def modify_fd(self, fileobj, handler, events) -> None:
        """Change what a plugin's file object is watched for."""
        self.selector.modify(fileobj, events, ("plugin", handler))

    def unregister_fd(self, fileobj) -> None:
        """Stop watching a plugin's file object."""
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def supervisor_fds(self):
        """File descriptors a forked child must close (they belong to the supervisor)."""
        fds = [key.fd for key in list(self.selector.get_map().values())]
        if self._sig_w is not None:
            fds.append(self._sig_w.fileno())
        return fds

    # ---- signals ---------------------------------------------------------------

    def _install_signals(self) -> None:
        self._sig_r, self._sig_w = socket.socketpair()
        self._sig_r.setblocking(False)
        self._sig_w.setblocking(False)
        signal.set_wakeup_fd(self._sig_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN,
                    signal.SIGTTOU, signal.SIGCHLD):
            signal.signal(sig, self._record_signal)
        self.selector.register(self._sig_r, selectors.EVENT_READ, ("signal", None))

    def _record_signal(self, signum, frame) -> None:
        self.signals.append(signum)

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
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

    def wake(self, due=None) -> None:
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
                self.lifecycle.kill(child, "stop")
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
        self._call_plugins("on_stopping")
        self.show_title()

    def reload(self) -> str:
        """Replace every child with a fresh one running freshly imported code.

        Returns None when the reload went ahead, else why not (the app failed to
        import: the daemon keeps serving with the code it had; or it is stopping).
        """
        if self.stopping:
            return f"the daemon is stopping ({self.stopping})"
        self.log.info("daemon.reloading")
        self._call_plugins("on_reloading")
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
        self.dispatch.refresh_limits()
        self.lifecycle.spawn_missing()
        self.ready_sent = False  # READY=1 again once the new children are up
        self.log.info("daemon.reloaded")

    def scale(self, pool_name, size):
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
        self.lifecycle.spawn_missing()
        self.log.info("pool.scaled", pool=pool.name, size=size, previous=old)
        self.show_title()

    def pool(self, name):
        """The pool called `name`; KeyError naming the pools that exist."""
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(f"no pool named {name!r} (pools: {', '.join(p.name for p in self.pools)})")

    def _call_plugins(self, hook_name) -> None:
        for plugin in self.plugins:
            hook = getattr(plugin, hook_name, None)
            if hook:
                hook(self)

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
        pools = ", ".join(f"{p.name} busy {sum(1 for c in p.children.values() if c.inflight)}"
                          f"/{p.size}" for p in self.pools)
        state = f" {self.stopping} stop" if self.stopping else ""
        if self.dispatch.outage.down:
            state += " (database unavailable)"
        return f"liteqd: supervisor [{pools}] db={self.identity}{state}"

    def show_title(self) -> None:
        """Set the process title when what it shows has changed (once per loop turn)."""
        title = self.title()
        if title != self._title:
            setproctitle(title)
            self._title = title

    def status(self) -> dict:
        """A snapshot of the daemon for `liteqctl status`."""
        now = time.monotonic()
        pools = []
        for pool in self.pools:
            children = []
            for c in sorted(pool.children.values(), key=lambda c: c.slot):
                run = c.running
                children.append({
                    "pid": c.pid, "slot": c.slot, "state": c.state,
                    "task_id": run.id if run else None,
                    "task_name": run.name if run else None,
                    "running_s": round(now - run.started_mono, 3)
                    if run and run.started_mono else None,
                    "queued": max(len(c.inflight) - len(c.started_runs()), 0),
                    "tasks_running": len(c.started_runs()),
                    "rss_bytes": proc.rss_bytes(c.pid),
                    "tasks_done": c.tasks_done,
                })
            pools.append({"name": pool.name, "queues": pool.queues, "size": pool.size,
                          "async_concurrency": pool.async_slots,
                          "children": children, "failing": pool.failing,
                          "consecutive_failures": pool.failures})
        return {
            "pid": self.pid, "worker_id": self.worker_id, "hostname": self.hostname,
            "uptime_s": round(now - self.started_mono, 3), "db": self.identity,
            "app": self.config.app, "state": self.stopping or "running",
            "paused": sorted(self.paused), "pools": pools,
            "tasks_done": self.tasks_done, "tasks_failed": self.tasks_failed,
            "tasks_refused": self.dispatch.tasks_refused,
            "database": "unavailable" if self.dispatch.outage.down else "ok",
        }

    # ---- shutdown --------------------------------------------------------------

    def _shutdown(self) -> None:
        # Whatever is still held goes back to pending before we let go of the rows.
        self.stopping = self.stopping or "fast"  # (also after an error): claim nothing more
        self.lifecycle.kill_all_for_exit()
        unrecorded = self._record_last_outcomes()
        for plugin in self.plugins:
            try:
                plugin.close()
            except Exception as exc:  # closing must not hide the exit
                self.log.error("plugin.close_failed", error=str(exc))
        try:
            self.backend.remove_worker(self.worker_id)
        except DatabaseError as exc:
            self.log.error("db.error", op="remove_worker", error=str(exc))
        self.lifecycle.reap_remaining()
        self.lifecycle.end_leftovers()
        self.lifecycle.reap_remaining(timeout=0.5)
        (self.log.error if unrecorded else self.log.info)(
            "daemon.stopped", tasks_done=self.tasks_done, tasks_failed=self.tasks_failed,
            outcomes_unrecorded=unrecorded, exit_code=self.exit_code)
        self.backend.close()

    def _record_last_outcomes(self) -> int:
        """Record the outcomes still held, trying until the stop deadline; keep what
        the database still refuses for the next start (kept_outcomes.py), or name it
        in the log. Returns how many were left unrecorded (then the exit is non-zero)."""
        dispatch = self.dispatch
        deadline = max(self.stop_deadline or 0.0, time.monotonic() + LAST_OUTCOMES_MIN_S)
        while True:
            dispatch.outage.retry_at = 0.0
            dispatch.sync()
            if not dispatch.has_outcomes() or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        if not dispatch.has_outcomes():
            return 0
        held = {kind: list(rows) for kind, rows in dispatch.outcomes.items()}
        ids = sorted(row if kind == "release" else row[0]
                     for kind, rows in held.items() for row in rows)
        path = kept_outcomes.keep(kept_outcomes.kept_paths(self.config), self.worker_id, held)
        if path is not None:
            self.log.error("outcomes.kept", count=len(ids), task_ids=ids, path=path,
                           reason="the database refused them until the stop deadline; "
                                  "the next start records them")
        else:
            kept_outcomes.mark_lost(kept_outcomes.kept_paths(self.config), self.worker_id)
            for kind, rows in held.items():
                for row in rows:
                    self.log.error("task.outcome_lost", outcome=kind,
                                   task_id=row if kind == "release" else row[0],
                                   reason=f"{kept_outcomes.LOST_REASON}: neither the "
                                          f"database nor a file took it")
        self.exit_code = self.exit_code or EXIT_OUTCOMES_UNRECORDED
        return len(ids)
