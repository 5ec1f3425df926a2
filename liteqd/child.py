"""The worker child: a pure executor forked from the supervisor.

It never opens the database for the queue's bookkeeping. It reads task
messages from its socket, runs each one (coroutines on an event loop it keeps),
and writes back the outcome. The messages are those of liteqd.protocol.
"""

import os
import signal
import socket
import time
import traceback

import psutil
from setproctitle import setproctitle

from . import logs, protocol, task_output
from .executor import Executor, install_alarm_handler
from .proc import become_subreaper, descendants, die_with_parent

# Exit code of a child whose own set-up or loop raised; before "ready" it is a boot error.
BOOT_ERROR_EXIT = 70

# The kernel sends this signal when the supervisor dies (PR_SET_PDEATHSIG). It is caught,
# not SIGKILL, so that the child can say why it leaves: one log line, not a traceback
# or nothing. A task stuck in C code that holds the interpreter lock delays the exit
# until it returns to Python.
PARENT_DEATH_SIGNAL = signal.SIGUSR2


class _Stop:
    requested = False


class _Orphan:
    """What the child needs to notice and report that its supervisor is gone."""
    parent_pid = None
    slot = None
    task_id = None      # the task running now, if any
    exiting = False


class SupervisorGone(ConnectionError):
    """The child's socket to the supervisor failed: the supervisor has died.

    An OSError, so hand_back() (which may run in a signal handler) still swallows it.
    """


class _Channel:
    """The child's end of its socket: reading, parsing and sending in one place.

    A stop (SIGUSR1) must hand queued tasks back at once, even while a task runs,
    so the signal handler may call hand_back(). Python runs handlers between any
    two bytecodes of the main code, so `busy` marks the stretches where the main
    code is reading or sending; the handler then leaves the hand-back to the main
    code, which does it as soon as it is done (a line is never interleaved).
    """

    def __init__(self, sock) -> None:
        self.sock = sock
        self.reader = protocol.LineReader()
        self.pending = []      # parsed task messages, next one last
        self.cancelled = set() # ids of tasks the supervisor cancelled
        self.recalled = set()  # ids of queued tasks the supervisor wants back (GiveBack)
        self.busy = False

    def send(self, msg):
        """Send one message (a JSON line); SupervisorGone when the other end is closed."""
        try:
            self.sock.sendall(protocol.encode([msg]))
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise SupervisorGone(str(exc)) from None

    def _parse(self, data) -> None:
        new = self.reader.feed(data)
        if new:
            if any(m.kind != "t" for m in new):
                self.cancelled.update(m.id for m in new if m.kind == "x")
                for m in new:
                    if m.kind == "b":
                        self.recalled.update(m.ids)
                new = [m for m in new if m.kind == "t"]
            new.reverse()
            self.pending = new + self.pending

    def _read_waiting(self) -> None:
        """Parse whatever has arrived, without blocking (the caller holds `busy`)."""
        try:
            while True:
                data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
                if not data:
                    break
                self._parse(data)
        except (BlockingIOError, InterruptedError):
            pass

    def poll(self) -> None:
        """Read what has arrived without blocking (from the cancel signal's handler);
        nothing when the main code is reading or sending itself."""
        if self.busy:
            return
        self.busy = True
        try:
            self._read_waiting()
        except OSError:
            pass  # the supervisor is gone; the main code finds out on its next read
        finally:
            self.busy = False

    def receive(self) -> bool:
        """Block until at least one more message is queued; False at end of stream.

        SupervisorGone when the other end was closed with our messages unread.
        """
        self.busy = True
        try:
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError as exc:
                raise SupervisorGone(str(exc)) from None
            if data:
                self._parse(data)
            return bool(data)
        finally:
            self.busy = False
            if _Stop.requested:
                self.hand_back()

    def hand_back(self, only=None) -> None:
        """Return every queued task (or those whose ids are in `only`) to the supervisor,
        unstarted ("s" messages)."""
        if self.busy:
            return
        self.busy = True
        try:
            self._read_waiting()
            if only is not None:
                keep = [m for m in self.pending if m.id not in only]
                back = [m for m in self.pending if m.id in only]
                self.pending = keep
                for m in reversed(back):
                    self.send(protocol.skipped(m.id))
                only.difference_update(m.id for m in back)
                return
            while self.pending:
                self.send(protocol.skipped(self.pending.pop().id))
        except OSError:
            pass  # the supervisor is gone; it requeues whatever we held
        finally:
            self.busy = False


