"""Process plumbing: killing whole trees, liveness by pid and start time, Linux prctl."""

import ctypes
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

# Environment variable naming the daemon a process works for (see kill_tagged).
WORKER_TAG = "LITEQ_WORKER_ID"

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, arg: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux)."""
    return _prctl(_PR_SET_PDEATHSIG, int(sig))


def become_subreaper() -> bool:
    """Adopt orphaned descendants, so a task's grandchildren stay findable and killable."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def process_start_time(pid: int) -> float | None:
    """The process's start time (epoch seconds, as psutil reports it), or None if gone.

    A zombie is gone: it has exited and only waits for its parent to reap it (a
    SIGKILLed daemon whose parent has not called wait() yet), so it holds no task
    and will never record one.
    """
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def is_same_process_alive(pid: int | str | None, started: float | str | None) -> bool:
    """True when `pid` runs and started at `started`: a reused pid is not the same process,
    and a zombie is not running."""
    if not pid:
        return False
    actual = process_start_time(int(pid))
    if actual is None or started is None:
        return False
    return abs(actual - float(started)) < 1.0


def pid_space() -> str | None:
    """Where this process's pids mean something: "BOOT.NS", the first 8 hex digits of the
    kernel's boot id and the inode of this process's PID namespace (None off Linux).

    A pid and start time identify a process only within one pid space. Daemons that
    share a hostname may not share it: containers with the host's name (host
    networking) each have a PID namespace of their own, and often the same pids.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip().replace("-", "")[:8]
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}.{namespace}" if boot else None


def worker_id(hostname: str, pid: int, space: str | None) -> str:
    """A daemon's id in the workers table: "HOST:PID:RANDOM", then ":SPACE" (its
    pid_space()) when known, so that other daemons can tell whether its pid is theirs
    to check."""
    base = f"{hostname}:{pid}:{uuid.uuid4().hex[:8]}"
    return f"{base}:{space}" if space else base


def pid_space_of(worker_id: object) -> str | None:
    """The pid space a worker id names (see worker_id), or None when it names none (a
    daemon of an older LiteQ, or a row written by hand)."""
    parts = str(worker_id).split(":")
    return parts[3] if len(parts) == 4 and parts[3] else None


def descendants(pid: int) -> list[psutil.Process]:
    """Every live descendant of `pid` (children, grandchildren, ...)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> int:
    """Signal a child, its process group and all its descendants; returns how many were hit.

    Descendants are collected before the child dies, because once it is gone
    they are reparented and no longer found under it.
    """
    procs = descendants(pid)
    hit = 0
    try:
        os.killpg(pid, sig)  # children lead their own process group
        hit += 1
    except (ProcessLookupError, PermissionError):
        pass
    for p in procs:
        try:
            p.send_signal(sig)
            hit += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    return hit


def rss_bytes(pid: int) -> int:
    """Resident memory of a process in bytes (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        try:
            return psutil.Process(pid).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return 0


def tagged_processes(worker_ids: Iterable[str]) -> list[psutil.Process]:
    """Live processes (other than this one) that carry one of these daemons' worker ids.

    A daemon's children die with it (PR_SET_PDEATHSIG), but subprocesses its
    tasks started are reparented and live on. They carry the daemon's worker id
    in their environment (WORKER_TAG), which is how they are found here.
    """
    wanted = set(worker_ids)
    me = os.getpid()
    found: list[psutil.Process] = []
    for p in psutil.process_iter():
        if p.pid == me:
            continue
        try:
            if p.environ().get(WORKER_TAG) in wanted and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def kill_tagged(worker_ids: Iterable[str]) -> list[int]:
    """SIGKILL processes left behind by dead daemons of this host; returns their pids."""
    killed: list[int] = []
    for p in tagged_processes(worker_ids):
        try:
            p.kill()
            killed.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return killed


def end_processes(procs: list[psutil.Process], grace: float) -> list[tuple[int, str, str]]:
    """SIGTERM `procs` (psutil.Process), then SIGKILL those alive after `grace` seconds.
    Returns [(pid, name, "SIGTERM" or "SIGKILL")] for each process ended."""
    ended: dict[int, list[str]] = {}
    for p in procs:
        try:
            ended[p.pid] = [p.name(), "SIGTERM"]
            p.terminate()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            ended.pop(p.pid, None)
    _, alive = psutil.wait_procs([p for p in procs if p.pid in ended], timeout=grace)  # pyright: ignore[reportUnknownMemberType]  (stub: FloatInt)
    for p in alive:
        try:
            p.kill()
            ended[p.pid][1] = "SIGKILL"
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return [(pid, name, how) for pid, (name, how) in ended.items()]


@dataclass(frozen=True)
class Identity:
    """Who this daemon is: its worker id in the database, and how other daemons of the
    host tell whether it still runs."""
    hostname: str
    pid: int
    process_started: float | None
    pid_space: str | None
    worker_id: str
    started_wall: float

    @classmethod
    def of_this_process(cls) -> "Identity":
        """The identity of the running process."""
        hostname, pid, space = socket.gethostname(), os.getpid(), pid_space()
        return cls(hostname, pid, process_start_time(pid), space,
                   worker_id(hostname, pid, space), time.time())
