"""The standalone scheduler loop: `Scheduler(check_interval=60).run()`.

liteqd fires schedules itself; this loop is for running without the daemon, or
beside it (every fire is a compare-and-set, so both may run). The `liteq scheduler`
command around it is the daemon's (liteqd.scheduler_cmd), with the daemon's logs.
"""

import os
import select
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from .backends import Backend, get_backend
from .app_loader import refuse_loop_at_import
from .errors import DatabaseError
from .schedule_firing import fire_due
from .timeutil import now, to_iso



def _print_event(event: str, **fields: Any) -> None:
    if event == "schedule.fired":
        ids = fields["task_ids"]
        ids = (", ".join(f"#{i}" for i in ids) if len(ids) <= 5
               else f"#{ids[0]}..#{ids[-1]} ({len(ids)} tasks)")
        when = to_iso(fields["occurrences"][-1])
        extra = f" ({len(fields['occurrences'])} occurrences)" if len(fields["occurrences"]) > 1 else ""
        print(f"liteq scheduler: fired {fields['schedule']!r} for {when}{extra}: "
              f"task {fields['name']} {ids}; next run {fields['next_run']}", flush=True)
    else:
        print(f"liteq scheduler: schedule {fields.get('schedule')!r}: {fields.get('error')}",
              file=sys.stderr, flush=True)


def _print_db_error(exc: DatabaseError, retry_in_s: float) -> None:
    print(f"liteq scheduler: {exc}; retrying", file=sys.stderr, flush=True)


class Scheduler:
    """Fires due schedules in a loop: `Scheduler(check_interval=60).run()`.

    It sleeps until the next fire time, but never longer than check_interval,
    so schedules registered by other processes are seen within that interval.
    Stops on SIGTERM or SIGINT (when run in the main thread), on
    KeyboardInterrupt, and on .stop() from any thread. Sleeps are measured on
    the monotonic clock; fire times are wall-clock times.
    """

    def __init__(self, check_interval: float = 60, db_path: str | None = None,
                 log: Callable[..., object] | None = None,
                 on_db_error: Callable[[DatabaseError, float], object] | None = None) -> None:
        if isinstance(check_interval, bool) or not isinstance(check_interval, (int, float)):
            raise TypeError(f"check_interval must be a number of seconds, "
                            f"not {type(check_interval).__name__}")
        if not check_interval > 0:
            raise ValueError(f"check_interval must be > 0, got {check_interval!r}")
        self.check_interval = float(check_interval)
        self.db_path = db_path
        self.log = log or _print_event
        # on_db_error(exc, retry_in_s): a database error the loop rides out (default:
        # a line on stderr).
        self.on_db_error = on_db_error or _print_db_error
        self._stopping = False
        self._lock = threading.Lock()
        self._pipe: tuple[int, int] | None = None

    @property
    def running(self) -> bool:
        """True while run() runs (liteq 0.2's flag). Setting it to False stops run(), from
        any thread, as .stop() does."""
        return self._pipe is not None and not self._stopping

    @running.setter
    def running(self, value: bool) -> None:
        if not value:
            self.stop()

    def run_once(self) -> list[int]:
        """Fire what is due now; returns the new task ids."""
        return fire_due(get_backend(self.db_path), log=self.log)

    def stop(self) -> None:
        """Ask a running .run() to return; safe from any thread."""
        self._stopping = True
        with self._lock:
            if self._pipe is not None:
                self._nudge(self._pipe[1])

    @staticmethod
    def _nudge(fd: int) -> None:
        try:
            os.write(fd, b"x")
        except OSError:
            pass  # the pipe is full: a wake-up is pending anyway

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only record and nudge: the loop acts, outside the handler (no lock taken
        # here, since the handler may interrupt the thread that holds it).
        self._stopping = True
        pipe = self._pipe
        if pipe is not None:
            self._nudge(pipe[1])

    def _sleep_for(self, backend: Backend) -> float:
        nxt = backend.next_schedule_time()
        if nxt is None:
            return self.check_interval
        # A small floor, so a clock that reads a hair early cannot spin the loop.
        return min(self.check_interval, max(0.01, nxt - now()))

    def run(self) -> None:
        """Fire schedules until stopped; blocks. A .stop() that came first ends it at once.

        Raises AppStartsLoop (a ConfigError) when reached while liteqd or `liteq`
        imports the app: there it would block the import forever.
        """
        refuse_loop_at_import("Scheduler.run()")
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        with self._lock:
            self._pipe = (r, w)
        saved: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | None] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                saved[sig] = signal.signal(sig, self._on_signal)
        backend = get_backend(self.db_path)
        try:
            while not self._stopping:
                try:
                    fire_due(backend, log=self.log)
                    wait = self._sleep_for(backend)
                except DatabaseError as exc:
                    wait = min(self.check_interval, 5.0)
                    self.on_db_error(exc, wait)
                if self._stopping:
                    break
                # select() measures its timeout on the monotonic clock; a signal or
                # .stop() writes to the pipe and ends the wait at once.
                ready, _, _ = select.select([r], [], [], wait)
                if ready:
                    try:
                        while os.read(r, 512):
                            pass
                    except BlockingIOError:
                        pass
        except KeyboardInterrupt:
            pass
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            with self._lock:
                self._pipe = None
                os.close(r)
                os.close(w)
            self._stopping = False  # so the same Scheduler can run again


# ---- CLI ------------------------------------------------------------------------
