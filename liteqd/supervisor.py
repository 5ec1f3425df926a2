"""The supervisor: the one process of the daemon that claims tasks and watches children.

Shape (see DESIGN.md): it imports the app once, forks the children, claims as
many due tasks as its children have room for in one transaction, hands them out
over each child's socket, records outcomes in batches, and sleeps in select()
until a child answers, a signal arrives, a producer sends a wake-up, or the
next deadline (a due task, a time limit, a heartbeat, a cron fire) comes.

Signal handlers only record the signal; the loop acts on it (gunicorn's arbiter).
Every wait is bounded, kills go in two steps, and a child is identified by its
pid and its start time.
"""

import json
import os
import select
import selectors
import signal
import socket
import sys
import time
import uuid

from setproctitle import setproctitle

from liteq import retry as retry_policy
from liteq.errors import DatabaseError
from liteq.storage import Store
from liteq.wakeup import THROTTLE_S

from . import proc
from .child import BOOT_ERROR_EXIT, child_main
from .config import MAX_CHILDREN
from . import logs
from .logs import get_logger
from .pool import ChildHandle, Pool, TaskRun

MAX_RESPAWN_DELAY = 30.0
MAX_BOOT_ERRORS = 5
_SIGNAMES = {s.value: s.name for s in signal.Signals}
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _describe_exit(status):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by signal {_SIGNAMES.get(sig, sig)} ({sig})"
    return f"exited with code {os.WEXITSTATUS(status)}"


