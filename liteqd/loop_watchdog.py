"""The loop watchdog of a child that runs many coroutine tasks at once.

A coroutine that blocks (time.sleep(1), a CPU-bound loop, a blocking driver call
inside `async def`) stalls every other coroutine of its child: their time limits,
cancels and results all wait. The watchdog is a thread that sees the stall and
names the task: the event loop stamps a heartbeat every fraction of the threshold;
when the stamp is older than the threshold while coroutine tasks run, the thread
logs `task.loop_blocked` once per stall, with the id and name of the task whose
code holds the loop (asyncio's current task of the loop) and the line it is on.

It only watches: it cannot unblock the loop. The supervisor's hard time limit
(the task's limit plus the kill grace) still ends a child whose loop never
comes back.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from typing import Callable

from . import logs


class LoopWatchdog:
    """Watches one event loop for stalls longer than `threshold` seconds.

    `who(task)` maps the asyncio task holding the loop to (task_id, name), or None.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, threshold: float,
                 who: Callable[[asyncio.Task[object] | None], tuple[int, str] | None],
                 busy: Callable[[], bool]) -> None:
        self.loop = loop
        self.threshold = threshold
        self.who = who
        self.busy = busy          # True while coroutine tasks run (else a stall is ours)
        self.paused = False       # a sync task runs: it blocks the loop by design
        self.interval = max(threshold / 4, 0.01)
        self.beat = time.monotonic()
        self.stop_event = threading.Event()
        self.main_ident = threading.get_ident()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Start stamping the heartbeat on the loop and watching it from a thread."""
        if self.threshold <= 0:
            return
        self.loop.call_soon(self._stamp)
        self.thread = threading.Thread(target=self._watch, name="liteq-loop-watchdog",
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop the thread (bounded wait)."""
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=1.0)

    def resume(self) -> None:
        """A sync task is over: watch again from now."""
        self.beat = time.monotonic()
        self.paused = False

    def _stamp(self) -> None:
        self.beat = time.monotonic()
        if not self.stop_event.is_set():
            self.loop.call_later(self.interval, self._stamp)

    def _watch(self) -> None:
        reported_beat = None
        while not self.stop_event.wait(self.interval):
            beat = self.beat
            lag = time.monotonic() - beat
            if self.paused or lag < self.threshold or beat == reported_beat or not self.busy():
                continue
            if self._report(lag):
                reported_beat = beat  # once per stall

    def _report(self, lag: float) -> bool:
        """Log the stall, naming the task whose code holds the loop; False (nothing
        logged) when no task's code does."""
        try:
            current = asyncio.current_task(self.loop)
        except RuntimeError:
            current = None
        owner = self.who(current)
        if owner is None:
            # No task's code holds the loop: the child was starved of CPU, or is busy
            # with its own work; nothing to blame on a task.
            return False
        fields: dict[str, object] = {"pid": os.getpid(), "blocked_s": round(lag, 3),
                                     "threshold_s": self.threshold}
        fields["task_id"], fields["name"] = owner
        where = self._where()
        if where:
            fields["where"] = where
        logs.get_logger().warning("task.loop_blocked", **fields)
        logs.write_now()  # the child has no loop turn that flushes the log (it is stuck)
        return True

    def _where(self) -> str | None:
        """file:line (function) the loop's thread is executing now."""
        frame = sys._current_frames().get(self.main_ident)  # pyright: ignore[reportPrivateUsage]
        if frame is None:
            return None
        return f"{frame.f_code.co_filename}:{frame.f_lineno} ({frame.f_code.co_name})"