_channel = None


_waker = None  # a child running many coroutines: makes its loop look at the channel


def set_waker(waker):
    """Let the signal handlers wake an event loop that reads the channel itself
    (liteqd.async_child), or stop doing so (None)."""
    global _waker
    _waker = waker


def _on_stop(signum, frame):
    # The current task finishes; the queued ones go back now.
    _Stop.requested = True
    if _channel is not None:
        _channel.hand_back()
    if _waker is not None:
        _waker()


def _on_cancel(signum, frame) -> None:
    # The supervisor sent Cancel or GiveBack messages: if the running task is
    # cancelled, stop it; hand back the recalled tasks now, not after the task.
    channel = _channel
    if channel is None:
        return
    channel.poll()
    if channel.recalled:
        channel.hand_back(only=channel.recalled)
    if _waker is not None:
        _waker()  # the loop cancels the coroutines (it may not be reading right now)
    if _Orphan.task_id is not None and _Orphan.task_id in channel.cancelled \
            and _executor is not None:
        _executor.cancel_running()


_executor = None


def _on_parent_death(signum, frame) -> None:
    if os.getppid() == _Orphan.parent_pid:
        return  # sent by someone else: the supervisor lives
    _exit_orphaned()


def _exit_orphaned() -> None:
    """Log that the supervisor is gone, once, and exit at once.

    The task of a dead supervisor is reclaimed by the next daemon on the database,
    which also ends any subprocess the task left (they carry its worker id).
    """
    if _Orphan.exiting:
        return  # a signal came while the main code was already on its way out
    _Orphan.exiting = True
    try:
        fields = {"pid": os.getpid(), "slot": _Orphan.slot,
                  "supervisor_pid": _Orphan.parent_pid}
        if _Orphan.task_id is not None:
            fields["task_id"] = _Orphan.task_id
        logs.get_logger().warning("child.orphaned", **fields)
        logs.write_now()
    finally:
        os._exit(0)


def _on_socket_closed() -> None:
    """Our socket to the supervisor ended. After a stop request that is the normal way
    out (return). Otherwise only a dying supervisor closes it: the kernel closes its
    sockets a moment before it signals us, so wait briefly for the verdict (a stop
    request may also still be on its way), then exit as an orphan."""
    deadline = time.monotonic() + 2.0
    while not _Stop.requested and time.monotonic() < deadline:
        if os.getppid() != _Orphan.parent_pid:
            break
        time.sleep(0.005)
    if not _Stop.requested:
        _exit_orphaned()



def _own_rss():
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _kill_descendants() -> None:
    for proc in descendants(os.getpid()):
        try:
            proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def child_main(sock: socket.socket, index: int, parent_pid: int, close_fds=(),
               report_rss=False, max_tasks=0, max_rss=0, async_slots: int = 1,
               block_threshold: float = 0.5):
    """Entry point of a forked child; never returns (always os._exit)."""
    code = 0
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    try:
        signal.set_wakeup_fd(-1)  # the supervisor's wake-up fd is not ours
        for fd in close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        _Orphan.parent_pid, _Orphan.slot = parent_pid, index
        die_with_parent(PARENT_DEATH_SIGNAL)
        # Orphans of the task (a double fork after setsid()) are adopted by this process
        # instead of the supervisor, so they stay under it and die with it on a timeout.
        become_subreaper()
        if os.getppid() != parent_pid:
            os._exit(1)  # the supervisor died before the prctl took effect
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the supervisor's to handle
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTTIN, signal.SIG_IGN)
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, _on_stop)
        signal.signal(protocol.CANCEL_SIGNAL, _on_cancel)
        install_alarm_handler()
        signal.signal(PARENT_DEATH_SIGNAL, _on_parent_death)
        if os.getppid() != parent_pid:
            os._exit(1)  # the supervisor died before the handler was in place
        os.environ.pop("NOTIFY_SOCKET", None)
        _serve(sock, index, report_rss, max_tasks, max_rss, async_slots, block_threshold)
    except SupervisorGone:
        _on_socket_closed()
    except BaseException:  # noqa: B902 - never unwind into the supervisor's code
        traceback.print_exc()
        code = BOOT_ERROR_EXIT
    finally:
        os._exit(code)