class Supervisor:
    """Runs the pools of one daemon until it is told to stop."""

    def __init__(self, config, reload_app=None, plugins=()):
        self.config = config
        self.reload_app = reload_app
        self.plugins = list(plugins)   # objects with register(sup), on_tick(sup), close()
        self.log = get_logger()
        self.pools = [Pool(p.name, list(p.queues), p.size) for p in config.pools]
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.process_started = proc.process_start_time(self.pid)
        self.worker_id = f"{self.hostname}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.started_mono = time.monotonic()
        self.started_wall = time.time()
        self.store = None
        self.selector = selectors.DefaultSelector()
        self.signals = []
        self.paused = set()
        self.stopping = None            # None, "graceful" or "fast"
        self.stop_deadline = None
        self.exit_code = 0
        self.outcomes = {"done": [], "failed": [], "retry": [], "release": []}
        self.next_heartbeat = 0.0
        self.next_poll = 0.0
        self.due_hint = None            # epoch time of the next delayed task we know of
        self.polling = False            # this loop turn is a fallback poll
        self.follow_up = None           # a claim owed shortly after a wake-up
        self.rescan_due = False         # the known due time passed: look up the next one
        self.next_schedule = None
        self.db_retry_at = 0.0
        self.tasks_done = 0
        self.tasks_failed = 0
        self.ready_sent = False
        self.on_ready = []              # callbacks once all first children are up
        self._sig_r = self._sig_w = None
        self._title = None

    # ---- set-up ------------------------------------------------------------

    def _install_signals(self):
        self._sig_r, self._sig_w = socket.socketpair()
        self._sig_r.setblocking(False)
        self._sig_w.setblocking(False)
        signal.set_wakeup_fd(self._sig_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN,
                    signal.SIGTTOU, signal.SIGCHLD):
            signal.signal(sig, self._record_signal)
        self.selector.register(self._sig_r, selectors.EVENT_READ, ("signal", None))

    def _record_signal(self, signum, frame):
        self.signals.append(signum)

    def register_fd(self, fileobj, handler, events=selectors.EVENT_READ):
        """Let a plugin (control server, wake socket) be called as handler(fileobj, mask)
        when fileobj is ready."""
        self.selector.register(fileobj, events, ("plugin", handler))

    def modify_fd(self, fileobj, handler, events):
        """Change what a plugin's file object is watched for."""
        self.selector.modify(fileobj, events, ("plugin", handler))

    def unregister_fd(self, fileobj):
        """Stop watching a plugin's file object."""
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def supervisor_fds(self):
        """File descriptors a forked child must close (they belong to the supervisor)."""
        fds = []
        for key in list(self.selector.get_map().values()):
            fds.append(key.fd)
        if self._sig_w is not None:
            fds.append(self._sig_w.fileno())
        return fds

    def title(self):
        """The supervisor's process title: per pool, the children busy with a task
        out of the pool's size (`default busy 1/4`)."""
        pools = ", ".join(f"{p.name} busy {sum(1 for c in p.children.values() if c.inflight)}"
                          f"/{p.size}" for p in self.pools)
        state = f" {self.stopping} stop" if self.stopping else ""
        return f"liteqd: supervisor [{pools}] db={self.config.db}{state}"

    def _show_title(self):
        """Set the process title when what it shows has changed (once per loop turn)."""
        title = self.title()
        if title != self._title:
            setproctitle(title)
            self._title = title

    # ---- the main loop --------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        self._install_signals()
        proc.become_subreaper()
        # Inherited by every process our tasks start (through exec too), so that if
        # this daemon is SIGKILLed, the next one can find and end what it left.
        os.environ[proc.WORKER_TAG] = self.worker_id
        self.store = Store(self.config.db, busy_timeout=0.25)
        registered = []
        try:
            for plugin in self.plugins:
                plugin.register(self)
                registered.append(plugin)
        except BaseException:
            for plugin in registered:
                plugin.close()
            self.store.close()
            raise
        self._heartbeat(startup=True)
        self.log.info("daemon.starting", worker_id=self.worker_id, db=self.config.db,
                      app=self.config.app,
                      pools=[{"name": p.name, "queues": p.queues, "size": p.size}
                             for p in self.pools])
        setproctitle(self.title())
        try:
            while True:
                self._spawn_missing()
                if self.stopping and not any(p.children for p in self.pools):
                    break
                self._wait(self._next_timeout())
                self._handle_signals()
                self._reap()
                self._enforce_deadlines()
                self._sync_db()
                if not self.stopping:
                    self._periodic()
                self._check_ready()
                self._show_title()
                for plugin in self.plugins:
                    plugin.on_tick(self)
                logs.flush()
        finally:
            self._shutdown()
            logs.flush()
        return self.exit_code

    def _next_timeout(self):
        now = time.monotonic()
        if any(self.outcomes.values()) and now >= self.db_retry_at:
            return 0
        deadlines = [self.next_heartbeat]
        if not self.stopping:
            deadlines.append(max(self.next_poll, self.db_retry_at))
            if self.due_hint is not None:
                deadlines.append(max(now + self.due_hint - time.time(), self.db_retry_at))
            if self.follow_up is not None:
                deadlines.append(self.follow_up)
            if self.next_schedule is not None:
                deadlines.append(self.next_schedule)
        else:
            deadlines.append(self.stop_deadline)
        for plugin in self.plugins:
            hook = getattr(plugin, "next_deadline", None)
            if hook:
                deadlines.append(hook())
        for pool in self.pools:
            if len(pool.active) < pool.size and not self.stopping:
                deadlines.append(pool.next_spawn)
            for child in pool.children.values():
                deadline = self._hard_deadline(child)
                if deadline is not None:
                    deadlines.append(deadline)
                if child.retire_deadline is not None:
                    deadlines.append(child.retire_deadline)
        return max(0.0, min(d for d in deadlines if d is not None) - now)

    def _wait(self, timeout):
        for key, mask in self.selector.select(timeout):
            kind, obj = key.data
            if kind == "child":
                self._read_child(obj)
            elif kind == "signal":
                try:
                    while self._sig_r.recv(4096):
                        pass
                except BlockingIOError:
                    pass
            else:
                obj(key.fileobj, mask)

    # ---- signals ---------------------------------------------------------------

    def _handle_signals(self):
        while self.signals:
            sig = self.signals.pop(0)
            if sig == signal.SIGCHLD:
                continue  # _reap() runs every iteration
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.request_stop(fast=self.stopping is not None,
                                  reason=_SIGNAMES.get(sig, str(sig)))
            elif sig == signal.SIGHUP:
                self.reload()
            elif sig == signal.SIGTTIN:
                self.scale(self.pools[0].name, self.pools[0].size + 1)
            elif sig == signal.SIGTTOU:
                self.scale(self.pools[0].name, max(self.pools[0].size - 1, 0))

    def request_stop(self, fast=False, reason="request"):
        """Graceful stop (finish running tasks within the graceful timeout), or fast stop."""
        if fast:
            if self.stopping == "fast":
                return
            self.stopping = "fast"
            self.log.warning("daemon.stopping", mode="fast", reason=reason)
            for pool in self.pools:
                for child in list(pool.children.values()):
                    self._kill_child(child, "stop")
            self.stop_deadline = time.monotonic() + 2.0
        else:
            if self.stopping:
                return
            self.stopping = "graceful"
            self.stop_deadline = time.monotonic() + self.config.graceful_timeout
            self.log.info("daemon.stopping", mode="graceful", reason=reason,
                          graceful_timeout_s=self.config.graceful_timeout)
            for pool in self.pools:
                for child in list(pool.children.values()):
                    self._retire_child(child, self.stop_deadline)
        for plugin in self.plugins:
            hook = getattr(plugin, "on_stopping", None)
            if hook:
                hook(self)
        setproctitle(self.title())

    def reload(self):
        """Replace every child with a fresh one running freshly imported code."""
        if self.stopping:
            return
        self.log.info("daemon.reloading")
        for plugin in self.plugins:
            hook = getattr(plugin, "on_reloading", None)
            if hook:
                hook(self)
        if self.reload_app is not None:
            try:
                self.reload_app()
            except Exception as exc:  # keep serving with the code we have
                self.log.error("daemon.reload_failed", error=f"{type(exc).__name__}: {exc}")
                return
        deadline = time.monotonic() + self.config.graceful_timeout
        for pool in self.pools:
            for child in list(pool.children.values()):
                self._retire_child(child, deadline)
            pool.failures = 0
            pool.next_spawn = 0.0
        self._spawn_missing()
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
                self._retire_child(child, deadline)
        pool.next_spawn = 0.0
        self._spawn_missing()
        self.log.info("pool.scaled", pool=pool.name, size=size, previous=old)
        setproctitle(self.title())

    def pool(self, name):
        """The pool called `name`; KeyError naming the pools that exist."""
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(f"no pool named {name!r} (pools: {', '.join(p.name for p in self.pools)})")

    # ---- children ----------------------------------------------------------------

    def _free_slot(self):
        used = {c.slot for p in self.pools for c in p.children.values()}
        slot = 1
        while slot in used:
            slot += 1
        return slot

    def _spawn_missing(self):
        if self.stopping:
            return
        now = time.monotonic()
        for pool in self.pools:
            while len(pool.active) < pool.size and now >= pool.next_spawn:
                self._spawn(pool)
                if pool.failures:
                    # Crash-looping: one child per back-off period, not a burst.
                    pool.next_spawn = now + min(0.1 * 2 ** pool.failures, MAX_RESPAWN_DELAY)
                    break

    def _spawn(self, pool):
        parent_sock, child_sock = socket.socketpair()
        slot = self._free_slot()
        close_fds = self.supervisor_fds() + [parent_sock.fileno()]
        logs.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child_main(child_sock, slot, self.pid, close_fds=close_fds,
                       report_rss=bool(self.config.max_memory_per_child),
                       max_tasks=self.config.max_tasks_per_child,
                       max_rss=int(self.config.max_memory_per_child * 1024 * 1024))
        child_sock.close()
        try:
            os.setpgid(pid, pid)  # also done in the child: whichever runs first wins
        except OSError:
            pass
        parent_sock.setblocking(False)
        child = ChildHandle(pid=pid, slot=slot, pool=pool, sock=parent_sock)
        pool.children[pid] = child
        self.selector.register(parent_sock, selectors.EVENT_READ, ("child", child))
        self.log.info("child.spawned", pid=pid, pool=pool.name, slot=slot)
        return child

    def _send(self, child, msgs):
        """Write task messages to a child; False when it is gone or wedged.

        The socket is non-blocking: a send may take only part of the data, so the
        rest is resent from where it stopped (never from the start, which would
        corrupt the stream). A child that takes nothing for a second is wedged.
        """
        view = memoryview(b"".join(_dumps(m).encode() + b"\n" for m in msgs))
        deadline = time.monotonic() + 1.0
        while view:
            try:
                view = view[child.sock.send(view):]
            except (BlockingIOError, InterruptedError):
                if time.monotonic() > deadline:
                    return False
                select.select([], [child.sock], [], 0.05)
            except OSError:
                return False
        return True

    def _retire_child(self, child, deadline):
        """Ask a child to finish its current task and exit; queued tasks come back."""
        if child.retiring or child.kill_reason:
            return
        child.retiring = True
        child.retire_deadline = deadline
        try:
            os.kill(child.pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass
        try:
            child.sock.shutdown(socket.SHUT_WR)  # an idle child sees EOF and exits
        except OSError:
            pass

    def _kill_child(self, child, reason, task=None):
        """SIGKILL a child's whole tree; the reason decides what happens to its tasks."""
        if child.kill_reason is None:
            child.kill_reason = reason
            child.timed_out_task = task
        proc.kill_tree(child.pid)

    def _read_child(self, child):
        """Read and handle what a child sent; False once nothing more is there."""
        try:
            data = child.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:
            self.unregister_fd(child.sock)  # EOF: the exit is handled when it is reaped
            return False
        child.rbuf += data
        end = child.rbuf.rfind(b"\n")
        if end < 0:
            return True
        chunk, child.rbuf = child.rbuf[:end], child.rbuf[end + 1:]
        # One JSON parse for the whole batch of lines.
        for msg in json.loads(b"[" + chunk.replace(b"\n", b",") + b"]"):
            self._on_message(child, msg)
        return True

    def _on_message(self, child, msg):
        kind = msg[0]
        if kind == "r":
            _, task_id, ok, text, started, finished, rss, timed_out = msg
            run = child.inflight.popleft() if child.inflight else None
            if run is None or run.id != task_id:
                self.log.error("child.protocol_error", pid=child.pid, task_id=task_id)
                return
            child.tasks_done += 1
            child.rss = rss or child.rss
            child.pool.observe(finished - started)
            if child.inflight:
                nxt = child.inflight[0]
                nxt.started_mono = time.monotonic()
                nxt.started_wall = finished
                self._log_started(child, nxt)
            self._record(run, ok, text, started, finished, timed_out)
            if ok:
                child.pool.failures = 0
            if timed_out:
                # The child exits after a timeout (it may have left subprocesses
                # behind); its process group is killed when it is reaped.
                self._retire_child(child, time.monotonic() + self.config.kill_grace)
            else:
                self._maybe_recycle(child)
        elif kind == "s":
            # Handed back unstarted; it may sit behind the task still running.
            for run in child.inflight:
                if run.id == msg[1]:
                    child.inflight.remove(run)
                    self.outcomes["release"].append(run.id)
                    break
        elif kind == "ready":
            child.ready = True
            self._claim_soon()

    def _maybe_recycle(self, child):
        cfg = self.config
        reason = None
        if cfg.max_tasks_per_child and child.tasks_done >= cfg.max_tasks_per_child:
            reason = "max_tasks"
        elif cfg.max_memory_per_child and child.rss > cfg.max_memory_per_child * 1024 * 1024:
            reason = "max_memory"
        if reason and not child.retiring:
            self.log.info("child.recycling", pid=child.pid, reason=reason,
                          tasks_done=child.tasks_done, rss_bytes=child.rss)
            self._retire_child(child, time.monotonic() + cfg.graceful_timeout)

    def _reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for pool in self.pools:
                child = pool.children.pop(pid, None)
                if child is not None:
                    self._on_child_exit(child, status)
                    break
            # else: an orphaned grandchild we adopted as subreaper; nothing to do.

    def _on_child_exit(self, child, status):
        # Results it wrote before dying are still in the socket: take them first.
        while self._read_child(child):
            pass
        self.unregister_fd(child.sock)
        child.sock.close()
        how = _describe_exit(status)
        clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        runs = list(child.inflight)
        head = runs[0] if runs else None
        # Kill anything the child left behind in its process group.
        proc.kill_tree(child.pid)
        if child.kill_reason == "timeout" and head is not None:
            limit = head.limit
            self._record(head, False, f"TaskTimeout: timed out after {limit:g} s (the child "
                         f"was killed {self.config.kill_grace:g} s after the limit)",
                         head.started_wall, time.time(), True)
            runs = runs[1:]
        elif child.kill_reason == "stop" or (child.retiring and child.kill_reason):
            pass  # stopped by us: everything it held goes back untouched
        elif head is not None and not (child.retiring and clean):
            self._record(head, False, f"ChildDied: the worker process {how} while running "
                         f"this task", head.started_wall, time.time(), False)
            runs = runs[1:]
        self.outcomes["release"].extend(r.id for r in runs)
        # "crash": a send found the child already gone; it died on its own all the same.
        abnormal = not clean and child.kill_reason in (None, "crash") and not child.retiring
        if abnormal:
            child.pool.failures += 1
            child.pool.next_spawn = time.monotonic() + min(
                0.1 * 2 ** child.pool.failures, MAX_RESPAWN_DELAY)
        self._check_boot_error(child, status)
        self.log.log(30 if abnormal else 20, "child.exited", pid=child.pid,
                     pool=child.pool.name, how=how, reason="crashed" if abnormal else
                     child.kill_reason or ("retired" if child.retiring else "exited"),
                     tasks_done=child.tasks_done, requeued=len(runs),
                     failing=child.pool.failing)
        self._claim_soon()
        setproctitle(self.title())

    def _check_boot_error(self, child, status):
        """Stop the daemon when children keep failing to even start (gunicorn's
        WORKER_BOOT_ERROR): respawning them would only loop."""
        pool = child.pool
        if child.ready:
            pool.boot_errors = 0
            return
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == BOOT_ERROR_EXIT):
            return  # died some other way (signal, os._exit): back off and keep trying
        pool.boot_errors += 1
        if pool.boot_errors >= MAX_BOOT_ERRORS and not self.stopping:
            message = (f"children of pool {pool.name} failed to start {pool.boot_errors} "
                       f"times in a row (see the traceback above); stopping")
            self.log.critical("daemon.fatal", pool=pool.name, reason=message)
            print(f"liteqd: error: {message}", file=sys.stderr)
            self.exit_code = 3
            self.request_stop(fast=True, reason="children cannot start")

    # ---- time limits ---------------------------------------------------------

    def _hard_deadline(self, child):
        run = child.running
        if run is None or run.limit is None or run.started_mono is None or child.kill_reason:
            return None
        return run.started_mono + run.limit + self.config.kill_grace

    def _enforce_deadlines(self):
        now = time.monotonic()
        for pool in self.pools:
            for child in list(pool.children.values()):
                deadline = self._hard_deadline(child)
                if deadline is not None and now >= deadline:
                    run = child.running
                    self.log.warning("task.timed_out", task_id=run.id, name=run.name,
                                     queue=run.queue, attempt=run.attempts, pid=child.pid,
                                     limit_s=run.limit)
                    self._kill_child(child, "timeout", run)
                elif child.retire_deadline is not None and now >= child.retire_deadline \
                        and not child.kill_reason:
                    self.log.warning("child.killed", pid=child.pid,
                                     reason="graceful timeout passed")
                    self._kill_child(child, "stop")
        if self.stopping and self.stop_deadline is not None and now >= self.stop_deadline:
            for pool in self.pools:
                for child in list(pool.children.values()):
                    if child.kill_reason is None:
                        self._kill_child(child, "stop")
            if self.stopping == "fast" or now >= self.stop_deadline + 5.0:
                # Children ignoring SIGKILL (stuck in the kernel) do not hold us hostage.
                for pool in self.pools:
                    for child in list(pool.children.values()):
                        pool.children.pop(child.pid, None)
                        self.outcomes["release"].extend(r.id for r in child.inflight)
                        self.unregister_fd(child.sock)
                        child.sock.close()

    # ---- outcomes ------------------------------------------------------------

    def _log_started(self, child, run):
        self.log.info("task.started", task_id=run.id, name=run.name, queue=run.queue,
                      attempt=run.attempts, pid=child.pid)

    def _record(self, run, ok, text, started, finished, timed_out):
        duration_ms = round((finished - started) * 1000, 3) if started and finished else None
        common = dict(task_id=run.id, name=run.name, queue=run.queue, attempt=run.attempts,
                      duration_ms=duration_ms)
        if ok:
            self.outcomes["done"].append((run.id, text, started, finished))
            self.tasks_done += 1
            self.log.info("task.succeeded", **common)
            return
        first_line = text.split("\n", 1)[0]
        if retry_policy.should_retry(run.attempts, run.max_retries):
            delay = retry_policy.retry_delay(run.attempts, run.retry_delay, run.retry_backoff,
                                             run.retry_max_delay)
            self.outcomes["retry"].append((run.id, text, started, time.time() + delay))
            self.log.warning("task.retrying", error=first_line, retry_in_s=round(delay, 3),
                             timed_out=timed_out, **common)
        else:
            self.outcomes["failed"].append((run.id, text, started, finished))
            self.tasks_failed += 1
            self.log.error("task.failed", error=first_line, timed_out=timed_out, **common)

    def _sync_db(self):
        """Record this round's outcomes and claim the next tasks, in one commit.

        With nothing to record and nothing to claim it does not touch the
        database: the write lock is the producers' too.
        """
        if time.monotonic() < self.db_retry_at:
            return
        out = self.outcomes
        wanted = [] if self.stopping else self._claims_wanted()
        if not wanted and not any(out.values()):
            return
        claims = []
        try:
            with self.store.batch():
                if out["done"] or out["failed"] or out["retry"]:
                    self.store.record_outcomes(self.worker_id, done=out["done"],
                                               failed=out["failed"], retry=out["retry"])
                if out["release"]:
                    self.store.release(self.worker_id, out["release"])
                if wanted:
                    claims = self._claim(wanted)
        except DatabaseError as exc:
            # Keep the outcomes and try again shortly; supervision goes on meanwhile.
            self._db_trouble("sync", exc)
            return
        if out["release"]:
            self._claim_soon()
        for _, _, _, run_at in out["retry"]:
            self.wake(due=run_at)
        self.outcomes = {"done": [], "failed": [], "retry": [], "release": []}
        for pool, rows in claims:
            self._dispatch(pool, rows)

    def _db_trouble(self, op, exc):
        self.db_retry_at = time.monotonic() + 0.5
        self.log.warning("db.retrying", op=op, error=str(exc))

    # ---- claiming ---------------------------------------------------------------

    def _claim_soon(self):
        for pool in self.pools:
            pool.maybe_work = True

    def wake(self, due=None):
        """A producer enqueued something: look for work now, or at `due` (epoch s)."""
        if due is None:
            self._claim_soon()
            # Producers skip wake-ups that follow another within a millisecond
            # (liteq.wakeup.THROTTLE_S); one more claim shortly after the latest
            # wake-up picks up whatever they enqueued meanwhile.
            self.follow_up = time.monotonic() + 2 * THROTTLE_S
        elif due <= time.time():
            self._claim_soon()
        elif self.due_hint is None or due < self.due_hint:
            self.due_hint = due

    def _claims_wanted(self):
        """The pools worth a claim now: [(pool, queues, room)].

        A pool is worth one when something may be due (a wake-up, a known due
        time that has come, or the fallback poll) and its children have room.
        """
        now, wall = time.monotonic(), time.time()
        if self.due_hint is not None and wall >= self.due_hint:
            # Only the earliest due time is kept: once it passes, ask the database
            # for the next one (below), or later tasks would wait for the poll.
            self.due_hint = None
            self.rescan_due = True
            self._claim_soon()
        if self.follow_up is not None and now >= self.follow_up:
            self.follow_up = None
            self._claim_soon()
        self.polling = now >= self.next_poll
        if self.polling:
            # The fallback poll: finds work whose wake-up was lost or never sent.
            self._claim_soon()
            self.next_poll = now + self.config.poll_interval
        wanted = []
        for pool in self.pools:
            if not pool.maybe_work:
                continue
            room = pool.capacity(self.config.prefetch)
            queues = [q for q in pool.queues if q not in self.paused]
            if room > 0 and queues:
                wanted.append((pool, queues, room))
        return wanted

    def _claim(self, wanted):
        """Claim due tasks for each wanted pool; returns [(pool, rows)]."""
        claims, idle_queues = [], []
        for pool, queues, room in wanted:
            rows = self.store.claim(self.worker_id, queues, room, backlog=pool.backlog)
            pool.backlog = len(rows) == room
            if len(rows) < room:
                pool.maybe_work = False  # nothing more is due now
                idle_queues.extend(queues)
            if rows:
                claims.append((pool, rows))
        if (self.polling or self.rescan_due) and idle_queues:
            self.rescan_due = False
            # Learn when the next delayed task is due, so we sleep until exactly
            # then. Only here: with a backlog due now this scan is not needed.
            due = self.store.next_due(idle_queues)
            if due is not None and due > time.time():
                self.wake(due=due)
        return claims

    def _dispatch(self, pool, rows):
        children = [c for c in pool.active if c.ready]
        batches = {c.pid: [] for c in children}
        for row in rows:
            # Least-loaded child first, so the best task goes to an idle child.
            child = min(children, key=lambda c: len(c.inflight) + len(batches[c.pid]))
            limit = row["timeout"] if row["timeout"] is not None else self.config.timeout
            run = TaskRun(row["id"], row["name"], row["queue"], row["attempts"],
                          row["max_retries"], limit, row["retry_delay"],
                          row["retry_backoff"], row["retry_max_delay"])
            batches[child.pid].append((run, ["t", run.id, run.name, row["payload"], limit]))
        for child in children:
            batch = batches[child.pid]
            if not batch:
                continue
            was_idle = not child.inflight
            child.inflight.extend(run for run, _ in batch)
            if was_idle:
                head = child.inflight[0]
                head.started_mono = time.monotonic()
                head.started_wall = time.time()
                self._log_started(child, head)
            if not self._send(child, [m for _, m in batch]):
                # The child is gone; _on_child_exit requeues what it held.
                self._kill_child(child, "crash")

    # ---- heartbeat, reclaim, schedules ------------------------------------------

    def _periodic(self):
        now = time.monotonic()
        if now >= self.next_heartbeat:
            self._heartbeat()
            # Schedules registered by other processes show up within a heartbeat.
            if self.config.scheduler:
                self.next_schedule = min(self.next_schedule or now, now)
        if self.config.scheduler and (self.next_schedule is None or now >= self.next_schedule):
            self._fire_schedules()

    def _fire_schedules(self):
        # croniter is the daemon's dependency, loaded only when the daemon runs.
        from liteq import scheduler

        now = time.monotonic()
        try:
            ids = scheduler.fire_due(self.store, log=self._schedule_event)
            upcoming = scheduler.next_fire_time(self.store)
        except DatabaseError as exc:
            self._db_trouble("schedules", exc)
            self.next_schedule = now + 1.0
            return
        if ids:
            self._claim_soon()
        # Wall clock for cron; the sleep itself is measured on the monotonic clock.
        wait = self.config.heartbeat_interval if upcoming is None else \
            min(max(upcoming - time.time(), 0.0), self.config.heartbeat_interval)
        self.next_schedule = now + wait

    def _schedule_event(self, event, **fields):
        level = "warning" if event.endswith("error") else "info"
        getattr(self.log, level)(event, **fields)

    def _heartbeat(self, startup=False):
        self.next_heartbeat = time.monotonic() + self.config.heartbeat_interval
        try:
            self.store.heartbeat(self.worker_id, self.hostname, ",".join(self.config.queues),
                                 sum(p.size for p in self.pools), self.pid,
                                 self.process_started, self.started_wall)
            self._reclaim()
        except DatabaseError as exc:
            if startup:
                raise
            self._db_trouble("heartbeat", exc)

    def _reclaim(self):
        dead = []
        for w in self.store.list_workers():
            if w["worker_id"] == self.worker_id or w["hostname"] != self.hostname:
                continue
            if not proc.is_same_process_alive(w["pid"], w["process_started"]):
                dead.append(w["worker_id"])
        stale_before = time.time() - self.config.stale_after
        reclaimed = self.store.reclaim(dead, stale_before,
                                       reason="its worker died (no heartbeat)")
        if dead:
            for pid in proc.kill_tagged(dead):
                self.log.warning("child.orphan_killed", pid=pid, reason="its daemon died")
        for task_id, status in reclaimed:
            self.log.warning("task.reclaimed", task_id=task_id, status=status)
        if reclaimed:
            self._claim_soon()

    def _check_ready(self):
        if self.ready_sent or self.stopping:
            return
        if all(len([c for c in p.active if c.ready]) >= min(p.size, 1) for p in self.pools):
            self.ready_sent = True
            self.log.info("daemon.ready", pid=self.pid, worker_id=self.worker_id,
                          children=sum(len(p.children) for p in self.pools))
            for callback in self.on_ready:
                callback(self)

    # ---- shutdown --------------------------------------------------------------

    def _shutdown(self):
        # Whatever is still held goes back to pending before we let go of the rows.
        for pool in self.pools:
            for child in list(pool.children.values()):
                proc.kill_tree(child.pid)
                self.outcomes["release"].extend(r.id for r in child.inflight)
                child.inflight.clear()
        self.db_retry_at = 0.0
        for _ in range(20):
            self._sync_db()
            if not any(self.outcomes.values()):
                break
            time.sleep(0.25)
            self.db_retry_at = 0.0
        for plugin in self.plugins:
            try:
                plugin.close()
            except Exception as exc:  # closing must not hide the exit
                self.log.error("plugin.close_failed", error=str(exc))
        try:
            self.store.remove_worker(self.worker_id)
        except DatabaseError as exc:
            self.log.error("db.error", op="remove_worker", error=str(exc))
        self._reap_remaining()
        self.log.info("daemon.stopped", tasks_done=self.tasks_done,
                      tasks_failed=self.tasks_failed, exit_code=self.exit_code)
        self.store.close()

    def _reap_remaining(self):
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.02)

    # ---- status (for the control channel) -----------------------------------

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
                    "queued": max(len(c.inflight) - 1, 0),
                    "rss_bytes": proc.rss_bytes(c.pid),
                    "tasks_done": c.tasks_done,
                })
            pools.append({"name": pool.name, "queues": pool.queues, "size": pool.size,
                          "children": children, "failing": pool.failing,
                          "consecutive_failures": pool.failures})
        return {
            "pid": self.pid, "worker_id": self.worker_id, "hostname": self.hostname,
            "uptime_s": round(now - self.started_mono, 3), "db": os.path.abspath(self.config.db),
            "app": self.config.app, "state": self.stopping or "running",
            "paused": sorted(self.paused), "pools": pools,
            "tasks_done": self.tasks_done, "tasks_failed": self.tasks_failed,
        }

