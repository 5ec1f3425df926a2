"""The supervisor's view of its children and pools (no I/O of its own)."""

import collections
import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .channel import ChildChannel
    from .exits import ExitCause


class Output(Protocol):
    """A child's output pump (liteqd.task_output.Pump), as the supervisor uses it."""

    def task_done(self, run: "TaskRun | None" = None) -> None:
        """The child finished a task: the output read later up to its end mark is its."""

    def close(self) -> None:
        """The child is gone: read what is left and stop watching its pipes."""


# Short tasks get a deeper queue per child, but never more than this much
# estimated work waiting behind the running one, nor more than the ceiling.
PREFETCH_BUDGET_S = 0.005
PREFETCH_CEILING = 32
# Automatic prefetch (--prefetch 0): a busy child gets tasks ahead only while the pool's
# moving average run time is below this; otherwise a task goes to an idle child or
# stays in the database, where an idle child (of any daemon) takes it.
SHORT_TASK_S = PREFETCH_BUDGET_S / 2
# A child whose task has run this long gets nothing more ahead, and what it holds
# unstarted is recalled: the task is not as short as the average said.
RECALL_AFTER_S = 0.05


@dataclass
class TaskRun:
    """A claimed task the supervisor handed to a child."""
    id: int
    name: str
    queue: str
    attempts: int
    max_retries: int
    limit: float | None     # time limit in seconds, or None
    retry_delay: float
    retry_backoff: float
    retry_max_delay: float
    started_mono: float | None = None   # set when the child really starts it
    started_wall: float | None = None
    cancelled: bool = False      # cancelled by an operator: stop it, record nothing
    coroutine: bool = False      # an `async def` task (shares its child's event loop)


class ChildState(enum.Enum):
    """What a child is doing, for status and titles."""
    STARTING = "starting"
    IDLE = "idle"
    RUNNING = "running"
    STOPPING = "stopping"


@dataclass
class ChildHandle:
    """One forked child: its channel (socket and the tasks it holds), and why it may be
    ending."""
    pid: int
    slot: int
    pool: "Pool"
    channel: "ChildChannel"
    spawned_mono: float = field(default_factory=time.monotonic)
    ready: bool = False
    tasks_done: int = 0
    rss: int = 0
    retiring: bool = False        # asked to finish its current task and exit
    retire_deadline: float | None = None
    cancel_deadline: float | None = None  # when a cancelled task that did not stop gets killed
    kill_reason: "ExitCause | None" = None  # set when the supervisor killed it
    timed_out_task: TaskRun | None = None
    output: Output | None = None  # a task_output.Pump of its stdout, stderr and logging
    recalling: bool = False       # asked to hand back its queued tasks (see Pool.capacity)

    # The tasks the child holds, in the order it was given them: its channel's list,
    # read here (a plain attribute: the hand-out reads it for every task); only the
    # channel changes it.
    inflight: collections.deque[TaskRun] = field(init=False)

    def __post_init__(self) -> None:
        self.inflight = self.channel.inflight

    @property
    def running(self) -> TaskRun | None:
        """The task the child is executing now, if any (with --async-concurrency above 1,
        the first of those it runs)."""
        if self.pool.async_slots > 1:
            for run in self.inflight:
                if run.started_mono is not None:
                    return run
            return None
        return self.inflight[0] if self.inflight else None

    def started_runs(self) -> list[TaskRun]:
        """The tasks the child has started and not finished (one, or several coroutines
        with --async-concurrency above 1)."""
        if self.pool.async_slots > 1:
            return [run for run in self.inflight if run.started_mono is not None]
        return [self.inflight[0]] if self.inflight else []

    def room(self) -> int:
        """Async pools: how many more tasks this child may be given now. A coroutine
        takes one of the pool's async_slots; a sync task takes them all (it runs alone)."""
        slots = self.pool.async_slots
        used = 0
        for run in self.inflight:
            used += 1 if run.coroutine else slots
        return max(slots - used, 0)

    @property
    def state(self) -> ChildState:
        """What the child is doing, for status and titles."""
        if self.retiring or self.kill_reason:
            return ChildState.STOPPING
        if not self.ready:
            return ChildState.STARTING
        return ChildState.RUNNING if self.inflight else ChildState.IDLE