def _reap_adopted() -> None:
    """Collect exited processes this child adopted as subreaper (a task's double-forked
    orphans), so they do not stay zombies while the child lives on."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _serve(sock, index, report_rss, max_tasks=0, max_rss=0, async_slots=1,
           block_threshold=0.5):
    global _channel, _executor
    title_idle = f"liteqd: worker {index} idle"
    setproctitle(title_idle)
    executor = _executor = Executor()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    sock.setblocking(True)
    channel = _channel = _Channel(sock)
    channel.send(protocol.ready(os.getpid()))
    if async_slots > 1:
        from .async_child import serve_async
        serve_async(channel, executor, index, async_slots, block_threshold, report_rss,
                    max_tasks, max_rss)
        return
    done = 0
    while True:
        if _Stop.requested:
            channel.hand_back()
            return
        if not channel.pending:
            try:
                if not channel.receive():
                    _on_socket_closed()
                    return
            except InterruptedError:
                pass
            continue
        msg = channel.pending.pop()
        if msg.id in channel.recalled or (msg.start_by is not None
                                          and time.monotonic() > msg.start_by):
            # Recalled, or held so long that this daemon may have been frozen past
            # stale-after and the task reclaimed and run elsewhere: never start it here.
            channel.recalled.discard(msg.id)
            channel.busy = True
            try:
                channel.send(protocol.skipped(msg.id))
            finally:
                channel.busy = False
            continue
        if msg.id in channel.cancelled:
            # Cancelled before it started: say so, never run it.
            now = time.time()
            task_output.mark_end()  # one mark per result, as for the tasks that ran
            channel.busy = True
            try:
                channel.send(protocol.result(msg.id, False, "TaskCancelled: cancelled before "
                                             "it started", now, now, 0, False, False))
            finally:
                channel.busy = False
            continue
        _Orphan.task_id = msg.id
        setproctitle(f"liteqd: worker {index} running {msg.name}#{msg.id}")
        started = time.time()
        outcome = executor.run(msg, worker)
        finished = time.time()
        if outcome.timed_out:
            # Subprocesses the task started die with it, even those in a session of
            # their own that killing our process group would miss: once we exit they
            # are reparented and can no longer be found under us.
            _kill_descendants()
        rss = _own_rss() if report_rss else 0
        task_output.mark_end()  # what follows in the pipes is the next task's
        channel.busy = True
        try:
            channel.send(protocol.result(msg.id, outcome.ok, outcome.text, started, finished, rss,
                                         outcome.timed_out, outcome.retry))
        finally:
            channel.busy = False
        _Orphan.task_id = None
        if outcome.timed_out:
            # The task may have left subprocesses or threads running: hand back what is
            # queued and exit, so the supervisor replaces this process and its group.
            _Stop.requested = True
        done += 1
        if (max_tasks and done >= max_tasks) or (max_rss and rss > max_rss):
            # A recycling limit is reached: hand back the prefetched tasks instead of
            # running them here (the supervisor's SIGUSR1 would come too late for short
            # tasks); the supervisor replaces this child.
            _Stop.requested = True
        _reap_adopted()
        setproctitle(title_idle)