@dataclass
class Pool:
    """Children that serve the same queues; `size` is the target number of children."""
    name: str
    queues: list[str]
    size: int
    children: dict[int, ChildHandle] = field(default_factory=dict[int, ChildHandle])  # by pid
    failures: int = 0          # consecutive abnormal child exits
    boot_errors: int = 0       # consecutive children that failed before becoming ready
    next_spawn: float = 0.0    # monotonic time before which no child is spawned
    maybe_work: bool = True    # a claim might find something
    backlog: bool = False      # the last claim came back full
    avg_duration: float | None = None  # moving average of task run time, seconds
    async_slots: int = 1       # coroutine tasks a child runs at once (--async-concurrency)

    @property
    def active(self) -> list[ChildHandle]:
        """Children that count towards the size (not retiring or being killed)."""
        return [c for c in self.children.values() if not c.retiring and not c.kill_reason]

    @property
    def failing(self) -> bool:
        """True while children keep dying abnormally (respawns are backing off)."""
        return self.failures >= 3

    def observe(self, seconds: float) -> None:
        """Feed a finished task's run time into the moving average."""
        if self.avg_duration is None:
            self.avg_duration = seconds
        else:
            self.avg_duration += 0.1 * (seconds - self.avg_duration)

    @property
    def short(self) -> bool:
        """True while the pool's recent tasks are so short that waiting behind one
        cannot matter (automatic prefetch sends tasks ahead only then)."""
        return self.avg_duration is not None and self.avg_duration < SHORT_TASK_S

    def depth(self, prefetch: int, budget: float = PREFETCH_BUDGET_S,
              ceiling: int = PREFETCH_CEILING) -> int:
        """Tasks to keep per child, the running one included: `prefetch`, or more while
        tasks are so short that `budget` seconds of queued work hold more (hides the
        round trip). prefetch 0 is automatic: 1 (nothing ahead) unless tasks are short."""
        if not prefetch:
            if not self.short:
                return 1
            prefetch = 2
        if not self.avg_duration or self.avg_duration >= budget / prefetch:
            return prefetch
        return max(prefetch, min(ceiling, int(budget / max(self.avg_duration, 1e-6))))

    def capacity(self, prefetch: int, now: float) -> int:
        """How many more tasks the ready children can start soon: one per idle child,
        plus what may wait ahead in busy ones (automatic prefetch: not in a child
        whose task has run past RECALL_AFTER_S). Async pools: the free coroutine slots
        of the ready children (no prefetch beyond them)."""
        if self.async_slots > 1:
            return sum(c.room() for c in self.active if c.ready)
        depth = self.depth(prefetch)
        return sum(max(depth - len(c.inflight), 0) for c in self.takers(prefetch, now))

    def takers(self, prefetch: int, now: float) -> list[ChildHandle]:
        """The ready children that may be given tasks now: with automatic prefetch and a
        child idle, not one whose running task has run past RECALL_AFTER_S or that is
        being recalled (with none idle such a child may get tasks ahead; they are
        recalled once one is: on a busy machine a child that waits for the CPU looks
        long, and starving it would only slow a drain)."""
        ready = [c for c in self.active if c.ready]
        if self.async_slots > 1:
            return [c for c in ready if c.room() > 0]
        if prefetch or all(c.inflight for c in ready):
            return ready
        return [c for c in ready if not (
            c.inflight and (c.recalling or self.overdue(c, now)))]

    @staticmethod
    def overdue(child: ChildHandle, now: float) -> bool:
        """True when the child's running task has run past RECALL_AFTER_S."""
        run = child.running
        return run is not None and run.started_mono is not None \
            and now - run.started_mono >= RECALL_AFTER_S
